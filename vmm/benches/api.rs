//! The host API: latency of one request on a fresh connection (as `curl --unix-socket`
//! makes it), and the time from starting `mempart-vmm run` to its API answering — in
//! CPU time the VMM process spent (the goal is ≤5 ms) and in wall time, and the VM and
//! API set-up alone in this process (no exec, no guest: on kvm_pvm the guest's first
//! entry is charged to the process as user time). The VM has
//! 128 MiB of sysram, Firecracker's default: registering guest memory with KVM costs
//! kernel time in proportion to its size.

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
    cpu(libc::RUSAGE_CHILDREN)
}

/// CPU time (user + system) of `who` (`RUSAGE_SELF` or `RUSAGE_CHILDREN`).
fn cpu(who: libc::c_int) -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the buffer it is given, which is ours and
    // large enough; `who` is one of the two valid selectors.
    let rc = unsafe { libc::getrusage(who, usage.as_mut_ptr()) };
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
        .args([
            "run",
            "--serial",
            "none",
            "--class",
            "sysram=128M",
            "--kernel",
        ])
        .arg(kernel)
        .arg("--api-sock")
        .arg(sock)
        .stdout(Stdio::null())
        .spawn()
        .expect("mempart-vmm starts");
    let wall = loop {
        if vmm::api::client::request(sock, "GET", "/vm", "").is_ok() {
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

/// In this process: creates the VM (not run, so no guest time counts) and its API,
/// until `GET /vm` is answered; returns the process's CPU time for it.
fn set_up_to_api(kernel: &Path, sock: &Path) -> Duration {
    let config = vmm::VmConfig {
        zones: Vec::new(),
        disks: Vec::new(),
        nets: Vec::new(),
        kernel: kernel.to_path_buf(),
        initrd: None,
        cmdline: String::new(),
        cpus: 1,
        classes: vmm::config::with_sysram(vec![
            vmm::config::parse_class("sysram=128M").expect("class")
        ])
        .expect("classes"),
        topology: None,
        serial: vmm::SerialOut::None,
        kvm_device: PathBuf::from("/dev/kvm"),
        agent_end: vmm::config::AgentEnd::Service,
    };
    let before = cpu(libc::RUSAGE_SELF);
    let vm = vmm::Vm::new(config).expect("vm");
    let api = vmm::api::serve(sock, vm.handle(), serde_json::json!({})).expect("api");
    vmm::api::client::request(sock, "GET", "/vm", "").expect("answer");
    let spent = cpu(libc::RUSAGE_SELF) - before;
    api.stop();
    spent
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
    group.bench_function("CPU time of VM and API set-up, in process", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| set_up_to_api(&kernel, &sock)).sum())
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
    while vmm::api::client::request(&sock, "GET", "/vm", "").is_err() {
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
            b.iter(|| vmm::api::client::request(&sock, "GET", path, "").expect("answer"))
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
