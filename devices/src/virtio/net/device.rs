//! The network device model: frames from the transmit queue to the backend, frames from
//! the backend into the receive queue's buffers, and the counters the VMM reports.

use std::io::ErrorKind;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::tap::Frames;
use super::{DEVICE_TYPE, HEADER, MAX_FRAME, QUEUE_SIZE, RX, TX};
use crate::virtio::{
    read_config_bytes, write_chain, ActivateError, Activation, Interrupt, VirtioDevice,
    VIRTIO_F_VERSION_1,
};

#[derive(Debug, Default)]
struct Counters {
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    rx_dropped: AtomicU64,
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    tx_dropped: AtomicU64,
}

/// What a network device has moved so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Their bytes (without the virtio header).
    pub rx_bytes: u64,
    /// Frames from the backend that did not fit the guest's buffer.
    pub rx_dropped: u64,
    /// Frames the guest sent that reached the backend.
    pub tx_frames: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Frames the guest sent that were malformed, too large, or refused by the backend.
    pub tx_dropped: u64,
}

/// The VMM's view of a network device.
#[derive(Debug, Clone)]
pub struct NetInfo {
    /// The backend's name (the tap).
    pub id: String,
    /// The guest's MAC address.
    pub mac: [u8; 6],
    counters: Arc<Counters>,
}

impl NetInfo {
    /// The counters now.
    pub fn counters(&self) -> NetCounters {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NetCounters {
            rx_frames: get(&c.rx_frames),
            rx_bytes: get(&c.rx_bytes),
            rx_dropped: get(&c.rx_dropped),
            tx_frames: get(&c.tx_frames),
            tx_bytes: get(&c.tx_bytes),
            tx_dropped: get(&c.tx_dropped),
        }
    }

    /// The MAC address as `aa:bb:cc:dd:ee:ff`.
    pub fn mac_text(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// A virtio-net device over a [`Frames`] backend.
pub struct Net {
    frames: Box<dyn Frames>,
    mac: [u8; 6],
    counters: Arc<Counters>,
    buffer: Vec<u8>,
    mem: Option<GuestMemoryMmap>,
    queues: Vec<Queue>,
    interrupt: Option<Interrupt>,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Net {
    /// A device with MAC address `mac` moving frames through `frames`, named `id`.
    pub fn new(frames: Box<dyn Frames>, mac: [u8; 6], id: &str) -> (Net, NetInfo) {
        let counters = Arc::new(Counters::default());
        let info = NetInfo {
            id: id.to_string(),
            mac,
            counters: Arc::clone(&counters),
        };
        let net = Net {
            frames,
            mac,
            counters,
            buffer: vec![0; HEADER + MAX_FRAME],
            mem: None,
            queues: Vec::new(),
            interrupt: None,
        };
        (net, info)
    }

    /// Sends every frame the guest has queued; returns whether the used ring changed.
    fn transmit(&mut self, mem: &GuestMemoryMmap) -> bool {
        let Some(queue) = self.queues.get_mut(TX) else {
            return false;
        };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match gather(mem, chain, &mut self.buffer) {
                Some(len) if len >= HEADER => {
                    let frame = self.buffer.get(HEADER..len).unwrap_or_default();
                    if self.frames.send_frame(frame).is_ok() {
                        bump(&self.counters.tx_frames, 1);
                        bump(&self.counters.tx_bytes, frame.len() as u64);
                    } else {
                        bump(&self.counters.tx_dropped, 1);
                    }
                }
                _ => bump(&self.counters.tx_dropped, 1),
            }
            used |= queue.add_used(mem, head, 0).is_ok();
        }
        used
    }

    /// Moves frames from the backend into the guest's receive buffers until either runs
    /// out; returns whether the used ring changed.
    fn receive(&mut self, mem: &GuestMemoryMmap) -> bool {
        let Some(queue) = self.queues.get_mut(RX) else {
            return false;
        };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let Some(room) = self.buffer.get_mut(HEADER..) else {
                break;
            };
            let len = match self.frames.recv_frame(room) {
                Ok(len) => len,
                Err(e) => {
                    // Nothing to read (or the backend failed): the buffer waits for the
                    // next frame.
                    queue.go_to_previous_position();
                    if e.kind() != ErrorKind::WouldBlock {
                        bump(&self.counters.rx_dropped, 1);
                    }
                    break;
                }
            };
            // The header: no offloads; one buffer holds the frame.
            let mut header = [0u8; HEADER];
            header[10] = 1;
            if let Some(dst) = self.buffer.get_mut(..HEADER) {
                dst.copy_from_slice(&header);
            }
            let frame = self.buffer.get(..HEADER + len).unwrap_or_default();
            let written = write_chain(mem, chain, frame);
            if written == frame.len() {
                bump(&self.counters.rx_frames, 1);
                bump(&self.counters.rx_bytes, len as u64);
                used |= queue.add_used(mem, head, written as u32).is_ok();
            } else {
                bump(&self.counters.rx_dropped, 1);
                used |= queue.add_used(mem, head, 0).is_ok();
            }
        }
        used
    }

    fn interrupt_if(&mut self, mem: &GuestMemoryMmap, used: [bool; 2]) {
        let notify = used.iter().enumerate().any(|(i, u)| {
            *u && self
                .queues
                .get_mut(i)
                .is_some_and(|q| q.needs_notification(mem).unwrap_or(true))
        });
        if notify {
            if let Some(interrupt) = &self.interrupt {
                let _ = interrupt.used_ring();
            }
        }
    }

    /// Runs both directions.
    fn pump(&mut self) {
        let Some(mem) = self.mem.clone() else { return };
        let tx = self.transmit(&mem);
        let rx = self.receive(&mem);
        self.interrupt_if(&mem, [rx, tx]);
    }
}

/// Copies a chain's device-readable bytes into `out`; `None` if a descriptor is
/// device-writable, outside guest memory, or the total passes `out`'s length.
fn gather(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    out: &mut [u8],
) -> Option<usize> {
    let mut done = 0usize;
    for desc in chain {
        if desc.is_write_only() {
            return None;
        }
        let len = desc.len() as usize;
        let end = done.checked_add(len)?;
        mem.read_slice(out.get_mut(done..end)?, desc.addr()).ok()?;
        done = end;
    }
    Some(done)
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // mac, status, max_virtqueue_pairs.
        let mut config = [0u8; 10];
        config[..6].copy_from_slice(&self.mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if activation.queues.len() < 2 {
            return Err(ActivateError::Queues {
                got: activation.queues.len(),
                need: 2,
            });
        }
        self.queues = activation.queues;
        self.mem = Some(activation.mem);
        self.interrupt = Some(activation.interrupt);
        // Frames that arrived before the driver was ready are waiting.
        self.pump();
        Ok(())
    }

    fn queue_notified(&mut self, _index: usize) {
        self.pump();
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.frames.as_raw_fd())
    }

    fn backend_ready(&mut self) {
        self.pump();
    }

    fn reset(&mut self) {
        self.queues.clear();
        self.mem = None;
        self.interrupt = None;
    }
}
