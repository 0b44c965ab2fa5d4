//! The engine's side of processes: registration, inheritance, associations, allocation on
//! their behalf, exit.

use smallvec::SmallVec;

use super::{notify, Engine};
use crate::class::SYSRAM;
use crate::error::{Errno, Error, Result};
use crate::events::EventKind;
use crate::ids::{ClassId, ObjectId, PartId, Pid};
use crate::ledger::{Delta, Mode, Refusal};
use crate::pids::PID_LIMIT;
use crate::process::{
    no_process, pid_subject, Assoc, Association, Grant, Process, Spawn, MAX_PROCESSES,
};
use crate::security::Credential;

impl Engine {
    pub(crate) fn process(&self, pid: Pid) -> Result<&Process> {
        self.procs.get(pid).ok_or_else(|| no_process(pid))
    }

    fn sysram_sys(&self) -> Result<PartId> {
        let class = self
            .class_id(SYSRAM)
            .ok_or_else(|| Error::new(Errno::Enoent, SYSRAM, "no sysram class"))?;
        self.sys_partition(class)
    }

    /// Registers process `pid` with identity `cred`, created by `parent` (none for the
    /// first), as [`Engine::register`] with `cred` as both registrar and owner.
    pub fn process_start(
        &mut self,
        cred: &Credential,
        pid: Pid,
        parent: Option<Pid>,
        spawn: &Spawn,
    ) -> Result<()> {
        self.register(cred, cred, pid, parent, spawn)
    }

    /// `registrar` registers process `pid`, owned by `owner`, created by `parent`. Like an
    /// association, inheritance is checked: the registrar must control both the owner and
    /// the parent (`EPERM`), and the child gets only what the parent holds or, under
    /// `SETMPART` with names, what the owner may execute. A pid no Linux guest can have
    /// (at or above [`PID_LIMIT`]) is refused with `EINVAL`. Nothing changes on a refusal.
    pub fn register(
        &mut self,
        registrar: &Credential,
        owner: &Credential,
        pid: Pid,
        parent: Option<Pid>,
        spawn: &Spawn,
    ) -> Result<()> {
        if pid >= PID_LIMIT {
            return Err(Error::new(
                Errno::Einval,
                pid_subject(pid),
                format!("pids are below {PID_LIMIT}"),
            ));
        }
        let owner_allowed = match (registrar, owner) {
            (Credential::Host, _) => true,
            (_, Credential::Host) => false,
            (_, Credential::Guest { uid, .. }) => registrar.controls_uid(*uid),
        };
        if !owner_allowed {
            return Err(Error::new(
                Errno::Eperm,
                pid_subject(pid),
                "a process is registered for its own user only",
            ));
        }
        if self.procs.contains_key(pid) {
            return Err(Error::new(
                Errno::Eexist,
                pid_subject(pid),
                "already tracked",
            ));
        }
        let uid = owner.owner().0;
        crate::quota::admit(
            "processes",
            &pid_subject(pid),
            MAX_PROCESSES,
            self.procs.len(),
            uid,
            || {
                self.procs
                    .values()
                    .filter(|p| p.cred.owner().0 == uid)
                    .count()
            },
        )?;
        let parent = parent
            .map(|p| self.controlled_process(registrar, p))
            .transpose()?;
        let assocs = self.spawn_associations(owner, parent, spawn)?;
        let members: Vec<PartId> = assocs.iter().map(|a| a.part).collect();
        let process = Process {
            cred: owner.clone(),
            assocs,
            retained: Vec::new(),
            mapped: Vec::new(),
        };
        // The pid is below the limit and not tracked yet (both checked above).
        if self.procs.insert(pid, process).is_err() {
            return Err(Error::new(
                Errno::Eexist,
                pid_subject(pid),
                "already tracked",
            ));
        }
        for part in members {
            self.add_member(part, pid);
        }
        Ok(())
    }

