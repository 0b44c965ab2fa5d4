//! Memory a reclaim gives back to the host, as the host sees it: a zoned sysram partition
//! (its zone unplugs; the VMM punches the blocks out of the zone's memfd) beside an
//! unzoned one (the guest kernel frees the memory, the balloon takes what was given back
//! and free page reporting returns the freed pages), the same amount, in one Linux guest
//! with the agent, one after the other. In each partition a process holds 12 MiB; the
//! host reclaims the partition to 2 MiB and follows the host-resident bytes (the zone's
//! memfd; sysram's memfd) from the reclaim's start until they have fallen by [`AMOUNT`]
//! or [`WINDOW`] has passed; the rate is the bytes returned over the time they took.
//! Needs `MEMPART_TEST_KERNEL` and `MEMPART_TEST_INITRAMFS` (`scripts/bench-zone` builds
//! them).

// A benchmark whose set-up fails has nothing to measure: it stops with the reason.
#![allow(clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::Lines;
use mempart::Credential;
use vmm::config::{parse_class, with_sysram, AgentEnd};
use vmm::{Backend, SerialOut, Vm, VmConfig, VmHandle};

const MIB: u64 = 1 << 20;
/// What each reclaim must give back to the host: most of the 12 MiB held.
const AMOUNT: u64 = 10 * MIB;
/// How long a step of the guest's may take before the bench gives up.
const LIMIT: Duration = Duration::from_secs(600);
/// How long each reclaim's returns are followed when [`AMOUNT`] is not reached sooner.
const WINDOW: Duration = Duration::from_secs(150);
const ZONED: &str = "/partition/mem/sysram/zoned";
const OPEN: &str = "/partition/mem/sysram/open";

/// Waits until `done` holds, polling; returns how long it took from `since`.
fn until(what: &str, since: Instant, done: impl Fn() -> bool) -> Duration {
    while !done() {
        assert!(since.elapsed() < LIMIT, "{what}: not done after {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
    since.elapsed()
}

/// MiB/s; 0 when nothing came back.
fn rate(bytes: u64, took: Duration) -> f64 {
    if bytes == 0 {
        return 0.0;
    }
    bytes as f64 / MIB as f64 / took.as_secs_f64()
}

/// Reads the console until a line starting with `prefix`.
fn line(rx: &Receiver<String>, prefix: &str) {
    while !rx
        .recv_timeout(LIMIT)
        .expect("a console line")
        .starts_with(prefix)
    {}
}

/// What a reclaim gave back to the host: bytes, and how long it took to get there.
struct Returned {
    bytes: u64,
    took: Duration,
}

/// Waits until `path`'s reported use reaches 12 MiB, then reclaims it to 2 MiB and
/// follows the host-resident bytes `resident` reads: until they have fallen by
/// [`AMOUNT`], or for [`WINDOW`], whichever comes first. Returns the largest fall and when
/// it was first reached.
fn reclaim(handle: &VmHandle, path: &str, resident: impl Fn() -> u64) -> Returned {
    let used =
        || handle.with_engine(|e| e.metrics(&Credential::Host, path).expect("partition").used);
    until("use reported", Instant::now(), || used() >= 12 * MIB);
    let before = resident();
    let started = Instant::now();
    handle
        .reclaimer()
        .start(path, 2 * MIB, LIMIT)
        .expect("reclaim");
    let mut best = Returned {
        bytes: 0,
        took: Duration::ZERO,
    };
    while best.bytes < AMOUNT && started.elapsed() < WINDOW {
        let fallen = before.saturating_sub(resident());
        if fallen > best.bytes {
            best = Returned {
                bytes: fallen,
                took: started.elapsed(),
            };
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    best
}

fn show(what: &str, memfd: &str, r: &Returned) {
    println!(
        "{what:<16} {:>5.1} MiB back in {:>8.1} ms = {:>7.1} MiB/s ({memfd})",
        r.bytes as f64 / MIB as f64,
        r.took.as_secs_f64() * 1e3,
        rate(r.bytes, r.took)
    );
}

fn main() {
    let path = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("{name} is not set: run scripts/bench-zone"))
    };
    let (kernel, initrd) = (path("MEMPART_TEST_KERNEL"), path("MEMPART_TEST_INITRAMFS"));
    let topology = std::env::temp_dir().join(format!("bench-reclaim-{}.toml", std::process::id()));
    std::fs::write(
        &topology,
        format!(
            "[[partition]]\npath = \"{ZONED}\"\nmax = \"64M\"\nzone = true\n\
             [[partition]]\npath = \"{OPEN}\"\n"
        ),
    )
    .expect("topology");
    let (tx, rx) = channel();
    let classes = vec![parse_class("sysram=256M").expect("class")];
    let config = VmConfig {
        kernel,
        initrd: Some(initrd),
        // Free pages of any order are reported to the host, as the Linux test has it.
        cmdline: "console=ttyS0 reboot=k panic=-1 mempart.init=agent mempart.cgroups=on \
                  mempart.script=/etc/bench-reclaim page_reporting.page_reporting_order=0"
            .into(),
        cpus: 1,
        classes: with_sysram(classes).expect("classes"),
        zones: Vec::new(),
        disks: Vec::new(),
        nets: Vec::new(),
        topology: Some(topology.clone()),
        serial: SerialOut::Writer(Box::new(Lines::new(tx))),
        kvm_device: PathBuf::from("/dev/kvm"),
        agent_end: AgentEnd::Service,
    };
    let vm = Vm::new(config).expect("vm");
    let handle: VmHandle = vm.handle();
    let running = std::thread::spawn(move || vm.run());
    eprintln!(
        "bench-zoned-reclaim: booting Linux ({})",
        Backend::detect().name()
    );
    line(&rx, "memhog: touched 12 MiB");
    let zone = || handle.zones().into_iter().next().expect("the zone");
    let zoned = reclaim(&handle, ZONED, || zone().resident);
    line(&rx, "memhog: touched 12 MiB");
    let sysram = || handle.resident("sysram").expect("sysram");
    let unzoned = reclaim(&handle, OPEN, sysram);
    show("zoned reclaim:", "the zone's memfd", &zoned);
    show("unzoned reclaim:", "sysram's memfd", &unzoned);
    println!(
        "ratio (zoned / unzoned throughput): {:.2}",
        rate(zoned.bytes, zoned.took) / rate(unzoned.bytes, unzoned.took)
    );
    running.join().expect("vm thread").expect("vm ran");
    let _ = std::fs::remove_file(topology);
}
