//! The engine: one authoritative partition tree per VM, its exact accounting and its management.
//! This file holds the tree, classes and limits; `events.rs`, `namespace.rs`, `objects.rs`,
//! `process.rs` and `zones.rs` hold the engine's operations on those (the types they act on live in
//! the crate's modules of the same names, which never import the engine).

mod events;
mod namespace;
mod objects;
mod process;
mod zones;

use std::collections::BTreeMap;

use crate::class::{Class, ClassMetrics, ClassSpec, SYSRAM, SYS_PARTITION};
use crate::error::{Errno, Error, Result};
use crate::events::{EventKind, Subscription, Target};
use crate::ids::{ClassId, PartId, SubId};
use crate::ledger::{Delta, LeafChange, Ledger, Mode, Record, Refusal, CLASS_LEVEL};
use crate::name::{check_name, check_partition_name, components, MEM_ROOT};
use crate::namespace::{Group, Node};
use crate::objects::Objects;
use crate::partition::{
    Limits, NewPartition, Partition, PartitionConfig, PartitionMetrics, SetOutcome, UNLIMITED,
};
use crate::pids::PidMap;
use crate::process::Process;
use crate::security::{Access, Credential, Perm, Policies, Policy, MODE_MASK};
use crate::slab::Slab;
use crate::zone::ZoneMetrics;

/// Most classes one engine holds.
pub const MAX_CLASSES: usize = 64;
/// Most real partitions one engine holds.
pub const MAX_PARTITIONS: usize = 4096;
/// Deepest nesting below a class (a root partition has depth 1).
pub const MAX_DEPTH: usize = 64;

/// Where a new partition goes: directly under a class, or under a partition.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Parent {
    Class(ClassId),
    Partition(PartId),
}

/// The partition model of one VM: classes, partitions, groups, processes, objects, subscribers.
///
/// Every operation either succeeds with the §4 invariants holding afterwards or fails
/// with an [`Error`] and changes nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Engine {
    pub(crate) classes: Vec<Class>,
    pub(crate) parts: Slab<Partition>,
    pub(crate) ledger: Ledger,
    pub(crate) groups: BTreeMap<String, Group>,
    pub(crate) procs: PidMap<Process>,
    pub(crate) objects: Objects,
    pub(crate) subs: Slab<Subscription>,
    pub(crate) zones: Vec<crate::zone::ZoneRegion>,
}

/// Permissions of `/partition/mem` itself: only the superuser and the host may add groups.
pub(crate) const MEM_PERM: Perm = Perm {
    uid: 0,
    gid: 0,
    mode: 0o755,
};

impl Engine {
    /// An engine with these classes; one of them must be `sysram`.
    pub fn new(classes: &[ClassSpec]) -> Result<Engine> {
        if !classes.iter().any(|c| c.name == SYSRAM) {
            return Err(Error::new(
                Errno::Einval,
                MEM_ROOT,
                "the sysram class is required",
            ));
        }
        let mut engine = Engine {
            classes: Vec::new(),
            parts: Slab::default(),
            ledger: Ledger::default(),
            groups: BTreeMap::new(),
            procs: PidMap::default(),
            objects: Objects::default(),
            subs: Slab::default(),
            zones: Vec::new(),
        };
        for spec in classes {
            engine.add_class(spec)?;
        }
        Ok(engine)
    }

    /// Introduces a class and its `sys` root partition.
    pub fn add_class(&mut self, spec: &ClassSpec) -> Result<ClassId> {
        check_name(&spec.name)?;
        let path = format!("{MEM_ROOT}/{}", spec.name);
        if self.class_id(&spec.name).is_some() || self.groups.contains_key(&spec.name) {
            return Err(Error::new(Errno::Eexist, path, "name already in use"));
        }
        if self.classes.len() >= MAX_CLASSES {
            return Err(Error::new(
                Errno::Enomem,
                path,
                format!("at most {MAX_CLASSES} classes"),
            ));
        }
        if spec.unit == 0 || !spec.unit.is_power_of_two() {
            return Err(Error::new(
                Errno::Einval,
                path,
                format!("allocation unit {} is not a power of two", spec.unit),
            ));
        }
        if spec.size == 0 || spec.size % spec.unit != 0 {
            return Err(Error::new(
                Errno::Einval,
                path,
                format!(
                    "size {} is not a positive multiple of the unit {}",
                    spec.size, spec.unit
                ),
            ));
        }
        if spec.sys_min % spec.unit != 0 {
            return Err(Error::new(
                Errno::Einval,
                path,
                format!("sys minimum {} is not a multiple of the unit", spec.sys_min),
            ));
        }
        if spec.sys_min > spec.size {
            return Err(Error::new(
                Errno::Enomem,
                path,
                format!(
                    "sys minimum {} exceeds the class size {}",
                    spec.sys_min, spec.size
                ),
            ));
        }
        let id = ClassId(u32::try_from(self.classes.len()).unwrap_or(u32::MAX));
        self.classes
            .push(Class::new(&spec.name, spec.size, spec.unit));
        let limits = Limits {
            min: spec.sys_min,
            max: UNLIMITED,
        };
        self.insert_partition(
            Parent::Class(id),
            SYS_PARTITION,
            limits,
            Perm::new(0, 0, 0o755),
        )?;
        Ok(id)
    }

