//! Typed memory in a guest process: the guest-physical extent the VMM granted, mapped
//! through `/dev/mem` (the class is reserved in the e820 map, so the kernel lets it be
//! mapped) and touched a 64-bit word at a time.

// Mapping physical memory and touching it through raw pointers is what this module is.
#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

/// A shared mapping of `len` bytes of guest-physical memory starting at `gpa`.
pub struct PhysMapping {
    base: *mut u64,
    len: usize,
}

impl PhysMapping {
    /// Maps `[gpa, gpa + len)` read-write from `/dev/mem`; both must be page-aligned.
    pub fn new(gpa: u64, len: usize) -> io::Result<PhysMapping> {
        let page = 4096u64;
        if gpa % page != 0 || len == 0 || len as u64 % page != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("0x{gpa:x}+{len}: not whole pages"),
            ));
        }
        let offset = libc::off_t::try_from(gpa).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("0x{gpa:x}: too high"))
        })?;
        let mem = OpenOptions::new().read(true).write(true).open("/dev/mem")?;
        // SAFETY: a fresh shared mapping chosen by the kernel (no address hint), of a file
        // descriptor we own; the result is checked before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                mem.as_raw_fd(),
                offset,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(PhysMapping {
            base: base.cast(),
            len,
        })
    }

    /// Number of 64-bit words mapped.
    pub fn words(&self) -> usize {
        self.len / 8
    }

    /// Writes `value` to word `index`; `None` when it is outside the mapping.
    pub fn write(&self, index: usize, value: u64) -> Option<()> {
        (index < self.words()).then(|| {
            // SAFETY: `index` is inside the mapping, which stays mapped while `self`
            // lives; volatile because the memory is the VMM's to revoke at any time.
            unsafe { self.base.add(index).write_volatile(value) }
        })
    }

    /// Reads word `index`; `None` when it is outside the mapping.
    pub fn read(&self, index: usize) -> Option<u64> {
        (index < self.words()).then(|| {
            // SAFETY: as for `write`.
            unsafe { self.base.add(index).read_volatile() }
        })
    }
}

impl Drop for PhysMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; nothing refers to it after drop.
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}
