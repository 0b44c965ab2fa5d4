//! Balloon-style reclaim end to end: a tiny guest whose balloon driver follows the target,
//! the test playing the agent over the partition service, and the VMM's reclaimer in
//! between. Needs /dev/kvm and gcc.

// Test helpers fail the test loudly with the reason.
#![allow(clippy::expect_used)]

mod common;

use std::os::unix::net::UnixStream;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use common::{guest, kvm_available, line_starting, next_line, GUARD};
use mempart::{Credential, EventFilter, EventKind, Limits, NewPartition, Spawn};
use protocol::{Client, Op, Reply, ServerFrame};
use vmm::reclaim::{ReclaimState, ReclaimStatus};
use vmm::{Vm, VmExit, VmHandle};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
const MAILBOX: u64 = 0x80000;
/// Where the follow guest's pool of pages sits, and its size.
const POOL_AT: u64 = 0x100_0000;
const POOL: u64 = 4 * MIB;
const APPS: &str = "/partition/mem/sysram/apps";

fn start(
    kernel: &str,
    classes: &[&str],
) -> (VmHandle, Receiver<String>, std::thread::JoinHandle<VmExit>) {
    let (config, rx) = common::tiny_config(guest(kernel), 1, classes);
    let vm = Vm::new(config).expect("vm");
    let handle = vm.handle();
    let running = std::thread::spawn(move || vm.run().expect("vm ran"));
    (handle, rx, running)
}

/// The test's stand-in for `mempart-agent`: a guest connection to the VM's service.
fn agent(handle: &VmHandle) -> Client<UnixStream> {
    let (ours, theirs) = UnixStream::pair().expect("pair");
    let service = handle.service();
    std::thread::spawn(move || {
        let reader = theirs.try_clone().expect("clone");
        service.serve(reader, theirs, vmm::service::Authority::Guest)
    });
    Client::connect(ours).expect("handshake")
}

fn call(client: &mut Client<UnixStream>, op: Op) -> Reply {
    client
        .call(&Credential::guest_root(), op)
        .expect("io")
        .unwrap_or_else(|e| panic!("{e:?}"))
}

fn report(client: &mut Client<UnixStream>, own: u64) {
    let op = Op::ReportUsage {
        path: APPS.into(),
        own,
    };
    assert_eq!(call(client, op), Reply::Done);
}

/// The next event kind pushed to `client`.
fn next_kind(client: &mut Client<UnixStream>) -> EventKind {
    match client.next_event().expect("event") {
        ServerFrame::Event { event, .. } => event.kind,
        other => panic!("expected an event, got {other:?}"),
    }
}

fn wait(handle: &VmHandle, id: u64, until: impl Fn(&ReclaimStatus) -> bool) -> ReclaimStatus {
    let status = handle
        .reclaimer()
        .wait(id, GUARD, &until)
        .expect("known reclaim");
    assert!(until(&status), "reclaim did not get there: {status:?}");
    status
}

/// The sysram class's figures agree with the partitions and the balloon.
fn assert_sysram_accounting(handle: &VmHandle) {
    handle.with_engine(|e| {
        let id = e.class_id("sysram").expect("sysram");
        let class = e.class_figures(id).expect("figures");
        let held = handle.balloon().status().inflated_pages * PAGE;
        assert_eq!(
            class.size,
            64 * MIB - held,
            "class size is RAM less the balloon"
        );
        let charges: u64 = ["/partition/mem/sysram/sys", APPS]
            .iter()
            .map(|p| e.metrics(&Credential::Host, p).expect("metrics").charge)
            .sum();
        assert_eq!(
            class.free,
            class.size - charges,
            "free is size less the roots' charges"
        );
    });
}

fn sysram_vm() -> (
    VmHandle,
    Receiver<String>,
    std::thread::JoinHandle<VmExit>,
    Client<UnixStream>,
) {
    let (handle, rx, running) = start("follow", &["sysram=64M"]);
    handle.with_engine(|e| {
        let spec = NewPartition {
            limits: Limits {
                min: 0,
                max: 32 * MIB,
            },
            ..NewPartition::default()
        };
        e.create(&Credential::Host, APPS, spec).expect("apps");
    });
    let mut client = agent(&handle);
    report(&mut client, POOL);
    let op = Op::Subscribe {
        path: APPS.into(),
        filter: EventFilter::default(),
        capacity: 64,
    };
    assert!(matches!(call(&mut client, op), Reply::Subscribed(_)));
    assert_eq!(next_line(&rx), "guest: touched");
    assert_eq!(handle.sysram_resident(POOL_AT, POOL), POOL);
    (handle, rx, running, client)
}

