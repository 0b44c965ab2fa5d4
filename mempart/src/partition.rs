//! Real partitions: their limits, derived type, configuration and metrics.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::{ClassId, PartId, Pid, SubId};
use crate::security::{Perm, Policies};

/// The maximum that means "no limit".
pub const UNLIMITED: u64 = u64::MAX;

/// The two configured sizes of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Bytes reserved for the partition's exclusive use.
    pub min: u64,
    /// Bytes its use may never exceed; [`UNLIMITED`] for none.
    pub max: u64,
}

impl Limits {
    /// `(0, ∞)`: discretionary memory only.
    pub const OPEN: Limits = Limits {
        min: 0,
        max: UNLIMITED,
    };

    /// The type these limits make.
    pub fn kind(&self) -> PartitionType {
        match (self.min, self.max) {
            (0, UNLIMITED) => PartitionType::Open,
            (_, UNLIMITED) => PartitionType::Guarantee,
            (0, _) => PartitionType::Restricted,
            (min, max) if min == max => PartitionType::Sandbox,
            _ => PartitionType::GuaranteeRestricted,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::OPEN
    }
}

/// The partition types of the design, derived from [`Limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionType {
    /// `(0, ∞)`.
    Open,
    /// `(N, ∞)`.
    Guarantee,
    /// `(0, N)`.
    Restricted,
    /// `(N, N)`.
    Sandbox,
    /// `(N, M)` with `0 < N < M < ∞`.
    GuaranteeRestricted,
}

/// What a partition is configured with: limits, policies and permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionConfig {
    /// Minimum and maximum.
    pub limits: Limits,
    /// One-way policies.
    pub policies: Policies,
    /// Owner, group and mode.
    pub perm: Perm,
}

/// How to create a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewPartition {
    /// Its limits.
    pub limits: Limits,
    /// Its mode bits; owner and group come from the creator.
    pub mode: u32,
    /// Back it with a zone (a guest NUMA node the VMM sizes): only a top-level sysram
    /// partition with a finite max may be.
    pub zone: bool,
}

impl Default for NewPartition {
    fn default() -> Self {
        NewPartition {
            limits: Limits::OPEN,
            mode: 0o755,
            zone: false,
        }
    }
}

/// The result of changing limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetOutcome {
    /// The new limits are in force.
    Applied,
    /// The new max is below use: it takes effect once use has shrunk by `excess` bytes;
    /// meanwhile no allocation may take use above it.
    ReclaimPending {
        /// Bytes that must be freed before the new max applies.
        excess: u64,
    },
}

/// Everything a reader can learn about one real partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMetrics {
    /// Full path.
    pub path: String,
    /// Class name.
    pub class: String,
    /// Type derived from the current limits.
    pub kind: PartitionType,
    /// Configuration now.
    pub current: PartitionConfig,
    /// Configuration when it was created.
    pub created: PartitionConfig,
    /// A lower max waiting for reclaim, if any.
    pub pending_max: Option<u64>,
    /// Bytes allocated by objects associated with this partition itself.
    pub own: u64,
    /// `own` plus what children cost: the current size.
    pub used: u64,
    /// What this partition costs its parent or class: `max(min, used)`.
    pub charge: u64,
    /// Highest `used` seen since creation or the last reset.
    pub highest: u64,
    /// `min - used` when positive.
    pub reserved_unused: u64,
    /// Processes associated with it.
    pub processes: Vec<Pid>,
    /// Shared-memory objects charged to it.
    pub objects: usize,
    /// Names of its child partitions.
    pub children: Vec<String>,
    /// Its zone and the zone's figures, when it is zoned.
    pub zone: Option<crate::zone::ZoneMetrics>,
}

/// A partition as the engine keeps it; its accounting figures live in the ledger
/// ([`crate::ledger::Record`]) at the index of its key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Partition {
    pub name: String,
    pub class: ClassId,
    pub parent: Option<PartId>,
    pub depth: usize,
    pub children: BTreeMap<String, PartId>,
    pub created: PartitionConfig,
    pub policies: Policies,
    pub perm: Perm,
    pub processes: BTreeSet<Pid>,
    pub objects: usize,
    pub pseudo_refs: usize,
    pub subscribers: Vec<SubId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_is_derived_from_limits() {
        let k = |min, max| Limits { min, max }.kind();
        assert_eq!(k(0, UNLIMITED), PartitionType::Open);
        assert_eq!(k(4096, UNLIMITED), PartitionType::Guarantee);
        assert_eq!(k(0, 4096), PartitionType::Restricted);
        assert_eq!(k(4096, 4096), PartitionType::Sandbox);
        assert_eq!(k(4096, 8192), PartitionType::GuaranteeRestricted);
    }
}
