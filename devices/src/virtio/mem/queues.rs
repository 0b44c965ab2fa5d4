//! Reading a request off the queue and writing its response: the request is the first
//! [`REQ_LEN`] device-readable bytes of a chain, the response goes to its device-writable
//! bytes, however the driver split either across descriptors.

use std::io::Read;

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::{REQ_LEN, RESP_LEN};

/// A request as the driver wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Request {
    pub(super) kind: u16,
    pub(super) addr: u64,
    pub(super) blocks: u16,
}

/// Why a chain carried no request the device can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Malformed {
    /// Fewer than [`REQ_LEN`] readable bytes.
    ShortRequest,
    /// Fewer than [`RESP_LEN`] writable bytes: no room for an answer.
    ShortResponse,
    /// A descriptor points outside guest memory.
    BadDescriptor,
}

/// Reads the request of `chain`; where the response can go is returned beside it.
pub(super) fn read_request<'a>(
    mem: &'a GuestMemoryMmap,
    chain: DescriptorChain<&'a GuestMemoryMmap>,
) -> (Result<Request, Malformed>, Option<Writer<'a>>) {
    let writer = Writer::new(mem, chain.clone())
        .ok()
        .filter(|w| w.available_bytes() >= RESP_LEN);
    let Ok(mut reader) = Reader::new(mem, chain) else {
        return (Err(Malformed::BadDescriptor), writer);
    };
    let mut raw = [0u8; REQ_LEN];
    if reader.read_exact(&mut raw).is_err() {
        return (Err(Malformed::ShortRequest), writer);
    }
    if writer.is_none() {
        return (Err(Malformed::ShortResponse), None);
    }
    let kind = u16::from_le_bytes([raw[0], raw[1]]);
    let mut addr = [0u8; 8];
    addr.copy_from_slice(&raw[8..16]);
    let blocks = u16::from_le_bytes([raw[16], raw[17]]);
    let request = Request {
        kind,
        addr: u64::from_le_bytes(addr),
        blocks,
    };
    (Ok(request), writer)
}

/// Writes a response of `kind` (with `state` for STATE requests); returns the bytes
/// written, 0 if the guest's buffer could not take it.
pub(super) fn write_response(writer: &mut Writer<'_>, kind: u16, state: u16) -> u32 {
    let mut raw = [0u8; RESP_LEN];
    raw[..2].copy_from_slice(&kind.to_le_bytes());
    raw[8..].copy_from_slice(&state.to_le_bytes());
    match std::io::Write::write_all(writer, &raw) {
        Ok(()) => RESP_LEN as u32,
        Err(_) => 0,
    }
}
