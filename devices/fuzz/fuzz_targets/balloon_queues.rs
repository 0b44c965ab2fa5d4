//! A hostile balloon driver: arbitrary descriptor tables and rings on every queue
//! (inflate, deflate, statistics, free page reporting). The device must refuse what is
//! malformed, count it, and never panic or touch memory outside the guest's.
#![no_main]

use devices::virtio::balloon::{Balloon, F_REPORTING, F_STATS_VQ};
use devices::virtio::{VirtioDevice, VIRTIO_F_VERSION_1};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;

mod guest;

fuzz_target!(|data: &[u8]| {
    let Ok(kick) = EventFd::new(libc::EFD_NONBLOCK) else {
        return;
    };
    let (mut balloon, handle) = Balloon::new(kick);
    let features = VIRTIO_F_VERSION_1 | F_STATS_VQ | F_REPORTING;
    let Some(activation) = guest::activation(data, 4, features) else {
        return;
    };
    if balloon.activate(activation).is_err() {
        return;
    }
    for round in 0..2 {
        for queue in 0..4 {
            balloon.queue_notified(queue);
        }
        if round == 0 {
            let _ = handle.request_stats();
            balloon.backend_ready();
        }
    }
    let status = handle.status();
    assert!(status.inflated_pages <= (1 << 20) / 4096);
    balloon.reset();
});
