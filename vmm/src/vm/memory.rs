//! Guest memory: sysram as one memfd registered whole, and every other class as its own
//! memfd whose pages reach the guest extent by extent, only while granted.

// Handing host memory to KVM and managing its pages takes system calls Rust cannot check;
// every unsafe block below says why it is sound.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::config::ClassBacking;
pub use crate::config::PAGE;

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;
/// Start of the hole below 4 GiB left for devices (virtio-mmio, the local and I/O APIC).
pub const MMIO_HOLE_START: u64 = 3 * GIB;
/// Where sysram continues above the hole.
pub const HIGH_RAM_START: u64 = 4 * GIB;
/// Everything the guest can address lies below this (the boot page tables map it).
pub const GPA_LIMIT: u64 = 64 * GIB;
/// Classes other than sysram start on this alignment.
pub const CLASS_ALIGN: u64 = GIB;
/// KVM memory slots kept out of the typed classes' shares: sysram's and room for more.
pub const SLOTS_KEPT: u32 = 64;

/// The smallest allocation unit of each typed class (by size, in order) such that every
/// class fits its share of `slots` KVM memory slots even when cut into one-unit extents:
/// each extent takes a slot, so a class of `size` bytes and unit `u` needs at most
/// `size / u`. Shares follow the classes' sizes; units are powers of two, at least a page.
/// Whatever the engine admits, the VMM then has a slot for.
pub fn slot_units(sizes: &[u64], slots: u32) -> Vec<u64> {
    let total: u128 = sizes.iter().map(|&s| u128::from(s)).sum();
    let shared = u128::from(slots.saturating_sub(SLOTS_KEPT).max(1));
    sizes
        .iter()
        .map(|&size| {
            // share = shared * size / total, at least 1; unit = ceil(size / share).
            let share = (shared * u128::from(size) / total.max(1)).max(1);
            let unit = u128::from(size).div_ceil(share);
            u64::try_from(unit)
                .unwrap_or(u64::MAX)
                .max(PAGE)
                .checked_next_power_of_two()
                .unwrap_or(u64::MAX)
        })
        .collect()
}

