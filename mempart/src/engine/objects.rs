//! The engine's side of shared objects: creating, resizing, mapping, unlinking, freeing.

use super::Engine;
use crate::error::{Errno, Error, Result};
use crate::ids::{ClassId, ObjectId, Pid};
use crate::ledger::Delta;
use crate::name::check_name;
use crate::objects::{ObjectInfo, SharedObject, MAX_MAPS_PER_PROCESS, MAX_OBJECTS};
use crate::process::{no_process, pid_subject};
use crate::security::{Access, Credential};

impl Engine {
    fn object_id(&self, name: &str) -> Result<ObjectId> {
        self.objects
            .names
            .get(name)
            .copied()
            .ok_or_else(|| no_object(name))
    }

    fn stored(&self, id: ObjectId, name: &str) -> Result<&SharedObject> {
        self.objects.store.get(&id).ok_or_else(|| no_object(name))
    }

    fn info(&self, id: ObjectId, o: &SharedObject) -> Result<ObjectInfo> {
        let class = self.part(o.part)?.class;
        Ok(ObjectInfo {
            id,
            name: o.name.to_string(),
            partition: self.path_of(o.part)?,
            class: self.class_name(class).to_string(),
            size: o.size,
            owner: o.owner,
            mappers: o.mappers.len(),
            linked: o.linked,
        })
    }

    /// Creates an empty shared-memory object `name` for `pid`, charged from now on to the
    /// process's partition of `class`.
    pub fn object_create(&mut self, pid: Pid, name: &str, class: ClassId) -> Result<()> {
        check_name(name)?;
        let proc = self.process(pid)?;
        if self.objects.names.contains_key(name) {
            return Err(Error::new(Errno::Eexist, name, "object already exists"));
        }
        let uid = proc.cred.owner().0;
        crate::quota::admit(
            "objects",
            name,
            MAX_OBJECTS,
            self.objects.store.len(),
            uid,
            || {
                self.objects
                    .store
                    .values()
                    .filter(|o| o.owner == uid)
                    .count()
            },
        )?;
        let part = proc
            .assocs
            .iter()
            .find(|a| a.class == class)
            .map(|a| a.part)
            .ok_or_else(|| {
                Error::new(
                    Errno::Enoent,
                    pid_subject(pid),
                    format!("no partition of class {}", self.class_name(class)),
                )
            })?;
        self.part_mut(part)?.objects += 1;
        let id = self.objects.next;
        self.objects.next += 1;
        self.objects.names.insert(name.into(), id);
        self.objects.store.insert(
            id,
            SharedObject {
                name: name.into(),
                part,
                size: 0,
                owner: uid,
                mappers: Vec::new(),
                linked: true,
            },
        );
        Ok(())
    }

    /// Resizes object `name` (by any process): growth is charged to the object's partition.
    pub fn object_resize(&mut self, name: &str, size: u64) -> Result<()> {
        let id = self.object_id(name)?;
        let obj = self.stored(id, name)?;
        let (part, old) = (obj.part, obj.size);
        let unit = self.class(self.part(part)?.class)?.unit;
        if size % unit != 0 {
            return Err(Error::new(
                Errno::Einval,
                name,
                format!("{size} is not a multiple of the unit {unit}"),
            ));
        }
        if size > old {
            self.shift_own(part, Delta::up(size - old))?;
        } else if size < old {
            self.shift_own(part, Delta::down(old - size))?;
        }
        if let Some(obj) = self.objects.store.get_mut(&id) {
            obj.size = size;
        }
        Ok(())
    }

    /// Resizes object `name` for `cred`: its owner, the superuser, the host, or anyone with
    /// write permission on the object's partition. Growth is charged to that partition,
    /// whoever grows it.
    pub fn object_resize_as(&mut self, cred: &Credential, name: &str, size: u64) -> Result<()> {
        let obj = self.stored(self.object_id(name)?, name)?;
        let writable = self.part(obj.part)?.perm.allows(cred, Access::Write);
        if !cred.controls_uid(obj.owner) && !writable {
            return Err(Error::new(
                Errno::Eacces,
                name,
                "neither the object's owner nor allowed to write its partition",
            ));
        }
        self.object_resize(name, size)
    }

    /// The linked object `name`.
    pub fn object(&self, name: &str) -> Result<ObjectInfo> {
        let id = self.object_id(name)?;
        self.info(id, self.stored(id, name)?)
    }

