//! A hostile console driver: arbitrary descriptor tables and rings on all six queues of
//! the multiport console (port 0, control, the agent port) while the VMM writes to the
//! agent port. The device must refuse what is malformed and never panic, loop or keep
//! more than its buffer limits.
#![no_main]

use devices::virtio::console::{Console, BUFFER_LIMIT, F_MULTIPORT};
use devices::virtio::{VirtioDevice, VIRTIO_F_VERSION_1};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;

mod guest;

fuzz_target!(|data: &[u8]| {
    let Ok(kick) = EventFd::new(libc::EFD_NONBLOCK) else {
        return;
    };
    let (mut console, channel) = Console::new(kick);
    let Some(activation) = guest::activation(data, 6, VIRTIO_F_VERSION_1 | F_MULTIPORT) else {
        return;
    };
    if console.activate(activation).is_err() {
        return;
    }
    assert!(channel.write(b"from the host") <= BUFFER_LIMIT);
    for queue in 0..6 {
        console.queue_notified(queue);
    }
    console.backend_ready();
    let mut buf = [0u8; 256];
    let _ = channel.read(&mut buf);
    console.reset();
});
