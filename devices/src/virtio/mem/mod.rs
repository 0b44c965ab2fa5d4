//! virtio-mem: a region of guest-physical memory the guest plugs and unplugs block by
//! block, as far as the VMM's requested size allows. Each plugged block is backed by the
//! VMM (a [`BlockBacking`]); an unplugged one is inaccessible and holds no host memory.
//!
//! `device.rs` is the device model, `queues.rs` reads requests and writes responses,
//! `blocks.rs` keeps which blocks are plugged, `handle.rs` is the VMM's side (the
//! requested size it sets, the figures it reads).

mod blocks;
mod device;
mod handle;
mod queues;
#[cfg(test)]
mod tests;

pub use blocks::{BlockBacking, Plugged};
pub use device::{Mem, MemConfig, MemConfigError};
pub use handle::{MemHandle, MemStatus, RequestedSizeError};

/// The virtio device id of a memory device.
pub const DEVICE_TYPE: u32 = 24;
/// `node_id` in the configuration is an ACPI proximity domain.
pub const F_ACPI_PXM: u64 = 1 << 0;
/// The driver must not read or write unplugged memory.
pub const F_UNPLUGGED_INACCESSIBLE: u64 = 1 << 1;
/// Queue size of the request queue.
pub const QUEUE_SIZE: u16 = 128;

/// Request types.
pub const REQ_PLUG: u16 = 0;
/// Unplug a range of blocks.
pub const REQ_UNPLUG: u16 = 1;
/// Unplug every block.
pub const REQ_UNPLUG_ALL: u16 = 2;
/// Ask whether a range is plugged.
pub const REQ_STATE: u16 = 3;
/// Size of a request: type, padding, address, block count, padding.
pub const REQ_LEN: usize = 24;

/// Response types.
pub const RESP_ACK: u16 = 0;
/// The request was valid but refused (plugging past the requested size).
pub const RESP_NACK: u16 = 1;
/// The device cannot do it now.
pub const RESP_BUSY: u16 = 2;
/// The request was malformed or broke a rule (range, alignment, state).
pub const RESP_ERROR: u16 = 3;
/// Size of a response: type, padding, state.
pub const RESP_LEN: usize = 10;

/// States a STATE request answers.
pub const STATE_PLUGGED: u16 = 0;
/// Every block of the range is unplugged.
pub const STATE_UNPLUGGED: u16 = 1;
/// Some blocks are plugged, some not.
pub const STATE_MIXED: u16 = 2;
