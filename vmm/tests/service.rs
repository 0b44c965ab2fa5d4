//! The partition service over real unix sockets: handshake, requests with credentials
//! decided by the engine, pushed events, and hostile peers.

// Test helpers fail the test loudly with the reason.
#![allow(clippy::expect_used)]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use mempart::{ClassSpec, Credential, Engine, EventFilter, EventKind, Limits, Spawn};
use protocol::{write_frame, Client, ClientFrame, Op, ProtocolError, Reply, ServerFrame, MAGIC};
use vmm::service::{Authority, PartitionService, TypedMemory};

const MIB: u64 = 1 << 20;

fn service() -> PartitionService {
    let engine = Engine::new(&[
        ClassSpec::new("sysram", 256 * MIB),
        ClassSpec::new("fast", 64 * MIB),
    ])
    .expect("engine");
    PartitionService::new(Arc::new(Mutex::new(engine)))
}

/// Starts serving one end of a socket pair; returns the other end and the server thread.
fn connect(
    service: &PartitionService,
    authority: Authority,
) -> (UnixStream, JoinHandle<ProtocolError>) {
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
    let service = service.clone();
    let server = std::thread::spawn(move || {
        let reader = theirs.try_clone().expect("clone");
        service.serve(reader, theirs, authority)
    });
    (ours, server)
}

fn client(service: &PartitionService, authority: Authority) -> Client<UnixStream> {
    let (stream, _server) = connect(service, authority);
    Client::connect(stream).expect("handshake")
}

/// Subscribes `client` (as the host) to every default event of `path`.
fn subscribe(client: &mut Client<UnixStream>, path: &str, capacity: u32) -> mempart::SubId {
    let op = Op::Subscribe {
        path: path.into(),
        filter: EventFilter::default(),
        capacity,
    };
    match client.call(&Credential::Host, op).expect("io") {
        Ok(Reply::Subscribed(sub)) => sub,
        other => panic!("no subscription: {other:?}"),
    }
}

fn open(path: &str) -> Op {
    Op::Create {
        path: path.into(),
        limits: Limits::OPEN,
        mode: 0o750,
        zone: false,
    }
}

/// Starts process `pid` in the partition at `path` alone.
fn start_in(pid: mempart::Pid, path: &str) -> Op {
    Op::ProcessStart {
        pid,
        parent: None,
        spawn: Spawn::SetMpart(vec![path.into()]),
        owner: None,
    }
}

#[test]
fn requests_carry_credentials_and_the_engine_decides() {
    let service = service();
    let mut host = client(&service, Authority::Host);
    let mut guest = client(&service, Authority::Guest);
    assert_eq!(
        host.call(&Credential::Host, open("/partition/mem/fast/apps"))
            .expect("io"),
        Ok(Reply::Done)
    );
    let chown = Op::Chown {
        path: "/partition/mem/fast/apps".into(),
        uid: 1000,
        gid: 100,
    };
    assert_eq!(
        host.call(&Credential::Host, chown).expect("io"),
        Ok(Reply::Done)
    );

    let owner = Credential::guest(1000, 100);
    let listed = guest
        .call(
            &owner,
            Op::List {
                path: "/partition/mem/fast".into(),
            },
        )
        .expect("io");
    assert!(matches!(listed, Ok(Reply::Entries(ref e)) if e.iter().any(|d| d.name == "apps")));
    assert_eq!(
        guest
            .call(&owner, open("/partition/mem/fast/apps/web"))
            .expect("io"),
        Ok(Reply::Done)
    );

    let other = Credential::guest(1002, 5);
    let refused = guest
        .call(
            &other,
            Op::Metrics {
                path: "/partition/mem/fast/apps".into(),
            },
        )
        .expect("io");
    let err = refused.expect_err("EACCES");
    assert_eq!((err.errno, err.name.as_str()), (13, "EACCES"));
    assert!(
        err.message.contains("/partition/mem/fast/apps"),
        "{}",
        err.message
    );

    let posing = guest
        .call(&Credential::Host, open("/partition/mem/fast/x"))
        .expect("io");
    assert_eq!(posing.expect_err("EPERM").name, "EPERM");
}

