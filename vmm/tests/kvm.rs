//! KVM tests with tiny freestanding guests: serial, typed memory grants and revokes,
//! violations, two vCPUs, interrupts through the I/O APIC and exit codes. They need
//! /dev/kvm and gcc.

// Test helpers fail the test loudly with the reason.
#![allow(clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::mpsc::Receiver;

use common::{guest, kvm_available, next_line};
use vmm::{Backend, Vm, VmConfig, VmExit};

const MAILBOX: u64 = 0x80000;
const MIB: u64 = 1 << 20;

fn config(kernel: PathBuf, cpus: u32, classes: &[&str]) -> (VmConfig, Receiver<String>) {
    common::tiny_config(kernel, cpus, classes)
}

#[test]
fn typed_memory_is_usable_where_granted_refused_elsewhere_and_gone_after_revoke() {
    if !kvm_available() {
        return;
    }
    eprintln!("backend: {}", Backend::detect().name());
    let (config, rx) = config(guest("classes"), 1, &["sysram=64M", "fast=16M"]);
    let vm = Vm::new(config).expect("vm");
    let handle = vm.handle();
    let base = handle.class_base("fast").expect("fast is placed");
    assert_eq!(base, 4 << 30);
    assert_eq!(handle.grant("fast", 0, 64 * 1024).expect("grant"), base);
    assert_eq!(handle.resident("fast"), Some(0));
    let running = std::thread::spawn(move || vm.run());

    assert_eq!(next_line(&rx), "guest: hello");
    assert_eq!(next_line(&rx), format!("guest: class at 0x{base:016x}"));
    let expected: u64 = (0..16).sum();
    assert_eq!(
        next_line(&rx),
        format!("guest: granted sum 0x{expected:016x}")
    );
    assert_eq!(next_line(&rx), "guest: ungranted read 0xffffffffffffffff");
    assert_eq!(next_line(&rx), "guest: waiting for revoke");

    let mut word = [0u8; 8];
    handle
        .read_class("fast", 3 * 4096, &mut word)
        .expect("read");
    assert_eq!(u64::from_le_bytes(word), 0x6d656d7061727403);
    assert_eq!(handle.resident("fast"), Some(16 * 4096));
    let violations = handle.violations();
    assert_eq!(
        violations
            .iter()
            .map(|v| (v.gpa, v.write))
            .collect::<Vec<_>>(),
        vec![(base + MIB, false), (base + MIB + 8, true)]
    );

    handle.revoke("fast", 0).expect("revoke");
    assert_eq!(handle.resident("fast"), Some(0));
    handle
        .read_class("fast", 3 * 4096, &mut word)
        .expect("read");
    assert_eq!(u64::from_le_bytes(word), 0);
    handle
        .write_sysram(MAILBOX, &1u64.to_le_bytes())
        .expect("mailbox");

    assert_eq!(next_line(&rx), "guest: after revoke 0xffffffffffffffff");
    assert_eq!(next_line(&rx), "guest: flooded 0xffffffffffffffff");
    let exit = running.join().expect("vm thread").expect("vm ran");
    assert_eq!(exit, VmExit::Reset);
    assert_eq!(exit.code(), 0);
    // The flood is counted exactly while what is kept of it stays bounded.
    const FLOOD: u64 = 10_000;
    let recent = handle.violations();
    assert_eq!(recent.len(), vmm::vm::violations::RECENT_VIOLATIONS);
    assert_eq!(
        recent.last().map(|v| v.gpa),
        Some(base + 2 * MIB + 8 * ((FLOOD - 1) % 512))
    );
    let class = handle.with_engine(|e| e.class_id("fast")).expect("class");
    assert!(recent.iter().all(|v| v.class == class));
    let (total, by_class) = handle.violation_counts();
    assert_eq!(total, 3 + FLOOD);
    assert!(
        by_class.contains(&("fast".to_string(), 3 + FLOOD)),
        "{by_class:?}"
    );
    assert_eq!(handle.info()["violations"], 3 + FLOOD);
}

#[test]
fn two_vcpus_both_run() {
    if !kvm_available() {
        return;
    }
    let (config, rx) = config(guest("smp"), 2, &["sysram=32M"]);
    let vm = Vm::new(config).expect("vm");
    vm.handle()
        .write_sysram(MAILBOX, &2u64.to_le_bytes())
        .expect("mailbox");
    let exit = vm.run().expect("vm ran");
    assert_eq!(next_line(&rx), "guest: cpus seen 0x0000000000000003");
    assert_eq!(exit, VmExit::Reset);
}