fn stop(handle: &VmHandle, running: std::thread::JoinHandle<VmExit>) {
    handle
        .write_sysram(MAILBOX, &3u64.to_le_bytes())
        .expect("mailbox");
    assert_eq!(running.join().expect("vm thread"), VmExit::Reset);
}

/// Lowering a sysram partition's max: the agent hears of it, use shrinks as it reports,
/// the balloon takes exactly what was given back, resident memory drops, and the
/// accounting agrees at every step. Raising the max again deflates.
#[test]
fn sysram_reclaim_follows_reported_use_into_the_balloon() {
    if !kvm_available() {
        return;
    }
    let (handle, rx, running, mut client) = sysram_vm();
    let resident_before = handle.resident("sysram").expect("sysram");
    let status = handle
        .reclaimer()
        .start(APPS, MIB, Duration::from_secs(120))
        .expect("reclaim");
    assert_eq!(
        (status.state, status.start_used, status.previous_max),
        (ReclaimState::Running, POOL, 32 * MIB)
    );
    assert_eq!(next_kind(&mut client), EventKind::ConfigChanged);
    assert_eq!(
        next_kind(&mut client),
        EventKind::Reclaim {
            max: MIB,
            excess: 3 * MIB
        }
    );
    assert_sysram_accounting(&handle);

    report(&mut client, 3 * MIB);
    assert_eq!(
        line_starting(&rx, "guest: holds"),
        "guest: holds 0x0000000000000100"
    );
    let s = wait(&handle, status.id, |s| s.given_back == MIB);
    assert_eq!(
        (s.state, s.used, s.balloon_pages),
        (ReclaimState::Running, 3 * MIB, 256)
    );
    assert_sysram_accounting(&handle);

    report(&mut client, MIB);
    assert_eq!(
        line_starting(&rx, "guest: holds"),
        "guest: holds 0x0000000000000300"
    );
    let s = wait(&handle, status.id, |s| s.state != ReclaimState::Running);
    assert_eq!(
        (s.state, s.used, s.given_back, s.balloon_pages),
        (ReclaimState::Done, MIB, 3 * MIB, 768)
    );
    let m = handle.with_engine(|e| e.metrics(&Credential::Host, APPS).expect("apps"));
    assert_eq!((m.current.limits.max, m.pending_max), (MIB, None));
    assert_sysram_accounting(&handle);
    assert_eq!(handle.sysram_resident(POOL_AT, 3 * MIB), 0);
    let resident_after = handle.resident("sysram").expect("sysram");
    // The pool's pages are gone; the running guest may have touched a few others meanwhile.
    assert!(
        resident_before - resident_after >= 3 * MIB - 16 * PAGE,
        "resident sysram went from {resident_before} to {resident_after}"
    );

    let (_, deflated) = handle
        .reclaimer()
        .set_limits(APPS, None, Some(8 * MIB))
        .expect("raise");
    assert_eq!(deflated, 768);
    assert_eq!(
        line_starting(&rx, "guest: holds"),
        "guest: holds 0x0000000000000000"
    );
    assert_eq!(handle.reclaimer().ballooned(), 0);
    assert_sysram_accounting(&handle);
    stop(&handle, running);
}

/// A sysram reclaim the guest cannot finish: at the deadline the lower max is withdrawn,
/// and the balloon keeps what the guest did give back.
#[test]
fn sysram_reclaim_at_its_deadline_keeps_the_old_max_and_what_was_given_back() {
    if !kvm_available() {
        return;
    }
    let (handle, rx, running, mut client) = sysram_vm();
    let status = handle
        .reclaimer()
        .start(APPS, MIB, Duration::from_secs(3))
        .expect("reclaim");
    report(&mut client, 3 * MIB);
    assert_eq!(
        line_starting(&rx, "guest: holds"),
        "guest: holds 0x0000000000000100"
    );
    let s = wait(&handle, status.id, |s| s.state != ReclaimState::Running);
    assert_eq!(
        (s.state, s.used, s.given_back, s.balloon_pages),
        (ReclaimState::Expired, 3 * MIB, MIB, 256)
    );
    let m = handle.with_engine(|e| e.metrics(&Credential::Host, APPS).expect("apps"));
    assert_eq!((m.current.limits.max, m.pending_max), (32 * MIB, None));
    assert_eq!(handle.balloon().status().inflated_pages, 256);
    assert_sysram_accounting(&handle);
    stop(&handle, running);
}

