//! `mempart-vmm run`: the options from the command line and `--config`, the VM built from
//! them, and the partition table printed at the end (and by `check`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use mempart::{Credential, Engine};
use protocol::cli::human;
use vmm::config::{
    parse_class, parse_disk, parse_net, parse_serial, parse_zone, with_sysram, ClassBacking,
    ConfigError, DiskSpec, NetSpec, ZoneSpec,
};
use vmm::{Vm, VmConfig};

/// What `run` takes, from the command line; each also has a key in `--config`.
#[derive(clap::Args, Default)]
pub struct RunArgs {
    /// A TOML file with any of the options below (as `kernel = "..."`, `cpus = 2`,
    /// `classes = ["fast=256M"]`, …); options given on the command line win.
    #[arg(long)]
    config: Option<PathBuf>,
    /// ELF vmlinux, bare 64-bit ELF guest, or bzImage.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initial ramdisk (uncompressed is fastest on kvm_pvm hosts).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line [default: console=ttyS0 reboot=k panic=-1].
    #[arg(long)]
    cmdline: Option<String>,
    /// Number of vCPUs [default: 1].
    #[arg(long)]
    cpus: Option<u32>,
    /// A memory class: NAME=SIZE[,hugepages][,file=PATH][,prefault]. `sysram` is the
    /// guest's RAM (256M when not given); every other class is typed memory placed
    /// above 4 GiB, reserved in the e820 map and visible only where granted.
    #[arg(long = "class", value_name = "SPEC")]
    classes: Vec<String>,
    /// A zone: NAME=SIZE[,plugged=SIZE][,hugepages]. A guest NUMA node (node 1, 2, … in
    /// order) of SIZE bytes (a multiple of 128 MiB) that a virtio-mem device plugs as the
    /// host asks: `plugged` at boot (default 0), then `ctl zone NAME SIZE`. Linux guests.
    #[arg(long = "zone", value_name = "SPEC")]
    zones: Vec<String>,
    /// A disk: PATH[,ro][,id=NAME]. A raw image file behind a virtio-blk device; the
    /// first is the guest's /dev/vda (boot from it with `root=/dev/vda` in --cmdline).
    /// `ro` refuses the guest's writes; `id` names it (at most 20 bytes; default diskN).
    #[arg(long = "disk", value_name = "SPEC")]
    disks: Vec<String>,
    /// A network device: tap=NAME[,mac=MAC]. virtio-net on an existing tap (the VMM does
    /// not create one: `ip tuntap add NAME mode tap user $USER` and `ip link set NAME up`,
    /// as root, do); the first is the guest's eth0. MAC default 06:00:00:00:00:0N.
    #[arg(long = "net", value_name = "SPEC")]
    nets: Vec<String>,
    /// Start-up partition topology (TOML).
    #[arg(long)]
    topology: Option<PathBuf>,
    /// Serial console: stdio, none or file:PATH [default: stdio].
    #[arg(long)]
    serial: Option<String>,
    /// The KVM device [default: /dev/kvm].
    #[arg(long)]
    kvm: Option<PathBuf>,
    /// When the guest stops, print the partition table as the VMM holds it.
    #[arg(long)]
    report: bool,
    /// Serve the host API (HTTP/1.1, JSON) on this unix socket.
    #[arg(long)]
    api_sock: Option<PathBuf>,
}

/// The `--config` file: the same options as the command line.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RunFile {
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    cmdline: Option<String>,
    cpus: Option<u32>,
    #[serde(default)]
    classes: Vec<String>,
    #[serde(default)]
    zones: Vec<String>,
    #[serde(default)]
    disks: Vec<String>,
    #[serde(default)]
    nets: Vec<String>,
    topology: Option<PathBuf>,
    serial: Option<String>,
    kvm: Option<PathBuf>,
    #[serde(default)]
    report: bool,
    api_sock: Option<PathBuf>,
}

