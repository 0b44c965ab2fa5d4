//! virtio-balloon: the guest hands pages back (inflate), takes them again (deflate),
//! reports free pages and statistics. Released pages go back to the host at once.
//!
//! `device.rs` is the device model, `queues.rs` reads what the guest put on each queue,
//! `handle.rs` is the VMM's side (the target it sets, the figures it reads).

mod device;
mod handle;
mod queues;
#[cfg(test)]
mod tests;

pub use device::Balloon;
pub use handle::{BalloonHandle, BalloonStatus, Observer};

/// The virtio device id of a balloon.
pub const DEVICE_TYPE: u32 = 5;
/// The statistics queue exists.
pub const F_STATS_VQ: u64 = 1 << 1;
/// The guest may deflate when it runs out of memory.
pub const F_DEFLATE_ON_OOM: u64 = 1 << 2;
/// The free-page-reporting queue exists.
pub const F_REPORTING: u64 = 1 << 5;
/// Balloon pages are 4 KiB whatever the guest's page size.
pub const BALLOON_PAGE: u64 = 4096;
/// Queue size of every balloon queue.
pub const QUEUE_SIZE: u16 = 256;
/// Number of statistics tags the device keeps (the spec defines tags 0..=15).
pub const STAT_TAGS: usize = 16;
/// Longest descriptor of page numbers or statistics the device reads (Linux sends at
/// most 256 page numbers, 1 KiB, per buffer); longer ones are refused unread.
pub const MAX_ENTRIES_BYTES: u32 = 64 * 1024;
