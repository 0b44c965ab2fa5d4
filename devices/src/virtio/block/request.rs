//! A descriptor chain as a block request: the header's type and sector, the data buffers
//! and the status byte, each checked against the chain's layout and the request limits.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::{MAX_REQUEST, QUEUE_SIZE};

/// Bytes of the request header: type, reserved, sector.
pub(super) const HEADER: usize = 16;
/// Bytes of one discard or write-zeroes segment: sector, sectors, flags.
pub(super) const ZEROING_SEGMENT: usize = 16;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Other(u32),
}

impl Kind {
    fn of(raw: u32) -> Kind {
        match raw {
            VIRTIO_BLK_T_IN => Kind::In,
            VIRTIO_BLK_T_OUT => Kind::Out,
            VIRTIO_BLK_T_FLUSH => Kind::Flush,
            VIRTIO_BLK_T_GET_ID => Kind::GetId,
            VIRTIO_BLK_T_DISCARD => Kind::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => Kind::WriteZeroes,
            other => Kind::Other(other),
        }
    }
}

/// Why a chain is not a well-formed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Malformed {
    /// The last descriptor is not a device-writable buffer for the status byte.
    NoStatus,
    /// A device-readable buffer follows a device-writable one.
    ReadableAfterWritable,
    /// Fewer than [`HEADER`] device-readable bytes.
    ShortHeader,
    /// Data in the direction the request does not move data (e.g. writable data for a write).
    WrongDirection,
    /// More descriptors than the queue holds, or more data than [`MAX_REQUEST`].
    TooLong,
    /// A header or segment buffer outside guest memory.
    Memory,
}

/// A request whose layout has been checked (ranges and kinds are checked by the device).
#[derive(Debug)]
pub(super) struct Request {
    pub kind: Kind,
    pub sector: u64,
    /// The data buffers: device-writable for reads and `GET_ID`, device-readable otherwise.
    pub data: Vec<(GuestAddress, usize)>,
    /// Total length of `data`.
    pub len: u64,
    pub status: GuestAddress,
}

/// A parsed chain: the request, or why it is malformed and where its status byte is
/// (if it has one to write to).
pub(super) type Parsed = Result<Request, (Malformed, Option<GuestAddress>)>;

/// Reads a chain. The last descriptor's last byte is the status; the first [`HEADER`]
/// device-readable bytes are the header; what lies between is the data.
pub(super) fn parse(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> Parsed {
    let mut readable: Vec<(GuestAddress, usize)> = Vec::new();
    let mut writable: Vec<(GuestAddress, usize)> = Vec::new();
    let mut out_of_order = false;
    let mut ends_writable = false;
    for (count, desc) in chain.enumerate() {
        if count >= usize::from(QUEUE_SIZE) {
            return Err((Malformed::TooLong, None));
        }
        let part = (desc.addr(), desc.len() as usize);
        ends_writable = desc.is_write_only();
        if ends_writable {
            writable.push(part);
        } else {
            out_of_order |= !writable.is_empty();
            readable.push(part);
        }
    }
    let status = match writable.last_mut() {
        Some((addr, len)) if *len > 0 && ends_writable => {
            *len -= 1;
            addr.checked_add(*len as u64)
        }
        _ => None,
    };
    let Some(status) = status else {
        return Err((Malformed::NoStatus, None));
    };
    let fail = |why| Err((why, Some(status)));
    if out_of_order {
        return fail(Malformed::ReadableAfterWritable);
    }
    let readable_len = total(&readable);
    let writable_len = total(&writable);
    let (Some(readable_len), Some(writable_len)) = (readable_len, writable_len) else {
        return fail(Malformed::TooLong);
    };
    if readable_len < HEADER as u64 {
        return fail(Malformed::ShortHeader);
    }
    let mut header = [0u8; HEADER];
    if read_parts(mem, &readable, &mut header).is_none() {
        return fail(Malformed::Memory);
    }
    let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = header;
    let kind = Kind::of(u32::from_le_bytes([t0, t1, t2, t3]));
    let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
    let readable_data = readable_len - HEADER as u64;
    let (data, len) = match kind {
        Kind::In | Kind::GetId => {
            if readable_data > 0 {
                return fail(Malformed::WrongDirection);
            }
            (parts_from(&writable, 0), writable_len)
        }
        Kind::Out | Kind::Discard | Kind::WriteZeroes => {
            if writable_len > 0 {
                return fail(Malformed::WrongDirection);
            }
            (parts_from(&readable, HEADER as u64), readable_data)
        }
        Kind::Flush | Kind::Other(_) => (Vec::new(), 0),
    };
    if len > MAX_REQUEST {
        return fail(Malformed::TooLong);
    }
    Ok(Request {
        kind,
        sector,
        data,
        len,
        status,
    })
}

/// Sum of the parts' lengths, `None` past [`u64`].
fn total(parts: &[(GuestAddress, usize)]) -> Option<u64> {
    parts
        .iter()
        .try_fold(0u64, |sum, (_, len)| sum.checked_add(*len as u64))
}

/// The parts from byte `skip` on, empty parts left out.
fn parts_from(parts: &[(GuestAddress, usize)], skip: u64) -> Vec<(GuestAddress, usize)> {
    let mut skip = skip;
    let mut out = Vec::with_capacity(parts.len());
    for &(addr, len) in parts {
        let len64 = len as u64;
        if skip >= len64 {
            skip -= len64;
            continue;
        }
        if let Some(start) = addr.checked_add(skip) {
            out.push((start, (len64 - skip) as usize));
        }
        skip = 0;
    }
    out
}

/// Fills `out` from the start of `parts`; `None` if they are shorter or outside memory.
pub(super) fn read_parts(
    mem: &GuestMemoryMmap,
    parts: &[(GuestAddress, usize)],
    out: &mut [u8],
) -> Option<()> {
    let mut done = 0;
    for &(addr, len) in parts {
        if done == out.len() {
            break;
        }
        let n = len.min(out.len() - done);
        mem.read_slice(out.get_mut(done..done + n)?, addr).ok()?;
        done += n;
    }
    (done == out.len()).then_some(())
}

/// Writes `data` from the start of `parts`; returns the bytes written.
pub(super) fn write_parts(
    mem: &GuestMemoryMmap,
    parts: &[(GuestAddress, usize)],
    data: &[u8],
) -> usize {
    let mut done = 0;
    for &(addr, len) in parts {
        let n = len.min(data.len() - done);
        let Some(src) = data.get(done..done + n) else {
            break;
        };
        if mem.write_slice(src, addr).is_err() {
            break;
        }
        done += n;
        if done == data.len() {
            break;
        }
    }
    done
}
