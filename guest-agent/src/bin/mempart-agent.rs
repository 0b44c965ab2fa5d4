//! `mempart-agent`: the guest daemon. It owns the upstream stream to the VMM's partition
//! service (the `org.mempart.agent.0` port, or a unix socket), listens on a local unix
//! socket, authenticates each client by what the kernel recorded when it connected
//! (`SO_PEERCRED`, `SO_PEERGROUPS`, `SO_PEERPIDFD`) and forwards its requests with that
//! identity — never with one the client claims. Responses and pushed events go back to
//! the client that asked. Seats are given per user in the accept loop, before a thread
//! is spent on a connection.

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc::{
    channel, sync_channel, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError,
};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use guest_agent::cgroup::{CgroupMirror, Node};
use guest_agent::exits::{ExitWatcher, PidFd};
use guest_agent::forks::ForkEvents;
use guest_agent::view::{Ask, PartitionView};
use guest_agent::{
    boot_ticks_now, groups_of, peer_groups, peer_of, peer_pidfd, start_ticks, Peer, DEFAULT_SOCKET,
};
use protocol::{
    read_frame, write_frame, ClientFrame, Credential, EntryKind, Op, Reply, ServerFrame, Spawn,
    SubId, WireError, MAGIC, VERSION,
};

/// The mempart guest agent.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The VMM's partition service: a virtio port device (e.g. /dev/vport0p1, found by the
    /// name org.mempart.agent.0) or a unix socket.
    #[arg(long)]
    upstream: Option<PathBuf>,
    /// Where local clients (mpctl) connect.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    listen: PathBuf,
    /// Mirror sysram partitions as cgroup v2 groups under this root (in <root>/mempart).
    #[arg(long, default_value = "/sys/fs/cgroup")]
    cgroup_root: PathBuf,
    /// Where the kernel describes the guest's NUMA nodes: node 0's use, less what
    /// unzoned partitions report, is reported as the use of sysram's `sys`.
    #[arg(long, default_value = "/sys/devices/system/node")]
    node_dir: PathBuf,
    /// Do not mirror partitions into cgroups.
    #[arg(long)]
    no_cgroups: bool,
    /// Do not follow forks through the kernel's process events connector (then only
    /// processes that talk to the agent are tracked).
    #[arg(long)]
    no_fork_events: bool,
    /// Seconds between reports of each mirrored partition's use (from `memory.current`)
    /// to the VMM; a change of limits is followed by a report at once.
    #[arg(long, default_value_t = 2.0)]
    report_interval: f64,
    /// Serve a read-only view of the name space here through FUSE (the guest's init
    /// uses /partition): partitions as directories, processes as links to /proc/<pid>,
    /// figures in each class's and partition's `metrics` file. Listing and reading ask
    /// the VMM with the reader's identity.
    #[arg(long, value_name = "DIR")]
    view: Option<PathBuf>,
    /// Seconds a new client has to say hello; one that stays silent is disconnected and
    /// its seat freed.
    #[arg(long, default_value_t = 5.0)]
    hello_timeout: f64,
    /// Most clients served at once; one more is refused at its handshake. A sixteenth
    /// of the seats is kept for root.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=4096))]
    max_clients: u16,
    /// Most clients one user other than root holds at once, so that no user can take
    /// every seat.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=4096))]
    max_clients_per_user: u16,
}

/// Who holds the seats: decided in the accept loop, before a thread is spent on a client.
struct Seats {
    most: usize,
    most_per_user: usize,
    taken: usize,
    by_uid: HashMap<u32, usize>,
}

/// One client being served; its seat frees when it leaves.
struct Seat {
    seats: Arc<Mutex<Seats>>,
    uid: u32,
}

impl Seats {
    fn new(most: u16, most_per_user: u16) -> Arc<Mutex<Seats>> {
        Arc::new(Mutex::new(Seats {
            most: usize::from(most),
            most_per_user: usize::from(most_per_user),
            taken: 0,
            by_uid: HashMap::new(),
        }))
    }

