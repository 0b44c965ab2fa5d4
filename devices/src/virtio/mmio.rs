//! The virtio-mmio transport (version 2): the register window a driver programs to
//! negotiate features, set up queues and start a device.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{Activation, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};

/// Size of one device's register window.
pub const MMIO_WINDOW: u64 = 0x1000;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x5452_504d; // "MPRT"

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
/// The queue-notify register; the VMM backs it with one ioeventfd per queue.
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

/// Device status bits.
const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 0x40;
const STATUS_FAILED: u32 = 0x80;

/// One device behind its register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Interrupt,
    queues: Vec<Queue>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
}

impl MmioTransport {
    /// Puts `device` behind a register window; it interrupts through `interrupt`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Interrupt,
    ) -> MmioTransport {
        let queues = Self::fresh_queues(device.as_ref());
        MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
        }
    }

    fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
        device
            .queue_max_sizes()
            .iter()
            .filter_map(|max| Queue::new(*max).ok())
            .collect()
    }

    /// Number of queues (each has an ioeventfd at [`REG_QUEUE_NOTIFY`] matching its index).
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// The device status the driver last wrote (with `NEEDS_RESET` if activation failed).
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the driver has started the device.
    pub fn activated(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0 && self.status & STATUS_NEEDS_RESET == 0
    }

    /// The driver notified queue `index` (through the ioeventfd or the register).
    pub fn notify(&mut self, index: usize) {
        if self.activated() && index < self.queues.len() {
            self.device.queue_notified(index);
        }
    }

    /// The device's backend moved data (its eventfd fired).
    pub fn backend_ready(&mut self) {
        if self.activated() {
            self.device.backend_ready();
        }
    }

    /// The device's backend descriptor, watched edge-triggered by the event loop.
    pub fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        self.device.backend_fd()
    }

    /// A duplicate of the device's backend eventfd, for the event loop.
    pub fn backend_event(&self) -> Option<std::io::Result<vmm_sys_util::eventfd::EventFd>> {
        self.device.backend_event().map(|fd| fd.try_clone())
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queue set-up is only allowed between FEATURES_OK and DRIVER_OK.
        if self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// A driver read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        let value = match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => 0,
        };
        if data.len() == 4 {
            data.copy_from_slice(&value.to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    /// A driver write of `data` at `offset` in the window. Registers take 32-bit writes
    /// only; anything else is ignored.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            if self.status & STATUS_DRIVER != 0 {
                self.device.write_config(offset - CONFIG_SPACE, data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let value = u32::from_le_bytes(bytes);
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_DRIVER_FEATURES if self.status & STATUS_FEATURES_OK == 0 => {
                let shift = match self.driver_features_sel {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                self.driver_features =
                    (self.driver_features & !(0xffff_ffff << shift)) | (u64::from(value) << shift);
            }
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(u16::try_from(value).unwrap_or(0));
                }
            }
            REG_QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            REG_QUEUE_DESC_LOW => self.with_queue(|q| q.set_desc_table_address(Some(value), None)),
            REG_QUEUE_DESC_HIGH => self.with_queue(|q| q.set_desc_table_address(None, Some(value))),
            REG_QUEUE_DRIVER_LOW => {
                self.with_queue(|q| q.set_avail_ring_address(Some(value), None))
            }
            REG_QUEUE_DRIVER_HIGH => {
                self.with_queue(|q| q.set_avail_ring_address(None, Some(value)))
            }
            REG_QUEUE_DEVICE_LOW => self.with_queue(|q| q.set_used_ring_address(Some(value), None)),
            REG_QUEUE_DEVICE_HIGH => {
                self.with_queue(|q| q.set_used_ring_address(None, Some(value)))
            }
            REG_QUEUE_NOTIFY => self.notify(value as usize),
            REG_INTERRUPT_ACK => self.interrupt.acknowledge(value),
            REG_STATUS => self.set_status(value),
            _ => {}
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        let newly = value & !self.status;
        if newly & STATUS_FEATURES_OK != 0 {
            let offered = self.device.features();
            let ok = self.driver_features & !offered == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !ok {
                value &= !STATUS_FEATURES_OK;
            }
        }
        self.status = value;
        if newly & STATUS_DRIVER_OK != 0 && value & STATUS_FAILED == 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let wanted_order = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        let valid = self.status & wanted_order == wanted_order
            && self
                .queues
                .iter()
                .filter(|q| q.ready())
                .all(|q| q.is_valid(&self.mem));
        if !valid {
            self.status |= STATUS_NEEDS_RESET;
            return;
        }
        let queues: Vec<Queue> = self
            .queues
            .iter()
            .take_while(|q| q.ready())
            .filter_map(|q| Queue::try_from(q.state()).ok())
            .collect();
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            features: self.driver_features,
        };
        if self.device.activate(activation).is_err() {
            self.status |= STATUS_NEEDS_RESET;
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        self.queues = Self::fresh_queues(self.device.as_ref());
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.acknowledge(u32::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::ActivateError;
    use std::sync::{Arc, Mutex};
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    /// A device that records what the transport tells it.
    #[derive(Default)]
    struct Probe {
        log: Arc<Mutex<Vec<String>>>,
        config: [u8; 8],
    }

    impl VirtioDevice for Probe {
        fn device_type(&self) -> u32 {
            42
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            crate::virtio::read_config_bytes(&self.config, offset, data);
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            if let Some(b) = self.config.get_mut(offset as usize) {
                *b = data.first().copied().unwrap_or(0);
            }
        }
        fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
            self.log
                .lock()
                .map(|mut l| l.push(format!("activate {} {:x}", a.queues.len(), a.features)))
                .ok();
            Ok(())
        }
        fn queue_notified(&mut self, index: usize) {
            self.log
                .lock()
                .map(|mut l| l.push(format!("notify {index}")))
                .ok();
        }
        fn reset(&mut self) {
            self.log.lock().map(|mut l| l.push("reset".into())).ok();
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Vec<String>>>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)])
            .unwrap_or_else(|e| panic!("{e}"));
        let probe = Probe::default();
        let log = Arc::clone(&probe.log);
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap_or_else(|e| panic!("{e}"));
        (
            MmioTransport::new(Box::new(probe), mem, Interrupt::new(irq)),
            log,
        )
    }

    fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, offset: u64, v: u32) {
        t.write(offset, &v.to_le_bytes());
    }

    fn set_up_queue(t: &mut MmioTransport, index: u32, base: u32) {
        wr(t, REG_QUEUE_SEL, index);
        wr(t, REG_QUEUE_NUM, 8);
        wr(t, REG_QUEUE_DESC_LOW, base);
        wr(t, REG_QUEUE_DRIVER_LOW, base + 0x1000);
        wr(t, REG_QUEUE_DEVICE_LOW, base + 0x2000);
        wr(t, REG_QUEUE_READY, 1);
    }

    fn log(l: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
        l.lock().map(|l| l.clone()).unwrap_or_default()
    }

    #[test]
    fn identification_registers() {
        let (mut t, _) = transport();
        assert_eq!(rd(&mut t, REG_MAGIC), MAGIC);
        assert_eq!(rd(&mut t, REG_VERSION), 2);
        assert_eq!(rd(&mut t, REG_DEVICE_ID), 42);
        wr(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, REG_DEVICE_FEATURES), 1);
        wr(&mut t, REG_QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 8);
        wr(&mut t, REG_QUEUE_SEL, 7);
        assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 0);
    }

    #[test]
    fn full_negotiation_activates_with_ready_queues_and_forwards_notifies() {
        let (mut t, log_) = transport();
        for s in [1, 3] {
            wr(&mut t, REG_STATUS, s);
        }
        wr(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        wr(&mut t, REG_DRIVER_FEATURES, 1);
        wr(&mut t, REG_STATUS, 11);
        assert_eq!(rd(&mut t, REG_STATUS), 11);
        set_up_queue(&mut t, 0, 0x1_0000);
        set_up_queue(&mut t, 1, 0x2_0000);
        wr(&mut t, REG_STATUS, 15);
        assert!(t.activated());
        wr(&mut t, REG_QUEUE_NOTIFY, 1);
        t.notify(5);
        assert_eq!(log(&log_), vec!["activate 2 100000000", "notify 1"]);
        wr(&mut t, REG_STATUS, 0);
        assert_eq!(rd(&mut t, REG_STATUS), 0);
        assert!(!t.activated());
        assert_eq!(log(&log_).last().map(String::as_str), Some("reset"));
    }

    #[test]
    fn features_not_offered_or_without_version_1_fail_features_ok() {
        let (mut t, _) = transport();
        wr(&mut t, REG_STATUS, 3);
        wr(&mut t, REG_DRIVER_FEATURES, 1 << 5);
        wr(&mut t, REG_STATUS, 11);
        assert_eq!(rd(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        let (mut t, _) = transport();
        wr(&mut t, REG_STATUS, 3);
        wr(&mut t, REG_DRIVER_FEATURES, 1);
        wr(&mut t, REG_STATUS, 11);
        assert_eq!(rd(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn queues_outside_guest_memory_prevent_activation() {
        let (mut t, log_) = transport();
        wr(&mut t, REG_STATUS, 3);
        wr(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        wr(&mut t, REG_DRIVER_FEATURES, 1);
        wr(&mut t, REG_STATUS, 11);
        set_up_queue(&mut t, 0, 0x7000_0000);
        wr(&mut t, REG_STATUS, 15);
        assert!(!t.activated());
        assert_ne!(rd(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
        wr(&mut t, REG_QUEUE_NOTIFY, 0);
        assert!(log(&log_).is_empty());
    }

    #[test]
    fn odd_widths_and_unknown_offsets_are_harmless() {
        let (mut t, _) = transport();
        let mut b = [0xffu8; 2];
        t.read(REG_MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
        t.write(REG_STATUS, &[1, 2]);
        assert_eq!(rd(&mut t, REG_STATUS), 0);
        wr(&mut t, 0xff0, 7);
        assert_eq!(rd(&mut t, 0xff0 - CONFIG_SPACE), 0);
        let mut big = [0u8; 64];
        t.read(CONFIG_SPACE + u64::MAX / 2, &mut big);
        assert_eq!(big, [0u8; 64]);
        wr(&mut t, REG_STATUS, 2);
        t.write(CONFIG_SPACE + 1, &[9]);
        let mut c = [0u8; 2];
        t.read(CONFIG_SPACE, &mut c);
        assert_eq!(c, [0, 9]);
    }
}
