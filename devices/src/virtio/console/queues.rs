//! Descriptor chains of the console's queues: their length, and bytes copied between
//! them and the buffers, bounded by [`MAX_CHAIN`].

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemoryMmap};

use super::MAX_CHAIN;

/// Total length of a chain's device-readable (`writable == false`) or device-writable
/// descriptors; `None` when a descriptor has the other direction or the total passes
/// [`MAX_CHAIN`].
pub(super) fn chain_len(
    chain: &DescriptorChain<&GuestMemoryMmap>,
    writable: bool,
) -> Option<usize> {
    let mut total = 0usize;
    for desc in chain.clone() {
        if desc.is_write_only() != writable {
            return None;
        }
        total = total.checked_add(desc.len() as usize)?;
        if total > MAX_CHAIN {
            return None;
        }
    }
    Some(total)
}

/// Reads a chain's device-readable bytes into `out`; `None` if a descriptor is
/// device-writable or outside guest memory. Returns the bytes read.
pub(super) fn read_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    out: &mut [u8],
) -> Option<usize> {
    let mut done = 0;
    for desc in chain {
        if desc.is_write_only() {
            return None;
        }
        let room = out.len() - done;
        let n = (desc.len() as usize).min(room);
        let dst = out.get_mut(done..done + n)?;
        mem.read_slice(dst, desc.addr()).ok()?;
        done += n;
        if done == out.len() {
            break;
        }
    }
    Some(done)
}