    /// A seat for a client of `uid`, or why there is none: all are taken, the rest are
    /// kept for root, or that user holds its share.
    fn take(seats: &Arc<Mutex<Seats>>, uid: u32) -> Result<Seat, String> {
        let mut s = lock(seats);
        let kept_for_root = s.most / 16;
        let held = s.by_uid.get(&uid).copied().unwrap_or(0);
        if s.taken >= s.most {
            return Err(format!("the agent serves {} clients at most", s.most));
        }
        if uid != 0 && s.taken >= s.most - kept_for_root {
            return Err(format!(
                "the agent serves {} clients at most; the last {kept_for_root} are kept for root",
                s.most
            ));
        }
        if uid != 0 && held >= s.most_per_user {
            return Err(format!(
                "uid {uid} holds {held} connections, the most one user may"
            ));
        }
        s.taken += 1;
        s.by_uid.insert(uid, held + 1);
        Ok(Seat {
            seats: Arc::clone(seats),
            uid,
        })
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut s = lock(&self.seats);
        s.taken = s.taken.saturating_sub(1);
        if let Some(held) = s.by_uid.get_mut(&self.uid) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                s.by_uid.remove(&self.uid);
            }
        }
    }
}

/// Refused connections kept open until their hello arrives; beyond this many they are
/// closed at once.
const REFUSALS_LINGERING: usize = 64;
/// `sys`'s use of node 0 moves by pages all the time: it is reported in whole MiB, so a
/// report goes out only when it moved by one.
const SYS_REPORT_UNIT: u64 = 1 << 20;
/// How long a refused connection is kept open for its hello.
const REFUSAL_LINGER: Duration = Duration::from_millis(200);

/// Tells a client without a seat why, from the accept loop and without blocking it. Its
/// hello is taken first when it has arrived, which it usually has: closing a socket with
/// unread bytes would reset the client's end before it reads the refusal. A connection
/// whose hello is still to come waits a little on the lingering thread.
fn refuse(stream: UnixStream, reason: String, lingering: &SyncSender<UnixStream>) {
    let mut heard = false;
    if stream.set_nonblocking(true).is_ok() {
        let mut hello = [0u8; 64];
        heard = matches!((&stream).read(&mut hello), Ok(n) if n > 0);
        let _ = write_frame(&mut &stream, &ServerFrame::Refused { reason });
    }
    if !heard {
        // A full queue: closed at once.
        let _ = lingering.try_send(stream);
    }
}

/// Keeps refused connections open, one at a time, until their hello arrives or a short
/// wait ends.
fn start_lingering() -> std::io::Result<SyncSender<UnixStream>> {
    let (tx, rx) = sync_channel::<UnixStream>(REFUSALS_LINGERING);
    std::thread::Builder::new()
        .name("refused".into())
        .stack_size(HELPER_STACK)
        .spawn(move || {
            for stream in rx {
                let mut sink = [0u8; 64];
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(REFUSAL_LINGER));
                let _ = (&stream).read(&mut sink);
            }
        })?;
    Ok(tx)
}

