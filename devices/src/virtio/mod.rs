//! What every virtio device offers its transport, and how it interrupts the guest.

pub mod balloon;
pub mod block;
pub mod console;
pub mod mem;
pub mod mmio;
pub mod net;
#[cfg(test)]
pub(crate) mod testing;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Feature bit: the device follows virtio 1.x.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Interrupt status bit: a used ring changed.
pub const INTERRUPT_USED_RING: u32 = 1;
/// Interrupt status bit: the configuration changed.
pub const INTERRUPT_CONFIG: u32 = 2;

/// Raises the device's interrupt: sets a status bit the driver reads and acknowledges,
/// and signals the irqfd.
#[derive(Debug, Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    generation: Arc<AtomicU32>,
    irq: Arc<EventFd>,
}

impl Interrupt {
    /// An interrupt that signals `irq`.
    pub fn new(irq: EventFd) -> Interrupt {
        Interrupt {
            status: Arc::new(AtomicU32::new(0)),
            generation: Arc::new(AtomicU32::new(0)),
            irq: Arc::new(irq),
        }
    }

    /// Tells the driver a used ring has new entries.
    pub fn used_ring(&self) -> std::io::Result<()> {
        self.raise(INTERRUPT_USED_RING)
    }

    /// Tells the driver the configuration space changed (and bumps its generation).
    pub fn config_changed(&self) -> std::io::Result<()> {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.raise(INTERRUPT_CONFIG)
    }

    /// The configuration generation the driver reads.
    pub fn config_generation(&self) -> u32 {
        self.generation.load(Ordering::SeqCst)
    }

    fn raise(&self, bit: u32) -> std::io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irq.write(1)
    }

    /// Pending status bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears acknowledged bits.
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

/// Why a device refused to start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivateError {
    /// The driver set up fewer queues than the negotiated features need.
    #[error("the driver set up {got} queues, the device needs {need}")]
    Queues {
        /// Ready queues.
        got: usize,
        /// Needed.
        need: usize,
    },
}

/// What a device receives when the driver has finished setting it up.
pub struct Activation {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The queues, in index order, only those the driver made ready.
    pub queues: Vec<Queue>,
    /// The device's interrupt.
    pub interrupt: Interrupt,
    /// Features the driver acknowledged.
    pub features: u64,
}

/// A virtio device model as its transport sees it.
pub trait VirtioDevice: Send {
    /// The virtio device id (5 for a balloon, 3 for a console).
    fn device_type(&self) -> u32;
    /// Features offered (including [`VIRTIO_F_VERSION_1`]).
    fn features(&self) -> u64;
    /// Largest size of each queue the device can have.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the configuration space at `offset`; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the configuration space; writes to read-only fields are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// The driver notified queue `index`.
    fn queue_notified(&mut self, index: usize);
    /// Stops the device and forgets the queues (the driver reset it).
    fn reset(&mut self);
    /// An eventfd the device's VMM-side backend signals when it has moved data; the
    /// event loop then calls [`VirtioDevice::backend_ready`].
    fn backend_event(&self) -> Option<&EventFd> {
        None
    }
    /// A descriptor (a tap) the event loop watches, edge-triggered, for the device's
    /// backend becoming readable; the event loop then calls [`VirtioDevice::backend_ready`]
    /// and the device reads it until it would block.
    fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// The backend signalled its eventfd or its descriptor became readable.
    fn backend_ready(&mut self) {}
}

/// Locks `m`; a panic elsewhere while holding it does not take the device down too.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Copies `config[offset..]` into `data`, zero-filling past the end.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        if let (Some(dst), Some(src)) = (data.get_mut(..n), src.get(..n)) {
            dst.copy_from_slice(src);
        }
    }
}

/// Writes `data` into a chain's device-writable descriptors; returns the bytes written
/// (0 if the first descriptor is not writable or not in guest memory).
pub(crate) fn write_chain(
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
