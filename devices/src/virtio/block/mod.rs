//! virtio-blk over a raw image file: reads, writes, flushes, the device id, and — where
//! the file can punch holes — discard and write-zeroes. Every request the guest makes is
//! checked before it reaches the file: a malformed chain, a sector range past the end or a
//! write to a read-only disk is a status to the guest and a counted error, never a panic
//! or an access outside the image.
//!
//! `disk.rs` owns the image file (size, read-only, hole punching), `request.rs` turns a
//! descriptor chain into a checked request, `device.rs` is the device model and its
//! counters. Requests are served on the VMM's event loop, one chain after another, each
//! bounded by [`MAX_REQUEST`].

mod device;
mod disk;
mod request;
#[cfg(test)]
mod tests;

pub use device::{Block, BlockCounters, DiskInfo};
pub use disk::{Disk, DiskError};

/// The virtio device id of a block device.
pub const DEVICE_TYPE: u32 = 2;
/// Bytes in a sector, the unit of every offset and length in a request.
pub const SECTOR: u64 = 512;
/// Size of the device's one request queue.
pub const QUEUE_SIZE: u16 = 128;
/// Most data segments in one request, as told to the driver (a chain also carries the
/// header and the status).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest data segment, as told to the driver.
pub const SIZE_MAX: u32 = 64 << 10;
/// Most data bytes in one read or write request; a larger one fails with an I/O error.
pub const MAX_REQUEST: u64 = SEG_MAX as u64 * SIZE_MAX as u64;
/// Most sectors one discard or write-zeroes request may cover.
pub const MAX_ZEROING_SECTORS: u32 = 1 << 15;
/// Bytes of the device id a `GET_ID` request returns.
pub const ID_BYTES: usize = 20;