    /// The associations a process owned by `owner` starts with when `parent` (if any)
    /// creates it as `spawn` says: one per class, sysram's `sys` when no other sysram
    /// partition is named or inherited.
    fn spawn_associations(
        &self,
        owner: &Credential,
        parent: Option<&Process>,
        spawn: &Spawn,
    ) -> Result<SmallVec<[Assoc; 2]>> {
        let sysram = self.class_id(SYSRAM);
        let mut targets: Vec<PartId> = Vec::new();
        match (spawn, parent) {
            (Spawn::SetMpart(names), _) if !names.is_empty() => {
                for name in names {
                    targets.extend(self.association_targets(owner, name)?);
                }
            }
            (Spawn::SetMpart(_), Some(parent)) => targets.extend(
                parent
                    .assocs
                    .iter()
                    .filter(|a| Some(a.class) == sysram && !a.no_inherit)
                    .map(|a| a.part),
            ),
            (Spawn::Inherit, Some(parent)) => targets.extend(
                parent
                    .assocs
                    .iter()
                    .filter(|a| !a.no_inherit)
                    .map(|a| a.part),
            ),
            (_, None) => {}
        }
        self.one_per_class(targets)
    }

    /// Associations with `targets` (an error for two of one class), plus sysram's `sys`
    /// when none of them is a sysram partition.
    fn one_per_class(&self, targets: Vec<PartId>) -> Result<SmallVec<[Assoc; 2]>> {
        let sysram = self.class_id(SYSRAM);
        let mut assocs: SmallVec<[Assoc; 2]> = SmallVec::with_capacity(targets.len() + 1);
        for id in targets {
            let class = self.part(id)?.class;
            if let Some(other) = assocs.iter().find(|a| a.class == class) {
                if other.part == id {
                    continue;
                }
                return Err(Error::new(
                    Errno::Einval,
                    self.path_of(id)?,
                    format!(
                        "a process has at most one partition of class {}",
                        self.class_name(class)
                    ),
                ));
            }
            assocs.push(Assoc {
                part: id,
                class,
                no_inherit: false,
                charged: 0,
            });
        }
        if !assocs.iter().any(|a| Some(a.class) == sysram) {
            let sys = self.sysram_sys()?;
            assocs.push(Assoc {
                part: sys,
                class: self.part(sys)?.class,
                no_inherit: false,
                charged: 0,
            });
        }
        Ok(assocs)
    }

    fn add_member(&mut self, part: PartId, pid: Pid) {
        if let Some(p) = self.parts.get_mut(part.0) {
            p.processes.insert(pid);
            notify(
                &p.subscribers,
                &mut self.subs,
                EventKind::ProcessAssociated { pid },
            );
        }
    }

    fn remove_member(&mut self, part: PartId, pid: Pid) {
        if let Some(p) = self.parts.get_mut(part.0) {
            p.processes.remove(&pid);
            notify(
                &p.subscribers,
                &mut self.subs,
                EventKind::ProcessDisassociated { pid },
            );
        }
    }

    /// Whether `cred` may act for process `pid` (allocate or free on its behalf):
    /// `ESRCH` for an unknown process, `EPERM` for another user's.
    pub fn may_act_for(&self, cred: &Credential, pid: Pid) -> Result<()> {
        self.controlled_process(cred, pid).map(|_| ())
    }

    fn controlled_process(&self, cred: &Credential, pid: Pid) -> Result<&Process> {
        let proc = self.process(pid)?;
        let (uid, _) = proc.cred.owner();
        if !cred.controls_uid(uid) {
            return Err(Error::new(
                Errno::Eperm,
                pid_subject(pid),
                "the process belongs to another user",
            ));
        }
        Ok(proc)
    }

