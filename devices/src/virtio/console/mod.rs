//! virtio-console with the multiport feature: port 0 is a plain console, port 1 is the
//! named agent channel (`org.mempart.agent.0`) whose bytes the VMM reads and writes.
//! Both directions are bounded: a slow reader on either side stalls the writer, nothing
//! is dropped or reordered, and no buffer grows past its limit.
//!
//! `device.rs` is the device model (ports, control messages, queues by index),
//! `queues.rs` moves bytes between descriptor chains and the buffers, `handle.rs` is the
//! VMM's end of the agent port.

mod device;
mod handle;
mod queues;
#[cfg(test)]
mod tests;

pub use device::Console;
pub use handle::{AgentChannel, AgentReader, AgentWriter};

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
