//! `mempart-vmm ctl`: each verb as a request to the host API, and its answer printed as
//! `mpctl` prints the same thing.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use protocol::cli::{
    human, parse_mode, parse_owner, render_class, render_entries, render_objects, render_partition,
    NodeVerb,
};
use vmm::reclaim::{ReclaimState, ReclaimStatus};

/// What `ctl` asks the API.
#[derive(Subcommand)]
pub enum Verb {
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
        /// Back it with a zone: a guest NUMA node whose plugged memory follows the max, so
        /// its processes cannot hold more (top-level sysram partitions with a finite max;
        /// zones are declared when the VM starts).
        #[arg(long)]
        zone: bool,
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
    /// A zone's figures (every zone's without NAME); with SIZE, asks the guest to have
    /// SIZE plugged and follows its driver until it has, or the deadline passes.
    Zone {
        /// The zone.
        name: Option<String>,
        /// Bytes to have plugged (e.g. 64M; a multiple of the zone's block size).
        size: Option<String>,
        /// Seconds to wait for the guest.
        #[arg(long, default_value_t = 60.0)]
        deadline: f64,
    },
    /// The balloon's figures; --target sets its target in 4 KiB pages.
    Balloon {
        /// New target.
        #[arg(long)]
        target: Option<u32>,
    },
}

/// Sends `verb` to the API on `sock` and prints the answer (as it came with `json`).
pub fn ctl(sock: &std::path::Path, json: bool, verb: Verb) -> anyhow::Result<ExitCode> {
    use vmm::api::client::{encode_path as encode, request};
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
            zone,
        } => {
            let mode = mode
                .as_deref()
                .map(parse_mode)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let body = serde_json::json!({
                "min": size(min)?, "max": size(max)?, "mode": mode, "zone": zone,
            });
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
        Verb::Zone {
            name: Some(name),
            size: Some(size),
            deadline,
        } => return zone_resize(sock, json, name, size, *deadline),
        Verb::Zone {
            name: Some(name), ..
        } => ("GET", format!("/zone/{}", encode(name)), String::new()),
        Verb::Zone { name: None, .. } => {
            let vm: serde_json::Value = serde_json::from_str(&request(sock, "GET", "/vm", "")?)?;
            let zones = vm.get("zones").cloned().unwrap_or_default();
            if json {
                println!("{zones}");
            } else {
                for zone in zones.as_array().into_iter().flatten() {
                    print_zone(zone);
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        Verb::Events { path } => {
            vmm::api::client::follow_events(sock, path, |line| {
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

/// Parses the size argument `what` and checks `--deadline` (seconds, at most an hour).
fn size_and_deadline(what: &str, size: &str, deadline: f64) -> anyhow::Result<u64> {
    let bytes = mempart::topology::parse_size(size)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("{what} {size:?}"))?;
    if !(deadline.is_finite() && deadline > 0.0 && deadline <= 3600.0) {
        anyhow::bail!("--deadline {deadline}: give seconds between 0 and 3600");
    }
    Ok(bytes)
}

/// Prints a zone's figures on one line, with the partition it backs if any.
fn print_zone(zone: &serde_json::Value) {
    let bytes = |key: &str| {
        human(
            zone.get(key)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
        )
    };
    let partition = zone
        .get("partition")
        .and_then(serde_json::Value::as_str)
        .map(|p| format!("  backs {p}"))
        .unwrap_or_default();
    println!(
        "zone {} node {}  size {}  requested {}  plugged {}  resident {}{partition}",
        zone.get("name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("?"),
        zone.get("node")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0),
        bytes("size"),
        bytes("requested"),
        bytes("plugged"),
        bytes("resident"),
    );
}

/// Sets a zone's requested size and prints its figures each time they move, until the
/// guest has plugged that much or `deadline` seconds pass.
fn zone_resize(
    sock: &std::path::Path,
    json: bool,
    name: &str,
    size: &str,
    deadline: f64,
) -> anyhow::Result<ExitCode> {
    use vmm::api::client::{encode_path, request};
    let bytes = size_and_deadline("size", size, deadline)?;
    let path = format!("/zone/{}", encode_path(name));
    request(
        sock,
        "PATCH",
        &path,
        &serde_json::json!({ "requested": bytes }).to_string(),
    )?;
    let started = std::time::Instant::now();
    let mut shown = None;
    loop {
        let zone: serde_json::Value = serde_json::from_str(&request(sock, "GET", &path, "")?)?;
        let figure = |key: &str| zone.get(key).and_then(serde_json::Value::as_u64);
        let moved = (figure("plugged"), figure("resident"));
        if shown != Some(moved) {
            if json {
                println!("{zone}");
            } else {
                print_zone(&zone);
            }
            shown = Some(moved);
        }
        if figure("plugged") == Some(bytes) {
            if !json {
                println!("done: zone {name} has {} plugged", human(bytes));
            }
            return Ok(ExitCode::SUCCESS);
        }
        if started.elapsed().as_secs_f64() >= deadline {
            if !json {
                println!(
                    "expired: the guest plugged {} of the {} asked within {deadline} s",
                    human(figure("plugged").unwrap_or(0)),
                    human(bytes)
                );
            }
            return Ok(ExitCode::FAILURE);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
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
    use vmm::api::client::request;
    let max = size_and_deadline("max", max, deadline)?;
    let body = serde_json::json!({
        "max": max,
        "reclaim": true,
        "deadline_ms": (deadline * 1000.0) as u64,
    });
    let answer = request(
        sock,
        "PATCH",
        &vmm::api::client::encode_path(path),
        &body.to_string(),
    )?;
    let mut status: ReclaimStatus = serde_json::from_str(&answer)
        .with_context(|| format!("the API's answer is not a reclaim: {answer}"))?;
    let mut shown = None;
    loop {
        let moved = (
            status.used,
            status.balloon_pages,
            status.zone_plugged,
            status.state,
        );
        if shown != Some(moved) {
            if json {
                println!("{}", serde_json::to_string(&status)?);
            } else {
                let back_to_host = match (status.zone_plugged, status.zone_host_resident) {
                    (Some(plugged), Some(resident)) => format!(
                        "zone plugged {}  host-resident {}",
                        human(plugged),
                        human(resident)
                    ),
                    _ => format!("balloon +{} pages", status.balloon_pages),
                };
                println!(
                    "reclaim {} {:<9} used {:>10}  given back {:>10}  {back_to_host}  {} ms",
                    status.id,
                    format!("{:?}", status.state).to_lowercase(),
                    human(status.used),
                    human(status.given_back),
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
