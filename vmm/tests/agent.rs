//! `mempart-agent` and `mpctl` as host processes against the partition service on a unix
//! socket: every request carries the kernel-verified identity of the mpctl process, and
//! the engine decides.

// Test helpers fail the test loudly with the reason.
#![allow(clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use mempart::{ClassSpec, Credential, Engine};
use vmm::service::{Authority, PartitionService};

mod common;
use common::{binary, KillOnDrop};

/// Kills process `pid`, which is not the test's own child, when dropped.
struct KillPid(u32);

impl Drop for KillPid {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.to_string()).status();
    }
}

const MIB: u64 = 1 << 20;

struct Rig {
    dir: PathBuf,
    engine: Arc<Mutex<Engine>>,
    service: PartitionService,
    agent: Child,
    /// Where the agent's `/partition` view is mounted, if it serves one.
    view: Option<PathBuf>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
        if let Some(view) = &self.view {
            // A killed agent leaves its mount behind, disconnected: detach it.
            let _ = Command::new("umount").arg("-l").arg(view).status();
        }
    }
}

impl Rig {
    fn new(name: &str) -> Rig {
        Rig::with_args(name, &[])
    }

    /// A rig whose agent serves its `/partition` view in `<dir>/view`.
    fn with_view(name: &str) -> Rig {
        let view = Rig::dir_for(name).join("view");
        let view = view.to_str().expect("utf-8").to_string();
        let mut rig = Rig::with_args(name, &["--view", &view]);
        rig.view = Some(PathBuf::from(view));
        rig
    }