/// Raises the soft limit on open files to the hard one: each client costs descriptors,
/// and the default soft limit (1,024) is below what the seats may need.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit and setrlimit to read and write.
    #[allow(unsafe_code)]
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// What the cgroup mirror's thread does next.
enum MirrorWork {
    /// Sync, then give a client the response to its mutating request.
    Deliver(u64, ServerFrame),
    /// Sync because a partition's configuration changed (a reclaim, a host change).
    Resync,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

type Writer = Arc<Mutex<Box<dyn Write + Send>>>;

/// Where a response goes.
enum Route {
    /// To a client, as its request `id`; `mutating` responses wait for the cgroup mirror.
    Client {
        client: u64,
        id: u32,
        mutating: bool,
    },
    /// To the agent itself, waiting on a channel.
    Ask(Sender<Result<Reply, WireError>>),
    /// Nowhere (the agent's own fire-and-forget requests).
    Drop,
}

/// Who waits for what upstream.
#[derive(Default)]
struct Routes {
    next_id: u32,
    /// Upstream request id → where its response goes.
    pending: HashMap<u32, Route>,
    /// Subscription → the client that holds it.
    subscriptions: HashMap<SubId, u64>,
    /// Client → the queue of frames its writer thread sends it.
    clients: HashMap<u64, Outbox>,
    /// Processes the agent has registered, so a child can inherit from its parent.
    registered: HashSet<u32>,
    /// The agent's own subscriptions (configuration of mirrored partitions), by path.
    own_subs: HashMap<String, SubId>,
    /// The VMM's stream has ended: nothing more is sent or answered.
    upstream_ended: bool,
}

/// Frames waiting for one client; a client that lets this many pile up (it stopped
/// reading) is disconnected rather than allowed to stall the other clients.
const OUTBOX_FRAMES: usize = 1024;

/// A client's queue of outgoing frames, and a handle on its socket to disconnect it.
#[derive(Clone)]
struct Outbox {
    queue: SyncSender<ServerFrame>,
    socket: Arc<UnixStream>,
}

impl Outbox {
    /// Starts the thread that writes queued frames to `writer` in order.
    fn start(mut writer: UnixStream) -> std::io::Result<Outbox> {
        let socket = Arc::new(writer.try_clone()?);
        let (queue, frames) = sync_channel::<ServerFrame>(OUTBOX_FRAMES);
        std::thread::Builder::new()
            .name("client-writer".into())
            .stack_size(HELPER_STACK)
            .spawn(move || {
                for frame in frames {
                    if write_frame(&mut writer, &frame).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Outbox { queue, socket })
    }

    /// Queues `frame`; a client whose queue is full is cut off.
    fn push(&self, frame: ServerFrame) {
        if let Err(TrySendError::Full(_)) = self.queue.try_send(frame) {
            eprintln!("mempart-agent: a client stopped reading; disconnecting it");
            self.disconnect();
        }
    }

    /// Closes the client's connection: whatever it waits for, it hears that it ended.
    fn disconnect(&self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

/// Most processes the agent remembers having registered.
const MAX_REGISTERED: usize = 1 << 16;

/// The effective uid and gid of `pid`, from `/proc/<pid>/status`.
fn owner_of(pid: u32) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let effective = |key: &str| -> Option<u32> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(2)?.parse().ok()
    };
    Some((effective("Uid:")?, effective("Gid:")?))
}

/// The parent of `pid`, from `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields follow the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

struct Agent {
    upstream: Writer,
    routes: Mutex<Routes>,
    /// Held from deciding to register a process until its `ProcessStart` is sent, so a
    /// client's own requests never overtake its registration by the fork follower.
    registering: Mutex<()>,
    /// Mutating responses held until the cgroup mirror has caught up (when mirroring).
    mirror_queue: Option<Sender<MirrorWork>>,
    /// Watches every registered process's pidfd; exits are reported upstream.
    exits: ExitWatcher,
}

/// Stack size of the agent's helper threads (exit waiters block in poll, client writers
/// in write).
const HELPER_STACK: usize = 64 * 1024;

impl Agent {
    /// Sends `op` upstream for `caller`; its response goes where `route` says.
    fn send(&self, route: Route, caller: &Credential, op: Op) -> anyhow::Result<()> {
        let upstream_id = {
            let mut routes = lock(&self.routes);
            if routes.upstream_ended {
                bail!("the upstream ended");
            }
            routes.next_id = routes.next_id.wrapping_add(1);
            let upstream_id = routes.next_id;
            routes.pending.insert(upstream_id, route);
            upstream_id
        };
        let frame = ClientFrame::Request {
            id: upstream_id,
            caller: caller.clone(),
            op,
        };
        let written = write_frame(&mut *lock(&self.upstream), &frame);
        if written.is_err() {
            lock(&self.routes).pending.remove(&upstream_id);
        }
        written.context("writing upstream")
    }

    /// Sends `op` on behalf of a client (request `id`).
    fn forward(&self, client: u64, id: u32, caller: &Credential, op: Op) -> anyhow::Result<()> {
        let mutating = matches!(
            op,
            Op::Create { .. }
                | Op::Destroy { .. }
                | Op::SetLimits { .. }
                | Op::Associate { .. }
                | Op::Disassociate { .. }
                | Op::ReplaceAssociations { .. }
        );
        self.send(
            Route::Client {
                client,
                id,
                mutating,
            },
            caller,
            op,
        )
    }

    /// Sends `op` as the agent itself and forgets the answer.
    fn tell(&self, op: Op) -> anyhow::Result<()> {
        self.send(Route::Drop, &Credential::guest(0, 0), op)
    }

    /// Sends `op` as the guest superuser and waits for the answer (not from the routing thread).
    fn ask(&self, op: Op) -> anyhow::Result<Result<Reply, WireError>> {
        self.ask_as(&Credential::guest_root(), op)
    }

    /// Sends `op` as `caller` and waits for the answer (not from the routing thread).
    fn ask_as(&self, caller: &Credential, op: Op) -> anyhow::Result<Result<Reply, WireError>> {
        let (tx, rx) = channel();
        self.send(Route::Ask(tx), caller, op)?;
        rx.recv().context("the upstream ended")
    }

    /// Reads the sysram tree from the service, writes it into the cgroup mirror, and
    /// follows the configuration of partitions it has not followed yet. Returns the tree.
    fn sync_mirror(&self, mirror: &CgroupMirror) -> anyhow::Result<Vec<Node>> {
        let mut nodes = Vec::new();
        let mut todo = vec![String::new()];
        while let Some(rel) = todo.pop() {
            let path = if rel.is_empty() {
                "/partition/mem/sysram".to_string()
            } else {
                format!("/partition/mem/sysram/{rel}")
            };
            let Ok(Reply::Entries(entries)) = self.ask(Op::List { path })? else {
                continue;
            };
            for entry in entries
                .into_iter()
                .filter(|e| e.kind == EntryKind::Partition)
            {
                let child = if rel.is_empty() {
                    entry.name
                } else {
                    format!("{rel}/{}", entry.name)
                };
                let path = format!("/partition/mem/sysram/{child}");
                if let Ok(Reply::Metrics(m)) = self.ask(Op::Metrics { path })? {
                    nodes.push(Node {
                        rel: child.clone(),
                        min: m.current.limits.min,
                        max: m.pending_max.unwrap_or(m.current.limits.max),
                        pids: m.processes.clone(),
                        zone: m.zone.map(|z| z.spec.node),
                    });
                    todo.push(child);
                }
            }
        }
        let shortfalls = mirror.apply(&nodes).context("writing the cgroup mirror")?;
        for shortfall in shortfalls {
            eprintln!("mempart-agent: cgroup mirror: {shortfall}; not enforced in the guest");
        }
        for node in &nodes {
            let path = format!("/partition/mem/sysram/{}", node.rel);
            if lock(&self.routes).own_subs.contains_key(&path) {
                continue;
            }
            // Configuration changes only.
            let filter = protocol::EventFilter {
                config: true,
                processes: false,
                children: false,
                violations: false,
                threshold: None,
                delta: None,
            };
            let op = Op::Subscribe {
                path: path.clone(),
                filter,
                capacity: 16,
            };
            if let Ok(Reply::Subscribed(sub)) = self.ask(op)? {
                lock(&self.routes).own_subs.insert(path, sub);
            }
        }
        let present: HashSet<String> = nodes
            .iter()
            .map(|n| format!("/partition/mem/sysram/{}", n.rel))
            .collect();
        lock(&self.routes)
            .own_subs
            .retain(|path, _| present.contains(path));
        Ok(nodes)
    }

    /// Keeps the cgroup mirror in step — after each mutating request, before its client
    /// hears the answer, and after any configuration change of a mirrored partition —
    /// and reports each mirrored partition's use to the VMM after each sync and every
    /// `interval`.
    fn run_mirror(
        &self,
        mirror: &CgroupMirror,
        queue: Receiver<MirrorWork>,
        mut nodes: Vec<Node>,
        interval: Duration,
    ) {
        let mut reported = HashMap::new();
        loop {
            let work = match queue.recv_timeout(interval) {
                Ok(work) => Some(work),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            if work.is_some() {
                match self.sync_mirror(mirror) {
                    Ok(fresh) => nodes = fresh,
                    Err(e) => eprintln!("mempart-agent: cgroup mirror: {e:#}"),
                }
            }
            self.report_usage(mirror, &nodes, &mut reported);
            if let Some(MirrorWork::Deliver(client, frame)) = work {
                self.deliver(client, frame);
            }
        }
    }

    /// Tells the VMM each mirrored partition's own use, and `sys`'s use of node 0, where
    /// it changed since the last report.
    fn report_usage(
        &self,
        mirror: &CgroupMirror,
        nodes: &[Node],
        reported: &mut HashMap<String, u64>,
    ) {
        let usage = mirror.own_usage(nodes);
        let sys = mirror
            .sys_usage(nodes, &usage)
            .map(|own| ("sys".to_string(), own / SYS_REPORT_UNIT * SYS_REPORT_UNIT));
        for (rel, own) in usage.into_iter().chain(sys) {
            if reported.get(&rel) == Some(&own) {
                continue;
            }
            let path = format!("/partition/mem/sysram/{rel}");
            if self.tell(Op::ReportUsage { path, own }).is_ok() {
                reported.insert(rel, own);
            }
        }
    }

    /// Queues `frame` for `client` (never blocks: the router serves every client).
    fn deliver(&self, client: u64, frame: ServerFrame) {
        let outbox = lock(&self.routes).clients.get(&client).cloned();
        if let Some(outbox) = outbox {
            outbox.push(frame);
        }
    }

    /// Hands every upstream frame to the client it belongs to.
    fn route_upstream(&self, mut reader: Box<dyn Read + Send>) -> anyhow::Result<()> {
        loop {
            let frame: ServerFrame = read_frame(&mut reader).context("reading upstream")?;
            let (target, frame) = {
                let mut routes = lock(&self.routes);
                match frame {
                    ServerFrame::Response { id, result } => match routes.pending.remove(&id) {
                        Some(Route::Client {
                            client,
                            id: their_id,
                            mutating,
                        }) => {
                            if let Ok(Reply::Subscribed(sub)) = &result {
                                routes.subscriptions.insert(*sub, client);
                            }
                            let ok = result.is_ok();
                            let frame = ServerFrame::Response {
                                id: their_id,
                                result,
                            };
                            match &self.mirror_queue {
                                Some(queue) if mutating && ok => {
                                    let _ = queue.send(MirrorWork::Deliver(client, frame));
                                    continue;
                                }
                                _ => (client, frame),
                            }
                        }
                        Some(Route::Ask(tx)) => {
                            let _ = tx.send(result);
                            continue;
                        }
                        Some(Route::Drop) | None => continue,
                    },
                    ServerFrame::Event { sub, event } => match routes.subscriptions.get(&sub) {
                        Some(&client) => (client, ServerFrame::Event { sub, event }),
                        None => {
                            let ours = routes.own_subs.values().any(|s| *s == sub);
                            if let (true, Some(queue)) = (ours, &self.mirror_queue) {
                                let _ = queue.send(MirrorWork::Resync);
                            }
                            continue;
                        }
                    },
                    ServerFrame::Missed { sub, count } => match routes.subscriptions.get(&sub) {
                        Some(&client) => (client, ServerFrame::Missed { sub, count }),
                        None => continue,
                    },
                    other => bail!("unexpected upstream frame {other:?}"),
                }
            };
            self.deliver(target, frame);
        }
    }

    /// Tells the service that `pid` exited: the process is disassociated and its private
    /// allocations are freed.
    fn report_exit(&self, pid: u32) {
        lock(&self.routes).registered.remove(&pid);
        if let Err(e) = self.tell(Op::ProcessExit { pid }) {
            eprintln!("mempart-agent: pid {pid} exited: {e:#}");
        }
    }

    /// Registers process `pid`, held by `pidfd`, as `owner`, inheriting from `parent`;
    /// its exit is watched on that same pidfd. Registering is refused when the agent
    /// already tracks as many processes as it may.
    fn register(
        &self,
        pid: u32,
        pidfd: PidFd,
        parent: Option<u32>,
        owner: Credential,
    ) -> anyhow::Result<()> {
        let new = {
            let mut routes = lock(&self.routes);
            routes.registered.len() < MAX_REGISTERED && routes.registered.insert(pid)
        };
        if !new {
            return Ok(());
        }
        let start = Op::ProcessStart {
            pid,
            parent,
            spawn: Spawn::Inherit,
            owner: Some(owner),
        };
        let registered = self
            .send(Route::Drop, &Credential::guest_root(), start)
            .and_then(|()| self.exits.watch(pid, pidfd).context("watching its exit"));
        if registered.is_err() {
            lock(&self.routes).registered.remove(&pid);
        }
        registered
    }

    /// Registers every process forked by a registered one, inheriting from its parent,
    /// as the kernel reports forks; runs until the connector fails.
    fn follow_forks(self: &Arc<Self>, events: &ForkEvents) {
        loop {
            let fork = match events.next() {
                Ok(fork) => fork,
                Err(e) => {
                    eprintln!("mempart-agent: process events: {e}; forks are no longer followed");
                    return;
                }
            };
            let _registering = lock(&self.registering);
            let tracked = {
                let routes = lock(&self.routes);
                routes.registered.contains(&fork.parent) && !routes.registered.contains(&fork.child)
            };
            if !tracked {
                continue;
            }
            // The child is read about by pid number: what is read counts only if the
            // pidfd, opened first, still holds that pid afterwards, and the process read
            // about is the parent's child.
            let pidfd = match PidFd::open(fork.child) {
                Ok(pidfd) => pidfd,
                Err(e) => {
                    if e.raw_os_error() != Some(libc::ESRCH) {
                        eprintln!("mempart-agent: pid {}: not tracked: {e}", fork.child);
                    }
                    continue;
                }
            };
            let owner = owner_of(fork.child);
            let groups = groups_of(fork.child);
            let parent = parent_of(fork.child);
            let Some((uid, gid)) = owner else { continue };
            if parent != Some(fork.parent) || !pidfd.holds_its_pid() {
                continue;
            }
            let owner = Credential::Guest { uid, gid, groups };
            if let Err(e) = self.register(fork.child, pidfd, Some(fork.parent), owner) {
                eprintln!("mempart-agent: pid {}: {e:#}", fork.child);
            }
        }
    }

    /// Why the agent answers `op` from `client` itself instead of forwarding it: only the
    /// agent registers processes and reports their exits, and a client ends only its own
    /// subscriptions (the agent's upstream connection holds everyone's).
    fn refusal_of(&self, client: u64, op: &Op) -> Option<WireError> {
        let (errno, name, message) = match op {
            Op::ProcessStart { .. } | Op::ProcessExit { .. } => (
                1,
                "EPERM",
                "processes are registered by the agent from the kernel's fork events".to_string(),
            ),
            Op::Unsubscribe { sub }
                if lock(&self.routes).subscriptions.get(sub) != Some(&client) =>
            {
                (
                    2,
                    "ENOENT",
                    format!("{sub:?}: not a subscription of this client"),
                )
            }
            _ => return None,
        };
        Some(WireError {
            errno,
            name: name.into(),
            message: format!("{name}: agent: {message}"),
        })
    }

    /// Serves one local client, `peer` by its `SO_PEERCRED`, in its `seat` until it leaves.
    fn serve_client(
        self: &Arc<Self>,
        client: u64,
        stream: UnixStream,
        peer: Peer,
        seat: Seat,
        hello_timeout: Duration,
    ) -> anyhow::Result<()> {
        // Who connected, as the kernel saw it at connect time: a process that connects,
        // exits and has its pid reused cannot pass as the new owner of that pid.
        let pidfd = connecting_process(&stream, peer.pid);
        let caller = Credential::Guest {
            uid: peer.uid,
            gid: peer.gid,
            groups: peer_groups(&stream).unwrap_or_default(),
        };
        let mut reader = stream.try_clone()?;
        let mut writer = stream;
        // Declared after the streams, so dropped before them: by the time a client sees
        // its connection close, its seat is free for the next one.
        let _seat = seat;
        // A client that never says hello does not hold its thread (or seat) for long.
        reader.set_read_timeout(Some(hello_timeout))?;
        let hello = read_frame(&mut reader).map_err(|e| match e {
            protocol::ProtocolError::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                anyhow::anyhow!(
                    "said no hello within {}s; disconnected",
                    hello_timeout.as_secs_f64()
                )
            }
            e => e.into(),
        })?;
        reader.set_read_timeout(None)?;
        if !matches!(hello, ClientFrame::Hello { magic, version } if magic == MAGIC && version == VERSION)
        {
            let reason = format!("speak protocol version {VERSION}");
            write_frame(&mut writer, &ServerFrame::Refused { reason })?;
            return Ok(());
        }
        // Every process that talks to the agent is tracked, registered before it hears
        // the welcome; it inherits from its parent when the agent registered the parent.
        let registering = lock(&self.registering);
        let parent = parent_of(peer.pid);
        match pidfd {
            Ok(pidfd) if pidfd.holds_its_pid() => {
                let parent = parent.filter(|p| lock(&self.routes).registered.contains(p));
                if !lock(&self.routes).registered.contains(&peer.pid) {
                    self.register(peer.pid, pidfd, parent, caller.clone())?;
                }
            }
            Ok(_) => eprintln!(
                "mempart-agent: client {client}: pid {} exited before its hello; not registered",
                peer.pid
            ),
            Err(e) => eprintln!(
                "mempart-agent: client {client}: pid {}: {e}; not registered",
                peer.pid
            ),
        }
        drop(registering);
        write_frame(&mut writer, &ServerFrame::Welcome { version: VERSION })?;
        let outbox = Outbox::start(writer)?;
        lock(&self.routes).clients.insert(client, outbox.clone());
        let result = loop {
            let frame: ClientFrame = match read_frame(&mut reader) {
                Ok(frame) => frame,
                Err(e) => break Err(e.into()),
            };
            let ClientFrame::Request { id, op, .. } = frame else {
                break Ok(());
            };
            if let Some(refusal) = self.refusal_of(client, &op) {
                outbox.push(ServerFrame::Response {
                    id,
                    result: Err(refusal),
                });
                continue;
            }
            if let Err(e) = self.forward(client, id, &caller, op) {
                break Err(e);
            }
        };
        let subs: Vec<SubId> = {
            let mut routes = lock(&self.routes);
            routes.clients.remove(&client);
            let mine: Vec<SubId> = routes
                .subscriptions
                .iter()
                .filter(|(_, c)| **c == client)
                .map(|(s, _)| *s)
                .collect();
            for s in &mine {
                routes.subscriptions.remove(s);
            }
            mine
        };
        for sub in subs {
            let _ = self.send(Route::Drop, &caller, Op::Unsubscribe { sub });
        }
        result
    }
}

/// A pidfd of the process that connected on `stream` (pid `pid` by `SO_PEERCRED`). Without
/// `SO_PEERPIDFD` (kernels before 6.5) the pid is opened and must have started before
/// now: a process that took the pid after the connection cannot be the one that made it.
fn connecting_process(stream: &UnixStream, pid: u32) -> std::io::Result<PidFd> {
    match peer_pidfd(stream) {
        Ok(fd) => Ok(PidFd::from_fd(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {
            let now = boot_ticks_now();
            let pidfd = PidFd::open(pid)?;
            match (start_ticks(pid), now) {
                (Some(start), Some(now)) if start <= now && pidfd.holds_its_pid() => Ok(pidfd),
                _ => Err(std::io::Error::from_raw_os_error(libc::ESRCH)),
            }
        }
        Err(e) => Err(e),
    }
}

/// A positive number of seconds given for `flag`, at most a day.
fn positive_seconds(flag: &str, seconds: f64) -> anyhow::Result<Duration> {
    if !(seconds.is_finite() && seconds > 0.0) {
        bail!("{flag} {seconds}: give a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(seconds.min(86_400.0)))
}

/// Opens the upstream: a unix socket is connected, anything else (the virtio port) opened.
fn open_upstream(path: &PathBuf) -> anyhow::Result<(Box<dyn Read + Send>, Box<dyn Write + Send>)> {
    let meta = std::fs::metadata(path).with_context(|| format!("upstream {}", path.display()))?;
    if meta.file_type().is_socket() {
        let stream =
            UnixStream::connect(path).with_context(|| format!("upstream {}", path.display()))?;
        Ok((Box::new(stream.try_clone()?), Box::new(stream)))
    } else {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("upstream {}", path.display()))?;
        Ok((Box::new(file.try_clone()?), Box::new(file)))
    }
}

/// The guest's agent port: the virtio port named `org.mempart.agent.0`.
fn find_port() -> anyhow::Result<PathBuf> {
    for entry in std::fs::read_dir("/sys/class/virtio-ports").context("/sys/class/virtio-ports")? {
        let entry = entry?;
        let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim_end() == "org.mempart.agent.0" {
            return Ok(PathBuf::from("/dev").join(entry.file_name()));
        }
    }
    bail!("no virtio port is named org.mempart.agent.0")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let upstream = match args.upstream {
        Some(path) => path,
        None => find_port()?,
    };
    let interval = positive_seconds("--report-interval", args.report_interval)?;
    let hello_timeout = positive_seconds("--hello-timeout", args.hello_timeout)?;
    let (mut reader, mut writer) = open_upstream(&upstream)?;
    write_frame(
        &mut writer,
        &ClientFrame::Hello {
            magic: MAGIC,
            version: VERSION,
        },
    )?;
    match read_frame(&mut reader)? {
        ServerFrame::Welcome { .. } => {}
        other => bail!(
            "upstream {} refused the handshake: {other:?}",
            upstream.display()
        ),
    }
    let _ = std::fs::remove_file(&args.listen);
    let listener = UnixListener::bind(&args.listen)
        .with_context(|| format!("listening on {}", args.listen.display()))?;
    // Everyone may connect; the service decides what each identity may do.
    std::fs::set_permissions(
        &args.listen,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )?;
    let (mirror_queue, mirror) = if args.no_cgroups {
        (None, None)
    } else {
        let (tx, rx) = channel();
        (
            Some(tx),
            Some((CgroupMirror::new(&args.cgroup_root, &args.node_dir), rx)),
        )
    };
    raise_fd_limit();
    let (exited_tx, exited) = channel();
    let agent = Arc::new(Agent {
        upstream: Arc::new(Mutex::new(writer)),
        routes: Mutex::new(Routes::default()),
        registering: Mutex::new(()),
        mirror_queue,
        exits: ExitWatcher::start(exited_tx).context("starting the exit watcher")?,
    });
    {
        let agent = Arc::clone(&agent);
        std::thread::spawn(move || {
            for pid in exited {
                agent.report_exit(pid);
            }
        });
    }
    let router = {
        let agent = Arc::clone(&agent);
        let listen = args.listen.clone();
        std::thread::spawn(move || {
            let ended = agent.route_upstream(reader);
            // Nobody will answer now: whoever waits (the view, the mirror) hears so,
            // nobody else starts waiting, and every client's connection closes.
            let mut routes = lock(&agent.routes);
            routes.upstream_ended = true;
            routes.pending.clear();
            routes.clients.values().for_each(Outbox::disconnect);
            drop(routes);
            // Wakes the accept loop, which then sees the end and stops the agent.
            let _ = UnixStream::connect(&listen);
            ended
        })
    };
    if let Some((mirror, queue)) = mirror {
        // The first sync enables the memory controller and builds the groups before any
        // client can run: changing that under running processes is what to avoid.
        let nodes = agent
            .sync_mirror(&mirror)
            .context("the first cgroup mirror")?;
        let agent = Arc::clone(&agent);
        std::thread::spawn(move || agent.run_mirror(&mirror, queue, nodes, interval));
    }
    if !args.no_fork_events {
        match ForkEvents::listen() {
            Ok(events) => {
                let agent = Arc::clone(&agent);
                std::thread::spawn(move || agent.follow_forks(&events));
            }
            Err(e) => eprintln!(
                "mempart-agent: process events connector: {e}; only processes that talk to the agent are tracked"
            ),
        }
    }
    let _view = match &args.view {
        Some(dir) => {
            let agent = Arc::clone(&agent);
            let ask: Ask = Box::new(move |caller, op| agent.ask_as(caller, op).ok());
            let session = PartitionView::new(ask)
                .mount(dir)
                .with_context(|| format!("mounting the /partition view on {}", dir.display()))?;
            Some(session)
        }
        None => None,
    };
    // The ready line goes to standard output, so a supervisor can wait for it while
    // diagnostics keep going to standard error.
    println!(
        "mempart-agent: ready on {} (upstream {})",
        args.listen.display(),
        upstream.display()
    );
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let mut next_client = 0u64;
    let seats = Seats::new(args.max_clients, args.max_clients_per_user);
    let lingering = start_lingering().context("starting the refusal thread")?;
    for stream in listener.incoming() {
        if lock(&agent.routes).upstream_ended {
            break;
        }
        let Ok(stream) = stream else { continue };
        // Seated or refused here, before a thread is spent on the connection.
        let Ok(peer) = peer_of(&stream) else { continue };
        let seat = match Seats::take(&seats, peer.uid) {
            Ok(seat) => seat,
            Err(reason) => {
                refuse(stream, reason, &lingering);
                continue;
            }
        };
        next_client += 1;
        let agent = Arc::clone(&agent);
        let client = next_client;
        std::thread::spawn(move || {
            if let Err(e) = agent.serve_client(client, stream, peer, seat, hello_timeout) {
                let closed = e
                    .downcast_ref::<protocol::ProtocolError>()
                    .is_some_and(|e| matches!(e, protocol::ProtocolError::Closed));
                if !closed {
                    eprintln!("mempart-agent: client {client}: {e:#}");
                }
            }
        });
    }
    match router.join() {
        Ok(Err(e)) => Err(e),
        _ => Ok(()),
    }
}
