//! The engine's zone operations: declaring zone regions, binding a zoned partition to
//! one, and the rules a zoned partition's limits follow.

use crate::class::SYSRAM;
use crate::error::{Errno, Error, Result};
use crate::ids::PartId;
use crate::partition::{Limits, UNLIMITED};
use crate::zone::{ZoneBinding, ZoneRegion, ZoneSpec, MAX_ZONES};

use super::{Engine, Parent};

impl Engine {
    /// Declares a zone region the VMM set up: zoned partitions created later take one.
    pub fn add_zone(&mut self, spec: ZoneSpec) -> Result<()> {
        let subject = format!("zone node {}", spec.node);
        if self.zones.iter().any(|z| z.spec.node == spec.node) {
            return Err(Error::new(Errno::Eexist, subject, "declared already"));
        }
        if self.zones.len() >= MAX_ZONES {
            return Err(Error::new(
                Errno::Enomem,
                subject,
                format!("at most {MAX_ZONES} zones"),
            ));
        }
        if !spec.block.is_power_of_two() || spec.capacity == 0 || spec.capacity % spec.block != 0 {
            return Err(Error::new(
                Errno::Einval,
                subject,
                format!(
                    "capacity {} is not a positive multiple of the power-of-two block {}",
                    spec.capacity, spec.block
                ),
            ));
        }
        self.zones.push(ZoneRegion { spec, bound: None });
        Ok(())
    }

    /// Every declared zone, with the partition it backs and what the VMM should make of it.
    pub fn zone_bindings(&self) -> Vec<ZoneBinding> {
        self.zones
            .iter()
            .map(|z| {
                let record = z.bound.and_then(|id| self.record(id).ok());
                let (min, max) = record.map_or((0, 0), |r| (r.limits().min, r.limits().max));
                ZoneBinding {
                    spec: z.spec,
                    partition: z.bound.filter(|_| record.is_some()),
                    min,
                    plugged_target: z.spec.plugged_for(max),
                }
            })
            .collect()
    }

    /// The zone backing partition `id`, if it is zoned.
    pub fn zone_of(&self, id: PartId) -> Option<ZoneSpec> {
        self.zones
            .iter()
            .find(|z| z.bound == Some(id))
            .map(|z| z.spec)
    }

    /// Refuses to zone a partition that is not top-level sysram or has no finite max.
    pub(crate) fn zone_rules(&self, parent: Parent, limits: Limits, path: &str) -> Result<()> {
        let top_sysram = match parent {
            Parent::Class(c) => self.class_name(c) == SYSRAM,
            Parent::Partition(_) => false,
        };
        if !top_sysram {
            return Err(Error::new(
                Errno::Einval,
                path,
                "only a partition directly under /partition/mem/sysram can be zoned; \
                 nest partitions inside a zoned one instead",
            ));
        }
        if limits.max == UNLIMITED {
            return Err(Error::new(
                Errno::Einval,
                path,
                "a zoned partition needs a finite max: its zone's plugged size follows it",
            ));
        }
        Ok(())
    }

    /// The free zone that fits `max` most closely.
    pub(crate) fn pick_zone(&self, max: u64, path: &str) -> Result<usize> {
        let fitting = self
            .zones
            .iter()
            .enumerate()
            .filter(|(_, z)| z.bound.is_none() && z.spec.capacity >= max)
            .min_by_key(|(_, z)| z.spec.capacity)
            .map(|(i, _)| i);
        let Some(index) = fitting else {
            let free = self.zones.iter().filter(|z| z.bound.is_none()).count();
            return Err(Error::new(
                Errno::Enomem,
                path,
                format!(
                    "no free zone holds max {max}: {free} of {} declared zones are free; \
                     zones are declared when the VM starts (--zone, or zone = true in the topology)",
                    self.zones.len()
                ),
            ));
        };
        self.check_zone_max(index, max, path)?;
        Ok(index)
    }

    /// Refuses a max zone `index` cannot follow: above its capacity or below one block.
    pub(crate) fn check_zone_max(&self, index: usize, max: u64, path: &str) -> Result<()> {
        let Some(zone) = self.zones.get(index) else {
            return Err(Error::new(Errno::Enoent, path, "no such zone"));
        };
        let spec = zone.spec;
        if max == UNLIMITED || max > spec.capacity {
            return Err(Error::new(
                Errno::Einval,
                path,
                format!(
                    "max {} is beyond its zone (node {}, {} bytes)",
                    if max == UNLIMITED {
                        "unlimited".to_string()
                    } else {
                        max.to_string()
                    },
                    spec.node,
                    spec.capacity
                ),
            ));
        }
        if max < spec.block {
            return Err(Error::new(
                Errno::Einval,
                path,
                format!(
                    "max {max} is below one block ({} bytes) of its zone (node {})",
                    spec.block, spec.node
                ),
            ));
        }
        Ok(())
    }

    /// The index of the zone backing `id`.
    pub(crate) fn zone_index(&self, id: PartId) -> Option<usize> {
        self.zones.iter().position(|z| z.bound == Some(id))
    }

    /// Binds zone `index` to `id`.
    pub(crate) fn bind_zone(&mut self, index: usize, id: PartId) {
        if let Some(zone) = self.zones.get_mut(index) {
            zone.bound = Some(id);
        }
    }

    /// Frees the zone backing `id`, if any.
    pub(crate) fn unbind_zone(&mut self, id: PartId) {
        for zone in self.zones.iter_mut().filter(|z| z.bound == Some(id)) {
            zone.bound = None;
        }
    }
}
