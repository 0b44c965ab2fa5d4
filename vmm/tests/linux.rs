//! Real Linux guests, when a kernel is given in MEMPART_TEST_KERNEL (a vmlinux or bzImage
//! from `images/build-kernel`, the pvm variant on kvm_pvm hosts) and, for the tests that
//! boot one, an initramfs in MEMPART_TEST_INITRAMFS (from `images/build-initramfs`) or a
//! root file system image in MEMPART_TEST_ROOTFS (from `images/build-rootfs`). Each test
//! skips with a one-line reason when what it needs is missing.

// Test helpers fail the test loudly with the reason.
#![allow(clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use common::{kvm_available, line_starting, Lines, GUARD};
use vmm::config::{parse_class, parse_zone, with_sysram, AgentEnd};
use vmm::{Backend, SerialOut, Vm, VmConfig, VmExit};

fn env_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os(name).map(PathBuf::from);
    if path.is_none() {
        eprintln!("skipped: set {name} to run this test");
    }
    path
}

/// Without an initramfs the kernel runs its whole boot, fails to find a root file
/// system, panics and, with `panic=-1 reboot=k`, resets through the i8042: exit 0.
#[test]
fn linux_boots_to_its_console_and_resets_cleanly() {
    let Some(kernel) = env_path("MEMPART_TEST_KERNEL") else {
        return;
    };
    if !kvm_available() {
        return;
    }
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_mempart-vmm"))
        .args([
            "run",
            "--class",
            "sysram=128M",
            "--cmdline",
            "console=ttyS0 reboot=k panic=-1",
            "--kernel",
        ])
        .arg(&kernel)
        .output()
        .expect("mempart-vmm runs");
    let console = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "backend {}: Linux ran {:.1} s and exited with {:?}",
        Backend::detect().name(),
        started.elapsed().as_secs_f64(),
        out.status.code()
    );
    assert!(
        console.contains("Linux version"),
        "no kernel banner:\n{console}"
    );
    assert!(
        console.contains("Kernel panic"),
        "the kernel did not finish booting:\n{console}"
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test kernel and initramfs, when both are given and KVM is there; each test
/// that boots the initramfs skips (saying why) otherwise.
fn kernel_and_initramfs() -> Option<(PathBuf, PathBuf)> {
    let kernel = env_path("MEMPART_TEST_KERNEL")?;
    let initrd = env_path("MEMPART_TEST_INITRAMFS")?;
    kvm_available().then_some((kernel, initrd))
}

/// A Linux guest with the test initramfs: `init` mode, classes, topology, agent end.
fn linux_config(
    kernel: PathBuf,
    initrd: PathBuf,
    init: &str,
    classes: &[&str],
    topology: Option<PathBuf>,
    agent_end: AgentEnd,
) -> (VmConfig, std::sync::mpsc::Receiver<String>) {
    let (tx, rx) = channel();
    let classes = classes
        .iter()
        .map(|c| parse_class(c).expect("class"))
        .collect();
    let config = VmConfig {
        zones: Vec::new(),
        disks: Vec::new(),
        nets: Vec::new(),
        kernel,
        initrd: Some(initrd),
        cmdline: format!("console=ttyS0 reboot=k panic=-1 mempart.init={init}"),
        cpus: 1,
        classes: with_sysram(classes).expect("classes"),
        topology,
        serial: SerialOut::Writer(Box::new(Lines::new(tx))),
        kvm_device: PathBuf::from("/dev/kvm"),
        agent_end,
    };
    (config, rx)
}

/// Linux binds every virtio driver: its init finds the agent port by the name read from
/// /sys/class/virtio-ports/*/name and greets the host over it; the balloon driver
/// inflates to the host's target and reports it as `actual`. The zone is node 1 (from the
/// SRAT): its virtio-mem driver plugs the 64 MiB asked at boot, a process bound to node 1 touches 48 MiB and the zone's memfd
/// grows by that while sysram's does not; after it exits the host asks for 16 MiB, the
/// driver unplugs and the memfd shrinks to at most that. The guest then powers off
/// through ACPI.
#[test]
fn linux_binds_the_agent_port_and_the_balloon() {
    let Some((kernel, initrd)) = kernel_and_initramfs() else {
        return;
    };
    const TARGET: u32 = 2048;
    let (mut config, rx) = linux_config(
        kernel,
        initrd,
        "greet",
        &["sysram=128M"],
        None,
        AgentEnd::Raw,
    );
    config.zones = vec![parse_zone("db=128M,plugged=64M").expect("zone")];
    let started = Instant::now();
    let vm = Vm::new(config).expect("vm");
    let handle = vm.handle();
    handle.balloon().set_target(TARGET).expect("target");
    let running = std::thread::spawn(move || vm.run());

    let port = line_starting(&rx, "init: ");
    assert!(port.starts_with("init: up"), "{port}");
    let port = line_starting(&rx, "init: ");
    assert!(port.starts_with("init: agent port /dev/vport"), "{port}");
    eprintln!("init ran after {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(line_starting(&rx, "init: "), "init: greeted the host");

    let mut greeting = Vec::new();
    let deadline = Instant::now() + GUARD;
    while !greeting.ends_with(b"\n") {
        assert!(Instant::now() < deadline, "no greeting over the agent port");
        let mut buf = [0u8; 128];
        let n = handle.agent().read(&mut buf);
        greeting.extend_from_slice(&buf[..n]);
        std::thread::yield_now();
    }
    assert_eq!(
        String::from_utf8_lossy(&greeting),
        "hello from linux: org.mempart.agent.0\n"
    );

    let deadline = Instant::now() + GUARD;
    while handle.balloon().status().actual_pages != TARGET {
        assert!(
            Instant::now() < deadline,
            "balloon at {:?}",
            handle.balloon().status()
        );
        std::thread::yield_now();
    }
    let status = handle.balloon().status();
    assert!(status.inflated_pages >= u64::from(TARGET), "{status:?}");

    const MIB: u64 = 1 << 20;
    let zone = || handle.zones().into_iter().next().expect("the zone");
    assert_eq!(handle.agent().write(b"zone\n"), 5);
    // The SRAT gives vCPUs no node: Linux puts them on node 0, where boot memory is.
    assert_eq!(line_starting(&rx, "init: "), "init: cpu0 on node 0");
    let memtotal = line_starting(&rx, "init: ");
    let (node, kb): (u32, u64) = memtotal
        .strip_prefix("init: node")
        .and_then(|rest| rest.strip_suffix(" kB"))
        .and_then(|rest| rest.split_once(" MemTotal "))
        .and_then(|(node, kb)| Some((node.parse().ok()?, kb.parse().ok()?)))
        .unwrap_or_else(|| panic!("{memtotal}"));
    // The zone is node 1 and holds the 64 MiB plugged, less its page structures.
    assert_eq!(node, 1, "{memtotal}");
    assert!(kb * 1024 <= 64 * MIB && kb * 1024 > 56 * MIB, "{memtotal}");
    assert_eq!(zone().device.plugged_size, 64 * MIB);
    let sysram_before = handle.resident("sysram").expect("sysram");
    let zone_before = zone().resident;
    assert_eq!(
        line_starting(&rx, "init: "),
        format!("init: touched 48 MiB on node {node}")
    );
    let touched = zone().resident - zone_before;
    let sysram_rise = handle
        .resident("sysram")
        .expect("sysram")
        .saturating_sub(sysram_before);
    eprintln!(
        "node {node} touch: zone resident +{} KiB, sysram resident +{} KiB",
        touched / 1024,
        sysram_rise / 1024
    );
    assert!(touched >= 48 * MIB, "zone resident rose by {touched}");
    assert!(
        sysram_rise < 8 * MIB,
        "sysram resident rose by {sysram_rise}"
    );
    assert_eq!(handle.agent().write(b"free\n"), 5);
    assert_eq!(
        line_starting(&rx, "init: "),
        format!("init: freed node {node}")
    );
    handle
        .set_zone_requested("db", 16 * MIB)
        .expect("requested size");
    let deadline = Instant::now() + GUARD;
    while zone().device.plugged_size > 16 * MIB {
        assert!(Instant::now() < deadline, "zone at {:?}", zone());
        std::thread::yield_now();
    }
    let unplugged = zone();
    assert!(unplugged.resident <= 16 * MIB, "{unplugged:?}");
    assert_eq!((unplugged.violations, unplugged.device.errors), (0, 0));

    assert_eq!(handle.agent().write(b"done\n"), 5);
    assert_eq!(line_starting(&rx, "init: "), "init: host said done");
    assert_eq!(
        running.join().expect("vm thread").expect("vm ran"),
        VmExit::PowerOff
    );
    eprintln!(
        "backend {}: boot to power-off {:.1} s",
        Backend::detect().name(),
        started.elapsed().as_secs_f64()
    );
}

/// The agent inside Linux: its init starts `mempart-agent` on the agent port and runs
/// `mpctl` commands (images/init/mpctl-script); the VMM's partition service answers, and
/// what the guest did is in the VMM's engine.
#[test]
fn mpctl_in_linux_reaches_the_vmm_through_the_agent() {
    let Some((kernel, initrd)) = kernel_and_initramfs() else {
        return;
    };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let topology = dir.join(format!("e2e-{}.toml", std::process::id()));
    std::fs::write(
        &topology,
        "[[partition]]\npath = \"/partition/mem/sysram/guaranteed\"\nmin = \"32M\"\nmode = 0o777\n\
         [[partition]]\npath = \"/partition/mem/fast/sandbox\"\nmin = \"16M\"\nmax = \"16M\"\n\
         [[partition]]\npath = \"/partition/mem/sysram/session\"\n",
    )
    .expect("topology");
    let (config, rx) = linux_config(
        kernel,
        initrd,
        "agent",
        &["sysram=128M", "fast=64M"],
        Some(topology),
        AgentEnd::Service,
    );
    let started = Instant::now();
    let vm = Vm::new(config).expect("vm");
    let handle = vm.handle();
    let running = std::thread::spawn(move || vm.run());
    let mut console = Vec::new();
    loop {
        let line = common::next_line(&rx);
        let done = line == "init: done";
        if line.starts_with("subscribed") {
            // The script's last command waits for the session's end, as the demo's does.
            handle.with_engine(|e| {
                e.destroy(&mempart::Credential::Host, "/partition/mem/sysram/session")
                    .expect("destroy the session")
            });
            handle.service().changed();
        }
        console.push(line);
        if done {
            break;
        }
    }
    assert_eq!(
        running.join().expect("vm thread").expect("vm ran"),
        VmExit::Reset
    );
    let text = console.join("\n");
    eprintln!(
        "backend {}: boot, agent and script in {:.1} s",
        Backend::detect().name(),
        started.elapsed().as_secs_f64()
    );
    assert!(text.contains("init: mempart-agent: ready"), "{text}");
    assert!(!text.contains(" exited with "), "a command failed:\n{text}");
    // What a script line printed (`guest$ LINE` up to the next script line).
    let output = |line: &str| {
        let at = console
            .iter()
            .position(|l| l == &format!("guest$ {line}"))
            .unwrap_or_else(|| panic!("{line} did not run:\n{text}"));
        console[at + 1..]
            .iter()
            .take_while(|l| !l.starts_with("guest$") && !l.starts_with("init:"))
            .cloned()
            .collect::<Vec<_>>()
    };
    let after = |cmd: &str| output(&format!("mpctl {cmd}"));
    assert_eq!(after("ls /partition/mem"), vec!["sysram/", "fast/"]);
    assert_eq!(
        after("ls /partition/mem/sysram"),
        vec!["guaranteed/", "session/", "sys/"]
    );
    assert!(after("stat /partition/mem/sysram/guaranteed")
        .contains(&"type         Guarantee".to_string()));
    let job = after("run --part /partition/mem/sysram/guaranteed/job -- /bin/mpctl stat /partition/mem/sysram/guaranteed/job");
    assert!(job.contains(&"processes    1".to_string()), "{job:?}");
    assert_eq!(
        after("run --part /partition/mem/fast/sandbox -- /bin/mpctl alloc fast 8M"),
        vec!["granted 8M at guest-physical 0x100000000"],
        "a typed allocation is backed by an extent at the start of the class"
    );
    assert!(after("stat /partition/mem/fast/sandbox").contains(&"type         Sandbox".to_string()));
    assert_eq!(
        after("ls /partition/mem/team"),
        vec!["ram -> /partition/mem/sysram/guaranteed"]
    );
    // The agent's FUSE view, read with ordinary file calls.
    let view = output("/bin/show /partition/mem/sysram /partition/mem/fast/sandbox/metrics");
    assert_eq!(
        view.get(..4),
        Some(&["guaranteed/", "metrics", "session/", "sys/"].map(String::from)[..]),
        "{view:?}"
    );
    assert!(view.contains(&"type Sandbox".to_string()), "{view:?}");
    assert!(view.contains(&format!("max {}", 16 << 20)), "{view:?}");
    assert_eq!(
        output("/bin/show /partition/mem/team"),
        vec!["ram -> ../sysram/guaranteed"]
    );
    // assoc, flags, disassoc and ps act on mpctl's parent: here `steps`, which `mpctl
    // run` associated with the guaranteed partition.
    let steps = after(
        "run --part /partition/mem/sysram/guaranteed -- /bin/steps assoc /partition/mem/fast/sandbox , \
         /bin/show /partition/mem/fast/sandbox , flags /partition/mem/fast/sandbox --no-inherit on , ps , \
         disassoc /partition/mem/fast/sandbox , ps",
    );
    let listed = |l: &String| {
        l.split_once(" -> /proc/")
            .is_some_and(|(pid, target)| pid == target && pid.parse::<u32>().is_ok())
    };
    assert!(
        steps.iter().any(listed),
        "steps is listed in the sandbox: {steps:?}"
    );
    let ps: Vec<&String> = steps
        .iter()
        .filter(|l| l.starts_with("/partition/"))
        .collect();
    assert_eq!(
        ps,
        vec![
            "/partition/mem/sysram/guaranteed  inherit  0",
            "/partition/mem/fast/sandbox  no-inherit  0",
            "/partition/mem/sysram/guaranteed  inherit  0",
        ],
        "{steps:?}"
    );
    let via_group = after(
        "run --part /partition/mem/team -- /bin/mpctl metrics /partition/mem/sysram/guaranteed",
    );
    assert!(
        via_group.contains(&"processes    1".to_string()),
        "associating with the group associated with its member: {via_group:?}"
    );
    let job = handle.with_engine(|e| {
        e.metrics(
            &mempart::Credential::Host,
            "/partition/mem/sysram/guaranteed/job",
        )
    });
    let job = job.expect("the guest created the partition in the VMM's engine");
    assert_eq!(job.current.limits.max, 24 << 20, "as set from inside");
    assert_eq!(
        (
            job.current.perm.mode,
            job.current.perm.uid,
            job.current.perm.gid
        ),
        (0o770, 1000, 1000)
    );
    assert!(job.current.policies.config_lock);
    let team = handle.with_engine(|e| e.list(&mempart::Credential::Host, "/partition/mem/team"));
    assert_eq!(
        team.expect("the group").len(),
        0,
        "the pseudo partition was destroyed"
    );
}

/// Typed memory, the guest's enforcement and a host reclaim in real Linux, with the
/// agent's cgroup mirror on (images/init/e2e-script): a process maps its typed-memory
/// grant through /dev/mem, writes and reads back every page, and its read of the page
/// past the grant is refused below the guest (all ones) and reported; a process in a partition whose max is M that
/// tries to use 2M is stopped by the guest kernel while a process in another partition
/// carries on; then, with a process holding memory in that other partition, the host
/// reclaims it: the agent tightens `memory.max`, the guest kills the holder, the use it
/// reports shrinks, the balloon takes what was given back, and the VMM's resident
/// memory falls as the guest reports the freed pages. The guest runs one
/// process at a time besides the agent. M is 64 MiB on hardware KVM and 8 MiB on kvm_pvm, where each page
/// fault is emulated (about 0.6 ms).
#[test]
fn guest_enforcement_and_host_reclaim_in_linux() {
    let Some((kernel, initrd)) = kernel_and_initramfs() else {
        return;
    };
    use mempart::Credential;
    use vmm::reclaim::ReclaimState;
    const MIB: u64 = 1 << 20;
    const OTHER: &str = "/partition/mem/sysram/other";
    const ZONED: &str = "/partition/mem/sysram/zoned";
    let backend = Backend::detect();
    let max_mib = if backend == Backend::KvmPvm { 8 } else { 64 };
    // The zoned partition's max Z: 32 MiB on hardware KVM, 16 MiB on kvm_pvm, where each
    // page fault costs the emulated kernel more (3/4 Z is a size no earlier memhog
    // printed, and Z a whole number of the zone's 2 MiB blocks).
    let zoned_mib: u64 = if backend == Backend::KvmPvm { 16 } else { 32 };
    let topology = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("e2e-reclaim-{}.toml", std::process::id()));
    std::fs::write(
        &topology,
        format!(
            "[[partition]]\npath = \"/partition/mem/sysram/small\"\nmax = \"{max_mib}M\"\n\
             [[partition]]\npath = \"/partition/mem/sysram/small/kid\"\n\
             [[partition]]\npath = \"{OTHER}\"\n\
             [[partition]]\npath = \"/partition/mem/sysram/session\"\n\
             [[partition]]\npath = \"/partition/mem/sysram/open\"\n\
             [[partition]]\npath = \"/partition/mem/sysram/gate\"\n\
             [[partition]]\npath = \"{ZONED}\"\nmin = \"2M\"\nmax = \"{zoned_mib}M\"\nzone = true\n\
             [[partition]]\npath = \"/partition/mem/fast/sandbox\"\nmin = \"4M\"\nmax = \"4M\"\n"
        ),
    )
    .expect("topology");
    let (mut config, rx) = linux_config(
        kernel,
        initrd,
        "agent",
        &["sysram=256M", "fast=16M"],
        Some(topology),
        AgentEnd::Service,
    );
    config
        .cmdline
        .push_str(" mempart.cgroups=on mempart.script=/etc/e2e-script,/etc/zone-script");
    // Free pages of any order are reported to the host (the default is 2 MiB blocks,
    // which a killed process's scattered pages need not form).
    config
        .cmdline
        .push_str(" page_reporting.page_reporting_order=0");
    let started = Instant::now();
    let vm = Vm::new(config).expect("vm");
    let handle = vm.handle();
    let running = std::thread::spawn(move || vm.run());
    let zone = || {
        handle
            .zones()
            .into_iter()
            .find(|z| z.partition.as_deref() == Some(ZONED))
            .expect("the zoned partition's zone")
    };
    let initial = zone();
    assert_eq!(
        (
            initial.node,
            initial.device.requested_size,
            initial.resident
        ),
        (1, zoned_mib * MIB, 2 * MIB),
        "the topology's zoned partition has node 1, asked to its max, its min populated"
    );
    let block = initial.device.block_size;
    // The zone's highest plugged and host-resident bytes, sampled at every console line.
    let zone_peak = std::cell::Cell::new((0u64, 0u64));
    let mut console: Vec<String> = Vec::new();
    // Reads the console until every one of `wanted` (line prefixes) has been seen since
    // the start; returns the console so far.
    let mut until = |wanted: &[&str]| loop {
        if wanted
            .iter()
            .all(|w| console.iter().any(|l| l.starts_with(w)))
        {
            return console.join("\n");
        }
        let line = common::next_line(&rx);
        eprintln!("console: {line}");
        console.push(line);
        let (plugged, resident) = zone_peak.get();
        let now = zone();
        zone_peak.set((
            plugged.max(now.device.plugged_size),
            resident.max(now.resident),
        ));
    };
    let text = until(&["memhog: touched 4 MiB"]);
    let base = handle.class_base("fast").expect("fast");
    // What the script's `mpctl run --part P` printed, up to the next command.
    let run_in = |part: &str| {
        text.split(&format!("guest$ mpctl run --part {part}"))
            .nth(1)
            .and_then(|rest| rest.split("guest$").next())
            .unwrap_or_else(|| panic!("no run in {part}:\n{text}"))
    };
    let typed = run_in("/partition/mem/fast/sandbox");
    assert!(
        typed.contains(&format!("granted 1M at guest-physical 0x{base:x}"))
            && typed.contains("wrote and read back 256 of 256 pages")
            && typed.contains("past the extent: read 0xffffffffffffffff"),
        "a process used its typed memory through /dev/mem, and the page past it was refused:\n{text}"
    );
    assert!(
        handle.violations().iter().any(|v| v.gpa == base + MIB),
        "the VMM reported the access past the extent: {:?}",
        handle.violations()
    );
    // A typed shared object: one process writes its extent, another (in another
    // partition) reads what it wrote; once unlinked and unmapped its extent is the VMM's
    // again (a host grant of that range succeeds).
    let writer = run_in("/partition/mem/fast/sandbox -- /bin/steps");
    let reader = run_in("/partition/mem/sysram/other -- /bin/steps");
    let mapped = format!("mapped ring (1M) at guest-physical 0x{base:x}");
    assert!(
        writer.contains(&mapped) && writer.contains("256 of 256 pages hold the pattern"),
        "the creator mapped and wrote the object:\n{text}"
    );
    assert!(
        reader.contains("/partition/mem/fast/sandbox")
            && reader.contains(&mapped)
            && reader.contains("256 of 256 pages hold the pattern"),
        "another process read what the creator wrote:\n{text}"
    );
    let service = handle.service();
    let mut seen = service.generation();
    let deadline = Instant::now() + GUARD;
    while !handle.with_engine(|e| e.objects().expect("objects").is_empty()) {
        assert!(
            Instant::now() < deadline,
            "the unlinked object was never freed"
        );
        seen = service.wait_change(seen, GUARD);
    }
    handle
        .grant("fast", 0, MIB)
        .expect("the object's extent was taken back from the guest");
    handle.revoke("fast", 0).expect("revoke the host's grant");
    let small = run_in("/partition/mem/sysram/small");
    // `small` has a partition below it: its processes sit in its `.own` group, and the
    // nearest limit above them is small's own.
    assert!(
        small.contains(&format!(
            "memhog: /sys/fs/cgroup/mempart/small/memory.max is {max_mib} MiB; touching {} MiB",
            2 * max_mib
        )),
        "memhog saw small's memory.max of {max_mib} MiB:\n{text}"
    );
    assert!(
        small.contains("init: mpctl exited with 137") && !small.contains("memhog: touched"),
        "the guest kernel stopped the process at the partition's max:\n{text}"
    );
    // A process of `small` that associates with `sys` goes back to the root group, and
    // its child finds no limit above it.
    let moved = run_in("/partition/mem/sysram/small -- /bin/steps");
    assert!(
        moved.contains("steps$ /bin/memhog twice")
            && moved.contains("memhog: no memory.max with a number above /sys/fs/cgroup/"),
        "a process that moved to sys left small's group:\n{text}"
    );
    let highest = handle.with_engine(|e| {
        e.metrics(&Credential::Host, "/partition/mem/sysram/small")
            .expect("small")
            .highest
    });
    eprintln!(
        "backend {}: the small partition's highest reported use {} KiB (max {max_mib} MiB)",
        backend.name(),
        highest >> 10
    );
    until(&["memhog: touched 6 MiB"]);
    // The holder's memory is in the engine once the agent has reported it.
    let used = |h: &vmm::VmHandle| {
        h.with_engine(|e| e.metrics(&Credential::Host, OTHER).expect("other").used)
    };
    let deadline = Instant::now() + GUARD;
    while used(&handle) < 6 * MIB {
        assert!(
            Instant::now() < deadline,
            "use never reported: {}",
            used(&handle)
        );
        seen = service.wait_change(seen, GUARD);
    }
    let resident_before = handle.resident("sysram").expect("sysram");
    // The deadline leaves room for the guest's out-of-memory reports: on kvm_pvm each
    // takes the emulated SMP kernel about 15 s to print.
    let status = handle
        .reclaimer()
        .start(OTHER, MIB, std::time::Duration::from_secs(150))
        .expect("reclaim");
    // The guest kernel kills the holder; then the guest waits for the session's end.
    until(&["subscribed"]);
    let status = handle
        .reclaimer()
        .wait(status.id, GUARD, |s| s.state != ReclaimState::Running)
        .expect("the reclaim");
    eprintln!("reclaim: {status:?}");
    assert_eq!(status.state, ReclaimState::Done, "{status:?}");
    assert!(status.given_back >= 5 * MIB, "{status:?}");
    let held = handle.balloon().status().inflated_pages * 4096;
    assert_eq!(
        held,
        status.balloon_pages * 4096,
        "the balloon holds what was given back"
    );
    // Which free pages the balloon takes is the guest's choice (often ones it never
    // touched, which were not resident to begin with). The pages the killed holder
    // touched come back to the host as the guest reports them free (free page
    // reporting, of every order here, about 2 s after they were freed): the VMM's
    // resident sysram must fall by at least 2 MiB of the 6 MiB the holder had.
    let mut resident_after = handle.resident("sysram").expect("sysram");
    let deadline = Instant::now() + GUARD;
    while resident_after + 2 * MIB > resident_before {
        assert!(
            Instant::now() < deadline,
            "resident sysram went from {resident_before} to {resident_after} (reported free: {} bytes)",
            handle.balloon().status().reported_bytes
        );
        seen = service.wait_change(seen, GUARD);
        resident_after = handle.resident("sysram").expect("sysram");
    }
    handle.with_engine(|e| {
        e.destroy(&Credential::Host, "/partition/mem/sysram/session")
            .expect("destroy session")
    });
    service.changed();

    // The zoned partition. A process in it touching twice its max is stopped while the
    // zone never holds more than the max on the host, and a process in the unzoned,
    // Open `open` carries on.
    let text = until(&["memhog: touched 5 MiB"]);
    let shown = text
        .split("guest$ /bin/show /sys/fs/cgroup/mempart/zoned/cpuset.mems")
        .nth(1)
        .and_then(|rest| rest.split_once('\n'))
        .map(|(_, rest)| rest.split("guest$").next().unwrap_or_default())
        .unwrap_or_else(|| panic!("no show of the cpusets:\n{text}"));
    assert!(
        shown.starts_with("1\n0\n") && shown.contains("zone_node 1\n"),
        "zoned's group is on node 1, other's on node 0, and the view shows the zone:\n{shown}"
    );
    let zoned_run = text
        .split(&format!(
            "guest$ mpctl run --part {ZONED} -- /bin/memhog twice"
        ))
        .nth(1)
        .and_then(|rest| rest.split("guest$").next())
        .unwrap_or_else(|| panic!("no memhog in zoned:\n{text}"));
    assert!(
        zoned_run.contains(&format!(
            "memory.max is {zoned_mib} MiB; touching {} MiB",
            2 * zoned_mib
        )) && zoned_run.contains("init: mpctl exited with 137")
            && !zoned_run.contains("memhog: touched"),
        "the guest kernel stopped the process in zoned:\n{zoned_run}"
    );
    let (peak_plugged, peak_resident) = zone_peak.get();
    eprintln!(
        "zoned: peak plugged {} KiB, peak host-resident {} KiB (block {} KiB)",
        peak_plugged >> 10,
        peak_resident >> 10,
        block >> 10
    );
    assert!(
        peak_plugged <= zoned_mib * MIB && peak_resident <= zoned_mib * MIB + block,
        "the zone held at most the max: plugged {peak_plugged}, resident {peak_resident}"
    );
    // Then a process holding 3/4 Z in it; the host reclaims it to Z/4: the guest kernel
    // kills the holder, the zone unplugs, and the host gets the zone's memory back.
    let (held, lower) = (zoned_mib * 3 / 4, zoned_mib / 4);
    until(&[&format!("memhog: touched {held} MiB")]);
    let used = |h: &vmm::VmHandle| {
        h.with_engine(|e| e.metrics(&Credential::Host, ZONED).expect("zoned").used)
    };
    let deadline = Instant::now() + GUARD;
    while used(&handle) < held * MIB {
        assert!(Instant::now() < deadline, "zoned's use never reported");
        seen = service.wait_change(seen, GUARD);
    }
    let before = zone();
    let status = handle
        .reclaimer()
        .start(ZONED, lower * MIB, std::time::Duration::from_secs(150))
        .expect("reclaim of zoned");
    let status = handle
        .reclaimer()
        .wait(status.id, GUARD, |s| s.state != ReclaimState::Running)
        .expect("the reclaim");
    eprintln!("zoned reclaim: {status:?}");
    assert_eq!(status.state, ReclaimState::Done, "{status:?}");
    assert_eq!(status.balloon_pages, 0, "a zoned reclaim needs no balloon");
    let after = zone();
    assert!(
        after.device.plugged_size <= lower * MIB && after.resident <= lower * MIB + block,
        "the zone gave the host its memory back: {after:?}"
    );
    eprintln!(
        "backend {}: zoned reclaim to {lower} MiB in {} ms: host-resident {} → {} KiB",
        backend.name(),
        status.elapsed_ms,
        before.resident >> 10,
        after.resident >> 10
    );
    // Raising the max again plugs the zone back to it.
    handle
        .reclaimer()
        .set_limits(ZONED, None, Some(zoned_mib * MIB))
        .expect("raise zoned's max");
    service.changed();
    let deadline = Instant::now() + GUARD;
    while zone().device.plugged_size < zoned_mib * MIB {
        assert!(
            Instant::now() < deadline,
            "the zone was not plugged back: {:?}",
            zone()
        );
        seen = service.wait_change(seen, GUARD);
    }
    until(&["subscribed to /partition/mem/sysram/gate"]);
    handle.with_engine(|e| {
        e.destroy(&Credential::Host, "/partition/mem/sysram/gate")
            .expect("destroy gate")
    });
    service.changed();
    // sys holds what the guest uses of node 0, and sysram's figures add up.
    let (sys, class) = handle.with_engine(|e| {
        (
            e.metrics(&Credential::Host, "/partition/mem/sysram/sys")
                .expect("sys")
                .used,
            e.class_metrics(&Credential::Host, "/partition/mem/sysram")
                .expect("sysram"),
        )
    });
    assert!(sys > 0, "sys reports node 0's use");
    assert_eq!(
        class.free + class.allocated + class.reserved_unused,
        class.size,
        "{class:?}"
    );
    eprintln!("sysram: sys uses {} KiB; {class:?}", sys >> 10);
    let text = until(&["init: done"]);
    assert_eq!(
        running.join().expect("vm thread").expect("vm ran"),
        VmExit::Reset
    );
    assert!(text.contains("guest$ mpctl run --part /partition/mem/sysram/other -- /bin/memhog 4\nmemhog: 4 MiB\nmemhog: touched 4 MiB"), "{text}");
    eprintln!(
        "backend {}: boot, enforcement and reclaim in {:.1} s; resident sysram {} → {} KiB",
        backend.name(),
        started.elapsed().as_secs_f64(),
        resident_before >> 10,
        resident_after >> 10
    );
}

/// A network namespace of the test's own with a tap in it at 10.0.2.1/24, deleted (with
/// the tap) when dropped.
struct TestNetwork {
    name: String,
}

impl TestNetwork {
    fn new(tap: &str) -> TestNetwork {
        let name = format!("mempart-test-{}", std::process::id());
        let ip = |args: &[&str]| {
            let status = Command::new("ip").args(args).status().expect("ip runs");
            assert!(status.success(), "ip {}", args.join(" "));
        };
        ip(&["netns", "add", &name]);
        let network = TestNetwork { name };
        for args in [
            vec!["tuntap", "add", tap, "mode", "tap"],
            vec!["addr", "add", "10.0.2.1/24", "dev", tap],
            vec!["link", "set", tap, "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut all = vec!["netns", "exec", &network.name, "ip"];
            all.extend(args);
            ip(&all);
        }
        network
    }

    /// `program args` run inside the namespace.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// `GET path` on the VMM's API socket; the body.
fn api_get(sock: &std::path::Path, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(sock).expect("api socket");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: vmm\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// A guest whose root file system is an ext4 image on /dev/vda (images/build-rootfs,
/// given in MEMPART_TEST_ROOTFS) and whose eth0 is a tap in a network namespace the test
/// makes: the agent starts from the disk; the guest pings the host side and fetches a
/// file from an HTTP server there; the host side pings the guest; `GET /vm` counts the
/// disk's and the NIC's traffic; and the file the guest wrote is in the image after the
/// VMM exits (read with debugfs). Needs root (a network namespace and a tap).
#[test]
fn a_guest_boots_from_its_disk_and_reaches_the_host_over_its_network() {
    let Some(kernel) = env_path("MEMPART_TEST_KERNEL") else {
        return;
    };
    let Some(rootfs) = env_path("MEMPART_TEST_ROOTFS") else {
        return;
    };
    if !kvm_available() {
        return;
    }
    const TAP: &str = "mptap0";
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("disk-net-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("test directory");
    let image = dir.join("rootfs.ext4");
    std::fs::copy(&rootfs, &image).expect("a copy of the root file system");
    let served = dir.join("www");
    std::fs::create_dir_all(&served).expect("www");
    let greeting = format!("hello from the host {}", std::process::id());
    std::fs::write(served.join("hello.txt"), &greeting).expect("hello.txt");
    let topology = dir.join("topology.toml");
    std::fs::write(
        &topology,
        "[[partition]]\npath = \"/partition/mem/sysram/gate\"\n",
    )
    .expect("topology");
    let sock = dir.join("api.sock");
    let network = TestNetwork::new(TAP);
    // The host side's HTTP server; it says when it listens.
    let mut server = common::KillOnDrop(
        network
            .command("python3")
            .args([
                "-c",
                "import functools, http.server, sys\n\
                 handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])\n\
                 server = http.server.HTTPServer(('10.0.2.1', 8000), handler)\n\
                 print('listening', flush=True)\n\
                 server.serve_forever()",
            ])
            .arg(&served)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 http.server"),
    );
    let mut listening = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.0.stdout.take().expect("server stdout")),
        &mut listening,
    )
    .expect("the server's first line");
    assert_eq!(listening.trim(), "listening");
    let started = Instant::now();
    let mut vmm = common::KillOnDrop(
        network
            .command(env!("CARGO_BIN_EXE_mempart-vmm"))
            .args(["run", "--class", "sysram=256M", "--kernel"])
            .arg(&kernel)
            .arg("--disk")
            .arg(format!("{},id=rootdisk", image.display()))
            .args(["--net", &format!("tap={TAP}")])
            .arg("--topology")
            .arg(&topology)
            .arg("--api-sock")
            .arg(&sock)
            .args([
                "--cmdline",
                "console=ttyS0 reboot=k panic=-1 quiet root=/dev/vda rw init=/init \
                 mempart.init=agent mempart.script=/etc/disk-script",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("mempart-vmm runs"),
    );
    let (tx, rx) = channel();
    let stdout = vmm.0.stdout.take().expect("console");
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut console = Vec::new();
    let mut until = |prefix: &str| loop {
        let line = common::next_line(&rx);
        eprintln!("console: {line}");
        let done = line.starts_with(prefix);
        console.push(line);
        if done {
            return console.join("\n");
        }
    };
    let text = until("subscribed to /partition/mem/sysram/gate");
    for expected in [
        "init: mempart-agent: ready",
        "net: eth0 06:00:00:00:00:01",
        "net: the host answered a ping",
        &format!("net: fetched: {greeting}"),
        "net: wrote /written",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(expected)),
            "no {expected:?} on the console:\n{text}"
        );
    }
    let ping = network
        .command("busybox")
        .args(["ping", "-c", "1", "-W", "10", "10.0.2.15"])
        .output()
        .expect("busybox ping");
    assert!(
        ping.status.success(),
        "the guest did not answer the host's ping: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let info: serde_json::Value = serde_json::from_str(&api_get(&sock, "/vm")).expect("GET /vm");
    let (disk, net) = (&info["disks"][0], &info["nets"][0]);
    eprintln!("disk: {disk}\nnet: {net}");
    assert_eq!(disk["id"], "rootdisk");
    assert_eq!(net["tap"], TAP);
    for (figure, what) in [
        (&disk["reads"], "disk reads"),
        (&disk["writes"], "disk writes"),
        (&net["rx_frames"], "frames to the guest"),
        (&net["tx_frames"], "frames from the guest"),
    ] {
        assert!(figure.as_u64().unwrap_or(0) > 0, "no {what}: {info}");
    }
    assert_eq!(disk["errors"], 0, "{disk}");
    let destroyed = Command::new(env!("CARGO_BIN_EXE_mempart-vmm"))
        .args(["ctl", "--api-sock"])
        .arg(&sock)
        .args(["destroy", "/partition/mem/sysram/gate"])
        .status()
        .expect("ctl destroy");
    assert!(destroyed.success());
    until("init: done");
    let status = vmm.wait_at_most(GUARD);
    assert_eq!(status.code(), Some(0), "the VMM's exit");
    eprintln!(
        "backend {}: disk and network guest ran {:.1} s",
        Backend::detect().name(),
        started.elapsed().as_secs_f64()
    );
    let written = Command::new("debugfs")
        .args(["-R", "cat /written"])
        .arg(&image)
        .output()
        .expect("debugfs");
    assert_eq!(
        String::from_utf8_lossy(&written.stdout).trim(),
        "written in the guest on rootdisk",
        "{}",
        String::from_utf8_lossy(&written.stderr)
    );
    drop(network);
    std::fs::remove_dir_all(&dir).expect("remove the test directory");
}

/// Where the guest kernel is emulated each systemd unit costs seconds: the whole test
/// took 10–16 minutes on kvm_pvm.
const DEBIAN_GUARD_EMULATED: Duration = Duration::from_secs(45 * 60);

/// The Debian image (`images/build-rootfs debian`, given in MEMPART_TEST_DEBIAN; built by
/// scripts/test on hardware KVM, and on kvm_pvm, where it takes 10–16 minutes, only
/// with MEMPART_DEBIAN=1): systemd reaches `multi-user.target`, mempart-agent runs as a
/// service, answers `mpctl` and serves the `/partition` view (the image's `mempart-ready`
/// prints the classes through both), no unit fails or times out, and with
/// `mempart.test=poweroff` the guest powers off cleanly.
#[test]
fn a_debian_guest_reaches_multi_user_with_the_agent_running() {
    let Some(kernel) = env_path("MEMPART_TEST_KERNEL") else {
        return;
    };
    let Some(debian) = env_path("MEMPART_TEST_DEBIAN") else {
        return;
    };
    if !kvm_available() {
        return;
    }
    let image = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("debian-{}.ext4", std::process::id()));
    std::fs::copy(&debian, &image).expect("a copy of the Debian image");
    let emulated = Backend::detect() == Backend::KvmPvm;
    let mut cmdline =
        String::from("console=ttyS0 reboot=k panic=-1 root=/dev/vda rw mempart.test=poweroff");
    if emulated {
        // systemd's 90 s defaults are shorter than some units and devices take to come up
        // when the guest kernel is emulated; they would fail for that alone.
        cmdline.push_str(
            " systemd.default_timeout_start_sec=900 systemd.default_device_timeout_sec=900",
        );
    }
    let started = Instant::now();
    let mut vmm = common::KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_mempart-vmm"))
            .args(["run", "--class", "sysram=512M", "--kernel"])
            .arg(&kernel)
            .arg("--disk")
            .arg(&image)
            .args(["--cmdline", &cmdline])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("mempart-vmm runs"),
    );
    let mut stdout = vmm.0.stdout.take().expect("console");
    let reader = std::thread::spawn(move || {
        let mut console = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut console);
        console
    });
    let status = vmm.wait_at_most(if emulated {
        DEBIAN_GUARD_EMULATED
    } else {
        GUARD
    });
    let console = reader.join().expect("console reader");
    eprintln!(
        "backend {}: the Debian guest ran {:.1} s",
        Backend::detect().name(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        console.contains("Reached target") && console.contains("Multi-User System"),
        "systemd did not reach multi-user.target:\n{console}"
    );
    for trouble in ["[FAILED]", "[ TIME ]", "[DEPEND]"] {
        assert!(
            !console.contains(trouble),
            "a unit did not start ({trouble}):\n{console}"
        );
    }
    let ready = console
        .lines()
        .find(|l| l.starts_with("mempart: ready: "))
        .unwrap_or_else(|| panic!("the agent did not answer mpctl:\n{console}"));
    let (answered, view) = ready
        .split_once("view: ")
        .unwrap_or_else(|| panic!("no view in {ready:?}"));
    assert!(answered.contains("sysram/"), "mpctl ls: {answered:?}");
    assert!(
        view.split_whitespace().any(|entry| entry == "sysram"),
        "/partition/mem in the view: {view:?}"
    );
    assert_eq!(status.code(), Some(0), "the guest powered off:\n{console}");
    std::fs::remove_file(&image).expect("remove the image copy");
}