/// A typed-class reclaim: the owning process is asked by an event and frees an extent;
/// a second one it ignores ends at the deadline with the newest extent taken back.
#[test]
fn typed_reclaim_asks_the_owner_then_takes_back_the_newest_extent() {
    if !kvm_available() {
        return;
    }
    const P: &str = "/partition/mem/fast/p";
    let (handle, _rx, running) = start("wait", &["sysram=32M", "fast=4M"]);
    handle.with_engine(|e| {
        let spec = NewPartition {
            limits: Limits {
                min: 0,
                max: 4 * MIB,
            },
            ..NewPartition::default()
        };
        e.create(&Credential::Host, P, spec).expect("p");
    });
    let mut client = agent(&handle);
    let spawn = Spawn::SetMpart(vec![P.into()]);
    let op = Op::ProcessStart {
        pid: 9,
        parent: None,
        spawn,
        owner: None,
    };
    assert_eq!(call(&mut client, op), Reply::Done);
    let op = Op::Subscribe {
        path: P.into(),
        filter: EventFilter::default(),
        capacity: 64,
    };
    assert!(matches!(call(&mut client, op), Reply::Subscribed(_)));
    let mut grants = Vec::new();
    for _ in 0..3 {
        let op = Op::Allocate {
            pid: 9,
            class: "fast".into(),
            bytes: MIB,
        };
        match call(&mut client, op) {
            Reply::Granted { grant, gpa } => grants.push((grant, gpa.expect("gpa"))),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(handle.resident("fast"), Some(0), "granted, not yet touched");

    let first = handle
        .reclaimer()
        .start(P, 2 * MIB, Duration::from_secs(120))
        .expect("reclaim");
    assert_eq!(next_kind(&mut client), EventKind::ConfigChanged);
    assert_eq!(
        next_kind(&mut client),
        EventKind::Reclaim {
            max: 2 * MIB,
            excess: MIB
        }
    );
    let (oldest, oldest_gpa) = grants[0];
    assert_eq!(
        call(
            &mut client,
            Op::Free {
                pid: 9,
                grant: oldest,
                gpa: Some(oldest_gpa)
            }
        ),
        Reply::Done
    );
    let s = wait(&handle, first.id, |s| s.state != ReclaimState::Running);
    assert_eq!(
        (s.state, s.used, s.given_back),
        (ReclaimState::Done, 2 * MIB, MIB)
    );

    let second = handle
        .reclaimer()
        .start(P, MIB, Duration::from_secs(2))
        .expect("reclaim");
    let s = wait(&handle, second.id, |s| s.state != ReclaimState::Running);
    let (_, newest_gpa) = grants[2];
    assert_eq!(s.state, ReclaimState::Revoked, "{s:?}");
    assert_eq!(s.used, MIB);
    assert_eq!(s.revoked.len(), 1);
    assert_eq!(
        (s.revoked[0].pid, s.revoked[0].gpa, s.revoked[0].bytes),
        (9, newest_gpa, MIB)
    );
    let m = handle.with_engine(|e| e.metrics(&Credential::Host, P).expect("p"));
    assert_eq!(
        (m.current.limits.max, m.pending_max, m.used),
        (MIB, None, MIB)
    );
    let base = handle.class_base("fast").expect("fast");
    let (_, middle_gpa) = grants[1];
    assert_eq!(
        handle.info()["classes"][0]["granted"],
        serde_json::json!([[middle_gpa - base, MIB]])
    );
    let retained: u64 = handle.with_engine(|e| {
        e.process_partitions(9)
            .expect("process 9")
            .iter()
            .map(|a| a.charged)
            .sum()
    });
    assert_eq!(
        retained, MIB,
        "the process is charged for the extent it kept"
    );
    handle
        .write_sysram(MAILBOX, &1u64.to_le_bytes())
        .expect("mailbox");
    assert_eq!(running.join().expect("vm thread"), VmExit::Reset);
}
