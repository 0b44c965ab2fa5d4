//! The host API over a real unix socket: every endpoint, and malformed requests getting a
//! 4xx with a JSON error while the VMM carries on.

// Test helpers fail the test loudly with the reason.
#![allow(clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::channel;

use common::{guest, kvm_available, next_line};
use vmm::{Vm, VmExit};

/// One request on a fresh connection: (status, body).
fn http(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = UnixStream::connect(sock).expect("api socket");
    // A hang is a failure, not a stuck test run.
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .expect("timeout");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).expect("write");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Follows `path`'s events on its own thread; each line arrives on the receiver.
fn event_stream(sock: &Path, path: &str) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = channel();
    let (sock, path) = (sock.to_path_buf(), path.to_string());
    std::thread::spawn(move || {
        let result =
            vmm::api::client::follow_events(&sock, &path, |line| tx.send(line.to_string()).is_ok());
        let _ = tx.send(format!("end: {result:?}"));
    });
    rx
}

/// Runs `mempart-vmm ctl` on the API at `sock`: its exit code, stdout and stderr.
fn ctl_on(sock: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mempart-vmm"))
        .arg("ctl")
        .arg("--api-sock")
        .arg(sock)
        .args(args)
        .output()
        .expect("ctl runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A VM running the `wait` guest with `classes`, its API served on `sock`.
struct ApiVm {
    handle: vmm::VmHandle,
    api: vmm::api::ApiServer,
    running: std::thread::JoinHandle<Result<VmExit, vmm::VmError>>,
}

impl ApiVm {
    fn start(sock: &Path, classes: &[&str], config: serde_json::Value) -> ApiVm {
        ApiVm::start_with_zones(sock, classes, &[], config)
    }

    fn start_with_zones(
        sock: &Path,
        classes: &[&str],
        zones: &[&str],
        config: serde_json::Value,
    ) -> ApiVm {
        let (mut vm_config, rx) = common::tiny_config(guest("wait"), 1, classes);
        vm_config.zones = zones
            .iter()
            .map(|z| vmm::config::parse_zone(z).expect("zone"))
            .collect();
        let vm = Vm::new(vm_config).expect("vm");
        let handle = vm.handle();
        let api = vmm::api::serve(sock, handle.clone(), config).expect("api");
        let running = std::thread::spawn(move || vm.run());
        assert_eq!(next_line(&rx), "guest: waiting");
        ApiVm {
            handle,
            api,
            running,
        }
    }

    /// Stops the API, lets the guest go and checks that it shut down.
    fn stop(self) {
        self.api.stop();
        self.handle
            .write_sysram(0x80000, &1u64.to_le_bytes())
            .expect("mailbox");
        assert_eq!(
            self.running.join().expect("vm thread").expect("vm ran"),
            VmExit::Reset
        );
    }
}

#[test]
fn every_endpoint_and_malformed_requests() {
    if !kvm_available() {
        return;
    }
    let sock =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("api-{}.sock", std::process::id()));
    let vm = ApiVm::start(
        &sock,
        &["sysram=64M", "fast=16M"],
        serde_json::json!({ "cpus": 1 }),
    );
    let handle = vm.handle.clone();

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "only the VMM's user reaches its API");

    // A client that sends its headers and holds the body back stalls nobody else.
    let padded = format!("{:<60000}", r#"{"target_pages": 3}"#);
    let mut slow = UnixStream::connect(&sock).expect("api socket");
    let head = format!(
        "PUT /balloon HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        padded.len()
    );
    slow.write_all(head.as_bytes()).expect("write");
    slow.write_all(&padded.as_bytes()[..100]).expect("write");
    let (status, body) = http(&sock, "GET", "/vm", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(http(&sock, "GET", "/metrics", "").0, 200);
    slow.write_all(&padded.as_bytes()[100..]).expect("write");
    let mut late = String::new();
    slow.read_to_string(&mut late).expect("read");
    assert!(late.starts_with("HTTP/1.1 200"), "{late}");
    assert_eq!(handle.balloon().status().target_pages, 3);

    let vm_info: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(vm_info["classes"][0]["name"], "fast");
    assert_eq!(vm_info["classes"][0]["base"], 4u64 << 30);
    assert!(
        vm_info["sysram_resident"].as_u64().is_some_and(|r| r > 0),
        "the guest's code is resident: {vm_info}"
    );
    assert_eq!(
        http(&sock, "GET", "/config", ""),
        (200, r#"{"cpus":1}"#.to_string())
    );

    assert_eq!(
        http(
            &sock,
            "POST",
            "/partition/mem/fast/box",
            r#"{"min": 4194304, "max": 4194304}"#
        )
        .0,
        200
    );
    let (status, body) = http(&sock, "GET", "/partition/mem/fast/box", "");
    assert_eq!(status, 200);
    let m: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(m["kind"], "sandbox");
    let (status, body) = http(&sock, "GET", "/partition/mem/fast", "");
    assert_eq!(
        (
            status,
            serde_json::from_str::<serde_json::Value>(&body).expect("json")["free"].clone()
        ),
        (200, (12u64 << 20).into())
    );
    let (status, body) = http(&sock, "GET", "/partition/mem/fast?list", "");
    assert_eq!(status, 200);
    assert!(
        body.contains("\"box\"") && body.contains("\"sys\""),
        "{body}"
    );
    let events = event_stream(&sock, "/partition/mem/fast/box");
    assert_eq!(
        next_line(&events),
        r#"{"subscribed":"/partition/mem/fast/box"}"#
    );
    let (status, body) = http(
        &sock,
        "PATCH",
        "/partition/mem/fast/box",
        r#"{"max": 8388608}"#,
    );
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"deflated_pages":0,"outcome":"applied"}"#)
    );
    let event: serde_json::Value = serde_json::from_str(&next_line(&events)).expect("event json");
    assert_eq!(
        (event["seq"].clone(), event["kind"].clone()),
        (1.into(), "config_changed".into())
    );

    assert_eq!(
        http(
            &sock,
            "POST",
            "/partition/mem/fast/r",
            r#"{"max": 8388608}"#
        )
        .0,
        200
    );
    let (status, body) = http(
        &sock,
        "PATCH",
        "/partition/mem/fast/r",
        r#"{"max": 1048576, "reclaim": true, "deadline_ms": 5000}"#,
    );
    assert_eq!(status, 202, "{body}");
    let reclaim: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(reclaim["state"], "done", "nothing to give back: {body}");
    let id = reclaim["id"].as_u64().expect("id");
    let (status, body) = http(&sock, "GET", &format!("/reclaim/{id}"), "");
    assert_eq!(
        (
            status,
            serde_json::from_str::<serde_json::Value>(&body).expect("json")
        ),
        (200, reclaim.clone())
    );
    let (status, body) = http(&sock, "GET", "/reclaim", "");
    assert_eq!(
        (
            status,
            serde_json::from_str::<serde_json::Value>(&body).expect("json")
        ),
        (200, serde_json::json!([reclaim]))
    );
    let (_, body) = http(&sock, "GET", "/partition/mem/fast/r", "");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).expect("json")["current"]["limits"]["max"],
        1u64 << 20
    );

    let (status, metrics) = http(&sock, "GET", "/metrics", "");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("# TYPE mempart_class_free_bytes gauge"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "mempart_class_free_bytes{{class=\"fast\"}} {}",
            12u64 << 20
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "mempart_partition_min_bytes{class=\"fast\",path=\"/partition/mem/fast/box\"} 4194304"
        ),
        "{metrics}"
    );
    let scrape = prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text");
    let sample_lines = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty());
    assert_eq!(
        scrape.samples.len(),
        sample_lines.count(),
        "every line parses as a sample"
    );
    let free = scrape
        .samples
        .iter()
        .find(|s| s.metric == "mempart_class_free_bytes" && s.labels.get("class") == Some("fast"))
        .expect("free bytes of fast");
    assert_eq!(
        free.value,
        prometheus_parse::Value::Gauge(f64::from(12u32 << 20))
    );
    let box_min = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "mempart_partition_min_bytes"
                && s.labels.get("path") == Some("/partition/mem/fast/box")
        })
        .expect("min of box");
    assert_eq!(
        box_min.value,
        prometheus_parse::Value::Gauge(f64::from(4u32 << 20))
    );
    let resident = |class: &str| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "mempart_class_resident_bytes" && s.labels.get("class") == Some(class)
            })
            .map(|s| s.value.clone())
    };
    assert_eq!(
        resident("fast"),
        handle
            .resident("fast")
            .map(|r| prometheus_parse::Value::Gauge(r as f64)),
        "the waiting guest does not touch fast"
    );
    assert!(
        matches!(resident("sysram"), Some(prometheus_parse::Value::Gauge(r)) if r > 0.0),
        "{metrics}"
    );
    let violations = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "mempart_class_violations_total" && s.labels.get("class") == Some("fast")
        })
        .map(|s| s.value.clone());
    assert_eq!(
        violations,
        Some(prometheus_parse::Value::Counter(0.0)),
        "{metrics}"
    );

    assert_eq!(
        http(&sock, "PUT", "/balloon", r#"{"target_pages": 256}"#).0,
        200
    );
    let (status, body) = http(&sock, "GET", "/balloon", "");
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).expect("json")["target_pages"],
        256
    );

    for (method, path, body, want) in [
        ("POST", "/partition/mem/fast/bad", "{not json", 400),
        (
            "POST",
            "/partition/mem/fast/bad",
            r#"{"min": 1, "colour": 2}"#,
            400,
        ),
        ("POST", "/partition/mem/fast/box", "{}", 409),
        (
            "POST",
            "/partition/mem/fast/too",
            r#"{"min": 33554432}"#,
            409,
        ),
        ("GET", "/partition/mem/slow", "", 404),
        ("GET", "/nowhere", "", 404),
        ("PUT", "/vm", "", 404),
        ("PUT", "/partition/mem/fast/box", "", 405),
        ("DELETE", "/partition/mem/fast/sys", "", 403),
        ("PUT", "/balloon", r#"{"target_pages": -1}"#, 400),
        (
            "PATCH",
            "/partition/mem/fast/r",
            r#"{"min": 0, "max": 0, "reclaim": true}"#,
            400,
        ),
        (
            "PATCH",
            "/partition/mem/fast/r",
            r#"{"max": 0, "deadline_ms": 10}"#,
            400,
        ),
        ("GET", "/reclaim/99", "", 404),
        ("GET", "/reclaim/x", "", 400),
        ("GET", "/events", "", 400),
        (
            "PATCH",
            "/partition/mem/fast/r",
            r#"{"mode": 448, "max": 0}"#,
            400,
        ),
        ("PATCH", "/partition/mem/fast/r", r#"{"uid": 1}"#, 400),
        (
            "PATCH",
            "/partition/mem/fast/r",
            r#"{"policy": "sticky"}"#,
            400,
        ),
        ("PATCH", "/partition/mem/fast/r", r#"{"mode": 4096}"#, 400),
        (
            "POST",
            "/partition/mem/fast/r/p",
            r#"{"link": "/partition/mem/fast/r", "min": 1}"#,
            400,
        ),
        ("GET", "/events?path=/partition/mem/fast/nope", "", 404),
    ] {
        let (status, body) = http(&sock, method, path, body);
        assert_eq!(status, want, "{method} {path}: {body}");
        let err: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
        assert!(err["error"].is_string(), "{body}");
    }
    let huge = "x".repeat(vmm::api::MAX_BODY + 1);
    assert_eq!(
        http(&sock, "POST", "/partition/mem/fast/huge", &huge).0,
        413
    );
    assert_eq!(http(&sock, "DELETE", "/partition/mem/fast/box", "").0, 200);
    let event: serde_json::Value = serde_json::from_str(&next_line(&events)).expect("event json");
    assert_eq!(
        (event["seq"].clone(), event["kind"].clone()),
        (2.into(), "destroyed".into())
    );
    assert_eq!(
        next_line(&events),
        "end: Ok(())",
        "the stream ends with its partition"
    );
    assert_eq!(http(&sock, "GET", "/vm", "").0, 200, "the VMM is unharmed");

    vm.stop();
    assert!(!sock.exists(), "the socket goes with the server");
}

/// The OpenAPI document describes every endpoint the API serves.
#[test]
fn the_openapi_document_names_every_endpoint() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("api/openapi.yaml"))
            .expect("vmm/api/openapi.yaml");
    for (path, methods) in [
        ("/vm:", &["get:"][..]),
        ("/config:", &["get:"][..]),
        ("/metrics:", &["get:"][..]),
        ("/balloon:", &["get:", "put:"][..]),
        ("/zone/{name}:", &["get:", "patch:"][..]),
        ("/reclaim:", &["get:"][..]),
        ("/reclaim/{id}:", &["get:"][..]),
        ("/events:", &["get:"][..]),
        ("/objects:", &["get:"][..]),
        ("/objects/{name}:", &["delete:"][..]),
        (
            "/partition/mem/{path}:",
            &["get:", "post:", "patch:", "delete:"][..],
        ),
    ] {
        let at = doc
            .find(&format!("  {path}"))
            .unwrap_or_else(|| panic!("{path} missing"));
        let section = &doc[at..];
        let end = section[1..].find("\n  /").map_or(section.len(), |i| i + 1);
        for method in methods {
            assert!(section[..end].contains(method), "{path} lacks {method}");
        }
    }
}