    /// Replaces every association of `pid` as a spawn with `SETMPART` and `names` sets
    /// them (`mpctl run --only` before its exec): exactly the named partitions and groups,
    /// each needing execute permission, or with no names only its sysram association.
    /// Charges in partitions it leaves stay there until freed or until it exits; nothing
    /// changes on a refusal.
    pub fn replace_associations(
        &mut self,
        cred: &Credential,
        pid: Pid,
        names: &[String],
    ) -> Result<()> {
        let proc = self.controlled_process(cred, pid)?;
        let targets = if names.is_empty() {
            let sysram = self.class_id(SYSRAM);
            proc.assocs
                .iter()
                .filter(|a| Some(a.class) == sysram)
                .map(|a| a.part)
                .collect()
        } else {
            let mut targets = Vec::new();
            for name in names {
                targets.extend(self.association_targets(cred, name)?);
            }
            targets
        };
        let mut fresh = self.one_per_class(targets)?;
        let Some(proc) = self.procs.get_mut(pid) else {
            return Err(no_process(pid));
        };
        let old = std::mem::take(&mut proc.assocs);
        let joined: Vec<PartId> = fresh
            .iter()
            .map(|f| f.part)
            .filter(|p| !old.iter().any(|a| a.part == *p))
            .collect();
        let mut left = Vec::new();
        for a in old {
            match fresh.iter_mut().find(|f| f.part == a.part) {
                Some(kept) => *kept = a,
                None => {
                    if a.charged > 0 {
                        retain(&mut proc.retained, a.part, a.charged);
                    }
                    left.push(a.part);
                }
            }
        }
        proc.assocs = fresh;
        for part in left {
            self.remove_member(part, pid);
        }
        for part in joined {
            self.add_member(part, pid);
        }
        Ok(())
    }

    /// Associates process `pid` with the partition, pseudo partition or group at `path`,
    /// replacing its association of the same class. Charges made in a replaced partition
    /// stay there until freed or until the process exits.
    pub fn associate(&mut self, cred: &Credential, pid: Pid, path: &str) -> Result<()> {
        self.controlled_process(cred, pid)?;
        let targets = self.association_targets(cred, path)?;
        let mut classes = Vec::with_capacity(targets.len());
        for &id in &targets {
            classes.push(self.part(id)?.class);
        }
        for (id, class) in targets.into_iter().zip(classes) {
            let Some(proc) = self.procs.get_mut(pid) else {
                break;
            };
            let old = match proc.assocs.iter_mut().find(|a| a.class == class) {
                Some(a) if a.part == id => continue,
                Some(a) => {
                    let old = (a.part, a.charged);
                    *a = Assoc {
                        part: id,
                        class,
                        no_inherit: false,
                        charged: 0,
                    };
                    Some(old)
                }
                None => {
                    proc.assocs.push(Assoc {
                        part: id,
                        class,
                        no_inherit: false,
                        charged: 0,
                    });
                    None
                }
            };
            if let Some((old_part, charged)) = old {
                if charged > 0 {
                    retain(&mut proc.retained, old_part, charged);
                }
                self.remove_member(old_part, pid);
            }
            self.add_member(id, pid);
        }
        Ok(())
    }

    /// Ends the association of `pid` with the partition at `path` (or each member of a group).
    /// The sysram association cannot be ended, only replaced.
    pub fn disassociate(&mut self, cred: &Credential, pid: Pid, path: &str) -> Result<()> {
        let proc = self.controlled_process(cred, pid)?;
        let targets = match self.resolve(path)? {
            crate::namespace::Node::Group(name) => self
                .groups
                .get(&name)
                .map(|g| g.members.values().copied().collect())
                .unwrap_or_default(),
            _ => vec![self.resolve_partition(path)?],
        };
        let sysram = self.class_id(SYSRAM);
        for id in &targets {
            let a = proc.assocs.iter().find(|a| a.part == *id).ok_or_else(|| {
                Error::new(Errno::Enoent, path, format!("pid {pid} is not associated"))
            })?;
            if Some(a.class) == sysram {
                return Err(Error::new(
                    Errno::Einval,
                    path,
                    "a process keeps one sysram partition: associate with another instead",
                ));
            }
        }
        for id in targets {
            if let Some(proc) = self.procs.get_mut(pid) {
                if let Some(i) = proc.assocs.iter().position(|a| a.part == id) {
                    let a = proc.assocs.swap_remove(i);
                    if a.charged > 0 {
                        retain(&mut proc.retained, a.part, a.charged);
                    }
                }
            }
            self.remove_member(id, pid);
        }
        Ok(())
    }

