//! The guest's I/O APIC, emulated in the VMM beside KVM's split irqchip.
//!
//! With the split irqchip only the local APICs live in the kernel; this device holds the
//! 24 redirection entries the guest programs and turns each unmasked one into an MSI
//! route for its GSI, so the devices' irqfds reach the CPU the guest chose. Every line
//! here is edge-triggered (the DSDT says so), so routes carry no level semantics and no
//! EOI comes back. A VM without the in-kernel PIC, I/O APIC and PIT is destroyed without
//! the kernel's per-device grace periods (scripts/bench-boot's floor shows the cost).

use kvm_bindings::{kvm_irq_routing_entry, KVM_IRQ_ROUTING_MSI};

/// Guest-physical address of the I/O APIC's register window (the MADT names it).
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// Size of the register window.
pub const IOAPIC_WINDOW: u64 = 0x1000;
/// Interrupt pins, and GSIs reserved for them in KVM's routing.
pub const IOAPIC_PINS: usize = 24;

const REG_SELECT: u64 = 0x00;
const REG_WINDOW: u64 = 0x10;
const INDEX_ID: u8 = 0x00;
const INDEX_VERSION: u8 = 0x01;
const INDEX_ARBITRATION: u8 = 0x02;
const INDEX_FIRST_ENTRY: u8 = 0x10;
/// Version 0x11 (82093AA), highest pin index in bits 16-23.
const VERSION: u32 = 0x11 | ((IOAPIC_PINS as u32 - 1) << 16);
const ENTRY_MASKED: u64 = 1 << 16;
/// Delivery status and remote IRR: the guest cannot set them.
const ENTRY_READ_ONLY: u64 = (1 << 12) | (1 << 14);
const MSI_ADDRESS_BASE: u32 = 0xfee0_0000;

/// Register state of one I/O APIC.
#[derive(Debug)]
pub struct Ioapic {
    id: u32,
    select: u8,
    entries: [u64; IOAPIC_PINS],
}

impl Default for Ioapic {
    fn default() -> Self {
        Ioapic {
            id: 0,
            select: 0,
            entries: [ENTRY_MASKED; IOAPIC_PINS],
        }
    }
}

impl Ioapic {
    /// A guest read at `offset` into the window; anything but an aligned 32-bit register
    /// reads as zeros.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let value = match (offset, data.len()) {
            (REG_SELECT, 4) => u32::from(self.select),
            (REG_WINDOW, 4) => self.register(self.select),
            _ => 0,
        };
        data.fill(0);
        if let Ok(register) = <&mut [u8; 4]>::try_from(data) {
            *register = value.to_le_bytes();
        }
    }

    /// A guest write at `offset`; returns true when the routes ([`Ioapic::routes`]) changed.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> bool {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return false;
        };
        let value = u32::from_le_bytes(bytes);
        match offset {
            REG_SELECT => {
                self.select = value as u8;
                false
            }
            REG_WINDOW => self.set_register(self.select, value),
            _ => false,
        }
    }

    fn register(&self, index: u8) -> u32 {
        match index {
            INDEX_ID => self.id,
            INDEX_VERSION => VERSION,
            INDEX_ARBITRATION => self.id,
            _ => match entry_half(index) {
                Some((pin, high)) => {
                    let entry = self.entries.get(pin).copied().unwrap_or(ENTRY_MASKED);
                    if high {
                        (entry >> 32) as u32
                    } else {
                        entry as u32
                    }
                }
                None => 0,
            },
        }
    }

    fn set_register(&mut self, index: u8, value: u32) -> bool {
        if index == INDEX_ID {
            self.id = value & 0x0f00_0000;
            return false;
        }
        let Some((pin, high)) = entry_half(index) else {
            return false;
        };
        let Some(entry) = self.entries.get_mut(pin) else {
            return false;
        };
        let before = *entry;
        *entry = if high {
            (before & 0xffff_ffff) | (u64::from(value) << 32)
        } else {
            (before & (0xffff_ffff_0000_0000 | ENTRY_READ_ONLY))
                | (u64::from(value) & !ENTRY_READ_ONLY)
        };
        route(before) != route(*entry)
    }

    /// The MSI route of every unmasked pin.
    pub fn routes(&self) -> Vec<MsiRoute> {
        self.entries
            .iter()
            .zip(0u32..)
            .filter_map(|(&entry, gsi)| {
                let (address, data) = route(entry)?;
                Some(MsiRoute { gsi, address, data })
            })
            .collect()
    }
}

/// A pin's interrupt as KVM delivers it: GSI `gsi` becomes an MSI write of `data` to
/// `address` (the entry's destination, vector and delivery mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiRoute {
    /// The GSI, which is the pin.
    pub gsi: u32,
    /// The MSI address (below 4 GiB).
    pub address: u32,
    /// The MSI data.
    pub data: u32,
}