/// The configuration in force: the command line over the file over the defaults.
#[derive(serde::Serialize)]
struct Effective {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    cmdline: String,
    cpus: u32,
    classes: Vec<String>,
    zones: Vec<String>,
    disks: Vec<String>,
    nets: Vec<String>,
    topology: Option<PathBuf>,
    serial: String,
    kvm: PathBuf,
    report: bool,
    api_sock: Option<PathBuf>,
}

impl RunArgs {
    fn effective(self) -> anyhow::Result<Effective> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("--config {}", path.display()))?;
                toml::from_str::<RunFile>(&text).map_err(|e| {
                    let line = e.span().map_or(0, |s| {
                        text.get(..s.start)
                            .map_or(0, |t| t.matches('\n').count() + 1)
                    });
                    anyhow::anyhow!("--config {} line {line}: {}", path.display(), e.message())
                })?
            }
            None => RunFile::default(),
        };
        let kernel = self
            .kernel
            .or(file.kernel)
            .ok_or_else(|| anyhow::anyhow!("no kernel: give --kernel or `kernel` in --config"))?;
        Ok(Effective {
            kernel,
            initrd: self.initrd.or(file.initrd),
            cmdline: self
                .cmdline
                .or(file.cmdline)
                .unwrap_or_else(|| "console=ttyS0 reboot=k panic=-1".into()),
            cpus: self.cpus.or(file.cpus).unwrap_or(1),
            classes: if self.classes.is_empty() {
                file.classes
            } else {
                self.classes
            },
            zones: if self.zones.is_empty() {
                file.zones
            } else {
                self.zones
            },
            disks: if self.disks.is_empty() {
                file.disks
            } else {
                self.disks
            },
            nets: if self.nets.is_empty() {
                file.nets
            } else {
                self.nets
            },
            topology: self.topology.or(file.topology),
            serial: self
                .serial
                .or(file.serial)
                .unwrap_or_else(|| "stdio".into()),
            kvm: self
                .kvm
                .or(file.kvm)
                .unwrap_or_else(|| PathBuf::from("/dev/kvm")),
            report: self.report || file.report,
            api_sock: self.api_sock.or(file.api_sock),
        })
    }
}

/// Boots the guest `args` describe, serves the API if asked, and prints the partition
/// table at the end if asked; the exit code follows the guest's.
pub fn boot(args: RunArgs) -> anyhow::Result<ExitCode> {
    let run = args.effective()?;
    let config = VmConfig {
        kernel: run.kernel.clone(),
        initrd: run.initrd.clone(),
        cmdline: run.cmdline.clone(),
        cpus: run.cpus,
        classes: classes(&run.classes)?,
        zones: zones(&run.zones)?,
        disks: disks(&run.disks)?,
        nets: nets(&run.nets)?,
        topology: run.topology.clone(),
        serial: parse_serial(&run.serial)?,
        kvm_device: run.kvm.clone(),
        agent_end: vmm::config::AgentEnd::Service,
    };
    let (report, api_sock) = (run.report, run.api_sock.clone());
    let effective = serde_json::to_value(&run)?;
    let started = std::time::Instant::now();
    vmm::startup::mark("arguments parsed");
    let vm = Vm::new(config)?;
    let handle = vm.handle();
    let api = match &api_sock {
        Some(path) => Some(
            vmm::api::serve(path, handle.clone(), effective)
                .with_context(|| format!("--api-sock {}", path.display()))?,
        ),
        None => None,
    };
    let exit = vm.run()?;
    if let Some(api) = api {
        api.stop();
    }
    if exit.code() != 0 {
        eprintln!("mempart-vmm: guest stopped: {exit:?}");
    }
    if report {
        println!(
            "\nmempart-vmm: the guest ran {:.1} s; partitions as the VMM holds them:\n",
            started.elapsed().as_secs_f64()
        );
        let resident = handle
            .with_engine(|engine| engine.class_names())
            .into_iter()
            .filter_map(|name| handle.resident(&name).map(|bytes| (name, bytes)))
            .collect();
        handle.with_engine(|engine| print_table(engine, &resident))?;
    }
    Ok(ExitCode::from(u8::try_from(exit.code()).unwrap_or(1)))
}

