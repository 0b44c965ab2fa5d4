//! The engine's side of the name space: resolving paths, listing, groups and pseudo
//! partitions.

use std::collections::BTreeMap;

use super::{Engine, MEM_PERM};
use crate::error::{Errno, Error, Result};
use crate::ids::{PartId, Pid};
use crate::name::{check_name, components, MEM_ROOT};
use crate::namespace::{DirEntry, EntryKind, Group, Node, MAX_GROUPS};
use crate::security::{Access, Credential, Perm};

impl Engine {
    /// What `path` names.
    pub fn resolve(&self, path: &str) -> Result<Node> {
        let comps = components(path)?;
        self.resolve_components(&comps, path)
    }

    pub(crate) fn resolve_components(&self, comps: &[&str], path: &str) -> Result<Node> {
        let missing = || Error::new(Errno::Enoent, path, "no such partition, class or group");
        let Some((first, rest)) = comps.split_first() else {
            return Ok(Node::Mem);
        };
        if let Some(class) = self.class_id(first) {
            let mut node = Node::Class(class);
            let mut children = &self.class(class)?.roots;
            for name in rest {
                match node {
                    Node::Process(..) => {
                        return Err(Error::new(Errno::Enotdir, path, "a process is a leaf"))
                    }
                    Node::Class(_) | Node::Partition(_) => {}
                    _ => return Err(missing()),
                }
                if let Some(&child) = children.get(*name) {
                    children = &self.part(child)?.children;
                    node = Node::Partition(child);
                    continue;
                }
                let Node::Partition(part) = node else {
                    return Err(missing());
                };
                let pid: Pid = name.parse().map_err(|_| missing())?;
                if !self.part(part)?.processes.contains(&pid) {
                    return Err(missing());
                }
                node = Node::Process(part, pid);
            }
            return Ok(node);
        }
        let group = self.groups.get(*first).ok_or_else(missing)?;
        match rest {
            [] => Ok(Node::Group((*first).to_string())),
            [name] => {
                let target = *group.members.get(*name).ok_or_else(missing)?;
                Ok(Node::Pseudo {
                    group: (*first).to_string(),
                    name: (*name).to_string(),
                    target,
                })
            }
            _ => Err(Error::new(
                Errno::Enotdir,
                path,
                "a pseudo partition is a name, not a directory",
            )),
        }
    }

    /// The real partition `path` names (a pseudo partition names its target).
    pub fn resolve_partition(&self, path: &str) -> Result<PartId> {
        match self.resolve(path)? {
            Node::Partition(id) | Node::Pseudo { target: id, .. } => Ok(id),
            _ => Err(Error::new(Errno::Einval, path, "not a real partition")),
        }
    }

    /// The real partitions `path` stands for when a process associates with it:
    /// a partition, a pseudo partition's target, or every member of a group.
    /// Checks the execute bit on the group and on every partition.
    pub(crate) fn association_targets(&self, cred: &Credential, path: &str) -> Result<Vec<PartId>> {
        let targets = match self.resolve(path)? {
            Node::Partition(id) | Node::Pseudo { target: id, .. } => vec![id],
            Node::Group(name) => {
                let g = self
                    .groups
                    .get(&name)
                    .ok_or_else(|| Error::new(Errno::Enoent, path, "no such group"))?;
                if !g.perm.allows(cred, Access::Execute) {
                    return Err(Error::new(Errno::Eacces, path, "no execute permission"));
                }
                g.members.values().copied().collect()
            }
            _ => {
                return Err(Error::new(
                    Errno::Einval,
                    path,
                    "processes associate with partitions and groups only",
                ))
            }
        };
        for &id in &targets {
            if !self.part(id)?.perm.allows(cred, Access::Execute) {
                return Err(Error::new(
                    Errno::Eacces,
                    self.path_of(id)?,
                    "no execute permission",
                ));
            }
        }
        Ok(targets)
    }

    /// Lists what is under `path` (read permission on it).
    pub fn list(&self, cred: &Credential, path: &str) -> Result<Vec<DirEntry>> {
        let entry = |name: &str, kind| DirEntry {
            name: name.to_string(),
            kind,
        };
        let denied = || Error::new(Errno::Eacces, path, "no read permission");
        match self.resolve(path)? {
            Node::Mem => {
                let mut out: Vec<DirEntry> = self
                    .classes
                    .iter()
                    .map(|c| entry(&c.name, EntryKind::Class))
                    .collect();
                out.extend(self.groups.keys().map(|g| entry(g, EntryKind::Group)));
                Ok(out)
            }
            Node::Class(id) => {
                let c = self.class(id)?;
                if !c.perm.allows(cred, Access::Read) {
                    return Err(denied());
                }
                Ok(c.roots
                    .keys()
                    .map(|n| entry(n, EntryKind::Partition))
                    .collect())
            }
            Node::Partition(id) => {
                let p = self.part(id)?;
                if !p.perm.allows(cred, Access::Read) {
                    return Err(denied());
                }
                let mut out: Vec<DirEntry> = p
                    .children
                    .keys()
                    .map(|n| entry(n, EntryKind::Partition))
                    .collect();
                out.extend(
                    p.processes
                        .iter()
                        .map(|pid| entry(&pid.to_string(), EntryKind::Process)),
                );
                out.extend(
                    self.objects
                        .charged_to(id)
                        .map(|(name, size)| entry(name, EntryKind::Object { size })),
                );
                Ok(out)
            }
            Node::Group(name) => {
                let g = self
                    .groups
                    .get(&name)
                    .ok_or_else(|| Error::new(Errno::Enoent, path, "no such group"))?;
                if !g.perm.allows(cred, Access::Read) {
                    return Err(denied());
                }
                g.members
                    .iter()
                    .map(|(n, &id)| {
                        Ok(entry(
                            n,
                            EntryKind::Pseudo {
                                target: self.path_of(id)?,
                            },
                        ))
                    })
                    .collect()
            }
            Node::Process(..) | Node::Pseudo { .. } => {
                Err(Error::new(Errno::Enotdir, path, "not a directory"))
            }
        }
    }

