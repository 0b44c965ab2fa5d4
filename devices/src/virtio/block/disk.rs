//! The image file behind a block device: its size in sectors, whether it may be written,
//! whether it can punch holes, and the I/O between it and guest memory.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::fallocate::{fallocate, FallocateMode};

use super::{ID_BYTES, SECTOR};

/// Why an image could not be used as a disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The file could not be opened or measured.
    #[error("disk {path}: {source}")]
    Open {
        /// The image.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds less than one sector.
    #[error("disk {path}: {bytes} bytes is less than one {SECTOR}-byte sector")]
    TooSmall {
        /// The image.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// The id does not fit the device's id field.
    #[error("disk id {id:?} is {} bytes; at most {ID_BYTES}", id.len())]
    IdTooLong {
        /// The id asked for.
        id: String,
    },
}

/// A raw image file opened as a disk.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: PathBuf,
    sectors: u64,
    read_only: bool,
    punch: bool,
    id: String,
}

impl Disk {
    /// Opens `path` (read-only when `read_only`), named `id` for the guest and the
    /// counters. A size that is not a whole number of sectors leaves the last partial
    /// sector out of the disk.
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Disk, DiskError> {
        if id.len() > ID_BYTES {
            return Err(DiskError::IdTooLong { id: id.to_string() });
        }
        let open = |source| DiskError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open)?;
        let bytes = file.seek(SeekFrom::End(0)).map_err(open)?;
        if bytes < SECTOR {
            return Err(DiskError::TooSmall {
                path: path.to_path_buf(),
                bytes,
            });
        }
        // Punching a hole past the end (the size kept) changes nothing and tells whether
        // the file system can punch holes at all.
        let punch =
            !read_only && fallocate(&file, FallocateMode::PunchHole, true, bytes, SECTOR).is_ok();
        Ok(Disk {
            file,
            path: path.to_path_buf(),
            sectors: bytes / SECTOR,
            read_only,
            punch,
            id: id.to_string(),
        })
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The disk's size in sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether discard and write-zeroes are offered (a writable file that punches holes).
    pub fn punches_holes(&self) -> bool {
        self.punch
    }

    /// The disk's name.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Reads the file from byte `offset` into the guest memory `parts`, in order.
    pub(super) fn read(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        parts: &[(GuestAddress, usize)],
    ) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(offset))?;
        for &(addr, len) in parts {
            mem.read_exact_volatile_from(addr, &mut self.file, len)
                .map_err(outside)?;
        }
        Ok(())
    }

    /// Writes the guest memory `parts`, in order, to the file from byte `offset`.
    pub(super) fn write(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        parts: &[(GuestAddress, usize)],
    ) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(offset))?;
        for &(addr, len) in parts {
            mem.write_all_volatile_to(addr, &mut self.file, len)
                .map_err(outside)?;
        }
        Ok(())
    }

    /// Makes every write so far durable.
    pub(super) fn flush(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Deallocates `len` bytes from `offset`; they read as zeroes afterwards.
    pub(super) fn punch(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        fallocate(&self.file, FallocateMode::PunchHole, true, offset, len)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    /// Zeroes `len` bytes from `offset` keeping them allocated, writing zeroes where the
    /// file system cannot zero a range.
    pub(super) fn zero(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        if fallocate(&self.file, FallocateMode::ZeroRange, true, offset, len).is_ok() {
            return Ok(());
        }
        static ZEROES: [u8; 64 << 10] = [0; 64 << 10];
        self.file.seek(SeekFrom::Start(offset))?;
        let mut left = len;
        while left > 0 {
            let n = left.min(ZEROES.len() as u64) as usize;
            self.file.write_all(ZEROES.get(..n).unwrap_or_default())?;
            left -= n as u64;
        }
        Ok(())
    }
}

/// A buffer outside guest memory, or a file that ended before the request did.
fn outside(e: vm_memory::GuestMemoryError) -> std::io::Error {
    std::io::Error::other(e)
}
