//! virtio-balloon: the guest hands pages back (inflate), takes them again (deflate),
//! reports free pages and statistics. Released pages go back to the host at once.

// Giving guest pages back to the host is an madvise on memory Rust cannot reason about.
#![allow(unsafe_code)]

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::eventfd::EventFd;

use super::{
    lock, read_config_bytes, ActivateError, Activation, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};

/// The virtio device id of a balloon.
pub const DEVICE_TYPE: u32 = 5;
/// The statistics queue exists.
pub const F_STATS_VQ: u64 = 1 << 1;
/// The guest may deflate when it runs out of memory.
pub const F_DEFLATE_ON_OOM: u64 = 1 << 2;
/// The free-page-reporting queue exists.
pub const F_REPORTING: u64 = 1 << 5;
/// Balloon pages are 4 KiB whatever the guest's page size.
pub const BALLOON_PAGE: u64 = 4096;
/// Queue size of every balloon queue.
pub const QUEUE_SIZE: u16 = 256;
/// Number of statistics tags the device keeps (the spec defines tags 0..=15).
pub const STAT_TAGS: usize = 16;
/// Longest descriptor of page numbers or statistics the device reads (Linux sends at
/// most 256 page numbers, 1 KiB, per buffer); longer ones are refused unread.
pub const MAX_ENTRIES_BYTES: u32 = 64 * 1024;

/// What a queue is for, by the order the spec gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

/// Figures the VMM reads and the target it sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BalloonStatus {
    /// Pages the VMM asks the guest to hold in the balloon.
    pub target_pages: u32,
    /// Pages the guest says the balloon holds.
    pub actual_pages: u32,
    /// Pages the balloon holds: each inflated page counts once, until deflated.
    pub inflated_pages: u64,
    /// Bytes the guest reported free and the host released.
    pub reported_bytes: u64,
    /// Latest statistics by tag (swap in/out, major/minor faults, free, total, …).
    pub stats: [Option<u64>; STAT_TAGS],
    /// Requests refused: page numbers outside guest memory, a page inflated while the
    /// balloon holds it or deflated while it does not, wrong descriptor direction,
    /// lengths that are not whole entries.
    pub rejected: u64,
}

/// Called with the balloon's figures after the guest changed them.
pub type Observer = Arc<dyn Fn(&BalloonStatus) + Send + Sync>;

#[derive(Default)]
struct Shared {
    status: BalloonStatus,
    interrupt: Option<Interrupt>,
    stats_wanted: bool,
    observer: Option<Observer>,
}

/// Tells the observer, if any, the figures as they are now (outside the lock).
fn announce(shared: &Mutex<Shared>) {
    let (observer, status) = {
        let shared = lock(shared);
        (shared.observer.clone(), shared.status.clone())
    };
    if let Some(observer) = observer {
        observer(&status);
    }
}

/// The VMM's side of a balloon: set the target, read what the guest did.
#[derive(Clone)]
pub struct BalloonHandle {
    shared: Arc<Mutex<Shared>>,
    kick: Arc<EventFd>,
}

impl BalloonHandle {
    /// Asks the guest to hold `pages` 4 KiB pages; the guest hears of it by a
    /// configuration interrupt once the driver runs.
    pub fn set_target(&self, pages: u32) -> std::io::Result<()> {
        let mut shared = lock(&self.shared);
        shared.status.target_pages = pages;
        match &shared.interrupt {
            Some(interrupt) => interrupt.config_changed(),
            None => Ok(()),
        }
    }

    /// A snapshot of the balloon's figures.
    pub fn status(&self) -> BalloonStatus {
        lock(&self.shared).status.clone()
    }

    /// Calls `observer` whenever the guest inflated, deflated, reported free pages or
    /// wrote `actual`.
    pub fn observe(&self, observer: Observer) {
        lock(&self.shared).observer = Some(observer);
    }

    /// Asks the guest for fresh statistics (they land in [`BalloonStatus::stats`]).
    pub fn request_stats(&self) -> std::io::Result<()> {
        lock(&self.shared).stats_wanted = true;
        self.kick.write(1)
    }
}

/// The balloon device model.
pub struct Balloon {
    shared: Arc<Mutex<Shared>>,
    kick: Arc<EventFd>,
    features: u64,
    mem: Option<GuestMemoryMmap>,
    queues: Vec<(Role, Queue)>,
    stats_head: Option<u16>,
    held: HeldPages,
}