/// The guest routes the serial port's pin through the VMM's I/O APIC to one vector, takes
/// the UART's interrupt there, re-routes the pin and takes it on the new vector: each
/// redirection entry the guest writes reaches KVM as that pin's route.
#[test]
fn the_serial_interrupt_arrives_on_the_vector_the_guest_routed_it_to() {
    if !kvm_available() {
        return;
    }
    let (config, rx) = config(guest("irq"), 1, &["sysram=32M"]);
    let running = std::thread::spawn(move || Vm::new(config).expect("vm").run());
    // Version 0x11 with 24 pins (highest index 23 in bits 16-23).
    assert_eq!(next_line(&rx), "irq: ioapic version 0x0000000000170011");
    assert_eq!(
        next_line(&rx),
        "irq: taken 0x0000000000000001 0x0000000000000001"
    );
    let exit = running.join().expect("vm thread").expect("vm ran");
    assert_eq!(exit, VmExit::Reset);
}

#[test]
fn a_guest_that_crashes_exits_with_code_3() {
    if !kvm_available() {
        return;
    }
    let (config, rx) = config(guest("crash"), 1, &["sysram=32M"]);
    let exit = Vm::new(config).expect("vm").run().expect("vm ran");
    assert_eq!(next_line(&rx), "guest: about to crash");
    assert!(
        matches!(exit, VmExit::TripleFault | VmExit::Crash(_)),
        "{exit:?}"
    );
    assert_eq!(exit.code(), 3);
}

#[test]
fn grants_outside_the_class_or_overlapping_are_refused() {
    if !kvm_available() {
        return;
    }
    let (config, _rx) = config(guest("crash"), 1, &["sysram=32M", "fast=1M"]);
    let vm = Vm::new(config).expect("vm");
    let h = vm.handle();
    assert!(h.grant("fast", 0, 8192).is_ok());
    for (offset, len) in [
        (4096, 4096),
        (0, 0),
        (100, 4096),
        (0, 2 * MIB),
        (u64::MAX - 4095, 4096),
    ] {
        let e = h.grant("fast", offset, len).expect_err("refused");
        assert!(e.to_string().starts_with("class fast: extent"), "{e}");
    }
    assert!(h.grant("slow", 0, 4096).is_err());
    assert!(h.revoke("fast", 4096).is_err());
    assert!(h.revoke("fast", 0).is_ok());
    assert!(h.grant("fast", 4096, 4096).is_ok());
}

fn hex_after(line: &str, prefix: &str) -> u64 {
    let value = line
        .strip_prefix(prefix)
        .and_then(|v| v.strip_prefix("0x"))
        .expect("a hex value");
    u64::from_str_radix(value, 16).expect("hex")
}

/// What KVM_SET_CPUID2 hides from a guest's supervisor-mode `cpuid`, measured: on a
/// kvm_pvm host CMPXCHG16B must be hidden; XSAVE and POPCNT are reported as seen (the
/// VMM adds kernel arguments for them instead).
#[test]
fn cpuid_hides_what_the_emulator_cannot_run() {
    if !kvm_available() {
        return;
    }
    let backend = Backend::detect();
    let (config, rx) = config(guest("cpuid"), 1, &["sysram=32M"]);
    let exit = Vm::new(config).expect("vm").run().expect("vm ran");
    assert_eq!(exit, VmExit::Reset);
    let ecx = hex_after(&next_line(&rx), "guest: leaf 1 ecx ");
    let ebx = hex_after(&next_line(&rx), "guest: leaf 80000008 ebx ");
    eprintln!(
        "backend {}: CX16 {}, XSAVE {}, POPCNT {}, hypervisor {}, XSAVEERPTR {}",
        backend.name(),
        ecx >> 13 & 1,
        ecx >> 26 & 1,
        ecx >> 23 & 1,
        ecx >> 31 & 1,
        ebx >> 2 & 1
    );
    assert_eq!(ecx >> 31 & 1, 1, "the hypervisor bit is set");
    if backend == Backend::KvmPvm {
        assert_eq!(ecx >> 13 & 1, 0, "CX16 is hidden on kvm_pvm");
    }
}