    /// The class called `name`.
    pub fn class_id(&self, name: &str) -> Option<ClassId> {
        self.classes
            .iter()
            .position(|c| *c.name == *name)
            .and_then(|i| u32::try_from(i).ok())
            .map(ClassId)
    }

    /// Names of all classes, in the order they were added.
    pub fn class_names(&self) -> Vec<String> {
        self.classes.iter().map(|c| c.name.to_string()).collect()
    }

    /// The `sys` root partition of a class.
    pub fn sys_partition(&self, class: ClassId) -> Result<PartId> {
        self.class(class)?
            .roots
            .get(SYS_PARTITION)
            .copied()
            .ok_or_else(|| Error::new(Errno::Enoent, self.class_path(class), "no sys partition"))
    }

    /// Every real partition, in no particular order.
    pub fn partitions(&self) -> Vec<PartId> {
        self.parts.iter().map(|(key, _)| PartId(key)).collect()
    }

    /// The class a partition belongs to.
    pub fn class_of(&self, id: PartId) -> Result<ClassId> {
        Ok(self.part(id)?.class)
    }

    /// The full path of a partition.
    pub fn path_of(&self, id: PartId) -> Result<String> {
        let mut names = Vec::new();
        let mut cur = Some(id);
        let mut class = None;
        while let Some(c) = cur {
            let p = self.part(c)?;
            names.push(p.name.as_str());
            class = Some(p.class);
            cur = p.parent;
        }
        let class = class.map(|c| self.class_name(c)).unwrap_or_default();
        let mut path = format!("{MEM_ROOT}/{class}");
        for n in names.iter().rev() {
            path.push('/');
            path.push_str(n);
        }
        Ok(path)
    }

    pub(crate) fn class(&self, id: ClassId) -> Result<&Class> {
        self.classes
            .get(id.0 as usize)
            .ok_or_else(|| Error::new(Errno::Enoent, format!("class #{}", id.0), "no such class"))
    }

    pub(crate) fn class_name(&self, id: ClassId) -> &str {
        self.classes
            .get(id.0 as usize)
            .map(|c| &*c.name)
            .unwrap_or("?")
    }

    pub(crate) fn class_path(&self, id: ClassId) -> String {
        format!("{MEM_ROOT}/{}", self.class_name(id))
    }

    pub(crate) fn part(&self, id: PartId) -> Result<&Partition> {
        self.parts.get(id.0).ok_or_else(|| no_partition(id))
    }

    pub(crate) fn part_mut(&mut self, id: PartId) -> Result<&mut Partition> {
        part_in(&mut self.parts, id)
    }

    fn display_path(&self, id: PartId) -> String {
        self.path_of(id).unwrap_or_else(|_| format!("{id:?}"))
    }

    // ----- accounting -------------------------------------------------------------------

    /// The accounting record of a live partition.
    pub(crate) fn record(&self, id: PartId) -> Result<&Record> {
        self.ledger.live(id.0).ok_or_else(|| no_partition(id))
    }

    /// The accounting record of a live partition, mutably.
    pub(crate) fn record_mut(&mut self, id: PartId) -> Result<&mut Record> {
        self.ledger.live_mut(id.0).ok_or_else(|| no_partition(id))
    }

    /// Sets a partition's own bytes and minimum, carrying the change of its charge up to
    /// the class; in [`Mode::Checked`] refused with nothing changed if an invariant would
    /// break. O(depth), one walk, no heap allocation unless it fails.
    pub(crate) fn set_own_min(
        &mut self,
        id: PartId,
        new_own: u64,
        new_min: u64,
        mode: Mode,
    ) -> Result<()> {
        let r = self.record(id)?;
        let leaf = LeafChange {
            index: id.0.index(),
            old_own: r.own(),
            old_min: r.limits().min,
        };
        let eventful = self
            .ledger
            .set_own_min(&mut self.classes, leaf.index, new_own, new_min, mode)
            .map_err(|r| self.refusal(r))?;
        if eventful {
            self.settle_leaf(leaf);
        }
        Ok(())
    }

