//! The wire protocol between guest agents (and host clients) and the VMM's partition
//! service: a versioned handshake, then length-prefixed postcard frames carrying requests
//! with ids and the caller's credentials, responses, and pushed events.
//!
//! Every frame is a little-endian `u32` length followed by that many bytes of postcard.
//! A frame longer than [`MAX_FRAME`] is refused before anything is allocated for it, so
//! a hostile peer gets an error, never a panic or an unbounded allocation.
//!
//! ```
//! use protocol::{read_frame, write_frame, ClientFrame, VERSION, MAGIC};
//! let mut wire = Vec::new();
//! write_frame(&mut wire, &ClientFrame::Hello { magic: MAGIC, version: VERSION })?;
//! let back: ClientFrame = read_frame(&mut wire.as_slice())?;
//! assert!(matches!(back, ClientFrame::Hello { version: VERSION, .. }));
//! # Ok::<(), protocol::ProtocolError>(())
//! ```

use std::io::{Read, Write};

#[cfg(feature = "cli")]
pub mod cli;

pub use mempart::topology::parse_size;
pub use mempart::{
    Association, ClassMetrics, Credential, DirEntry, EntryKind, Event, EventFilter, EventKind,
    Grant, Limits, ObjectInfo, PartitionMetrics, PartitionType, Perm, Pid, Policy, SetOutcome,
    Spawn, SubId, ZoneMetrics, ZoneSpec, UNLIMITED,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The first bytes of a hello: "MPRT".
pub const MAGIC: [u8; 4] = *b"MPRT";
/// The protocol version this crate speaks.
pub const VERSION: u16 = 9;
/// The largest frame either side accepts, in bytes.
pub const MAX_FRAME: usize = 64 * 1024;

/// What can go wrong on the wire.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The stream failed.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the stream between frames.
    #[error("the peer closed the stream")]
    Closed,
    /// A frame over [`MAX_FRAME`].
    #[error("a frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// A frame that does not decode.
    #[error("a frame does not decode: {0}")]
    Decode(String),
    /// A value that does not encode.
    #[error("a frame does not encode: {0}")]
    Encode(String),
    /// The handshake failed.
    #[error("handshake: {0}")]
    Handshake(String),
}

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// The first frame: who is speaking which version.
    Hello {
        /// Must be [`MAGIC`].
        magic: [u8; 4],
        /// The client's protocol version.
        version: u16,
    },
    /// An operation on behalf of `caller`.
    Request {
        /// Echoed in the response.
        id: u32,
        /// Who asks (the agent forwards what `SO_PEERCRED` told it).
        caller: Credential,
        /// What is asked.
        op: Op,
    },
}

/// Frames the service sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// The handshake succeeded.
    Welcome {
        /// The version both sides speak.
        version: u16,
    },
    /// The handshake failed; the stream closes.
    Refused {
        /// Why.
        reason: String,
    },
    /// The answer to request `id`.
    Response {
        /// The request's id.
        id: u32,
        /// Its result.
        result: Result<Reply, WireError>,
    },
    /// An event of one of this connection's subscriptions.
    Event {
        /// The subscription.
        sub: SubId,
        /// The event.
        event: Event,
    },
    /// Events of a subscription dropped because its queue was full.
    Missed {
        /// The subscription.
        sub: SubId,
        /// How many.
        count: u64,
    },
}

/// How a shared object's size changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SizeChange {
    /// To this many bytes.
    To(u64),
    /// By this many more bytes.
    Grow(u64),
    /// By this many fewer bytes.
    Shrink(u64),
}

