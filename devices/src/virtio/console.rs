//! virtio-console with the multiport feature: port 0 is a plain console, port 1 is the
//! named agent channel (`org.mempart.agent.0`) whose bytes the VMM reads and writes.
//! Both directions are bounded: a slow reader on either side stalls the writer, nothing
//! is dropped or reordered, and no buffer grows past its limit.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{
    lock, read_config_bytes, ActivateError, Activation, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};

/// The virtio device id of a console.
pub const DEVICE_TYPE: u32 = 3;
/// Feature bit: multiple ports and the control queues.
pub const F_MULTIPORT: u64 = 1 << 1;
/// The agent port's name, as the guest reads it from `/sys/class/virtio-ports/*/name`.
pub const AGENT_PORT_NAME: &str = "org.mempart.agent.0";
/// The agent port's id.
pub const AGENT_PORT: u32 = 1;
/// Queue size of every console queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes buffered in each direction of the agent port.
pub const BUFFER_LIMIT: usize = 1 << 20;
/// Largest transmit chain the device accepts (larger ones are refused and counted).
pub const MAX_CHAIN: usize = 1 << 20;
/// Most control messages waiting for the driver's buffers.
const CONTROL_BACKLOG: usize = 64;

/// Control events (virtio spec 5.3.6.2).
const DEVICE_READY: u16 = 0;
const DEVICE_ADD: u16 = 1;
const PORT_READY: u16 = 3;
const CONSOLE_PORT: u16 = 4;
const PORT_OPEN: u16 = 6;
const PORT_NAME: u16 = 7;

/// Queue indexes with the multiport feature (port 0's receive queue, 0, stays unused:
/// the console port gets no input).
const PORT0_TX: usize = 1;
const CONTROL_RX: usize = 2;
const CONTROL_TX: usize = 3;
const AGENT_RX: usize = 4;
const AGENT_TX: usize = 5;

#[derive(Default)]
struct Channel {
    to_host: VecDeque<u8>,
    to_guest: VecDeque<u8>,
    guest_open: bool,
    rejected: u64,
    closed: bool,
}

/// The VMM's end of the agent port: a bounded byte stream each way.
#[derive(Clone)]
pub struct AgentChannel {
    channel: Arc<Mutex<Channel>>,
    moved: Arc<Condvar>,
    kick: Arc<EventFd>,
}

impl AgentChannel {
    /// Queues bytes for the guest; returns how many fit (the rest must be written again later).
    pub fn write(&self, bytes: &[u8]) -> usize {
        let n = {
            let mut c = lock(&self.channel);
            let n = bytes
                .len()
                .min(BUFFER_LIMIT.saturating_sub(c.to_guest.len()));
            c.to_guest.extend(bytes.iter().take(n));
            n
        };
        if n > 0 {
            let _ = self.kick.write(1);
        }
        n
    }

    /// Takes up to `buf.len()` bytes the guest sent; returns how many.
    pub fn read(&self, buf: &mut [u8]) -> usize {
        let n = {
            let mut c = lock(&self.channel);
            let n = buf.len().min(c.to_host.len());
            for (dst, src) in buf.iter_mut().zip(c.to_host.drain(..n)) {
                *dst = src;
            }
            n
        };
        if n > 0 {
            let _ = self.kick.write(1);
        }
        n
    }

    /// Whether the guest has the port open.
    pub fn guest_open(&self) -> bool {
        lock(&self.channel).guest_open
    }

    /// Transmit chains and control messages refused as malformed.
    pub fn rejected(&self) -> u64 {
        lock(&self.channel).rejected
    }

    /// A blocking reader and writer over the channel, for a protocol server.
    pub fn stream(&self) -> (AgentReader, AgentWriter) {
        (AgentReader(self.clone()), AgentWriter(self.clone()))
    }

    /// Ends the stream: blocked readers see end of file, writers an error.
    pub fn close(&self) {
        lock(&self.channel).closed = true;
        self.moved.notify_all();
    }
}

/// Reads what the guest sent, waiting for bytes; end of file once closed.
pub struct AgentReader(AgentChannel);

impl Read for AgentReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let channel = &self.0;
        let mut c = lock(&channel.channel);
        while c.to_host.is_empty() && !c.closed {
            c = channel
                .moved
                .wait(c)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let n = buf.len().min(c.to_host.len());
        for (dst, src) in buf.iter_mut().zip(c.to_host.drain(..n)) {
            *dst = src;
        }
        drop(c);
        if n > 0 {
            let _ = channel.kick.write(1);
        }
        Ok(n)
    }
}

/// Writes to the guest, waiting while its buffer is full.
pub struct AgentWriter(AgentChannel);

