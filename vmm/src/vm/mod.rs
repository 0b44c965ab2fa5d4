//! A running VM: KVM set-up, the memory classes, the serial console, vCPU threads and
//! what ends them. `boot.rs` loads the kernel, `memory.rs` lays out and backs the memory
//! classes, `violations.rs` counts guest accesses to memory it was not granted, `acpi.rs`
//! builds the ACPI tables of a Linux guest, `zones.rs` backs its hot-pluggable NUMA nodes.

pub mod acpi;
pub mod boot;
pub mod ioapic;
pub mod memory;
pub mod violations;
pub mod zones;

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::virtio::balloon::{Balloon, BalloonHandle, BalloonStatus};
use devices::virtio::block::{Block, Disk, DiskError, DiskInfo};
use devices::virtio::console::{AgentChannel, Console};
use devices::virtio::mem::{MemStatus, RequestedSizeError};
use devices::virtio::mmio::{MmioTransport, MMIO_WINDOW, REG_QUEUE_NOTIFY};
use devices::virtio::net::{Net, NetInfo, Tap, TapError};
use devices::virtio::{Interrupt, VirtioDevice};
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{
    kvm_enable_cap, kvm_mp_state, KvmIrqRouting, KVM_CAP_SPLIT_IRQCHIP, KVM_MAX_CPUID_ENTRIES,
    KVM_MP_STATE_RUNNABLE,
};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuExit, VcpuFd, VmFd};
use mempart::topology::Topology;
use mempart::{ClassSpec, Engine};
use vm_memory::{Bytes, GuestAddress};
use vm_superio::{Serial, Trigger};

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::config::{AgentEnd, SerialOut, VmConfig};
use crate::reclaim::Reclaimer;
use crate::service::{Authority, PartitionService, ZoneMeasure, ZoneMeter};
use crate::startup;
use boot::{BootError, EMULATED_KERNEL_ARGS};
use ioapic::{Ioapic, IOAPIC_BASE, IOAPIC_PINS, IOAPIC_WINDOW};
use memory::{class_bases, ClassRegion, MemoryError, Sysram, CLASS_ALIGN};
use violations::{LogLine, Violation, ViolationLog};
use zones::{SlotPool, Zone, ZoneFollower, ZONE_SLOTS};

/// The COM1 ports.
const COM1: u16 = 0x3f8;
/// The COM1 interrupt line.
const COM1_IRQ: u32 = 4;
/// The i8042 command port: 0xfe written here resets the machine.
const I8042_COMMAND: u16 = 0x64;
/// The i8042 data port.
const I8042_DATA: u16 = 0x60;
/// Where the virtio-mmio register windows start (in the hole below 4 GiB).
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// The interrupt line of the first virtio device; the next ones follow.
const FIRST_DEVICE_IRQ: u32 = 5;
/// The POST-code port: the benchmark guest's first instruction writes here.
const POST_PORT: u16 = 0x80;
/// Where KVM keeps the TSS on Intel hosts (three pages below the BIOS).
const TSS_ADDRESS: usize = 0xfffb_d000;

/// What the host's KVM is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Hardware virtualization (Intel VT-x).
    KvmIntel,
    /// Hardware virtualization (AMD-V).
    KvmAmd,
    /// kvm_pvm: guest kernel code runs under KVM's instruction emulator.
    KvmPvm,
    /// No KVM module found.
    Unknown,
}

impl Backend {
    /// Reads `/sys/module` to tell the backend.
    pub fn detect() -> Backend {
        let has = |m: &str| std::path::Path::new("/sys/module").join(m).exists();
        if has("kvm_intel") {
            Backend::KvmIntel
        } else if has("kvm_amd") {
            Backend::KvmAmd
        } else if has("kvm_pvm") {
            Backend::KvmPvm
        } else {
            Backend::Unknown
        }
    }

    /// The module name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::KvmIntel => "kvm_intel",
            Backend::KvmAmd => "kvm_amd",
            Backend::KvmPvm => "kvm_pvm",
            Backend::Unknown => "unknown",
        }
    }
}

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset the machine through the i8042 controller: the clean way out.
    Reset,
    /// The guest powered off through the ACPI sleep control register.
    PowerOff,
    /// The guest asked KVM for shutdown or reset (a system event).
    SystemEvent(u32),
    /// The guest triple-faulted.
    TripleFault,
    /// KVM could not run the guest (emulation failure, entry failure).
    Crash(String),
}

impl VmExit {
    /// The process exit code documented in docs/guide/running-guests.md: 0 for a guest that shut down,
    /// 3 for a guest that crashed.
    pub fn code(&self) -> i32 {
        match self {
            VmExit::Reset | VmExit::PowerOff | VmExit::SystemEvent(_) => 0,
            VmExit::TripleFault | VmExit::Crash(_) => 3,
        }
    }
}