impl MsiRoute {
    /// The entry for `KVM_SET_GSI_ROUTING`.
    pub fn to_kvm(self) -> kvm_irq_routing_entry {
        let mut entry = kvm_irq_routing_entry {
            gsi: self.gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        entry.u.msi.address_lo = self.address;
        entry.u.msi.data = self.data;
        entry
    }
}

/// The pin and half (high dword or not) a register index names.
fn entry_half(index: u8) -> Option<(usize, bool)> {
    let offset = index.checked_sub(INDEX_FIRST_ENTRY)?;
    let pin = usize::from(offset / 2);
    (pin < IOAPIC_PINS).then_some((pin, offset % 2 == 1))
}

/// The MSI (address, data) an entry delivers, or `None` while it is masked.
fn route(entry: u64) -> Option<(u32, u32)> {
    if entry & ENTRY_MASKED != 0 {
        return None;
    }
    let vector = (entry & 0xff) as u32;
    let delivery_mode = ((entry >> 8) & 0x7) as u32;
    let logical = ((entry >> 11) & 1) as u32;
    let destination = ((entry >> 56) & 0xff) as u32;
    let address = MSI_ADDRESS_BASE | (destination << 12) | (logical << 2);
    Some((address, vector | (delivery_mode << 8)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_register(ioapic: &mut Ioapic, index: u8, value: u32) -> bool {
        ioapic.write(REG_SELECT, &u32::from(index).to_le_bytes());
        ioapic.write(REG_WINDOW, &value.to_le_bytes())
    }

    fn read_register(ioapic: &mut Ioapic, index: u8) -> u32 {
        ioapic.write(REG_SELECT, &u32::from(index).to_le_bytes());
        let mut data = [0u8; 4];
        ioapic.read(REG_WINDOW, &mut data);
        u32::from_le_bytes(data)
    }

    #[test]
    fn version_names_24_pins_and_every_pin_starts_masked() {
        let mut ioapic = Ioapic::default();
        assert_eq!(read_register(&mut ioapic, INDEX_VERSION), 0x0017_0011);
        for pin in 0..IOAPIC_PINS as u8 {
            assert_eq!(read_register(&mut ioapic, 0x10 + 2 * pin), 1 << 16);
        }
        assert!(ioapic.routes().is_empty());
    }

    #[test]
    fn an_unmasked_entry_becomes_an_msi_route_for_its_gsi() {
        let mut ioapic = Ioapic::default();
        // Destination APIC 2 in the high half first, as Linux writes it: still masked.
        assert!(!write_register(&mut ioapic, 0x10 + 2 * 5 + 1, 2 << 24));
        // Vector 0x31, fixed delivery, physical destination, edge, unmasked.
        assert!(write_register(&mut ioapic, 0x10 + 2 * 5, 0x31));
        let route = MsiRoute {
            gsi: 5,
            address: 0xfee0_2000,
            data: 0x31,
        };
        assert_eq!(ioapic.routes(), vec![route]);
        assert_eq!(read_register(&mut ioapic, 0x10 + 2 * 5 + 1), 2 << 24);
    }

    #[test]
    fn rewriting_the_same_entry_changes_no_route_and_masking_removes_it() {
        let mut ioapic = Ioapic::default();
        assert!(write_register(&mut ioapic, 0x10 + 2 * 4, 0x0930));
        assert!(!write_register(&mut ioapic, 0x10 + 2 * 4, 0x0930));
        // Lowest-priority delivery (1) and a logical destination (bit 11).
        let route = MsiRoute {
            gsi: 4,
            address: 0xfee0_0004,
            data: 0x130,
        };
        assert_eq!(ioapic.routes(), vec![route]);
        assert!(write_register(&mut ioapic, 0x10 + 2 * 4, 0x0930 | 1 << 16));
        assert!(ioapic.routes().is_empty());
    }

    #[test]
    fn read_only_bits_and_stray_accesses_are_ignored() {
        let mut ioapic = Ioapic::default();
        assert!(write_register(&mut ioapic, 0x10, 0x31 | 1 << 12 | 1 << 14));
        assert_eq!(read_register(&mut ioapic, 0x10), 0x31);
        // Past the last pin, short and misplaced writes: no effect, no route.
        assert!(!write_register(&mut ioapic, 0x10 + 2 * 24, 0x40));
        assert!(!write_register(&mut ioapic, 0xff, 0x40));
        assert!(!ioapic.write(REG_WINDOW, &[1, 2]));
        assert!(!ioapic.write(0x20, &0x40u32.to_le_bytes()));
        assert_eq!(read_register(&mut ioapic, 0x10 + 2 * 24), 0);
        let mut data = [0xaa_u8; 8];
        ioapic.read(REG_WINDOW, &mut data);
        assert_eq!(data, [0; 8]);
        assert_eq!(ioapic.routes().len(), 1);
    }
}