impl Write for AgentWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let channel = &self.0;
        loop {
            {
                let mut c = lock(&channel.channel);
                if c.closed {
                    return Err(std::io::ErrorKind::BrokenPipe.into());
                }
                if c.to_guest.len() >= BUFFER_LIMIT {
                    c = channel
                        .moved
                        .wait(c)
                        .unwrap_or_else(PoisonError::into_inner);
                    drop(c);
                    continue;
                }
            }
            return Ok(channel.write(bytes));
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The console device model.
pub struct Console {
    channel: Arc<Mutex<Channel>>,
    moved: Arc<Condvar>,
    kick: Arc<EventFd>,
    mem: Option<GuestMemoryMmap>,
    queues: Vec<Queue>,
    interrupt: Option<Interrupt>,
    control_out: VecDeque<Vec<u8>>,
}

impl Console {
    /// A console with the agent port; `kick` wakes the event loop when the VMM side moved bytes.
    pub fn new(kick: EventFd) -> (Console, AgentChannel) {
        let channel = Arc::new(Mutex::new(Channel::default()));
        let moved = Arc::new(Condvar::new());
        let kick = Arc::new(kick);
        let handle = AgentChannel {
            channel: Arc::clone(&channel),
            moved: Arc::clone(&moved),
            kick: Arc::clone(&kick),
        };
        let console = Console {
            channel,
            moved,
            kick,
            mem: None,
            queues: Vec::new(),
            interrupt: None,
            control_out: VecDeque::new(),
        };
        (console, handle)
    }

    fn control(&mut self, id: u32, event: u16, value: u16, extra: &[u8]) {
        if self.control_out.len() >= CONTROL_BACKLOG {
            lock(&self.channel).rejected += 1;
            return;
        }
        let mut msg = Vec::with_capacity(8 + extra.len());
        msg.extend_from_slice(&id.to_le_bytes());
        msg.extend_from_slice(&event.to_le_bytes());
        msg.extend_from_slice(&value.to_le_bytes());
        msg.extend_from_slice(extra);
        self.control_out.push_back(msg);
    }

    fn handle_control(&mut self, id: u32, event: u16, value: u16) {
        match event {
            DEVICE_READY if value == 1 => {
                self.control(0, DEVICE_ADD, 0, &[]);
                self.control(AGENT_PORT, DEVICE_ADD, 0, &[]);
            }
            PORT_READY if value == 1 && id == 0 => self.control(0, CONSOLE_PORT, 1, &[]),
            PORT_READY if value == 1 && id == AGENT_PORT => {
                self.control(AGENT_PORT, PORT_NAME, 1, AGENT_PORT_NAME.as_bytes());
                self.control(AGENT_PORT, PORT_OPEN, 1, &[]);
            }
            PORT_OPEN if id == AGENT_PORT => lock(&self.channel).guest_open = value == 1,
            _ => {}
        }
    }

    /// Moves everything that can move: control messages both ways, agent bytes both ways,
    /// console output drained. Raises the interrupt if any used ring changed.
    pub fn pump(&mut self) {
        let Some(mem) = self.mem.clone() else { return };
        let mut used = [false; 6];
        used[CONTROL_TX] = self.read_control(&mem);
        used[CONTROL_RX] = self.write_control(&mem);
        used[PORT0_TX] = self.drain_console(&mem);
        used[AGENT_TX] = self.read_agent(&mem);
        used[AGENT_RX] = self.write_agent(&mem);
        if used[AGENT_TX] || used[AGENT_RX] {
            self.moved.notify_all();
        }
        let notify = used.iter().enumerate().any(|(i, u)| {
            *u && self
                .queues
                .get_mut(i)
                .is_some_and(|q| q.needs_notification(&mem).unwrap_or(true))
        });
        if notify {
            if let Some(interrupt) = &self.interrupt {
                let _ = interrupt.used_ring();
            }
        }
    }

    fn read_control(&mut self, mem: &GuestMemoryMmap) -> bool {
        let mut messages = Vec::new();
        let mut any = false;
        if let Some(q) = self.queues.get_mut(CONTROL_TX) {
            while let Some(chain) = q.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let mut header = [0u8; 8];
                let ok = read_chain(mem, chain, &mut header).is_some_and(|n| n >= 8);
                if ok {
                    let id = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
                    let event = u16::from_le_bytes([header[4], header[5]]);
                    let value = u16::from_le_bytes([header[6], header[7]]);
                    messages.push((id, event, value));
                } else {
                    lock(&self.channel).rejected += 1;
                }
                any |= q.add_used(mem, head, 0).is_ok();
            }
        }
        for (id, event, value) in messages {
            self.handle_control(id, event, value);
        }
        any
    }

    fn write_control(&mut self, mem: &GuestMemoryMmap) -> bool {
        let mut any = false;
        let Some(q) = self.queues.get_mut(CONTROL_RX) else {
            return false;
        };
        while let Some(msg) = self.control_out.front() {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let written = write_chain(mem, chain, msg);
            if written < msg.len() {
                lock(&self.channel).rejected += 1;
            }
            self.control_out.pop_front();
            any |= q.add_used(mem, head, written as u32).is_ok();
        }
        any
    }

    fn drain_console(&mut self, mem: &GuestMemoryMmap) -> bool {
        let mut any = false;
        if let Some(q) = self.queues.get_mut(PORT0_TX) {
            while let Some(chain) = q.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                any |= q.add_used(mem, head, 0).is_ok();
            }
        }
        any
    }

    fn read_agent(&mut self, mem: &GuestMemoryMmap) -> bool {
        let mut any = false;
        let Some(q) = self.queues.get_mut(AGENT_TX) else {
            return false;
        };
        loop {
            let room = BUFFER_LIMIT.saturating_sub(lock(&self.channel).to_host.len());
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let Some(len) = chain_len(&chain, false) else {
                lock(&self.channel).rejected += 1;
                any |= q.add_used(mem, head, 0).is_ok();
                continue;
            };
            if len > room {
                // No room yet: leave the chain for when the VMM has read.
                q.go_to_previous_position();
                break;
            }
            let mut bytes = vec![0u8; len];
            let n = read_chain(mem, chain, &mut bytes).unwrap_or(0);
            let mut c = lock(&self.channel);
            if n == len {
                c.to_host.extend(&bytes);
            } else {
                c.rejected += 1;
            }
            drop(c);
            any |= q.add_used(mem, head, 0).is_ok();
        }
        any
    }

    fn write_agent(&mut self, mem: &GuestMemoryMmap) -> bool {
        let mut any = false;
        let Some(q) = self.queues.get_mut(AGENT_RX) else {
            return false;
        };
        loop {
            let pending: Vec<u8> = {
                let c = lock(&self.channel);
                if c.to_guest.is_empty() {
                    break;
                }
                c.to_guest.iter().take(MAX_CHAIN).copied().collect()
            };
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let written = write_chain(mem, chain, &pending);
            if written == 0 {
                lock(&self.channel).rejected += 1;
            }
            lock(&self.channel).to_guest.drain(..written);
            any |= q.add_used(mem, head, written as u32).is_ok();
        }
        any
    }
}

