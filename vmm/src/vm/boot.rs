//! Getting a vCPU to the kernel's entry: kernel loading, boot parameters and e820 map,
//! command line, identity page tables, GDT, registers and CPUID.

use std::fs::File;
use std::path::Path;

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, CpuId};
use kvm_ioctls::VcpuFd;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{elf::Elf, load_cmdline, Cmdline, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use crate::vm::memory::{GPA_LIMIT, MMIO_HOLE_START};

/// Where the GDT goes.
const GDT_ADDR: u64 = 0x500;
/// The Linux zero page (boot_params).
pub const ZERO_PAGE: u64 = 0x7000;
/// Top of the boot stack.
const BOOT_STACK: u64 = 0x8ff0;
/// The page-map level 4 table.
const PML4: u64 = 0x9000;
/// The page-directory-pointer table.
const PDPT: u64 = 0xa000;
/// The page directories: one per GiB of [`GPA_LIMIT`], 2 MiB pages.
const PD_BASE: u64 = 0x30000;
/// The kernel command line.
const CMDLINE_ADDR: u64 = 0x20000;
/// Longest command line accepted.
pub const CMDLINE_MAX: usize = 4096;
/// Where kernels may be loaded from (1 MiB): below it live the boot structures.
const HIGHMEM_START: u64 = 0x10_0000;
/// End of the low usable RAM (the EBDA and BIOS area follow).
const EBDA_START: u64 = 0x9fc00;

/// e820 entry types.
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

/// Errors of getting a guest ready to run.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file cannot be opened.
    #[error("kernel {path}: {source}")]
    KernelOpen {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The kernel is neither a loadable ELF nor a bzImage.
    #[error("kernel {path}: not a loadable ELF vmlinux or bzImage ({elf}; {bzimage})")]
    KernelFormat {
        /// The path.
        path: String,
        /// Why the ELF loader refused it.
        elf: String,
        /// Why the bzImage loader refused it.
        bzimage: String,
    },
    /// The initrd cannot be read or does not fit.
    #[error("initrd {path}: {reason}")]
    Initrd {
        /// The path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The command line is too long or malformed.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// Writing boot structures into guest memory failed.
    #[error("writing {what} into guest memory: {reason}")]
    Memory {
        /// Which structure.
        what: &'static str,
        /// The cause.
        reason: String,
    },
    /// A vCPU register ioctl failed.
    #[error("setting vCPU {what}: {source}")]
    Vcpu {
        /// Which registers.
        what: &'static str,
        /// The cause.
        source: kvm_ioctls::Error,
    },
}

type Result<T> = std::result::Result<T, BootError>;

/// What loading the kernel produced.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Whether it is a Linux kernel (a bzImage, or an ELF with a PVH note); other ELF files
    /// are bare guests whose vCPUs all start at the entry.
    pub linux: bool,
    /// The 64-bit entry point.
    pub entry: u64,
    /// First byte after the kernel.
    pub end: u64,
    /// The bzImage setup header, when the kernel was a bzImage.
    pub setup_header: Option<linux_loader::loader::bootparam::setup_header>,
}

/// Loads an ELF vmlinux (or any 64-bit ELF, such as a test guest) or a bzImage.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel> {
    let open = || {
        File::open(path).map_err(|source| BootError::KernelOpen {
            path: path.display().to_string(),
            source,
        })
    };
    let mut file = open()?;
    let elf = match Elf::load(mem, None, &mut file, Some(GuestAddress(HIGHMEM_START))) {
        Ok(r) => {
            return Ok(LoadedKernel {
                linux: matches!(
                    r.pvh_boot_cap,
                    linux_loader::loader::elf::PvhBootCapability::PvhEntryPresent(_)
                ),
                entry: r.kernel_load.raw_value(),
                end: r.kernel_end,
                setup_header: None,
            })
        }
        Err(e) => e.to_string(),
    };
    let mut file = open()?;
    match linux_loader::loader::bzimage::BzImage::load(
        mem,
        None,
        &mut file,
        Some(GuestAddress(HIGHMEM_START)),
    ) {
        Ok(r) => Ok(LoadedKernel {
            linux: true,
            // The 64-bit entry of a bzImage is 0x200 past where its protected-mode part loads.
            entry: r.kernel_load.raw_value() + 0x200,
            end: r.kernel_end,
            setup_header: r.setup_header,
        }),
        Err(e) => Err(BootError::KernelFormat {
            path: path.display().to_string(),
            elf,
            bzimage: e.to_string(),
        }),
    }
}

