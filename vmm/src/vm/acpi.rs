//! ACPI tables for Linux guests, built with the `acpi_tables` crate: RSDP, XSDT, a
//! hardware-reduced FADT whose sleep registers give a clean power-off, a MADT, an SRAT
//! with node 0 and one hot-pluggable node per zone, and a DSDT holding `_S5`, the serial
//! port and the virtio-mmio devices (hardware-reduced ACPI has no legacy interrupt
//! controller, so the kernel maps a device's interrupt only when ACPI names it).

use acpi_tables::aml::{
    Device, EISAName, Interrupt, Memory32Fixed, Name, Package, Path, ResourceTemplate, Scope, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::srat::{MemoryAffinity, SRAT};
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Where the RSDP goes: the start of the BIOS area Linux scans, reserved in the e820 map.
pub const RSDP_ADDR: u64 = 0xe_0000;
/// The end of the area the tables may fill.
const TABLES_END: u64 = 0x10_0000;
/// The sleep control register (an I/O port): the guest writes its `_S5` type with
/// SLP_EN here to power off.
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
/// The sleep status register (an I/O port; reads as 0).
pub const SLEEP_STATUS_PORT: u16 = 0x601;
/// The sleep type `_S5` names; written as `(type << 2) | SLP_EN`.
const S5_TYPE: u8 = 5;
/// SLP_EN in the sleep control register.
const SLEEP_ENABLE: u8 = 1 << 5;
/// Where the local APICs are.
const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Where the guest's I/O APIC is (emulated in the VMM, ioapic.rs).
const IOAPIC_ADDR: u32 = super::ioapic::IOAPIC_BASE as u32;
/// Local APIC ids are a byte in the MADT entries used here.
pub const MAX_CPUS: u32 = 255;
/// IA-PC boot architecture flags: no VGA, no MSI, no CMOS clock (nothing to probe).
const IAPC_NO_VGA_MSI_CMOS: u16 = (1 << 2) | (1 << 3) | (1 << 5);

const OEM_ID: [u8; 6] = *b"MEMPRT";
const OEM_TABLE_ID: [u8; 8] = *b"MEMPARTV";
const OEM_REVISION: u32 = 1;

/// A guest NUMA node the SRAT describes besides node 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    /// Its proximity domain.
    pub proximity: u32,
    /// Its guest-physical range, hot-pluggable.
    pub base: u64,
    /// The range's length.
    pub size: u64,
}

/// A virtio-mmio device the DSDT announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDevice {
    /// Its register window.
    pub base: u64,
    /// The window's length.
    pub len: u64,
    /// Its interrupt (a GSI of the I/O APIC).
    pub irq: u32,
}

/// The serial port the DSDT announces (a 16550 at `port`, interrupt `irq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialPort {
    /// Its first I/O port.
    pub port: u16,
    /// Its interrupt (a GSI of the I/O APIC).
    pub irq: u32,
}

/// The ACPI id Linux's virtio-mmio driver binds to.
const VIRTIO_MMIO_HID: &str = "LNRO0005";

/// Errors of building the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// More vCPUs than the MADT entries can name.
    #[error("{0} vCPUs: ACPI tables name at most {MAX_CPUS}")]
    TooManyCpus(u32),
    /// A device window the 32-bit resource descriptors cannot describe, or too many devices.
    #[error("virtio-mmio device at 0x{0:x} cannot be described in the DSDT")]
    Device(u64),
    /// The tables do not fit below 1 MiB.
    #[error("the ACPI tables take {0} bytes, more than the BIOS area holds")]
    TooLarge(u64),
    /// Writing them into guest memory failed.
    #[error("writing the ACPI tables into guest memory: {0}")]
    Memory(String),
}

/// Whether an I/O write to [`SLEEP_CONTROL_PORT`] asks for power-off (S5 with SLP_EN).
pub fn is_power_off(value: u8) -> bool {
    value & SLEEP_ENABLE != 0 && (value >> 2) & 0x7 == S5_TYPE
}

/// Serialises one table.
fn bytes(table: &dyn Aml) -> Vec<u8> {
    let mut out = Vec::new();
    table.to_aml_bytes(&mut out);
    out
}

/// Lays tables out one after another from just past the RSDP, 16-byte aligned.
struct Layout {
    next: u64,
    tables: Vec<(u64, Vec<u8>)>,
}

impl Layout {
    fn place(&mut self, data: Vec<u8>) -> u64 {
        let addr = self.next;
        self.next = (addr + data.len() as u64).next_multiple_of(16);
        self.tables.push((addr, data));
        addr
    }
}

