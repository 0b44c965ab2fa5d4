//! The memory device against mock queues in real guest memory: every request type, every
//! malformed request answered and counted, and random sequences that keep the bitmap, the
//! backing and `plugged_size` in step.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::virtio::{Activation, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};

const MEM: u64 = 0x40_0000;
/// Where requests and responses are written.
const DATA: u64 = 0x10_0000;
/// The device's region: 16 blocks of 2 MiB, far above guest memory.
const REGION: u64 = 0x1_0000_0000;
const BLOCK: u64 = 2 << 20;
const BLOCKS: u64 = 16;
const QUEUE: u16 = 256;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)])
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A backing that remembers which blocks are mapped and can be told to fail one.
#[derive(Clone, Default)]
struct FakeBacking {
    mapped: Arc<Mutex<BTreeSet<u64>>>,
    fail: Arc<Mutex<Option<u64>>>,
}

impl BlockBacking for FakeBacking {
    fn plug(&mut self, index: u64) -> Result<(), String> {
        if *self.fail.lock().unwrap() == Some(index) {
            return Err(format!("block {index} refused"));
        }
        assert!(
            self.mapped.lock().unwrap().insert(index),
            "block {index} mapped twice"
        );
        Ok(())
    }

    fn unplug(&mut self, index: u64) -> Result<(), String> {
        if *self.fail.lock().unwrap() == Some(index) {
            return Err(format!("block {index} refused"));
        }
        assert!(
            self.mapped.lock().unwrap().remove(&index),
            "block {index} not mapped"
        );
        Ok(())
    }
}

struct Rig<'a> {
    mem: &'a GuestMemoryMmap,
    queue: MockSplitQueue<'a, GuestMemoryMmap>,
    device: Mem,
    handle: MemHandle,
    backing: FakeBacking,
    irq: EventFd,
    next: u16,
    slot: u64,
}

fn rig(mem: &GuestMemoryMmap, requested: u64) -> Rig<'_> {
    let queue = MockSplitQueue::create(mem, GuestAddress(0), QUEUE);
    let backing = FakeBacking::default();
    let config = MemConfig {
        addr: REGION,
        region_size: BLOCKS * BLOCK,
        block_size: BLOCK,
        node_id: 1,
    };
    let (mut device, handle) = Mem::new(config, requested, Box::new(backing.clone())).unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let activation = Activation {
        mem: mem.clone(),
        queues: vec![queue.create_queue().unwrap()],
        interrupt: Interrupt::new(irq.try_clone().unwrap()),
        features: VIRTIO_F_VERSION_1 | F_ACPI_PXM | F_UNPLUGGED_INACCESSIBLE,
    };
    device.activate(activation).unwrap();
    Rig {
        mem,
        queue,
        device,
        handle,
        backing,
        irq,
        next: 0,
        slot: 0,
    }
}

fn request(kind: u16, addr: u64, blocks: u16) -> Vec<u8> {
    let mut raw = vec![0u8; REQ_LEN];
    raw[..2].copy_from_slice(&kind.to_le_bytes());
    raw[8..16].copy_from_slice(&addr.to_le_bytes());
    raw[16..18].copy_from_slice(&blocks.to_le_bytes());
    raw
}

impl Rig<'_> {
    /// Offers one chain of `(bytes written by the driver, length, device-writable)`
    /// buffers and returns the used length and the response type and state.
    fn offer(&mut self, parts: &[(Vec<u8>, u32, bool)]) -> (u32, u16, u16) {
        let base = DATA + self.slot * 0x100;
        self.slot += 1;
        let mut at = base;
        let mut raw = Vec::new();
        let mut response = None;
        for (i, (bytes, len, writable)) in parts.iter().enumerate() {
            self.mem.write_slice(bytes, GuestAddress(at)).unwrap();
            let mut flags = if *writable { VRING_DESC_F_WRITE } else { 0 };
            if i + 1 < parts.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            if *writable && response.is_none() {
                self.mem
                    .write_slice(&[0xee; RESP_LEN], GuestAddress(at))
                    .unwrap();
                response = Some(at);
            }
            let next = self.next + i as u16 + 1;
            raw.push(RawDescriptor::from(SplitDescriptor::new(
                at,
                *len,
                flags as u16,
                next,
            )));
            at += 0x40;
        }
        self.queue.add_desc_chains(&raw, self.next).unwrap();
        self.next += parts.len() as u16;
        self.device.queue_notified(0);
        let used = self.queue.used_addr();
        let idx: u16 = self.mem.read_obj(used.unchecked_add(2)).unwrap();
        let entry = used.unchecked_add(4 + 8 * u64::from(idx - 1));
        let len: u32 = self.mem.read_obj(entry.unchecked_add(4)).unwrap();
        let (kind, state) = response.map_or((u16::MAX, u16::MAX), |at| {
            (
                self.mem.read_obj(GuestAddress(at)).unwrap(),
                self.mem.read_obj(GuestAddress(at + 8)).unwrap(),
            )
        });
        (len, kind, state)
    }

    /// A well-formed request: the response type and state.
    fn ask(&mut self, kind: u16, addr: u64, blocks: u16) -> (u16, u16) {
        let (len, kind, state) = self.offer(&[
            (request(kind, addr, blocks), REQ_LEN as u32, false),
            (vec![], RESP_LEN as u32, true),
        ]);
        assert_eq!(len, RESP_LEN as u32);
        (kind, state)
    }

    fn block(i: u64) -> u64 {
        REGION + i * BLOCK
    }

    fn mapped(&self) -> Vec<u64> {
        self.backing
            .mapped
            .lock()
            .unwrap()
            .iter()
            .copied()
            .collect()
    }
}