/// Which pages the balloon holds, one bit per 4 KiB page of each region of guest memory:
/// the count follows the pages, not the guest's requests, so a page inflated again
/// counts once.
#[derive(Default)]
struct HeldPages(Vec<(GuestAddress, u64, AtomicBitmap)>);

impl HeldPages {
    /// No page held, for the regions of `mem`.
    fn of(mem: &GuestMemoryMmap) -> HeldPages {
        let page = NonZeroUsize::new(BALLOON_PAGE as usize).unwrap_or(NonZeroUsize::MIN);
        HeldPages(
            mem.iter()
                .map(|r| {
                    let len = r.len();
                    let bits = AtomicBitmap::new(usize::try_from(len).unwrap_or(0), page);
                    (r.start_addr(), len, bits)
                })
                .collect(),
        )
    }

    /// The bitmap and offset of the page at `gpa`.
    fn find(&self, gpa: u64) -> Option<(&AtomicBitmap, usize)> {
        self.0.iter().find_map(|(start, len, bits)| {
            let offset = gpa.checked_sub(start.0).filter(|o| o < len)?;
            Some((bits, usize::try_from(offset).ok()?))
        })
    }

    fn is_held(&self, gpa: u64) -> bool {
        self.find(gpa).is_some_and(|(bits, o)| bits.is_addr_set(o))
    }

    fn hold(&self, gpa: u64) {
        if let Some((bits, o)) = self.find(gpa) {
            bits.set_addr_range(o, BALLOON_PAGE as usize);
        }
    }

    /// Lets the page at `gpa` go; whether the balloon held it.
    fn give_back(&self, gpa: u64) -> bool {
        match self.find(gpa) {
            Some((bits, o)) if bits.is_addr_set(o) => {
                bits.reset_addr_range(o, BALLOON_PAGE as usize);
                true
            }
            _ => false,
        }
    }
}

impl Balloon {
    /// A balloon offering statistics, deflate-on-OOM and free page reporting; `kick`
    /// wakes the event loop when the VMM asks for statistics.
    pub fn new(kick: EventFd) -> (Balloon, BalloonHandle) {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let kick = Arc::new(kick);
        let handle = BalloonHandle {
            shared: Arc::clone(&shared),
            kick: Arc::clone(&kick),
        };
        let balloon = Balloon {
            shared,
            kick,
            features: VIRTIO_F_VERSION_1 | F_STATS_VQ | F_DEFLATE_ON_OOM | F_REPORTING,
            mem: None,
            queues: Vec::new(),
            stats_head: None,
            held: HeldPages::default(),
        };
        (balloon, handle)
    }

    /// Asks the guest for fresh statistics by returning the buffer it left.
    fn request_stats(&mut self) {
        let (Some(head), Some(mem)) = (self.stats_head.take(), self.mem.as_ref()) else {
            return;
        };
        if let Some((_, queue)) = self.queues.iter_mut().find(|(r, _)| *r == Role::Stats) {
            if queue.add_used(mem, head, 0).is_ok() {
                signal(&self.shared, queue, mem);
            }
        }
    }

    fn process(&mut self, index: usize) {
        let Some(mem) = self.mem.clone() else { return };
        let Some((role, queue)) = self.queues.get_mut(index) else {
            return;
        };
        let role = *role;
        let mut used_any = false;
        let mut changed = false;
        while let Some(chain) = queue.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            let mut shared = lock(&self.shared);
            match role {
                Role::Inflate | Role::Deflate => {
                    changed = true;
                    let inflate = role == Role::Inflate;
                    page_numbers(&mem, chain, inflate, &self.held, &mut shared.status)
                }
                Role::Reporting => {
                    changed = true;
                    reported_ranges(&mem, chain, &mut shared.status)
                }
                Role::Stats => {
                    read_stats(&mem, chain, &mut shared.status);
                    self.stats_head = Some(head);
                    continue;
                }
            }
            drop(shared);
            if queue.add_used(&mem, head, 0).is_ok() {
                used_any = true;
            }
        }
        if used_any {
            signal(&self.shared, queue, &mem);
        }
        if changed {
            announce(&self.shared);
        }
    }
}

fn signal(shared: &Mutex<Shared>, queue: &mut Queue, mem: &GuestMemoryMmap) {
    if queue.needs_notification(mem).unwrap_or(true) {
        if let Some(interrupt) = &lock(shared).interrupt {
            let _ = interrupt.used_ring();
        }
    }
}