/// An operation on the partition name space, a process or an allocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// List a directory-like node.
    List {
        /// Its path.
        path: String,
    },
    /// Metrics of a real partition.
    Metrics {
        /// Its path.
        path: String,
    },
    /// Metrics of a class.
    ClassMetrics {
        /// Its path.
        path: String,
    },
    /// Create a partition, or a group directly under `/partition/mem`.
    Create {
        /// Its path.
        path: String,
        /// Its limits.
        limits: Limits,
        /// Its mode bits.
        mode: u32,
        /// Back it with a zone (top-level sysram, finite max).
        zone: bool,
    },
    /// Change min and/or max.
    SetLimits {
        /// The partition.
        path: String,
        /// New min.
        min: Option<u64>,
        /// New max.
        max: Option<u64>,
        /// Allow a max below use (reclaim).
        reclaim: bool,
    },
    /// Destroy a partition, group or pseudo partition.
    Destroy {
        /// Its path.
        path: String,
    },
    /// Change mode bits.
    Chmod {
        /// The node.
        path: String,
        /// New mode.
        mode: u32,
    },
    /// Change owner and group.
    Chown {
        /// The node.
        path: String,
        /// New owner.
        uid: u32,
        /// New group.
        gid: u32,
    },
    /// Set a one-way policy.
    SetPolicy {
        /// The partition.
        path: String,
        /// Which policy.
        policy: Policy,
    },
    /// Clear a policy: `EPERM` when it is set (policies are one-way), nothing to do when
    /// it is not.
    ClearPolicy {
        /// The partition.
        path: String,
        /// Which policy.
        policy: Policy,
    },
    /// Create an empty shared-memory object charged to process `pid`'s partition of
    /// `class`; it persists after the process exits, until unlinked.
    ObjectCreate {
        /// The creating process.
        pid: Pid,
        /// The class.
        class: String,
        /// The object's name.
        name: String,
    },
    /// Resize a shared object (its owner, or anyone who may write its partition): growth
    /// is charged to the object's partition, whoever grows it.
    ObjectResize {
        /// The object.
        name: String,
        /// The new size, or how much to add or take away.
        change: SizeChange,
    },
    /// Remove a shared object and free its memory (its owner or the superuser).
    ObjectUnlink {
        /// The object.
        name: String,
    },
    /// Every shared object, with its partition and size.
    Objects,
    /// One shared object (`mpctl shm open`).
    ObjectStat {
        /// The object.
        name: String,
    },
    /// Process `pid` maps a shared object (the owner, or execute permission on the
    /// object's partition): of a typed class, the answer names the object's extent.
    ObjectMap {
        /// The mapping process.
        pid: Pid,
        /// The object.
        name: String,
    },
    /// Process `pid` no longer maps the object; an unlinked object that nobody maps any
    /// more is freed.
    ObjectUnmap {
        /// The process.
        pid: Pid,
        /// The object.
        name: String,
    },
    /// Create a pseudo partition naming a real one.
    Link {
        /// `/partition/mem/<group>/<name>`.
        pseudo: String,
        /// The real partition.
        target: String,
    },
    /// Reset a highest size; the reply carries the old value.
    ResetHighest {
        /// The partition or class.
        path: String,
    },
    /// Register a process (the guest agent, from the kernel's fork events; the agent
    /// refuses it from its clients). The caller is the registrar: it must control the
    /// parent and the owner.
    ProcessStart {
        /// The new process.
        pid: Pid,
        /// Its parent.
        parent: Option<Pid>,
        /// How it gets its associations.
        spawn: Spawn,
        /// Whose process it is; `None` for the caller's own.
        owner: Option<Credential>,
    },
    /// A process exited.
    ProcessExit {
        /// The process.
        pid: Pid,
    },
    /// Associate a process with a partition, pseudo partition or group.
    Associate {
        /// The process.
        pid: Pid,
        /// The partition or group.
        path: String,
    },
    /// End an association.
    Disassociate {
        /// The process.
        pid: Pid,
        /// The partition or group.
        path: String,
    },
    /// Set or clear `NO_INHERIT`.
    SetNoInherit {
        /// The process.
        pid: Pid,
        /// The partition.
        path: String,
        /// The flag.
        no_inherit: bool,
    },
    /// A process's associations.
    ProcessView {
        /// The process.
        pid: Pid,
    },
    /// Subscribe to a partition's or class's events; they are pushed on this connection.
    Subscribe {
        /// The partition or class.
        path: String,
        /// Which events.
        filter: EventFilter,
        /// Queue capacity.
        capacity: u32,
    },
    /// End a subscription of this connection.
    Unsubscribe {
        /// The subscription.
        sub: SubId,
    },
    /// Charge `bytes` of a class to the process's partition of that class.
    Allocate {
        /// The process.
        pid: Pid,
        /// The class name.
        class: String,
        /// Bytes, a multiple of the class unit.
        bytes: u64,
    },
    /// Give back exactly what a grant charged.
    Free {
        /// The process.
        pid: Pid,
        /// What `Allocate` granted.
        grant: Grant,
        /// For typed memory, the extent's guest-physical base as `Allocate` answered:
        /// which of several equal grants goes back (without it, the oldest).
        gpa: Option<u64>,
    },
    /// The guest's measurement of a partition's own use (the agent, for sysram).
    ReportUsage {
        /// The partition.
        path: String,
        /// Bytes it uses itself, children not counted.
        own: u64,
    },
    /// The owner, group and mode of a class, group or partition (no read permission
    /// needed, as with `stat`).
    Stat {
        /// Its path.
        path: String,
    },
    /// Replace every association of a process as a spawn with `SETMPART` would set them
    /// (`mpctl run --only`): exactly `parts`, or with none only its sysram partition.
    ReplaceAssociations {
        /// The process.
        pid: Pid,
        /// Partitions and groups, each needing execute permission.
        parts: Vec<String>,
    },
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// Done, nothing to report.
    Done,
    /// A listing.
    Entries(Vec<DirEntry>),
    /// Partition metrics.
    Metrics(Box<PartitionMetrics>),
    /// Class metrics.
    Class(ClassMetrics),
    /// The outcome of a limit change.
    Outcome(SetOutcome),
    /// A previous highest size.
    Highest(u64),
    /// Shared objects.
    Objects(Vec<ObjectInfo>),
    /// A mapped shared object, and the guest-physical base of its extent when its class
    /// is typed memory and it has a size.
    ObjectMapped {
        /// The object.
        object: ObjectInfo,
        /// Where its memory starts.
        gpa: Option<u64>,
    },
    /// A process's associations.
    Associations(Vec<Association>),
    /// A new subscription.
    Subscribed(SubId),
    /// A grant, and for a typed class the guest-physical base of the extent that backs it.
    Granted {
        /// What the engine charged.
        grant: Grant,
        /// Where the memory is, for classes other than sysram.
        gpa: Option<u64>,
    },
    /// A node's owner, group and mode.
    Perm(Perm),
}

