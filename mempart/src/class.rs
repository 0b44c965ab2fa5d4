//! Memory classes: named, fixed-size kinds of memory, each partitioned on its own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{PartId, SubId};
use crate::security::Perm;

/// The class that always exists: the guest's ordinary RAM.
pub const SYSRAM: &str = "sysram";
/// The root partition every class has.
pub const SYS_PARTITION: &str = "sys";
/// The allocation unit when none is configured.
pub const DEFAULT_UNIT: u64 = 4096;

/// How to introduce a class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassSpec {
    /// Its name in `/partition/mem`.
    pub name: String,
    /// Its size in bytes, a multiple of `unit`.
    pub size: u64,
    /// Allocation unit: a power of two; every size in the class is a multiple of it.
    pub unit: u64,
    /// Minimum of its `sys` partition (0 makes `sys` Open, more a Guarantee).
    pub sys_min: u64,
}

impl ClassSpec {
    /// A class of `size` bytes with the default unit and an Open `sys`.
    pub fn new(name: impl Into<String>, size: u64) -> ClassSpec {
        ClassSpec {
            name: name.into(),
            size,
            unit: DEFAULT_UNIT,
            sys_min: 0,
        }
    }
}

/// Figures of one class as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// Its name.
    pub name: String,
    /// Its size.
    pub size: u64,
    /// Its allocation unit.
    pub unit: u64,
    /// Bytes allocated by objects of every partition.
    pub allocated: u64,
    /// Bytes reserved by minimums and not yet allocated.
    pub reserved_unused: u64,
    /// Discretionary bytes nobody has reserved or allocated: `size - Σ charge(roots)`.
    pub free: u64,
    /// Highest `allocated` seen.
    pub highest_allocated: u64,
    /// Names of its root partitions.
    pub roots: Vec<String>,
    /// Owner, group and mode.
    pub perm: Perm,
}

/// A class as the engine keeps it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Class {
    pub name: Box<str>,
    pub size: u64,
    pub unit: u64,
    pub perm: Perm,
    pub roots: BTreeMap<String, PartId>,
    pub roots_charge: u64,
    pub allocated: u64,
    pub highest_allocated: u64,
    pub subscribers: Vec<SubId>,
    /// The allocated bytes from which a change must be followed up: a new highest
    /// (`highest_allocated + 1`), or every change (0) while anyone is subscribed.
    pub alert: u64,
}

impl Class {
    /// A class with nothing in it yet, owned by the superuser, mode 755.
    pub fn new(name: &str, size: u64, unit: u64) -> Class {
        Class {
            name: name.into(),
            size,
            unit,
            perm: Perm::new(0, 0, 0o755),
            roots: BTreeMap::new(),
            roots_charge: 0,
            allocated: 0,
            highest_allocated: 0,
            subscribers: Vec::new(),
            alert: 1,
        }
    }

    /// Sets `alert` after the highest or the subscribers changed.
    pub fn refresh_alert(&mut self) {
        self.alert = if self.subscribers.is_empty() {
            self.highest_allocated.saturating_add(1)
        } else {
            0
        };
    }

    /// Notes the allocated bytes now: a new highest.
    pub fn note_allocated(&mut self) {
        self.highest_allocated = self.highest_allocated.max(self.allocated);
        self.refresh_alert();
    }
}