/// Errors of building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The KVM device cannot be opened or is not KVM.
    #[error("{path}: {source} (is KVM loaded, and is the device readable and writable by you?)")]
    Kvm {
        /// The device path.
        path: String,
        /// The cause.
        source: kvm_ioctls::Error,
    },
    /// A KVM ioctl failed.
    #[error("KVM refused {what}: {source}")]
    Ioctl {
        /// What was asked.
        what: &'static str,
        /// The cause.
        source: kvm_ioctls::Error,
    },
    /// The vCPU count is out of range.
    #[error("--cpus {given}: this host's KVM allows 1 to {max}")]
    Cpus {
        /// Asked.
        given: u32,
        /// Allowed.
        max: u32,
    },
    /// The classes break a partition rule.
    #[error("memory classes: {0}")]
    Classes(mempart::Error),
    /// A class's size is not a multiple of the unit its share of memory slots needs.
    #[error(
        "class {class:?}: {size} bytes is not a multiple of {unit}, the allocation unit \
         that fits it in its share of KVM's {slots} memory slots; make it a multiple"
    )]
    ClassUnit {
        /// The class.
        class: String,
        /// Its size.
        size: u64,
        /// The unit it needs.
        unit: u64,
        /// KVM's memory slots.
        slots: u32,
    },
    /// The topology file cannot be read.
    #[error("topology {path}: {reason}")]
    TopologyRead {
        /// The path.
        path: String,
        /// The cause.
        reason: String,
    },
    /// The topology breaks rules.
    #[error("topology {path}: {}", .errors.join("; "))]
    Topology {
        /// The path.
        path: String,
        /// Every violated rule.
        errors: Vec<String>,
    },
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Kernel loading and boot structures.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The ACPI tables.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// The serial console's destination.
    #[error("serial console {path}: {source}")]
    Serial {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A zone cannot be set up.
    #[error(transparent)]
    Zone(#[from] zones::ZoneError),
    /// A network device's tap cannot be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// A disk's image cannot be used.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// No zone of that name.
    #[error("no zone {0:?}")]
    NoZone(String),
    /// A requested size the zone cannot take.
    #[error("zone {zone:?}: {source}")]
    ZoneSize {
        /// The zone.
        zone: String,
        /// Why.
        source: RequestedSizeError,
    },
    /// The zone backs a partition, whose max sizes it.
    #[error("zone {zone:?} backs {partition}: change that partition's max instead")]
    ZoneBound {
        /// The zone.
        zone: String,
        /// The partition's path.
        partition: String,
    },
    /// A class named in a grant does not exist.
    #[error("no class {0:?}")]
    NoClass(String),
    /// A vCPU thread could not be started.
    #[error("starting a VMM thread: {0}")]
    Thread(std::io::Error),
    /// An eventfd could not be created or duplicated.
    #[error("creating an eventfd: {0}")]
    EventFd(std::io::Error),
    /// The event loop or the vCPU kick signal failed.
    #[error("event loop: {0}")]
    EventLoop(String),
}

/// Signals a serial interrupt through an irqfd.
struct IrqTrigger(EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

type SerialConsole = Serial<IrqTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>;

/// State shared by the vCPU threads and the VM's handles.
struct Shared {
    vm: Arc<VmFd>,
    serial: Mutex<SerialConsole>,
    ioapic: Mutex<Ioapic>,
    classes: Mutex<Vec<ClassRegion>>,
    engine: Arc<Mutex<Engine>>,
    service: PartitionService,
    violations: Mutex<ViolationLog>,
    free_slots: Arc<Mutex<SlotPool>>,
    max_slots: u32,
    zones: Vec<Zone>,
    zone_follower: Mutex<ZoneFollower>,
    disks: Vec<DiskInfo>,
    nets: Vec<NetInfo>,
    stop: AtomicBool,
    sysram: Sysram,
    post_seen: AtomicBool,
    exits: Mutex<ExitCounts>,
    devices: Vec<MmioDevice>,
    balloon: BalloonHandle,
    reclaimer: Reclaimer,
    agent: AgentChannel,
    exit: Mutex<Option<VmExit>>,
    exit_event: EventFd,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A VM ready to run.
pub struct Vm {
    agent_end: AgentEnd,
    shared: Arc<Shared>,
    vcpus: Vec<VcpuFd>,
    notifiers: Vec<QueueNotifier>,
    /// The backend it runs on.
    pub backend: Backend,
}

/// A zone's figures, from below the guest OS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneFigures {
    /// The zone name.
    pub name: String,
    /// Its guest NUMA node (the ACPI proximity domain).
    pub node: u32,
    /// Its virtio-mem device's figures.
    pub device: MemStatus,
    /// Host bytes backing its memfd.
    pub resident: u64,
    /// Guest accesses to its unplugged memory.
    pub violations: u64,
    /// The zoned partition it backs, if any.
    pub partition: Option<String>,
}

impl ZoneFigures {
    /// The figures as the API shows them.
    pub fn to_json(&self) -> serde_json::Value {
        let s = &self.device;
        serde_json::json!({
            "name": self.name, "node": self.node, "base": s.addr, "size": s.region_size,
            "block_size": s.block_size, "requested": s.requested_size,
            "plugged": s.plugged_size, "resident": self.resident,
            "requests": s.requests, "errors": s.errors, "refused": s.refused,
            "violations": self.violations, "partition": self.partition,
        })
    }
}

/// A handle on a VM that may be used while it runs: grants, revokes, metrics.
#[derive(Clone)]
pub struct VmHandle {
    shared: Arc<Shared>,
}

impl Vm {
    /// Creates the VM: KVM, memory classes, the kernel and boot structures, vCPUs.
    pub fn new(config: VmConfig) -> Result<Vm, VmError> {
        let backend = Backend::detect();

        let kvm_error = |source| VmError::Kvm {
            path: config.kvm_device.display().to_string(),
            source,
        };
        let device = std::ffi::CString::new(config.kvm_device.as_os_str().as_encoded_bytes())
            .map_err(|_| kvm_error(kvm_ioctls::Error::new(libc::EINVAL)))?;
        let kvm = Kvm::new_with_path(&device).map_err(kvm_error)?;
        // Any file opens; only the KVM device answers its version query.
        if kvm.get_api_version() != 12 {
            return Err(kvm_error(kvm_ioctls::Error::new(libc::ENOTTY)));
        }
        let max_slots = u32::try_from(kvm.get_nr_memslots()).unwrap_or(u32::MAX);
        let topology = match &config.topology {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| VmError::TopologyRead {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                let topology = Topology::parse(&text).map_err(|e| VmError::Topology {
                    path: path.display().to_string(),
                    errors: vec![e.to_string()],
                })?;
                Some((path, topology))
            }
            None => None,
        };
        let mut zone_specs = config.zones.clone();
        if let Some((_, topology)) = &topology {
            zone_specs.extend(zones::for_topology(topology, &config.zones)?);
        }
        let zone_slots = ZONE_SLOTS.saturating_mul(zone_specs.len() as u32);
        let specs = class_specs(&config, max_slots.saturating_sub(zone_slots))?;
        let engine_zones = zones::engine_specs(&zone_specs);
        let engine =
            match &topology {
                Some((path, topology)) => topology
                    .build_with_zones(&specs, &engine_zones)
                    .map_err(|errs| VmError::Topology {
                        path: path.display().to_string(),
                        errors: errs.iter().map(ToString::to_string).collect(),
                    })?,
                None => {
                    let mut engine = Engine::new(&specs).map_err(VmError::Classes)?;
                    for zone in &engine_zones {
                        engine.add_zone(*zone).map_err(VmError::Classes)?;
                    }
                    engine
                }
            };
        let engine = Arc::new(Mutex::new(engine));
        let max = u32::try_from(kvm.get_max_vcpus()).unwrap_or(u32::MAX);
        if config.cpus == 0 || config.cpus > max {
            return Err(VmError::Cpus {
                given: config.cpus,
                max,
            });
        }
        let ioctl = |what| move |source| VmError::Ioctl { what, source };
        let vm = Arc::new(kvm.create_vm().map_err(ioctl("creating the VM"))?);
        startup::mark("VM created");

        let mut classes = config.classes.iter();
        let sysram_backing = classes
            .next()
            .filter(|c| c.name == mempart::SYSRAM)
            .ok_or_else(|| VmError::NoClass(mempart::SYSRAM.to_string()))?;
        let sysram = Sysram::new(sysram_backing)?;
        let next_slot = sysram.register(&vm)?;
        let others: Vec<_> = classes.collect();
        let sysram_end = sysram.ranges.last().map_or(0, |(b, l)| b + l);
        let bases = class_bases(
            sysram_end,
            &others.iter().map(|c| c.size).collect::<Vec<_>>(),
        );
        let regions = others
            .iter()
            .zip(bases)
            .map(|(c, base)| ClassRegion::new(c, base))
            .collect::<Result<Vec<_>, _>>()?;
        let slots = Arc::new(Mutex::new(SlotPool::new(next_slot, max_slots)));
        let zones_start = regions
            .iter()
            .map(|r| r.base + r.size)
            .chain(std::iter::once(sysram_end))
            .max()
            .unwrap_or(0)
            .max(memory::HIGH_RAM_START)
            .next_multiple_of(CLASS_ALIGN);
        let (zones, zone_devices, zones_end) = zones::build(&zone_specs, zones_start, &vm, &slots)?;
        startup::mark("memory registered");
        // After the memory: with an in-kernel irqchip, the first memory-slot change waited
        // out a KVM grace period (about a host timer tick on kvm_pvm, measured with the
        // full irqchip); this order keeps any such wait off the start path.
        vm.set_tss_address(TSS_ADDRESS)
            .map_err(ioctl("the TSS address"))?;
        let split_irqchip = kvm_enable_cap {
            cap: KVM_CAP_SPLIT_IRQCHIP,
            args: [IOAPIC_PINS as u64, 0, 0, 0],
            ..Default::default()
        };
        vm.enable_cap(&split_irqchip)
            .map_err(ioctl("the split irqchip (local APICs in the kernel)"))?;
        startup::mark("split irqchip enabled");

        let kernel = boot::load_kernel(&sysram.memory, &config.kernel)?;
        startup::mark("kernel loaded");
        let initrd = match &config.initrd {
            Some(path) => {
                let low_end = sysram.ranges.first().map_or(0, |(b, l)| b + l);
                let initrd = boot::load_initrd(&sysram.memory, path, low_end, kernel.end)?;
                startup::mark("initramfs loaded");
                Some(initrd)
            }
            None => None,
        };
        let mut cmdline = config.cmdline.clone();
        let eventfd = || EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd);
        let (balloon, balloon_handle) = Balloon::new(eventfd()?);
        let (console, agent) = Console::new(eventfd()?);
        let mut devices = Vec::new();
        let mut notifiers = Vec::new();
        let mut boxed: Vec<Box<dyn VirtioDevice>> = vec![Box::new(balloon), Box::new(console)];
        boxed.extend(
            zone_devices
                .into_iter()
                .map(|d| Box::new(d) as Box<dyn VirtioDevice>),
        );
        // Disks come last, in the order given: the guest's first virtio-blk device is the
        // first --disk.
        let mut disks = Vec::with_capacity(config.disks.len());
        for spec in &config.disks {
            let disk = Disk::open(&spec.path, spec.read_only, &spec.id)?;
            let (block, info) = Block::new(disk);
            boxed.push(Box::new(block));
            disks.push(info);
        }
        let mut nets = Vec::with_capacity(config.nets.len());
        for spec in &config.nets {
            let tap = Tap::open(&spec.tap)?;
            let (net, info) = Net::new(Box::new(tap), spec.mac, &spec.tap);
            boxed.push(Box::new(net));
            nets.push(info);
        }
        startup::mark("device back-ends opened");
        let mut announced = Vec::new();
        for (i, device) in boxed.into_iter().enumerate() {
            let base = VIRTIO_MMIO_BASE + i as u64 * MMIO_WINDOW;
            let irq_line = FIRST_DEVICE_IRQ + i as u32;
            let (device, notifier) = attach(&vm, device, &sysram, base, irq_line)?;
            announced.push(acpi::MmioDevice {
                base,
                len: MMIO_WINDOW,
                irq: irq_line,
            });
            devices.push(device);
            notifiers.push(notifier);
        }
        if kernel.linux {
            // No PCI bus: the kernel is told so instead of probing for one. Virtio devices
            // here reach all guest memory, so no bounce buffer either (the kernel sets
            // 64 MiB aside for one when memory can be plugged above 4 GiB).
            cmdline.push_str(" pci=off swiotlb=noforce");
        }
        if backend == Backend::KvmPvm && kernel.linux {
            eprintln!(
                "mempart-vmm: kvm_pvm host: adding kernel arguments \"{EMULATED_KERNEL_ARGS}\" \
                 for CPU features KVM's emulator cannot run and CPUID cannot hide"
            );
            cmdline = format!("{cmdline} {EMULATED_KERNEL_ARGS}")
                .trim()
                .to_string();
        }
        let class_ranges: Vec<(u64, u64)> = regions.iter().map(|r| (r.base, r.size)).collect();
        let e820 = boot::e820_map(&sysram.ranges, &class_ranges);
        let rsdp = if kernel.linux {
            let nodes: Vec<acpi::Node> = zones
                .iter()
                .map(|z| {
                    let status = z.status();
                    acpi::Node {
                        proximity: z.proximity,
                        base: status.addr,
                        size: status.region_size,
                    }
                })
                .collect();
            let machine = acpi::Machine {
                sysram: &sysram.ranges,
                zones: &nodes,
                serial: acpi::SerialPort {
                    port: COM1,
                    irq: COM1_IRQ,
                },
                devices: &announced,
            };
            let tables = acpi::build(config.cpus, &machine)?;
            acpi::write(&sysram.memory, &tables)?;
            Some(acpi::RSDP_ADDR)
        } else {
            None
        };
        boot::write_boot_params(&sysram.memory, &kernel, &cmdline, initrd, &e820, rsdp)?;
        let top = class_ranges
            .iter()
            .chain(&sysram.ranges)
            .map(|(base, len)| base + len)
            .max()
            .unwrap_or(0)
            .max(crate::vm::memory::HIGH_RAM_START)
            .max(zones_end);
        boot::write_page_tables_and_gdt(&sysram.memory, top)?;
        startup::mark("devices attached, boot structures written");

        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        vm.register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(ioctl("the serial interrupt"))?;
        let out: Box<dyn Write + Send> = match config.serial {
            SerialOut::Stdio => Box::new(std::io::stdout()),
            SerialOut::None => Box::new(std::io::sink()),
            SerialOut::Writer(w) => w,
            SerialOut::File(path) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|source| VmError::Serial {
                        path: path.display().to_string(),
                        source,
                    })?,
            ),
        };

        let mut cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("the supported CPUID"))?;
        let mut vcpus = Vec::new();
        for index in 0..config.cpus {
            let vcpu = vm
                .create_vcpu(u64::from(index))
                .map_err(ioctl("creating a vCPU"))?;
            boot::adapt_cpuid(&mut cpuid, index, config.cpus, backend == Backend::KvmPvm);
            vcpu.set_cpuid2(&cpuid).map_err(ioctl("the vCPU's CPUID"))?;
            if index == 0 || !kernel.linux {
                boot::setup_vcpu(&vcpu, kernel.entry, u64::from(index))?;
            }
            if index > 0 && !kernel.linux {
                // A bare guest's application processors start at the entry too, instead of
                // waiting for INIT/SIPI as a Linux kernel's do.
                let runnable = kvm_mp_state {
                    mp_state: KVM_MP_STATE_RUNNABLE,
                };
                vcpu.set_mp_state(runnable)
                    .map_err(ioctl("an application processor's state"))?;
            }
            vcpus.push(vcpu);
        }
        startup::mark("vCPUs created");
        let exit_event = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        let service = PartitionService::new(Arc::clone(&engine));
        let reclaimer =
            Reclaimer::new(Arc::clone(&engine), service.clone(), balloon_handle.clone());
        let vm = Vm {
            agent_end: config.agent_end,
            notifiers,
            shared: Arc::new(Shared {
                vm,
                serial: Mutex::new(Serial::new(IrqTrigger(serial_irq), out)),
                ioapic: Mutex::default(),
                classes: Mutex::new(regions),
                service,
                engine,
                violations: Mutex::new(ViolationLog::default()),
                free_slots: slots,
                max_slots,
                zones,
                zone_follower: Mutex::default(),
                disks,
                nets,
                stop: AtomicBool::new(false),
                sysram,
                post_seen: AtomicBool::new(false),
                exits: Mutex::default(),
                devices,
                balloon: balloon_handle,
                reclaimer,
                agent,
                exit: Mutex::new(None),
                exit_event,
            }),
            vcpus,
            backend,
        };
        let typed = TypedClasses(Arc::downgrade(&vm.shared));
        vm.shared.service.set_typed_memory(Arc::new(typed));
        vm.shared
            .service
            .set_zone_meter(Arc::new(ZoneMeters(Arc::downgrade(&vm.shared))));
        zones_follow_partitions(&vm.shared);
        if !vm.shared.zones.is_empty() {
            let weak = Arc::downgrade(&vm.shared);
            let service = vm.shared.service.clone();
            std::thread::Builder::new()
                .name("zones".into())
                .spawn(move || follow_zones(&weak, &service))
                .map_err(VmError::Thread)?;
        }
        let weak = Arc::downgrade(&vm.shared);
        vm.shared
            .balloon
            .observe(Arc::new(move |status: &BalloonStatus| {
                if let Some(shared) = weak.upgrade() {
                    sysram_follows_balloon(&shared, status);
                }
            }));
        Ok(vm)
    }

    /// A handle that stays usable while [`Vm::run`] runs.
    pub fn handle(&self) -> VmHandle {
        VmHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Runs every vCPU on its own thread and the device event loop on this one, until the
    /// guest resets, shuts down or crashes; then stops the vCPUs and returns why.
    pub fn run(self) -> Result<VmExit, VmError> {
        // A no-op handler: the signal only kicks a vCPU thread out of KVM_RUN.
        extern "C" fn kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
        register_signal_handler(SIGRTMIN(), kick)
            .map_err(|e| VmError::EventLoop(format!("the vCPU kick signal: {e}")))?;
        let loop_error = |e: event_manager::Error| VmError::EventLoop(e.to_string());
        let mut events: EventManager<Box<dyn MutEventSubscriber + Send>> =
            EventManager::new().map_err(loop_error)?;
        let exited = Arc::new(AtomicBool::new(false));
        let watcher = ExitWatcher {
            event: self
                .shared
                .exit_event
                .try_clone()
                .map_err(VmError::EventFd)?,
            exited: Arc::clone(&exited),
        };
        events.add_subscriber(Box::new(watcher));
        for notifier in self.notifiers {
            events.add_subscriber(Box::new(notifier));
        }
        let (done, done_rx) = channel();
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        for (index, vcpu) in self.vcpus.into_iter().enumerate() {
            let shared = Arc::clone(&self.shared);
            let done = done.clone();
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    if index == 0 {
                        startup::mark("vCPU 0 thread running");
                    }
                    let mut counts = ExitCounts::default();
                    if let Some(exit) = run_vcpu(vcpu, &shared, &mut counts) {
                        lock(&shared.exit).get_or_insert(exit);
                        let _ = shared.exit_event.write(1);
                    }
                    lock(&shared.exits).add(&counts);
                    let _ = done.send(index);
                })
                .map_err(VmError::Thread)?;
            threads.push(thread);
        }
        drop(done);
        let agent_service = match self.agent_end {
            AgentEnd::Raw => None,
            AgentEnd::Service => {
                let service = self.shared.service.clone();
                let agent = self.shared.agent.clone();
                let thread = std::thread::Builder::new()
                    .name("agent-service".into())
                    .spawn(move || serve_agent(&service, &agent))
                    .map_err(VmError::Thread)?;
                Some(thread)
            }
        };
        while !exited.load(Ordering::SeqCst) {
            events.run().map_err(loop_error)?;
        }
        startup::mark("guest exit seen by the event loop");
        let exit = lock(&self.shared.exit)
            .take()
            .unwrap_or_else(|| VmExit::Crash("no vCPU reported an exit".into()));
        self.shared.stop.store(true, Ordering::SeqCst);
        let mut running = threads.len();
        while running > 0 {
            for t in &threads {
                if !t.is_finished() {
                    let _ = t.kill(SIGRTMIN());
                }
            }
            match done_rx.recv_timeout(Duration::from_millis(5)) {
                Ok(_) => running -= 1,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        for t in threads {
            let _ = t.join();
        }
        self.shared.agent.close();
        if let Some(thread) = agent_service {
            let _ = thread.join();
        }
        startup::mark("threads joined");
        if startup::enabled() {
            startup::mark(&format!("vCPU exits: {}", lock(&self.shared.exits)));
        }
        Ok(exit)
    }
}

