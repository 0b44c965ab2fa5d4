//! The network device against mock queues and a datagram socket standing in for the tap:
//! frames go both ways whole and in order, a frame waits for the guest's buffers, and
//! malformed or oversized frames are dropped and counted, never a panic.

use std::os::unix::net::UnixDatagram;

use proptest::prelude::*;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::virtio::{Activation, Interrupt, VirtioDevice};

const MEMORY: u64 = 0x100_0000;
const BUFFERS: u64 = 0x20_0000;
const MAC: [u8; 6] = [0x06, 0, 0, 0, 0, 1];

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY as usize)])
        .unwrap_or_else(|e| panic!("{e}"))
}

struct Rig<'a> {
    mem: &'a GuestMemoryMmap,
    queues: Vec<MockSplitQueue<'a, GuestMemoryMmap>>,
    net: Net,
    info: NetInfo,
    peer: UnixDatagram,
    next: [u16; 2],
}

fn rig(mem: &GuestMemoryMmap) -> Rig<'_> {
    let (ours, peer) = UnixDatagram::pair().unwrap_or_else(|e| panic!("{e}"));
    ours.set_nonblocking(true).unwrap_or_else(|e| panic!("{e}"));
    peer.set_nonblocking(true).unwrap_or_else(|e| panic!("{e}"));
    let (mut net, info) = Net::new(Box::new(ours), MAC, "test0");
    let queues: Vec<_> = (0..2u64)
        .map(|i| MockSplitQueue::create(mem, GuestAddress(i * 0x1_0000), 16))
        .collect();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap_or_else(|e| panic!("{e}"));
    net.activate(Activation {
        mem: mem.clone(),
        queues: queues
            .iter()
            .map(|q| q.create_queue().unwrap_or_else(|e| panic!("{e}")))
            .collect(),
        interrupt: Interrupt::new(irq),
        features: net.features(),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    Rig {
        mem,
        queues,
        net,
        info,
        peer,
        next: [0; 2],
    }
}

impl Rig<'_> {
    /// Offers one chain of (addr, len, writable) on queue `q`.
    fn offer(&mut self, q: usize, descs: &[(u64, u32, bool)]) {
        let start = self.next[q];
        let raw = crate::virtio::testing::chain(start, descs);
        self.queues[q]
            .add_desc_chains(&raw, start)
            .unwrap_or_else(|e| panic!("{e:?}"));
        self.next[q] += descs.len() as u16;
    }

    /// Sends `frame` from the guest (header and frame in one buffer at `at`).
    fn transmit(&mut self, at: u64, frame: &[u8]) {
        let mut bytes = vec![0u8; HEADER];
        bytes.extend_from_slice(frame);
        self.mem
            .write_slice(&bytes, GuestAddress(at))
            .unwrap_or_else(|e| panic!("{e}"));
        self.offer(TX, &[(at, bytes.len() as u32, false)]);
        self.net.queue_notified(TX);
    }

    fn used(&self, q: usize) -> Vec<(u32, u32)> {
        let used = self.queues[q].used_addr();
        let idx: u16 = self.mem.read_obj(used.unchecked_add(2)).unwrap_or_default();
        (0..u64::from(idx))
            .map(|i| {
                let at = used.unchecked_add(4 + 8 * i);
                (
                    self.mem.read_obj(at).unwrap_or_default(),
                    self.mem.read_obj(at.unchecked_add(4)).unwrap_or_default(),
                )
            })
            .collect()
    }

    fn peer_frame(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70_000];
        let n = self.peer.recv(&mut buf).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    fn read(&self, at: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem
            .read_slice(&mut out, GuestAddress(at))
            .unwrap_or_else(|e| panic!("{e}"));
        out
    }
}

