//! Shared objects as the service serves them: the engine's accounting, and for a typed
//! class one extent of class memory per object, granted when the object gets a size and
//! taken back when the engine frees the object.

use std::collections::HashMap;

use mempart::{Credential, Engine, Errno, ObjectId, Pid};
use protocol::{Reply, SizeChange};

use super::{lock, PartitionService};

/// The extent backing a typed object.
pub(super) struct ObjectExtent {
    class: String,
    gpa: u64,
}

/// Extents of typed objects, by object.
pub(super) type ObjectExtents = HashMap<ObjectId, ObjectExtent>;

impl PartitionService {
    /// Resizes object `name` for `caller`. A typed object's memory is one extent: a new
    /// size is a new extent (granted before the old one is taken back, so a refusal
    /// changes nothing), which is why an object that a process maps keeps its size
    /// (`EBUSY`), and why its contents do not survive a resize.
    pub(super) fn resize_object(
        &self,
        e: &mut Engine,
        caller: &Credential,
        name: &str,
        change: SizeChange,
    ) -> Result<(), mempart::Error> {
        let object = e.object(name)?;
        let old = object.size;
        let new = match change {
            SizeChange::To(to) => Some(to),
            SizeChange::Grow(by) => old.checked_add(by),
            SizeChange::Shrink(by) => old.checked_sub(by),
        }
        .ok_or_else(|| {
            mempart::Error::new(
                Errno::Einval,
                name,
                format!("{change:?} of an object of {old} bytes is out of range"),
            )
        })?;
        let Some(typed) = self.typed.get().filter(|_| object.class != mempart::SYSRAM) else {
            return e.object_resize_as(caller, name, new);
        };
        if new == old {
            // Nothing to re-grant: the permission check alone, and the extent stays.
            return e.object_resize_as(caller, name, new);
        }
        if object.mappers > 0 {
            return Err(mempart::Error::new(
                Errno::Ebusy,
                name,
                format!(
                    "{} processes map it, and a {} object is one extent: unmap it first",
                    object.mappers, object.class
                ),
            ));
        }
        e.object_resize_as(caller, name, new)?;
        let mut extents = lock(&self.object_extents);
        if new > 0 {
            match typed.grant(&object.class, new) {
                Ok(gpa) => {
                    let fresh = ObjectExtent {
                        class: object.class.clone(),
                        gpa,
                    };
                    if let Some(stale) = extents.insert(object.id, fresh) {
                        self.revoke_object_extent(object.id, &stale);
                    }
                }
                Err(why) => {
                    e.object_resize(name, old)?;
                    return Err(mempart::Error::new(
                        Errno::Enomem,
                        name,
                        format!("no extent of {new} bytes of {}: {why}", object.class),
                    ));
                }
            }
        } else if let Some(stale) = extents.remove(&object.id) {
            self.revoke_object_extent(object.id, &stale);
        }
        Ok(())
    }

    /// Process `pid` maps object `name`: the object and, for a typed object with a size,
    /// where its extent starts.
    pub(super) fn map_object(
        &self,
        e: &mut Engine,
        caller: &Credential,
        pid: Pid,
        name: &str,
    ) -> Result<Reply, mempart::Error> {
        let object = e.object_map(caller, pid, name)?;
        let gpa = lock(&self.object_extents).get(&object.id).map(|x| x.gpa);
        Ok(Reply::ObjectMapped { object, gpa })
    }

    /// Removes the name of object `name` for `caller` (the API's `DELETE /objects/{name}`
    /// and the protocol's unlink); its memory goes once no process maps it.
    pub fn unlink_object(&self, caller: &Credential, name: &str) -> Result<(), mempart::Error> {
        let freed = lock(&self.engine).object_unlink(caller, name)?;
        self.revoke_objects(freed);
        self.changed();
        Ok(())
    }

    /// Takes back the extents of objects the engine has freed.
    pub(super) fn revoke_objects(&self, freed: impl IntoIterator<Item = ObjectId>) {
        let mut extents = lock(&self.object_extents);
        for id in freed {
            if let Some(extent) = extents.remove(&id) {
                self.revoke_object_extent(id, &extent);
            }
        }
    }

    /// Takes one object extent back from the guest. One it keeps is reported: the engine
    /// no longer charges it either way.
    fn revoke_object_extent(&self, id: ObjectId, extent: &ObjectExtent) {
        if let Some(typed) = self.typed.get() {
            if let Err(why) = typed.revoke(&extent.class, extent.gpa) {
                eprintln!(
                    "mempart-vmm: the {} extent at 0x{:x} of shared object {id} stays mapped: {why}",
                    extent.class, extent.gpa
                );
            }
        }
    }
}