/// The classes of `--class` arguments, sysram among them.
pub fn classes(args: &[String]) -> anyhow::Result<Vec<ClassBacking>> {
    let parsed = args
        .iter()
        .map(|a| parse_class(a))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(with_sysram(parsed)?)
}

/// The zones of `--zone` arguments; names are unique.
pub fn zones(args: &[String]) -> anyhow::Result<Vec<ZoneSpec>> {
    let mut zones: Vec<ZoneSpec> = Vec::with_capacity(args.len());
    for arg in args {
        let zone = parse_zone(arg)?;
        if zones.iter().any(|z| z.name == zone.name) {
            return Err(ConfigError::DuplicateZone(zone.name).into());
        }
        zones.push(zone);
    }
    Ok(zones)
}

/// The disks of `--disk` arguments, in order; ids are unique.
pub fn disks(args: &[String]) -> anyhow::Result<Vec<DiskSpec>> {
    let mut disks: Vec<DiskSpec> = Vec::with_capacity(args.len());
    for (index, arg) in args.iter().enumerate() {
        let disk = parse_disk(arg, index)?;
        if disks.iter().any(|d| d.id == disk.id) {
            return Err(ConfigError::DuplicateDisk(disk.id).into());
        }
        disks.push(disk);
    }
    Ok(disks)
}

/// The network devices of `--net` arguments, in order; taps are unique.
pub fn nets(args: &[String]) -> anyhow::Result<Vec<NetSpec>> {
    let mut nets: Vec<NetSpec> = Vec::with_capacity(args.len());
    for (index, arg) in args.iter().enumerate() {
        let net = parse_net(arg, index)?;
        if nets.iter().any(|n| n.tap == net.tap) {
            return Err(ConfigError::DuplicateTap(net.tap).into());
        }
        nets.push(net);
    }
    Ok(nets)
}

/// Prints every class (with the host bytes backing it, where `resident` knows them) and
/// then every partition, depth-first.
pub fn print_table(
    engine: &Engine,
    resident: &std::collections::HashMap<String, u64>,
) -> anyhow::Result<()> {
    let host = Credential::Host;
    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "CLASS", "SIZE", "ALLOCATED", "RESERVED", "FREE", "RESIDENT"
    );
    for name in engine.class_names() {
        let c = engine.class_metrics(&host, &format!("/partition/mem/{name}"))?;
        let backed = resident
            .get(&name)
            .map_or("-".to_string(), |&bytes| format!("{}K", bytes >> 10));
        println!(
            "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10}",
            name,
            human(c.size),
            human(c.allocated),
            human(c.reserved_unused),
            human(c.free),
            backed
        );
    }
    println!();
    println!(
        "{:<40} {:<22} {:>10} {:>10} {:>10} {:>10} {:>6}",
        "PARTITION", "TYPE", "MIN", "MAX", "USED", "CHARGE", "MODE"
    );
    let mut stack: Vec<String> = engine
        .class_names()
        .iter()
        .rev()
        .map(|c| format!("/partition/mem/{c}"))
        .collect();
    while let Some(path) = stack.pop() {
        if let Ok(m) = engine.metrics(&host, &path) {
            println!(
                "{:<40} {:<22} {:>10} {:>10} {:>10} {:>10} {:>6o}",
                path,
                format!("{:?}", m.kind),
                human(m.current.limits.min),
                human(m.current.limits.max),
                human(m.used),
                human(m.charge),
                m.current.perm.mode
            );
        }
        let mut children: Vec<String> = engine
            .list(&host, &path)?
            .into_iter()
            .filter(|d| d.kind == mempart::EntryKind::Partition)
            .map(|d| format!("{path}/{}", d.name))
            .collect();
        children.reverse();
        stack.extend(children);
    }
    Ok(())
}
