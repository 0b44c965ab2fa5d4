//! The `mempart-vmm` command: `run` boots a guest, `check` validates a topology.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mempart::topology::Topology;
use mempart::{ClassSpec, Credential, Engine, UNLIMITED};
use protocol::cli::{
    human, parse_mode, parse_owner, render_class, render_entries, render_objects, render_partition,
    NodeVerb,
};
use vmm::config::{parse_class, parse_serial, with_sysram};
use vmm::memory::ClassBacking;
use vmm::reclaim::{ReclaimState, ReclaimStatus};
use vmm::{Vm, VmConfig};

/// A minimal KVM VMM whose guest memory is split into memory classes governed by
/// hierarchical partitions.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest kernel. Exit codes: 0 the guest shut down (an i8042 reset, as
    /// `reboot=k` does), 1 the VMM failed, 2 bad arguments, 3 the guest crashed.
    Run(RunArgs),
    /// Query or reshape a running VM through its host API (`run --api-sock`).
    Ctl {
        /// The API socket.
        #[arg(long)]
        api_sock: PathBuf,
        /// Print the API's JSON as it is.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        verb: Verb,
    },
    /// Validate a topology against the classes without booting and print the accounting
    /// table, or every violated rule (exit code 1).
    Check {
        /// Partition topology (TOML).
        #[arg(long)]
        topology: PathBuf,
        /// A memory class, as for `run`.
        #[arg(long = "class", value_name = "SPEC")]
        classes: Vec<String>,
    },
}

