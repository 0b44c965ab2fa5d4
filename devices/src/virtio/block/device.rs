//! The block device model: one request queue served in order, the configuration space,
//! and the counters the VMM reports.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::disk::Disk;
use super::request::{parse, read_parts, write_parts, Kind, Request, ZEROING_SEGMENT};
use super::{DEVICE_TYPE, ID_BYTES, MAX_ZEROING_SECTORS, QUEUE_SIZE, SECTOR, SEG_MAX, SIZE_MAX};
use crate::virtio::{
    read_config_bytes, ActivateError, Activation, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};

/// A disk's request counters, shared between the device and the VMM's reports.
#[derive(Debug, Default)]
struct Counters {
    reads: AtomicU64,
    read_bytes: AtomicU64,
    writes: AtomicU64,
    write_bytes: AtomicU64,
    flushes: AtomicU64,
    zeroings: AtomicU64,
    errors: AtomicU64,
}

/// What a disk has served so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockCounters {
    /// Read requests completed.
    pub reads: u64,
    /// Bytes read from the image into the guest.
    pub read_bytes: u64,
    /// Write requests completed.
    pub writes: u64,
    /// Bytes written from the guest into the image.
    pub write_bytes: u64,
    /// Flushes completed.
    pub flushes: u64,
    /// Discard and write-zeroes requests completed.
    pub zeroings: u64,
    /// Requests answered with an error status, or malformed beyond answering.
    pub errors: u64,
}

/// The VMM's view of a disk: what it is and what it has served.
#[derive(Debug, Clone)]
pub struct DiskInfo {
    /// The disk's name (the guest reads it with `GET_ID`).
    pub id: String,
    /// The image file.
    pub path: PathBuf,
    /// Whether writes are refused.
    pub read_only: bool,
    /// Size in bytes (whole sectors).
    pub bytes: u64,
    /// Whether discard and write-zeroes are offered.
    pub discard: bool,
    counters: Arc<Counters>,
}

impl DiskInfo {
    /// The counters now.
    pub fn counters(&self) -> BlockCounters {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BlockCounters {
            reads: get(&c.reads),
            read_bytes: get(&c.read_bytes),
            writes: get(&c.writes),
            write_bytes: get(&c.write_bytes),
            flushes: get(&c.flushes),
            zeroings: get(&c.zeroings),
            errors: get(&c.errors),
        }
    }
}

/// A virtio-blk device over one [`Disk`].
pub struct Block {
    disk: Disk,
    counters: Arc<Counters>,
    mem: Option<GuestMemoryMmap>,
    queue: Option<Queue>,
    interrupt: Option<Interrupt>,
}

/// A request's outcome: its status byte and the bytes of data the device wrote.
struct Outcome {
    status: u32,
    written: u32,
}

impl Outcome {
    fn ok(written: u32) -> Outcome {
        Outcome {
            status: VIRTIO_BLK_S_OK,
            written,
        }
    }

    fn error() -> Outcome {
        Outcome {
            status: VIRTIO_BLK_S_IOERR,
            written: 0,
        }
    }

