//! Memory given back to the host, as the host sees it: a zone unplugged (the guest's
//! virtio-mem driver offlines the blocks, the VMM removes their slots and punches them
//! out) beside the balloon inflated by the same amount (the guest hands pages over, the
//! VMM releases them), in one Linux guest, one after the other. Each is timed from the
//! host's request to the bytes being gone from the host (the zone's memfd resident
//! bytes; the balloon's released pages). Needs `MEMPART_TEST_KERNEL` and
//! `MEMPART_TEST_INITRAMFS` (`scripts/bench-zone` builds them).

// A benchmark whose set-up fails has nothing to measure: it stops with the reason.
#![allow(clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use common::{line_starting, Lines};
use vmm::config::{parse_class, parse_zone, with_sysram, AgentEnd};
use vmm::{Backend, SerialOut, Vm, VmConfig, VmHandle};

const MIB: u64 = 1 << 20;
/// What each path gives back: the 48 MiB the guest's init touches on the zone's node.
const AMOUNT: u64 = 48 * MIB;
/// How long either may take before the bench gives up.
const LIMIT: Duration = Duration::from_secs(600);

/// Waits until `done` holds, polling; returns how long it took.
fn until(what: &str, done: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < LIMIT,
            "{what}: not done after {LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    started.elapsed()
}

fn rate(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / MIB as f64 / took.as_secs_f64()
}

fn main() {
    let path = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("{name} is not set: run scripts/bench-zone"))
    };
    let (kernel, initrd) = (path("MEMPART_TEST_KERNEL"), path("MEMPART_TEST_INITRAMFS"));
    let (tx, rx) = channel();
    let classes = vec![parse_class("sysram=256M").expect("class")];
    let config = VmConfig {
        kernel,
        initrd: Some(initrd),
        cmdline: "console=ttyS0 reboot=k panic=-1 mempart.init=greet".into(),
        cpus: 1,
        classes: with_sysram(classes).expect("classes"),
        zones: vec![parse_zone("bench=128M,plugged=64M").expect("zone")],
        disks: Vec::new(),
        nets: Vec::new(),
        topology: None,
        serial: SerialOut::Writer(Box::new(Lines::new(tx))),
        kvm_device: PathBuf::from("/dev/kvm"),
        agent_end: AgentEnd::Raw,
    };
    let vm = Vm::new(config).expect("vm");
    let handle: VmHandle = vm.handle();
    let running = std::thread::spawn(move || vm.run());
    eprintln!("bench-zone: booting Linux ({})", Backend::detect().name());
    assert_eq!(line_starting(&rx, "init: "), "init: up");
    line_starting(&rx, "init: greeted");
    // The guest touches AMOUNT on the zone's node and frees it: the zone's memfd holds it.
    assert_eq!(handle.agent().write(b"zone\n"), 5);
    line_starting(&rx, "init: touched");
    assert_eq!(handle.agent().write(b"free\n"), 5);
    line_starting(&rx, "init: freed");
    let zone = || handle.zones().into_iter().next().expect("the zone");
    let held = zone().resident;
    assert!(held >= AMOUNT, "the zone holds {held} bytes");

    handle
        .set_zone_requested("bench", 0)
        .expect("requested size");
    let unplug = until("unplug", || {
        zone().resident == 0 && zone().device.plugged_size == 0
    });

    let pages = u32::try_from(AMOUNT / 4096).expect("pages");
    let before = handle.balloon().status().inflated_pages;
    handle.balloon().set_target(pages).expect("balloon target");
    let inflate = until("inflate", || {
        handle.balloon().status().inflated_pages >= before + u64::from(pages)
    });

    println!(
        "zone unplug:     {:>6} MiB in {:>8.1} ms = {:>7.1} MiB/s (host-resident bytes of the zone's memfd to 0)",
        held / MIB,
        unplug.as_secs_f64() * 1e3,
        rate(held, unplug)
    );
    println!(
        "balloon inflate: {:>6} MiB in {:>8.1} ms = {:>7.1} MiB/s (pages released by the balloon)",
        AMOUNT / MIB,
        inflate.as_secs_f64() * 1e3,
        rate(AMOUNT, inflate)
    );
    println!(
        "ratio (zone / balloon throughput): {:.2}",
        rate(held, unplug) / rate(AMOUNT, inflate)
    );
    assert_eq!(handle.agent().write(b"done\n"), 5);
    running.join().expect("vm thread").expect("vm ran");
}