/// A refusal: the errno, its name and the engine's message naming the path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// Linux errno value.
    pub errno: i32,
    /// Its symbolic name, e.g. `"EACCES"`.
    pub name: String,
    /// The full message.
    pub message: String,
}

impl From<mempart::Error> for WireError {
    fn from(e: mempart::Error) -> WireError {
        WireError {
            errno: e.errno.code(),
            name: e.errno.name().to_string(),
            message: e.to_string(),
        }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Writes one frame: a `u32` length and the postcard bytes of `value`. A value that
/// encodes over [`MAX_FRAME`] is [`ProtocolError::TooLarge`] and nothing is written.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, value: &T) -> Result<(), ProtocolError> {
    let bytes = postcard::to_stdvec(value).map_err(|e| ProtocolError::Encode(e.to_string()))?;
    if bytes.len() > MAX_FRAME {
        return Err(ProtocolError::TooLarge(bytes.len()));
    }
    let len = u32::try_from(bytes.len()).map_err(|_| ProtocolError::TooLarge(bytes.len()))?;
    let mut frame = Vec::with_capacity(4 + bytes.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&bytes);
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame; the length is checked against [`MAX_FRAME`] before the body is read.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T, ProtocolError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(ProtocolError::Closed)
        }
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(ProtocolError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    decode(&body)
}

/// Decodes one frame body (what follows the length).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProtocolError> {
    if body.len() > MAX_FRAME {
        return Err(ProtocolError::TooLarge(body.len()));
    }
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|e| ProtocolError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ProtocolError::Decode(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(value)
}

/// Most pushed frames a [`Client`] keeps while it waits for responses; beyond that the
/// oldest are dropped (a peer that floods events cannot grow the client without bound).
pub const MAX_BUFFERED_EVENTS: usize = 4096;

/// A blocking client: the handshake, then requests answered in order; events that arrive
/// meanwhile are kept (at most [`MAX_BUFFERED_EVENTS`]) for [`Client::events`].
pub struct Client<S: Read + Write> {
    stream: S,
    next_id: u32,
    events: std::collections::VecDeque<ServerFrame>,
}

impl<S: Read + Write> Client<S> {
    /// Shakes hands over `stream`. A server that refuses may say why and close before the
    /// hello reaches it: then the hello cannot be sent, and the refusal is still read.
    pub fn connect(mut stream: S) -> Result<Client<S>, ProtocolError> {
        let sent = write_frame(
            &mut stream,
            &ClientFrame::Hello {
                magic: MAGIC,
                version: VERSION,
            },
        );
        match (read_frame(&mut stream), sent) {
            (Ok(ServerFrame::Refused { reason }), _) => Err(ProtocolError::Handshake(reason)),
            (_, Err(unsent)) => Err(unsent),
            (Err(e), Ok(())) => Err(e),
            (Ok(ServerFrame::Welcome { version }), Ok(())) if version == VERSION => Ok(Client {
                stream,
                next_id: 1,
                events: std::collections::VecDeque::new(),
            }),
            (Ok(other), Ok(())) => Err(ProtocolError::Handshake(format!("unexpected {other:?}"))),
        }
    }

