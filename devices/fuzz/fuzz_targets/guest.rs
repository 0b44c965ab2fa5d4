//! Guest memory whose first bytes are the fuzzer's: descriptor tables, available and
//! used rings of every queue, and whatever the descriptors point at.

use devices::virtio::{Activation, Interrupt};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Size of the guest memory.
const MEMORY: usize = 1 << 20;
/// Each queue's table and rings sit packed in their own window of this many bytes, so
/// that short inputs already reach every queue.
const WINDOW: u64 = 0x200;
/// Queue size: small, so the fuzzer's bytes fill whole tables and rings.
const SIZE: u16 = 16;

/// Memory holding `data` at address 0, and an activation with `queues` queues laid out
/// in it: 16 descriptors (256 bytes), the available ring at +0x100, the used ring at
/// +0x140.
pub fn activation(data: &[u8], queues: u64, features: u64) -> Option<Activation> {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEMORY)]).ok()?;
    let len = data.len().min(MEMORY);
    mem.write_slice(data.get(..len)?, GuestAddress(0)).ok()?;
    let queues = (0..queues)
        .map(|i| {
            let base = i * WINDOW;
            let mut q = Queue::new(SIZE).ok()?;
            q.set_size(SIZE);
            q.set_desc_table_address(Some(base as u32), Some(0));
            q.set_avail_ring_address(Some((base + 0x100) as u32), Some(0));
            q.set_used_ring_address(Some((base + 0x140) as u32), Some(0));
            q.set_ready(true);
            Some(q)
        })
        .collect::<Option<Vec<_>>>()?;
    let irq = EventFd::new(libc::EFD_NONBLOCK).ok()?;
    Some(Activation {
        mem,
        queues,
        interrupt: Interrupt::new(irq),
        features,
    })
}