/// The DSDT's AML: `_S5` and, under `\_SB`, the serial port and one device per
/// virtio-mmio window.
fn dsdt_body(serial: SerialPort, devices: &[MmioDevice]) -> Result<Vec<u8>, AcpiError> {
    let mut aml = bytes(&Name::new(
        Path::from("_S5_"),
        &Package::new(vec![&S5_TYPE, &0u8, &0u8, &0u8]),
    ));
    let hid = VIRTIO_MMIO_HID.to_string();
    let mut described = Vec::with_capacity(devices.len());
    for (index, device) in devices.iter().enumerate() {
        let (Ok(base), Ok(len), true) = (
            u32::try_from(device.base),
            u32::try_from(device.len),
            index < 0x1000,
        ) else {
            return Err(AcpiError::Device(device.base));
        };
        described.push((
            format!("V{index:03X}"),
            index as u32,
            Memory32Fixed::new(true, base, len),
            Interrupt::new(true, true, false, false, device.irq),
        ));
    }
    let mut children = Vec::new();
    let uart_ports = IO::new(serial.port, serial.port, 1, 8);
    let uart_irq = Interrupt::new(true, true, false, false, serial.irq);
    let uart_crs = ResourceTemplate::new(vec![&uart_ports, &uart_irq]);
    let uart_hid = Name::new(Path::from("_HID"), &EISAName::new("PNP0501"));
    let uart_uid = Name::new(Path::from("_UID"), &0u8);
    let uart_crs_name = Name::new(Path::from("_CRS"), &uart_crs);
    children.push(bytes(&Device::new(
        Path::from("COM1"),
        vec![&uart_hid, &uart_uid, &uart_crs_name],
    )));
    for (name, uid, window, irq) in &described {
        let crs = ResourceTemplate::new(vec![window, irq]);
        let hid_name = Name::new(Path::from("_HID"), &hid);
        let uid_name = Name::new(Path::from("_UID"), uid);
        let crs_name = Name::new(Path::from("_CRS"), &crs);
        children.push(bytes(&Device::new(
            Path::from(name.as_str()),
            vec![&hid_name, &uid_name, &crs_name],
        )));
    }
    let raw: Vec<RawAml> = children.into_iter().map(RawAml).collect();
    let scope = Scope::new(
        Path::from("\\_SB_"),
        raw.iter().map(|r| r as &dyn Aml).collect(),
    );
    aml.extend(bytes(&scope));
    Ok(aml)
}

/// AML already serialised.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// What the tables describe besides the vCPUs.
#[derive(Debug, Clone, Copy)]
pub struct Machine<'a> {
    /// Node 0's memory: sysram's ranges.
    pub sysram: &'a [(u64, u64)],
    /// One more node per zone.
    pub zones: &'a [Node],
    /// The serial port.
    pub serial: SerialPort,
    /// The virtio-mmio devices.
    pub devices: &'a [MmioDevice],
}