    /// Sends `op` for `caller` and waits for its answer.
    pub fn call(
        &mut self,
        caller: &Credential,
        op: Op,
    ) -> Result<Result<Reply, WireError>, ProtocolError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        write_frame(
            &mut self.stream,
            &ClientFrame::Request {
                id,
                caller: caller.clone(),
                op,
            },
        )?;
        loop {
            match read_frame(&mut self.stream)? {
                ServerFrame::Response { id: got, result } if got == id => return Ok(result),
                frame @ (ServerFrame::Event { .. } | ServerFrame::Missed { .. }) => {
                    if self.events.len() == MAX_BUFFERED_EVENTS {
                        self.events.pop_front();
                    }
                    self.events.push_back(frame)
                }
                other => return Err(ProtocolError::Decode(format!("unexpected {other:?}"))),
            }
        }
    }

    /// Waits for the next pushed event (or missed count), returning any already received first.
    pub fn next_event(&mut self) -> Result<ServerFrame, ProtocolError> {
        match self.events.pop_front() {
            Some(frame) => Ok(frame),
            None => read_frame(&mut self.stream),
        }
    }

    /// Events received while waiting for responses.
    pub fn events(&mut self) -> Vec<ServerFrame> {
        self.events.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A byte stream whose reads come from a script and whose writes are kept.
    struct Scripted {
        input: std::io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.output.write(buf)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_refusal_is_read_even_when_the_hello_could_not_be_sent() {
        /// A server that said why and closed: writes fail, the refusal waits to be read.
        struct Closed(std::io::Cursor<Vec<u8>>);
        impl Read for Closed {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.0.read(buf)
            }
        }
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut wire = Vec::new();
        let refused = ServerFrame::Refused {
            reason: "uid 1000 holds 64 connections".into(),
        };
        write_frame(&mut wire, &refused).unwrap_or_else(|e| panic!("{e}"));
        match Client::connect(Closed(std::io::Cursor::new(wire))) {
            Err(ProtocolError::Handshake(reason)) => {
                assert_eq!(reason, "uid 1000 holds 64 connections")
            }
            Err(other) => panic!("not the refusal: {other}"),
            Ok(_) => panic!("connected to a closed server"),
        }
        let silent = Closed(std::io::Cursor::new(Vec::new()));
        assert!(matches!(
            Client::connect(silent),
            Err(ProtocolError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe
        ));
    }

    #[test]
    fn a_client_keeps_a_bounded_number_of_pushed_frames() {
        let mut engine = mempart::Engine::new(&[mempart::ClassSpec::new("sysram", 1 << 20)])
            .unwrap_or_else(|e| panic!("{e}"));
        let sub = engine
            .subscribe(
                &Credential::Host,
                "/partition/mem/sysram",
                EventFilter::default(),
                1,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let mut wire = Vec::new();
        let mut put = |frame: &ServerFrame| {
            write_frame(&mut wire, frame).unwrap_or_else(|e| panic!("{e}"));
        };
        put(&ServerFrame::Welcome { version: VERSION });
        let flood = MAX_BUFFERED_EVENTS as u64 + 10;
        for count in 0..flood {
            put(&ServerFrame::Missed { sub, count });
        }
        put(&ServerFrame::Response {
            id: 1,
            result: Ok(Reply::Done),
        });
        let stream = Scripted {
            input: std::io::Cursor::new(wire),
            output: Vec::new(),
        };
        let mut client = Client::connect(stream).unwrap_or_else(|e| panic!("{e}"));
        let answer = client.call(
            &Credential::Host,
            Op::List {
                path: "/partition/mem".into(),
            },
        );
        assert!(matches!(answer, Ok(Ok(Reply::Done))), "{answer:?}");
        let kept = client.events();
        assert_eq!(kept.len(), MAX_BUFFERED_EVENTS);
        assert!(
            matches!(kept.first(), Some(ServerFrame::Missed { count: 10, .. })),
            "the oldest were dropped: {:?}",
            kept.first()
        );
    }

    #[test]
    fn frames_round_trip() {
        let frame = ClientFrame::Request {
            id: 7,
            caller: Credential::guest(1000, 100),
            op: Op::Create {
                path: "/partition/mem/class 1/p".into(),
                limits: Limits {
                    min: 4096,
                    max: u64::MAX,
                },
                mode: 0o750,
                zone: false,
            },
        };
        let mut wire = Vec::new();
        write_frame(&mut wire, &frame).unwrap_or_else(|e| panic!("{e}"));
        let back: ClientFrame = read_frame(&mut wire.as_slice()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, frame);
    }

    #[test]
    fn oversized_lengths_are_refused_before_reading() {
        let mut wire = (MAX_FRAME as u32 + 1).to_le_bytes().to_vec();
        wire.extend_from_slice(&[0u8; 16]);
        let got: Result<ClientFrame, _> = read_frame(&mut wire.as_slice());
        assert!(matches!(got, Err(ProtocolError::TooLarge(n)) if n == MAX_FRAME + 1));
        let huge = ClientFrame::Request {
            id: 1,
            caller: Credential::Host,
            op: Op::List {
                path: "x".repeat(MAX_FRAME),
            },
        };
        let mut sink = Vec::new();
        assert!(matches!(
            write_frame(&mut sink, &huge),
            Err(ProtocolError::TooLarge(n)) if n > MAX_FRAME
        ));
        assert!(sink.is_empty(), "nothing of an oversized frame is written");
    }

    #[test]
    fn truncated_and_trailing_bytes_are_errors() {
        let mut wire = Vec::new();
        write_frame(
            &mut wire,
            &ClientFrame::Hello {
                magic: MAGIC,
                version: VERSION,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let short = &wire[..wire.len() - 1];
        assert!(read_frame::<_, ClientFrame>(&mut &short[..]).is_err());
        assert!(matches!(
            read_frame::<_, ClientFrame>(&mut &wire[..2]),
            Err(ProtocolError::Closed)
        ));
        let mut body = wire[4..].to_vec();
        body.push(0);
        assert!(matches!(
            decode::<ClientFrame>(&body),
            Err(ProtocolError::Decode(_))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]
        /// Arbitrary bytes decode to an error or a frame, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<ClientFrame>(&body);
            let _ = decode::<ServerFrame>(&body);
        }
    }
}