/// Loads the initrd high in low sysram (below 3 GiB and the end of RAM), page aligned.
/// Returns `(address, size)`.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    low_ram_end: u64,
    kernel_end: u64,
) -> Result<(u64, u64)> {
    let err = |reason: String| BootError::Initrd {
        path: path.display().to_string(),
        reason,
    };
    let data = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let size = data.len() as u64;
    let top = low_ram_end.min(MMIO_HOLE_START);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end)
        .ok_or_else(|| {
            err(format!(
                "{size} bytes do not fit between the kernel (ends 0x{kernel_end:x}) and 0x{top:x}"
            ))
        })?;
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(|e| err(e.to_string()))?;
    Ok((addr, size))
}

/// Builds the e820 map: low RAM, the BIOS area reserved, RAM from 1 MiB, RAM above 4 GiB,
/// and every other class reserved.
pub fn e820_map(sysram: &[(u64, u64)], classes: &[(u64, u64)]) -> Vec<boot_e820_entry> {
    let entry = |addr, size, r#type| boot_e820_entry { addr, size, r#type };
    let mut map = vec![entry(0, EBDA_START, E820_RAM)];
    for &(base, len) in sysram {
        if base == 0 {
            map.push(entry(EBDA_START, HIGHMEM_START - EBDA_START, E820_RESERVED));
            if len > HIGHMEM_START {
                map.push(entry(HIGHMEM_START, len - HIGHMEM_START, E820_RAM));
            }
        } else {
            map.push(entry(base, len, E820_RAM));
        }
    }
    for &(base, len) in classes {
        map.push(entry(base, len, E820_RESERVED));
    }
    map
}

/// Writes the command line, zero page and e820 map for a Linux kernel.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &str,
    initrd: Option<(u64, u64)>,
    e820: &[boot_e820_entry],
    rsdp: Option<u64>,
) -> Result<()> {
    let mut line = Cmdline::new(CMDLINE_MAX).map_err(|e| BootError::Cmdline(e.to_string()))?;
    line.insert_str(cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &line)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = 0xff;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448; // "HdrS"
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline.len() as u32 + 1;
    params.hdr.kernel_alignment = 0x0100_0000;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    if let Some(addr) = rsdp {
        params.acpi_rsdp_addr = addr;
    }
    let count = e820.len().min(params.e820_table.len());
    for (slot, entry) in params.e820_table.iter_mut().zip(e820.iter().take(count)) {
        *slot = *entry;
    }
    params.e820_entries = count as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE))
        .map_err(|e| BootError::Memory {
            what: "the zero page",
            reason: e.to_string(),
        })
}

/// Writes identity page tables for `[0, top)` (rounded up to a GiB, at most
/// [`GPA_LIMIT`]) with 2 MiB pages, and the GDT.
pub fn write_page_tables_and_gdt(mem: &GuestMemoryMmap, top: u64) -> Result<()> {
    let err = |what| {
        move |e: vm_memory::GuestMemoryError| BootError::Memory {
            what,
            reason: e.to_string(),
        }
    };
    let gibs = top.min(GPA_LIMIT).div_ceil(1 << 30).max(1);
    mem.write_obj(PDPT | 0x3, GuestAddress(PML4))
        .map_err(err("the PML4"))?;
    let mut pdpt = Vec::with_capacity(gibs as usize * 8);
    let mut pds = Vec::with_capacity(gibs as usize * 4096);
    for gib in 0..gibs {
        pdpt.extend_from_slice(&((PD_BASE + gib * 0x1000) | 0x3).to_le_bytes());
        for entry in 0..512u64 {
            pds.extend_from_slice(&((gib << 30) | (entry << 21) | 0x83).to_le_bytes());
        }
    }
    mem.write_slice(&pdpt, GuestAddress(PDPT))
        .map_err(err("the PDPT"))?;
    mem.write_slice(&pds, GuestAddress(PD_BASE))
        .map_err(err("the page directories"))?;
    let gdt: Vec<u8> = GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
    mem.write_slice(&gdt, GuestAddress(GDT_ADDR))
        .map_err(err("the GDT"))
}