/// A tiny guest with its own virtio-mmio balloon driver: the target set by the host is
/// read by the guest; the pages it inflates leave the VMM's resident memory and count
/// once though the guest inflates them 21 times; deflated pages are usable again; only
/// the first queue notification exits to the VMM.
#[test]
fn balloon_target_reaches_the_guest_and_inflated_pages_leave_the_host() {
    if !kvm_available() {
        return;
    }
    const PAGES: u64 = 64;
    let (config, rx) = config(guest("balloon"), 1, &["sysram=64M"]);
    let vm = Vm::new(config).expect("vm");
    let handle = vm.handle();
    handle.balloon().set_target(PAGES as u32).expect("target");
    let running = std::thread::spawn(move || vm.run());
    assert_eq!(
        next_line(&rx),
        format!("guest: balloon target 0x{PAGES:016x}")
    );
    assert_eq!(next_line(&rx), "guest: touched");
    // The guest touched PAGES pages at 16 MiB: all resident now, none after inflating.
    const AT: u64 = 0x100_0000;
    assert_eq!(handle.sysram_resident(AT, PAGES * 4096), PAGES * 4096);
    let before = handle.resident("sysram").expect("sysram");
    handle
        .write_sysram(MAILBOX, &1u64.to_le_bytes())
        .expect("mailbox");
    assert_eq!(next_line(&rx), "guest: inflated");
    assert_eq!(handle.sysram_resident(AT, PAGES * 4096), 0);
    let after = handle.resident("sysram").expect("sysram");
    assert!(
        before > after,
        "resident sysram went from {before} to {after}"
    );
    let status = handle.balloon().status();
    const REPEATS: u64 = 20;
    assert_eq!(
        (status.inflated_pages, status.actual_pages, status.rejected),
        (PAGES, PAGES as u32, REPEATS * PAGES)
    );
    handle
        .write_sysram(MAILBOX, &2u64.to_le_bytes())
        .expect("mailbox");
    assert_eq!(
        next_line(&rx),
        format!("guest: deflated, zeroed 0x{PAGES:016x} usable 0x{PAGES:016x}")
    );
    assert_eq!(
        running.join().expect("vm thread").expect("vm ran"),
        VmExit::Reset
    );
    let status = handle.balloon().status();
    assert_eq!((status.inflated_pages, status.actual_pages), (0, 0));
    // Of the guest's many notifications (21 inflates, a deflate) only the first left the
    // guest: it registered the balloon's ioeventfds, which took the rest.
    assert_eq!(handle.exit_counts().notify_exits, 1);
}

/// A tiny guest with its own multiport virtio-console driver: the handshake names the
/// agent port, bytes the guest sends arrive at the VMM's end, and a reply arrives in the
/// guest.
#[test]
fn agent_port_is_named_and_carries_bytes_both_ways() {
    if !kvm_available() {
        return;
    }
    let (config, rx) = config(guest("console"), 1, &["sysram=64M"]);
    let vm = Vm::new(config).expect("vm");
    let handle = vm.handle();
    let running = std::thread::spawn(move || vm.run());
    assert_eq!(next_line(&rx), "guest: port org.mempart.agent.0");
    assert_eq!(next_line(&rx), "guest: sent ping");
    assert!(handle.agent().guest_open());
    let mut buf = [0u8; 64];
    let n = handle.agent().read(&mut buf);
    assert_eq!(&buf[..n], b"ping from guest\n");
    assert_eq!(handle.agent().write(b"pong from host\n"), 15);
    assert_eq!(next_line(&rx), "guest: got pong from host");
    assert_eq!(
        running.join().expect("vm thread").expect("vm ran"),
        VmExit::Reset
    );
    assert_eq!(handle.agent().rejected(), 0);
}