    /// Adds or takes own bytes of a partition, keeping every invariant (refused with
    /// `ENOMEM` and nothing changed otherwise).
    pub(crate) fn shift_own(&mut self, id: PartId, delta: Delta) -> Result<()> {
        let eventful = self
            .ledger
            .shift_own(&mut self.classes, id.0, delta)
            .map_err(|r| self.refusal(r))?;
        if eventful {
            self.settle_shift(id, delta);
        }
        Ok(())
    }

    /// Carries a change of a child's charge into `parent` (or the class) and up.
    fn carry_into(
        &mut self,
        class: ClassId,
        parent: Option<PartId>,
        delta: Delta,
        mode: Mode,
    ) -> Result<()> {
        let entry = parent.map_or(CLASS_LEVEL, |p| p.0.index());
        let eventful = self
            .ledger
            .carry_into(&mut self.classes, class.0, entry, delta, mode)
            .map_err(|r| self.refusal(r))?;
        if eventful {
            self.settle_levels(entry, delta);
        }
        Ok(())
    }

    /// [`Engine::settle_leaf`] for a change [`Ledger::shift_own`] made.
    #[cold]
    pub(crate) fn settle_shift(&mut self, id: PartId, delta: Delta) {
        if let Some(leaf) = self.ledger.shifted(id.0, delta) {
            self.settle_leaf(leaf);
        }
    }

    /// Follows up a change of a partition's own bytes or min that needs it: highest
    /// sizes, pending maxes that now fit, size events — for the partition, every level
    /// its charge changed, and the class.
    #[cold]
    fn settle_leaf(&mut self, leaf: LeafChange) {
        let Some((level, entry, delta)) = self.ledger.read_back(leaf) else {
            return;
        };
        self.after_used_change(level.index, level.old_used, level.new_used);
        self.settle_levels(entry, delta);
        let Some(r) = self.ledger.get(leaf.index) else {
            return;
        };
        let new_own = r.own();
        let Some(c) = self.classes.get_mut(r.class() as usize) else {
            return;
        };
        c.note_allocated();
        if new_own != leaf.old_own {
            let old = c
                .allocated
                .saturating_sub(new_own)
                .saturating_add(leaf.old_own);
            for s in &c.subscribers {
                if let Some(sub) = self.subs.get_mut(s.0) {
                    sub.size_changed(old, c.allocated);
                }
            }
        }
    }

    /// The follow-up of [`Engine::settle_leaf`] for every level a change of charge
    /// entering at `entry` reached.
    #[cold]
    fn settle_levels(&mut self, entry: u32, delta: Delta) {
        let (mut at, mut delta) = (entry, delta);
        while let Some((level, next, parent)) = self.ledger.level_after(at, delta) {
            self.after_used_change(level.index, level.old_used, level.new_used);
            (at, delta) = (parent, next);
        }
    }

    /// Records a change of one partition's use: highest size, pending max, size events.
    fn after_used_change(&mut self, index: u32, old: u64, new: u64) {
        if old == new {
            return;
        }
        let Some(r) = self.ledger.get_mut(index) else {
            return;
        };
        let applied = r.note_used(new);
        if !r.subscribed() {
            return;
        }
        let Some(p) = self.parts.key_at(index).and_then(|k| self.parts.get(k)) else {
            return;
        };
        for s in &p.subscribers {
            if let Some(sub) = self.subs.get_mut(s.0) {
                sub.size_changed(old, new);
            }
        }
        if applied {
            notify(&p.subscribers, &mut self.subs, EventKind::ConfigChanged);
        }
    }

    /// The error a refused walk reports, naming the partition or class at fault.
    #[cold]
    pub(crate) fn refusal(&self, refusal: Refusal) -> Error {
        let path_at = |index: u32| {
            self.parts.key_at(index).map_or_else(
                || format!("partition #{index}"),
                |k| self.display_path(PartId(k)),
            )
        };
        match refusal {
            Refusal::OverMax { index, used, limit } => Error::new(
                Errno::Enomem,
                path_at(index),
                format!("use would reach {used}, above its max {limit}"),
            ),
            Refusal::ClassFull { class, needs, free } => Error::new(
                Errno::Enomem,
                self.class_path(ClassId(class)),
                format!("needs {needs} more bytes, {free} are free in the class"),
            ),
            Refusal::Overflow { index } => {
                Error::new(Errno::Enomem, path_at(index), "size overflows 64 bits")
            }
            Refusal::ClassOverflow { class } => Error::new(
                Errno::Enomem,
                self.class_path(ClassId(class)),
                "the class's charge leaves 64 bits",
            ),
            Refusal::Missing { index } => {
                Error::new(Errno::Enoent, path_at(index), "no such partition")
            }
            Refusal::Unaligned { index, bytes, unit } => Error::new(
                Errno::Einval,
                path_at(index),
                format!("{bytes} is not a multiple of the class's unit {unit}"),
            ),
        }
    }