/// Errors of guest memory set-up and of grants.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// A size that is zero or not page aligned.
    #[error("class {class}: size {size} is not a positive multiple of 4 KiB")]
    BadSize {
        /// The class.
        class: String,
        /// The size given.
        size: u64,
    },
    /// The classes do not fit the guest-physical address space.
    #[error("class {class}: {size} bytes at 0x{base:x} go beyond the 64 GiB guest-physical limit")]
    TooLarge {
        /// The class.
        class: String,
        /// Where it would start.
        base: u64,
        /// Its size.
        size: u64,
    },
    /// Creating or sizing the backing memory failed.
    #[error("class {class}: cannot create its backing memory: {source}")]
    Backing {
        /// The class.
        class: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Mapping the backing memory failed.
    #[error("class {class}: cannot map its memory: {reason}")]
    Map {
        /// The class.
        class: String,
        /// The cause.
        reason: String,
    },
    /// A grant or revoke that is not page aligned or not inside the class.
    #[error("class {class}: extent 0x{offset:x}+0x{len:x} is not page aligned inside its 0x{size:x} bytes")]
    BadExtent {
        /// The class.
        class: String,
        /// Offset in the class.
        offset: u64,
        /// Length.
        len: u64,
        /// The class size.
        size: u64,
    },
    /// A grant overlapping one that exists.
    #[error("class {class}: extent 0x{offset:x}+0x{len:x} overlaps a granted extent")]
    Overlap {
        /// The class.
        class: String,
        /// Offset in the class.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// A revoke of an extent that was not granted as such.
    #[error("class {class}: no extent is granted at 0x{offset:x}")]
    NotGranted {
        /// The class.
        class: String,
        /// Offset in the class.
        offset: u64,
    },
    /// No free extent of that size is left in the class.
    #[error("class {class}: no free extent of {len} bytes")]
    Full {
        /// The class.
        class: String,
        /// The size asked for.
        len: u64,
    },
    /// KVM has no memory slot left.
    #[error("no KVM memory slot is left (KVM offers {0})")]
    NoSlot(usize),
    /// A KVM ioctl failed.
    #[error("KVM refused {what}: {source}")]
    Kvm {
        /// What was asked.
        what: &'static str,
        /// The cause.
        source: kvm_ioctls::Error,
    },
}

type Result<T> = std::result::Result<T, MemoryError>;

/// Creates the backing file of a class: a memfd named after it, or the given file.
fn backing_file(class: &ClassBacking) -> Result<File> {
    let err = |source| MemoryError::Backing {
        class: class.name.clone(),
        source,
    };
    let file = match &class.file {
        Some(path) => OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(err)?,
        None => {
            let name = CString::new(format!("mempart:{}", class.name))
                .map_err(|_| err(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
            let mut flags = libc::MFD_CLOEXEC;
            if class.hugepages {
                flags |= libc::MFD_HUGETLB;
            }
            // SAFETY: `name` is a valid NUL-terminated string; the call has no other inputs.
            let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
            if fd < 0 {
                return Err(err(std::io::Error::last_os_error()));
            }
            // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
            unsafe { File::from_raw_fd(fd) }
        }
    };
    let len = file.metadata().map_err(err)?.len();
    if len < class.size {
        file.set_len(class.size).map_err(err)?;
    }
    Ok(file)
}

/// Populates `len` bytes at `addr` of a shared mapping (best effort is not enough: errors out).
fn prefault(class: &str, addr: *mut u8, len: u64) -> Result<()> {
    // SAFETY: the range is a mapping this process owns; MADV_POPULATE_WRITE only faults
    // pages in and does not change their contents.
    let rc = unsafe { libc::madvise(addr.cast(), len as usize, libc::MADV_POPULATE_WRITE) };
    if rc != 0 {
        return Err(MemoryError::Backing {
            class: class.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Whether the host memory behind `class` is its backing file's allocated blocks: true
/// for a memfd of small pages. A file the user names may be on disk, and huge pages are
/// counted by their own file system, so those are counted page by page instead.
fn counted_by_blocks(class: &ClassBacking) -> bool {
    class.file.is_none() && !class.hugepages
}

/// Host bytes behind a backing file: with `by_blocks`, the bytes allocated to it (one
/// `fstat`, where `mincore` over its mapping costs a page-cache lookup per page); else,
/// or should `fstat` fail, what `by_pages` counts.
fn backed_bytes(file: &File, by_blocks: bool, by_pages: impl FnOnce() -> u64) -> u64 {
    use std::os::unix::fs::MetadataExt;
    by_blocks
        .then(|| file.metadata().ok())
        .flatten()
        .map(|meta| meta.blocks().saturating_mul(512))
        .unwrap_or_else(by_pages)
}

/// Pages of `[addr, addr+len)` present in memory, by `mincore`.
fn resident_bytes(addr: *mut u8, len: u64) -> u64 {
    let pages = len.div_ceil(PAGE) as usize;
    let mut vec = vec![0u8; pages];
    // SAFETY: `addr` is page aligned and the range is mapped by this process; `vec` has one
    // byte per page as mincore requires.
    let rc = unsafe { libc::mincore(addr.cast(), len as usize, vec.as_mut_ptr()) };
    if rc != 0 {
        return 0;
    }
    vec.iter().filter(|b| **b & 1 != 0).count() as u64 * PAGE
}

/// The guest's sysram: one memfd, mapped once, registered with KVM as one or two slots
/// (split around the hole below 4 GiB).
pub struct Sysram {
    /// The guest memory view used to load the kernel and write boot structures.
    pub memory: GuestMemoryMmap,
    /// `(guest address, size)` of each usable range.
    pub ranges: Vec<(u64, u64)>,
    /// Bytes.
    pub size: u64,
    file: File,
    by_blocks: bool,
}

impl Sysram {
    /// Creates sysram of `backing.size` bytes.
    pub fn new(backing: &ClassBacking) -> Result<Sysram> {
        let size = backing.size;
        if size == 0 || size % PAGE != 0 {
            return Err(MemoryError::BadSize {
                class: backing.name.clone(),
                size,
            });
        }
        let low = size.min(MMIO_HOLE_START);
        let mut ranges = vec![(0, low)];
        if size > low {
            ranges.push((HIGH_RAM_START, size - low));
        }
        if let Some(&(base, len)) = ranges.last() {
            if base + len > GPA_LIMIT {
                return Err(MemoryError::TooLarge {
                    class: backing.name.clone(),
                    base,
                    size,
                });
            }
        }
        let file = backing_file(backing)?;
        let mut offset = 0;
        let mut with_files = Vec::new();
        for &(base, len) in &ranges {
            let clone = file.try_clone().map_err(|source| MemoryError::Backing {
                class: backing.name.clone(),
                source,
            })?;
            with_files.push((
                GuestAddress(base),
                len as usize,
                Some(FileOffset::new(clone, offset)),
            ));
            offset += len;
        }
        let memory =
            GuestMemoryMmap::from_ranges_with_files(with_files).map_err(|e| MemoryError::Map {
                class: backing.name.clone(),
                reason: e.to_string(),
            })?;
        if backing.prefault {
            for region in memory.iter() {
                use vm_memory::GuestMemoryRegion;
                let addr = region.as_ptr();
                prefault(&backing.name, addr, region.len())?;
            }
        }
        Ok(Sysram {
            memory,
            ranges,
            size,
            file,
            by_blocks: counted_by_blocks(backing),
        })
    }

    /// Registers every range with KVM, in slots `0..`; returns the next free slot.
    pub fn register(&self, vm: &VmFd) -> Result<u32> {
        use vm_memory::GuestMemoryRegion;
        let mut slot = 0u32;
        for region in self.memory.iter() {
            let entry = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the region stays mapped for as long as `self` (and so the VM) lives.
            unsafe { vm.set_user_memory_region(entry) }.map_err(|source| MemoryError::Kvm {
                what: "a sysram memory slot",
                source,
            })?;
            slot += 1;
        }
        Ok(slot)
    }

    /// Host bytes actually backed in `[gpa, gpa+len)` (0 if the range is not in sysram).
    pub fn resident_range(&self, gpa: u64, len: u64) -> u64 {
        use vm_memory::GuestMemoryRegion;
        let Some(region) = self.memory.find_region(GuestAddress(gpa)) else {
            return 0;
        };
        let offset = gpa - region.start_addr().0;
        if offset % PAGE != 0 || offset.checked_add(len).is_none_or(|end| end > region.len()) {
            return 0;
        }
        // SAFETY: `offset..offset+len` was checked to lie inside the region's mapping.
        let addr = unsafe { region.as_ptr().add(offset as usize) };
        resident_bytes(addr, len)
    }

    /// Host bytes of sysram actually backed.
    pub fn resident(&self) -> u64 {
        use vm_memory::GuestMemoryRegion;
        backed_bytes(&self.file, self.by_blocks, || {
            self.memory
                .iter()
                .map(|r| resident_bytes(r.as_ptr(), r.len()))
                .sum()
        })
    }
}

/// One granted extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent {
    len: u64,
    slot: u32,
}

/// A class other than sysram: typed memory the guest sees only where granted.
pub struct ClassRegion {
    /// The class name.
    pub name: String,
    /// First guest-physical address.
    pub base: u64,
    /// Bytes.
    pub size: u64,
    file: File,
    by_blocks: bool,
    mapping: MmapRegion,
    grants: BTreeMap<u64, Extent>,
}

impl ClassRegion {
    /// Creates and maps the backing memory of a class placed at `base`.
    pub fn new(backing: &ClassBacking, base: u64) -> Result<ClassRegion> {
        if backing.size == 0 || backing.size % PAGE != 0 {
            return Err(MemoryError::BadSize {
                class: backing.name.clone(),
                size: backing.size,
            });
        }
        if base
            .checked_add(backing.size)
            .is_none_or(|end| end > GPA_LIMIT)
        {
            return Err(MemoryError::TooLarge {
                class: backing.name.clone(),
                base,
                size: backing.size,
            });
        }
        let file = backing_file(backing)?;
        let clone = file.try_clone().map_err(|source| MemoryError::Backing {
            class: backing.name.clone(),
            source,
        })?;
        let mapping = MmapRegion::from_file(FileOffset::new(clone, 0), backing.size as usize)
            .map_err(|e| MemoryError::Map {
                class: backing.name.clone(),
                reason: e.to_string(),
            })?;
        if backing.prefault {
            prefault(&backing.name, mapping.as_ptr(), backing.size)?;
        }
        Ok(ClassRegion {
            name: backing.name.clone(),
            base,
            size: backing.size,
            file,
            by_blocks: counted_by_blocks(backing),
            mapping,
            grants: BTreeMap::new(),
        })
    }

    /// Whether guest-physical `gpa` lies in this class.
    pub fn contains(&self, gpa: u64) -> bool {
        gpa >= self.base && gpa - self.base < self.size
    }

    fn check_extent(&self, offset: u64, len: u64) -> Result<()> {
        let inside = offset.checked_add(len).is_some_and(|end| end <= self.size);
        if len == 0 || offset % PAGE != 0 || len % PAGE != 0 || !inside {
            return Err(MemoryError::BadExtent {
                class: self.name.clone(),
                offset,
                len,
                size: self.size,
            });
        }
        Ok(())
    }

    /// Makes `[offset, offset+len)` of the class accessible to the guest through KVM slot `slot`.
    pub fn grant(&mut self, vm: &VmFd, slot: u32, offset: u64, len: u64) -> Result<()> {
        self.check_extent(offset, len)?;
        let overlaps = self
            .grants
            .range(..offset + len)
            .next_back()
            .is_some_and(|(start, e)| start + e.len > offset);
        if overlaps {
            return Err(MemoryError::Overlap {
                class: self.name.clone(),
                offset,
                len,
            });
        }
        let entry = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: self.base + offset,
            memory_size: len,
            userspace_addr: self.mapping.as_ptr() as u64 + offset,
        };
        // SAFETY: the extent lies inside `mapping`, which lives as long as `self`; it is
        // removed from KVM before the mapping is dropped (see `Drop` of the VM).
        unsafe { vm.set_user_memory_region(entry) }.map_err(|source| MemoryError::Kvm {
            what: "a class memory slot",
            source,
        })?;
        self.grants.insert(offset, Extent { len, slot });
        Ok(())
    }

    /// Makes the extent granted at `offset` inaccessible again and gives its pages back to
    /// the host; returns the KVM slot it used.
    pub fn revoke(&mut self, vm: &VmFd, offset: u64) -> Result<u32> {
        let extent = *self
            .grants
            .get(&offset)
            .ok_or_else(|| MemoryError::NotGranted {
                class: self.name.clone(),
                offset,
            })?;
        let entry = kvm_userspace_memory_region {
            slot: extent.slot,
            flags: 0,
            guest_phys_addr: self.base + offset,
            memory_size: 0,
            userspace_addr: self.mapping.as_ptr() as u64 + offset,
        };
        // SAFETY: a zero size removes the slot; no memory is handed to KVM.
        unsafe { vm.set_user_memory_region(entry) }.map_err(|source| MemoryError::Kvm {
            what: "removing a class memory slot",
            source,
        })?;
        self.grants.remove(&offset);
        self.punch(offset, extent.len)?;
        Ok(extent.slot)
    }

    /// Gives the host pages of every part of the class not granted back to the host.
    pub fn discard_ungranted(&self) -> Result<()> {
        let mut start = 0u64;
        let ends = self
            .grants
            .iter()
            .map(|(offset, e)| (*offset, offset + e.len))
            .chain(std::iter::once((self.size, self.size)));
        for (offset, end) in ends {
            if offset > start {
                self.punch(start, offset - start)?;
            }
            start = end;
        }
        Ok(())
    }

    /// Punches `[offset, offset+len)` out of the class's file.
    fn punch(&self, offset: u64, len: u64) -> Result<()> {
        // SAFETY: punching a hole in our own file only discards its pages in that range.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc != 0 {
            return Err(MemoryError::Backing {
                class: self.name.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Backs `[offset, offset+len)` of the class with host memory now (page aligned).
    pub fn populate(&self, offset: u64, len: u64) -> Result<()> {
        self.check_extent(offset, len)?;
        // The extent check keeps `offset` inside the mapping.
        prefault(
            &self.name,
            self.mapping.as_ptr().wrapping_add(offset as usize),
            len,
        )
    }

    /// The lowest offset with `len` free bytes (page aligned), if any.
    pub fn find_free(&self, len: u64) -> Option<u64> {
        if len == 0 || len % PAGE != 0 {
            return None;
        }
        let mut candidate = 0u64;
        for (offset, extent) in &self.grants {
            if candidate.checked_add(len)? <= *offset {
                return Some(candidate);
            }
            candidate = candidate.max(offset + extent.len);
        }
        (candidate.checked_add(len)? <= self.size).then_some(candidate)
    }

    /// Granted extents as `(offset, len)`.
    pub fn grants(&self) -> Vec<(u64, u64)> {
        self.grants.iter().map(|(o, e)| (*o, e.len)).collect()
    }

    /// Host bytes of this class actually backed.
    pub fn resident(&self) -> u64 {
        backed_bytes(&self.file, self.by_blocks, || {
            resident_bytes(self.mapping.as_ptr(), self.size)
        })
    }

    /// The host view of the class's bytes (for tests and the VMM's own checks).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.size) {
            return Err(MemoryError::BadExtent {
                class: self.name.clone(),
                offset,
                len: buf.len() as u64,
                size: self.size,
            });
        }
        // SAFETY: `offset..offset+len` was checked to lie inside the mapping.
        let src = unsafe { self.mapping.as_ptr().add(offset as usize) };
        // SAFETY: `src` points at `buf.len()` readable bytes that do not overlap `buf`.
        unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }
}

/// Places classes after sysram: each at the next `CLASS_ALIGN` boundary at or above 4 GiB
/// and above the previous one.
pub fn class_bases(sysram_end: u64, sizes: &[u64]) -> Vec<u64> {
    let mut next = sysram_end.max(HIGH_RAM_START);
    sizes
        .iter()
        .map(|size| {
            let base = next.div_ceil(CLASS_ALIGN).saturating_mul(CLASS_ALIGN);
            next = base.saturating_add(*size);
            base
        })
        .collect()
}

#[cfg(test)]
mod tests {

    #[test]
    fn slot_units_fit_every_class_in_its_share_of_slots() {
        // One small class: a page. Two 64 MiB classes sharing 32,764 slots: 8 KiB each.
        assert_eq!(slot_units(&[64 * MIB], 32_764), vec![PAGE]);
        assert_eq!(
            slot_units(&[64 * MIB, 64 * MIB], 32_764),
            vec![2 * PAGE, 2 * PAGE]
        );
        // Shares follow sizes: of 509 shared slots, 501 for 64 GiB (137 MB each, so
        // 256 MiB units) and 7 for 1 GiB (153 MB each, so 256 MiB too).
        let units = slot_units(&[64 * GIB, GIB], 573);
        assert_eq!(units, vec![256 * MIB, 256 * MIB]);
        for (sizes, slots) in [
            (vec![64 * MIB, 64 * MIB], 32_764u32),
            (vec![64 * GIB, GIB, 4 * MIB], 509),
            (vec![GIB; 3], 70),
        ] {
            let units = slot_units(&sizes, slots);
            let needed: u64 = sizes.iter().zip(&units).map(|(s, u)| s.div_ceil(*u)).sum();
            assert!(
                needed <= u64::from(slots - SLOTS_KEPT),
                "{sizes:?} over {slots} slots: units {units:?} need {needed}"
            );
            assert!(units.iter().all(|u| u.is_power_of_two() && *u >= PAGE));
        }
    }

    use super::*;

    use std::path::PathBuf;
    use vm_memory::Bytes;

    fn backing(name: &str, size: u64, file: Option<PathBuf>) -> ClassBacking {
        ClassBacking {
            name: name.into(),
            size,
            hugepages: false,
            file,
            prefault: false,
        }
    }

    #[test]
    fn a_memfd_class_counts_its_allocated_blocks_which_agree_with_mincore() {
        let class = ClassRegion::new(&backing("fast", 8 * MIB, None), 4 * GIB).unwrap();
        assert!(class.by_blocks);
        let mapped = || resident_bytes(class.mapping.as_ptr(), class.size);
        assert_eq!((class.resident(), mapped()), (0, 0));
        class.populate(PAGE, 5 * PAGE).unwrap();
        assert_eq!((class.resident(), mapped()), (5 * PAGE, 5 * PAGE));
        class.punch(2 * PAGE, 2 * PAGE).unwrap();
        assert_eq!((class.resident(), mapped()), (3 * PAGE, 3 * PAGE));
    }

    #[test]
    fn sysram_in_a_memfd_counts_its_blocks() {
        let sysram = Sysram::new(&backing(mempart::SYSRAM, 16 * MIB, None)).unwrap();
        assert!(sysram.by_blocks);
        sysram.memory.write_slice(&[1; 3], GuestAddress(0)).unwrap();
        sysram
            .memory
            .write_slice(&[1; 8192], GuestAddress(8 * MIB))
            .unwrap();
        assert_eq!(sysram.resident(), 3 * PAGE);
        assert_eq!(sysram.resident_range(8 * MIB, MIB), 2 * PAGE);
    }

    #[test]
    fn a_class_in_a_named_file_is_counted_page_by_page() {
        let path = std::env::temp_dir().join(format!("mempart-class-{}", std::process::id()));
        let class = ClassRegion::new(&backing("fast", 4 * MIB, Some(path.clone())), 4 * GIB);
        std::fs::remove_file(&path).unwrap();
        let class = class.unwrap();
        assert!(!class.by_blocks);
        class.populate(0, 3 * PAGE).unwrap();
        // On a disk a file's blocks say nothing of memory, and read-ahead may cache more
        // of it than was written: the page cache behind the mapping is what counts.
        let resident = class.resident();
        assert!((3 * PAGE..=class.size).contains(&resident), "{resident}");
    }

    #[test]
    fn classes_start_on_gib_boundaries_above_4g_and_sysram() {
        assert_eq!(
            class_bases(256 * MIB, &[MIB, 2 * GIB, MIB]),
            vec![4 * GIB, 5 * GIB, 7 * GIB]
        );
        assert_eq!(class_bases(6 * GIB + 1, &[MIB]), vec![7 * GIB]);
    }
}