/// Gives `[gpa, gpa+len)` back to the host if it lies wholly inside one region of guest
/// memory; returns whether it did.
fn release(mem: &GuestMemoryMmap, gpa: u64, len: u64) -> bool {
    let Some(region) = mem.find_region(GuestAddress(gpa)) else {
        return false;
    };
    let offset = gpa - region.start_addr().0;
    if offset.checked_add(len).is_none_or(|end| end > region.len()) {
        return false;
    }
    let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(offset)) else {
        return false;
    };
    // SAFETY: `host..host+len` lies inside a mapping of guest memory that this process
    // owns; MADV_REMOVE only discards its pages (they read as zero when touched again).
    unsafe { libc::madvise(host.cast(), len as usize, libc::MADV_REMOVE) == 0 }
}

/// Inflate or deflate: every device-readable descriptor is an array of le32 page numbers.
fn page_numbers(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    inflate: bool,
    held: &HeldPages,
    status: &mut BalloonStatus,
) {
    for desc in chain {
        if desc.is_write_only() || desc.len() % 4 != 0 || desc.len() > MAX_ENTRIES_BYTES {
            status.rejected += 1;
            continue;
        }
        for i in 0..u64::from(desc.len() / 4) {
            let Some(addr) = desc.addr().checked_add(i * 4) else {
                status.rejected += 1;
                break;
            };
            let Ok(pfn) = mem.read_obj::<u32>(addr) else {
                status.rejected += 1;
                break;
            };
            let gpa = u64::from(u32::from_le(pfn)) * BALLOON_PAGE;
            if mem.find_region(GuestAddress(gpa)).is_none() {
                status.rejected += 1;
                continue;
            }
            if inflate {
                if !held.is_held(gpa) && release(mem, gpa, BALLOON_PAGE) {
                    held.hold(gpa);
                    status.inflated_pages += 1;
                } else {
                    status.rejected += 1;
                }
            } else if held.give_back(gpa) {
                status.inflated_pages = status.inflated_pages.saturating_sub(1);
            } else {
                status.rejected += 1;
            }
        }
    }
}

/// Free page reporting: every device-writable descriptor is a free range to release.
fn reported_ranges(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    status: &mut BalloonStatus,
) {
    for desc in chain {
        let len = u64::from(desc.len());
        if !desc.is_write_only() || len % BALLOON_PAGE != 0 || desc.addr().0 % BALLOON_PAGE != 0 {
            status.rejected += 1;
            continue;
        }
        if release(mem, desc.addr().0, len) {
            status.reported_bytes += len;
        } else {
            status.rejected += 1;
        }
    }
}