/// What `run` takes, from the command line; each also has a key in `--config`.
#[derive(clap::Args, Default)]
struct RunArgs {
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

#[derive(Subcommand)]
enum Verb {
    /// The configuration the VM runs with.
    Config,
    /// The VM: backend, classes, where they sit, what is granted.
    Vm,
    /// List a class, partition or group.
    Ls {
        /// The path (default /partition/mem).
        path: Option<String>,
    },
    /// A partition's or class's metrics.
    Stat {
        /// The path.
        path: String,
        /// Print the highest size and reset it to the current one.
        #[arg(long)]
        reset_highest: bool,
    },
    /// Create a partition (host authority).
    Create {
        /// The path.
        path: String,
        /// Reserved minimum (e.g. 64M).
        #[arg(long)]
        min: Option<String>,
        /// Maximum (e.g. 128M).
        #[arg(long)]
        max: Option<String>,
        /// Mode bits, octal.
        #[arg(long)]
        mode: Option<String>,
    },
    /// Change a partition's limits at once (a max below use is refused: see `reclaim`).
    /// Raising a sysram max deflates the balloon by what reclaims put in it.
    Set {
        /// The path.
        path: String,
        /// New minimum.
        #[arg(long)]
        min: Option<String>,
        /// New maximum.
        #[arg(long)]
        max: Option<String>,
    },
    /// Lower a partition's max below its use and follow the guest giving memory back,
    /// printing progress. Exit code 0 when use fits (done, or typed extents revoked at
    /// the deadline), 1 when it expired (the old max stays) or was abandoned.
    Reclaim {
        /// The path.
        path: String,
        /// The new maximum (e.g. 64M).
        max: String,
        /// How long the guest has, in seconds (at most 3600).
        #[arg(long, default_value_t = 30.0)]
        deadline: f64,
    },
    /// Follow a partition's or class's events, one JSON object per line, until it is
    /// destroyed or you press Ctrl-C.
    Events {
        /// The path.
        path: String,
    },
    #[command(flatten)]
    Node(NodeVerb),
    /// Shared-memory objects: `ls` lists them with their partition and size, `stat NAME`
    /// shows one (with how many processes map it), `unlink NAME` removes its name (its
    /// memory goes once no process maps it).
    Shm {
        /// ls, stat or unlink.
        action: String,
        /// The object, for stat and unlink.
        name: Option<String>,
    },
    /// Prometheus metrics.
    Metrics,
    /// The balloon's figures; --target sets its target in 4 KiB pages.
    Balloon {
        /// New target.
        #[arg(long)]
        target: Option<u32>,
    },
}

fn ctl(sock: &std::path::Path, json: bool, verb: Verb) -> anyhow::Result<ExitCode> {
    use vmm::ctl::{encode_path as encode, request};
    let size = |s: &Option<String>| -> anyhow::Result<Option<u64>> {
        s.as_deref()
            .map(|t| mempart::topology::parse_size(t).map_err(anyhow::Error::msg))
            .transpose()
    };
    let (method, path, body) = match &verb {
        Verb::Vm => ("GET", "/vm".to_string(), String::new()),
        Verb::Config => ("GET", "/config".to_string(), String::new()),
        Verb::Ls { path } => (
            "GET",
            format!(
                "{}?list",
                encode(path.as_deref().unwrap_or(mempart::MEM_ROOT))
            ),
            String::new(),
        ),
        Verb::Stat {
            path,
            reset_highest: false,
        } => ("GET", encode(path), String::new()),
        Verb::Stat {
            path,
            reset_highest: true,
        } => (
            "PATCH",
            encode(path),
            serde_json::json!({ "reset_highest": true }).to_string(),
        ),
        Verb::Create {
            path,
            min,
            max,
            mode,
        } => {
            let mode = mode
                .as_deref()
                .map(parse_mode)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let body = serde_json::json!({ "min": size(min)?, "max": size(max)?, "mode": mode });
            ("POST", encode(path), body.to_string())
        }
        Verb::Set { path, min, max } => {
            let body = serde_json::json!({ "min": size(min)?, "max": size(max)? });
            ("PATCH", encode(path), body.to_string())
        }
        Verb::Reclaim {
            path,
            max,
            deadline,
        } => return reclaim(sock, json, path, max, *deadline),
        Verb::Events { path } => {
            vmm::ctl::follow_events(sock, path, |line| {
                println!("{line}");
                true
            })?;
            return Ok(ExitCode::SUCCESS);
        }
        Verb::Node(NodeVerb::Destroy { path }) => ("DELETE", encode(path), String::new()),
        Verb::Node(NodeVerb::Chmod { mode, path }) => {
            let mode = parse_mode(mode).map_err(anyhow::Error::msg)?;
            let body = serde_json::json!({ "mode": mode });
            ("PATCH", encode(path), body.to_string())
        }
        Verb::Node(NodeVerb::Chown { owner, path }) => {
            let owner = parse_owner(owner).map_err(anyhow::Error::msg)?;
            let body = serde_json::json!({ "uid": owner.uid, "gid": owner.gid });
            ("PATCH", encode(path), body.to_string())
        }
        Verb::Node(NodeVerb::Policy {
            path,
            policy,
            clear,
        }) => {
            let (policy, set) =
                protocol::cli::parse_policy_change(policy, *clear).map_err(anyhow::Error::msg)?;
            let field = if set { "policy" } else { "clear_policy" };
            let mut body = serde_json::Map::new();
            body.insert(field.into(), serde_json::to_value(policy)?);
            (
                "PATCH",
                encode(path),
                serde_json::Value::Object(body).to_string(),
            )
        }
        Verb::Node(NodeVerb::Pseudo { pseudo, target }) => (
            "POST",
            encode(pseudo),
            serde_json::json!({ "link": target }).to_string(),
        ),
        Verb::Metrics => ("GET", "/metrics".to_string(), String::new()),
        Verb::Shm { action, name } => match (action.as_str(), name) {
            ("ls", None) => ("GET", "/objects".to_string(), String::new()),
            ("stat", Some(name)) => ("GET", format!("/objects/{}", encode(name)), String::new()),
            ("unlink", Some(name)) => (
                "DELETE",
                format!("/objects/{}", encode(name)),
                String::new(),
            ),
            _ => anyhow::bail!("shm: give `ls`, `stat NAME` or `unlink NAME`"),
        },
        Verb::Balloon { target: Some(t) } => (
            "PUT",
            "/balloon".to_string(),
            serde_json::json!({ "target_pages": t }).to_string(),
        ),
        Verb::Balloon { target: None } => ("GET", "/balloon".to_string(), String::new()),
    };
    let answer = request(sock, method, &path, &body)?;
    if json || matches!(verb, Verb::Metrics) {
        println!("{}", answer.trim_end());
        return Ok(ExitCode::SUCCESS);
    }
    let value: serde_json::Value = serde_json::from_str(&answer)?;
    match (&verb, &value) {
        (Verb::Ls { .. }, serde_json::Value::Array(_)) => {
            let entries: Vec<mempart::DirEntry> = serde_json::from_value(value)?;
            print!("{}", render_entries(&entries));
        }
        (Verb::Shm { .. }, serde_json::Value::Array(_)) => {
            let objects: Vec<mempart::ObjectInfo> = serde_json::from_value(value)?;
            print!("{}", render_objects(&objects));
        }
        (Verb::Shm { .. }, serde_json::Value::Object(_)) if value.get("id").is_some() => {
            let object: mempart::ObjectInfo = serde_json::from_value(value)?;
            print!("{}", render_objects(&[object]));
        }
        (
            Verb::Stat {
                reset_highest: true,
                ..
            },
            _,
        ) => {
            let old = value.get("highest").and_then(serde_json::Value::as_u64);
            let old = old.context("the answer names no highest size")?;
            println!("{:<12} {} (reset)", "highest", human(old));
        }
        (Verb::Stat { .. }, serde_json::Value::Object(_)) if value.get("path").is_some() => {
            let metrics: mempart::PartitionMetrics = serde_json::from_value(value)?;
            print!("{}", render_partition(&metrics));
        }
        (Verb::Stat { .. }, serde_json::Value::Object(_)) => {
            let metrics: mempart::ClassMetrics = serde_json::from_value(value)?;
            print!("{}", render_class(&metrics));
        }
        (_, serde_json::Value::Object(_)) => print_flat("", &value),
        _ => println!("{value}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a JSON object as `key value` lines, nested keys joined with dots
/// (`current.limits.max 25165824`), strings unquoted, lists space-separated, modes in
/// octal.
fn print_flat(prefix: &str, value: &serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                print_flat(&key, v);
            }
        }
        Value::String(s) => println!("{prefix:<24} {s}"),
        Value::Number(n) if prefix.ends_with("mode") => match n.as_u64() {
            Some(mode) => println!("{prefix:<24} {mode:o}"),
            None => println!("{prefix:<24} {n}"),
        },
        Value::Array(items) => {
            let words: Vec<String> = items
                .iter()
                .map(|i| match i {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            println!("{prefix:<24} {}", words.join(" "));
        }
        other => println!("{prefix:<24} {other}"),
    }
}

/// Starts a reclaim and prints its progress each time it moves, until it ends.
fn reclaim(
    sock: &std::path::Path,
    json: bool,
    path: &str,
    max: &str,
    deadline: f64,
) -> anyhow::Result<ExitCode> {
    use vmm::ctl::request;
    let max = mempart::topology::parse_size(max)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("max {max:?}"))?;
    if !(deadline.is_finite() && deadline > 0.0 && deadline <= 3600.0) {
        anyhow::bail!("--deadline {deadline}: give seconds between 0 and 3600");
    }
    let body = serde_json::json!({
        "max": max,
        "reclaim": true,
        "deadline_ms": (deadline * 1000.0) as u64,
    });
    let answer = request(
        sock,
        "PATCH",
        &vmm::ctl::encode_path(path),
        &body.to_string(),
    )?;
    let mut status: ReclaimStatus = serde_json::from_str(&answer)
        .with_context(|| format!("the API's answer is not a reclaim: {answer}"))?;
    let mut shown = None;
    loop {
        let moved = (status.used, status.balloon_pages, status.state);
        if shown != Some(moved) {
            if json {
                println!("{}", serde_json::to_string(&status)?);
            } else {
                println!(
                    "reclaim {} {:<9} used {:>10}  given back {:>10}  balloon +{} pages  {} ms",
                    status.id,
                    format!("{:?}", status.state).to_lowercase(),
                    size(status.used),
                    size(status.given_back),
                    status.balloon_pages,
                    status.elapsed_ms,
                );
            }
            shown = Some(moved);
        }
        let ended = match status.state {
            ReclaimState::Running => None,
            ReclaimState::Done | ReclaimState::Revoked => Some(ExitCode::SUCCESS),
            ReclaimState::Expired | ReclaimState::Abandoned => Some(ExitCode::FAILURE),
        };
        if let Some(code) = ended {
            if !json {
                println!("{}", status.message);
            }
            return Ok(code);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let answer = request(sock, "GET", &format!("/reclaim/{}", status.id), "")?;
        status = serde_json::from_str(&answer)
            .with_context(|| format!("the API's answer is not a reclaim: {answer}"))?;
    }
}

fn classes(args: &[String]) -> anyhow::Result<Vec<ClassBacking>> {
    let parsed = args
        .iter()
        .map(|a| parse_class(a))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(with_sysram(parsed)?)
}

fn size(bytes: u64) -> String {
    if bytes == UNLIMITED {
        return "unlimited".to_string();
    }
    const UNITS: [(u64, &str); 3] = [(1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
    for (unit, suffix) in UNITS {
        if bytes >= unit && bytes % unit == 0 {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// Prints every class (with the host bytes backing it, where `resident` knows them) and
/// then every partition, depth-first.
fn print_table(
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
            size(c.size),
            size(c.allocated),
            size(c.reserved_unused),
            size(c.free),
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
                size(m.current.limits.min),
                size(m.current.limits.max),
                size(m.used),
                size(m.charge),
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

fn check(topology: PathBuf, class_args: &[String]) -> anyhow::Result<ExitCode> {
    let classes = classes(class_args)?;
    let text = std::fs::read_to_string(&topology)
        .with_context(|| format!("topology {}", topology.display()))?;
    let specs: Vec<ClassSpec> = classes
        .iter()
        .map(|c| ClassSpec::new(c.name.clone(), c.size))
        .collect();
    let built = Topology::parse(&text)
        .map_err(|e| vec![e])
        .and_then(|t| t.build(&specs));
    match built {
        Ok(engine) => {
            print_table(&engine, &std::collections::HashMap::new())?;
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for e in errors {
                eprintln!("mempart-vmm: {}: {e}", topology.display());
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check { topology, classes } => check(topology, &classes),
        Command::Ctl {
            api_sock,
            json,
            verb,
        } => ctl(&api_sock, json, verb),
        Command::Run(args) => {
            let run = args.effective()?;
            let config = VmConfig {
                kernel: run.kernel.clone(),
                initrd: run.initrd.clone(),
                cmdline: run.cmdline.clone(),
                cpus: run.cpus,
                classes: classes(&run.classes)?,
                topology: run.topology.clone(),
                serial: parse_serial(&run.serial)?,
                kvm_device: run.kvm.clone(),
                agent_end: vmm::config::AgentEnd::Service,
            };
            let (report, api_sock) = (run.report, run.api_sock.clone());
            let effective = serde_json::to_value(&run)?;
            let started = std::time::Instant::now();
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
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mempart-vmm: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
