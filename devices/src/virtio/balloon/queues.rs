//! What the guest puts on the balloon's queues: page numbers to inflate or deflate, free
//! ranges it reports, statistics. Every entry is checked against guest memory; what does
//! not fit is counted as rejected.

// Giving guest pages back to the host is an madvise on memory Rust cannot reason about.
#![allow(unsafe_code)]

use std::num::NonZeroUsize;

use virtio_queue::DescriptorChain;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use super::{BalloonStatus, BALLOON_PAGE, MAX_ENTRIES_BYTES};

/// Which pages the balloon holds, one bit per 4 KiB page of each region of guest memory:
/// the count follows the pages, not the guest's requests, so a page inflated again
/// counts once.
#[derive(Default)]
pub(super) struct HeldPages(Vec<(GuestAddress, u64, AtomicBitmap)>);

impl HeldPages {
    /// No page held, for the regions of `mem`.
    pub(super) fn of(mem: &GuestMemoryMmap) -> HeldPages {
        let page = NonZeroUsize::new(BALLOON_PAGE as usize).unwrap_or(NonZeroUsize::MIN);
        HeldPages(
            mem.iter()
                .map(|r| {
                    let len = r.len();
                    let bits = AtomicBitmap::new(usize::try_from(len).unwrap_or(0), page);
                    (r.start_addr(), len, bits)
                })
                .collect(),
        )
    }

    /// The bitmap and offset of the page at `gpa`.
    fn find(&self, gpa: u64) -> Option<(&AtomicBitmap, usize)> {
        self.0.iter().find_map(|(start, len, bits)| {
            let offset = gpa.checked_sub(start.0).filter(|o| o < len)?;
            Some((bits, usize::try_from(offset).ok()?))
        })
    }

    fn is_held(&self, gpa: u64) -> bool {
        self.find(gpa).is_some_and(|(bits, o)| bits.is_addr_set(o))
    }

    fn hold(&self, gpa: u64) {
        if let Some((bits, o)) = self.find(gpa) {
            bits.set_addr_range(o, BALLOON_PAGE as usize);
        }
    }

    /// Lets the page at `gpa` go; whether the balloon held it.
    fn give_back(&self, gpa: u64) -> bool {
        match self.find(gpa) {
            Some((bits, o)) if bits.is_addr_set(o) => {
                bits.reset_addr_range(o, BALLOON_PAGE as usize);
                true
            }
            _ => false,
        }
    }
}

/// Gives `[gpa, gpa+len)` back to the host if it lies wholly inside one region of guest
/// memory; returns whether it did.
fn release(mem: &GuestMemoryMmap, gpa: u64, len: u64) -> bool {
    let Some(region) = mem.find_region(GuestAddress(gpa)) else {
        return false;
    };
    let offset = gpa - region.start_addr().0;
    if offset.checked_add(len).is_none_or(|end| end > region.len()) {
        return false;
    }
    let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(offset)) else {
        return false;
    };
    // SAFETY: `host..host+len` lies inside a mapping of guest memory that this process
    // owns; MADV_REMOVE only discards its pages (they read as zero when touched again).
    unsafe { libc::madvise(host.cast(), len as usize, libc::MADV_REMOVE) == 0 }
}

/// Inflate or deflate: every device-readable descriptor is an array of le32 page numbers.
pub(super) fn page_numbers(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    inflate: bool,
    held: &HeldPages,
    status: &mut BalloonStatus,
) {
    for desc in chain {
        if desc.is_write_only() || desc.len() % 4 != 0 || desc.len() > MAX_ENTRIES_BYTES {
            status.rejected += 1;
            continue;
        }
        for i in 0..u64::from(desc.len() / 4) {
            let Some(addr) = desc.addr().checked_add(i * 4) else {
                status.rejected += 1;
                break;
            };
            let Ok(pfn) = mem.read_obj::<u32>(addr) else {
                status.rejected += 1;
                break;
            };
            let gpa = u64::from(u32::from_le(pfn)) * BALLOON_PAGE;
            if mem.find_region(GuestAddress(gpa)).is_none() {
                status.rejected += 1;
                continue;
            }
            if inflate {
                if !held.is_held(gpa) && release(mem, gpa, BALLOON_PAGE) {
                    held.hold(gpa);
                    status.inflated_pages += 1;
                } else {
                    status.rejected += 1;
                }
            } else if held.give_back(gpa) {
                status.inflated_pages = status.inflated_pages.saturating_sub(1);
            } else {
                status.rejected += 1;
            }
        }
    }
}

/// Free page reporting: every device-writable descriptor is a free range to release.
pub(super) fn reported_ranges(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    status: &mut BalloonStatus,
) {
    for desc in chain {
        let len = u64::from(desc.len());
        if !desc.is_write_only() || len % BALLOON_PAGE != 0 || desc.addr().0 % BALLOON_PAGE != 0 {
            status.rejected += 1;
            continue;
        }
        if release(mem, desc.addr().0, len) {
            status.reported_bytes += len;
        } else {
            status.rejected += 1;
        }
    }
}

/// Statistics: device-readable 10-byte entries of le16 tag and le64 value.
pub(super) fn read_stats(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    status: &mut BalloonStatus,
) {
    for desc in chain {
        if desc.is_write_only() || desc.len() % 10 != 0 || desc.len() > MAX_ENTRIES_BYTES {
            status.rejected += 1;
            continue;
        }
        for i in 0..u64::from(desc.len() / 10) {
            let Some(addr) = desc.addr().checked_add(i * 10) else {
                break;
            };
            let tag = mem.read_obj::<u16>(addr).map(u16::from_le);
            let value = addr
                .checked_add(2)
                .and_then(|a| mem.read_obj::<u64>(a).ok())
                .map(u64::from_le);
            match (tag, value) {
                (Ok(tag), Some(value)) => {
                    if let Some(slot) = status.stats.get_mut(usize::from(tag)) {
                        *slot = Some(value);
                    }
                }
                _ => {
                    status.rejected += 1;
                    break;
                }
            }
        }
    }
}