#[test]
fn processes_allocations_and_frees_go_through_the_service() {
    let service = service();
    let mut host = client(&service, Authority::Host);
    let root = Credential::guest_root();
    let sandbox = Op::Create {
        path: "/partition/mem/fast/box".into(),
        limits: Limits {
            min: 4 * MIB,
            max: 4 * MIB,
        },
        mode: 0o755,
        zone: false,
    };
    assert_eq!(
        host.call(&Credential::Host, sandbox).expect("io"),
        Ok(Reply::Done)
    );
    assert_eq!(
        host.call(&root, start_in(42, "/partition/mem/fast/box"))
            .expect("io"),
        Ok(Reply::Done)
    );
    let alloc = |bytes| Op::Allocate {
        pid: 42,
        class: "fast".into(),
        bytes,
    };
    let Ok(Reply::Granted { grant, gpa: None }) = host.call(&root, alloc(3 * MIB)).expect("io")
    else {
        panic!("no grant");
    };
    // Process 42 is root's: another user may neither charge it nor free its grants.
    let other = Credential::guest(1000, 1000);
    for op in [
        alloc(MIB),
        Op::Free {
            pid: 42,
            grant,
            gpa: None,
        },
    ] {
        let refused = host.call(&other, op).expect("io").expect_err("EPERM");
        assert_eq!(refused.name, "EPERM", "{refused:?}");
    }
    let unknown = Op::Allocate {
        pid: 4242,
        class: "fast".into(),
        bytes: MIB,
    };
    let refused = host.call(&root, unknown).expect("io").expect_err("ESRCH");
    assert_eq!(refused.name, "ESRCH");
    assert_eq!(
        host.call(&root, alloc(2 * MIB))
            .expect("io")
            .expect_err("ENOMEM")
            .name,
        "ENOMEM"
    );
    assert_eq!(
        host.call(
            &root,
            Op::Free {
                pid: 42,
                grant,
                gpa: None
            }
        )
        .expect("io"),
        Ok(Reply::Done)
    );
    let Ok(Reply::Associations(view)) = host.call(&root, Op::ProcessView { pid: 42 }).expect("io")
    else {
        panic!("no view");
    };
    assert_eq!(
        view.iter().map(|a| a.path.as_str()).collect::<Vec<_>>(),
        vec!["/partition/mem/fast/box", "/partition/mem/sysram/sys"]
    );
}

/// Typed memory that hands out extents one after another from a base and can be told to
/// refuse taking them back, as a failed memory-slot removal would.
#[derive(Default)]
struct FakeTyped {
    next: Mutex<u64>,
    keep: AtomicBool,
    revoked: Mutex<Vec<u64>>,
}

const FAKE_BASE: u64 = 1 << 32;

impl TypedMemory for FakeTyped {
    fn grant(&self, _class: &str, bytes: u64) -> Result<u64, String> {
        let mut next = self.next.lock().expect("lock");
        let gpa = FAKE_BASE + *next;
        *next += bytes;
        Ok(gpa)
    }

    fn revoke(&self, _class: &str, gpa: u64) -> Result<(), String> {
        if self.keep.load(Ordering::SeqCst) {
            return Err("the test keeps it".into());
        }
        self.revoked.lock().expect("lock").push(gpa);
        Ok(())
    }
}

fn allocated(client: &mut Client<UnixStream>, class: &str) -> u64 {
    let op = Op::ClassMetrics {
        path: format!("/partition/mem/{class}"),
    };
    match client.call(&Credential::Host, op).expect("io") {
        Ok(Reply::Class(metrics)) => metrics.allocated,
        other => panic!("no class metrics: {other:?}"),
    }
}

