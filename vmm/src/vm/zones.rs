//! Zones: guest NUMA nodes whose memory is a virtio-mem device over its own memfd. A
//! plugged block is one KVM memory slot; an unplugged block has none (an access is a
//! violation) and its host pages are punched out of the memfd.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use devices::virtio::mem::{BlockBacking, Mem, MemConfig, MemConfigError, MemHandle, MemStatus};
use kvm_ioctls::VmFd;
use mempart::{PartId, ZoneBinding};

use crate::config::{ClassBacking, ZoneSpec, ZONE_GRANULE};
use crate::vm::memory::{ClassRegion, MemoryError, CLASS_ALIGN, MIB, PAGE};

/// KVM memory slots each zone may take at most: its block size is chosen so that the
/// whole region plugged fits them.
pub const ZONE_SLOTS: u32 = 256;
/// The smallest block: Linux's page block (2 MiB), below which virtio-mem cannot go.
const MIN_BLOCK: u64 = 2 * MIB;

/// The block size of a zone of `size` bytes: one KVM slot per plugged block, so unplugged
/// memory never has a slot, and at most [`ZONE_SLOTS`] blocks.
pub fn block_size(size: u64) -> u64 {
    size.div_ceil(u64::from(ZONE_SLOTS))
        .max(MIN_BLOCK)
        .checked_next_power_of_two()
        .unwrap_or(u64::MAX)
}

/// KVM's memory slots: those handed out and freed again, and the first never used.
#[derive(Debug)]
pub struct SlotPool {
    next: u32,
    free: Vec<u32>,
    max: u32,
}

impl SlotPool {
    /// Slots from `first` up to `max`.
    pub fn new(first: u32, max: u32) -> SlotPool {
        SlotPool {
            next: first,
            free: Vec::new(),
            max,
        }
    }

    /// A free slot.
    pub fn take(&mut self) -> Result<u32, MemoryError> {
        if let Some(slot) = self.free.pop() {
            return Ok(slot);
        }
        if self.next >= self.max {
            return Err(MemoryError::NoSlot(self.max as usize));
        }
        self.next += 1;
        Ok(self.next - 1)
    }

    /// Gives `slot` back.
    pub fn give(&mut self, slot: u32) {
        self.free.push(slot);
    }

    /// Slots in use, counting those below the pool's first.
    pub fn used(&self) -> u32 {
        self.next.saturating_sub(self.free.len() as u32)
    }
}

/// Locks `m`, whatever a panicking holder left.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A zone: its region, its device's handle and the node it is.
pub struct Zone {
    /// The zone name.
    pub name: String,
    /// Its ACPI proximity domain (its guest NUMA node).
    pub proximity: u32,
    /// Its guest-physical range `(base, size)`, fixed: read without the region's lock,
    /// which a plug or unplug holds across KVM and file calls.
    range: (u64, u64),
    /// Its memory.
    pub region: Arc<Mutex<ClassRegion>>,
    /// Its virtio-mem device.
    pub device: MemHandle,
}

impl Zone {
    /// Whether guest-physical `gpa` lies in the zone's region.
    pub fn contains(&self, gpa: u64) -> bool {
        let (base, size) = self.range;
        gpa >= base && gpa - base < size
    }

    /// Host bytes backing the zone's memfd.
    pub fn resident(&self) -> u64 {
        lock(&self.region).resident()
    }

    /// The device's figures.
    pub fn status(&self) -> MemStatus {
        self.device.status()
    }
}

/// Why a zone cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// Its memory cannot be created or does not fit the guest-physical space.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Its device refuses the layout.
    #[error("zone {zone:?}: {source}")]
    Device {
        /// The zone.
        zone: String,
        /// Why.
        source: MemConfigError,
    },
    /// More zones than nodes the devices can name.
    #[error("zone {0:?}: too many zones")]
    TooMany(String),
    /// A zoned partition of the topology is named like a zone given with `--zone`.
    #[error("zone {0:?}: the topology's zoned partition of that name needs a zone of its own; rename the --zone")]
    NameTaken(String),
    /// A zoned partition's max is too large for a zone.
    #[error("partition {0:?}: its max {1} is too large for a zone")]
    TooLarge(String, u64),
}