/// Typed-class allocations through the partition service are backed by extents the VMM
/// grants (first fit), and go back when freed or when the process exits.
#[test]
fn typed_allocations_through_the_service_are_backed_by_granted_extents() {
    if !kvm_available() {
        return;
    }
    use mempart::{Credential, Spawn};
    use protocol::{Client, Op, Reply};
    const K: u64 = 1024;
    let (config, _rx) = config(guest("wait"), 1, &["sysram=32M", "fast=1M"]);
    let vm = Vm::new(config).expect("vm");
    let handle = vm.handle();
    let mut client = common::agent_client(&handle);
    let root = Credential::guest_root();
    let start = Op::ProcessStart {
        pid: 9,
        parent: None,
        spawn: Spawn::SetMpart(vec!["/partition/mem/fast/sys".into()]),
        owner: None,
    };
    assert_eq!(client.call(&root, start).expect("io"), Ok(Reply::Done));
    let base = handle.class_base("fast").expect("fast");
    let alloc = |client: &mut Client<std::os::unix::net::UnixStream>, bytes| {
        let op = Op::Allocate {
            pid: 9,
            class: "fast".into(),
            bytes,
        };
        match client.call(&root, op).expect("io") {
            Ok(Reply::Granted { grant, gpa }) => Ok((grant, gpa)),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.name),
        }
    };
    let granted = |h: &vmm::VmHandle| h.info()["classes"][0]["granted"].clone();
    let (a, gpa_a) = alloc(&mut client, 256 * K).expect("a");
    let (_, gpa_b) = alloc(&mut client, 512 * K).expect("b");
    assert_eq!((gpa_a, gpa_b), (Some(base), Some(base + 256 * K)));
    assert_eq!(alloc(&mut client, 512 * K).err().as_deref(), Some("ENOMEM"));
    assert_eq!(
        granted(&handle),
        serde_json::json!([[0, 256 * K], [256 * K, 512 * K]])
    );
    assert_eq!(
        client
            .call(
                &root,
                Op::Free {
                    pid: 9,
                    grant: a,
                    gpa: None
                }
            )
            .expect("io"),
        Ok(Reply::Done)
    );
    assert_eq!(granted(&handle), serde_json::json!([[256 * K, 512 * K]]));
    let (_, gpa_c) = alloc(&mut client, 128 * K).expect("c");
    assert_eq!(gpa_c, Some(base), "first fit reuses the freed extent");
    let (d, gpa_d) = alloc(&mut client, 128 * K).expect("d");
    assert_eq!(gpa_d, Some(base + 128 * K));
    // c and d are equal grants: the base says which extent goes back.
    let free_d = |gpa| Op::Free {
        pid: 9,
        grant: d,
        gpa: Some(gpa),
    };
    let refused = client.call(&root, free_d(base + 64 * K)).expect("io");
    assert_eq!(refused.map_err(|e| e.name).err().as_deref(), Some("ENOENT"));
    assert_eq!(
        client.call(&root, free_d(base + 128 * K)).expect("io"),
        Ok(Reply::Done)
    );
    assert_eq!(
        granted(&handle),
        serde_json::json!([[0, 128 * K], [256 * K, 512 * K]]),
        "c stays, d went"
    );
    assert_eq!(
        client.call(&root, Op::ProcessExit { pid: 9 }).expect("io"),
        Ok(Reply::Done)
    );
    assert_eq!(granted(&handle), serde_json::json!([]));
    assert_eq!(handle.resident("fast"), Some(0));
}

/// One process fills class `slow` with one-unit allocations, each an extent with its own
/// memory slot; then a partition that reserves all of class `fast` allocates its whole
/// min one unit at a time. Every allocation the engine admits the VMM places: the
/// class units keep each class within its share of the slots (on 4 KiB units, `slow`
/// took the slots that `fast`'s guarantee needed). The next one the engine refuses.
#[test]
fn every_typed_allocation_the_engine_admits_is_placed() {
    if !kvm_available() {
        return;
    }
    use mempart::{Credential, Limits, Spawn};
    use protocol::{Op, Reply};
    let (config, _rx) = config(guest("wait"), 1, &["sysram=32M", "fast=64M", "slow=64M"]);
    let vm = Vm::new(config).expect("vm");
    let handle = vm.handle();
    let mut client = common::agent_client(&handle);
    let root = Credential::guest_root();
    let mut call = |op| client.call(&root, op).expect("io");
    let unit =
        |call: &mut dyn FnMut(Op) -> Result<Reply, protocol::WireError>, class: &str| match call(
            Op::ClassMetrics {
                path: format!("/partition/mem/{class}"),
            },
        ) {
            Ok(Reply::Class(c)) => c.unit,
            other => panic!("{other:?}"),
        };
    let (fast_unit, slow_unit) = (unit(&mut call, "fast"), unit(&mut call, "slow"));
    let create = Op::Create {
        path: "/partition/mem/fast/g".into(),
        limits: Limits {
            min: 64 << 20,
            max: 64 << 20,
        },
        mode: 0o755,
        zone: false,
    };
    assert_eq!(call(create), Ok(Reply::Done));
    for (pid, part) in [
        (9, "/partition/mem/fast/g"),
        (10, "/partition/mem/slow/sys"),
    ] {
        let start = Op::ProcessStart {
            pid,
            parent: None,
            spawn: Spawn::SetMpart(vec![part.into()]),
            owner: None,
        };
        assert_eq!(call(start), Ok(Reply::Done));
    }
    let alloc = |pid, class: &str, bytes| Op::Allocate {
        pid,
        class: class.into(),
        bytes,
    };
    let placed = |r: &Result<Reply, protocol::WireError>| {
        matches!(r, Ok(Reply::Granted { gpa: Some(_), .. }))
    };
    let engine_refused = |r: &Result<Reply, protocol::WireError>| matches!(r, Err(e) if e.name == "ENOMEM" && !e.message.contains("no extent"));
    for n in 0..(64 << 20) / slow_unit {
        let got = call(alloc(10, "slow", slow_unit));
        assert!(placed(&got), "slow, unit {n}: {got:?}");
    }
    let full = call(alloc(10, "slow", slow_unit));
    assert!(engine_refused(&full), "{full:?}");
    for n in 0..(64 << 20) / fast_unit {
        let got = call(alloc(9, "fast", fast_unit));
        assert!(placed(&got), "fast, unit {n} of the guarantee: {got:?}");
    }
    let beyond = call(alloc(9, "fast", fast_unit));
    assert!(engine_refused(&beyond), "{beyond:?}");
    let info = handle.info();
    let slots = &info["memory_slots"];
    assert!(slots["used"].as_u64() <= slots["max"].as_u64(), "{slots}");
}