/// Keeps the sysram class's size at the guest's RAM less what the balloon holds, and
/// tells the service's followers. A size the engine refuses (reservations would no
/// longer fit) is left as it was until the next balloon change.
fn sysram_follows_balloon(shared: &Shared, status: &BalloonStatus) {
    let held = status
        .inflated_pages
        .saturating_mul(devices::virtio::balloon::BALLOON_PAGE);
    let size = shared.sysram.size.saturating_sub(held);
    {
        let mut engine = lock(&shared.engine);
        if let Some(sysram) = engine.class_id(mempart::SYSRAM) {
            let _ = engine.set_class_size(sysram, size);
        }
    }
    shared.service.changed();
}

/// Brings every zone in line with the zoned partition it backs (see [`ZoneFollower`]).
fn zones_follow_partitions(shared: &Shared) {
    // The follower's lock first: two followers must not apply bindings out of order.
    let mut follower = lock(&shared.zone_follower);
    let bindings = lock(&shared.engine).zone_bindings();
    for problem in follower.follow(&bindings, &shared.zones) {
        eprintln!("mempart-vmm: {problem}");
    }
}

/// Follows the engine's changes for as long as the VM lives, keeping its zones in line.
fn follow_zones(shared: &std::sync::Weak<Shared>, service: &PartitionService) {
    /// How long a wait lasts before the VM's end is noticed.
    const LOOK: Duration = Duration::from_millis(500);
    let mut seen = service.generation();
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        if strong.stop.load(Ordering::Acquire) {
            return;
        }
        zones_follow_partitions(&strong);
        drop(strong);
        seen = service.wait_change(seen, LOOK);
    }
}