#[test]
fn configuration_space_describes_the_region() {
    let mem = memory();
    let r = rig(&mem, 4 * BLOCK);
    let mut space = [0u8; 56];
    r.device.read_config(0, &mut space);
    let u64_at = |at: usize| u64::from_le_bytes(space[at..at + 8].try_into().unwrap());
    assert_eq!(u64_at(0), BLOCK);
    assert_eq!(u16::from_le_bytes([space[8], space[9]]), 1);
    assert_eq!(u64_at(16), REGION);
    assert_eq!(u64_at(24), BLOCKS * BLOCK);
    assert_eq!(u64_at(32), BLOCKS * BLOCK);
    assert_eq!(u64_at(40), 0);
    assert_eq!(u64_at(48), 4 * BLOCK);
    assert_eq!(r.device.device_type(), 24);
    assert_eq!(
        r.device.features() & (F_ACPI_PXM | F_UNPLUGGED_INACCESSIBLE),
        F_ACPI_PXM | F_UNPLUGGED_INACCESSIBLE
    );
}

#[test]
fn plug_up_to_the_requested_size_then_refuse() {
    let mem = memory();
    let mut r = rig(&mem, 3 * BLOCK);
    assert_eq!(r.ask(REQ_PLUG, Rig::block(0), 2), (RESP_ACK, 0));
    assert_eq!(r.ask(REQ_PLUG, Rig::block(2), 2), (RESP_NACK, 0));
    assert_eq!(r.ask(REQ_PLUG, Rig::block(2), 1), (RESP_ACK, 0));
    assert_eq!(r.mapped(), vec![0, 1, 2]);
    let status = r.handle.status();
    assert_eq!((status.plugged_size, status.refused), (3 * BLOCK, 1));
    // Plugging what is plugged is an error, and changes nothing.
    assert_eq!(r.ask(REQ_PLUG, Rig::block(1), 1), (RESP_ERROR, 0));
    assert_eq!(r.mapped(), vec![0, 1, 2]);
    assert!(r.irq.read().unwrap() > 0, "the used ring was signalled");
}

#[test]
fn unplug_state_and_unplug_all() {
    let mem = memory();
    let mut r = rig(&mem, 8 * BLOCK);
    assert_eq!(r.ask(REQ_PLUG, Rig::block(4), 4), (RESP_ACK, 0));
    assert_eq!(
        r.ask(REQ_STATE, Rig::block(4), 4),
        (RESP_ACK, STATE_PLUGGED)
    );
    assert_eq!(
        r.ask(REQ_STATE, Rig::block(0), 4),
        (RESP_ACK, STATE_UNPLUGGED)
    );
    assert_eq!(r.ask(REQ_STATE, Rig::block(2), 4), (RESP_ACK, STATE_MIXED));
    assert_eq!(r.ask(REQ_UNPLUG, Rig::block(5), 2), (RESP_ACK, 0));
    assert_eq!(r.mapped(), vec![4, 7]);
    // Unplugging a range with an unplugged block is an error and unplugs nothing.
    assert_eq!(r.ask(REQ_UNPLUG, Rig::block(4), 2), (RESP_ERROR, 0));
    assert_eq!(r.mapped(), vec![4, 7]);
    assert_eq!(r.ask(REQ_UNPLUG_ALL, 0, 0), (RESP_ACK, 0));
    assert!(r.mapped().is_empty());
    assert_eq!(r.handle.status().plugged_size, 0);
}