    // ----- partition management --------------------------------------------------------

    /// Creates the partition (or, directly under `/partition/mem`, the group) at `path`.
    pub fn create(&mut self, cred: &Credential, path: &str, spec: NewPartition) -> Result<Node> {
        let comps = components(path)?;
        let Some((name, parent_comps)) = comps.split_last() else {
            return Err(Error::new(
                Errno::Eexist,
                path,
                "the name space root exists",
            ));
        };
        if spec.mode & !MODE_MASK != 0 {
            return Err(Error::new(
                Errno::Einval,
                path,
                format!("mode {:o} has bits above 0777", spec.mode),
            ));
        }
        if parent_comps.is_empty() {
            return self.create_group(cred, name, spec.mode).map(Node::Group);
        }
        let parent = match self.resolve_components(parent_comps, path)? {
            Node::Class(c) => Parent::Class(c),
            Node::Partition(p) => Parent::Partition(p),
            Node::Group(_) => {
                return Err(Error::new(
                    Errno::Einval,
                    path,
                    "a group holds pseudo partitions: link one to a real partition",
                ))
            }
            _ => return Err(Error::new(Errno::Enotdir, path, "not a class or partition")),
        };
        check_partition_name(name).map_err(|e| Error::new(e.errno, path, e.reason))?;
        let (class, perm, siblings_has, terminal, depth) = match parent {
            Parent::Class(c) => {
                let cl = self.class(c)?;
                (c, cl.perm, cl.roots.contains_key(*name), false, 0)
            }
            Parent::Partition(p) => {
                let pp = self.part(p)?;
                (
                    pp.class,
                    pp.perm,
                    pp.children.contains_key(*name),
                    pp.policies.terminal,
                    pp.depth,
                )
            }
        };
        if siblings_has {
            return Err(Error::new(Errno::Eexist, path, "already exists"));
        }
        if !perm.allows(cred, Access::Write) {
            return Err(Error::new(
                Errno::Eacces,
                path,
                "no write permission on the parent",
            ));
        }
        if terminal {
            return Err(Error::new(Errno::Eperm, path, "the parent is terminal"));
        }
        if depth >= MAX_DEPTH {
            return Err(Error::new(
                Errno::Einval,
                path,
                format!("partitions nest at most {MAX_DEPTH} deep"),
            ));
        }
        self.check_limits(class, spec.limits, path)?;
        let zone = if spec.zone {
            self.zone_rules(parent, spec.limits, path)?;
            Some(self.pick_zone(spec.limits.max, path)?)
        } else {
            None
        };
        let (uid, gid) = cred.owner();
        let id =
            self.insert_partition(parent, name, spec.limits, Perm::new(uid, gid, spec.mode))?;
        if let Some(index) = zone {
            self.bind_zone(index, id);
        }
        Ok(Node::Partition(id))
    }

    fn check_limits(&self, class: ClassId, limits: Limits, path: &str) -> Result<()> {
        let unit = self.class(class)?.unit;
        if limits.min > limits.max {
            return Err(Error::new(
                Errno::Einval,
                path,
                format!("min {} is above max {}", limits.min, limits.max),
            ));
        }
        if limits.min % unit != 0 || (limits.max != UNLIMITED && limits.max % unit != 0) {
            return Err(Error::new(
                Errno::Einval,
                path,
                format!("sizes must be multiples of the class unit {unit}"),
            ));
        }
        Ok(())
    }

    /// Inserts a checked partition, reserving its minimum from the parent (rule of subdivision).
    pub(crate) fn insert_partition(
        &mut self,
        parent: Parent,
        name: &str,
        limits: Limits,
        perm: Perm,
    ) -> Result<PartId> {
        let (class, parent_id, depth) = match parent {
            Parent::Class(c) => (c, None, 1),
            Parent::Partition(p) => {
                let pp = self.part(p)?;
                (pp.class, Some(p), pp.depth + 1)
            }
        };
        crate::quota::admit(
            "partitions",
            name,
            MAX_PARTITIONS,
            self.parts.len(),
            perm.uid,
            || {
                self.parts
                    .iter()
                    .filter(|(_, p)| p.perm.uid == perm.uid)
                    .count()
            },
        )?;
        self.carry_into(class, parent_id, Delta::up(limits.min), Mode::Checked)?;
        let config = crate::partition::PartitionConfig {
            limits,
            policies: Policies::default(),
            perm,
        };
        let id = PartId(self.parts.insert(Partition {
            name: name.to_string(),
            class,
            parent: parent_id,
            depth,
            children: BTreeMap::new(),
            created: config,
            policies: Policies::default(),
            perm,
            processes: Default::default(),
            objects: 0,
            pseudo_refs: 0,
            subscribers: Vec::new(),
        }));
        let parent_index = parent_id.map_or(CLASS_LEVEL, |p| p.0.index());
        self.ledger
            .put(Record::new(id.0, limits, parent_index, class.0));
        let kind = EventKind::ChildCreated { child: id };
        match parent_id {
            Some(p) => {
                if let Some(pp) = self.parts.get_mut(p.0) {
                    pp.children.insert(name.to_string(), id);
                    notify(&pp.subscribers, &mut self.subs, kind);
                }
            }
            None => {
                if let Some(c) = self.classes.get_mut(class.0 as usize) {
                    c.roots.insert(name.to_string(), id);
                    notify(&c.subscribers, &mut self.subs, kind);
                }
            }
        }
        Ok(id)
    }