/// Measures zones for the service and the reclaimer.
struct ZoneMeters(std::sync::Weak<Shared>);

impl ZoneMeter for ZoneMeters {
    fn measure(&self, node: u32) -> Option<ZoneMeasure> {
        let shared = self.0.upgrade()?;
        let zone = shared.zones.iter().find(|z| z.proximity == node)?;
        Some(ZoneMeasure {
            plugged: zone.status().plugged_size,
            host_resident: zone.resident(),
        })
    }
}

/// The engine's classes for `config`: each typed class's allocation unit is at least the
/// one that fits it in its share of KVM's `slots` memory slots (see
/// [`crate::vm::memory::slot_units`]), so every allocation the engine admits has a slot.
fn class_specs(config: &VmConfig, slots: u32) -> Result<Vec<ClassSpec>, VmError> {
    let typed: Vec<u64> = config
        .classes
        .iter()
        .filter(|c| c.name != mempart::SYSRAM)
        .map(|c| c.size)
        .collect();
    let mut units = crate::vm::memory::slot_units(&typed, slots).into_iter();
    let mut specs = Vec::with_capacity(config.classes.len());
    for c in &config.classes {
        let mut spec = ClassSpec::new(c.name.clone(), c.size);
        if c.name != mempart::SYSRAM {
            spec.unit = spec.unit.max(units.next().unwrap_or(spec.unit));
            if c.size % spec.unit != 0 {
                return Err(VmError::ClassUnit {
                    class: c.name.clone(),
                    size: c.size,
                    unit: spec.unit,
                    slots,
                });
            }
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// Typed memory for the service: extents of the VM's classes (held weakly: the service
/// lives inside the VM).
struct TypedClasses(std::sync::Weak<Shared>);

impl crate::service::TypedMemory for TypedClasses {
    fn grant(&self, class: &str, bytes: u64) -> Result<u64, String> {
        let shared = self.0.upgrade().ok_or("the VM is gone")?;
        VmHandle { shared }
            .grant_any(class, bytes)
            .map_err(|e| e.to_string())
    }

    fn revoke(&self, class: &str, gpa: u64) -> Result<(), String> {
        let shared = self.0.upgrade().ok_or("the VM is gone")?;
        let handle = VmHandle { shared };
        let base = handle.class_base(class).ok_or("no such class")?;
        let offset = gpa
            .checked_sub(base)
            .ok_or_else(|| format!("0x{gpa:x} is below the class's base 0x{base:x}"))?;
        handle.revoke(class, offset).map_err(|e| e.to_string())
    }
}

/// Serves the partition protocol on the agent channel, one session after another (an
/// agent that restarts says hello again), until the channel closes.
fn serve_agent(service: &PartitionService, agent: &AgentChannel) {
    loop {
        let (reader, writer) = agent.stream();
        match service.serve(reader, writer, Authority::Guest) {
            protocol::ProtocolError::Closed => return,
            protocol::ProtocolError::Io(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return,
            end => eprintln!("mempart-vmm: agent session ended: {end}"),
        }
    }
}

/// Puts a device behind a virtio-mmio window at `base`: its interrupt becomes an irqfd on
/// `irq_line`, and each queue's notify register an ioeventfd served by the event loop.
fn attach(
    vm: &VmFd,
    device: Box<dyn VirtioDevice>,
    sysram: &Sysram,
    base: u64,
    irq_line: u32,
) -> Result<(MmioDevice, QueueNotifier), VmError> {
    let eventfd = || EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd);
    let irq = eventfd()?;
    vm.register_irqfd(&irq, irq_line)
        .map_err(|source| VmError::Ioctl {
            what: "a device interrupt",
            source,
        })?;
    let transport = MmioTransport::new(device, sysram.memory.clone(), Interrupt::new(irq));
    let mut fds = Vec::new();
    let mut pending = Vec::new();
    for _ in 0..transport.queue_count() {
        let fd = eventfd()?;
        pending.push(fd.try_clone().map_err(VmError::EventFd)?);
        fds.push(fd);
    }
    let backend = transport
        .backend_event()
        .transpose()
        .map_err(VmError::EventFd)?;
    let backend_fd = transport.backend_fd();
    let transport = Arc::new(Mutex::new(transport));
    let notifier = QueueNotifier {
        transport: Arc::clone(&transport),
        fds,
        backend,
        backend_fd,
    };
    let device = MmioDevice {
        base,
        transport,
        notifications: Mutex::new(Notifications {
            fds: pending,
            registered: false,
        }),
    };
    Ok((device, notifier))
}

/// A virtio device on the MMIO bus, as the vCPUs reach it.
struct MmioDevice {
    base: u64,
    transport: Arc<Mutex<MmioTransport>>,
    notifications: Mutex<Notifications>,
}

/// A device's queue-notification eventfds (the event loop watches the same files). They
/// are registered with KVM as ioeventfds at the guest's first notification, which reaches
/// the VMM as an MMIO exit: KVM frees its I/O bus a grace period after each registration
/// and destroying the VM waits for that, about 12 ms on kvm_pvm, so a device the guest
/// never drives costs nothing at exit.
struct Notifications {
    fds: Vec<EventFd>,
    registered: bool,
}

impl MmioDevice {
    /// Hands a notification that exited to the VMM to the event loop, registering the
    /// device's ioeventfds the first time; false when `data` names no queue.
    fn notify_by_exit(&self, vm: &VmFd, data: &[u8]) -> bool {
        lock(&self.notifications).notify(vm, self.base + REG_QUEUE_NOTIFY, data)
    }
}

impl Notifications {
    /// Signals the queue `data` names and, the first time, registers every queue's
    /// eventfd at `address`; false when `data` names no queue.
    fn notify(&mut self, vm: &VmFd, address: u64, data: &[u8]) -> bool {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return false;
        };
        let queue = u32::from_le_bytes(bytes);
        let Some(fd) = self.fds.get(queue as usize) else {
            return false;
        };
        if let Err(e) = fd.write(1) {
            eprintln!("mempart-vmm: queue {queue} at 0x{address:x}: notification lost ({e})");
        }
        if !self.registered {
            self.registered = true;
            let at = IoEventAddress::Mmio(address);
            for (index, fd) in (0u32..).zip(&self.fds) {
                // A queue left unregistered keeps working through this exit.
                if let Err(e) = vm.register_ioevent(fd, &at, index) {
                    eprintln!(
                        "mempart-vmm: queue {index} notified at 0x{address:x}: no ioeventfd \
                         ({e}); its notifications exit to the VMM"
                    );
                }
            }
        }
        true
    }
}

/// Ends the event loop when a vCPU reports why the VM stopped.
struct ExitWatcher {
    event: EventFd,
    exited: Arc<AtomicBool>,
}

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.event, EventSet::IN));
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.event.read();
        self.exited.store(true, Ordering::SeqCst);
    }
}

