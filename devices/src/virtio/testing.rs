//! What the devices' tests share: one descriptor chain as the mock queue takes it.

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};

/// One chain of `(address, length, device-writable)` descriptors at table index `start`,
/// each linked to the next.
pub(crate) fn chain(start: u16, descs: &[(u64, u32, bool)]) -> Vec<RawDescriptor> {
    descs
        .iter()
        .enumerate()
        .map(|(i, (addr, len, writable))| {
            let mut flags = if *writable { VRING_DESC_F_WRITE } else { 0 };
            if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            RawDescriptor::from(SplitDescriptor::new(
                *addr,
                *len,
                flags as u16,
                start + i as u16 + 1,
            ))
        })
        .collect()
}
