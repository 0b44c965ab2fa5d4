//! The balloon against mock queues in real guest memory: hostile descriptor tables are
//! counted as rejected, never a panic.

// Whether a page is resident is a mincore on memory Rust cannot reason about.
#![allow(unsafe_code)]

use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::virtio::{lock, ActivateError, Activation, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};

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