    fn unsupported() -> Outcome {
        Outcome {
            status: VIRTIO_BLK_S_UNSUPP,
            written: 0,
        }
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Block {
    /// A device serving `disk`, and the VMM's view of it.
    pub fn new(disk: Disk) -> (Block, DiskInfo) {
        let counters = Arc::new(Counters::default());
        let info = DiskInfo {
            id: disk.id().to_string(),
            path: disk.path().to_path_buf(),
            read_only: disk.read_only(),
            bytes: disk.sectors() * SECTOR,
            discard: disk.punches_holes(),
            counters: Arc::clone(&counters),
        };
        let block = Block {
            disk,
            counters,
            mem: None,
            queue: None,
            interrupt: None,
        };
        (block, info)
    }

    /// Serves every request the driver has made available, then interrupts if the driver
    /// wants to know.
    fn serve(&mut self) {
        let (Some(mem), Some(mut queue)) = (self.mem.clone(), self.queue.take()) else {
            return;
        };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            let len = match parse(&mem, chain) {
                Ok(request) => {
                    let outcome = self.execute(&mem, &request);
                    if outcome.status != VIRTIO_BLK_S_OK {
                        bump(&self.counters.errors, 1);
                    }
                    // The status byte is the chain's last; a driver that gave memory we
                    // cannot write learns nothing more.
                    let _ = mem.write_obj(outcome.status as u8, request.status);
                    outcome.written + 1
                }
                Err((_, status)) => {
                    bump(&self.counters.errors, 1);
                    match status {
                        Some(at) => u32::from(mem.write_obj(VIRTIO_BLK_S_IOERR as u8, at).is_ok()),
                        None => 0,
                    }
                }
            };
            used |= queue.add_used(&mem, head, len).is_ok();
        }
        if used && queue.needs_notification(&mem).unwrap_or(true) {
            if let Some(interrupt) = &self.interrupt {
                let _ = interrupt.used_ring();
            }
        }
        self.queue = Some(queue);
    }

    /// The byte offset of `bytes` from `sector`, if they are whole sectors within the disk.
    fn span(&self, sector: u64, bytes: u64) -> Option<u64> {
        if bytes % SECTOR != 0 {
            return None;
        }
        let end = sector.checked_add(bytes / SECTOR)?;
        (end <= self.disk.sectors()).then(|| sector * SECTOR)
    }

    fn execute(&mut self, mem: &GuestMemoryMmap, request: &Request) -> Outcome {
        let c = &self.counters;
        match request.kind {
            Kind::In => {
                let Some(offset) = self.span(request.sector, request.len) else {
                    return Outcome::error();
                };
                if self.disk.read(mem, offset, &request.data).is_err() {
                    return Outcome::error();
                }
                bump(&c.reads, 1);
                bump(&c.read_bytes, request.len);
                // `parse` bounds the length by MAX_REQUEST, well within u32.
                Outcome::ok(request.len as u32)
            }
            Kind::Out => {
                if self.disk.read_only() {
                    return Outcome::error();
                }
                let Some(offset) = self.span(request.sector, request.len) else {
                    return Outcome::error();
                };
                if self.disk.write(mem, offset, &request.data).is_err() {
                    return Outcome::error();
                }
                bump(&c.writes, 1);
                bump(&c.write_bytes, request.len);
                Outcome::ok(0)
            }
            Kind::Flush => {
                if self.disk.flush().is_err() {
                    return Outcome::error();
                }
                bump(&c.flushes, 1);
                Outcome::ok(0)
            }
            Kind::GetId => {
                let mut id = [0u8; ID_BYTES];
                let name = self.disk.id().as_bytes();
                let n = name.len().min(ID_BYTES);
                if let (Some(dst), Some(src)) = (id.get_mut(..n), name.get(..n)) {
                    dst.copy_from_slice(src);
                }
                let room = usize::try_from(request.len).unwrap_or(usize::MAX);
                let want = ID_BYTES.min(room);
                let written = write_parts(mem, &request.data, id.get(..want).unwrap_or_default());
                if written < want {
                    return Outcome::error();
                }
                Outcome::ok(written as u32)
            }
            Kind::Discard | Kind::WriteZeroes => self.zeroing(mem, request),
            Kind::Other(_) => Outcome::unsupported(),
        }
    }

    /// Discard and write-zeroes: one segment (as the configuration says) within the disk.
    fn zeroing(&mut self, mem: &GuestMemoryMmap, request: &Request) -> Outcome {
        if self.disk.read_only() {
            return Outcome::error();
        }
        if !self.disk.punches_holes() {
            return Outcome::unsupported();
        }
        if request.len != ZEROING_SEGMENT as u64 {
            return Outcome::error();
        }
        let mut segment = [0u8; ZEROING_SEGMENT];
        if read_parts(mem, &request.data, &mut segment).is_none() {
            return Outcome::error();
        }
        let [s0, s1, s2, s3, s4, s5, s6, s7, n0, n1, n2, n3, f0, f1, f2, f3] = segment;
        let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
        let sectors = u32::from_le_bytes([n0, n1, n2, n3]);
        let flags = u32::from_le_bytes([f0, f1, f2, f3]);
        let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
        // Discard has no flags; write-zeroes only the unmap flag.
        let known = match request.kind {
            Kind::Discard => 0,
            _ => VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
        };
        if flags & !known != 0 {
            return Outcome::unsupported();
        }
        if sectors > MAX_ZEROING_SECTORS {
            return Outcome::error();
        }
        let bytes = u64::from(sectors) * SECTOR;
        let Some(offset) = self.span(sector, bytes) else {
            return Outcome::error();
        };
        let done = if request.kind == Kind::Discard || unmap {
            self.disk.punch(offset, bytes)
        } else {
            self.disk.zero(offset, bytes)
        };
        if done.is_err() {
            return Outcome::error();
        }
        bump(&self.counters.zeroings, 1);
        Outcome::ok(0)
    }

    /// The configuration space (struct virtio_blk_config, up to write_zeroes_may_unmap).
    fn config(&self) -> [u8; 60] {
        let mut config = [0u8; 60];
        let mut put = |at: usize, bytes: &[u8]| {
            if let Some(dst) = config.get_mut(at..at + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
        };
        put(0, &self.disk.sectors().to_le_bytes());
        put(8, &SIZE_MAX.to_le_bytes());
        put(12, &SEG_MAX.to_le_bytes());
        put(20, &(SECTOR as u32).to_le_bytes());
        put(36, &MAX_ZEROING_SECTORS.to_le_bytes());
        put(40, &1u32.to_le_bytes());
        put(44, &1u32.to_le_bytes());
        put(48, &MAX_ZEROING_SECTORS.to_le_bytes());
        put(52, &1u32.to_le_bytes());
        put(56, &[1]);
        config
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        let bit = |b: u32| 1u64 << b;
        let mut features = VIRTIO_F_VERSION_1
            | bit(VIRTIO_BLK_F_SIZE_MAX)
            | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_FLUSH);
        if self.disk.read_only() {
            features |= bit(VIRTIO_BLK_F_RO);
        } else if self.disk.punches_holes() {
            features |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
        }
        features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let got = activation.queues.len();
        let Some(queue) = activation.queues.into_iter().next() else {
            return Err(ActivateError::Queues { got, need: 1 });
        };
        self.queue = Some(queue);
        self.mem = Some(activation.mem);
        self.interrupt = Some(activation.interrupt);
        Ok(())
    }

    fn queue_notified(&mut self, _index: usize) {
        self.serve();
    }

    fn reset(&mut self) {
        self.queue = None;
        self.mem = None;
        self.interrupt = None;
    }
}