/// Null, 64-bit code (selector 0x8), data (0x10), TSS placeholder (0x18).
const GDT: [u64; 4] = [
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x008f_8b00_0000_ffff,
];

fn segment(selector: u16, descriptor: u64) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: ((descriptor >> 40) & 0xf) as u8,
        present: ((descriptor >> 47) & 1) as u8,
        dpl: ((descriptor >> 45) & 3) as u8,
        db: ((descriptor >> 54) & 1) as u8,
        s: ((descriptor >> 44) & 1) as u8,
        l: ((descriptor >> 53) & 1) as u8,
        g: ((descriptor >> 55) & 1) as u8,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Puts a vCPU in 64-bit mode at `entry` with the boot protocol's registers
/// (`rsi` = zero page) and `rdi` = the vCPU index.
pub fn setup_vcpu(vcpu: &VcpuFd, entry: u64, index: u64) -> Result<()> {
    let err = |what| move |source| BootError::Vcpu { what, source };
    let mut sregs = vcpu.get_sregs().map_err(err("special registers"))?;
    let code = segment(0x8, GDT[1]);
    let data = segment(0x10, GDT[2]);
    let mut tss = segment(0x18, GDT[3]);
    tss.type_ = 11;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr3 = PML4;
    sregs.cr4 |= 1 << 5; // PAE
    sregs.cr0 |= 1 | (1 << 31); // PE, PG
    sregs.efer |= (1 << 8) | (1 << 10); // LME, LMA
    vcpu.set_sregs(&sregs).map_err(err("special registers"))?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK - index * 0x400,
        rbp: BOOT_STACK - index * 0x400,
        rsi: ZERO_PAGE,
        rdi: index,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(err("general registers"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(err("FPU registers"))
}

/// CPUID leaf 1 ECX bit of CMPXCHG16B, which KVM's instruction emulator cannot execute.
const CPUID_1_ECX_CX16: u32 = 1 << 13;
/// CPUID leaf 0x80000008 EBX bit telling the kernel FXSAVE leaks nothing (no `fnclex` fix-up).
const CPUID_80000008_EBX_XSAVEERPTR: u32 = 1 << 2;

/// Adapts KVM's supported CPUID for vCPU `index` of `count`; with `emulated_kernel`
/// (kvm_pvm) hides what the emulator cannot run.
pub fn adapt_cpuid(cpuid: &mut CpuId, index: u32, count: u32, emulated_kernel: bool) {
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => {
                entry.ebx = (entry.ebx & 0x0000_ffff) | (index << 24) | (count << 16);
                entry.ecx |= 1 << 31; // running under a hypervisor
                if emulated_kernel {
                    entry.ecx &= !CPUID_1_ECX_CX16;
                }
            }
            0xb => entry.edx = index,
            0x8000_0008 if emulated_kernel => entry.ebx |= CPUID_80000008_EBX_XSAVEERPTR,
            _ => {}
        }
    }
}

/// Kernel arguments a Linux guest needs on a kvm_pvm host, for what CPUID cannot hide.
pub const EMULATED_KERNEL_ARGS: &str = "noxsave nofsgsbase clearcpuid=smap,popcnt,cx16";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_reserves_bios_area_and_every_class() {
        let map = e820_map(&[(0, 256 << 20)], &[(4 << 30, 1 << 20)]);
        let kinds: Vec<(u64, u32)> = map.iter().map(|e| (e.addr, e.r#type)).collect();
        assert_eq!(
            kinds,
            vec![(0, 1), (EBDA_START, 2), (HIGHMEM_START, 1), (4 << 30, 2)]
        );
    }

    #[test]
    fn code_segment_is_64_bit() {
        let cs = segment(0x8, GDT[1]);
        assert_eq!((cs.l, cs.db, cs.present, cs.type_), (1, 0, 1, 0xb));
    }
}