/// Hands queue notifications (ioeventfds) and backend wake-ups to a device's transport,
/// on the event loop.
struct QueueNotifier {
    transport: Arc<Mutex<MmioTransport>>,
    fds: Vec<EventFd>,
    backend: Option<EventFd>,
    backend_fd: Option<std::os::fd::RawFd>,
}

/// The event data that marks the backend's eventfd (queue indexes are small).
const BACKEND_EVENT: u32 = u32::MAX;
/// The event data that marks the backend's descriptor (a tap).
const BACKEND_FD: u32 = u32::MAX - 1;

impl MutEventSubscriber for QueueNotifier {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, fd) in self.fds.iter().enumerate() {
            let _ = ops.add(Events::with_data(fd, index as u32, EventSet::IN));
        }
        if let Some(fd) = &self.backend {
            let _ = ops.add(Events::with_data(fd, BACKEND_EVENT, EventSet::IN));
        }
        // Edge-triggered: the device reads until it would block, or until the guest has
        // no buffers left (it reads again when the guest adds some).
        if let Some(fd) = self.backend_fd {
            let _ = ops.add(Events::with_data_raw(
                fd,
                BACKEND_FD,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
            ));
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() == BACKEND_FD {
            lock(&self.transport).backend_ready();
            return;
        }
        if events.data() == BACKEND_EVENT {
            if let Some(fd) = &self.backend {
                let _ = fd.read();
            }
            lock(&self.transport).backend_ready();
            return;
        }
        let index = events.data() as usize;
        if let Some(fd) = self.fds.get(index) {
            let _ = fd.read();
        }
        lock(&self.transport).notify(index);
    }
}

