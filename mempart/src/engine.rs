//! The engine: one authoritative partition tree per VM, its exact accounting and its management.

use std::collections::BTreeMap;

use crate::class::{Class, ClassId, ClassMetrics, ClassSpec, SYSRAM, SYS_PARTITION};
use crate::error::{Errno, Error, Result};
use crate::events::{EventKind, Subscription, Target};
use crate::name::{check_name, check_partition_name, components, MEM_ROOT};
use crate::namespace::{Group, Node};
use crate::partition::{
    Limits, NewPartition, PartId, Partition, PartitionMetrics, SetOutcome, UNLIMITED,
};
use crate::process::{Pid, Process, SharedObject};
use crate::security::{Access, Credential, Perm, Policies, Policy, MODE_MASK};
use crate::slab::Slab;

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
    pub(crate) groups: BTreeMap<String, Group>,
    pub(crate) procs: BTreeMap<Pid, Process>,
    pub(crate) objects: BTreeMap<String, SharedObject>,
    pub(crate) subs: Slab<Subscription>,
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
            groups: BTreeMap::new(),
            procs: BTreeMap::new(),
            objects: BTreeMap::new(),
            subs: Slab::default(),
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
        self.classes.push(Class {
            name: spec.name.clone(),
            size: spec.size,
            unit: spec.unit,
            perm: Perm::new(0, 0, 0o755),
            roots: BTreeMap::new(),
            roots_charge: 0,
            allocated: 0,
            highest_allocated: 0,
            subscribers: Vec::new(),
        });
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
            .position(|c| c.name == name)
            .and_then(|i| u32::try_from(i).ok())
            .map(ClassId)
    }

    /// Names of all classes, in the order they were added.
    pub fn class_names(&self) -> Vec<String> {
        self.classes.iter().map(|c| c.name.clone()).collect()
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
            .map(|c| c.name.as_str())
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

    /// Sets a partition's own bytes and minimum, or (with [`Step::Check`]) only checks
    /// that doing so keeps every invariant. O(depth), no heap allocation unless it fails.
    pub(crate) fn set_own_min(
        &mut self,
        id: PartId,
        new_own: u64,
        new_min: u64,
        step: Step,
    ) -> Result<()> {
        let Some(p) = self.parts.get_mut(id.0) else {
            return Err(no_partition(id));
        };
        let old_used = p.used();
        let old_charge = p.charge();
        let Some(new_used) = new_own.checked_add(p.children_charge) else {
            return Err(self.too_big(id));
        };
        if step.checks() && new_used > old_used && new_used > p.limit() {
            let limit = p.limit();
            return Err(self.over_max(id, new_used, limit));
        }
        let delta = Delta::between(old_charge, new_min.max(new_used));
        let (class, parent, old_own) = (p.class, p.parent, p.own);
        if step.commits() {
            p.own = new_own;
            p.limits.min = new_min;
            after_used_change(p, &mut self.subs, old_used, new_used);
            if old_own != new_own {
                if let Some(c) = self.classes.get_mut(class.0 as usize) {
                    let old_allocated = c.allocated;
                    c.allocated = old_allocated
                        .saturating_sub(old_own)
                        .saturating_add(new_own);
                    c.highest_allocated = c.highest_allocated.max(c.allocated);
                    for s in &c.subscribers {
                        if let Some(sub) = self.subs.get_mut(s.0) {
                            sub.size_changed(old_allocated, c.allocated);
                        }
                    }
                }
            }
        }
        self.propagate(class, parent, delta, step)
    }

    /// Carries a change of a child's charge up from `parent` to the class, checking
    /// (and unless [`Step::Check`], applying) it at every level. Stops where a charge stops changing.
    pub(crate) fn propagate(
        &mut self,
        class: ClassId,
        mut parent: Option<PartId>,
        mut delta: Delta,
        step: Step,
    ) -> Result<()> {
        while delta.amount != 0 {
            let Some(qid) = parent else {
                return self.charge_class(class, delta, step);
            };
            let Some(q) = self.parts.get_mut(qid.0) else {
                return Err(no_partition(qid));
            };
            let old_used = q.used();
            let old_charge = q.charge();
            let Some(new_used) = delta
                .apply(q.children_charge)
                .and_then(|cc| cc.checked_add(q.own))
            else {
                return Err(self.too_big(qid));
            };
            if step.checks() && delta.up && new_used > q.limit() {
                let limit = q.limit();
                return Err(self.over_max(qid, new_used, limit));
            }
            let next = Delta::between(old_charge, q.limits.min.max(new_used));
            parent = q.parent;
            if step.commits() {
                q.children_charge = new_used - q.own;
                after_used_change(q, &mut self.subs, old_used, new_used);
            }
            delta = next;
        }
        Ok(())
    }

    /// The last step of [`Engine::propagate`]: a root's charge change against the class size.
    fn charge_class(&mut self, class: ClassId, delta: Delta, step: Step) -> Result<()> {
        let Some(c) = self.classes.get_mut(class.0 as usize) else {
            return Err(Error::new(
                Errno::Enoent,
                format!("class #{}", class.0),
                "no such class",
            ));
        };
        let new = delta
            .apply(c.roots_charge)
            .filter(|n| !step.checks() || !delta.up || *n <= c.size);
        let Some(new) = new else {
            return Err(Error::new(
                Errno::Enomem,
                format!("{MEM_ROOT}/{}", c.name),
                format!(
                    "needs {} more bytes, {} are free in the class",
                    delta.amount,
                    c.size.saturating_sub(c.roots_charge)
                ),
            ));
        };
        if step.commits() {
            c.roots_charge = new;
        }
        Ok(())
    }

    #[cold]
    fn over_max(&self, id: PartId, used: u64, limit: u64) -> Error {
        Error::new(
            Errno::Enomem,
            self.display_path(id),
            format!("use would reach {used}, above its max {limit}"),
        )
    }

    #[cold]
    fn too_big(&self, id: PartId) -> Error {
        Error::new(
            Errno::Enomem,
            self.display_path(id),
            "size overflows 64 bits",
        )
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
        let (uid, gid) = cred.owner();
        self.insert_partition(parent, name, spec.limits, Perm::new(uid, gid, spec.mode))
            .map(Node::Partition)
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
        if self.parts.len() >= MAX_PARTITIONS {
            return Err(Error::new(
                Errno::Enomem,
                name,
                format!("at most {MAX_PARTITIONS} partitions"),
            ));
        }
        self.propagate(class, parent_id, Delta::up(limits.min), Step::Check)?;
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
            limits,
            pending_max: None,
            created: config,
            policies: Policies::default(),
            perm,
            own: 0,
            children_charge: 0,
            highest: 0,
            processes: Default::default(),
            objects: 0,
            pseudo_refs: 0,
            subscribers: Vec::new(),
        }));
        self.propagate(class, parent_id, Delta::up(limits.min), Step::Commit)?;
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
        if !p.processes.is_empty() || p.objects > 0 || p.own > 0 {
            return Err(Error::new(
                Errno::Ebusy,
                path,
                format!(
                    "{} processes, {} objects and {} bytes are still associated",
                    p.processes.len(),
                    p.objects,
                    p.own
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
        let (class, parent, name, charge) = (p.class, p.parent, p.name.clone(), p.charge());
        self.propagate(class, parent, Delta::down(charge), Step::Commit)?;
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
        let p = self.part(id)?;
        let new = Limits {
            min: min.unwrap_or(p.limits.min),
            max: max.unwrap_or(p.limits.max),
        };
        let (own, used, class, old) = (p.own, p.used(), p.class, (p.limits, p.pending_max));
        self.check_limits(class, new, path)?;
        if new.max < used && !reclaim {
            return Err(Error::new(
                Errno::Ebusy,
                path,
                format!("max {} is below use {used}; ask for reclaim", new.max),
            ));
        }
        self.set_own_min(id, own, new.min, Step::Check)
            .map_err(|e| Error::new(e.errno, path, e.reason))?;
        self.set_own_min(id, own, new.min, Step::Commit)?;
        let p = part_in(&mut self.parts, id)?;
        let outcome = if new.max >= used {
            p.limits.max = new.max;
            p.pending_max = None;
            SetOutcome::Applied
        } else {
            p.pending_max = Some(new.max);
            SetOutcome::ReclaimPending {
                excess: used - new.max,
            }
        };
        if (p.limits, p.pending_max) != old {
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
        let p = part_in(&mut self.parts, id)?;
        let withdrawn = p.pending_max.take();
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
        let p = self.part(id)?;
        let (class, min) = (p.class, p.limits.min);
        let size = self.class(class)?.size;
        if own > size {
            return Err(Error::new(
                Errno::Einval,
                path,
                format!("reported use {own} is more than the class holds ({size})"),
            ));
        }
        if self.set_own_min(id, own, min, Step::Check).is_ok() {
            return self.set_own_min(id, own, min, Step::Commit);
        }
        self.set_own_min(id, own, min, Step::Force)?;
        let mut at = Some(id);
        while let Some(qid) = at {
            let q = part_in(&mut self.parts, qid)?;
            let (used, limit) = (q.used(), q.limit());
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
        Ok(PartitionMetrics {
            path: self.path_of(id)?,
            class: self.class_name(p.class).to_string(),
            kind: p.limits.kind(),
            current: p.config(),
            created: p.created,
            pending_max: p.pending_max,
            own: p.own,
            used: p.used(),
            charge: p.charge(),
            highest: p.highest,
            reserved_unused: p.limits.min.saturating_sub(p.used()),
            processes: p.processes.iter().copied().collect(),
            objects: p.objects,
            children: p.children.keys().cloned().collect(),
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
            name: c.name.clone(),
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
                let p = self.part_mut(id)?;
                if !p.perm.allows(cred, Access::Write) {
                    return Err(Error::new(Errno::Eacces, path, "no write permission"));
                }
                let used = p.used();
                Ok(std::mem::replace(&mut p.highest, used))
            }
            Node::Class(id) => {
                let c = self
                    .classes
                    .get_mut(id.0 as usize)
                    .ok_or_else(|| Error::new(Errno::Enoent, path, "no such class"))?;
                if !c.perm.allows(cred, Access::Write) {
                    return Err(Error::new(Errno::Eacces, path, "no write permission"));
                }
                Ok(std::mem::replace(&mut c.highest_allocated, c.allocated))
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

    /// Subscribers of a target (for the events module).
    pub(crate) fn target_subscribers(
        &mut self,
        target: Target,
    ) -> Option<&mut Vec<crate::events::SubId>> {
        match target {
            Target::Partition(id) => self.parts.get_mut(id.0).map(|p| &mut p.subscribers),
            Target::Class(c) => self
                .classes
                .get_mut(c.0 as usize)
                .map(|c| &mut c.subscribers),
        }
    }
}

/// How far an accounting walk goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Check every invariant, change nothing.
    Check,
    /// Apply a change that was checked.
    Commit,
    /// Apply a reported figure whatever the limits say (overflow still fails).
    Force,
}

impl Step {
    fn checks(self) -> bool {
        self != Step::Force
    }

    fn commits(self) -> bool {
        self != Step::Check
    }
}

/// A change of a charge: `amount` bytes up or down.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Delta {
    up: bool,
    amount: u64,
}

impl Delta {
    fn up(amount: u64) -> Delta {
        Delta { up: true, amount }
    }

    fn down(amount: u64) -> Delta {
        Delta { up: false, amount }
    }

    fn between(old: u64, new: u64) -> Delta {
        if new >= old {
            Delta::up(new - old)
        } else {
            Delta::down(old - new)
        }
    }

    fn apply(self, value: u64) -> Option<u64> {
        if self.up {
            value.checked_add(self.amount)
        } else {
            value.checked_sub(self.amount)
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

/// Records a change of a partition's use: highest size, pending max, size events.
fn after_used_change(p: &mut Partition, subs: &mut Slab<Subscription>, old: u64, new: u64) {
    if old == new {
        return;
    }
    p.highest = p.highest.max(new);
    for s in &p.subscribers {
        if let Some(sub) = subs.get_mut(s.0) {
            sub.size_changed(old, new);
        }
    }
    if let Some(pending) = p.pending_max {
        if new <= pending {
            p.limits.max = pending;
            p.pending_max = None;
            notify(&p.subscribers, subs, EventKind::ConfigChanged);
        }
    }
}

/// Offers `kind` to each listed subscription.
pub(crate) fn notify(ids: &[crate::events::SubId], subs: &mut Slab<Subscription>, kind: EventKind) {
    for s in ids {
        if let Some(sub) = subs.get_mut(s.0) {
            sub.offer(kind);
        }
    }
}
