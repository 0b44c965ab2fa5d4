//! A hostile virtio-mem driver: an arbitrary descriptor table and rings on the request
//! queue. The device must answer or count what is malformed, keep its bitmap, the
//! backing and `plugged_size` in step, and never panic.
#![no_main]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use devices::virtio::mem::{BlockBacking, Mem, MemConfig, F_ACPI_PXM};
use devices::virtio::{VirtioDevice, VIRTIO_F_VERSION_1};
use libfuzzer_sys::fuzz_target;

mod guest;

/// Records which blocks are mapped; a second plug or an unplug of what is not mapped is
/// a device bug.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<BTreeSet<u64>>>);

impl BlockBacking for Recorder {
    fn plug(&mut self, index: u64) -> Result<(), String> {
        let fresh = self.0.lock().map_err(|e| e.to_string())?.insert(index);
        assert!(fresh, "block {index} plugged twice");
        Ok(())
    }

    fn unplug(&mut self, index: u64) -> Result<(), String> {
        let known = self.0.lock().map_err(|e| e.to_string())?.remove(&index);
        assert!(known, "block {index} unplugged while not plugged");
        Ok(())
    }
}

const BLOCK: u64 = 2 << 20;

fuzz_target!(|data: &[u8]| {
    let recorder = Recorder::default();
    // The region starts one block up, near the fuzzer's 1 MiB of memory, so the
    // fuzzer's addresses hit it, its edges and beyond.
    let config = MemConfig {
        addr: BLOCK,
        region_size: 8 * BLOCK,
        block_size: BLOCK,
        node_id: 1,
    };
    let (mut device, handle) = Mem::new(config, 4 * BLOCK, Box::new(recorder.clone()))
        .expect("a valid configuration");
    let Some(activation) = guest::activation(data, 1, VIRTIO_F_VERSION_1 | F_ACPI_PXM) else {
        return;
    };
    if device.activate(activation).is_err() {
        return;
    }
    device.queue_notified(0);
    let _ = handle.set_requested(8 * BLOCK);
    device.queue_notified(0);
    let status = handle.status();
    let mapped = recorder.0.lock().map(|m| m.len() as u64).unwrap_or(0);
    assert_eq!(status.plugged_size, mapped * BLOCK);
    assert!(status.plugged_size <= config.region_size);
    device.reset();
});