/// How often a vCPU left the guest, by reason: what running the guest cost the VMM.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExitCounts {
    /// Port writes.
    pub port_writes: u64,
    /// Port reads.
    pub port_reads: u64,
    /// MMIO reads.
    pub mmio_reads: u64,
    /// MMIO writes.
    pub mmio_writes: u64,
    /// Of the MMIO writes, queue notifications: a device's first, before its ioeventfds
    /// are registered (more only if a registration failed).
    pub notify_exits: u64,
    /// Halts.
    pub halts: u64,
}

impl ExitCounts {
    fn add(&mut self, other: &ExitCounts) {
        self.port_writes += other.port_writes;
        self.port_reads += other.port_reads;
        self.mmio_reads += other.mmio_reads;
        self.mmio_writes += other.mmio_writes;
        self.notify_exits += other.notify_exits;
        self.halts += other.halts;
    }
}

impl std::fmt::Display for ExitCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} port writes, {} port reads, {} MMIO reads, {} MMIO writes ({} queue \
             notifications), {} halts",
            self.port_writes,
            self.port_reads,
            self.mmio_reads,
            self.mmio_writes,
            self.notify_exits,
            self.halts
        )
    }
}

/// Runs one vCPU until it reports a VM exit or the VM stops.
fn run_vcpu(mut vcpu: VcpuFd, shared: &Shared, counts: &mut ExitCounts) -> Option<VmExit> {
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return None;
        }
        let exit = match vcpu.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => return Some(VmExit::Crash(format!("KVM_RUN: {e}"))),
        };
        match exit {
            VcpuExit::IoOut(port, data) => {
                counts.port_writes += 1;
                if let Some(exit) = io_out(shared, port, data) {
                    return Some(exit);
                }
            }
            VcpuExit::IoIn(port, data) => {
                counts.port_reads += 1;
                io_in(shared, port, data);
            }
            VcpuExit::MmioRead(gpa, data) => {
                counts.mmio_reads += 1;
                if let Some(offset) = ioapic_offset(gpa) {
                    lock(&shared.ioapic).read(offset, data);
                } else if let Some(device) = device_at(shared, gpa) {
                    lock(&device.transport).read(gpa - device.base, data);
                } else {
                    data.fill(0xff);
                    mmio(shared, gpa, false);
                }
            }
            VcpuExit::MmioWrite(gpa, data) => {
                counts.mmio_writes += 1;
                if let Some(offset) = ioapic_offset(gpa) {
                    ioapic_write(shared, offset, data);
                } else if let Some(device) = device_at(shared, gpa) {
                    let offset = gpa - device.base;
                    if offset == REG_QUEUE_NOTIFY && device.notify_by_exit(&shared.vm, data) {
                        counts.notify_exits += 1;
                    } else {
                        lock(&device.transport).write(offset, data);
                    }
                } else {
                    mmio(shared, gpa, true);
                }
            }
            VcpuExit::Hlt => counts.halts += 1,
            // Routes are edge-triggered, so KVM asks for no EOI; one would need no action.
            VcpuExit::IoapicEoi(_) => {}
            VcpuExit::Shutdown => return Some(VmExit::TripleFault),
            VcpuExit::SystemEvent(kind, _) => return Some(VmExit::SystemEvent(kind)),
            VcpuExit::InternalError => {
                return Some(VmExit::Crash(
                    "KVM internal error (emulation failure)".into(),
                ))
            }
            VcpuExit::FailEntry(reason, cpu) => {
                return Some(VmExit::Crash(format!(
                    "KVM could not enter the guest (reason 0x{reason:x}, cpu {cpu})"
                )))
            }
            other => return Some(VmExit::Crash(format!("unexpected exit {other:?}"))),
        }
    }
}

/// The offset of `gpa` in the I/O APIC's register window.
fn ioapic_offset(gpa: u64) -> Option<u64> {
    gpa.checked_sub(IOAPIC_BASE)
        .filter(|offset| *offset < IOAPIC_WINDOW)
}

/// A guest write to the I/O APIC; a changed redirection entry replaces KVM's routes while
/// the lock is held, so two vCPUs' changes reach KVM in the order they were made.
fn ioapic_write(shared: &Shared, offset: u64, data: &[u8]) {
    let mut ioapic = lock(&shared.ioapic);
    if !ioapic.write(offset, data) {
        return;
    }
    let routes: Vec<_> = ioapic.routes().into_iter().map(|r| r.to_kvm()).collect();
    let applied = KvmIrqRouting::from_entries(&routes)
        .map_err(|e| format!("{e:?}"))
        .and_then(|table| shared.vm.set_gsi_routing(&table).map_err(|e| e.to_string()));
    if let Err(e) = applied {
        eprintln!("mempart-vmm: the guest's interrupt routes could not be set: {e}");
    }
}

/// The virtio device whose register window holds `gpa`.
fn device_at(shared: &Shared, gpa: u64) -> Option<&MmioDevice> {
    shared
        .devices
        .iter()
        .find(|d| gpa >= d.base && gpa - d.base < MMIO_WINDOW)
}

fn io_out(shared: &Shared, port: u16, data: &[u8]) -> Option<VmExit> {
    let value = data.first().copied().unwrap_or(0);
    match port {
        COM1..=0x3ff => {
            let _ = lock(&shared.serial).write((port - COM1) as u8, value);
        }
        I8042_COMMAND if value == 0xfe => return Some(VmExit::Reset),
        acpi::SLEEP_CONTROL_PORT if acpi::is_power_off(value) => return Some(VmExit::PowerOff),
        POST_PORT if startup::enabled() && !shared.post_seen.swap(true, Ordering::SeqCst) => {
            startup::mark("first guest exit (POST port)");
        }
        _ => {}
    }
    None
}