/// A service whose typed memory is a [`FakeTyped`], and a host client through which
/// guest root started process 7 in `fast/app` and was granted an extent of `bytes`.
fn typed_grant(
    bytes: u64,
) -> (
    PartitionService,
    Arc<FakeTyped>,
    Client<UnixStream>,
    mempart::Grant,
    u64,
) {
    let service = service();
    let typed = Arc::new(FakeTyped::default());
    service.set_typed_memory(typed.clone());
    let mut host = client(&service, Authority::Host);
    let root = Credential::guest_root();
    assert_eq!(
        host.call(&Credential::Host, open("/partition/mem/fast/app"))
            .expect("io"),
        Ok(Reply::Done)
    );
    assert_eq!(
        host.call(&root, start_in(7, "/partition/mem/fast/app"))
            .expect("io"),
        Ok(Reply::Done)
    );
    let alloc = Op::Allocate {
        pid: 7,
        class: "fast".into(),
        bytes,
    };
    let Ok(Reply::Granted {
        grant,
        gpa: Some(gpa),
    }) = host.call(&root, alloc).expect("io")
    else {
        panic!("no extent");
    };
    (service, typed, host, grant, gpa)
}

#[test]
fn a_typed_extent_the_guest_keeps_stays_charged() {
    let (service, typed, mut host, grant, gpa) = typed_grant(MIB);
    let root = Credential::guest_root();
    let free = Op::Free {
        pid: 7,
        grant,
        gpa: Some(gpa),
    };
    typed.keep.store(true, Ordering::SeqCst);
    let refused = host
        .call(&root, free.clone())
        .expect("io")
        .expect_err("EBUSY");
    assert_eq!(refused.name, "EBUSY", "{refused:?}");
    assert!(
        refused.message.contains(&format!("0x{gpa:x}")),
        "{refused:?}"
    );
    assert_eq!(allocated(&mut host, "fast"), MIB, "still charged");
    let taken = service.revoke_newest("fast", grant.partition, MIB);
    assert!(taken.is_empty(), "a reclaim passes over it: {taken:?}");
    assert_eq!(allocated(&mut host, "fast"), MIB);
    typed.keep.store(false, Ordering::SeqCst);
    assert_eq!(host.call(&root, free).expect("io"), Ok(Reply::Done));
    assert_eq!(allocated(&mut host, "fast"), 0);
    assert_eq!(*typed.revoked.lock().expect("lock"), vec![gpa]);
}

#[test]
fn a_typed_charge_is_freed_only_with_its_extent() {
    let (_service, typed, mut host, grant, _) = typed_grant(2 * MIB);
    let root = Credential::guest_root();
    // Half of the grant, naming no extent: no extent of that size exists to take back.
    let half = Op::Free {
        pid: 7,
        grant: mempart::Grant {
            bytes: MIB,
            ..grant
        },
        gpa: None,
    };
    let refused = host.call(&root, half).expect("io").expect_err("ENOENT");
    assert_eq!(refused.name, "ENOENT", "{refused:?}");
    assert_eq!(allocated(&mut host, "fast"), 2 * MIB, "still charged");
    assert!(typed.revoked.lock().expect("lock").is_empty());
}