    /// Sets or clears `NO_INHERIT` on the association of `pid` with the partition at `path`.
    pub fn set_no_inherit(
        &mut self,
        cred: &Credential,
        pid: Pid,
        path: &str,
        no_inherit: bool,
    ) -> Result<()> {
        self.controlled_process(cred, pid)?;
        let id = self.resolve_partition(path)?;
        let a = self
            .procs
            .get_mut(pid)
            .and_then(|p| p.assocs.iter_mut().find(|a| a.part == id))
            .ok_or_else(|| {
                Error::new(Errno::Enoent, path, format!("pid {pid} is not associated"))
            })?;
        a.no_inherit = no_inherit;
        Ok(())
    }

    /// The per-process view: every partition `pid` is associated with.
    pub fn process_partitions(&self, pid: Pid) -> Result<Vec<Association>> {
        self.process(pid)?
            .assocs
            .iter()
            .map(|a| {
                Ok(Association {
                    partition: a.part,
                    path: self.path_of(a.part)?,
                    class: self.class_name(a.class).to_string(),
                    no_inherit: a.no_inherit,
                    charged: a.charged,
                })
            })
            .collect()
    }

    /// Charges a process has left behind in partitions it no longer belongs to.
    pub fn retained_charges(&self, pid: Pid) -> Result<Vec<Grant>> {
        Ok(self
            .process(pid)?
            .retained
            .iter()
            .map(|&(partition, bytes)| Grant { partition, bytes })
            .collect())
    }

    /// Every tracked process id.
    pub fn pids(&self) -> Vec<Pid> {
        let mut pids: Vec<Pid> = self.procs.pids().collect();
        pids.sort_unstable();
        pids
    }

    /// Allocates `bytes` of `class` for `pid`, charged to its partition of that class.
    /// Succeeds iff every invariant still holds; otherwise `ENOMEM` and nothing changes.
    /// One process lookup and one walk of the ledger; no heap allocation unless it fails.
    pub fn allocate(&mut self, pid: Pid, class: ClassId, bytes: u64) -> Result<Grant> {
        if bytes == 0 {
            return Err(not_in_units(pid, bytes, self.class(class)?.unit));
        }
        let Some(proc) = self.procs.get_mut(pid) else {
            return Err(no_process(pid));
        };
        let Some(assoc) = find_assoc(&mut proc.assocs, |a| a.class == class) else {
            return Err(self.no_partition_of(pid, class));
        };
        let part = assoc.part;
        let delta = Delta::up(bytes);
        match self.ledger.shift_own(&mut self.classes, part.0, delta) {
            Ok(eventful) => {
                assoc.charged += bytes;
                if eventful {
                    self.settle_shift(part, delta);
                }
                Ok(Grant {
                    partition: part,
                    bytes,
                })
            }
            Err(Refusal::Unaligned { unit, .. }) => Err(not_in_units(pid, bytes, unit)),
            Err(refusal) => Err(self.refusal(refusal)),
        }
    }

    /// Frees exactly what `grant` charged on behalf of `pid`.
    pub fn free(&mut self, pid: Pid, grant: Grant) -> Result<()> {
        let Some(proc) = self.procs.get_mut(pid) else {
            return Err(no_process(pid));
        };
        let (slot, left_behind) = match find_assoc(&mut proc.assocs, |a| a.part == grant.partition)
        {
            Some(a) => (&mut a.charged, false),
            None => match proc.retained.iter_mut().find(|r| r.0 == grant.partition) {
                Some(r) => (&mut r.1, true),
                None => return Err(nothing_charged(pid)),
            },
        };
        if *slot < grant.bytes || grant.bytes == 0 {
            return Err(frees_more(pid, grant.bytes, *slot));
        }
        let delta = Delta::down(grant.bytes);
        match self
            .ledger
            .shift_own(&mut self.classes, grant.partition.0, delta)
        {
            Ok(eventful) => {
                *slot -= grant.bytes;
                if left_behind && *slot == 0 {
                    proc.retained.retain(|r| r.1 > 0);
                }
                if eventful {
                    self.settle_shift(grant.partition, delta);
                }
                Ok(())
            }
            Err(Refusal::Unaligned { unit, .. }) => Err(not_in_units(pid, grant.bytes, unit)),
            Err(refusal) => Err(self.refusal(refusal)),
        }
    }

