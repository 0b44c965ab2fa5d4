//! The `mempart-vmm` command as a user meets it: bad input gets one line naming the
//! culprit and a non-zero exit, never a panic; `check` prints the accounting or every rule.

// Test helpers fail the test loudly with the reason.
#![allow(clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{guest, kvm_available, KillOnDrop};

const VMM: &str = env!("CARGO_BIN_EXE_mempart-vmm");

fn tmp(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

fn vmm<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(VMM)
        .args(args)
        .output()
        .expect("mempart-vmm runs")
}

/// Asserts a failure with exit code 1 and exactly one stderr line containing `needle`.
fn fails_naming<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S], needle: &str) {
    let out = vmm(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
    let line = lines.first().copied().unwrap_or_default();
    assert!(line.starts_with("mempart-vmm: error: "), "{stderr}");
    assert!(line.contains(needle), "{args:?}: {stderr} lacks {needle:?}");
}

#[test]
fn bad_kernels_are_named() {
    if !kvm_available() {
        return;
    }
    fails_naming(
        &["run", "--kernel", "/nonexistent/vmlinux"],
        "/nonexistent/vmlinux",
    );
    let garbage = tmp("garbage.bin");
    std::fs::write(&garbage, vec![0x5au8; 100_000]).expect("write");
    let g = garbage.to_str().expect("utf-8");
    fails_naming(
        &["run", "--kernel", g],
        "not a loadable ELF vmlinux or bzImage",
    );
    let whole = std::fs::read(guest("smp")).expect("read");
    let truncated = tmp("truncated.elf");
    std::fs::write(&truncated, &whole[..200]).expect("write");
    let t = truncated.to_str().expect("utf-8");
    fails_naming(&["run", "--kernel", t], t);
}

#[test]
fn bad_classes_cpus_and_devices_are_named() {
    let kernel = guest("smp");
    let k = kernel.to_str().expect("utf-8");
    let run = |extra: &[&'static str]| -> Vec<String> {
        let mut args: Vec<String> = ["run", "--kernel", k]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    fails_naming(&run(&["--class", "fast=0"]), "--class \"fast=0\"");
    fails_naming(&run(&["--class", "fast=4097"]), "--class \"fast=4097\"");
    fails_naming(
        &run(&["--class", "fast=1M", "--class", "fast=2M"]),
        "\"fast\" is given twice",
    );
    fails_naming(&run(&["--serial", "tcp:9"]), "--serial \"tcp:9\"");
    fails_naming(&run(&["--kvm", "/nonexistent/kvm"]), "/nonexistent/kvm");
    fails_naming(&run(&["--kvm", "/dev/null"]), "/dev/null");
    fails_naming(&run(&["--zone", "db=100M"]), "--zone \"db=100M\"");
    fails_naming(
        &run(&["--zone", "db=128M", "--zone", "db=256M"]),
        "--zone \"db\" is given twice",
    );
    if kvm_available() {
        fails_naming(&run(&["--zone", "db=63G"]), "64 GiB");
        fails_naming(&run(&["--class", "fast=63G"]), "64 GiB");
        fails_naming(&run(&["--class", "sysram=100T"]), "64 GiB");
        fails_naming(&run(&["--cpus", "0"]), "--cpus 0");
        fails_naming(&run(&["--cpus", "100000"]), "--cpus 100000");
    }
}

#[test]
fn a_topology_that_breaks_a_rule_stops_run_before_boot() {
    let topology = tmp("broken.toml");
    std::fs::write(
        &topology,
        "[[partition]]\npath = \"/partition/mem/fast/a\"\nmin = \"2M\"\n",
    )
    .expect("write");
    let t = topology.to_str().expect("utf-8");
    fails_naming(
        &[
            "run",
            "--kernel",
            "/nonexistent",
            "--class",
            "fast=1M",
            "--topology",
            t,
        ],
        "ENOMEM",
    );
}

#[test]
fn a_clean_guest_exits_0_and_a_crashing_one_3() {
    if !kvm_available() {
        return;
    }
    let smp = guest("smp");
    let out = vmm(&["run", "--kernel", smp.to_str().expect("utf-8")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "guest: cpus seen 0x0000000000000001\n"
    );
    let crash = guest("crash");
    let out = vmm(&["run", "--kernel", crash.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("guest stopped"));
}

#[test]
fn the_startup_trace_names_each_step_in_order_and_is_off_by_default() {
    if !kvm_available() {
        return;
    }
    let bench = guest("bench");
    let args = ["run", "--kernel", bench.to_str().expect("utf-8")];
    let quiet = vmm(&args);
    assert_eq!(quiet.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("startup"));

    let spawned = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after the epoch")
        .as_nanos();
    let out = Command::new(VMM)
        .args(args)
        .env("MEMPART_STARTUP_TRACE", "1")
        .env("MEMPART_SPAWN_NS", spawned.to_string())
        .output()
        .expect("mempart-vmm runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(quiet.stdout, out.stdout, "the trace stays off the console");
    let steps: Vec<(f64, &str)> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("mempart-vmm: startup"))
        .map(|l| {
            let (ms, step) = l.trim_start().split_once(" ms  ").expect("time, step");
            (ms.parse().expect("milliseconds"), step)
        })
        .collect();
    let names: Vec<&str> = steps.iter().map(|(_, step)| *step).collect();
    assert_eq!(
        names,
        [
            "main",
            "arguments parsed",
            "VM created",
            "memory registered",
            "split irqchip enabled",
            "kernel loaded",
            "device back-ends opened",
            "devices attached, boot structures written",
            "vCPUs created",
            "vCPU 0 thread running",
            "first guest exit (POST port)",
            "guest exit seen by the event loop",
            "threads joined",
            // The guest's writes: its POST mark, 19 characters, the reset.
            "vCPU exits: 21 port writes, 0 port reads, 0 MMIO reads, 0 MMIO writes (0 queue notifications), 0 halts",
            "exiting",
        ],
        "{stderr}"
    );
    assert!(
        steps.windows(2).all(|w| w[0].0 <= w[1].0),
        "times go forward from the spawn: {stderr}"
    );
}

/// Runs `check` on a topology written to `name`, with one class.
fn check(name: &str, topology: &str, class: &str) -> Output {
    let path = tmp(name);
    std::fs::write(&path, topology).expect("write");
    vmm(&[
        "check",
        "--topology",
        path.to_str().expect("utf-8"),
        "--class",
        class,
    ])
}

#[test]
fn check_prints_the_accounting_or_every_violated_rule() {
    let out = check(
        "good.toml",
        "[[partition]]\npath = \"/partition/mem/fast/a\"\nmin = \"32M\"\nmax = \"32M\"\n\
         [[partition]]\npath = \"/partition/mem/fast/a/b\"\nmax = \"8M\"\n",
        "fast=128M",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fast = stdout
        .lines()
        .find(|l| l.starts_with("fast "))
        .expect("a fast row");
    assert_eq!(
        fast.split_whitespace().collect::<Vec<_>>(),
        vec!["fast", "128M", "0", "32M", "96M", "-"],
        "check runs no guest, so nothing is resident"
    );
    let a = stdout
        .lines()
        .find(|l| l.starts_with("/partition/mem/fast/a "))
        .expect("row a");
    assert!(a.contains("Sandbox"), "{a}");
    assert!(stdout.contains("/partition/mem/fast/a/b"));

    let out = check(
        "bad.toml",
        "[[partition]]\npath = \"/partition/mem/fast/a\"\nmin = \"8M\"\nmax = \"4M\"\n\
         [[partition]]\npath = \"/partition/mem/nope/b\"\n",
        "fast=16M",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
    assert!(
        stderr.contains("EINVAL") && stderr.contains("ENOENT"),
        "{stderr}"
    );
}

#[test]
fn a_class_can_live_in_a_file_and_hugepages_either_work_or_are_named() {
    if !kvm_available() {
        return;
    }
    let kernel = guest("smp");
    let k = kernel.to_str().expect("utf-8");
    let backing = tmp("fast.class");
    let _ = std::fs::remove_file(&backing);
    let class = format!("fast=1M,file={}", backing.display());
    let out = vmm(&["run", "--kernel", k, "--class", &class]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::metadata(&backing).map(|m| m.len()).ok(),
        Some(1 << 20)
    );

    let out = vmm(&["run", "--kernel", k, "--class", "huge=2M,hugepages"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {}
        Some(1) => assert!(stderr.contains("class huge"), "{stderr}"),
        other => panic!("exit {other:?}: {stderr}"),
    }
}

/// A child process killed when the test ends, passed or failed.
#[test]
fn ctl_queries_and_reshapes_a_running_vm() {
    if !kvm_available() {
        return;
    }
    use std::io::{BufRead, BufReader};
    let kernel = guest("wait");
    let sock = tmp(&format!("ctl-{}.sock", std::process::id()));
    let config = tmp(&format!("ctl-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "classes = [\"fast=16M\", \"class 1=8M\"]\ncpus = 1\napi_sock = {:?}\n",
            sock.display().to_string()
        ),
    )
    .expect("config");
    let mut vm = KillOnDrop(
        Command::new(VMM)
            .args(["run", "--config"])
            .arg(&config)
            .arg("--kernel")
            .arg(&kernel)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("mempart-vmm runs"),
    );
    let mut line = String::new();
    BufReader::new(vm.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the guest speaks");
    assert_eq!(line, "guest: waiting\n");
    let s = sock.to_str().expect("utf-8");
    let ctl = |args: &[&str]| {
        let mut all = vec!["ctl", "--api-sock", s];
        all.extend_from_slice(args);
        vmm(&all)
    };
    let out = ctl(&[
        "create",
        "/partition/mem/fast/x",
        "--min",
        "4M",
        "--max",
        "4M",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ctl(&["ls", "/partition/mem/fast"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "sys/\nx/\n");
    let out = ctl(&["stat", "/partition/mem/fast/x"]);
    let stat = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |key: &str| {
        stat.lines()
            .find_map(|l| l.strip_prefix(key).filter(|rest| rest.starts_with(' ')))
            .map(str::trim)
    };
    assert_eq!(field("type"), Some("Sandbox"), "{stat}");
    assert_eq!(field("mode"), Some("755 0:0"), "{stat}");
    assert_eq!(field("max"), Some("4M"), "{stat}");
    let out = ctl(&["metrics"]);
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("mempart_class_free_bytes{class=\"fast\"} 12582912"));
    let out = ctl(&["destroy", "/partition/mem/sysram/sys"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("403") && stderr.contains("EPERM"),
        "{stderr}"
    );
    let out = ctl(&["--json", "config"]);
    let effective: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        effective["classes"],
        serde_json::json!(["fast=16M", "class 1=8M"])
    );
    assert_eq!(effective["kernel"], kernel.to_str().expect("utf-8"));
    assert_eq!(effective["cmdline"], "console=ttyS0 reboot=k panic=-1");
    let out = ctl(&["create", "/partition/mem/fast/y", "--max", "8M"]);
    assert_eq!(out.status.code(), Some(0));
    let mut events = Command::new(VMM)
        .args(["ctl", "--api-sock", s, "events", "/partition/mem/fast/y"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ctl events runs");
    let mut events_out = BufReader::new(events.stdout.take().expect("stdout"));
    let mut next_event = || {
        let mut line = String::new();
        events_out.read_line(&mut line).expect("an event line");
        serde_json::from_str::<serde_json::Value>(&line).expect("event json")
    };
    assert_eq!(next_event()["subscribed"], "/partition/mem/fast/y");
    let out = ctl(&["reclaim", "/partition/mem/fast/y", "2M", "--deadline", "5"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.starts_with("reclaim 1 done"), "{stdout}");
    assert_eq!(next_event()["kind"], "config_changed");
    let out = ctl(&["reclaim", "/partition/mem/fast/y", "1M", "--deadline", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--deadline 0"));
    let out = ctl(&["destroy", "/partition/mem/fast/y"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(next_event()["kind"], "destroyed");
    assert!(events.wait().expect("ctl events ends").success());
    for args in [
        &["chmod", "750", "/partition/mem/fast/x"][..],
        &["chown", "1000:100", "/partition/mem/fast/x"],
        &["policy", "/partition/mem/fast/x", "terminal"],
        &["create", "/partition/mem/team"],
        &[
            "pseudo",
            "/partition/mem/team/fast",
            "/partition/mem/fast/x",
        ],
    ] {
        let out = ctl(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = ctl(&["--json", "stat", "/partition/mem/fast/x"]);
    let x: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        x["current"]["perm"],
        serde_json::json!({ "uid": 1000, "gid": 100, "mode": 0o750 })
    );
    assert_eq!(x["current"]["policies"]["terminal"], true);
    let out = ctl(&["ls", "/partition/mem/team"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "fast -> /partition/mem/fast/x\n"
    );
    let out = ctl(&["policy", "/partition/mem/fast/x", "sticky"]);
    assert_eq!(out.status.code(), Some(1), "an unknown policy is refused");
    let out = ctl(&["chown", "1000", "/partition/mem/fast/x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("UID:GID"));
    let out = ctl(&["balloon", "--target", "128"]);
    assert_eq!(out.status.code(), Some(0));
    let out = ctl(&["--json", "balloon"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"target_pages\":128"));

    // A policy cannot be cleared, however it is asked.
    for args in [
        &["policy", "/partition/mem/fast/x", "terminal", "--clear"][..],
        &["policy", "/partition/mem/fast/x", "terminal=false"],
    ] {
        let out = ctl(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "ctl {args:?}: {stderr}");
        assert!(stderr.contains("EPERM"), "ctl {args:?}: {stderr}");
    }

    // Names with spaces, in a class and a partition, all the way through.
    const BOX: &str = "/partition/mem/class 1/my box";
    let ok = |args: &[&str]| {
        let out = ctl(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(&["create", BOX, "--max", "4M"]);
    assert_eq!(ok(&["ls", "/partition/mem/class 1"]), "my box/\nsys/\n");
    assert!(ok(&["stat", BOX]).contains("/partition/mem/class 1/my box"));
    let highest = ok(&["stat", "--reset-highest", BOX]);
    assert_eq!(
        highest.split_whitespace().collect::<Vec<_>>(),
        ["highest", "0", "(reset)"]
    );
    ok(&["destroy", BOX]);
    assert_eq!(ok(&["ls", "/partition/mem/class 1"]), "sys/\n");
    // ctl sends what it is given: here a name with a percent sign, not a slash.
    ok(&["create", "/partition/mem/fast/a%2Fb"]);
    assert!(ok(&["ls", "/partition/mem/fast"]).contains("a%2Fb/"));
}

#[test]
fn a_bad_config_file_is_named() {
    let config = tmp("bad-config.toml");
    std::fs::write(&config, "kernel = \"/x\"\ncolour = \"blue\"\n").expect("write");
    let c = config.to_str().expect("utf-8");
    fails_naming(&["run", "--config", c], c);
    fails_naming(
        &["run", "--config", "/nonexistent/run.toml"],
        "/nonexistent/run.toml",
    );
    fails_naming(&["run"], "no kernel");
    let zones = tmp("zone-config.toml");
    std::fs::write(
        &zones,
        "kernel = \"/x\"\nzones = [\"db=128M,plugged=1G\"]\n",
    )
    .expect("write");
    fails_naming(
        &["run", "--config", zones.to_str().expect("utf-8")],
        "plugged=1G is more than",
    );
}