/// A zone for each zoned partition of `topology`, named after it, its size the
/// partition's max rounded up to the guest's hot-plug granule. Entries without a finite
/// max get none (building the engine refuses them by name).
pub fn for_topology(
    topology: &mempart::topology::Topology,
    declared: &[ZoneSpec],
) -> Result<Vec<ZoneSpec>, ZoneError> {
    let mut specs = Vec::new();
    for (path, max) in topology.zoned() {
        if max == mempart::UNLIMITED {
            continue;
        }
        let name = path.rsplit('/').next().unwrap_or(path).to_string();
        if declared.iter().any(|z| z.name == name) {
            return Err(ZoneError::NameTaken(name));
        }
        let size = max
            .max(1)
            .checked_next_multiple_of(ZONE_GRANULE)
            .ok_or_else(|| ZoneError::TooLarge(path.to_string(), max))?;
        specs.push(ZoneSpec {
            name,
            size,
            requested: 0,
            hugepages: false,
        });
    }
    Ok(specs)
}

/// The engine's view of `specs`: node `i + 1` for the `i`th, as [`build`] numbers them.
pub fn engine_specs(specs: &[ZoneSpec]) -> Vec<mempart::ZoneSpec> {
    specs
        .iter()
        .enumerate()
        .map(|(i, z)| mempart::ZoneSpec {
            node: u32::try_from(i + 1).unwrap_or(u32::MAX),
            capacity: z.size,
            block: block_size(z.size),
        })
        .collect()
}

/// The zones of `specs`, placed one after another from `start` on GiB boundaries: each
/// zone (its region and its device's handle) and its device, and where the last ends.
pub fn build(
    specs: &[ZoneSpec],
    start: u64,
    vm: &Arc<VmFd>,
    slots: &Arc<Mutex<SlotPool>>,
) -> Result<(Vec<Zone>, Vec<Mem>, u64), ZoneError> {
    let mut zones = Vec::with_capacity(specs.len());
    let mut devices = Vec::with_capacity(specs.len());
    let mut base = start;
    for (index, spec) in specs.iter().enumerate() {
        let node_id =
            u16::try_from(index + 1).map_err(|_| ZoneError::TooMany(spec.name.clone()))?;
        let region = Arc::new(Mutex::new(region(spec, base)?));
        let block_size = block_size(spec.size);
        let backing = ZoneBlocks {
            vm: Arc::clone(vm),
            slots: Arc::clone(slots),
            region: Arc::clone(&region),
            block_size,
        };
        let config = MemConfig {
            addr: base,
            region_size: spec.size,
            block_size,
            node_id,
        };
        let (device, handle) =
            Mem::new(config, spec.requested, Box::new(backing)).map_err(|source| {
                ZoneError::Device {
                    zone: spec.name.clone(),
                    source,
                }
            })?;
        zones.push(Zone {
            name: spec.name.clone(),
            proximity: u32::from(node_id),
            range: (base, spec.size),
            region,
            device: handle,
        });
        devices.push(device);
        base = (base + spec.size).next_multiple_of(CLASS_ALIGN);
    }
    Ok((zones, devices, base))
}

/// Creates the region of `spec` at `base`; its memfd is named `mempart:zone:<name>`.
fn region(spec: &ZoneSpec, base: u64) -> Result<ClassRegion, MemoryError> {
    let backing = ClassBacking {
        name: format!("zone:{}", spec.name),
        size: spec.size,
        hugepages: spec.hugepages,
        file: None,
        prefault: false,
    };
    ClassRegion::new(&backing, base)
}

/// Keeps each zone in line with the zoned partition it backs: the plugged size follows
/// the partition's max in force (a pending lower max waits until use fits it: see
/// [`mempart::ZoneBinding::plugged_target`]), its min is populated on the host
/// when the partition takes the zone, and a zone its partition left is unplugged. Zones
/// that back no partition are the host's to size (`PATCH /zone`).
#[derive(Debug, Default)]
pub struct ZoneFollower {
    /// The partition each zone backs, by node, and the min populated for it.
    bound: BTreeMap<u32, (PartId, u64)>,
    /// What could not be done last time: said once, not at every change.
    failing: Vec<String>,
}

