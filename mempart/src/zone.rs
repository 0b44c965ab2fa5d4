//! Zones as the engine knows them: guest NUMA nodes the VMM declared at start-up, each of
//! which backs at most one zoned sysram partition.

use serde::{Deserialize, Serialize};

use crate::ids::PartId;

/// Most zone regions one engine holds.
pub const MAX_ZONES: usize = 64;

/// A zone region the VMM declared: its node, how much it can plug and in what steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneSpec {
    /// The guest NUMA node (ACPI proximity domain) it is.
    pub node: u32,
    /// Bytes it can plug at most.
    pub capacity: u64,
    /// Bytes per block: the unit its plugged size moves in.
    pub block: u64,
}

impl ZoneSpec {
    /// The plugged size that holds a partition to `max`: whole blocks, never above it.
    pub fn plugged_for(&self, max: u64) -> u64 {
        max.min(self.capacity) / self.block * self.block
    }
}

/// A declared region and the partition it backs, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ZoneRegion {
    pub spec: ZoneSpec,
    pub bound: Option<PartId>,
}

/// A zoned partition's zone, and its figures from below the guest OS (the VMM fills
/// `plugged` and `host_resident`; the engine alone leaves them 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneMetrics {
    /// The zone.
    pub spec: ZoneSpec,
    /// Bytes plugged into the guest now.
    pub plugged: u64,
    /// Bytes of the zone's host memory actually backed.
    pub host_resident: u64,
}

/// Where a zoned partition's zone stands, for the VMM to bring the zone in line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneBinding {
    /// The zone.
    pub spec: ZoneSpec,
    /// The partition it backs, `None` when free.
    pub partition: Option<PartId>,
    /// The partition's min.
    pub min: u64,
    /// The plugged size its max in force allows. A pending lower max does not count
    /// yet: were the zone to shrink while the partition's use is above it, the guest
    /// would move the partition's pages to another node rather than free them.
    pub plugged_target: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugged_size_is_whole_blocks_within_max_and_capacity() {
        let spec = ZoneSpec {
            node: 1,
            capacity: 128 << 20,
            block: 2 << 20,
        };
        assert_eq!(spec.plugged_for(32 << 20), 32 << 20);
        assert_eq!(spec.plugged_for((33 << 20) - 1), 32 << 20);
        assert_eq!(spec.plugged_for(1 << 20), 0);
        assert_eq!(spec.plugged_for(u64::MAX), 128 << 20);
    }
}