    /// Destroys the partition, group or pseudo partition at `path`.
    pub fn destroy(&mut self, cred: &Credential, path: &str) -> Result<()> {
        let id = match self.resolve(path)? {
            Node::Partition(id) => id,
            Node::Group(name) => return self.destroy_group(cred, &name, path),
            Node::Pseudo { group, name, .. } => {
                return self.unlink_pseudo(cred, &group, &name, path)
            }
            _ => return Err(Error::new(Errno::Einval, path, "not a partition or group")),
        };
        let p = self.part(id)?;
        if !p.perm.allows(cred, Access::Write) {
            return Err(Error::new(Errno::Eacces, path, "no write permission"));
        }
        if p.parent.is_none() && p.name == SYS_PARTITION {
            return Err(Error::new(
                Errno::Eperm,
                path,
                "a class's sys partition stays",
            ));
        }
        if p.policies.permanent {
            return Err(Error::new(
                Errno::Eacces,
                path,
                "the partition is permanent",
            ));
        }
        if !p.children.is_empty() {
            return Err(Error::new(
                Errno::Enotempty,
                path,
                "it has child partitions",
            ));
        }
        let record = *self.record(id)?;
        if !p.processes.is_empty() || p.objects > 0 || record.own() > 0 {
            return Err(Error::new(
                Errno::Ebusy,
                path,
                format!(
                    "{} processes, {} objects and {} bytes are still associated",
                    p.processes.len(),
                    p.objects,
                    record.own()
                ),
            ));
        }
        if p.pseudo_refs > 0 {
            return Err(Error::new(
                Errno::Ebusy,
                path,
                format!("{} pseudo partitions name it", p.pseudo_refs),
            ));
        }
        let (class, parent, name) = (p.class, p.parent, p.name.clone());
        self.carry_into(class, parent, Delta::down(record.charge()), Mode::Checked)?;
        self.ledger.remove(id.0);
        self.unbind_zone(id);
        if let Some(p) = self.parts.remove(id.0) {
            notify(&p.subscribers, &mut self.subs, EventKind::Destroyed);
        }
        let kind = EventKind::ChildDestroyed { child: id };
        match parent {
            Some(pid) => {
                if let Some(pp) = self.parts.get_mut(pid.0) {
                    pp.children.remove(&name);
                    notify(&pp.subscribers, &mut self.subs, kind);
                }
            }
            None => {
                if let Some(c) = self.classes.get_mut(class.0 as usize) {
                    c.roots.remove(&name);
                    notify(&c.subscribers, &mut self.subs, kind);
                }
            }
        }
        Ok(())
    }

    /// Resolves `path` to a real partition the caller may change (write bit, no config lock).
    fn writable_partition(&self, cred: &Credential, path: &str) -> Result<PartId> {
        let id = self.resolve_partition(path)?;
        let p = self.part(id)?;
        if !p.perm.allows(cred, Access::Write) {
            return Err(Error::new(Errno::Eacces, path, "no write permission"));
        }
        if p.policies.config_lock {
            return Err(Error::new(
                Errno::Eperm,
                path,
                "the configuration is locked",
            ));
        }
        Ok(id)
    }