/// Builds the tables for `cpus` vCPUs and `machine`, as `(guest address, bytes)` pairs
/// with the RSDP at [`RSDP_ADDR`].
pub fn build(cpus: u32, machine: &Machine<'_>) -> Result<Vec<(u64, Vec<u8>)>, AcpiError> {
    let Machine {
        sysram,
        zones,
        serial,
        devices,
    } = *machine;
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(AcpiError::TooManyCpus(cpus));
    }
    let mut layout = Layout {
        next: RSDP_ADDR + Rsdp::len().next_multiple_of(16) as u64,
        tables: Vec::new(),
    };

    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&dsdt_body(serial, devices)?);
    let dsdt_addr = layout.place(dsdt.as_slice().to_vec());

    let port = |port: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            port.into(),
        )
    };
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::Headless);
    fadt.sleep_control_reg = port(SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = port(SLEEP_STATUS_PORT);
    fadt.iapc_boot_arch = IAPC_NO_VGA_MSI_CMOS.into();
    let fadt_addr = layout.place(bytes(&fadt.finalize()));

    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for cpu in 0..cpus {
        let id = u8::try_from(cpu).map_err(|_| AcpiError::TooManyCpus(cpus))?;
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
    let madt_addr = layout.place(bytes(&madt));

    // vCPUs need no affinity entries: Linux puts a CPU without one on the first node with
    // memory at boot, node 0 (zones have none until the VMM plugs some).
    let mut srat = SRAT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for &(base, size) in sysram {
        srat.add_memory_affinity(MemoryAffinity::new(0, base, size).enabled());
    }
    for zone in zones {
        srat.add_memory_affinity(
            MemoryAffinity::new(zone.proximity, zone.base, zone.size)
                .enabled()
                .hotpluggable(),
        );
    }
    let srat_addr = layout.place(bytes(&srat));

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for addr in [fadt_addr, madt_addr, srat_addr] {
        xsdt.add_entry(addr);
    }
    let xsdt_addr = layout.place(bytes(&xsdt));
    if layout.next > TABLES_END {
        return Err(AcpiError::TooLarge(layout.next - RSDP_ADDR));
    }
    layout
        .tables
        .push((RSDP_ADDR, bytes(&Rsdp::new(OEM_ID, xsdt_addr))));
    Ok(layout.tables)
}

/// Writes tables built by [`build`] into guest memory.
pub fn write(mem: &GuestMemoryMmap, tables: &[(u64, Vec<u8>)]) -> Result<(), AcpiError> {
    for (addr, data) in tables {
        mem.write_slice(data, GuestAddress(*addr))
            .map_err(|e| AcpiError::Memory(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const COM1: SerialPort = SerialPort {
        port: 0x3f8,
        irq: 4,
    };

    fn machine<'a>(
        sysram: &'a [(u64, u64)],
        zones: &'a [Node],
        devices: &'a [MmioDevice],
    ) -> Machine<'a> {
        Machine {
            sysram,
            zones,
            serial: COM1,
            devices,
        }
    }

    const DEVICES: [MmioDevice; 2] = [
        MmioDevice {
            base: 0xd000_0000,
            len: 0x1000,
            irq: 5,
        },
        MmioDevice {
            base: 0xd000_1000,
            len: 0x1000,
            irq: 6,
        },
    ];

    fn table<'a>(tables: &'a [(u64, Vec<u8>)], signature: &[u8]) -> &'a [u8] {
        tables
            .iter()
            .map(|(_, t)| t.as_slice())
            .find(|t| t.starts_with(signature))
            .unwrap_or_else(|| panic!("no {:?} table", String::from_utf8_lossy(signature)))
    }

    fn u32_at(t: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(t[at..at + 4].try_into().unwrap())
    }

    fn u64_at(t: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(t[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn every_table_sums_to_zero_and_has_its_length() {
        let zones = [Node {
            proximity: 1,
            base: 8 << 30,
            size: 1 << 30,
        }];
        let tables = build(2, &machine(&[(0, 256 << 20)], &zones, &DEVICES)).unwrap();
        for (addr, t) in &tables {
            let sum = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
            if *addr == RSDP_ADDR {
                assert_eq!(&t[..8], b"RSD PTR ");
                assert_eq!(t[..20].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            } else {
                assert_eq!(u32_at(t, 4) as usize, t.len(), "{:?}", &t[..4]);
            }
            assert_eq!(sum, 0, "table at 0x{addr:x}");
            assert!(*addr >= RSDP_ADDR && addr + t.len() as u64 <= TABLES_END);
        }
    }

    #[test]
    fn xsdt_points_at_fadt_madt_and_srat() {
        let tables = build(1, &machine(&[(0, 128 << 20)], &[], &DEVICES)).unwrap();
        let rsdp = table(&tables, b"RSD PTR ");
        let xsdt_addr = u64_at(rsdp, 24);
        let xsdt = tables.iter().find(|(a, _)| *a == xsdt_addr).unwrap();
        assert_eq!(&xsdt.1[..4], b"XSDT");
        let signatures: Vec<&[u8]> = (36..xsdt.1.len())
            .step_by(8)
            .map(|at| {
                let addr = u64_at(&xsdt.1, at);
                let t = &tables.iter().find(|(a, _)| *a == addr).unwrap().1;
                &t[..4]
            })
            .collect();
        assert_eq!(signatures, vec![&b"FACP"[..], b"APIC", b"SRAT"]);
    }

    #[test]
    fn madt_names_each_vcpu_and_the_ioapic() {
        let tables = build(3, &machine(&[(0, 128 << 20)], &[], &[])).unwrap();
        let madt = table(&tables, b"APIC");
        let mut at = 44;
        let mut lapics = Vec::new();
        let mut ioapics = 0;
        while at < madt.len() {
            match madt[at] {
                0 => lapics.push(madt[at + 3]),
                1 => ioapics += 1,
                other => panic!("unexpected MADT entry {other}"),
            }
            at += madt[at + 1] as usize;
        }
        assert_eq!((lapics, ioapics), (vec![0, 1, 2], 1));
    }

    #[test]
    fn srat_has_node_zero_and_a_hotpluggable_node_per_zone() {
        let zones = [
            Node {
                proximity: 1,
                base: 8 << 30,
                size: 1 << 30,
            },
            Node {
                proximity: 2,
                base: 9 << 30,
                size: 2 << 30,
            },
        ];
        let sysram = [(0, 3 << 30), (4 << 30, 1 << 30)];
        let tables = build(1, &machine(&sysram, &zones, &[])).unwrap();
        let srat = table(&tables, b"SRAT");
        let entries: Vec<(u32, u64, u64, u32)> = (48..srat.len())
            .step_by(40)
            .map(|at| {
                assert_eq!(srat[at], 1, "a memory affinity entry");
                (
                    u32_at(srat, at + 2),
                    u64_at(srat, at + 8),
                    u64_at(srat, at + 16),
                    u32_at(srat, at + 28),
                )
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                (0, 0, 3 << 30, 1),
                (0, 4 << 30, 1 << 30, 1),
                (1, 8 << 30, 1 << 30, 3),
                (2, 9 << 30, 2 << 30, 3),
            ]
        );
    }

    #[test]
    fn fadt_is_hardware_reduced_with_sleep_registers() {
        let tables = build(1, &machine(&[(0, 128 << 20)], &[], &DEVICES)).unwrap();
        let fadt = table(&tables, b"FACP");
        assert_ne!(u32_at(fadt, 112) & (1 << 20), 0, "HW_REDUCED_ACPI");
        // The sleep control and status registers are I/O-space GAS entries at 244 and 256.
        assert_eq!(
            (fadt[244], u64_at(fadt, 248)),
            (1, u64::from(SLEEP_CONTROL_PORT))
        );
        assert_eq!(
            (fadt[256], u64_at(fadt, 260)),
            (1, u64::from(SLEEP_STATUS_PORT))
        );
        let dsdt = table(&tables, b"DSDT");
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
    }

    #[test]
    fn dsdt_names_each_virtio_mmio_window_and_interrupt() {
        let tables = build(1, &machine(&[(0, 128 << 20)], &[], &DEVICES)).unwrap();
        let dsdt = table(&tables, b"DSDT");
        let find = |needle: &[u8]| dsdt.windows(needle.len()).position(|w| w == needle);
        assert!(find(b"LNRO0005\0").is_some());
        // COM1: PNP0501 with I/O ports 0x3f8-0x3ff and interrupt 4.
        assert!(find(b"COM1").is_some());
        assert!(find(&[0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8]).is_some());
        assert!(find(&[0x89, 6, 0, 0b11, 1, 4, 0, 0, 0]).is_some());
        for (name, device) in [(b"V000", DEVICES[0]), (b"V001", DEVICES[1])] {
            assert!(find(name).is_some());
            // A 32-bit fixed memory descriptor: tag 0x86, length 9, read-write, base, length.
            let mut window = vec![0x86, 9, 0, 1];
            window.extend_from_slice(&(device.base as u32).to_le_bytes());
            window.extend_from_slice(&(device.len as u32).to_le_bytes());
            assert!(find(&window).is_some(), "window of {name:?}");
            // An extended interrupt descriptor: tag 0x89, length 6, consumer+edge, one GSI.
            let mut irq = vec![0x89, 6, 0, 0b11, 1];
            irq.extend_from_slice(&device.irq.to_le_bytes());
            assert!(find(&irq).is_some(), "interrupt of {name:?}");
        }
        let too_high = MmioDevice {
            base: 1 << 32,
            len: 0x1000,
            irq: 7,
        };
        assert!(matches!(
            build(1, &machine(&[(0, 128 << 20)], &[], &[too_high])),
            Err(AcpiError::Device(_))
        ));
    }

    #[test]
    fn power_off_is_s5_with_sleep_enable() {
        assert!(is_power_off((S5_TYPE << 2) | SLEEP_ENABLE));
        assert!(!is_power_off(S5_TYPE << 2));
        assert!(!is_power_off((3 << 2) | SLEEP_ENABLE));
    }

    #[test]
    fn cpu_count_is_bounded() {
        assert!(matches!(
            build(0, &machine(&[], &[], &[])),
            Err(AcpiError::TooManyCpus(0))
        ));
        assert!(matches!(
            build(MAX_CPUS + 1, &machine(&[], &[], &[])),
            Err(AcpiError::TooManyCpus(_))
        ));
        assert!(build(MAX_CPUS, &machine(&[(0, 1 << 30)], &[], &[])).is_ok());
    }
}