#[test]
fn frames_go_both_ways_whole_and_in_order() {
    let mem = memory();
    let mut r = rig(&mem);
    r.transmit(BUFFERS, b"first frame");
    r.transmit(BUFFERS + 0x1000, b"second");
    assert_eq!(r.peer_frame().as_deref(), Some(&b"first frame"[..]));
    assert_eq!(r.peer_frame().as_deref(), Some(&b"second"[..]));
    assert_eq!(r.used(TX).len(), 2);
    // A frame from the peer before the guest has a buffer waits for one.
    r.peer
        .send(b"to the guest")
        .unwrap_or_else(|e| panic!("{e}"));
    r.net.backend_ready();
    assert!(r.used(RX).is_empty());
    let at = BUFFERS + 0x10_0000;
    // Header and frame may span two buffers.
    r.offer(RX, &[(at, 8, true), (at + 0x100, 2048, true)]);
    r.net.queue_notified(RX);
    let len = 12 + "to the guest".len() as u32;
    assert_eq!(r.used(RX), vec![(0, len)]);
    let mut got = r.read(at, 8);
    got.extend(r.read(at + 0x100, len as usize - 8));
    assert_eq!(got[10], 1, "num_buffers is 1");
    assert_eq!(&got[12..], b"to the guest");
    assert_eq!(
        r.info.counters(),
        NetCounters {
            rx_frames: 1,
            rx_bytes: 12,
            rx_dropped: 0,
            tx_frames: 2,
            tx_bytes: 17,
            tx_dropped: 0,
        }
    );
    let mut config = [0u8; 8];
    r.net.read_config(0, &mut config);
    assert_eq!(config[..6], MAC);
    assert_eq!(u16::from_le_bytes([config[6], config[7]]), 1, "link up");
}

#[test]
fn malformed_and_oversized_frames_are_dropped_and_counted() {
    let mem = memory();
    let mut r = rig(&mem);
    // A transmit chain with a device-writable buffer, one shorter than the header, one
    // larger than a frame may be, and one outside guest memory.
    r.offer(TX, &[(BUFFERS, 64, false), (BUFFERS + 64, 64, true)]);
    r.offer(TX, &[(BUFFERS, 6, false)]);
    r.offer(TX, &[(BUFFERS, (HEADER + MAX_FRAME + 1) as u32, false)]);
    r.offer(TX, &[(MEMORY - 8, 64, false)]);
    r.net.queue_notified(TX);
    assert_eq!(r.used(TX).len(), 4, "every chain is given back");
    assert_eq!(r.peer_frame(), None, "nothing reached the tap");
    // A received frame larger than the guest's buffer is dropped; the next one fits.
    r.peer.send(&[7u8; 1000]).unwrap_or_else(|e| panic!("{e}"));
    r.peer.send(b"small").unwrap_or_else(|e| panic!("{e}"));
    r.offer(RX, &[(BUFFERS, 100, true)]);
    r.offer(RX, &[(BUFFERS + 0x1000, 100, true)]);
    r.net.queue_notified(RX);
    assert_eq!(r.used(RX), vec![(0, 0), (1, 17)]);
    assert_eq!(&r.read(BUFFERS + 0x1000 + 12, 5), b"small");
    let c = r.info.counters();
    assert_eq!(
        (c.tx_frames, c.tx_dropped, c.rx_frames, c.rx_dropped),
        (0, 4, 1, 1)
    );
}

proptest! {
    /// Random descriptor tables on both queues, with frames waiting: the device never
    /// panics, gives back every transmit chain it takes, and counts each transmit as sent
    /// or dropped.
    #[test]
    fn random_descriptor_tables_are_handled_safely(
        tables in prop::collection::vec(prop::collection::vec(
            (prop_oneof![Just(BUFFERS), Just(MEMORY - 4), Just(u64::MAX - 8), 0u64..MEMORY * 2],
             prop_oneof![Just(0u32), Just(12), Just(64), Just(2048), any::<u32>()],
             any::<bool>(), any::<bool>(), 0u16..16),
            1..16), 2..=2),
        frames in prop::collection::vec(1usize..3000, 0..4),
    ) {
        let mem = memory();
        let mut r = rig(&mem);
        for len in &frames {
            r.peer.send(&vec![0xabu8; *len]).unwrap_or_else(|e| panic!("{e}"));
        }
        for (q, table) in tables.iter().enumerate() {
            let raw: Vec<RawDescriptor> = table
                .iter()
                .map(|&(addr, len, writable, next, to)| {
                    let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
                    if next {
                        flags |= VRING_DESC_F_NEXT;
                    }
                    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, to))
                })
                .collect();
            r.queues[q].add_desc_chains(&raw, 0).unwrap_or_else(|e| panic!("{e:?}"));
        }
        r.net.queue_notified(TX);
        r.net.backend_ready();
        let used: u16 = mem
            .read_obj(r.queues[TX].used_addr().unchecked_add(2))
            .unwrap_or_default();
        let avail: u16 = mem
            .read_obj(r.queues[TX].avail_addr().unchecked_add(2))
            .unwrap_or_default();
        prop_assert_eq!(used, avail);
        let c = r.info.counters();
        prop_assert_eq!(c.tx_frames + c.tx_dropped, u64::from(used));
        prop_assert!(c.rx_frames + c.rx_dropped <= frames.len() as u64);
    }
}
