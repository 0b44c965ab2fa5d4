//! Processes as the engine keeps them: their associations, how a child gets them, what was
//! charged on their behalf. `engine/process.rs` registers them and allocates for them.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::error::{Errno, Error};
use crate::ids::{ClassId, ObjectId, PartId, Pid};
use crate::security::Credential;

/// Most processes one engine tracks.
pub const MAX_PROCESSES: usize = 1 << 16;

/// How a new process gets its associations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Spawn {
    /// fork/spawn without `SETMPART`: every parent association whose `NO_INHERIT` is clear.
    Inherit,
    /// `SETMPART` with a list: a non-empty list associates with exactly those partitions
    /// and groups (sysram's `sys` if none of them is a sysram partition); an empty list
    /// inherits only the parent's sysram association (the alternate behaviour).
    SetMpart(Vec<String>),
}

/// One of a process's associations, as shown in its per-process view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Association {
    /// The partition.
    pub partition: PartId,
    /// Its path.
    pub path: String,
    /// Its class.
    pub class: String,
    /// Whether children do not inherit it.
    pub no_inherit: bool,
    /// Bytes this process has allocated in it.
    pub charged: u64,
}

/// Bytes charged to a partition on behalf of a process; hand it back to free them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The partition charged.
    pub partition: PartId,
    /// How many bytes.
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Assoc {
    pub part: PartId,
    pub class: ClassId,
    pub no_inherit: bool,
    pub charged: u64,
}

/// A process as the engine keeps it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Process {
    pub cred: Credential,
    pub assocs: SmallVec<[Assoc; 2]>,
    /// Charges left in partitions the process has since left; freed at exit or by `free`.
    pub retained: Vec<(PartId, u64)>,
    /// Shared objects it maps.
    pub mapped: Vec<ObjectId>,
}

pub(crate) fn pid_subject(pid: Pid) -> String {
    format!("pid {pid}")
}

#[cold]
pub(crate) fn no_process(pid: Pid) -> Error {
    Error::new(Errno::Esrch, pid_subject(pid), "no such process")
}
