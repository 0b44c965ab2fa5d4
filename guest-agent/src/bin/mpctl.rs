//! `mpctl`: the guest's command line for memory partitions, through `mempart-agent`.
//!
//! Exit codes: 0 done; 1 the service refused (the errno and the path are printed), or
//! typed memory could not be mapped;
//! 2 bad arguments; 3 the agent cannot be reached or broke the protocol.

use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use guest_agent::{DEFAULT_SOCKET, SOCKET_ENV};
use protocol::cli::{
    human, parse_mode, render_class, render_entries, render_objects, render_partition, NodeVerb,
};
use protocol::{
    parse_size, Client, Credential, EventFilter, Grant, Limits, Op, Reply, ServerFrame, SizeChange,
    WireError,
};

/// Browse and shape memory partitions from inside the guest.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The agent's socket (default $MPCTL_SOCKET, else /run/mempart.sock).
    #[arg(long, global = true)]
    socket: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Shm {
    /// Create an empty object in this process's partition of a class.
    Create {
        /// The object's name.
        name: String,
        /// The class.
        class: String,
        /// Create it for this process (default: mpctl's parent, e.g. your shell).
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Grow an object by SIZE (charged to the object's partition).
    Grow {
        /// The object.
        name: String,
        /// Bytes to add (e.g. 4M).
        size: String,
    },
    /// Shrink an object by SIZE.
    Shrink {
        /// The object.
        name: String,
        /// Bytes to take away.
        size: String,
    },
    /// Remove an object's name; its memory goes once no process maps it.
    Unlink {
        /// The object.
        name: String,
    },
    /// Show one object: its partition, size, owner and how many processes map it.
    Open {
        /// The object.
        name: String,
    },
    /// Map an object into mpctl itself (the mapping ends when mpctl exits). Of a typed
    /// class, the object's extent is mapped through /dev/mem and used as asked.
    Map {
        /// The object.
        name: String,
        /// Write a pattern into every page and read it back.
        #[arg(long, conflicts_with = "verify")]
        touch: bool,
        /// Count the pages holding the pattern that `--touch` wrote (by any process).
        #[arg(long)]
        verify: bool,
    },
    /// End a process's mapping of an object.
    Unmap {
        /// The object.
        name: String,
        /// The process (default: mpctl's parent).
        #[arg(long)]
        pid: Option<u32>,
    },
    /// List every object with its partition, size and owner.
    Ls,
}

#[derive(Subcommand)]
enum Cmd {
    /// List a class, partition or group (partitions, processes, pseudo partitions).
    Ls {
        /// The path (default /partition/mem).
        path: Option<String>,
    },
    /// Show a partition's or class's metrics.
    #[command(alias = "metrics")]
    Stat {
        /// The path.
        path: String,
        /// Print the highest size and reset it to the current one.
        #[arg(long)]
        reset_highest: bool,
    },
    /// Create a partition (or, directly under /partition/mem, a group).
    Create {
        /// The path.
        path: String,
        /// Reserved minimum (e.g. 64M).
        #[arg(long, default_value = "0")]
        min: String,
        /// Maximum (e.g. 128M, or unlimited).
        #[arg(long, default_value = "unlimited")]
        max: String,
        /// Mode bits, octal.
        #[arg(long, default_value = "755")]
        mode: String,
        /// Back it with a zone: a guest NUMA node whose plugged memory follows the max, so
        /// its processes cannot hold more (top-level sysram partitions with a finite max;
        /// zones are declared when the VM starts).
        #[arg(long)]
        zone: bool,
    },
    /// Change a partition's minimum and/or maximum.
    Set {
        /// The path.
        path: String,
        /// New minimum.
        #[arg(long)]
        min: Option<String>,
        /// New maximum.
        #[arg(long)]
        max: Option<String>,
        /// Allow a maximum below current use: it applies once use has shrunk.
        #[arg(long)]
        reclaim: bool,
    },
    #[command(flatten)]
    Node(NodeVerb),
    /// Shared-memory objects: named, charged to the partition they were created in
    /// (whoever grows them), kept after their creator exits until unlinked.
    #[command(subcommand)]
    Shm(Shm),
    /// Associate a process (default: mpctl's parent) with a partition or group.
    Assoc {
        /// The partition or group.
        path: String,
        /// The process.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// End a process's association.
    Disassoc {
        /// The partition or group.
        path: String,
        /// The process.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Set NO_INHERIT on a process's association (on or off).
    Flags {
        /// The partition.
        path: String,
        /// on or off.
        #[arg(long)]
        no_inherit: String,
        /// The process.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Show a process's partitions (default: mpctl's parent, e.g. your shell): each
    /// partition, whether children inherit it, and what the process allocated there.
    Ps {
        /// The process.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Associate with partitions, then run a command in their place (like numactl). The
    /// command keeps what mpctl inherited from its parent (your shell) and gains each
    /// --part; with --only it starts afresh instead (SETMPART).
    Run {
        /// A partition or group; repeat for more.
        #[arg(long = "part", required_unless_present = "only")]
        parts: Vec<String>,
        /// Inherit nothing but what SETMPART gives: exactly the --part partitions (sysram's
        /// sys when none is a sysram partition), or with no --part only the parent's
        /// sysram partition (the alternate mode; sysram's sys when the parent is not
        /// tracked).
        #[arg(long)]
        only: bool,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Charge memory of a class to this process's partition and print the grant.
    Alloc {
        /// The class.
        class: String,
        /// Bytes (e.g. 4M).
        size: String,
        /// Map a typed extent through /dev/mem, write every page and read it back; then
        /// read the page just past it, which the VMM must refuse (a reported violation).
        #[arg(long)]
        touch: bool,
        /// Allocate for this process (one of yours, e.g. your shell's `$$`) instead of
        /// mpctl itself: the allocation then outlives mpctl, until `free` or that
        /// process's exit.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Give back bytes a process allocated in its partition of a class (see `alloc --pid`).
    Free {
        /// The class.
        class: String,
        /// Bytes (e.g. 4M).
        size: String,
        /// The process.
        #[arg(long)]
        pid: u32,
    },
    /// Follow a partition's or class's events until interrupted.
    Events {
        /// The path.
        path: String,
        /// Report crossings of this size.
        #[arg(long)]
        threshold: Option<String>,
        /// Report changes of at least this many bytes.
        #[arg(long)]
        delta: Option<String>,
        /// Keep following (otherwise print the subscription and stop).
        #[arg(long)]
        follow: bool,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
}

/// Parses 4096, 4K, 64M, 1G or unlimited.
fn size(text: &str) -> Result<u64, String> {
    parse_size(text)
}

enum Failure {
    Usage(String),
    Refused(WireError),
    Agent(String),
    /// Something in this guest failed (mapping typed memory).
    Local(String),
}

impl From<protocol::ProtocolError> for Failure {
    fn from(e: protocol::ProtocolError) -> Failure {
        Failure::Agent(e.to_string())
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let path = cli
        .socket
        .or_else(|| std::env::var(SOCKET_ENV).ok())
        .unwrap_or_else(|| DEFAULT_SOCKET.to_string());
    let stream = UnixStream::connect(&path).map_err(|e| Failure::Agent(format!("{path}: {e}")))?;
    let mut client = Client::connect(stream)?;
    // The agent puts the kernel-verified identity on every request; this is ignored.
    let me = Credential::guest(0, 0);
    let parent = std::os::unix::process::parent_id();
    let mut call =
        |op: Op| -> Result<Reply, Failure> { client.call(&me, op)?.map_err(Failure::Refused) };
    let usage = Failure::Usage;
    let json = cli.json;
    let emit = |value: serde_json::Value| println!("{value}");
    match cli.command {
        Cmd::Ls { path } => {
            let path = path.unwrap_or_else(|| "/partition/mem".into());
            let Reply::Entries(entries) = call(Op::List { path })? else {
                return Ok(());
            };
            if json {
                emit(serde_json::json!(entries));
            } else {
                print!("{}", render_entries(&entries));
            }
        }
        Cmd::Stat {
            path,
            reset_highest: true,
        } => {
            if let Reply::Highest(old) = call(Op::ResetHighest { path })? {
                if json {
                    emit(serde_json::json!({ "highest": old }));
                } else {
                    println!("{:<12} {} (reset)", "highest", human(old));
                }
            }
        }
        Cmd::Stat {
            path,
            reset_highest: false,
        } => match call(Op::Metrics { path: path.clone() }) {
            Ok(Reply::Metrics(m)) => {
                if json {
                    emit(serde_json::json!(m));
                } else {
                    print!("{}", render_partition(&m));
                }
            }
            Ok(_) => {}
            Err(Failure::Refused(e)) if e.name == "EINVAL" => {
                let Reply::Class(c) = call(Op::ClassMetrics { path })? else {
                    return Ok(());
                };
                if json {
                    emit(serde_json::json!(c));
                } else {
                    print!("{}", render_class(&c));
                }
            }
            Err(e) => return Err(e),
        },
        Cmd::Create {
            path,
            min,
            max,
            mode: m,
            zone,
        } => {
            let limits = Limits {
                min: size(&min).map_err(usage)?,
                max: size(&max).map_err(Failure::Usage)?,
            };
            call(Op::Create {
                path,
                limits,
                mode: parse_mode(&m).map_err(Failure::Usage)?,
                zone,
            })?;
        }
        Cmd::Set {
            path,
            min,
            max,
            reclaim,
        } => {
            let min = min.map(|m| size(&m)).transpose().map_err(Failure::Usage)?;
            let max = max.map(|m| size(&m)).transpose().map_err(Failure::Usage)?;
            if let Reply::Outcome(outcome) = call(Op::SetLimits {
                path,
                min,
                max,
                reclaim,
            })? {
                if json {
                    emit(serde_json::json!(format!("{outcome:?}")));
                } else {
                    println!("{outcome:?}");
                }
            }
        }
        Cmd::Node(verb) => {
            call(verb.op().map_err(Failure::Usage)?)?;
        }
        Cmd::Assoc { path, pid } => {
            call(Op::Associate {
                pid: pid.unwrap_or(parent),
                path,
            })?;
        }
        Cmd::Disassoc { path, pid } => {
            call(Op::Disassociate {
                pid: pid.unwrap_or(parent),
                path,
            })?;
        }
        Cmd::Flags {
            path,
            no_inherit,
            pid,
        } => {
            let no_inherit = match no_inherit.as_str() {
                "on" => true,
                "off" => false,
                other => {
                    return Err(Failure::Usage(format!(
                        "--no-inherit {other:?}: use on or off"
                    )))
                }
            };
            call(Op::SetNoInherit {
                pid: pid.unwrap_or(parent),
                path,
                no_inherit,
            })?;
        }
        Cmd::Ps { pid } => {
            let Reply::Associations(view) = call(Op::ProcessView {
                pid: pid.unwrap_or(parent),
            })?
            else {
                return Err(Failure::Agent("no process view in the answer".into()));
            };
            if json {
                emit(serde_json::json!(view
                    .iter()
                    .map(|a| serde_json::json!({
                        "path": a.path, "class": a.class,
                        "no_inherit": a.no_inherit, "charged": a.charged,
                    }))
                    .collect::<Vec<_>>()));
            } else {
                for a in view {
                    let inherit = if a.no_inherit {
                        "no-inherit"
                    } else {
                        "inherit"
                    };
                    println!("{}  {inherit}  {}", a.path, human(a.charged));
                }
            }
        }
        Cmd::Run {
            parts,
            only,
            command,
        } => {
            let me = std::process::id();
            if only {
                call(Op::ReplaceAssociations { pid: me, parts })?;
            } else {
                for part in parts {
                    call(Op::Associate {
                        pid: me,
                        path: part,
                    })?;
                }
            }
            let (program, args) = command
                .split_first()
                .ok_or_else(|| Failure::Usage("no command".into()))?;
            let err = std::process::Command::new(program).args(args).exec();
            return Err(Failure::Usage(format!("{program}: {err}")));
        }
        Cmd::Alloc {
            class,
            size: s,
            touch,
            pid,
        } => {
            let bytes = size(&s).map_err(Failure::Usage)?;
            if let Reply::Granted {
                grant: Grant { bytes, .. },
                gpa,
            } = call(Op::Allocate {
                pid: pid.unwrap_or_else(std::process::id),
                class,
                bytes,
            })? {
                if json {
                    emit(serde_json::json!({ "granted": bytes, "gpa": gpa }));
                } else if let Some(gpa) = gpa {
                    println!("granted {} at guest-physical 0x{gpa:x}", human(bytes));
                } else {
                    println!("granted {}", human(bytes));
                }
                if let (true, Some(gpa)) = (touch, gpa) {
                    touch_extent(gpa, bytes)?;
                }
            }
        }
        Cmd::Free {
            class,
            size: s,
            pid,
        } => {
            let bytes = size(&s).map_err(Failure::Usage)?;
            let Reply::Associations(view) = call(Op::ProcessView { pid })? else {
                return Err(Failure::Agent("no process view in the answer".into()));
            };
            let partition = view
                .iter()
                .find(|a| a.class == class)
                .map(|a| a.partition)
                .ok_or_else(|| {
                    Failure::Usage(format!("process {pid} has no partition of class {class}"))
                })?;
            call(Op::Free {
                pid,
                grant: Grant { partition, bytes },
                gpa: None,
            })?;
            if json {
                emit(serde_json::json!({ "freed": bytes }));
            } else {
                println!("freed {}", human(bytes));
            }
        }
        Cmd::Shm(verb) => shm(verb, parent, json, &mut call)?,
        Cmd::Events {
            path,
            threshold,
            delta,
            follow,
            count,
        } => {
            let filter = EventFilter {
                threshold: threshold
                    .map(|t| size(&t))
                    .transpose()
                    .map_err(Failure::Usage)?,
                delta: delta
                    .map(|d| size(&d))
                    .transpose()
                    .map_err(Failure::Usage)?,
                ..EventFilter::default()
            };
            let Reply::Subscribed(_) = call(Op::Subscribe {
                path: path.clone(),
                filter,
                capacity: 256,
            })?
            else {
                return Ok(());
            };
            println!("subscribed to {path}");
            let mut seen = 0u64;
            while follow && count.is_none_or(|c| seen < c) {
                match client.next_event()? {
                    ServerFrame::Event { event, .. } => {
                        seen += 1;
                        if json {
                            emit(
                                serde_json::json!({"seq": event.seq, "event": format!("{:?}", event.kind)}),
                            );
                        } else {
                            println!("{} {:?}", event.seq, event.kind);
                        }
                        // Nothing more can happen to a partition that is gone.
                        if event.kind == protocol::EventKind::Destroyed {
                            break;
                        }
                    }
                    ServerFrame::Missed { count, .. } => println!("missed {count}"),
                    other => return Err(Failure::Agent(format!("unexpected {other:?}"))),
                }
            }
        }
    }
    Ok(())
}

/// Carries out a shared-object verb; `parent` is the default process.
fn shm(
    verb: Shm,
    parent: u32,
    json: bool,
    call: &mut dyn FnMut(Op) -> Result<Reply, Failure>,
) -> Result<(), Failure> {
    let op = match verb {
        Shm::Create { name, class, pid } => Op::ObjectCreate {
            pid: pid.unwrap_or(parent),
            class,
            name,
        },
        Shm::Grow { name, size: s } => Op::ObjectResize {
            name,
            change: SizeChange::Grow(size(&s).map_err(Failure::Usage)?),
        },
        Shm::Shrink { name, size: s } => Op::ObjectResize {
            name,
            change: SizeChange::Shrink(size(&s).map_err(Failure::Usage)?),
        },
        Shm::Unlink { name } => Op::ObjectUnlink { name },
        Shm::Open { name } => Op::ObjectStat { name },
        Shm::Map {
            name,
            touch,
            verify,
        } => return map_object(&name, touch, verify, json, call),
        Shm::Unmap { name, pid } => Op::ObjectUnmap {
            pid: pid.unwrap_or(parent),
            name,
        },
        Shm::Ls => Op::Objects,
    };
    if let Reply::Objects(objects) = call(op)? {
        if json {
            println!("{}", serde_json::json!(objects));
        } else {
            print!("{}", render_objects(&objects));
        }
    }
    Ok(())
}

/// Maps object `name` into mpctl and, for a typed object, uses its extent as asked.
fn map_object(
    name: &str,
    touch: bool,
    verify: bool,
    json: bool,
    call: &mut dyn FnMut(Op) -> Result<Reply, Failure>,
) -> Result<(), Failure> {
    let op = Op::ObjectMap {
        pid: std::process::id(),
        name: name.to_string(),
    };
    let Reply::ObjectMapped { object, gpa } = call(op)? else {
        return Err(Failure::Agent("no mapping in the answer".into()));
    };
    if json {
        println!("{}", serde_json::json!({ "object": object, "gpa": gpa }));
    } else {
        match gpa {
            Some(gpa) => println!(
                "mapped {} ({}) at guest-physical 0x{gpa:x}",
                object.name,
                human(object.size)
            ),
            None => println!("mapped {} ({})", object.name, human(object.size)),
        }
    }
    let Some(gpa) = gpa.filter(|_| touch || verify) else {
        return Ok(());
    };
    let len = usize::try_from(object.size)
        .map_err(|_| Failure::Usage(format!("{}: too large to map", object.size)))?;
    let extent = guest_agent::devmem::PhysMapping::new(gpa, len)
        .map_err(|e| Failure::Local(format!("/dev/mem at 0x{gpa:x}: {e}")))?;
    let pages = extent.words() / 512;
    if touch {
        for page in 0..pages {
            extent.write(page * 512, page_pattern(page));
        }
    }
    let good = (0..pages)
        .filter(|&page| extent.read(page * 512) == Some(page_pattern(page)))
        .count();
    println!("{good} of {pages} pages hold the pattern");
    Ok(())
}

/// The word `--touch` writes at the start of page `page`.
fn page_pattern(page: usize) -> u64 {
    0x6d70_0000_0000_0000 | page as u64
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(e)) => {
            eprintln!("mpctl: {}", e.message);
            ExitCode::from(1)
        }
        Err(Failure::Usage(msg)) => {
            eprintln!("mpctl: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Agent(msg)) => {
            eprintln!("mpctl: agent: {msg}");
            ExitCode::from(3)
        }
        Err(Failure::Local(msg)) => {
            eprintln!("mpctl: {msg}");
            ExitCode::from(1)
        }
    }
}

/// Writes a distinct word into every page of the extent at `gpa` through `/dev/mem` and
/// reads them back, then reads the first word past the extent (not granted: the VMM
/// refuses it below the guest, and reads of refused memory come back as all ones).
fn touch_extent(gpa: u64, bytes: u64) -> Result<(), Failure> {
    use guest_agent::devmem::PhysMapping;
    let io = |what: &str, e: std::io::Error| {
        Failure::Local(format!("/dev/mem at 0x{gpa:x}: {what}: {e}"))
    };
    let len = usize::try_from(bytes).map_err(|_| Failure::Usage(format!("{bytes}: too large")))?;
    let extent = PhysMapping::new(gpa, len).map_err(|e| io("mapping the extent", e))?;
    let pages = extent.words() / 512;
    for page in 0..pages {
        extent.write(page * 512, page_pattern(page));
    }
    let good = (0..pages)
        .filter(|&page| extent.read(page * 512) == Some(page_pattern(page)))
        .count();
    println!("wrote and read back {good} of {pages} pages");
    let past = gpa
        .checked_add(bytes)
        .ok_or_else(|| Failure::Local(format!("0x{gpa:x}+{bytes}: past the address space")))?;
    let beyond = PhysMapping::new(past, 4096).map_err(|e| io("mapping past the extent", e))?;
    match beyond.read(0) {
        Some(word) => println!("past the extent: read 0x{word:x}"),
        None => println!("past the extent: nothing mapped"),
    }
    Ok(())
}