#[test]
fn ranges_outside_the_region_or_unaligned_are_errors() {
    let mem = memory();
    let mut r = rig(&mem, BLOCKS * BLOCK);
    let cases = [
        (REQ_PLUG, Rig::block(0) + 4096, 1),
        (REQ_PLUG, REGION - BLOCK, 1),
        (REQ_PLUG, Rig::block(BLOCKS - 1), 2),
        (REQ_PLUG, Rig::block(0), 0),
        (REQ_PLUG, u64::MAX - BLOCK + 1, u16::MAX),
        (REQ_UNPLUG, Rig::block(BLOCKS), 1),
        (REQ_STATE, 0, 1),
        (7, Rig::block(0), 1),
    ];
    for (kind, addr, blocks) in cases {
        assert_eq!(
            r.ask(kind, addr, blocks),
            (RESP_ERROR, 0),
            "type {kind} at 0x{addr:x} x{blocks}"
        );
    }
    assert!(r.mapped().is_empty());
    assert_eq!(r.handle.status().errors, cases.len() as u64);
}

#[test]
fn malformed_chains_are_answered_where_possible_and_counted() {
    let mem = memory();
    let mut r = rig(&mem, 4 * BLOCK);
    let plug = request(REQ_PLUG, Rig::block(0), 1);
    // A request too short: an error response.
    let (len, kind, _) = r.offer(&[(plug[..16].to_vec(), 16, false), (vec![], 10, true)]);
    assert_eq!((len, kind), (RESP_LEN as u32, RESP_ERROR));
    // The request in a device-writable buffer (wrong direction): no request at all.
    let (len, kind, _) = r.offer(&[(plug.clone(), REQ_LEN as u32, true)]);
    assert_eq!((len, kind), (RESP_LEN as u32, RESP_ERROR));
    // No room for the response: nothing written, the chain still returned.
    let (len, _, _) = r.offer(&[(plug.clone(), REQ_LEN as u32, false), (vec![], 9, true)]);
    assert_eq!(len, 0);
    let (len, _, _) = r.offer(&[(plug.clone(), REQ_LEN as u32, false)]);
    assert_eq!(len, 0);
    // A request split over two descriptors is read whole.
    let (len, kind, _) = r.offer(&[
        (plug[..5].to_vec(), 5, false),
        (plug[5..].to_vec(), 19, false),
        (vec![], 10, true),
    ]);
    assert_eq!((len, kind), (RESP_LEN as u32, RESP_ACK));
    assert_eq!(r.mapped(), vec![0]);
    assert_eq!(r.handle.status().errors, 4);
}

#[test]
fn descriptors_outside_guest_memory_are_errors() {
    let mem = memory();
    let mut r = rig(&mem, 4 * BLOCK);
    let raw = [
        RawDescriptor::from(SplitDescriptor::new(
            MEM + 0x1000,
            24,
            VRING_DESC_F_NEXT as u16,
            1,
        )),
        RawDescriptor::from(SplitDescriptor::new(DATA, 10, VRING_DESC_F_WRITE as u16, 0)),
    ];
    r.queue.add_desc_chains(&raw, 0).unwrap();
    r.device.queue_notified(0);
    assert_eq!(mem.read_obj::<u16>(GuestAddress(DATA)).unwrap(), RESP_ERROR);
    assert_eq!(r.handle.status().errors, 1);
}

#[test]
fn a_failed_backing_leaves_nothing_of_the_request_plugged() {
    let mem = memory();
    let mut r = rig(&mem, 8 * BLOCK);
    *r.backing.fail.lock().unwrap() = Some(2);
    assert_eq!(r.ask(REQ_PLUG, Rig::block(0), 4), (RESP_ERROR, 0));
    assert!(r.mapped().is_empty());
    assert_eq!(r.handle.status().plugged_size, 0);
    *r.backing.fail.lock().unwrap() = None;
    assert_eq!(r.ask(REQ_PLUG, Rig::block(0), 4), (RESP_ACK, 0));
    *r.backing.fail.lock().unwrap() = Some(1);
    // The block that cannot be freed stays plugged; the rest go.
    assert_eq!(r.ask(REQ_UNPLUG_ALL, 0, 0), (RESP_ERROR, 0));
    assert_eq!(r.mapped(), vec![1]);
    assert_eq!(r.handle.status().plugged_size, BLOCK);
}