    pub(crate) fn create_group(
        &mut self,
        cred: &Credential,
        name: &str,
        mode: u32,
    ) -> Result<String> {
        let path = format!("{MEM_ROOT}/{name}");
        check_name(name).map_err(|e| Error::new(e.errno, &path, e.reason))?;
        if self.class_id(name).is_some() || self.groups.contains_key(name) {
            return Err(Error::new(Errno::Eexist, path, "already exists"));
        }
        if !MEM_PERM.allows(cred, Access::Write) {
            return Err(Error::new(
                Errno::Eacces,
                path,
                "no write permission on /partition/mem",
            ));
        }
        let (uid, gid) = cred.owner();
        crate::quota::admit("groups", &path, MAX_GROUPS, self.groups.len(), uid, || {
            self.groups.values().filter(|g| g.perm.uid == uid).count()
        })?;
        self.groups.insert(
            name.to_string(),
            Group {
                perm: Perm::new(uid, gid, mode),
                members: BTreeMap::new(),
            },
        );
        Ok(name.to_string())
    }

    /// Creates the pseudo partition `pseudo_path` (`/partition/mem/<group>/<name>`) naming
    /// the real partition at `target_path`. A group holds at most one partition per class.
    pub fn link(&mut self, cred: &Credential, pseudo_path: &str, target_path: &str) -> Result<()> {
        let comps = components(pseudo_path)?;
        let [group, name] = comps.as_slice() else {
            return Err(Error::new(
                Errno::Einval,
                pseudo_path,
                "a pseudo partition is /partition/mem/<group>/<name>",
            ));
        };
        let target = match self.resolve(target_path)? {
            Node::Partition(id) => id,
            _ => {
                return Err(Error::new(
                    Errno::Einval,
                    target_path,
                    "a pseudo partition names a real partition",
                ))
            }
        };
        let target_class = self.part(target)?.class;
        let g = self
            .groups
            .get(*group)
            .ok_or_else(|| Error::new(Errno::Enoent, pseudo_path, "no such group"))?;
        if g.members.contains_key(*name) {
            return Err(Error::new(Errno::Eexist, pseudo_path, "already exists"));
        }
        if !g.perm.allows(cred, Access::Write) {
            return Err(Error::new(
                Errno::Eacces,
                pseudo_path,
                "no write permission on the group",
            ));
        }
        for &member in g.members.values() {
            if self.part(member)?.class == target_class {
                return Err(Error::new(
                    Errno::Eexist,
                    pseudo_path,
                    format!(
                        "the group already names a partition of class {}",
                        self.class_name(target_class)
                    ),
                ));
            }
        }
        if let Some(g) = self.groups.get_mut(*group) {
            g.members.insert((*name).to_string(), target);
        }
        self.part_mut(target)?.pseudo_refs += 1;
        Ok(())
    }

    pub(crate) fn unlink_pseudo(
        &mut self,
        cred: &Credential,
        group: &str,
        name: &str,
        path: &str,
    ) -> Result<()> {
        let g = self
            .groups
            .get_mut(group)
            .ok_or_else(|| Error::new(Errno::Enoent, path, "no such group"))?;
        if !g.perm.allows(cred, Access::Write) {
            return Err(Error::new(
                Errno::Eacces,
                path,
                "no write permission on the group",
            ));
        }
        let target = g
            .members
            .remove(name)
            .ok_or_else(|| Error::new(Errno::Enoent, path, "no such pseudo partition"))?;
        if let Some(p) = self.parts.get_mut(target.0) {
            p.pseudo_refs = p.pseudo_refs.saturating_sub(1);
        }
        Ok(())
    }

    pub(crate) fn destroy_group(
        &mut self,
        cred: &Credential,
        name: &str,
        path: &str,
    ) -> Result<()> {
        let g = self
            .groups
            .get(name)
            .ok_or_else(|| Error::new(Errno::Enoent, path, "no such group"))?;
        if !g.perm.allows(cred, Access::Write) {
            return Err(Error::new(Errno::Eacces, path, "no write permission"));
        }
        if !g.members.is_empty() {
            return Err(Error::new(
                Errno::Enotempty,
                path,
                "it still has pseudo partitions",
            ));
        }
        self.groups.remove(name);
        Ok(())
    }
}
