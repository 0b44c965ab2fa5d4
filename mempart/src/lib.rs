//! `mempart`: the memory-partition model of a VM — classes, hierarchical partitions with
//! reserved minimums and hard maximums, the `/partition/mem` name space, process and
//! shared-object association, metrics, events and permissions. No KVM, no I/O.
//!
//! ```
//! use mempart::{ClassSpec, Credential, Engine, Errno, Limits, NewPartition};
//!
//! const MIB: u64 = 1 << 20;
//! let mut engine = Engine::new(&[
//!     ClassSpec::new("sysram", 256 * MIB),
//!     ClassSpec::new("fast", 128 * MIB),
//! ])?;
//! let host = Credential::Host;
//! let sandbox = NewPartition {
//!     limits: Limits { min: 32 * MIB, max: 32 * MIB },
//!     ..NewPartition::default()
//! };
//! for i in 0..4 {
//!     engine.create(&host, &format!("/partition/mem/fast/s{i}"), sandbox)?;
//! }
//! let fifth = engine.create(&host, "/partition/mem/fast/s4", sandbox);
//! assert_eq!(fifth.err().map(|e| e.errno), Some(Errno::Enomem));
//! # Ok::<(), mempart::Error>(())
//! ```

mod class;
mod engine;
mod error;
mod events;
mod ids;
mod ledger;
mod name;
mod namespace;
mod objects;
mod partition;
mod pids;
mod process;
mod quota;
mod security;
mod slab;
pub mod topology;
mod zone;

pub use class::{ClassMetrics, ClassSpec, DEFAULT_UNIT, SYSRAM, SYS_PARTITION};
pub use engine::{Engine, MAX_CLASSES, MAX_DEPTH, MAX_PARTITIONS};
pub use error::{Errno, Error, Result};
pub use events::{Event, EventBatch, EventFilter, EventKind, Target, MAX_QUEUE, MAX_SUBSCRIPTIONS};
pub use ids::{ClassId, ObjectId, PartId, Pid, SubId};
pub use name::{check_name, components, join, MEM_ROOT, NAME_MAX, PATH_MAX, RESERVED_NAME};
pub use namespace::{DirEntry, EntryKind, Node, MAX_GROUPS};
pub use objects::{ObjectInfo, MAX_MAPS_PER_PROCESS, MAX_OBJECTS};
pub use partition::{
    Limits, NewPartition, PartitionConfig, PartitionMetrics, PartitionType, SetOutcome, UNLIMITED,
};
pub use pids::PID_LIMIT;
pub use process::{Association, Grant, Spawn, MAX_PROCESSES};
pub use security::{Access, Credential, Gid, Perm, Policies, Policy, Uid, MODE_MASK};
pub use zone::{ZoneBinding, ZoneMetrics, ZoneSpec, MAX_ZONES};
