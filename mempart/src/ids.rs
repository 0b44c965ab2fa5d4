//! The identities every module of the engine shares: of a class, a partition, a
//! subscription, a process and a shared object.

use serde::{Deserialize, Serialize};

use crate::slab::Key;

/// Identifies a class (classes are never removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClassId(pub(crate) u32);

/// Identifies a real partition; stale once the partition is destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartId(pub(crate) Key);

/// Identifies a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SubId(pub(crate) Key);

/// A guest process id.
pub type Pid = u32;

/// A shared object's identity: never reused, so an unlinked object still mapped and a new
/// one of the same name stay apart.
pub type ObjectId = u64;
