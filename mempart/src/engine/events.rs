//! The engine's side of events: subscribing, draining, unsubscribing.

use super::Engine;
use crate::error::{Errno, Error, Result};
use crate::events::{EventBatch, EventFilter, Subscription, Target, MAX_QUEUE, MAX_SUBSCRIPTIONS};
use crate::ids::SubId;
use crate::namespace::Node;
use crate::security::{Access, Credential};

impl Engine {
    /// Subscribes to events of the partition or class at `path` (read permission), with
    /// room for `capacity` undrained events (1..=[`MAX_QUEUE`]).
    pub fn subscribe(
        &mut self,
        cred: &Credential,
        path: &str,
        filter: EventFilter,
        capacity: usize,
    ) -> Result<SubId> {
        let (target, perm, size) = match self.resolve(path)? {
            Node::Partition(id) | Node::Pseudo { target: id, .. } => {
                let perm = self.part(id)?.perm;
                (Target::Partition(id), perm, self.record(id)?.used())
            }
            Node::Class(id) => {
                let c = self.class(id)?;
                (Target::Class(id), c.perm, c.allocated)
            }
            _ => {
                return Err(Error::new(
                    Errno::Einval,
                    path,
                    "only partitions and classes have events",
                ))
            }
        };
        if !perm.allows(cred, Access::Read) {
            return Err(Error::new(Errno::Eacces, path, "no read permission"));
        }
        if capacity == 0 || capacity > MAX_QUEUE {
            return Err(Error::new(
                Errno::Einval,
                path,
                format!("queue capacity {capacity} is not in 1..={MAX_QUEUE}"),
            ));
        }
        if filter.delta == Some(0) {
            return Err(Error::new(Errno::Einval, path, "a delta must be positive"));
        }
        let owner = cred.owner().0;
        crate::quota::admit(
            "subscriptions",
            path,
            MAX_SUBSCRIPTIONS,
            self.subs.len(),
            owner,
            || self.subs.iter().filter(|(_, s)| s.owner == owner).count(),
        )?;
        let mut sub = Subscription::new(target, filter, capacity, size);
        sub.owner = owner;
        let id = SubId(self.subs.insert(sub));
        if let Some(list) = self.target_subscribers(target) {
            list.push(id);
        }
        self.refresh_subscribed(target);
        Ok(id)
    }

    /// Takes the queued events of a subscription and how many it missed.
    pub fn drain_events(&mut self, sub: SubId) -> Result<EventBatch> {
        self.subs
            .get_mut(sub.0)
            .map(Subscription::drain)
            .ok_or_else(|| Error::new(Errno::Enoent, format!("{sub:?}"), "no such subscription"))
    }

    /// Ends a subscription.
    pub fn unsubscribe(&mut self, sub: SubId) -> Result<()> {
        let s = self
            .subs
            .remove(sub.0)
            .ok_or_else(|| Error::new(Errno::Enoent, format!("{sub:?}"), "no such subscription"))?;
        if let Some(list) = self.target_subscribers(s.target) {
            list.retain(|x| *x != sub);
        }
        self.refresh_subscribed(s.target);
        Ok(())
    }
}