fn io_in(shared: &Shared, port: u16, data: &mut [u8]) {
    let value = match port {
        COM1..=0x3ff => lock(&shared.serial).read((port - COM1) as u8),
        I8042_COMMAND | I8042_DATA => 0,
        _ => 0xff,
    };
    data.fill(value);
}

/// An access to an address with no memory slot: class memory not granted and zone memory
/// not plugged are violations; anything else (no device there) reads as all ones and ignores writes.
fn mmio(shared: &Shared, gpa: u64, write: bool) {
    if let Some(index) = shared.zones.iter().position(|z| z.contains(gpa)) {
        let line = lock(&shared.violations).record_zone(index, Instant::now());
        if let (LogLine::Log { unlogged_before }, Some(zone)) = (line, shared.zones.get(index)) {
            eprintln!(
                "mempart-vmm: violation: guest {} zone {:?} memory at 0x{gpa:x}, which is not \
                 plugged{}",
                if write { "wrote" } else { "read" },
                zone.name,
                unlogged_note(unlogged_before)
            );
        }
        return;
    }
    let class = {
        let classes = lock(&shared.classes);
        classes.iter().position(|c| c.contains(gpa)).map(|i| {
            let name = classes.get(i).map(|c| c.name.clone()).unwrap_or_default();
            (i, name)
        })
    };
    let Some((_, name)) = class else { return };
    let engine_class = lock(&shared.engine).class_id(&name);
    let Some(class) = engine_class else { return };
    let violation = Violation { class, gpa, write };
    let line = lock(&shared.violations).record(violation, Instant::now());
    if let LogLine::Log { unlogged_before } = line {
        eprintln!(
            "mempart-vmm: violation: guest {} class {name:?} memory at 0x{gpa:x}, which is not granted{}",
            if write { "wrote" } else { "read" },
            unlogged_note(unlogged_before)
        );
    }
    let _ = lock(&shared.engine).report_violation(class, gpa);
    shared.service.changed();
}

/// What a violation's log line says of those not logged before it.
fn unlogged_note(unlogged_before: u64) -> String {
    if unlogged_before > 0 {
        format!(" ({unlogged_before} more since the last line, not logged)")
    } else {
        String::new()
    }
}

impl VmHandle {
    fn take_slot(&self) -> Result<u32, VmError> {
        Ok(lock(&self.shared.free_slots).take()?)
    }

    /// Every disk: its image, whether it is read-only, and its request counters.
    pub fn disks(&self) -> Vec<DiskInfo> {
        self.shared.disks.clone()
    }

    /// Every network device: its tap, MAC address and frame counters.
    pub fn nets(&self) -> Vec<NetInfo> {
        self.shared.nets.clone()
    }

    /// Every zone's name, device figures, host-resident bytes and accesses to its
    /// unplugged memory.
    pub fn zones(&self) -> Vec<ZoneFigures> {
        let partitions = self.zone_partitions();
        let log = lock(&self.shared.violations);
        self.shared
            .zones
            .iter()
            .enumerate()
            .map(|(index, z)| ZoneFigures {
                name: z.name.clone(),
                node: z.proximity,
                device: z.status(),
                resident: z.resident(),
                violations: log.of_zone(index),
                partition: partitions.get(&z.proximity).cloned(),
            })
            .collect()
    }

    /// The path of the partition each bound zone backs, by node.
    fn zone_partitions(&self) -> std::collections::BTreeMap<u32, String> {
        let engine = lock(&self.shared.engine);
        engine
            .zone_bindings()
            .into_iter()
            .filter_map(|b| Some((b.spec.node, engine.path_of(b.partition?).ok()?)))
            .collect()
    }

    /// Brings every zone in line with the zoned partition it backs now, rather than when
    /// the VMM's zone thread gets to it (the API does, so its answers show the effect).
    pub fn follow_zones(&self) {
        zones_follow_partitions(&self.shared);
    }

    /// Asks the guest to have `bytes` of zone `name` plugged.
    pub fn set_zone_requested(&self, name: &str, bytes: u64) -> Result<(), VmError> {
        let zone = self
            .shared
            .zones
            .iter()
            .find(|z| z.name == name)
            .ok_or_else(|| VmError::NoZone(name.to_string()))?;
        if let Some(partition) = self.zone_partitions().remove(&zone.proximity) {
            return Err(VmError::ZoneBound {
                zone: name.to_string(),
                partition,
            });
        }
        zone.device
            .set_requested(bytes)
            .map_err(|source| VmError::ZoneSize {
                zone: name.to_string(),
                source,
            })
    }

    /// The partition service that answers on the agent channel (and can be served on
    /// other streams too).
    pub fn service(&self) -> PartitionService {
        self.shared.service.clone()
    }

    /// Grants the first free extent of `len` bytes of `class`; returns its guest-physical base.
    pub fn grant_any(&self, class: &str, len: u64) -> Result<u64, VmError> {
        let offset = lock(&self.shared.classes)
            .iter()
            .find(|c| c.name == class)
            .ok_or_else(|| VmError::NoClass(class.to_string()))?
            .find_free(len)
            .ok_or_else(|| {
                VmError::Memory(MemoryError::Full {
                    class: class.to_string(),
                    len,
                })
            })?;
        self.grant(class, offset, len)
    }

    /// Makes `[offset, offset+len)` of class `class` accessible to the guest.
    pub fn grant(&self, class: &str, offset: u64, len: u64) -> Result<u64, VmError> {
        let slot = self.take_slot()?;
        let mut classes = lock(&self.shared.classes);
        let region = classes
            .iter_mut()
            .find(|c| c.name == class)
            .ok_or_else(|| VmError::NoClass(class.to_string()))?;
        match region.grant(&self.shared.vm, slot, offset, len) {
            Ok(()) => Ok(region.base + offset),
            Err(e) => {
                lock(&self.shared.free_slots).give(slot);
                Err(e.into())
            }
        }
    }

    /// Makes the extent granted at `offset` inaccessible and returns its pages to the host.
    pub fn revoke(&self, class: &str, offset: u64) -> Result<(), VmError> {
        let mut classes = lock(&self.shared.classes);
        let region = classes
            .iter_mut()
            .find(|c| c.name == class)
            .ok_or_else(|| VmError::NoClass(class.to_string()))?;
        let slot = region.revoke(&self.shared.vm, offset)?;
        lock(&self.shared.free_slots).give(slot);
        Ok(())
    }

    /// Guest-physical base of a class.
    pub fn class_base(&self, class: &str) -> Option<u64> {
        lock(&self.shared.classes)
            .iter()
            .find(|c| c.name == class)
            .map(|c| c.base)
    }

