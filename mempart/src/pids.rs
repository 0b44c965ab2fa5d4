//! Tracked processes by guest pid: a direct index over Linux's pid range.
//!
//! Linux never hands out a pid at or above [`PID_LIMIT`], so a pid can index a table of
//! entry numbers directly: finding a process is one read of the table and one of the
//! entry, whatever the pid — no hashing a guest could make collide, no tree that deepens
//! with the number of processes, no second level to chase. The table covers the pids up
//! to the highest one registered: 4 bytes per pid, 16 MiB at the very most.

use crate::ids::Pid;

/// Linux's `PID_MAX_LIMIT` on 64-bit: every pid of a Linux guest is below it.
pub const PID_LIMIT: Pid = 1 << 22;

/// The table grows in steps of this many pids.
const GROWTH: usize = 1 << 10;

/// Values keyed by pid, stored densely; lookups go through the table.
#[derive(Debug, Clone)]
pub(crate) struct PidMap<V> {
    /// For each pid up to the highest held: 1 + the index of its entry, or 0.
    table: Vec<u32>,
    entries: Vec<(Pid, V)>,
}

impl<V> Default for PidMap<V> {
    fn default() -> Self {
        PidMap {
            table: Vec::new(),
            entries: Vec::new(),
        }
    }
}

/// Two maps are equal when they hold the same pids with equal values, whatever order
/// their entries are in or how far their tables reach.
impl<V: PartialEq> PartialEq for PidMap<V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .entries
                .iter()
                .all(|(pid, v)| other.get(*pid) == Some(v))
    }
}

impl<V> PidMap<V> {
    /// Number of pids held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Index of `pid`'s entry, or an index past the entries (an empty slot holds 0,
    /// which wraps to the largest index).
    #[inline]
    fn index(&self, pid: Pid) -> usize {
        let slot = self.table.get(pid as usize).copied().unwrap_or(0);
        (slot as usize).wrapping_sub(1)
    }

    /// Whether `pid` is held.
    pub fn contains_key(&self, pid: Pid) -> bool {
        self.index(pid) < self.entries.len()
    }

    /// The value of `pid`.
    #[inline]
    pub fn get(&self, pid: Pid) -> Option<&V> {
        self.entries.get(self.index(pid)).map(|(_, v)| v)
    }

    /// The value of `pid`, mutably.
    #[inline]
    pub fn get_mut(&mut self, pid: Pid) -> Option<&mut V> {
        let at = self.index(pid);
        self.entries.get_mut(at).map(|(_, v)| v)
    }

    /// Holds `value` for `pid`, which must not be held yet. Gives the value back for a pid
    /// at or above [`PID_LIMIT`] or one already held.
    pub fn insert(&mut self, pid: Pid, value: V) -> Result<(), V> {
        let Ok(next) = u32::try_from(self.entries.len() + 1) else {
            return Err(value);
        };
        if pid >= PID_LIMIT {
            return Err(value);
        }
        let at = pid as usize;
        if self.table.len() <= at {
            self.table.resize((at / GROWTH + 1) * GROWTH, 0);
        }
        match self.table.get_mut(at) {
            Some(slot) if *slot == 0 => *slot = next,
            _ => return Err(value),
        }
        self.entries.push((pid, value));
        Ok(())
    }

    /// Takes `pid`'s value out. The last entry moves into its place.
    pub fn remove(&mut self, pid: Pid) -> Option<V> {
        let at = self.index(pid);
        if at >= self.entries.len() {
            return None;
        }
        let (_, value) = self.entries.swap_remove(at);
        if let Some(slot) = self.table.get_mut(pid as usize) {
            *slot = 0;
        }
        if let Some(&(moved, _)) = self.entries.get(at) {
            if let Some(slot) = self.table.get_mut(moved as usize) {
                *slot = u32::try_from(at + 1).unwrap_or(0);
            }
        }
        Some(value)
    }

    /// Every pid held, in no particular order.
    pub fn pids(&self) -> impl Iterator<Item = Pid> + '_ {
        self.entries.iter().map(|(pid, _)| *pid)
    }

    /// Every value held, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.entries.iter().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_pid_at_the_limit_is_refused_and_one_below_it_is_held() {
        let mut m = PidMap::default();
        assert_eq!(m.insert(PID_LIMIT, "over"), Err("over"));
        assert_eq!(m.insert(u32::MAX, "far over"), Err("far over"));
        assert_eq!(m.insert(PID_LIMIT - 1, "last"), Ok(()));
        assert_eq!(m.get(PID_LIMIT - 1), Some(&"last"));
        assert_eq!(m.get(PID_LIMIT), None);
        assert_eq!(m.get(u32::MAX), None);
        assert_eq!(m.insert(PID_LIMIT - 1, "again"), Err("again"));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn removing_an_entry_keeps_the_moved_one_reachable() {
        let mut m = PidMap::default();
        for pid in [7, 70_000, 3] {
            assert!(m.insert(pid, pid * 10).is_ok());
        }
        assert_eq!(m.remove(7), Some(70));
        assert_eq!(m.get(3), Some(&30));
        assert_eq!(m.get(70_000), Some(&700_000));
        assert_eq!(m.remove(7), None);
        assert!(m.insert(7, 1).is_ok());
        assert_eq!(m.get(7), Some(&1));
    }

    #[test]
    fn equality_ignores_order_and_reach() {
        let mut a = PidMap::default();
        let mut b = PidMap::default();
        for pid in [1, 2] {
            assert!(a.insert(pid, ()).is_ok());
        }
        for pid in [2, 5000, 1] {
            assert!(b.insert(pid, ()).is_ok());
        }
        assert_ne!(a, b);
        assert_eq!(b.remove(5000), Some(()));
        assert_eq!(a, b);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(Pid, u8),
        Remove(Pid),
    }

    /// Pids from a few small ranges (so that they meet) and anywhere in `u32`.
    fn pid() -> impl Strategy<Value = Pid> {
        prop_oneof![
            0u32..40,
            PID_LIMIT - 40..PID_LIMIT + 40,
            any::<u32>(),
            (0u32..8).prop_map(|k| k * GROWTH as u32),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (pid(), any::<u8>()).prop_map(|(p, v)| Op::Insert(p, v)),
            pid().prop_map(Op::Remove),
        ]
    }

    proptest! {
        #[test]
        fn behaves_as_a_map_of_the_pids_below_the_limit(
            ops in proptest::collection::vec(op(), 1..200),
            probes in proptest::collection::vec(pid(), 16),
        ) {
            let mut m = PidMap::default();
            let mut model = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(p, v) => {
                        let fits = p < PID_LIMIT && !model.contains_key(&p);
                        prop_assert_eq!(m.insert(p, v).is_ok(), fits);
                        if fits {
                            model.insert(p, v);
                        }
                    }
                    Op::Remove(p) => prop_assert_eq!(m.remove(p), model.remove(&p)),
                }
                prop_assert_eq!(m.len(), model.len());
            }
            for (p, v) in &model {
                prop_assert_eq!(m.get(*p), Some(v));
            }
            for p in probes {
                prop_assert_eq!(m.get(p), model.get(&p));
                prop_assert_eq!(m.contains_key(p), model.contains_key(&p));
            }
            let mut pids: Vec<Pid> = m.pids().collect();
            pids.sort_unstable();
            prop_assert_eq!(pids, model.keys().copied().collect::<Vec<_>>());
        }
    }
}