#[test]
fn the_requested_size_is_checked_and_announced() {
    let mem = memory();
    let r = rig(&mem, 0);
    assert_eq!(
        r.handle.set_requested(BLOCKS * BLOCK + BLOCK),
        Err(RequestedSizeError::TooLarge {
            requested: (BLOCKS + 1) * BLOCK,
            region: BLOCKS * BLOCK
        })
    );
    assert!(matches!(
        r.handle.set_requested(BLOCK + 4096),
        Err(RequestedSizeError::Unaligned { .. })
    ));
    let _ = r.irq.read();
    r.handle.set_requested(2 * BLOCK).unwrap();
    assert_eq!(r.irq.read().unwrap(), 1);
    assert_eq!(r.handle.status().requested_size, 2 * BLOCK);
}

#[test]
fn bad_configurations_are_refused() {
    let config = |addr, region_size, block_size| MemConfig {
        addr,
        region_size,
        block_size,
        node_id: 0,
    };
    let new = |c| Mem::new(c, 0, Box::new(FakeBacking::default())).map(|_| ());
    assert_eq!(
        new(config(REGION, BLOCK, 3 << 20)),
        Err(MemConfigError::BlockSize(3 << 20))
    );
    assert_eq!(
        new(config(REGION, BLOCK, 2048)),
        Err(MemConfigError::BlockSize(2048))
    );
    assert!(new(config(REGION + 4096, BLOCK, BLOCK)).is_err());
    assert!(new(config(REGION, 0, BLOCK)).is_err());
    assert!(new(config(u64::MAX - BLOCK + 1, 2 * BLOCK, BLOCK)).is_err());
    assert!(new(config(REGION, BLOCK, BLOCK)).is_ok());
    let unaligned = Mem::new(
        config(REGION, 4 * BLOCK, BLOCK),
        BLOCK + 4096,
        Box::new(FakeBacking::default()),
    );
    assert!(matches!(
        unaligned.map(|_| ()),
        Err(MemConfigError::Requested(
            RequestedSizeError::Unaligned { .. }
        ))
    ));
}

#[test]
fn reset_keeps_what_is_plugged() {
    let mem = memory();
    let mut r = rig(&mem, 4 * BLOCK);
    assert_eq!(r.ask(REQ_PLUG, Rig::block(0), 2), (RESP_ACK, 0));
    r.device.reset();
    assert_eq!(r.device.status().plugged_size, 2 * BLOCK);
    assert_eq!(r.mapped(), vec![0, 1]);
}

#[derive(Debug, Clone)]
enum Op {
    Request(u16, u64, u16),
    Requested(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u16..5, 0u64..BLOCKS + 2, 0u16..6).prop_map(|(k, b, n)| Op::Request(k, b, n)),
        1 => (0u64..=BLOCKS).prop_map(Op::Requested),
    ]
}

proptest! {
    #[test]
    fn random_requests_keep_bitmap_backing_and_size_in_step(ops in prop::collection::vec(op(), 1..100)) {
        let mem = memory();
        let mut r = rig(&mem, 4 * BLOCK);
        let mut expected: BTreeSet<u64> = BTreeSet::new();
        for op in ops {
            match op {
                Op::Requested(blocks) => r.handle.set_requested(blocks * BLOCK).unwrap(),
                Op::Request(kind, block, n) => {
                    let requested = r.handle.status().requested_size;
                    let (resp, _) = r.ask(kind, Rig::block(block), n);
                    let range: Vec<u64> = (block..block + u64::from(n)).collect();
                    let inside = n > 0 && block + u64::from(n) <= BLOCKS;
                    match (kind, resp) {
                        (REQ_PLUG, RESP_ACK) => {
                            prop_assert!(inside);
                            prop_assert!(range.iter().all(|b| !expected.contains(b)));
                            expected.extend(range);
                            prop_assert!(expected.len() as u64 * BLOCK <= requested);
                        }
                        (REQ_UNPLUG, RESP_ACK) => {
                            prop_assert!(inside && range.iter().all(|b| expected.contains(b)));
                            for b in range {
                                expected.remove(&b);
                            }
                        }
                        (REQ_UNPLUG_ALL, RESP_ACK) => expected.clear(),
                        (REQ_STATE, RESP_ACK) => prop_assert!(inside),
                        (_, RESP_ERROR | RESP_NACK) => {}
                        other => prop_assert!(false, "unexpected {other:?}"),
                    }
                }
            }
            prop_assert_eq!(r.mapped(), expected.iter().copied().collect::<Vec<_>>());
            prop_assert_eq!(r.handle.status().plugged_size, expected.len() as u64 * BLOCK);
        }
    }
}