/// Total length of a chain's device-readable (`writable == false`) or device-writable
/// descriptors; `None` when a descriptor has the other direction or the total passes
/// [`MAX_CHAIN`].
fn chain_len(chain: &DescriptorChain<&GuestMemoryMmap>, writable: bool) -> Option<usize> {
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
fn read_chain(
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

/// Writes `data` into a chain's device-writable descriptors; returns the bytes written
/// (0 if the first descriptor is not writable or not in guest memory).
fn write_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    data: &[u8],
) -> usize {
    let mut done = 0;
    for desc in chain {
        if !desc.is_write_only() || done == data.len() {
            break;
        }
        let n = (desc.len() as usize).min(data.len() - done);
        let Some(src) = data.get(done..done + n) else {
            break;
        };
        if mem.write_slice(src, desc.addr()).is_err() {
            break;
        }
        done += n;
    }
    done
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | F_MULTIPORT
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 6]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols, rows (unused), max_nr_ports = 2, emerg_wr.
        let mut config = [0u8; 12];
        config[4..8].copy_from_slice(&2u32.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let need = if activation.features & F_MULTIPORT != 0 {
            6
        } else {
            2
        };
        if activation.queues.len() < need {
            return Err(ActivateError::Queues {
                got: activation.queues.len(),
                need,
            });
        }
        self.queues = activation.queues;
        self.mem = Some(activation.mem);
        self.interrupt = Some(activation.interrupt);
        Ok(())
    }

    fn queue_notified(&mut self, _index: usize) {
        self.pump();
    }

    fn backend_event(&self) -> Option<&EventFd> {
        Some(&self.kick)
    }

    fn backend_ready(&mut self) {
        self.pump();
    }

    fn reset(&mut self) {
        self.queues.clear();
        self.mem = None;
        self.interrupt = None;
        self.control_out.clear();
        lock(&self.channel).guest_open = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    const DATA: u64 = 0x10_0000;

    struct Rig<'a> {
        mem: &'a GuestMemoryMmap,
        queues: Vec<MockSplitQueue<'a, GuestMemoryMmap>>,
        console: Console,
        agent: AgentChannel,
        next: Vec<u16>,
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)])
            .unwrap_or_else(|e| panic!("{e}"))
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
            let raw: Vec<RawDescriptor> = descs
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
                .collect();
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

    use vm_memory::Address;

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
}