    /// Removes the name `name` (its creator, the superuser or the host). The object is
    /// freed now if no process maps it, and returned; otherwise when its last mapper
    /// unmaps it or exits.
    pub fn object_unlink(&mut self, cred: &Credential, name: &str) -> Result<Option<ObjectId>> {
        let id = self.object_id(name)?;
        let obj = self.stored(id, name)?;
        if !cred.controls_uid(obj.owner) {
            return Err(Error::new(Errno::Eacces, name, "not the object's owner"));
        }
        let unmapped = obj.mappers.is_empty();
        self.objects.names.remove(name);
        if let Some(obj) = self.objects.store.get_mut(&id) {
            obj.linked = false;
        }
        if unmapped {
            self.free_object(id)?;
            return Ok(Some(id));
        }
        Ok(None)
    }

    /// Process `pid` maps object `name` (again: nothing changes). Needs the right to act
    /// for the process, and to be the object's owner or allowed to execute (associate
    /// with) its partition: mapping uses memory charged there.
    pub fn object_map(&mut self, cred: &Credential, pid: Pid, name: &str) -> Result<ObjectInfo> {
        self.may_act_for(cred, pid)?;
        let id = self.object_id(name)?;
        let obj = self.stored(id, name)?;
        let usable = self.part(obj.part)?.perm.allows(cred, Access::Execute);
        if !cred.controls_uid(obj.owner) && !usable {
            return Err(Error::new(
                Errno::Eacces,
                name,
                "neither the object's owner nor allowed to execute its partition",
            ));
        }
        let proc = self.procs.get_mut(pid).ok_or_else(|| no_process(pid))?;
        if !proc.mapped.contains(&id) {
            if proc.mapped.len() >= MAX_MAPS_PER_PROCESS {
                return Err(Error::new(
                    Errno::Enomem,
                    pid_subject(pid),
                    format!("a process maps at most {MAX_MAPS_PER_PROCESS} objects"),
                ));
            }
            proc.mapped.push(id);
            if let Some(obj) = self.objects.store.get_mut(&id) {
                obj.mappers.push(pid);
            }
        }
        self.info(id, self.stored(id, name)?)
    }

    /// Process `pid` no longer maps the object `name` (linked or unlinked since). Returns
    /// the object if that freed it.
    pub fn object_unmap(
        &mut self,
        cred: &Credential,
        pid: Pid,
        name: &str,
    ) -> Result<Option<ObjectId>> {
        self.may_act_for(cred, pid)?;
        let proc = self.process(pid)?;
        let id = proc
            .mapped
            .iter()
            .rev()
            .copied()
            .find(|id| self.objects.store.get(id).is_some_and(|o| &*o.name == name))
            .ok_or_else(|| {
                Error::new(
                    Errno::Enoent,
                    name,
                    format!("not mapped by {}", pid_subject(pid)),
                )
            })?;
        if let Some(proc) = self.procs.get_mut(pid) {
            proc.mapped.retain(|&m| m != id);
        }
        self.drop_mapper(id, pid)
    }

    /// Ends `pid`'s mapping of object `id` on the object's side; frees an unlinked object
    /// that nobody maps any more and returns it.
    pub(crate) fn drop_mapper(&mut self, id: ObjectId, pid: Pid) -> Result<Option<ObjectId>> {
        let Some(obj) = self.objects.store.get_mut(&id) else {
            return Ok(None);
        };
        obj.mappers.retain(|&m| m != pid);
        if obj.linked || !obj.mappers.is_empty() {
            return Ok(None);
        }
        self.free_object(id)?;
        Ok(Some(id))
    }

    /// Takes object `id` out of the store and its size off its partition.
    fn free_object(&mut self, id: ObjectId) -> Result<()> {
        let Some(obj) = self.objects.store.remove(&id) else {
            return Ok(());
        };
        self.release(obj.part, obj.size)?;
        let p = self.part_mut(obj.part)?;
        p.objects = p.objects.saturating_sub(1);
        Ok(())
    }

    /// Every shared object, unlinked ones still mapped included.
    pub fn objects(&self) -> Result<Vec<ObjectInfo>> {
        self.objects
            .store
            .iter()
            .map(|(&id, o)| self.info(id, o))
            .collect()
    }
}

#[cold]
fn no_object(name: &str) -> Error {
    Error::new(Errno::Enoent, name, "no such object")
}