    /// Changes a partition's min and/or max.
    ///
    /// Raising the min behaves like allocating the difference. A max below current use
    /// fails with `EBUSY`, unless `reclaim` is asked: then the lower max is pending, no
    /// allocation may take use above it, and it takes effect once use fits.
    pub fn set_limits(
        &mut self,
        cred: &Credential,
        path: &str,
        min: Option<u64>,
        max: Option<u64>,
        reclaim: bool,
    ) -> Result<SetOutcome> {
        let id = self.writable_partition(cred, path)?;
        let r = *self.record(id)?;
        let new = Limits {
            min: min.unwrap_or(r.limits().min),
            max: max.unwrap_or(r.limits().max),
        };
        let (own, used, class) = (r.own(), r.used(), self.part(id)?.class);
        self.check_limits(class, new, path)?;
        if let Some(zone) = self.zone_index(id) {
            self.check_zone_max(zone, new.max, path)?;
        }
        if new.max < used && !reclaim {
            return Err(Error::new(
                Errno::Ebusy,
                path,
                format!("max {} is below use {used}; ask for reclaim", new.max),
            ));
        }
        self.set_own_min(id, own, new.min, Mode::Checked)
            .map_err(|e| Error::new(e.errno, path, e.reason))?;
        let record = self.record_mut(id)?;
        let old = (r.limits(), r.pending_max());
        let outcome = if new.max >= used {
            record.set_max(new.max);
            SetOutcome::Applied
        } else {
            record.set_pending_max(Some(new.max));
            SetOutcome::ReclaimPending {
                excess: used - new.max,
            }
        };
        let changed = (record.limits(), record.pending_max()) != old;
        let p = part_in(&mut self.parts, id)?;
        if changed {
            notify(&p.subscribers, &mut self.subs, EventKind::ConfigChanged);
        }
        if let SetOutcome::ReclaimPending { excess } = outcome {
            let kind = EventKind::Reclaim {
                max: new.max,
                excess,
            };
            notify(&p.subscribers, &mut self.subs, kind);
        }
        Ok(outcome)
    }

    /// Withdraws a pending lower max (a reclaim that ran out of time): the partition keeps
    /// the max it had. Returns the withdrawn value, `None` when nothing was pending.
    pub fn withdraw_reclaim(&mut self, cred: &Credential, path: &str) -> Result<Option<u64>> {
        let id = self.writable_partition(cred, path)?;
        let withdrawn = self.record_mut(id)?.set_pending_max(None);
        let p = part_in(&mut self.parts, id)?;
        if withdrawn.is_some() {
            notify(&p.subscribers, &mut self.subs, EventKind::ConfigChanged);
        }
        Ok(withdrawn)
    }

    /// Records the guest's measurement of a partition's own use: for sysram, what the
    /// guest kernel charged to the partition's cgroup less its children. The guest
    /// allocated it already, so a figure that breaks a limit is kept as reported and
    /// raised as an [`EventKind::OverLimit`] event. Only the guest superuser (the agent)
    /// and the host may report; a figure above the class size is refused (`EINVAL`).
    pub fn report_usage(&mut self, cred: &Credential, path: &str, own: u64) -> Result<()> {
        if cred.owner().0 != 0 {
            return Err(Error::new(
                Errno::Eperm,
                path,
                "only the guest superuser reports use",
            ));
        }
        let id = self.resolve_partition(path)?;
        let (class, min) = (self.part(id)?.class, self.record(id)?.limits().min);
        let size = self.class(class)?.size;
        if own > size {
            return Err(Error::new(
                Errno::Einval,
                path,
                format!("reported use {own} is more than the class holds ({size})"),
            ));
        }
        if self.set_own_min(id, own, min, Mode::Checked).is_ok() {
            return Ok(());
        }
        self.set_own_min(id, own, min, Mode::Forced)?;
        let mut at = Some(id);
        while let Some(qid) = at {
            let r = *self.record(qid)?;
            let q = part_in(&mut self.parts, qid)?;
            let (used, limit) = (r.used(), r.limit());
            if used > limit {
                notify(
                    &q.subscribers,
                    &mut self.subs,
                    EventKind::OverLimit { used, limit },
                );
            }
            at = q.parent;
        }
        Ok(())
    }

    /// Sets a one-way policy. Setting one that is set is a no-op; under a config lock
    /// only `terminal` may still be set.
    pub fn set_policy(&mut self, cred: &Credential, path: &str, policy: Policy) -> Result<()> {
        let id = self.resolve_partition(path)?;
        let p = part_in(&mut self.parts, id)?;
        if !p.perm.allows(cred, Access::Write) {
            return Err(Error::new(Errno::Eacces, path, "no write permission"));
        }
        if p.policies.get(policy) {
            return Ok(());
        }
        if p.policies.config_lock && policy != Policy::Terminal {
            return Err(Error::new(
                Errno::Eperm,
                path,
                "the configuration is locked",
            ));
        }
        p.policies.set(policy);
        notify(&p.subscribers, &mut self.subs, EventKind::ConfigChanged);
        Ok(())
    }

    /// Clears a policy: allowed only when it is not set (policies are one-way).
    pub fn clear_policy(&mut self, cred: &Credential, path: &str, policy: Policy) -> Result<()> {
        let id = self.resolve_partition(path)?;
        let p = self.part(id)?;
        if !p.perm.allows(cred, Access::Write) {
            return Err(Error::new(Errno::Eacces, path, "no write permission"));
        }
        if p.policies.get(policy) {
            return Err(Error::new(
                Errno::Eperm,
                path,
                format!("{policy:?} is set and policies are one-way"),
            ));
        }
        Ok(())
    }