/// Names with spaces in resource paths (percent-encoded), a decoded `/` refused, the
/// highest size reset with the old one returned, and a policy that cannot be cleared.
#[test]
fn names_with_spaces_highest_reset_and_one_way_policies() {
    if !kvm_available() {
        return;
    }
    use mempart::{Credential, Spawn};
    use protocol::{Op, Reply};
    let sock = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("api-names-{}.sock", std::process::id()));
    let vm = ApiVm::start(&sock, &["sysram=64M", "class 1=16M"], serde_json::json!({}));
    let handle = vm.handle.clone();

    const BOX: &str = "/partition/mem/class%201/my%20box";
    assert_eq!(http(&sock, "POST", BOX, r#"{"max": 4194304}"#).0, 200);
    let (status, list) = http(&sock, "GET", "/partition/mem/class%201?list", "");
    assert_eq!(status, 200, "{list}");
    let names: Vec<String> = serde_json::from_str::<serde_json::Value>(&list)
        .expect("json")
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(names, ["my box", "sys"]);
    let (status, stat) = http(&sock, "GET", BOX, "");
    assert_eq!(status, 200, "{stat}");
    let stat: serde_json::Value = serde_json::from_str(&stat).expect("json");
    assert_eq!(stat["path"], "/partition/mem/class 1/my box");

    // A process of the box allocates 1 MiB and frees it: the highest stays until reset.
    let mut client = common::agent_client(&handle);
    let root = Credential::guest_root();
    let start = Op::ProcessStart {
        pid: 9,
        parent: None,
        spawn: Spawn::SetMpart(vec!["/partition/mem/class 1/my box".into()]),
        owner: None,
    };
    assert_eq!(client.call(&root, start).expect("io"), Ok(Reply::Done));
    let alloc = Op::Allocate {
        pid: 9,
        class: "class 1".into(),
        bytes: 1 << 20,
    };
    let Ok(Reply::Granted { grant, gpa }) = client.call(&root, alloc).expect("io") else {
        panic!("no grant");
    };
    let free = Op::Free { pid: 9, grant, gpa };
    assert_eq!(client.call(&root, free).expect("io"), Ok(Reply::Done));
    let reset = r#"{"reset_highest": true}"#;
    let (status, old) = http(&sock, "PATCH", BOX, reset);
    assert_eq!((status, old), (200, r#"{"highest":1048576}"#.to_string()));
    let (_, again) = http(&sock, "PATCH", BOX, reset);
    assert_eq!(again, r#"{"highest":0}"#);

    // A shared object of the box, listed and unlinked through the API.
    let create = Op::ObjectCreate {
        pid: 9,
        class: "class 1".into(),
        name: "shared one".into(),
    };
    assert_eq!(client.call(&root, create).expect("io"), Ok(Reply::Done));
    let grow = Op::ObjectResize {
        name: "shared one".into(),
        change: protocol::SizeChange::Grow(1 << 20),
    };
    assert_eq!(client.call(&root, grow).expect("io"), Ok(Reply::Done));
    let (status, objects) = http(&sock, "GET", "/objects", "");
    assert_eq!(status, 200);
    let objects: serde_json::Value = serde_json::from_str(&objects).expect("json");
    let one = serde_json::json!({ "id": 0, "name": "shared one", "class": "class 1",
        "partition": "/partition/mem/class 1/my box", "size": 1 << 20, "owner": 0,
        "mappers": 0, "linked": true });
    assert_eq!(objects, serde_json::json!([one]));
    let (status, object) = http(&sock, "GET", "/objects/shared%20one", "");
    assert_eq!(status, 200, "{object}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&object).expect("json"),
        one
    );
    assert_eq!(http(&sock, "DELETE", "/objects/shared%20one", "").0, 200);
    assert_eq!(http(&sock, "DELETE", "/objects/shared%20one", "").0, 404);
    assert_eq!(http(&sock, "GET", "/objects", "").1, "[]");

    assert_eq!(
        http(&sock, "PATCH", BOX, r#"{"policy": "permanent"}"#).0,
        200
    );
    let (status, body) = http(&sock, "PATCH", BOX, r#"{"clear_policy": "permanent"}"#);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("EPERM"), "{body}");
    let (status, body) = http(&sock, "PATCH", BOX, r#"{"clear_policy": "terminal"}"#);
    assert_eq!(
        status, 200,
        "clearing a policy that is not set changes nothing: {body}"
    );

    for (path, decoded) in [
        ("/partition/mem/class%201/a%2Fb", "a/b"),
        ("/partition/mem/class%201/a%00b", "a\u{0}b"),
    ] {
        let (status, body) = http(&sock, "POST", path, "");
        assert_eq!(status, 400, "{path}: {body}");
        let err: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
        let message = err["error"].as_str().unwrap_or_default();
        assert!(
            message.contains("EINVAL")
                && message.contains(path)
                && message.contains(&format!("{decoded:?}")),
            "{message}"
        );
    }
    let (status, list) = http(&sock, "GET", "/partition/mem/class%201?list", "");
    assert_eq!(status, 200);
    assert!(!list.contains("a/b") && !list.contains("a%2Fb"), "{list}");
    assert_eq!(http(&sock, "DELETE", BOX, "").0, 403, "permanent");

    vm.stop();
}

/// The host's `ctl` (through the API) and the guest's `mpctl` (through the agent and the
/// agent channel's service) print the same partition, class, listing and shared objects
/// alike, character for character, and both print the API's JSON with `--json`.
#[test]
fn ctl_and_mpctl_print_the_same_partition_alike() {
    if !kvm_available() {
        return;
    }
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;
    use std::process::{Command, Stdio};
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-alike-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let api = dir.join("api.sock");
    let vm = ApiVm::start(&api, &["sysram=64M", "fast=16M"], serde_json::json!({}));
    let upstream = dir.join("service.sock");
    let listener = UnixListener::bind(&upstream).expect("bind");
    let service = vm.handle.service();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let service = service.clone();
            std::thread::spawn(move || {
                let reader = stream.try_clone().expect("clone");
                service.serve(reader, stream, vmm::service::Authority::Guest)
            });
        }
    });
    let agent_sock = dir.join("agent.sock");
    let mut agent = common::KillOnDrop(
        Command::new(common::binary("mempart-agent"))
            .arg("--upstream")
            .arg(&upstream)
            .arg("--listen")
            .arg(&agent_sock)
            .arg("--no-cgroups")
            .stdout(Stdio::piped())
            .spawn()
            .expect("agent starts"),
    );
    let mut ready = String::new();
    std::io::BufReader::new(agent.0.stdout.take().expect("stdout"))
        .read_line(&mut ready)
        .expect("agent speaks");
    assert!(ready.starts_with("mempart-agent: ready"), "{ready}");
    let run = |program: &Path, args: &[&str]| {
        let out = Command::new(program)
            .env("MPCTL_SOCKET", &agent_sock)
            .args(args)
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let mpctl = common::binary("mpctl");
    let vmm_bin = Path::new(env!("CARGO_BIN_EXE_mempart-vmm"));
    let api_arg = api.to_str().expect("utf-8");
    let ctl = |args: &[&str]| {
        let mut all = vec!["ctl", "--api-sock", api_arg];
        all.extend(args);
        run(vmm_bin, &all)
    };
    const BOX: &str = "/partition/mem/fast/my box";
    run(&mpctl, &["create", BOX, "--min", "4M", "--max", "8M"]);
    let create = format!("{} shm create ring fast --pid $$", mpctl.display());
    run(
        &mpctl,
        &["run", "--part", BOX, "--", "/bin/sh", "-c", &create],
    );
    run(&mpctl, &["shm", "grow", "ring", "2M"]);
    for args in [
        &["stat", BOX][..],
        &["stat", "/partition/mem/fast"],
        &["ls", "/partition/mem/fast"],
        &["ls", BOX],
        &["shm", "ls"],
    ] {
        let guest = run(&mpctl, args);
        assert_eq!(ctl(args), guest, "{args:?}");
        assert!(!guest.is_empty(), "{args:?}");
    }
    let stat = ctl(&["stat", BOX]);
    for line in [
        "type         GuaranteeRestricted",
        "min          4M",
        "used         2M",
        "objects      1",
    ] {
        assert!(stat.lines().any(|l| l == line), "{line:?} in\n{stat}");
    }
    let json = |out: String| serde_json::from_str::<serde_json::Value>(&out).expect("json");
    let host = json(ctl(&["--json", "stat", BOX]));
    let guest = json(run(&mpctl, &["--json", "stat", BOX]));
    assert_eq!(
        host.pointer("/current/limits/max"),
        Some(&serde_json::json!(8 << 20))
    );
    assert_eq!(
        (host.get("used"), host.get("path")),
        (guest.get("used"), guest.get("path"))
    );
    assert_eq!(
        ctl(&["stat", "--reset-highest", BOX]),
        "highest      2M (reset)\n"
    );
    drop(agent);
    vm.stop();
}

/// A zone through the API: its figures in `GET /vm`, `GET /zone/NAME` and `/metrics`;
/// `PATCH /zone/NAME` sets the requested size, and bad sizes and names say why.
#[test]
fn zones_are_shown_and_resized_through_the_api() {
    if !kvm_available() {
        return;
    }
    let sock = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("api-zone-{}.sock", std::process::id()));
    let vm = ApiVm::start_with_zones(
        &sock,
        &["sysram=32M"],
        &["db=128M,plugged=8M"],
        serde_json::json!({}),
    );
    let (status, body) = http(&sock, "GET", "/vm", "");
    assert_eq!(status, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).expect("json");
    let zone = &info["zones"][0];
    assert_eq!(
        (
            &zone["name"],
            &zone["node"],
            &zone["size"],
            &zone["requested"]
        ),
        (
            &serde_json::json!("db"),
            &serde_json::json!(1),
            &serde_json::json!(128u64 << 20),
            &serde_json::json!(8u64 << 20)
        )
    );
    assert_eq!(
        (&zone["plugged"], &zone["resident"]),
        (&serde_json::json!(0), &serde_json::json!(0))
    );
    let (status, body) = http(&sock, "PATCH", "/zone/db", r#"{"requested": 16777216}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(vm.handle.zones()[0].device.requested_size, 16 << 20);
    let (status, body) = http(&sock, "GET", "/zone/db", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""requested":16777216"#), "{body}");
    for (path, body, code, says) in [
        (
            "/zone/db",
            r#"{"requested": 3145728}"#,
            400,
            "multiple of the block size",
        ),
        (
            "/zone/db",
            r#"{"requested": 268435456}"#,
            400,
            "more than the region",
        ),
        ("/zone/db", r#"{"requested": -1}"#, 400, ""),
        ("/zone/db", r#"{"size": 1}"#, 400, ""),
        ("/zone/nope", r#"{"requested": 0}"#, 404, "no zone"),
    ] {
        let (status, answer) = http(&sock, "PATCH", path, body);
        assert_eq!(status, code, "{path} {body}: {answer}");
        assert!(answer.contains(says), "{path} {body}: {answer}");
    }
    assert_eq!(http(&sock, "GET", "/zone/nope", "").0, 404);
    assert_eq!(vm.handle.zones()[0].device.requested_size, 16 << 20);
    let (_, metrics) = http(&sock, "GET", "/metrics", "");
    assert!(
        metrics.contains("mempart_zone_requested_bytes{zone=\"db\"} 16777216"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mempart_zone_plugged_bytes{zone=\"db\"} 0"),
        "{metrics}"
    );

    // `ctl zone`: every zone on a line; a size the guest already has is done at once; one
    // it does not plug (this guest has no driver) expires at the deadline, saying so.
    let ctl = |args: &[&str]| {
        let (code, stdout, _) = ctl_on(&sock, args);
        (code, stdout)
    };
    let (code, out) = ctl(&["zone"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        out.trim(),
        "zone db node 1  size 128M  requested 16M  plugged 0  resident 0"
    );
    let (code, out) = ctl(&["zone", "db", "0"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.ends_with("done: zone db has 0 plugged\n"), "{out}");
    let (code, out) = ctl(&["zone", "db", "4M", "--deadline", "0.3"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.ends_with("expired: the guest plugged 0 of the 4M asked within 0.3 s\n"),
        "{out}"
    );
    assert_eq!(vm.handle.zones()[0].device.requested_size, 4 << 20);
    let (code, out) = ctl(&["zone", "db", "3M"]);
    assert_eq!(code, Some(1), "{out}");
    vm.stop();
}

/// A zoned partition through the API and `ctl`: it takes the smallest free zone that holds
/// its max, the zone's requested size follows the max, its min is backed on the host at
/// once, the zone is the partition's alone, and destroying the partition frees the zone
/// and its memory.
#[test]
fn a_zoned_partition_sizes_its_zone() {
    if !kvm_available() {
        return;
    }
    let sock = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("api-zoned-{}.sock", std::process::id()));
    let vm = ApiVm::start_with_zones(
        &sock,
        &["sysram=64M"],
        &["big=256M", "spare=128M"],
        serde_json::json!({}),
    );
    const MIB: u64 = 1 << 20;
    let zone = |name: &str| {
        let (status, body) = http(&sock, "GET", &format!("/zone/{name}"), "");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).expect("json")
    };
    let db = "/partition/mem/sysram/db";
    let (status, body) = http(
        &sock,
        "POST",
        db,
        &format!(
            r#"{{"min": {}, "max": {}, "zone": true}}"#,
            8 * MIB,
            32 * MIB
        ),
    );
    assert_eq!(status, 200, "{body}");
    let spare = zone("spare");
    assert_eq!(
        spare["partition"], db,
        "the smaller zone that holds 32M: {spare}"
    );
    assert_eq!(spare["requested"], 32 * MIB);
    assert_eq!(spare["resident"], 8 * MIB, "the min is populated: {spare}");
    assert_eq!(zone("big")["partition"], serde_json::Value::Null);
    let (status, body) = http(&sock, "GET", db, "");
    assert_eq!(status, 200, "{body}");
    let metrics: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(metrics["zone"]["spec"]["node"], 2);
    assert_eq!(metrics["zone"]["host_resident"], 8 * MIB);
    assert_eq!(metrics["zone"]["plugged"], 0, "this guest has no driver");
    let (_, text) = http(&sock, "GET", "/metrics", "");
    let labelled = format!(
        "mempart_zone_requested_bytes{{zone=\"spare\",partition=\"{db}\"}} {}",
        32 * MIB
    );
    assert!(text.contains(&labelled), "{text}");

    let (status, body) = http(&sock, "PATCH", db, &format!(r#"{{"max": {}}}"#, 64 * MIB));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        zone("spare")["requested"],
        64 * MIB,
        "the zone follows the max"
    );
    for (method, path, body, code, says) in [
        (
            "PATCH",
            "/zone/spare",
            r#"{"requested": 0}"#.to_string(),
            409,
            "change that partition's max",
        ),
        (
            "PATCH",
            db,
            format!(r#"{{"max": {}}}"#, u64::MAX),
            400,
            "beyond its zone",
        ),
        (
            "PATCH",
            db,
            format!(r#"{{"max": {}}}"#, 256 * MIB),
            400,
            "beyond its zone",
        ),
        (
            "POST",
            "/partition/mem/sysram/db/inner",
            format!(r#"{{"max": {}, "zone": true}}"#, 8 * MIB),
            400,
            "directly under /partition/mem/sysram",
        ),
        (
            "POST",
            "/partition/mem/sysram/huge",
            format!(r#"{{"max": {}, "zone": true}}"#, 512 * MIB),
            409,
            "1 of 2 declared zones are free",
        ),
        (
            "POST",
            "/partition/mem/sysram/open",
            r#"{"zone": true}"#.to_string(),
            400,
            "finite max",
        ),
    ] {
        let (status, answer) = http(&sock, method, path, &body);
        assert_eq!(status, code, "{method} {path} {body}: {answer}");
        assert!(answer.contains(says), "{method} {path} {body}: {answer}");
    }
    assert_eq!(
        zone("spare")["requested"],
        64 * MIB,
        "refusals change nothing"
    );

    let ctl = |args: &[&str]| {
        let (code, stdout, stderr) = ctl_on(&sock, args);
        (code, stdout + &stderr)
    };
    let web = "/partition/mem/sysram/web";
    let (code, out) = ctl(&["create", web, "--max", "200M", "--zone"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(zone("big")["partition"], web);
    assert_eq!(zone("big")["requested"], 200 * MIB);
    let (code, out) = ctl(&["stat", web]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("zone         node 1 of 256M"), "{out}");
    assert!(out.contains("plugged      0"), "{out}");
    let (code, out) = ctl(&["zone"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("zone big node 1  size 256M  requested 200M  plugged 0  resident 0  backs /partition/mem/sysram/web\n"),
        "{out}"
    );

    let (status, body) = http(&sock, "DELETE", db, "");
    assert_eq!(status, 200, "{body}");
    let spare = zone("spare");
    assert_eq!(spare["partition"], serde_json::Value::Null);
    assert_eq!(
        (&spare["requested"], &spare["resident"]),
        (&serde_json::json!(0), &serde_json::json!(0)),
        "a freed zone is unplugged and its memory given back: {spare}"
    );
    let (status, body) = http(&sock, "PATCH", "/zone/spare", r#"{"requested": 0}"#);
    assert_eq!(
        status, 200,
        "a free zone is the host's to size again: {body}"
    );
    vm.stop();
}

/// A disk under a tiny guest with its own virtio-blk driver: the write reaches the image
/// at sector 1, the reads return the image's bytes, the id is the one given, a read past
/// the end fails with an I/O error, and `GET /vm` and `/metrics` count it all.
#[test]
fn a_disk_serves_a_guest_and_counts_its_requests() {
    if !kvm_available() {
        return;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let image = dir.join(format!("api-disk-{}.img", std::process::id()));
    let mut bytes = vec![0u8; 64 << 10];
    bytes[..8].copy_from_slice(b"mempart!");
    std::fs::write(&image, &bytes).expect("image");
    let sock = dir.join(format!("api-disk-{}.sock", std::process::id()));
    let (mut config, rx) = common::tiny_config(guest("block"), 1, &["sysram=64M"]);
    config.disks = vec![
        vmm::config::parse_disk(&format!("{},id=root-disk", image.display()), 0).expect("disk"),
    ];
    let vm = Vm::new(config).expect("vm");
    let handle = vm.handle();
    let api = vmm::api::serve(&sock, handle.clone(), serde_json::json!({})).expect("api");
    let running = std::thread::spawn(move || vm.run());
    assert_eq!(next_line(&rx), "guest: capacity 0x0000000000000080");
    assert_eq!(
        next_line(&rx),
        "guest: write 0x0000000000000000 read 0x0000000000000000 \
         sector 1 matches 0x0000000000000200 sector 0 starts mempart!"
    );
    assert_eq!(next_line(&rx), "guest: id 0x0000000000000000 root-disk");
    assert_eq!(
        next_line(&rx),
        "guest: past the end 0x0000000000000001 flush 0x0000000000000000"
    );
    let written = std::fs::read(&image).expect("image");
    let pattern: Vec<u8> = (0..512u32).map(|i| ((i * 3) ^ 0x5a) as u8).collect();
    assert_eq!(
        written[512..1024],
        pattern[..],
        "sector 1 holds what the guest wrote"
    );
    assert_eq!(written[..512], bytes[..512], "sector 0 is untouched");
    let (status, body) = http(&sock, "GET", "/vm", "");
    assert_eq!(status, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).expect("json");
    let disk = &info["disks"][0];
    assert_eq!(
        (
            disk["id"].as_str(),
            disk["bytes"].as_u64(),
            disk["read_only"].as_bool()
        ),
        (Some("root-disk"), Some(64 << 10), Some(false))
    );
    assert_eq!(
        [
            "reads",
            "read_bytes",
            "writes",
            "write_bytes",
            "flushes",
            "errors"
        ]
        .map(|k| disk[k].as_u64().unwrap_or(u64::MAX)),
        [1, 1024, 1, 512, 1, 1],
        "{disk}"
    );
    let (_, metrics) = http(&sock, "GET", "/metrics", "");
    for line in [
        "mempart_disk_write_bytes_total{disk=\"root-disk\"} 512",
        "mempart_disk_errors_total{disk=\"root-disk\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    api.stop();
    handle
        .write_sysram(0x80000, &1u64.to_le_bytes())
        .expect("mailbox");
    assert_eq!(
        running.join().expect("vm thread").expect("vm ran"),
        VmExit::Reset
    );
    std::fs::remove_file(&image).expect("remove the image");
}
