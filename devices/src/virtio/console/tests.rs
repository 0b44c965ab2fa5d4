//! The console against mock queues: bytes flow both ways in order and bounded, and
//! malformed chains are refused and counted, never a panic.

use std::io::Read;

use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::virtio::{Activation, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};

const DATA: u64 = 0x10_0000;

struct Rig<'a> {
    mem: &'a GuestMemoryMmap,
    queues: Vec<MockSplitQueue<'a, GuestMemoryMmap>>,
    console: Console,
    agent: AgentChannel,
    next: Vec<u16>,
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap_or_else(|e| panic!("{e}"))
}

fn rig(mem: &GuestMemoryMmap) -> Rig<'_> {
    let queues: Vec<_> = (0..6u64)
        .map(|i| MockSplitQueue::create(mem, GuestAddress(i * 0x1_0000), 16))
        .collect();
    let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap_or_else(|e| panic!("{e}"));
    let (mut console, agent) = Console::new(kick);
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap_or_else(|e| panic!("{e}"));
    let activation = Activation {
        mem: mem.clone(),
        queues: queues
            .iter()
            .map(|q| q.create_queue().unwrap_or_else(|e| panic!("{e}")))
            .collect(),
        interrupt: Interrupt::new(irq),
        features: VIRTIO_F_VERSION_1 | F_MULTIPORT,
    };
    console
        .activate(activation)
        .unwrap_or_else(|e| panic!("{e}"));
    Rig {
        mem,
        queues,
        console,
        agent,
        next: vec![0; 6],
    }
}

impl Rig<'_> {
    /// Offers one chain on queue `q`: descriptors of (addr, len, writable).
    fn offer(&mut self, q: usize, descs: &[(u64, u32, bool)]) {
        let start = self.next[q];
        let raw = crate::virtio::testing::chain(start, descs);
        self.queues[q]
            .add_desc_chains(&raw, start)
            .unwrap_or_else(|e| panic!("{e:?}"));
        self.next[q] += descs.len() as u16;
    }

    fn send_control(&mut self, at: u64, id: u32, event: u16, value: u16) {
        let mut msg = id.to_le_bytes().to_vec();
        msg.extend_from_slice(&event.to_le_bytes());
        msg.extend_from_slice(&value.to_le_bytes());
        self.mem
            .write_slice(&msg, GuestAddress(at))
            .unwrap_or_else(|e| panic!("{e}"));
        self.offer(CONTROL_TX, &[(at, 8, false)]);
        self.console.queue_notified(CONTROL_TX);
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
}

#[test]
fn handshake_names_the_agent_port_and_opens_it() {
    let mem = memory();
    let mut r = rig(&mem);
    for i in 0..8u64 {
        r.offer(CONTROL_RX, &[(DATA + 0x100 * i, 64, true)]);
    }
    r.send_control(DATA + 0x2000, 0, DEVICE_READY, 1);
    r.send_control(DATA + 0x2010, AGENT_PORT, PORT_READY, 1);
    let used = r.used(CONTROL_RX);
    assert_eq!(
        used.iter().map(|u| u.1).collect::<Vec<_>>(),
        vec![8, 8, 8 + AGENT_PORT_NAME.len() as u32, 8]
    );
    let mut name = vec![0u8; AGENT_PORT_NAME.len()];
    mem.read_slice(&mut name, GuestAddress(DATA + 0x200 + 8))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(name, AGENT_PORT_NAME.as_bytes());
    let event: u16 = mem
        .read_obj(GuestAddress(DATA + 0x200 + 4))
        .unwrap_or_default();
    assert_eq!(event, PORT_NAME);
    assert!(!r.agent.guest_open());
    r.send_control(DATA + 0x2020, AGENT_PORT, PORT_OPEN, 1);
    assert!(r.agent.guest_open());
}