    /// Changes the mode bits of a class, partition or group.
    pub fn chmod(&mut self, cred: &Credential, path: &str, mode: u32) -> Result<()> {
        if mode & !MODE_MASK != 0 {
            return Err(Error::new(
                Errno::Einval,
                path,
                format!("mode {mode:o} has bits above 0777"),
            ));
        }
        self.change_perm(cred, path, |perm| perm.mode = mode)
    }

    /// Changes the owner and group of a class, partition or group.
    pub fn chown(&mut self, cred: &Credential, path: &str, uid: u32, gid: u32) -> Result<()> {
        self.change_perm(cred, path, |perm| {
            perm.uid = uid;
            perm.gid = gid;
        })
    }

    /// The owner, group and mode of the class, group or partition at `path` (like
    /// `stat`, it needs no read permission); `/partition/mem` has its own.
    pub fn stat(&self, path: &str) -> Result<Perm> {
        match self.resolve(path)? {
            Node::Mem => Ok(MEM_PERM),
            Node::Class(c) => Ok(self.class(c)?.perm),
            Node::Group(g) => self
                .groups
                .get(&g)
                .map(|g| g.perm)
                .ok_or_else(|| Error::new(Errno::Enoent, path, "no such group")),
            Node::Partition(id) => Ok(self.part(id)?.perm),
            Node::Process(..) | Node::Pseudo { .. } => Err(Error::new(
                Errno::Einval,
                path,
                "only classes, partitions and groups have permissions",
            )),
        }
    }

    fn change_perm(
        &mut self,
        cred: &Credential,
        path: &str,
        change: impl FnOnce(&mut Perm),
    ) -> Result<()> {
        let perm = match self.resolve(path)? {
            Node::Class(c) => self.classes.get_mut(c.0 as usize).map(|c| &mut c.perm),
            Node::Group(g) => self.groups.get_mut(&g).map(|g| &mut g.perm),
            Node::Partition(_) => {
                let id = self.writable_partition(cred, path)?;
                let p = part_in(&mut self.parts, id)?;
                change(&mut p.perm);
                notify(&p.subscribers, &mut self.subs, EventKind::ConfigChanged);
                return Ok(());
            }
            _ => None,
        };
        let perm = perm.ok_or_else(|| {
            Error::new(
                Errno::Einval,
                path,
                "only classes, partitions and groups have permissions",
            )
        })?;
        if !perm.allows(cred, Access::Write) {
            return Err(Error::new(Errno::Eacces, path, "no write permission"));
        }
        change(perm);
        Ok(())
    }

    /// Metrics of the real partition at `path` (read permission).
    pub fn metrics(&self, cred: &Credential, path: &str) -> Result<PartitionMetrics> {
        let id = self.resolve_partition(path)?;
        let p = self.part(id)?;
        if !p.perm.allows(cred, Access::Read) {
            return Err(Error::new(Errno::Eacces, path, "no read permission"));
        }
        self.partition_metrics(id)
    }

    /// Metrics of a partition by id, without a permission check (for the VMM itself).
    pub fn partition_metrics(&self, id: PartId) -> Result<PartitionMetrics> {
        let p = self.part(id)?;
        let r = self.record(id)?;
        Ok(PartitionMetrics {
            path: self.path_of(id)?,
            class: self.class_name(p.class).to_string(),
            kind: r.limits().kind(),
            current: PartitionConfig {
                limits: r.limits(),
                policies: p.policies,
                perm: p.perm,
            },
            created: p.created,
            pending_max: r.pending_max(),
            own: r.own(),
            used: r.used(),
            charge: r.charge(),
            highest: r.highest(),
            reserved_unused: r.limits().min.saturating_sub(r.used()),
            processes: p.processes.iter().copied().collect(),
            objects: p.objects,
            children: p.children.keys().cloned().collect(),
            zone: self.zone_of(id).map(|spec| ZoneMetrics {
                spec,
                plugged: 0,
                host_resident: 0,
            }),
        })
    }

    /// Metrics of the class at `path` (read permission on the class).
    pub fn class_metrics(&self, cred: &Credential, path: &str) -> Result<ClassMetrics> {
        let Node::Class(id) = self.resolve(path)? else {
            return Err(Error::new(Errno::Einval, path, "not a class"));
        };
        let c = self.class(id)?;
        if !c.perm.allows(cred, Access::Read) {
            return Err(Error::new(Errno::Eacces, path, "no read permission"));
        }
        self.class_figures(id)
    }