    #[cold]
    fn no_partition_of(&self, pid: Pid, class: ClassId) -> Error {
        Error::new(
            Errno::Enoent,
            pid_subject(pid),
            format!("no partition of class {}", self.class_name(class)),
        )
    }

    /// Process `pid` has exited: its private allocations are freed, it is disassociated and
    /// its mappings of shared objects end. Returns the objects that this freed (unlinked
    /// ones it was the last to map); the others stay. It completes or changes nothing:
    /// where the guest reported a partition's use below what the process was charged
    /// there, the partition's own use goes to zero rather than below it.
    pub fn process_exit(&mut self, pid: Pid) -> Result<Vec<ObjectId>> {
        let proc = self.process(pid)?;
        let releases: Vec<(PartId, u64)> = proc
            .assocs
            .iter()
            .map(|a| (a.part, a.charged))
            .chain(proc.retained.iter().copied())
            .filter(|&(_, bytes)| bytes > 0)
            .collect();
        for &(part, _) in &releases {
            self.record(part)?;
        }
        let proc = self.procs.remove(pid).ok_or_else(|| no_process(pid))?;
        for (part, bytes) in releases {
            self.release(part, bytes)?;
        }
        for a in &proc.assocs {
            self.remove_member(a.part, pid);
        }
        let mut freed = Vec::new();
        for &id in &proc.mapped {
            freed.extend(self.drop_mapper(id, pid)?);
        }
        Ok(freed)
    }

    /// Takes `bytes` of a partition's own use back, or all of it where less is left.
    /// Lowering own use breaks no invariant, so it fails only for a missing record.
    pub(crate) fn release(&mut self, part: PartId, bytes: u64) -> Result<()> {
        let r = self.record(part)?;
        let (own, min) = (r.own(), r.limits().min);
        self.set_own_min(part, own.saturating_sub(bytes), min, Mode::Checked)
    }
}

/// The first of `assocs` that `wanted` picks. Most processes have one or two
/// associations, so those two are tried without a loop.
#[inline(always)]
fn find_assoc(assocs: &mut [Assoc], wanted: impl Fn(&Assoc) -> bool) -> Option<&mut Assoc> {
    match assocs {
        [first, ..] if wanted(first) => Some(first),
        [_, second, ..] if wanted(second) => Some(second),
        [_, _, rest @ ..] => rest.iter_mut().find(|a| wanted(a)),
        _ => None,
    }
}

#[cold]
fn not_in_units(pid: Pid, bytes: u64, unit: u64) -> Error {
    Error::new(
        Errno::Einval,
        pid_subject(pid),
        format!("{bytes} is not a positive multiple of the unit {unit}"),
    )
}

#[cold]
fn nothing_charged(pid: Pid) -> Error {
    Error::new(
        Errno::Einval,
        pid_subject(pid),
        "nothing charged to that partition",
    )
}

#[cold]
fn frees_more(pid: Pid, bytes: u64, charged: u64) -> Error {
    Error::new(
        Errno::Einval,
        pid_subject(pid),
        format!("frees {bytes} bytes but {charged} are charged"),
    )
}

fn retain(retained: &mut Vec<(PartId, u64)>, part: PartId, bytes: u64) {
    match retained.iter_mut().find(|r| r.0 == part) {
        Some(r) => r.1 += bytes,
        None => retained.push((part, bytes)),
    }
}