#[test]
fn bytes_cross_both_ways_in_order_with_bounded_buffers() {
    let mem = memory();
    let mut r = rig(&mem);
    mem.write_slice(b"hello ", GuestAddress(DATA))
        .unwrap_or_else(|e| panic!("{e}"));
    mem.write_slice(b"host", GuestAddress(DATA + 0x100))
        .unwrap_or_else(|e| panic!("{e}"));
    r.offer(AGENT_TX, &[(DATA, 6, false), (DATA + 0x100, 4, false)]);
    r.console.queue_notified(AGENT_TX);
    let mut buf = [0u8; 32];
    let n = r.agent.read(&mut buf);
    assert_eq!(&buf[..n], b"hello host");
    assert_eq!(r.agent.write(b"abcdefgh"), 8);
    r.offer(AGENT_RX, &[(DATA + 0x1000, 5, true)]);
    r.offer(AGENT_RX, &[(DATA + 0x2000, 16, true)]);
    r.console.pump();
    assert_eq!(r.used(AGENT_RX), vec![(0, 5), (1, 3)]);
    let mut got = [0u8; 8];
    mem.read_slice(&mut got[..5], GuestAddress(DATA + 0x1000))
        .unwrap_or_else(|e| panic!("{e}"));
    mem.read_slice(&mut got[5..], GuestAddress(DATA + 0x2000))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&got, b"abcdefgh");
}

#[test]
fn a_full_host_buffer_stalls_the_guest_without_losing_bytes() {
    let mem = memory();
    let mut r = rig(&mem);
    let big = vec![7u8; BUFFER_LIMIT];
    r.agent
        .channel
        .lock()
        .map(|mut c| c.to_host.extend(&big))
        .ok();
    mem.write_slice(b"later", GuestAddress(DATA))
        .unwrap_or_else(|e| panic!("{e}"));
    r.offer(AGENT_TX, &[(DATA, 5, false)]);
    r.console.queue_notified(AGENT_TX);
    assert!(r.used(AGENT_TX).is_empty());
    let mut sink = vec![0u8; BUFFER_LIMIT];
    assert_eq!(r.agent.read(&mut sink), BUFFER_LIMIT);
    r.console.pump();
    assert_eq!(r.used(AGENT_TX).len(), 1);
    let mut buf = [0u8; 8];
    let n = r.agent.read(&mut buf);
    assert_eq!(&buf[..n], b"later");
    assert_eq!(r.agent.write(&vec![0u8; BUFFER_LIMIT + 10]), BUFFER_LIMIT);
    assert_eq!(r.agent.write(b"x"), 0);
}

#[test]
fn the_blocking_stream_waits_for_the_guest_and_ends_on_close() {
    let mem = memory();
    let mut r = rig(&mem);
    let (mut reader, _writer) = r.agent.stream();
    let waiter = std::thread::spawn(move || {
        let mut buf = [0u8; 16];
        let n = reader.read(&mut buf).unwrap_or(0);
        let tail = reader.read(&mut buf).unwrap_or(99);
        (buf[..n].to_vec(), tail)
    });
    mem.write_slice(b"late", GuestAddress(DATA))
        .unwrap_or_else(|e| panic!("{e}"));
    r.offer(AGENT_TX, &[(DATA, 4, false)]);
    r.console.queue_notified(AGENT_TX);
    r.agent.close();
    let (first, tail) = waiter.join().unwrap_or_else(|_| panic!("reader"));
    assert_eq!((first.as_slice(), tail), (&b"late"[..], 0));
}

#[test]
fn malformed_chains_are_refused_and_counted() {
    let mem = memory();
    let mut r = rig(&mem);
    r.offer(AGENT_TX, &[(DATA, 4, true)]);
    r.offer(AGENT_TX, &[(0x7fff_0000_0000, 4, false)]);
    r.offer(AGENT_TX, &[(DATA, u32::MAX, false)]);
    r.console.queue_notified(AGENT_TX);
    r.offer(CONTROL_TX, &[(DATA, 4, false)]);
    r.console.queue_notified(CONTROL_TX);
    assert_eq!(r.agent.rejected(), 4);
    assert_eq!(r.agent.read(&mut [0u8; 8]), 0);
    assert_eq!(r.used(AGENT_TX).len(), 3);
}
