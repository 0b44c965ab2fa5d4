//! The VMM's side of a memory device: the requested size it sets, the figures it reads.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{BlockBacking, MemConfig, Plugged};
use crate::virtio::{lock, Interrupt};

/// Figures of a memory device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemStatus {
    /// Where the region starts (guest-physical).
    pub addr: u64,
    /// Bytes of the region.
    pub region_size: u64,
    /// Bytes of a block.
    pub block_size: u64,
    /// Bytes the VMM asks the guest to have plugged.
    pub requested_size: u64,
    /// Bytes plugged.
    pub plugged_size: u64,
    /// Requests served.
    pub requests: u64,
    /// Requests answered with an error: malformed, out of range, unaligned, plugging what
    /// is plugged or unplugging what is not, or a backing failure.
    pub errors: u64,
    /// Plug requests refused because they went past the requested size.
    pub refused: u64,
}

pub(super) struct Shared {
    pub(super) config: MemConfig,
    pub(super) requested: u64,
    pub(super) plugged: Plugged,
    pub(super) backing: Box<dyn BlockBacking>,
    pub(super) interrupt: Option<Interrupt>,
    pub(super) requests: u64,
    pub(super) errors: u64,
    pub(super) refused: u64,
}

/// Why a requested size was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestedSizeError {
    /// Larger than the region.
    #[error("{requested} bytes is more than the region's {region} bytes")]
    TooLarge {
        /// Asked.
        requested: u64,
        /// The region's size.
        region: u64,
    },
    /// Not a whole number of blocks.
    #[error("{requested} bytes is not a multiple of the block size {block}")]
    Unaligned {
        /// Asked.
        requested: u64,
        /// The block size.
        block: u64,
    },
}

/// The VMM's side of a memory device.
#[derive(Clone)]
pub struct MemHandle {
    pub(super) shared: Arc<Mutex<Shared>>,
}

impl MemHandle {
    /// Asks the guest to have `bytes` plugged; it hears of it by a configuration
    /// interrupt once its driver runs.
    pub fn set_requested(&self, bytes: u64) -> Result<(), RequestedSizeError> {
        let mut shared = lock(&self.shared);
        let config = shared.config;
        if bytes > config.region_size {
            return Err(RequestedSizeError::TooLarge {
                requested: bytes,
                region: config.region_size,
            });
        }
        if bytes % config.block_size != 0 {
            return Err(RequestedSizeError::Unaligned {
                requested: bytes,
                block: config.block_size,
            });
        }
        shared.requested = bytes;
        if let Some(interrupt) = &shared.interrupt {
            let _ = interrupt.config_changed();
        }
        Ok(())
    }

    /// A snapshot of the figures.
    pub fn status(&self) -> MemStatus {
        let shared = lock(&self.shared);
        status(&shared)
    }
}

pub(super) fn status(shared: &Shared) -> MemStatus {
    MemStatus {
        addr: shared.config.addr,
        region_size: shared.config.region_size,
        block_size: shared.config.block_size,
        requested_size: shared.requested,
        plugged_size: shared.plugged.count() * shared.config.block_size,
        requests: shared.requests,
        errors: shared.errors,
        refused: shared.refused,
    }
}

/// Interrupts the guest for the used ring of `queue` if it wants to hear of it.
pub(super) fn signal(shared: &Mutex<Shared>, queue: &mut Queue, mem: &GuestMemoryMmap) {
    if queue.needs_notification(mem).unwrap_or(true) {
        if let Some(interrupt) = &lock(shared).interrupt {
            let _ = interrupt.used_ring();
        }
    }
}