#[test]
fn events_are_pushed_in_order_with_sequence_numbers() {
    let service = service();
    let mut watcher = client(&service, Authority::Host);
    let mut actor = client(&service, Authority::Host);
    assert_eq!(
        actor
            .call(&Credential::Host, open("/partition/mem/sysram/p"))
            .expect("io"),
        Ok(Reply::Done)
    );
    let sub = subscribe(&mut watcher, "/partition/mem/sysram/p", 16);
    for pid in [7, 8] {
        let start = start_in(pid, "/partition/mem/sysram/p");
        assert_eq!(
            actor.call(&Credential::Host, start).expect("io"),
            Ok(Reply::Done)
        );
    }
    assert_eq!(
        actor
            .call(&Credential::Host, open("/partition/mem/sysram/p/c"))
            .expect("io"),
        Ok(Reply::Done)
    );
    let mut got = Vec::new();
    while got.len() < 3 {
        match watcher.next_event().expect("event") {
            ServerFrame::Event { sub: s, event } => {
                assert_eq!(s, sub);
                got.push((event.seq, event.kind));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got[0], (1, EventKind::ProcessAssociated { pid: 7 }));
    assert_eq!(got[1], (2, EventKind::ProcessAssociated { pid: 8 }));
    assert!(matches!(got[2], (3, EventKind::ChildCreated { .. })));
}

/// Shakes hands, sends `raw` bytes, and returns how the server ended the connection.
fn after_hello(service: &PartitionService, raw: &[u8]) -> ProtocolError {
    let (mut bad, server) = connect(service, Authority::Guest);
    let hello = ClientFrame::Hello {
        magic: MAGIC,
        version: protocol::VERSION,
    };
    write_frame(&mut bad, &hello).expect("write");
    bad.write_all(raw).expect("write");
    server.join().expect("server")
}

#[test]
fn hostile_peers_end_their_own_connection_only() {
    let service = service();
    let (mut bad, server) = connect(&service, Authority::Guest);
    write_frame(
        &mut bad,
        &ClientFrame::Hello {
            magic: *b"NOPE",
            version: 1,
        },
    )
    .expect("write");
    assert!(matches!(
        server.join().expect("server"),
        ProtocolError::Handshake(_)
    ));

    assert!(matches!(
        after_hello(&service, &u32::MAX.to_le_bytes()),
        ProtocolError::TooLarge(_)
    ));
    assert!(matches!(
        after_hello(&service, &[5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff]),
        ProtocolError::Decode(_)
    ));

    let mut good = client(&service, Authority::Guest);
    let listed = good
        .call(
            &Credential::guest(1, 1),
            Op::List {
                path: "/partition/mem".into(),
            },
        )
        .expect("io");
    assert!(matches!(listed, Ok(Reply::Entries(_))));
}

/// A subscriber whose queue overflows between two pushes is told how many events it
/// missed, and the sequence numbers keep counting them.
#[test]
fn an_overflowing_subscriber_gets_a_missed_count_and_a_gap_in_sequence_numbers() {
    let service = service();
    let mut actor = client(&service, Authority::Host);
    let mut watcher = client(&service, Authority::Host);
    assert_eq!(
        actor
            .call(&Credential::Host, open("/partition/mem/sysram/p"))
            .expect("io"),
        Ok(Reply::Done)
    );
    let sub = subscribe(&mut watcher, "/partition/mem/sysram/p", 1);
    let report = Op::ReportUsage {
        path: "/partition/mem/sysram/p".into(),
        own: 4 << 20,
    };
    assert_eq!(
        actor.call(&Credential::Host, report).expect("io"),
        Ok(Reply::Done)
    );
    // One request, two events (the configuration changed, a reclaim is asked for): the
    // second finds the one-slot queue full.
    let lower = Op::SetLimits {
        path: "/partition/mem/sysram/p".into(),
        min: None,
        max: Some(1 << 20),
        reclaim: true,
    };
    assert!(matches!(
        actor.call(&Credential::Host, lower).expect("io"),
        Ok(Reply::Outcome(_))
    ));
    let mut frames = vec![
        watcher.next_event().expect("frame"),
        watcher.next_event().expect("frame"),
    ];
    // The queue has been drained; the next event fits again.
    assert_eq!(
        actor
            .call(&Credential::Host, open("/partition/mem/sysram/p/c"))
            .expect("io"),
        Ok(Reply::Done)
    );
    frames.push(watcher.next_event().expect("frame"));
    assert_eq!(frames[0], ServerFrame::Missed { sub, count: 1 });
    let ServerFrame::Event { event, .. } = &frames[1] else {
        panic!("{frames:?}");
    };
    assert_eq!((event.seq, event.kind), (1, EventKind::ConfigChanged));
    let ServerFrame::Event { event, .. } = &frames[2] else {
        panic!("{frames:?}");
    };
    assert_eq!(event.seq, 3, "the missed event kept its number");
    assert!(matches!(event.kind, EventKind::ChildCreated { .. }));
}

/// A typed shared object is one extent: granted when it gets a size, the same extent for
/// every process that maps it, charged to the creator's partition whoever maps it, kept
/// through an unlink while mapped and taken back when its last mapper exits. A user who
/// neither owns it nor may execute its partition cannot map it, and a mapped object
/// keeps its size.
#[test]
fn a_typed_object_is_one_extent_shared_until_its_last_mapper_leaves() {
    let (_service, typed, mut host, _, _) = typed_grant(MIB);
    let root = Credential::guest_root();
    let user = Credential::guest(1000, 1000);
    let call =
        |host: &mut Client<UnixStream>, cred: &Credential, op: Op| host.call(cred, op).expect("io");
    assert_eq!(
        call(
            &mut host,
            &Credential::Host,
            open("/partition/mem/fast/other")
        ),
        Ok(Reply::Done)
    );
    for (pid, cred, path) in [
        (8, &root, "/partition/mem/fast/other"),
        (9, &user, "/partition/mem/sysram/sys"),
    ] {
        assert_eq!(call(&mut host, cred, start_in(pid, path)), Ok(Reply::Done));
    }
    let create = Op::ObjectCreate {
        pid: 7,
        class: "fast".into(),
        name: "ring".into(),
    };
    assert_eq!(call(&mut host, &root, create), Ok(Reply::Done));
    let resize = |to| Op::ObjectResize {
        name: "ring".into(),
        change: protocol::SizeChange::To(to),
    };
    assert_eq!(call(&mut host, &root, resize(2 * MIB)), Ok(Reply::Done));
    assert_eq!(call(&mut host, &root, resize(4 * MIB)), Ok(Reply::Done));
    let first_extent = FAKE_BASE + MIB;
    assert_eq!(
        *typed.revoked.lock().expect("lock"),
        vec![first_extent],
        "a resize of an unmapped object replaces its extent"
    );
    let map = |pid| Op::ObjectMap {
        pid,
        name: "ring".into(),
    };
    let mapped = |reply: Result<Reply, protocol::WireError>| match reply {
        Ok(Reply::ObjectMapped { object, gpa }) => (object, gpa),
        other => panic!("not mapped: {other:?}"),
    };
    let (object, gpa) = mapped(call(&mut host, &root, map(7)));
    let extent = first_extent + 2 * MIB;
    assert_eq!((object.size, gpa), (4 * MIB, Some(extent)));
    let (object, gpa) = mapped(call(&mut host, &root, map(8)));
    assert_eq!((object.mappers, gpa), (2, Some(extent)), "the same extent");
    let denied = call(&mut host, &user, map(9)).expect_err("EACCES");
    assert_eq!(denied.name, "EACCES", "{denied:?}");
    let busy = call(&mut host, &root, resize(MIB)).expect_err("EBUSY");
    assert_eq!(busy.name, "EBUSY", "{busy:?}");
    assert_eq!(
        call(&mut host, &root, resize(4 * MIB)),
        Ok(Reply::Done),
        "the same size changes nothing"
    );
    let (_, gpa) = mapped(call(&mut host, &root, map(8)));
    assert_eq!(gpa, Some(extent), "the mappers keep their extent");
    assert!(
        !typed.revoked.lock().expect("lock").contains(&extent),
        "a resize to the same size takes nothing back"
    );
    let used = |host: &mut Client<UnixStream>, path: &str| match call(
        host,
        &Credential::Host,
        Op::Metrics { path: path.into() },
    ) {
        Ok(Reply::Metrics(m)) => m.used,
        other => panic!("no metrics: {other:?}"),
    };
    assert_eq!(used(&mut host, "/partition/mem/fast/other"), 0);
    assert_eq!(used(&mut host, "/partition/mem/fast/app"), 5 * MIB);
    let unlink = Op::ObjectUnlink {
        name: "ring".into(),
    };
    assert_eq!(call(&mut host, &root, unlink), Ok(Reply::Done));
    let gone = call(&mut host, &root, map(8)).expect_err("ENOENT");
    assert_eq!(
        gone.name, "ENOENT",
        "an unlinked name cannot be mapped again"
    );
    let revoked = |extent| typed.revoked.lock().expect("lock").contains(&extent);
    for pid in [7, 8] {
        assert!(
            !revoked(extent),
            "mapped by pid {pid} and up: the extent stays"
        );
        assert_eq!(
            call(&mut host, &root, Op::ProcessExit { pid }),
            Ok(Reply::Done)
        );
    }
    assert!(
        revoked(extent),
        "the last mapper's exit takes the extent back"
    );
    assert_eq!(
        call(&mut host, &root, Op::Objects),
        Ok(Reply::Objects(Vec::new()))
    );
    assert_eq!(allocated(&mut host, "fast"), 0);
}
