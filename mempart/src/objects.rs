//! Shared-memory objects: named, charged to the partition they were created in whoever
//! grows them, mapped by processes, and freed once unlinked and mapped by none.
//! `engine/objects.rs` creates, resizes, maps and frees them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{ObjectId, PartId, Pid};
use crate::security::Uid;

/// Most shared-memory objects one engine tracks, unlinked ones still mapped included.
pub const MAX_OBJECTS: usize = 4096;
/// Most objects one process maps at once.
pub const MAX_MAPS_PER_PROCESS: usize = 64;

/// A shared-memory object as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// Its identity.
    pub id: ObjectId,
    /// Its name.
    pub name: String,
    /// Path of the partition it is charged to.
    pub partition: String,
    /// Its class.
    pub class: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its creator's uid.
    pub owner: Uid,
    /// How many processes map it.
    pub mappers: usize,
    /// Whether its name still exists (an unlinked object lives until its last mapper
    /// leaves).
    pub linked: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SharedObject {
    pub(crate) name: Box<str>,
    pub(crate) part: PartId,
    pub(crate) size: u64,
    pub(crate) owner: Uid,
    pub(crate) mappers: Vec<Pid>,
    pub(crate) linked: bool,
}

/// Every object, by name (linked ones) and by identity (all).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Objects {
    pub(crate) names: BTreeMap<Box<str>, ObjectId>,
    pub(crate) store: BTreeMap<ObjectId, SharedObject>,
    pub(crate) next: ObjectId,
}

impl Objects {
    /// The objects charged to `part`, linked or not: (name, size).
    pub(crate) fn charged_to(&self, part: PartId) -> impl Iterator<Item = (&str, u64)> {
        self.store
            .values()
            .filter(move |o| o.part == part)
            .map(|o| (&*o.name, o.size))
    }
}
