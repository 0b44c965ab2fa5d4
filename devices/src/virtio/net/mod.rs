//! virtio-net on a tap device: one receive and one transmit queue, the MAC address and
//! link status in the configuration, no offloads. Frames are bounded both ways: a
//! transmit chain larger than [`MAX_FRAME`] plus the header, or a received frame that
//! does not fit the driver's buffer, is dropped and counted, never a panic.
//!
//! `tap.rs` opens an existing tap, `device.rs` moves frames between the queues and any
//! [`Frames`] backend (a tap, or a datagram socket in the tests).

mod device;
mod tap;
#[cfg(test)]
mod tests;

pub use device::{Net, NetCounters, NetInfo};
pub use tap::{Frames, Tap, TapError};

/// The virtio device id of a network device.
pub const DEVICE_TYPE: u32 = 1;
/// Size of each of the two queues.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes of the header before every frame (`virtio_net_hdr_v1`).
pub const HEADER: usize = 12;
/// Largest frame moved either way: an Ethernet frame of the largest MTU a tap takes.
pub const MAX_FRAME: usize = 65_535;

/// Queue indexes.
const RX: usize = 0;
const TX: usize = 1;
