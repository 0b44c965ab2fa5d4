//! The host API: latency of one request on a fresh connection (as `curl --unix-socket`
//! makes it), and the time from starting `mempart-vmm run` to its API answering — in
//! CPU time the VMM process spent (the goal is ≤5 ms) and in wall time.

// A benchmark whose set-up fails has nothing to measure: it stops with the reason.
#![allow(clippy::expect_used)]
// Reading the children's CPU time is a getrusage call.
#![allow(unsafe_code)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_main, Criterion};

const VMM: &str = env!("CARGO_BIN_EXE_mempart-vmm");

/// CPU time (user + system) of every child waited for so far.
fn children_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the buffer it is given, which is ours and
    // large enough; RUSAGE_CHILDREN is a valid selector.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage");
    // SAFETY: getrusage succeeded, so it initialised the whole structure.
    let usage = unsafe { usage.assume_init() };
    let time = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Starts the VMM with a guest that halts at once, waits until its API answers
/// `GET /vm`, stops it; returns the wall time to the answer and the VMM's CPU time.
fn start_to_api(kernel: &Path, sock: &Path) -> (Duration, Duration) {
    let cpu_before = children_cpu();
    let started = Instant::now();
    let mut vmm = Command::new(VMM)
        .args(["run", "--serial", "none", "--kernel"])
        .arg(kernel)
        .arg("--api-sock")
        .arg(sock)
        .stdout(Stdio::null())
        .spawn()
        .expect("mempart-vmm starts");
    let wall = loop {
        if vmm::ctl::request(sock, "GET", "/vm", "").is_ok() {
            break started.elapsed();
        }
        assert!(started.elapsed() < common::GUARD, "the API never answered");
        std::hint::spin_loop();
    };
    vmm.kill().expect("kill");
    vmm.wait().expect("wait");
    let _ = std::fs::remove_file(sock);
    (wall, children_cpu() - cpu_before)
}

fn sock(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}.sock", std::process::id()))
}

fn start(c: &mut Criterion) {
    if !common::kvm_available() {
        return;
    }
    let kernel = common::guest("halt");
    let sock = sock("bench-start");
    let mut group = c.benchmark_group("vmm start → API answers");
    group.sample_size(20);
    group.bench_function("CPU time of the VMM", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| start_to_api(&kernel, &sock).1).sum())
    });
    group.bench_function("wall time", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| start_to_api(&kernel, &sock).0).sum())
    });
    group.finish();
}

fn latency(c: &mut Criterion) {
    if !common::kvm_available() {
        return;
    }
    let kernel = common::guest("halt");
    let sock = sock("bench-api");
    let mut vmm = Command::new(VMM)
        .args(["run", "--serial", "none", "--kernel"])
        .arg(&kernel)
        .arg("--api-sock")
        .arg(&sock)
        .spawn()
        .expect("mempart-vmm starts");
    let started = Instant::now();
    while vmm::ctl::request(&sock, "GET", "/vm", "").is_err() {
        assert!(started.elapsed() < common::GUARD, "the API never answered");
        std::hint::spin_loop();
    }
    let mut group = c.benchmark_group("api request, fresh connection");
    for (name, path) in [
        ("GET /vm", "/vm"),
        ("GET partition metrics", "/partition/mem/sysram/sys"),
        ("GET /metrics", "/metrics"),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| vmm::ctl::request(&sock, "GET", path, "").expect("answer"))
        });
    }
    group.finish();
    vmm.kill().expect("kill");
    vmm.wait().expect("wait");
}

/// Criterion's macros generate the undocumented entry points.
#[allow(missing_docs)]
mod entry {
    criterion::criterion_group!(benches, super::start, super::latency);
}

criterion_main!(entry::benches);
