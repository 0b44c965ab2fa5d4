//! The `/partition/mem` name space's types: what a path names, a listing's entries, partition
//! groups. `engine/namespace.rs` resolves and lists.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{ClassId, PartId, Pid};
use crate::security::Perm;

/// Most partition groups one engine holds.
pub const MAX_GROUPS: usize = 1024;

/// What a path names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Node {
    /// `/partition/mem` itself.
    Mem,
    /// `/partition/mem/<class>`.
    Class(ClassId),
    /// A real partition.
    Partition(PartId),
    /// `<partition>/<pid>`: a process associated with a partition.
    Process(PartId, Pid),
    /// `/partition/mem/<group>`.
    Group(String),
    /// `/partition/mem/<group>/<pseudo>`: a name for a real partition.
    Pseudo {
        /// The group.
        group: String,
        /// The pseudo partition's name.
        name: String,
        /// The real partition it names.
        target: PartId,
    },
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// The entry's name.
    pub name: String,
    /// What it is.
    pub kind: EntryKind,
}

/// What a listed entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A memory class.
    Class,
    /// A partition group.
    Group,
    /// A real partition.
    Partition,
    /// An associated process.
    Process,
    /// A pseudo partition and the path of the real partition it names.
    Pseudo {
        /// Path of the real partition.
        target: String,
    },
    /// A shared-memory object charged to the partition, and its size.
    Object {
        /// Its size in bytes.
        size: u64,
    },
}

/// A partition group as the engine keeps it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Group {
    pub perm: Perm,
    pub members: BTreeMap<String, PartId>,
}