impl ZoneFollower {
    /// Applies `bindings` (the engine's) to `zones`; returns what could not be done and
    /// was not returned by the call before.
    pub fn follow(&mut self, bindings: &[ZoneBinding], zones: &[Zone]) -> Vec<String> {
        let problems = self.apply(bindings, zones);
        let new = problems
            .iter()
            .filter(|p| !self.failing.contains(p))
            .cloned()
            .collect();
        self.failing = problems;
        new
    }

    fn apply(&mut self, bindings: &[ZoneBinding], zones: &[Zone]) -> Vec<String> {
        let mut problems = Vec::new();
        for binding in bindings {
            let node = binding.spec.node;
            let Some(zone) = zones.iter().find(|z| z.proximity == node) else {
                continue;
            };
            let Some(partition) = binding.partition else {
                if self.bound.remove(&node).is_some() {
                    if let Err(e) = zone.device.set_requested(0) {
                        problems.push(format!("zone {:?}: unplugging: {e}", zone.name));
                    }
                    // What was populated for the partition's min and never plugged.
                    if let Err(e) = lock(&zone.region).discard_ungranted() {
                        problems.push(format!("zone {:?}: {e}", zone.name));
                    }
                }
                continue;
            };
            let populated = match self.bound.get(&node) {
                Some((p, populated)) if *p == partition => *populated,
                _ => 0,
            };
            if zone.status().requested_size != binding.plugged_target {
                if let Err(e) = zone.device.set_requested(binding.plugged_target) {
                    problems.push(format!("zone {:?}: plugging: {e}", zone.name));
                }
            }
            let min = binding.min.min(zone.range.1).next_multiple_of(PAGE);
            let populated = if min > populated {
                match lock(&zone.region).populate(populated, min - populated) {
                    Ok(()) => min,
                    Err(e) => {
                        problems.push(format!("zone {:?}: populating its min: {e}", zone.name));
                        populated
                    }
                }
            } else {
                populated
            };
            self.bound.insert(node, (partition, populated));
        }
        problems
    }
}

/// Plugs and unplugs a zone's blocks: each plugged block is a KVM slot over its part of
/// the memfd; unplugging removes the slot and punches the block out of the memfd.
struct ZoneBlocks {
    vm: Arc<VmFd>,
    /// KVM's slots, shared with typed memory.
    slots: Arc<Mutex<SlotPool>>,
    region: Arc<Mutex<ClassRegion>>,
    block_size: u64,
}

impl BlockBacking for ZoneBlocks {
    fn plug(&mut self, index: u64) -> Result<(), String> {
        let offset = index
            .checked_mul(self.block_size)
            .ok_or("block out of range")?;
        let slot = lock(&self.slots).take().map_err(|e| e.to_string())?;
        let granted = lock(&self.region).grant(&self.vm, slot, offset, self.block_size);
        granted.map_err(|e| {
            lock(&self.slots).give(slot);
            e.to_string()
        })
    }

    fn unplug(&mut self, index: u64) -> Result<(), String> {
        let offset = index
            .checked_mul(self.block_size)
            .ok_or("block out of range")?;
        let slot = lock(&self.region)
            .revoke(&self.vm, offset)
            .map_err(|e| e.to_string())?;
        lock(&self.slots).give(slot);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_keep_a_zone_within_its_slots() {
        assert_eq!(block_size(128 * MIB), 2 * MIB);
        assert_eq!(block_size(512 * MIB), 2 * MIB);
        assert_eq!(block_size(1 << 30), 4 * MIB);
        assert_eq!(block_size(3 << 30), 16 * MIB);
        for size in [128 * MIB, 640 * MIB, 1 << 30, 48 << 30] {
            let block = block_size(size);
            assert!(block.is_power_of_two() && block >= 2 * MIB);
            assert!(size.div_ceil(block) <= u64::from(ZONE_SLOTS), "{size}");
        }
    }

    #[test]
    fn slots_are_reused_and_bounded() {
        let mut pool = SlotPool::new(3, 5);
        assert_eq!((pool.take().unwrap(), pool.take().unwrap()), (3, 4));
        assert!(matches!(pool.take(), Err(MemoryError::NoSlot(5))));
        pool.give(3);
        assert_eq!(pool.used(), 4);
        assert_eq!(pool.take().unwrap(), 3);
    }
}