    fn dir_for(name: &str) -> PathBuf {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("agent-{name}-{}", std::process::id()))
    }

    /// A rig whose agent gets `extra` arguments.
    fn with_args(name: &str, extra: &[&str]) -> Rig {
        Rig::spawn(name, extra, None)
    }

    /// A rig whose agent gets `extra` arguments and starts with a soft limit of
    /// `open_files` (the hard limit left as it is), if given.
    fn spawn(name: &str, extra: &[&str], open_files: Option<u64>) -> Rig {
        let dir = Rig::dir_for(name);
        if dir.join("view").exists() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(dir.join("view"))
                .status();
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("view")).expect("dir");
        let engine = Engine::new(&[
            ClassSpec::new("sysram", 256 * MIB),
            ClassSpec::new("fast", 64 * MIB),
        ])
        .expect("engine");
        let engine = Arc::new(Mutex::new(engine));
        let service = PartitionService::new(Arc::clone(&engine));
        let upstream = dir.join("service.sock");
        let listener = UnixListener::bind(&upstream).expect("bind");
        let serving = service.clone();
        std::thread::spawn(move || {
            let service = serving;
            for stream in listener.incoming().flatten() {
                let service = service.clone();
                std::thread::spawn(move || {
                    let reader = stream.try_clone().expect("clone");
                    service.serve(reader, stream, Authority::Guest)
                });
            }
        });
        let mut agent = Command::new(binary("mempart-agent"));
        agent
            .arg("--upstream")
            .arg(&upstream)
            .arg("--listen")
            .arg(dir.join("agent.sock"))
            .arg("--cgroup-root")
            .arg(dir.join("cgroup"))
            .arg("--node-dir")
            .arg(dir.join("node"))
            .args(extra)
            .stdout(Stdio::piped());
        if let Some(soft) = open_files {
            let hook = move || {
                let mut limit = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                // SAFETY: `limit` is a valid rlimit to read and write; only syscalls run
                // between fork and exec.
                #[allow(unsafe_code)]
                unsafe {
                    libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
                    limit.rlim_cur = soft.min(limit.rlim_max);
                    libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                }
                Ok(())
            };
            // SAFETY: the hook only makes syscalls, which is sound after fork.
            #[allow(unsafe_code)]
            unsafe {
                agent.pre_exec(hook);
            }
        }
        let mut agent = agent.spawn().expect("agent starts");
        let mut ready = String::new();
        BufReader::new(agent.stdout.take().expect("stdout"))
            .read_line(&mut ready)
            .expect("agent speaks");
        assert!(ready.starts_with("mempart-agent: ready"), "{ready}");
        Rig {
            dir,
            engine,
            service,
            agent,
            view: None,
        }
    }

    /// mpctl, told where the agent listens.
    fn mpctl_command(&self) -> Command {
        let mut command = Command::new(binary("mpctl"));
        command.env("MPCTL_SOCKET", self.dir.join("agent.sock"));
        command
    }

    fn mpctl(&self, uid: u32, args: &[&str]) -> Output {
        self.mpctl_command()
            .args(args)
            .uid(uid)
            .gid(uid)
            .output()
            .expect("mpctl runs")
    }

    fn ok(&self, uid: u32, args: &[&str]) -> String {
        let out = self.mpctl(uid, args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "mpctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `script` in a shell that `mpctl run` (as `uid`) put into `parts`; its output.
    fn in_shell(&self, uid: u32, parts: &[&str], script: &str) -> String {
        let mut args = vec!["run"];
        for part in parts {
            args.extend(["--part", part]);
        }
        args.extend(["--", "/bin/sh", "-c", script]);
        self.ok(uid, &args)
    }

    fn refused(&self, uid: u32, args: &[&str], errno: &str) {
        let out = self.mpctl(uid, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "mpctl {args:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("mpctl: {errno}: ")),
            "mpctl {args:?}: {stderr}"
        );
    }
}

#[test]
fn every_command_through_the_agent_with_the_callers_identity() {
    let rig = Rig::new("commands");
    let apps = "/partition/mem/sysram/apps";
    rig.ok(
        0,
        &[
            "create", apps, "--min", "16M", "--max", "64M", "--mode", "750",
        ],
    );
    rig.ok(0, &["chown", "1000:1000", apps]);
    let ls = rig.ok(1000, &["ls", "/partition/mem/sysram"]);
    assert_eq!(ls, "apps/\nsys/\n");
    let stat = rig.ok(1000, &["stat", apps]);
    assert!(stat.contains("type         GuaranteeRestricted"), "{stat}");
    assert!(stat.contains("max          64M"), "{stat}");
    let json = rig.ok(1000, &["--json", "stat", apps]);
    let value: serde_json::Value = serde_json::from_str(json.trim()).expect("json");
    assert_eq!(
        value.pointer("/current/limits/min"),
        Some(&serde_json::json!(16 * MIB)),
        "the API's nested JSON, sizes in bytes: {value}"
    );

    rig.ok(1000, &["create", &format!("{apps}/web"), "--max", "8M"]);
    rig.ok(1000, &["set", &format!("{apps}/web"), "--max", "16M"]);
    rig.ok(1000, &["chmod", "700", &format!("{apps}/web")]);
    rig.ok(1000, &["policy", &format!("{apps}/web"), "terminal"]);
    rig.refused(1000, &["create", &format!("{apps}/web/deeper")], "EPERM");
    rig.ok(1000, &["destroy", &format!("{apps}/web")]);

    rig.refused(1002, &["stat", apps], "EACCES");
    rig.refused(1002, &["create", &format!("{apps}/mine")], "EACCES");
    rig.refused(1000, &["create", "/partition/mem/group"], "EACCES");
    rig.ok(0, &["create", "/partition/mem/group"]);
    rig.ok(0, &["chown", "1000:1000", "/partition/mem/group"]);
    rig.ok(0, &["chmod", "710", "/partition/mem/group"]);
    rig.ok(0, &["pseudo", "/partition/mem/group/ram", apps]);
    assert_eq!(
        rig.ok(1000, &["ls", "/partition/mem/group"]),
        format!("ram -> {apps}\n")
    );
    let class = rig.ok(0, &["stat", "/partition/mem/fast"]);
    assert!(class.contains("free         64M"), "{class}");
    let set = rig.ok(0, &["set", "/partition/mem/fast/sys", "--max", "32M"]);
    assert_eq!(set, "Applied\n");

    let out = rig.mpctl(0, &["create", apps, "--min", "lots"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn run_associates_then_execs_and_children_inherit() {
    let rig = Rig::new("run");
    rig.ok(
        0,
        &[
            "create",
            "/partition/mem/fast/box",
            "--min",
            "4M",
            "--max",
            "4M",
            "--mode",
            "755",
        ],
    );
    rig.ok(0, &["create", "/partition/mem/sysram/apps", "--max", "64M"]);
    let mpctl = binary("mpctl");
    let inner = format!(
        "{} alloc fast 3M && {} --json stat /partition/mem/sysram/apps",
        mpctl.display(),
        mpctl.display()
    );
    let child = rig
        .mpctl_command()
        .args([
            "run",
            "--part",
            "/partition/mem/sysram/apps",
            "--part",
            "/partition/mem/fast/box",
            "--",
            "/bin/sh",
            "-c",
            &inner,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpctl run");
    let shell = child.id();
    let out = child.wait_with_output().expect("mpctl run ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    assert!(
        lines.next().is_some_and(|l| l.starts_with("granted 3M")),
        "{stdout}"
    );
    let stat: serde_json::Value = serde_json::from_str(lines.next().unwrap_or("{}")).expect("json");
    let pids: Vec<u64> = stat["processes"]
        .as_array()
        .expect("pids")
        .iter()
        .filter_map(|p| p.as_u64())
        .collect();
    assert!(
        pids.contains(&u64::from(shell)),
        "the shell mpctl ran is associated: {stat}"
    );
    assert!(
        pids.len() >= 2,
        "the shell and the mpctl asking inherit: {stat}"
    );
    let engine = rig.engine.lock().expect("engine");
    for pid in pids {
        // Processes that have exited meanwhile are no longer tracked.
        let Ok(view) = engine.process_partitions(u32::try_from(pid).expect("pid")) else {
            continue;
        };
        assert_eq!(
            view.iter().map(|a| a.path.as_str()).collect::<Vec<_>>(),
            vec!["/partition/mem/sysram/apps", "/partition/mem/fast/box"],
            "pid {pid}"
        );
    }
}

#[test]
fn a_client_cannot_register_or_end_other_processes() {
    use protocol::{Client, Op, Reply, Spawn};
    let rig = Rig::new("processes");
    let out = rig.mpctl(0, &["assoc", "/partition/mem/sysram/sys", "--pid", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ESRCH"), "{stderr}");

    // Ending and restarting itself would let a client inherit any process's partitions.
    let me = std::process::id();
    let mut client =
        Client::connect(UnixStream::connect(rig.dir.join("agent.sock")).expect("agent"))
            .expect("handshake");
    let caller = Credential::guest(0, 0);
    let before = client
        .call(&caller, Op::ProcessView { pid: me })
        .expect("io");
    assert!(matches!(before, Ok(Reply::Associations(_))), "{before:?}");
    let forged = [
        Op::ProcessExit { pid: me },
        Op::ProcessStart {
            pid: me,
            parent: Some(1),
            spawn: Spawn::Inherit,
            owner: None,
        },
    ];
    for op in forged {
        let reply = client.call(&caller, op).expect("io");
        assert!(matches!(&reply, Err(e) if e.name == "EPERM"), "{reply:?}");
    }
    let after = client
        .call(&caller, Op::ProcessView { pid: me })
        .expect("io");
    assert_eq!(
        format!("{after:?}"),
        format!("{before:?}"),
        "nothing changed"
    );
}

#[test]
fn an_exiting_process_is_disassociated_and_its_allocations_freed() {
    let rig = Rig::new("exit");
    rig.ok(
        0,
        &[
            "create",
            "/partition/mem/fast/box",
            "--min",
            "4M",
            "--max",
            "4M",
        ],
    );
    let watcher =
        std::os::unix::net::UnixStream::connect(rig.dir.join("service.sock")).expect("service");
    let mut watcher = protocol::Client::connect(watcher).expect("handshake");
    let subscribe = protocol::Op::Subscribe {
        path: "/partition/mem/fast/box".into(),
        filter: mempart::EventFilter {
            delta: Some(MIB),
            ..mempart::EventFilter::default()
        },
        capacity: 64,
    };
    let reply = watcher
        .call(&Credential::guest_root(), subscribe)
        .expect("io");
    assert!(
        matches!(reply, Ok(protocol::Reply::Subscribed(_))),
        "{reply:?}"
    );
    let out = rig.ok(
        0,
        &[
            "run",
            "--part",
            "/partition/mem/fast/box",
            "--",
            binary("mpctl").to_str().expect("utf-8"),
            "alloc",
            "fast",
            "3M",
        ],
    );
    assert_eq!(out, "granted 3M\n");
    // `mpctl run` execs the inner mpctl: one process, associated, charged, then gone.
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|k| matches!(k, mempart::EventKind::ProcessDisassociated { .. }))
    {
        match watcher.next_event().expect("event") {
            protocol::ServerFrame::Event { event, .. } => seen.push(event.kind),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        matches!(
            seen.first(),
            Some(mempart::EventKind::ProcessAssociated { .. })
        ),
        "{seen:?}"
    );
    assert_eq!(
        seen.get(1..3),
        Some(
            &[
                mempart::EventKind::Delta {
                    previous: 0,
                    size: 3 * MIB
                },
                mempart::EventKind::Delta {
                    previous: 3 * MIB,
                    size: 0
                },
            ][..]
        ),
        "{seen:?}"
    );
    let engine = rig.engine.lock().expect("engine");
    let class = engine
        .class_metrics(&Credential::Host, "/partition/mem/fast")
        .expect("class");
    assert_eq!(class.allocated, 0, "the allocation left with its process");
}

#[test]
fn sysram_partitions_are_mirrored_as_cgroups_before_the_caller_hears_back() {
    let rig = Rig::new("cgroups");
    rig.ok(
        0,
        &[
            "create",
            "/partition/mem/sysram/apps",
            "--min",
            "16M",
            "--max",
            "64M",
        ],
    );
    rig.ok(
        0,
        &["create", "/partition/mem/sysram/apps/web", "--max", "8M"],
    );
    let child = rig
        .mpctl_command()
        .args([
            "run",
            "--part",
            "/partition/mem/sysram/apps/web",
            "--",
            "/bin/true",
        ])
        .spawn()
        .expect("mpctl run");
    let pid = child.id();
    let status = child.wait_with_output().expect("mpctl run ends").status;
    assert!(status.success());
    let read = |p: &str| {
        std::fs::read_to_string(rig.dir.join("cgroup/mempart").join(p)).unwrap_or_default()
    };
    assert_eq!(read("apps/memory.min"), format!("{}\n", 16 * MIB));
    assert_eq!(read("apps/memory.max"), format!("{}\n", 64 * MIB));
    assert_eq!(read("apps/web/memory.max"), format!("{}\n", 8 * MIB));
    assert_eq!(read("sys/memory.max"), "max\n");
    assert_eq!(
        read("sys/.own/cgroup.procs"),
        "",
        "sys's processes stay in the root group"
    );
    assert!(
        read("apps/web/.own/cgroup.procs")
            .lines()
            .any(|l| l == pid.to_string()),
        "{}",
        read("apps/web/.own/cgroup.procs")
    );
    rig.ok(0, &["set", "/partition/mem/sysram/apps/web", "--max", "4M"]);
    assert_eq!(read("apps/web/memory.max"), format!("{}\n", 4 * MIB));
    rig.ok(0, &["destroy", "/partition/mem/sysram/apps/web"]);
    assert!(!rig.dir.join("cgroup/mempart/apps/web").exists());
}

#[test]
fn mpctl_follows_events_in_order_through_the_agent() {
    let rig = Rig::new("events");
    rig.ok(0, &["create", "/partition/mem/sysram/apps"]);
    let mut follower = rig
        .mpctl_command()
        .args([
            "events",
            "/partition/mem/sysram/apps",
            "--follow",
            "--count",
            "3",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mpctl events");
    let mut out = BufReader::new(follower.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("subscribed");
    assert!(line.starts_with("subscribed"), "{line}");
    rig.ok(0, &["create", "/partition/mem/sysram/apps/a"]);
    rig.ok(0, &["set", "/partition/mem/sysram/apps", "--max", "64M"]);
    rig.ok(0, &["destroy", "/partition/mem/sysram/apps/a"]);
    let mut rest = Vec::new();
    for _ in 0..3 {
        let mut l = String::new();
        out.read_line(&mut l).expect("an event");
        rest.push(l.trim_end().to_string());
    }
    assert!(follower.wait().expect("mpctl ends").success());
    assert!(rest[0].starts_with("1 ChildCreated"), "{rest:?}");
    assert_eq!(rest[1], "2 ConfigChanged");
    assert!(rest[2].starts_with("3 ChildDestroyed"), "{rest:?}");
}

/// A client guesses subscription ids, among them the agent's own (checked on the engine),
/// and asks the agent to end them: each is refused and none ends.
fn forge_unsubscribes_of_the_agents_subscriptions(rig: &Rig) {
    use protocol::{Client, Op};
    let guesses: Vec<mempart::SubId> = (0..8u32)
        .flat_map(|index| (0..4u32).map(move |generation| (index, generation)))
        .map(|(index, generation)| {
            serde_json::from_value(serde_json::json!({"index": index, "generation": generation}))
                .expect("a subscription id")
        })
        .collect();
    let live = {
        let mut engine = rig.engine.lock().expect("engine");
        guesses
            .iter()
            .filter(|sub| engine.drain_events(**sub).is_ok())
            .count()
    };
    assert!(live > 0, "the guesses include the agent's subscriptions");
    let stream = UnixStream::connect(rig.dir.join("agent.sock")).expect("agent");
    let mut client = Client::connect(stream).expect("handshake");
    for sub in guesses {
        let reply = client
            .call(&Credential::guest(1000, 1000), Op::Unsubscribe { sub })
            .expect("io");
        assert!(
            matches!(&reply, Err(e) if e.name == "ENOENT"),
            "{sub:?}: {reply:?}"
        );
    }
}

/// The agent reports each mirrored partition's use from `memory.current`, and a host
/// reclaim reaches the guest: the lower max lands in `memory.max` and the use reported
/// after it lets the reclaim take effect.
#[test]
fn the_agent_reports_cgroup_use_and_mirrors_a_host_reclaim() {
    use devices::virtio::balloon::Balloon;
    use mempart::{EventFilter, EventKind};
    use protocol::{Client, Op, Reply, ServerFrame};
    use std::os::unix::net::UnixStream;
    const APPS: &str = "/partition/mem/sysram/apps";
    // Reports follow limit changes only: no periodic report interferes.
    let rig = Rig::with_args("reclaim", &["--report-interval", "3600"]);
    rig.ok(0, &["create", APPS, "--max", "64M"]);
    let current = rig.dir.join("cgroup/mempart/apps/.own/memory.current");
    let mut watcher =
        Client::connect(UnixStream::connect(rig.dir.join("service.sock")).expect("service"))
            .expect("handshake");
    let filter = EventFilter {
        threshold: Some(20 * MIB),
        config: false,
        processes: false,
        children: false,
        ..EventFilter::default()
    };
    let op = Op::Subscribe {
        path: APPS.into(),
        filter,
        capacity: 16,
    };
    let subscribed = watcher.call(&Credential::guest_root(), op).expect("io");
    assert!(
        matches!(subscribed, Ok(Reply::Subscribed(_))),
        "{subscribed:?}"
    );
    let mut next_size = || match watcher.next_event().expect("event") {
        ServerFrame::Event { event, .. } => event.kind,
        other => panic!("{other:?}"),
    };
    let (_balloon, handle) =
        Balloon::new(vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
    let reclaimer =
        vmm::reclaim::Reclaimer::new(Arc::clone(&rig.engine), rig.service.clone(), handle);

    forge_unsubscribes_of_the_agents_subscriptions(&rig);

    std::fs::write(&current, format!("{}\n", 40 * MIB)).expect("memory.current");
    reclaimer
        .set_limits(APPS, None, Some(48 * MIB))
        .expect("host change");
    assert_eq!(
        next_size(),
        EventKind::Threshold {
            threshold: 20 * MIB,
            size: 40 * MIB,
            up: true
        },
        "the agent reported the cgroup's use after the change"
    );
    let max = std::fs::read_to_string(rig.dir.join("cgroup/mempart/apps/memory.max"))
        .expect("memory.max");
    assert_eq!(
        max,
        format!("{}\n", 48 * MIB),
        "the agent still follows the host's changes"
    );

    std::fs::write(&current, format!("{}\n", 10 * MIB)).expect("memory.current");
    let status = reclaimer
        .start(APPS, 16 * MIB, std::time::Duration::from_secs(60))
        .expect("reclaim");
    assert_eq!(status.state, vmm::reclaim::ReclaimState::Running);
    assert_eq!(
        next_size(),
        EventKind::Threshold {
            threshold: 20 * MIB,
            size: 10 * MIB,
            up: false
        }
    );
    let max = std::fs::read_to_string(rig.dir.join("cgroup/mempart/apps/memory.max"))
        .expect("memory.max");
    assert_eq!(
        max,
        format!("{}\n", 16 * MIB),
        "the guest enforces the lower max"
    );
    let m = rig
        .engine
        .lock()
        .expect("engine")
        .metrics(&Credential::Host, APPS)
        .expect("apps");
    assert_eq!(
        (m.current.limits.max, m.pending_max, m.used),
        (16 * MIB, None, 10 * MIB)
    );
}

/// A process forked by a tracked one is tracked too, though it never talks to the agent:
/// the agent hears of the fork from the kernel's process events connector, and the child
/// inherits its parent's partitions.
#[test]
fn a_child_that_never_talks_to_the_agent_is_tracked_from_its_fork() {
    let rig = Rig::new("forks");
    rig.ok(0, &["create", "/partition/mem/sysram/apps"]);
    let mut run = KillOnDrop(
        rig.mpctl_command()
            .args([
                "run",
                "--part",
                "/partition/mem/sysram/apps",
                "--",
                "/bin/sh",
                "-c",
                "sleep 600 & echo $!; wait",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("mpctl run"),
    );
    let mut line = String::new();
    BufReader::new(run.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the child's pid");
    let child: u32 = line.trim().parse().expect("a pid");
    // The shell's child is no child of the test: it goes when the test does, pass or fail.
    let _sleeper = KillPid(child);
    let service = rig.service.clone();
    let mut seen = service.generation();
    let tracked = |engine: &Arc<Mutex<Engine>>| {
        engine
            .lock()
            .expect("engine")
            .process_partitions(child)
            .ok()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let view = loop {
        if let Some(view) = tracked(&rig.engine) {
            break view;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never registered the forked child {child}"
        );
        seen = service.wait_change(seen, std::time::Duration::from_secs(60));
    };
    assert!(
        view.iter().any(|a| a.path == "/partition/mem/sysram/apps"),
        "the child inherited its parent's partition: {view:?}"
    );
}

/// `alloc --pid` charges another of the caller's processes (here the shell `mpctl run`
/// became), so the allocation outlives mpctl; `free` gives it back.
#[test]
fn an_allocation_for_a_shell_outlives_mpctl_until_freed() {
    let rig = Rig::new("free");
    rig.ok(0, &["create", "/partition/mem/fast/box", "--max", "8M"]);
    let m = binary("mpctl").display().to_string();
    let script = format!(
        "{m} alloc fast 2M --pid $$ && {m} --json stat /partition/mem/fast/box && \
         {m} free fast 2M --pid $$ && {m} --json stat /partition/mem/fast/box"
    );
    let out = rig
        .mpctl_command()
        .args([
            "run",
            "--part",
            "/partition/mem/fast/box",
            "--",
            "/bin/sh",
            "-c",
            &script,
        ])
        .output()
        .expect("mpctl run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(lines[0], "granted 2M");
    let used =
        |line: &str| serde_json::from_str::<serde_json::Value>(line).expect("json")["used"].clone();
    assert_eq!(
        used(lines[1]),
        serde_json::json!(2 * MIB),
        "the shell holds it after mpctl exited"
    );
    assert_eq!(lines[2], "freed 2M");
    assert_eq!(used(lines[3]), serde_json::json!(0));
}

/// Runs `program args` as `uid`; its standard output, or its standard error as `Err`.
fn run_as(uid: u32, program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .uid(uid)
        .gid(uid)
        .output()
        .expect("runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The FUSE view: `ls` lists classes, partitions, `metrics` files and associated
/// processes (links to `/proc/<pid>`), `cat` prints figures, pseudo partitions are
/// links, modes are the nodes' own, and the engine decides what each reader may see.
#[test]
fn the_partition_view_lists_processes_and_prints_metrics() {
    use std::os::unix::fs::MetadataExt;

    let rig = Rig::with_view("view");
    let view = rig.view.clone().expect("view");
    let at = |rel: &str| view.join(rel).to_str().expect("utf-8").to_string();
    let apps = "/partition/mem/sysram/apps";
    rig.ok(
        0,
        &[
            "create", apps, "--min", "8M", "--max", "64M", "--mode", "750",
        ],
    );
    rig.ok(0, &["chown", "1000:1000", apps]);
    rig.ok(0, &["create", "/partition/mem/group"]);
    rig.ok(0, &["chown", "1000:1000", "/partition/mem/group"]);
    rig.ok(0, &["chmod", "710", "/partition/mem/group"]);
    rig.ok(0, &["pseudo", "/partition/mem/group/ram", apps]);
    rig.refused(0, &["create", "/partition/mem/sysram/metrics"], "EINVAL");

    assert_eq!(run_as(0, "ls", &[&at("")]), Ok("mem\n".into()));
    assert_eq!(
        run_as(0, "ls", &[&at("mem")]),
        Ok("fast\ngroup\nsysram\n".into())
    );
    assert_eq!(
        run_as(1000, "ls", &[&at("mem/sysram")]),
        Ok("apps\nmetrics\nsys\n".into())
    );
    let class = run_as(1000, "cat", &[&at("mem/fast/metrics")]).expect("class metrics");
    assert!(class.contains(&format!("size {}\n", 64 * MIB)), "{class}");
    assert!(class.contains(&format!("free {}\n", 64 * MIB)), "{class}");

    let meta = std::fs::metadata(at("mem/sysram/apps")).expect("stat");
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o777, 0o750);
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    // Groups and the name space's root show their owners and modes too.
    let meta = std::fs::metadata(at("mem/group")).expect("stat");
    assert_eq!(meta.mode() & 0o777, 0o710);
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    let meta = std::fs::metadata(at("mem")).expect("stat");
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o755, 0));

    // A shell run into the partition finds itself listed there, as a link to its /proc.
    let listing = format!("echo $$; ls {}", at("mem/sysram/apps"));
    let out = rig.in_shell(1000, &[apps], &listing);
    let mut lines = out.lines();
    let shell = lines.next().expect("pid").to_string();
    let names: Vec<&str> = lines.collect();
    assert!(names.contains(&shell.as_str()), "{out}");
    assert!(names.contains(&"metrics"), "{out}");
    let reading = format!(
        "readlink {}/$$ && cat {}",
        at("mem/sysram/apps"),
        at("mem/sysram/apps/metrics")
    );
    let out = rig.in_shell(1000, &[apps], &reading);
    let mut lines = out.lines();
    let link = lines.next().expect("link");
    assert!(link.starts_with("/proc/"), "{out}");
    let figures: std::collections::HashMap<&str, &str> =
        lines.filter_map(|l| l.split_once(' ')).collect();
    assert_eq!(figures.get("type"), Some(&"GuaranteeRestricted"), "{out}");
    assert_eq!(figures.get("min"), Some(&(8 * MIB).to_string().as_str()));
    assert_eq!(figures.get("max"), Some(&(64 * MIB).to_string().as_str()));
    assert_eq!(figures.get("mode"), Some(&"750"));
    // The shell at least; its forked children and the earlier shell may not yet have
    // been reported gone.
    let processes: usize = figures
        .get("processes")
        .and_then(|n| n.parse().ok())
        .expect("processes");
    assert!(processes >= 1, "{out}");

    assert_eq!(
        std::fs::read_link(at("mem/group/ram")).expect("pseudo link"),
        PathBuf::from("../sysram/apps")
    );
    let through = run_as(1000, "ls", &[&at("mem/group/ram/")]).expect("follows");
    assert!(through.contains("metrics"), "{through}");

    // A name with a space is an ordinary file name in the view.
    rig.ok(
        0,
        &["create", "/partition/mem/sysram/my job", "--max", "4M"],
    );
    assert_eq!(
        run_as(0, "ls", &[&at("mem/sysram")]),
        Ok("apps\nmetrics\nmy job\nsys\n".into())
    );
    let spaced = run_as(0, "cat", &[&at("mem/sysram/my job/metrics")]).expect("metrics");
    assert!(spaced.contains(&format!("max {}\n", 4 * MIB)), "{spaced}");

    // Another user is refused what the engine refuses; nobody writes.
    let denied = run_as(1002, "ls", &[&at("mem/sysram/apps")]).expect_err("refused");
    assert!(denied.contains("Permission denied"), "{denied}");
    let denied = run_as(1002, "cat", &[&at("mem/sysram/apps/metrics")]).expect_err("refused");
    assert!(denied.contains("Permission denied"), "{denied}");
    let write = std::fs::write(at("mem/sysram/apps/metrics"), "max 0");
    assert_eq!(
        write.expect_err("read-only").raw_os_error(),
        Some(libc::EROFS)
    );
    assert!(std::fs::create_dir(at("mem/sysram/new")).is_err());
}

/// `assoc`, `flags` and `disassoc` act on mpctl's parent (here a shell `mpctl run`
/// started), and `ps` shows that process's partitions with their inherit flags.
#[test]
fn assoc_flags_and_disassoc_change_the_callers_shell() {
    let rig = Rig::new("assoc");
    let boxed = "/partition/mem/fast/box";
    rig.ok(0, &["create", boxed, "--max", "8M", "--mode", "777"]);
    let m = binary("mpctl").display().to_string();
    let script = format!(
        "{m} assoc {boxed} && {m} ps && {m} flags {boxed} --no-inherit on && \
         {m} --json ps && {m} disassoc {boxed} && {m} ps"
    );
    let out = rig.in_shell(1000, &["/partition/mem/sysram/sys"], &script);
    let rest: Vec<&str> = out.lines().collect();
    assert_eq!(
        rest.first().copied(),
        Some("/partition/mem/sysram/sys  inherit  0"),
        "{out}"
    );
    assert_eq!(
        rest.get(1).copied(),
        Some("/partition/mem/fast/box  inherit  0")
    );
    let json: serde_json::Value = serde_json::from_str(rest.get(2).expect("json")).expect("json");
    assert_eq!(json[1]["path"], boxed);
    assert_eq!(json[1]["no_inherit"], true, "{json}");
    assert_eq!(json[0]["no_inherit"], false, "{json}");
    assert_eq!(
        rest.get(3..),
        Some(&["/partition/mem/sysram/sys  inherit  0"][..]),
        "{out}"
    );
}

/// The three inheritance modes through `mpctl run`: by default the command keeps what it
/// inherited and gains `--part`; `--only --part P` (SETMPART) gives exactly P (and
/// sysram's sys, as P is not sysram); `--only` alone (the alternate mode) keeps only the
/// parent's sysram partition. Each command's own child (`mpctl ps` of its parent) shows it.
#[test]
fn run_spawns_under_each_inheritance_mode() {
    let rig = Rig::new("modes");
    for p in [
        "/partition/mem/sysram/apps",
        "/partition/mem/fast/box",
        "/partition/mem/fast/other",
    ] {
        rig.ok(0, &["create", p, "--max", "8M", "--mode", "777"]);
    }
    let m = binary("mpctl").display().to_string();
    let other = "/partition/mem/fast/other";
    let script = format!(
        "{m} run --part {other} -- /bin/sh -c '{m} --json ps' && \
         {m} run --only --part {other} -- /bin/sh -c '{m} --json ps' && \
         {m} run --only -- /bin/sh -c '{m} --json ps'"
    );
    let out = rig.in_shell(
        1000,
        &["/partition/mem/sysram/apps", "/partition/mem/fast/box"],
        &script,
    );
    let views: Vec<Vec<String>> = out
        .lines()
        .map(|l| {
            let value: serde_json::Value = serde_json::from_str(l).expect("json");
            let mut paths: Vec<String> = value
                .as_array()
                .expect("list")
                .iter()
                .filter_map(|a| a["path"].as_str().map(String::from))
                .collect();
            paths.sort();
            paths
        })
        .collect();
    assert_eq!(
        views,
        vec![
            vec![other.to_string(), "/partition/mem/sysram/apps".to_string()],
            vec![other.to_string(), "/partition/mem/sysram/sys".to_string()],
            vec!["/partition/mem/sysram/apps".to_string()],
        ],
        "{out}"
    );
    // The alternate mode under a parent the agent does not track (this test): sys.
    let alone = rig.ok(
        0,
        &["run", "--only", "--", "/bin/sh", "-c", &format!("{m} ps")],
    );
    assert_eq!(alone, "/partition/mem/sysram/sys  inherit  0\n");
    rig.ok(
        0,
        &["create", "/partition/mem/fast/private", "--mode", "700"],
    );
    rig.refused(
        1002,
        &[
            "run",
            "--only",
            "--part",
            "/partition/mem/fast/private",
            "--",
            "/bin/true",
        ],
        "EACCES",
    );
}

/// A client that subscribes and then stops reading is cut off once its queue fills,
/// while another client's requests keep being answered: the agent's router never waits
/// on one client.
#[test]
fn a_client_that_stops_reading_does_not_stall_the_others() {
    use protocol::{Client, Op, ProtocolError, Reply};
    let rig = Rig::with_args("stall", &["--no-cgroups"]);
    let boxed = "/partition/mem/fast/box";
    rig.ok(0, &["create", boxed, "--max", "8M"]);
    let connect = || {
        let stream = UnixStream::connect(rig.dir.join("agent.sock")).expect("agent");
        // A stall shows as a failed test, not a hung one.
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .expect("timeout");
        Client::connect(stream).expect("handshake")
    };
    let root = Credential::guest_root();
    let mut sleeper = connect();
    let subscribe = Op::Subscribe {
        path: boxed.into(),
        filter: mempart::EventFilter {
            config: true,
            ..mempart::EventFilter::default()
        },
        capacity: 4096,
    };
    let reply = sleeper.call(&root, subscribe).expect("io");
    assert!(matches!(reply, Ok(Reply::Subscribed(_))), "{reply:?}");
    // A small frame costs the socket's send buffer about 1 KiB, so a few hundred fill
    // it; then the agent's queue of 1024.
    const CHANGES: u64 = 4_000;
    let mut busy = connect();
    for i in 0..CHANGES {
        let change = Op::SetLimits {
            path: boxed.into(),
            min: None,
            max: Some(8 * MIB + (i % 2) * 4096),
            reclaim: false,
        };
        let reply = busy
            .call(&root, change)
            .expect("the busy client is answered");
        assert!(reply.is_ok(), "{reply:?}");
    }
    let mut received = 0u64;
    let end = loop {
        match sleeper.next_event() {
            Ok(_) => received += 1,
            Err(e) => break e,
        }
    };
    assert!(
        matches!(end, ProtocolError::Closed),
        "the sleeper was disconnected, not left waiting: {end:?}"
    );
    assert!(received < CHANGES, "{received} of {CHANGES} events arrived");
    eprintln!("the sleeper received {received} of {CHANGES} events before it was cut off");
}

/// The agent serves a bounded number of clients: one more is refused at its handshake,
/// and those seated carry on.
#[test]
fn clients_beyond_the_limit_are_refused_at_the_handshake() {
    use protocol::{Client, Op, ProtocolError};
    let rig = Rig::with_args("seats", &["--max-clients", "2", "--no-cgroups"]);
    let connect =
        || Client::connect(UnixStream::connect(rig.dir.join("agent.sock")).expect("agent"));
    let mut seated = [connect().expect("first"), connect().expect("second")];
    let refused = connect().err();
    assert!(
        matches!(&refused, Some(ProtocolError::Handshake(reason)) if reason.contains("2 clients at most")),
        "{refused:?}"
    );
    for client in &mut seated {
        let listing = client.call(
            &Credential::guest_root(),
            Op::List {
                path: "/partition/mem".into(),
            },
        );
        assert!(matches!(listing, Ok(Ok(_))), "{listing:?}");
    }
}

/// When the VMM's stream ends while a client waits on an answer, the client is not left
/// waiting: its connection closes at once, and the agent exits saying why.
#[test]
fn a_request_in_flight_when_the_upstream_ends_is_not_left_waiting() {
    use protocol::{
        read_frame, write_frame, Client, ClientFrame, Op, ProtocolError, ServerFrame, VERSION,
    };
    use std::io::Read;
    use std::time::Duration;
    let dir = Rig::dir_for("ended");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let upstream = dir.join("vmm.sock");
    let listener = UnixListener::bind(&upstream).expect("bind");
    let mut agent = KillOnDrop(
        Command::new(binary("mempart-agent"))
            .arg("--upstream")
            .arg(&upstream)
            .arg("--listen")
            .arg(dir.join("agent.sock"))
            .args(["--no-cgroups", "--no-fork-events"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("agent starts"),
    );
    // Played by the test: the VMM's end of the stream.
    let (mut vmm, _) = listener.accept().expect("the agent connects");
    let hello: ClientFrame = read_frame(&mut vmm).expect("hello");
    assert!(matches!(hello, ClientFrame::Hello { .. }), "{hello:?}");
    write_frame(&mut vmm, &ServerFrame::Welcome { version: VERSION }).expect("welcome");
    let mut ready = String::new();
    BufReader::new(agent.0.stdout.take().expect("stdout"))
        .read_line(&mut ready)
        .expect("agent speaks");
    assert!(ready.starts_with("mempart-agent: ready"), "{ready}");

    let stream = UnixStream::connect(dir.join("agent.sock")).expect("agent");
    // A client left waiting shows as a timeout here, not as a hung test.
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut client = Client::connect(stream).expect("handshake");
    let asking = std::thread::spawn(move || {
        client.call(
            &Credential::guest_root(),
            Op::List {
                path: "/partition/mem".into(),
            },
        )
    });
    // The agent registers its new client, then forwards the request: read both, answer
    // neither, and go away.
    loop {
        let frame: ClientFrame = read_frame(&mut vmm).expect("the request comes upstream");
        if matches!(
            frame,
            ClientFrame::Request {
                op: Op::List { .. },
                ..
            }
        ) {
            break;
        }
    }
    drop(vmm);
    drop(listener);

    let answer = asking.join().expect("the asking thread");
    assert!(
        matches!(answer, Err(ProtocolError::Closed)),
        "the waiting client's connection closed: {answer:?}"
    );
    let status = agent.wait_at_most(Duration::from_secs(30));
    let mut stderr = String::new();
    if let Some(mut err) = agent.0.stderr.take() {
        err.read_to_string(&mut stderr).expect("stderr");
    }
    assert_eq!(
        status.code(),
        Some(1),
        "the agent exits with an error: {stderr}"
    );
    assert!(stderr.contains("upstream"), "{stderr}");
}

/// A client that connects and never says hello is disconnected after `--hello-timeout`,
/// and the seat it held serves the next client.
#[test]
fn a_silent_client_is_cut_off_and_its_seat_freed() {
    use protocol::{Client, Op, ProtocolError};
    use std::io::Read;
    use std::time::Duration;
    let rig = Rig::with_args(
        "silent",
        &["--max-clients", "1", "--hello-timeout", "1", "--no-cgroups"],
    );
    let socket = rig.dir.join("agent.sock");
    let mut silent = UnixStream::connect(&socket).expect("agent");
    // Guards the test against an agent that never lets go.
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let refused = Client::connect(UnixStream::connect(&socket).expect("agent")).err();
    assert!(
        matches!(&refused, Some(ProtocolError::Handshake(reason)) if reason.contains("1 clients at most")),
        "the silent client holds the only seat: {refused:?}"
    );
    let mut rest = Vec::new();
    let read = silent.read_to_end(&mut rest);
    assert!(
        matches!(read, Ok(0)),
        "the agent closed the silent client's connection: {read:?}"
    );
    let mut next = Client::connect(UnixStream::connect(&socket).expect("agent"))
        .expect("the freed seat serves the next client");
    let listing = next.call(
        &Credential::guest_root(),
        Op::List {
            path: "/partition/mem".into(),
        },
    );
    assert!(matches!(listing, Ok(Ok(_))), "{listing:?}");
}

/// A client fills a partition with long-named children (any user with `w` on one can):
/// listing them is too large for a frame and gets `EOVERFLOW`, while the agent's one
/// upstream connection, shared by every guest user, stays up for that client and others.
#[test]
fn a_listing_too_large_for_a_frame_is_an_error_for_that_request_only() {
    use protocol::{Client, Limits, Op, Reply, MAX_FRAME};
    const BOX: &str = "/partition/mem/fast/box";
    let rig = Rig::new("listing");
    rig.ok(0, &["create", BOX]);
    let mut client =
        Client::connect(UnixStream::connect(rig.dir.join("agent.sock")).expect("agent"))
            .expect("handshake");
    let caller = Credential::guest(0, 0);
    let children = MAX_FRAME / 250 + 40;
    for n in 0..children {
        let op = Op::Create {
            path: format!("{BOX}/p{n:0>249}"),
            limits: Limits::default(),
            mode: 0o755,
            zone: false,
        };
        let created = client.call(&caller, op).expect("io");
        assert!(created.is_ok(), "child {n}: {created:?}");
    }
    let listed = client
        .call(&caller, Op::List { path: BOX.into() })
        .expect("io");
    assert!(
        matches!(&listed, Err(e) if e.name == "EOVERFLOW"),
        "{listed:?}"
    );
    let child = format!("{BOX}/p{:0>249}", 0);
    let next = client
        .call(&caller, Op::Metrics { path: child })
        .expect("io");
    assert!(matches!(next, Ok(Reply::Metrics(_))), "{next:?}");
    assert!(rig.ok(1001, &["ls", "/partition/mem"]).contains("fast"));
}

/// One user opens 600 connections and stays silent: it gets its share of the seats, the
/// rest are refused in the accept loop before a thread is spent on them, the agent has
/// raised its own open-file limit, and another user is served meanwhile.
#[test]
fn one_user_cannot_take_every_seat() {
    let rig = Rig::spawn(
        "flood",
        &["--hello-timeout", "120", "--no-cgroups"],
        Some(256),
    );
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", rig.agent.id())).expect("agent limits");
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| l.split_whitespace().skip(3).take(2).collect())
        .unwrap_or_default();
    assert!(
        matches!(open_files.as_slice(), [soft, hard] if soft == hard),
        "the agent raised its soft limit to the hard one: {open_files:?}"
    );
    let script = format!(
        "import socket, sys\n\
         held = []\n\
         for _ in range(600):\n    \
             s = socket.socket(socket.AF_UNIX)\n    \
             s.connect({:?})\n    \
             held.append(s)\n\
         print('connected', flush=True)\n\
         sys.stdin.read()\n",
        rig.dir.join("agent.sock").to_str().expect("utf-8")
    );
    let mut flood = KillOnDrop(
        Command::new("python3")
            .args(["-c", &script])
            .uid(1000)
            .gid(1000)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3"),
    );
    let mut line = String::new();
    BufReader::new(flood.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the flood connects");
    assert_eq!(line, "connected\n");
    // Queued behind all 600: by the time these are answered, each of those was seated
    // or refused.
    assert!(rig.ok(1001, &["ls", "/partition/mem"]).contains("sysram"));
    let out = rig.mpctl(1000, &["ls", "/partition/mem"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "no agent for uid 1000: {stderr}"
    );
    assert!(stderr.contains("uid 1000 holds 64 connections"), "{stderr}");
}

/// Takes pid `pid` for a new `sleep` through `ns_last_pid`, or `None` where the test may
/// not (it needs root) or other processes keep taking it first.
fn spawn_at_pid(pid: u32) -> Option<KillOnDrop> {
    for _ in 0..100 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
        let mut child = Command::new("sleep").arg("600").spawn().ok()?;
        if child.id() == pid {
            return Some(KillOnDrop(child));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

/// A process connects and exits; another process takes its pid; then the connection
/// says hello. The agent knows the connection by the connecting process's pidfd, so it
/// registers nobody: not the new owner of the pid.
#[test]
fn a_connection_whose_process_is_gone_registers_nobody() {
    use protocol::{Client, Op};
    use std::os::fd::FromRawFd;
    let rig = Rig::with_args("reuse", &["--no-cgroups"]);
    let path = rig.dir.join("agent.sock");
    // SAFETY: a plain socket(2); the descriptor is owned below.
    #[allow(unsafe_code)]
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket");
    // SAFETY: `fd` is fresh and owned by nobody else.
    #[allow(unsafe_code)]
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_un is valid; the path is copied in below.
    #[allow(unsafe_code)]
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.to_str().expect("utf-8").as_bytes();
    assert!(bytes.len() < addr.sun_path.len(), "socket path too long");
    for (slot, byte) in addr.sun_path.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    // The short-lived child connects the test's socket just before it execs `true`.
    let mut connector = Command::new("true");
    let hook = move || {
        // SAFETY: `addr` is a valid sockaddr_un of the size given; connect(2) is sound
        // after fork.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::connect(
                fd,
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: the hook only makes a syscall, which is sound after fork.
    #[allow(unsafe_code)]
    unsafe {
        connector.pre_exec(hook);
    }
    let mut connector = connector.spawn().expect("connector");
    let pid = connector.id();
    assert!(connector.wait().expect("connector ends").success());
    let Some(_taker) = spawn_at_pid(pid) else {
        eprintln!("skipped: pid {pid} could not be taken again (needs root and ns_last_pid)");
        return;
    };
    let mut late = Client::connect(stream).expect("the late hello is welcomed");
    let view = late
        .call(&Credential::guest_root(), Op::ProcessView { pid })
        .expect("io");
    assert!(
        matches!(&view, Err(e) if e.name == "ESRCH"),
        "pid {pid}, now another process, was registered: {view:?}"
    );
}

/// Through mpctl: a partition named with a space, its highest size reset (the old one
/// printed), a policy that cannot be cleared, and `events --follow` ending with the
/// partition.
#[test]
fn mpctl_names_with_spaces_highest_reset_policies_and_events_end() {
    const BOX: &str = "/partition/mem/fast/my box";
    let rig = Rig::with_args("spaces", &["--no-cgroups"]);
    rig.ok(0, &["create", BOX, "--max", "4M"]);
    assert_eq!(rig.ok(0, &["ls", "/partition/mem/fast"]), "my box/\nsys/\n");
    let mpctl = binary("mpctl");
    let mpctl = mpctl.to_str().expect("utf-8");
    let script = format!("{mpctl} alloc fast 1M --pid $$ && {mpctl} free fast 1M --pid $$");
    rig.in_shell(0, &[BOX], &script);
    assert_eq!(
        rig.ok(0, &["stat", "--reset-highest", BOX]),
        "highest      1M (reset)\n"
    );
    assert_eq!(
        rig.ok(0, &["stat", "--reset-highest", BOX]),
        "highest      0 (reset)\n"
    );
    rig.ok(0, &["policy", BOX, "terminal"]);
    rig.refused(0, &["policy", BOX, "terminal", "--clear"], "EPERM");
    rig.refused(0, &["policy", BOX, "terminal=false"], "EPERM");
    rig.ok(0, &["policy", BOX, "permanent=false"]);

    let mut follower = rig
        .mpctl_command()
        .args(["events", BOX, "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mpctl events");
    let mut out = BufReader::new(follower.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("subscribed");
    assert_eq!(line, format!("subscribed to {BOX}\n"));
    rig.ok(0, &["destroy", BOX]);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("mpctl ends");
    assert!(rest.trim_end().ends_with("Destroyed"), "{rest}");
    assert!(follower.wait().expect("mpctl ends").success());
}

/// A shared object created by a process in partition `a` and grown by a process in `b`
/// is charged to `a` alone, outlives its creator, is refused to a user who may not
/// write `a`, is listed under `a` (by `mpctl ls` and in the view, as a file of its
/// size), is mapped only by a user allowed to execute `a`, and unlinking it frees the
/// charge.
#[test]
fn a_shared_object_is_charged_to_its_partition_and_outlives_its_creator() {
    use protocol::{Client, Op, Reply, ServerFrame};
    const A: &str = "/partition/mem/fast/a";
    const B: &str = "/partition/mem/fast/b";
    let rig = Rig::with_view("shm");
    let view = rig.view.clone().expect("view");
    rig.ok(0, &["create", A, "--max", "8M"]);
    rig.ok(0, &["create", B, "--max", "8M", "--mode", "777"]);
    let mut watcher =
        Client::connect(UnixStream::connect(rig.dir.join("service.sock")).expect("service"))
            .expect("handshake");
    let subscribe = Op::Subscribe {
        path: A.into(),
        filter: mempart::EventFilter::default(),
        capacity: 64,
    };
    let subscribed = watcher
        .call(&Credential::guest_root(), subscribe)
        .expect("io");
    assert!(
        matches!(subscribed, Ok(Reply::Subscribed(_))),
        "{subscribed:?}"
    );
    let mpctl = binary("mpctl");
    let mpctl = mpctl.to_str().expect("utf-8");
    rig.in_shell(0, &[A], &format!("{mpctl} shm create obj fast --pid $$"));
    // The creator has exited once the engine has taken it out of `a`.
    loop {
        match watcher.next_event().expect("event") {
            ServerFrame::Event { event, .. }
                if matches!(event.kind, mempart::EventKind::ProcessDisassociated { .. }) =>
            {
                break
            }
            _ => {}
        }
    }
    let grow = format!("{mpctl} shm grow obj 2M");
    let denied = rig.mpctl(1000, &["run", "--part", B, "--", "/bin/sh", "-c", &grow]);
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert_eq!(denied.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("EACCES"), "{stderr}");
    let used = |path: &str| {
        rig.engine
            .lock()
            .expect("engine")
            .metrics(&Credential::Host, path)
            .expect("metrics")
            .used
    };
    assert_eq!((used(A), used(B)), (0, 0), "uid 1000 may not write a");
    rig.in_shell(0, &[B], &format!("{mpctl} shm grow obj 2M"));
    assert_eq!((used(A), used(B)), (2 * MIB, 0));
    let listing = rig.ok(0, &["shm", "ls"]);
    assert!(
        listing.starts_with("obj") && listing.contains("2M") && listing.contains(A),
        "{listing}"
    );
    assert_eq!(rig.ok(0, &["ls", A]), "obj  shm 2M\n");
    let file = view.join("mem/fast/a/obj");
    assert_eq!(
        std::fs::metadata(&file).expect("the object's file").len(),
        2 * MIB
    );
    let described = run_as(0, "cat", &[file.to_str().expect("utf-8")]).expect("cat");
    assert!(
        described.starts_with(&format!("size {}\n", 2 * MIB)),
        "{described}"
    );
    rig.ok(0, &["chmod", "750", A]);
    let denied = rig.mpctl(1000, &["shm", "map", "obj"]);
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        stderr.contains("EACCES"),
        "uid 1000 may not execute a: {stderr}"
    );
    rig.ok(0, &["chmod", "755", A]);
    assert_eq!(rig.ok(1000, &["shm", "map", "obj"]), "mapped obj (2M)\n");
    rig.refused(0, &["destroy", A], "EBUSY");
    rig.refused(1000, &["shm", "unlink", "obj"], "EACCES");
    rig.ok(0, &["shm", "unlink", "obj"]);
    assert_eq!(used(A), 0);
    assert_eq!(rig.ok(0, &["shm", "ls"]), "");
    rig.ok(0, &["destroy", A]);
}