/// Statistics: device-readable 10-byte entries of le16 tag and le64 value.
fn read_stats(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    status: &mut BalloonStatus,
) {
    for desc in chain {
        if desc.is_write_only() || desc.len() % 10 != 0 || desc.len() > MAX_ENTRIES_BYTES {
            status.rejected += 1;
            continue;
        }
        for i in 0..u64::from(desc.len() / 10) {
            let Some(addr) = desc.addr().checked_add(i * 10) else {
                break;
            };
            let tag = mem.read_obj::<u16>(addr).map(u16::from_le);
            let value = addr
                .checked_add(2)
                .and_then(|a| mem.read_obj::<u64>(a).ok())
                .map(u64::from_le);
            match (tag, value) {
                (Ok(tag), Some(value)) => {
                    if let Some(slot) = status.stats.get_mut(usize::from(tag)) {
                        *slot = Some(value);
                    }
                }
                _ => {
                    status.rejected += 1;
                    break;
                }
            }
        }
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 4]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let shared = lock(&self.shared);
        let mut config = [0u8; 8];
        config[..4].copy_from_slice(&shared.status.target_pages.to_le_bytes());
        config[4..].copy_from_slice(&shared.status.actual_pages.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (bytes 4..8) is the driver's to write.
        if offset == 4 {
            if let Ok(bytes) = <[u8; 4]>::try_from(data) {
                lock(&self.shared).status.actual_pages = u32::from_le_bytes(bytes);
                announce(&self.shared);
            }
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let mut roles = vec![Role::Inflate, Role::Deflate];
        if activation.features & F_STATS_VQ != 0 {
            roles.push(Role::Stats);
        }
        if activation.features & F_REPORTING != 0 {
            roles.push(Role::Reporting);
        }
        if activation.queues.len() < roles.len() {
            return Err(ActivateError::Queues {
                got: activation.queues.len(),
                need: roles.len(),
            });
        }
        self.queues = roles.into_iter().zip(activation.queues).collect();
        self.held = HeldPages::of(&activation.mem);
        self.mem = Some(activation.mem);
        lock(&self.shared).interrupt = Some(activation.interrupt);
        Ok(())
    }

    fn queue_notified(&mut self, index: usize) {
        self.process(index);
    }

    fn backend_event(&self) -> Option<&EventFd> {
        Some(&self.kick)
    }

    fn backend_ready(&mut self) {
        if std::mem::take(&mut lock(&self.shared).stats_wanted) {
            self.request_stats();
        }
    }

    fn reset(&mut self) {
        self.queues.clear();
        self.mem = None;
        self.stats_head = None;
        // The guest owns all its memory again after a reset.
        self.held = HeldPages::default();
        let mut shared = lock(&self.shared);
        shared.interrupt = None;
        shared.status.actual_pages = 0;
        shared.status.inflated_pages = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    const MEM: u64 = 0x100_0000;
    const DATA: u64 = 0x10_0000;

    /// Guest memory backed by a memfd, as the VMM builds sysram.
    fn memory() -> GuestMemoryMmap {
        let fd = vmm_sys_util::tempfile::TempFile::new()
            .map(|t| t.into_file())
            .unwrap_or_else(|e| panic!("{e}"));
        fd.set_len(MEM).unwrap_or_else(|e| panic!("{e}"));
        GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(0),
            MEM as usize,
            Some(vm_memory::FileOffset::new(fd, 0)),
        )])
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn desc(addr: u64, len: u32, flags: u32) -> (u64, u32, u32) {
        (addr, len, flags)
    }

    /// Raw descriptors where each one with NEXT set points at the following one.
    fn chain(descs: &[(u64, u32, u32)]) -> Vec<RawDescriptor> {
        descs
            .iter()
            .enumerate()
            .map(|(i, (addr, len, flags))| {
                RawDescriptor::from(SplitDescriptor::new(
                    *addr,
                    *len,
                    *flags as u16,
                    i as u16 + 1,
                ))
            })
            .collect()
    }

    /// A balloon activated with four queues, each a mock queue at its own base.
    struct Rig<'a> {
        queues: Vec<MockSplitQueue<'a, GuestMemoryMmap>>,
        balloon: Balloon,
        handle: BalloonHandle,
        irq: EventFd,
    }

    fn rig(mem: &GuestMemoryMmap) -> Rig<'_> {
        let queues: Vec<_> = (0..4u64)
            .map(|i| MockSplitQueue::create(mem, GuestAddress(i * 0x1_0000), 16))
            .collect();
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap_or_else(|e| panic!("{e}"));
        let (mut balloon, handle) = Balloon::new(kick);
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap_or_else(|e| panic!("{e}"));
        let interrupt = Interrupt::new(irq.try_clone().unwrap_or_else(|e| panic!("{e}")));
        let activation = Activation {
            mem: mem.clone(),
            queues: queues
                .iter()
                .map(|q| q.create_queue().unwrap_or_else(|e| panic!("{e}")))
                .collect(),
            interrupt,
            features: VIRTIO_F_VERSION_1 | F_STATS_VQ | F_REPORTING,
        };
        balloon
            .activate(activation)
            .unwrap_or_else(|e| panic!("{e}"));
        Rig {
            queues,
            balloon,
            handle,
            irq,
        }
    }

    fn resident(mem: &GuestMemoryMmap, gpa: u64) -> bool {
        let host = mem
            .get_host_address(GuestAddress(gpa))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut v = [0u8; 1];
        // SAFETY: `host` is a page-aligned address inside the test's own mapping.
        let rc = unsafe { libc::mincore(host.cast(), 4096, v.as_mut_ptr()) };
        rc == 0 && v[0] & 1 == 1
    }

    #[test]
    fn inflated_pages_leave_host_memory_and_deflate_counts_them_back() {
        let mem = memory();
        let mut r = rig(&mem);
        for page in [0x200u64, 0x201, 0x300] {
            mem.write_obj(0xabu8, GuestAddress(page * 4096))
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(resident(&mem, page * 4096));
        }
        for (i, pfn) in [0x200u32, 0x201, 0x300].iter().enumerate() {
            mem.write_obj(pfn.to_le(), GuestAddress(DATA + 4 * i as u64))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        r.queues[0]
            .add_desc_chains(&chain(&[desc(DATA, 12, 0)]), 0)
            .unwrap_or_else(|e| panic!("{e:?}"));
        r.balloon.queue_notified(0);
        assert_eq!(r.handle.status().inflated_pages, 3);
        assert!(!resident(&mem, 0x200 * 4096));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x200 * 4096)).ok(), Some(0));
        assert_eq!(r.irq.read().ok(), Some(1));
        let used_idx: u16 = mem
            .read_obj(r.queues[0].used_addr().unchecked_add(2))
            .unwrap_or_default();
        assert_eq!(used_idx, 1);
        r.queues[1]
            .add_desc_chains(&chain(&[desc(DATA, 8, 0)]), 0)
            .unwrap_or_else(|e| panic!("{e:?}"));
        r.balloon.queue_notified(1);
        assert_eq!(r.handle.status().inflated_pages, 1);
        assert_eq!(r.handle.status().rejected, 0);
    }

    #[test]
    fn a_page_counts_once_however_often_it_is_inflated() {
        let mem = memory();
        let mut r = rig(&mem);
        let entries = 256u64;
        for i in 0..entries {
            mem.write_obj(0x200u32.to_le(), GuestAddress(DATA + 4 * i))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        mem.write_obj(0x300u32.to_le(), GuestAddress(DATA + 4 * entries))
            .unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..4 {
            r.queues[0]
                .add_desc_chains(&chain(&[desc(DATA, 4 * entries as u32, 0)]), 0)
                .unwrap_or_else(|e| panic!("{e:?}"));
            r.balloon.queue_notified(0);
        }
        let s = r.handle.status();
        assert_eq!((s.inflated_pages, s.rejected), (1, 4 * entries - 1));
        // Page 0x300 was never inflated: deflating it gives nothing back.
        r.queues[1]
            .add_desc_chains(&chain(&[desc(DATA + 4 * (entries - 1), 8, 0)]), 0)
            .unwrap_or_else(|e| panic!("{e:?}"));
        r.balloon.queue_notified(1);
        let s = r.handle.status();
        assert_eq!((s.inflated_pages, s.rejected), (0, 4 * entries));
        r.queues[0]
            .add_desc_chains(&chain(&[desc(DATA, 4, 0)]), 0)
            .unwrap_or_else(|e| panic!("{e:?}"));
        r.balloon.queue_notified(0);
        assert_eq!(r.handle.status().inflated_pages, 1);
        r.balloon.reset();
        assert_eq!(
            r.handle.status().inflated_pages,
            0,
            "a reset gives the guest its pages back"
        );
    }

    #[test]
    fn page_numbers_outside_memory_and_wrong_directions_are_rejected() {
        let mem = memory();
        let mut r = rig(&mem);
        mem.write_obj(0x0fff_ffff_u32.to_le(), GuestAddress(DATA))
            .unwrap_or_else(|e| panic!("{e}"));
        r.queues[0]
            .add_desc_chains(
                &chain(&[
                    desc(DATA, 4, VRING_DESC_F_NEXT),
                    desc(DATA, 4, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT),
                    desc(DATA, 3, VRING_DESC_F_NEXT),
                    desc(DATA, MAX_ENTRIES_BYTES + 4, VRING_DESC_F_NEXT),
                    desc(MEM + 0x1000, 8, 0),
                ]),
                0,
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        r.balloon.queue_notified(0);
        let s = r.handle.status();
        assert_eq!((s.inflated_pages, s.rejected), (0, 5));
    }

    #[test]
    fn reported_free_ranges_are_released_and_bad_ones_refused() {
        let mem = memory();
        let mut r = rig(&mem);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        r.handle.observe(Arc::new(move |s: &BalloonStatus| {
            lock(&record).push(s.reported_bytes);
        }));
        mem.write_obj(1u64, GuestAddress(0x40_0000))
            .unwrap_or_else(|e| panic!("{e}"));
        r.queues[3]
            .add_desc_chains(
                &chain(&[
                    desc(0x40_0000, 0x2000, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT),
                    desc(0x40_0100, 0x1000, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT),
                    desc(MEM - 0x1000, 0x2000, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT),
                    desc(0x50_0000, 0x1000, 0),
                ]),
                0,
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        r.balloon.queue_notified(3);
        let s = r.handle.status();
        assert_eq!((s.reported_bytes, s.rejected), (0x2000, 3));
        assert!(!resident(&mem, 0x40_0000));
        assert_eq!(*lock(&seen), vec![0x2000], "the report is announced");
    }

    #[test]
    fn statistics_are_read_and_the_buffer_held_until_asked_again() {
        let mem = memory();
        let mut r = rig(&mem);
        for (i, (tag, value)) in [(4u16, 1000u64), (5, 2000)].iter().enumerate() {
            let at = DATA + 10 * i as u64;
            mem.write_obj(tag.to_le(), GuestAddress(at))
                .unwrap_or_else(|e| panic!("{e}"));
            mem.write_obj(value.to_le(), GuestAddress(at + 2))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        r.queues[2]
            .add_desc_chains(&chain(&[desc(DATA, 20, 0)]), 0)
            .unwrap_or_else(|e| panic!("{e:?}"));
        r.balloon.queue_notified(2);
        let s = r.handle.status();
        assert_eq!((s.stats[4], s.stats[5]), (Some(1000), Some(2000)));
        let used = |mem: &GuestMemoryMmap| {
            mem.read_obj::<u16>(r.queues[2].used_addr().unchecked_add(2))
                .unwrap_or_default()
        };
        assert_eq!(used(&mem), 0);
        r.balloon.backend_ready();
        assert_eq!(used(&mem), 0, "nobody asked");
        r.handle.request_stats().unwrap_or_else(|e| panic!("{e}"));
        r.balloon.backend_ready();
        assert_eq!(used(&mem), 1);
    }

    #[test]
    fn target_is_in_config_and_announced_and_actual_is_the_drivers() {
        let mem = memory();
        let mut r = rig(&mem);
        r.handle.set_target(1234).unwrap_or_else(|e| panic!("{e}"));
        let mut cfg = [0u8; 8];
        r.balloon.read_config(0, &mut cfg);
        assert_eq!(u32::from_le_bytes([cfg[0], cfg[1], cfg[2], cfg[3]]), 1234);
        assert_eq!(r.irq.read().ok(), Some(1));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        r.handle.observe(Arc::new(move |s: &BalloonStatus| {
            lock(&record).push(s.actual_pages);
        }));
        r.balloon.write_config(0, &99u32.to_le_bytes());
        r.balloon.write_config(4, &77u32.to_le_bytes());
        let s = r.handle.status();
        assert_eq!((s.target_pages, s.actual_pages), (1234, 77));
        assert_eq!(
            *lock(&seen),
            vec![77],
            "only the driver's write is announced"
        );
    }

    #[test]
    fn activation_needs_the_queues_the_features_imply() {
        let mem = memory();
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap_or_else(|e| panic!("{e}"));
        let (mut balloon, _) = Balloon::new(kick);
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap_or_else(|e| panic!("{e}"));
        let q = MockSplitQueue::new(&mem, 16);
        let activation = Activation {
            mem: mem.clone(),
            queues: vec![q.create_queue().unwrap_or_else(|e| panic!("{e}"))],
            interrupt: Interrupt::new(irq),
            features: VIRTIO_F_VERSION_1,
        };
        assert_eq!(
            balloon.activate(activation).err(),
            Some(ActivateError::Queues { got: 1, need: 2 })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]
        /// Random descriptor tables (any address, length, flags, next — loops included)
        /// on every queue never panic and never release memory outside guest RAM.
        #[test]
        fn random_descriptor_tables_never_panic(
            descs in prop::collection::vec((any::<u64>(), any::<u32>(), 0u16..8, 0u16..16), 1..16),
            queue in 0usize..4,
        ) {
            let mem = memory();
            let mut r = rig(&mem);
            let raw: Vec<RawDescriptor> = descs
                .iter()
                .map(|(addr, len, flags, next)| RawDescriptor::from(SplitDescriptor::new(*addr % (2 * MEM), *len % 0x10000, *flags, *next)))
                .collect();
            let table = r.queues[queue].desc_table_addr();
            for (i, d) in raw.iter().enumerate() {
                mem.write_obj(*d, table.unchecked_add(16 * i as u64)).unwrap_or_else(|e| panic!("{e}"));
            }
            let avail = r.queues[queue].avail_addr();
            mem.write_obj(0u16.to_le(), avail.unchecked_add(4)).unwrap_or_else(|e| panic!("{e}"));
            mem.write_obj(1u16.to_le(), avail.unchecked_add(2)).unwrap_or_else(|e| panic!("{e}"));
            r.balloon.queue_notified(queue);
            let s = r.handle.status();
            prop_assert!(s.inflated_pages <= 16 * 0x4000);
        }
    }
}