    /// Metrics of a class by id, without a permission check.
    pub fn class_figures(&self, id: ClassId) -> Result<ClassMetrics> {
        let c = self.class(id)?;
        Ok(ClassMetrics {
            name: c.name.to_string(),
            size: c.size,
            unit: c.unit,
            allocated: c.allocated,
            reserved_unused: c.roots_charge.saturating_sub(c.allocated),
            free: c.size.saturating_sub(c.roots_charge),
            highest_allocated: c.highest_allocated,
            roots: c.roots.keys().cloned().collect(),
            perm: c.perm,
        })
    }

    /// Resets the highest size of a partition or class to its current size; returns the old one.
    pub fn reset_highest(&mut self, cred: &Credential, path: &str) -> Result<u64> {
        match self.resolve(path)? {
            Node::Partition(id) => {
                if !self.part(id)?.perm.allows(cred, Access::Write) {
                    return Err(Error::new(Errno::Eacces, path, "no write permission"));
                }
                Ok(self.record_mut(id)?.reset_highest())
            }
            Node::Class(id) => {
                let c = self
                    .classes
                    .get_mut(id.0 as usize)
                    .ok_or_else(|| Error::new(Errno::Enoent, path, "no such class"))?;
                if !c.perm.allows(cred, Access::Write) {
                    return Err(Error::new(Errno::Eacces, path, "no write permission"));
                }
                let old = std::mem::replace(&mut c.highest_allocated, c.allocated);
                c.refresh_alert();
                Ok(old)
            }
            _ => Err(Error::new(
                Errno::Einval,
                path,
                "only real partitions and classes have metrics",
            )),
        }
    }

    /// Changes a class's size (sysram shrinks while the balloon holds memory).
    /// Fails with `EBUSY` when reservations and allocations would no longer fit.
    pub fn set_class_size(&mut self, class: ClassId, size: u64) -> Result<()> {
        let path = self.class_path(class);
        let c = self
            .classes
            .get_mut(class.0 as usize)
            .ok_or_else(|| Error::new(Errno::Enoent, &path, "no such class"))?;
        if size == 0 || size % c.unit != 0 {
            return Err(Error::new(
                Errno::Einval,
                path,
                format!(
                    "size {size} is not a positive multiple of the unit {}",
                    c.unit
                ),
            ));
        }
        if size < c.roots_charge {
            return Err(Error::new(
                Errno::Ebusy,
                path,
                format!("{} bytes are reserved or allocated", c.roots_charge),
            ));
        }
        if c.size != size {
            c.size = size;
            notify(&c.subscribers, &mut self.subs, EventKind::ConfigChanged);
        }
        Ok(())
    }

    /// Reports a guest access to class memory that was not granted, to the class's subscribers.
    pub fn report_violation(&mut self, class: ClassId, gpa: u64) -> Result<()> {
        let c = self.classes.get(class.0 as usize).ok_or_else(|| {
            Error::new(
                Errno::Enoent,
                format!("class #{}", class.0),
                "no such class",
            )
        })?;
        notify(&c.subscribers, &mut self.subs, EventKind::Violation { gpa });
        Ok(())
    }

    /// Tells the accounting whether a partition or class has subscribers, after its
    /// list changed.
    pub(crate) fn refresh_subscribed(&mut self, target: Target) {
        match target {
            Target::Partition(id) => {
                let subscribed = self.part(id).is_ok_and(|p| !p.subscribers.is_empty());
                if let Ok(r) = self.record_mut(id) {
                    r.set_subscribed(subscribed);
                }
            }
            Target::Class(id) => {
                if let Some(c) = self.classes.get_mut(id.0 as usize) {
                    c.refresh_alert();
                }
            }
        }
    }

    /// Subscribers of a target (for the events module).
    pub(crate) fn target_subscribers(&mut self, target: Target) -> Option<&mut Vec<SubId>> {
        match target {
            Target::Partition(id) => self.parts.get_mut(id.0).map(|p| &mut p.subscribers),
            Target::Class(c) => self
                .classes
                .get_mut(c.0 as usize)
                .map(|c| &mut c.subscribers),
        }
    }
}

#[cold]
fn no_partition(id: PartId) -> Error {
    Error::new(Errno::Enoent, format!("{id:?}"), "no such partition")
}

/// The partition `id` in `parts`, mutably (a free function so other fields stay borrowable).
fn part_in(parts: &mut Slab<Partition>, id: PartId) -> Result<&mut Partition> {
    parts.get_mut(id.0).ok_or_else(|| no_partition(id))
}

/// Offers `kind` to each listed subscription.
pub(crate) fn notify(ids: &[SubId], subs: &mut Slab<Subscription>, kind: EventKind) {
    for s in ids {
        if let Some(sub) = subs.get_mut(s.0) {
            sub.offer(kind);
        }
    }
}