/// A tiny guest with its own virtio-mem driver: unplugged zone memory is refused and
/// counted, plugged blocks are usable and backed, and after an unplug their host pages
/// are gone and the guest is refused again.
#[test]
fn zone_blocks_are_usable_only_while_plugged_and_freed_when_unplugged() {
    if !kvm_available() {
        return;
    }
    const BLOCK: u64 = 2 << 20;
    const REQUESTED: u64 = 2 * BLOCK;
    let (mut config, rx) = config(guest("mem"), 1, &["sysram=32M"]);
    config.zones = vec![vmm::config::parse_zone("db=128M,plugged=4M").expect("zone")];
    let vm = Vm::new(config).expect("vm");
    let handle = vm.handle();
    let zone = || handle.zones().into_iter().next().expect("one zone");
    assert_eq!((zone().resident, zone().device.plugged_size), (0, 0));
    let running = std::thread::spawn(move || vm.run());
    let hex = |v: u64| format!("0x{v:016x}");
    assert_eq!(next_line(&rx), format!("guest: block {}", hex(BLOCK)));
    assert_eq!(
        next_line(&rx),
        format!("guest: requested {}", hex(REQUESTED))
    );
    assert_eq!(
        next_line(&rx),
        format!("guest: unplugged read {}", hex(u64::MAX))
    );
    assert_eq!(next_line(&rx), format!("guest: plug {}", hex(0)));
    // Each 4 KiB page of block b holds b + 1.
    let pages = BLOCK / 4096;
    assert_eq!(
        next_line(&rx),
        format!("guest: plugged sum {}", hex(pages * (1 + 2)))
    );
    assert_eq!(next_line(&rx), format!("guest: state {}", hex(0)));
    assert_eq!(
        next_line(&rx),
        format!("guest: plugged size {}", hex(REQUESTED))
    );
    let plugged = zone();
    assert_eq!(
        (plugged.device.plugged_size, plugged.resident),
        (REQUESTED, REQUESTED)
    );
    assert_eq!(plugged.violations, 1);
    handle
        .write_sysram(MAILBOX, &1u64.to_le_bytes())
        .expect("mailbox");
    assert_eq!(next_line(&rx), format!("guest: unplug {}", hex(0)));
    assert_eq!(
        next_line(&rx),
        format!("guest: after unplug read {}", hex(u64::MAX))
    );
    // RESP_ERROR is 3.
    assert_eq!(next_line(&rx), format!("guest: misaligned plug {}", hex(3)));
    assert_eq!(
        running.join().expect("vm thread").expect("vm ran"),
        VmExit::Reset
    );
    let unplugged = zone();
    assert_eq!(
        (
            unplugged.device.plugged_size,
            unplugged.resident,
            unplugged.violations,
            unplugged.device.errors
        ),
        (0, 0, 2, 1)
    );
    assert_eq!(unplugged.device.requests, 4);
}