    /// Host bytes of a class actually backed (`sysram` included).
    pub fn resident(&self, class: &str) -> Option<u64> {
        if class == mempart::SYSRAM {
            return Some(self.shared.sysram.resident());
        }
        lock(&self.shared.classes)
            .iter()
            .find(|c| c.name == class)
            .map(ClassRegion::resident)
    }

    /// Host bytes backing sysram's `[gpa, gpa+len)`.
    pub fn sysram_resident(&self, gpa: u64, len: u64) -> u64 {
        self.shared.sysram.resident_range(gpa, len)
    }

    /// Reads class bytes through the host's own mapping.
    pub fn read_class(&self, class: &str, offset: u64, buf: &mut [u8]) -> Result<(), VmError> {
        lock(&self.shared.classes)
            .iter()
            .find(|c| c.name == class)
            .ok_or_else(|| VmError::NoClass(class.to_string()))?
            .read(offset, buf)
            .map_err(Into::into)
    }

    /// Writes bytes into sysram at guest-physical `gpa`.
    pub fn write_sysram(&self, gpa: u64, data: &[u8]) -> Result<(), VmError> {
        self.shared
            .sysram
            .memory
            .write_slice(data, GuestAddress(gpa))
            .map_err(|e| {
                VmError::Boot(BootError::Memory {
                    what: "sysram",
                    reason: e.to_string(),
                })
            })
    }

    /// The balloon: set its target, read what the guest did.
    pub fn balloon(&self) -> &BalloonHandle {
        &self.shared.balloon
    }

    /// Balloon-style reconfiguration: reclaims and limit changes that move the balloon.
    pub fn reclaimer(&self) -> &Reclaimer {
        &self.shared.reclaimer
    }

    /// The VMM's end of the agent channel (the console's `org.mempart.agent.0` port).
    pub fn agent(&self) -> &AgentChannel {
        &self.shared.agent
    }

    /// The vCPUs' exits by reason, counted once each vCPU thread has ended.
    pub fn exit_counts(&self) -> ExitCounts {
        *lock(&self.shared.exits)
    }

    /// The latest violations, oldest first (at most [`RECENT_VIOLATIONS`]).
    ///
    /// [`RECENT_VIOLATIONS`]: crate::vm::violations::RECENT_VIOLATIONS
    pub fn violations(&self) -> Vec<Violation> {
        lock(&self.shared.violations).recent()
    }

    /// Violations since the VM started: in all and per class name.
    pub fn violation_counts(&self) -> (u64, Vec<(String, u64)>) {
        let log = lock(&self.shared.violations);
        let engine = lock(&self.shared.engine);
        let by_class = engine
            .class_names()
            .into_iter()
            .filter_map(|name| {
                let count = log.of_class(engine.class_id(&name)?);
                Some((name, count))
            })
            .collect();
        (log.total(), by_class)
    }

    /// Backend, classes and where they sit, as JSON.
    pub fn info(&self) -> serde_json::Value {
        let classes: Vec<serde_json::Value> = lock(&self.shared.classes)
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name, "base": c.base, "size": c.size, "granted": c.grants(),
                    "resident": c.resident(),
                })
            })
            .collect();
        let (violations, _) = self.violation_counts();
        let slots = {
            let used = lock(&self.shared.free_slots).used();
            serde_json::json!({ "max": self.shared.max_slots, "used": used })
        };
        let zones: Vec<serde_json::Value> = self.zones().into_iter().map(|z| z.to_json()).collect();
        let disks: Vec<serde_json::Value> = self
            .shared
            .disks
            .iter()
            .map(|d| {
                let c = d.counters();
                serde_json::json!({
                    "id": d.id, "path": d.path, "read_only": d.read_only, "bytes": d.bytes,
                    "discard": d.discard, "reads": c.reads, "read_bytes": c.read_bytes,
                    "writes": c.writes, "write_bytes": c.write_bytes, "flushes": c.flushes,
                    "zeroings": c.zeroings, "errors": c.errors,
                })
            })
            .collect();
        let nets: Vec<serde_json::Value> = self
            .shared
            .nets
            .iter()
            .map(|n| {
                let c = n.counters();
                serde_json::json!({
                    "tap": n.id, "mac": n.mac_text(), "rx_frames": c.rx_frames,
                    "rx_bytes": c.rx_bytes, "rx_dropped": c.rx_dropped,
                    "tx_frames": c.tx_frames, "tx_bytes": c.tx_bytes, "tx_dropped": c.tx_dropped,
                })
            })
            .collect();
        serde_json::json!({
            "memory_slots": slots,
            "backend": Backend::detect().name(),
            "sysram": self.shared.sysram.size,
            "sysram_resident": self.shared.sysram.resident(),
            "classes": classes,
            "zones": zones,
            "disks": disks,
            "nets": nets,
            "violations": violations,
        })
    }

    /// Runs `f` on the partition engine.
    pub fn with_engine<T>(&self, f: impl FnOnce(&mut Engine) -> T) -> T {
        f(&mut lock(&self.shared.engine))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOTIFY_AT: u64 = 0xd000_0050;

    /// A VM with nothing in it, or `None` (and why) without /dev/kvm.
    fn bare_vm() -> Option<VmFd> {
        let Ok(kvm) = Kvm::new() else {
            eprintln!("skipped: /dev/kvm is not available");
            return None;
        };
        Some(kvm.create_vm().unwrap())
    }

    fn queues(count: usize) -> Notifications {
        let fds = (0..count)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        Notifications {
            fds,
            registered: false,
        }
    }

    #[test]
    fn a_queue_whose_ioeventfd_cannot_be_registered_is_still_notified_through_exits() {
        let Some(vm) = bare_vm() else {
            return;
        };
        let at = IoEventAddress::Mmio(NOTIFY_AT);
        // Another eventfd already holds queue 0's match, so its registration fails.
        let squatter = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        vm.register_ioevent(&squatter, &at, 0u32).unwrap();
        let mut notifications = queues(2);

        assert!(notifications.notify(&vm, NOTIFY_AT, &0u32.to_le_bytes()));
        assert!(notifications.notify(&vm, NOTIFY_AT, &0u32.to_le_bytes()));
        assert_eq!(notifications.fds[0].read().unwrap(), 2);
        assert!(notifications.registered);
        assert!(
            vm.unregister_ioevent(&notifications.fds[0], &at, 0u32)
                .is_err(),
            "queue 0 was registered over another eventfd"
        );
        vm.unregister_ioevent(&notifications.fds[1], &at, 1u32)
            .expect("queue 1 registered although queue 0 failed");
    }

    #[test]
    fn a_notification_naming_no_queue_signals_nothing_and_registers_nothing() {
        let Some(vm) = bare_vm() else {
            return;
        };
        let mut notifications = queues(2);
        assert!(!notifications.notify(&vm, NOTIFY_AT, &2u32.to_le_bytes()));
        assert!(!notifications.notify(&vm, NOTIFY_AT, &[0, 0]));
        assert!(!notifications.registered);
        assert!(
            notifications.fds[0].read().is_err(),
            "queue 0 was signalled"
        );
    }
}
