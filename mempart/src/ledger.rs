//! The accounting records of every partition in one dense array, and the single O(depth)
//! walk that applies a change of use up the tree or refuses it and undoes what it applied.

use crate::class::Class;
use crate::partition::Limits;
use crate::slab::Key;

/// The parent index of a class's root partitions: the walk goes on to the class.
pub(crate) const CLASS_LEVEL: u32 = u32::MAX;

/// The figures of one partition that an allocation reads or changes (DESIGN §4).
///
/// The fields a walk reads on every level come first, in the record's first cache line.
/// Two of them are thresholds derived from the others, so that a level asks for a closer
/// look with a single comparison in each direction: `gate` (growth above it is refused or
/// is a new highest) and `floor` (use below it means the reservation absorbs part of the
/// change, or somebody watches the level).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(64))]
pub(crate) struct Record {
    /// `own` plus the children's charges.
    used: u64,
    /// `min(limit, highest)`: growth beyond it is refused or reaches a new highest.
    gate: u64,
    /// `min`, or `u64::MAX` while the level is watched (subscribed, or a max pending).
    floor: u64,
    /// Bytes allocated by objects associated with the partition itself.
    own: u64,
    /// The partition's key: its slot, and the generation that tells a stale id
    /// ([`Key::VACANT`] in a slot whose partition was destroyed).
    key: Key,
    /// Index of the parent's record, or [`CLASS_LEVEL`].
    parent: u32,
    /// Index of the class.
    class: u32,
    /// Configured minimum.
    min: u64,
    /// What allocations are checked against: the pending max if any, else the max.
    limit: u64,
    /// Highest `used` seen since creation or the last reset.
    highest: u64,
    /// Configured maximum.
    max: u64,
    /// A lower max waiting for reclaim.
    pending_max: Option<u64>,
    /// Whether anyone subscribed to the partition's events.
    subscribed: bool,
}

impl Record {
    /// A new partition's record: nothing used yet.
    pub fn new(key: Key, limits: Limits, parent: u32, class: u32) -> Record {
        let mut record = Record {
            used: 0,
            gate: 0,
            floor: 0,
            own: 0,
            key,
            parent,
            class,
            min: limits.min,
            limit: limits.max,
            highest: 0,
            max: limits.max,
            pending_max: None,
            subscribed: false,
        };
        record.refresh();
        record
    }

    /// What an empty slot holds: a key no partition has.
    fn vacant() -> Record {
        Record::new(Key::VACANT, Limits::OPEN, CLASS_LEVEL, 0)
    }

    /// Bytes allocated by objects associated with the partition itself.
    pub fn own(&self) -> u64 {
        self.own
    }

    /// `own` plus the children's charges: the current size.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// What the children cost.
    fn children_charge(&self) -> u64 {
        self.used.saturating_sub(self.own)
    }

    /// `max(min, used)`: what the partition costs its parent or class.
    pub fn charge(&self) -> u64 {
        self.min.max(self.used())
    }

    /// The configured min and max.
    pub fn limits(&self) -> Limits {
        Limits {
            min: self.min,
            max: self.max,
        }
    }

    /// The max that allocations are checked against (a pending lower max wins).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// A lower max waiting for reclaim.
    pub fn pending_max(&self) -> Option<u64> {
        self.pending_max
    }

    /// Highest `used` seen since creation or the last reset.
    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// Index of the class.
    pub fn class(&self) -> u32 {
        self.class
    }

    /// Puts `max` in force at once; a pending max is dropped.
    pub fn set_max(&mut self, max: u64) {
        self.max = max;
        self.set_pending_max(None);
    }

    /// Sets (or with `None` withdraws) a pending lower max; returns the one before.
    pub fn set_pending_max(&mut self, pending: Option<u64>) -> Option<u64> {
        let before = std::mem::replace(&mut self.pending_max, pending);
        self.refresh();
        before
    }

    /// Whether anyone subscribed to the partition's events.
    pub fn subscribed(&self) -> bool {
        self.subscribed
    }

    /// Records whether anyone subscribed to the partition.
    pub fn set_subscribed(&mut self, subscribed: bool) {
        self.subscribed = subscribed;
        self.refresh();
    }

    /// Sets the configured minimum.
    fn set_min(&mut self, min: u64) {
        self.min = min;
        self.refresh();
    }

    /// Sets the highest size to the current one; returns the old highest.
    pub fn reset_highest(&mut self) -> u64 {
        let old = std::mem::replace(&mut self.highest, self.used);
        self.refresh();
        old
    }

    /// Notes that use is now `used`: a new highest, and a pending max that now fits
    /// takes effect. Returns whether it did.
    pub fn note_used(&mut self, used: u64) -> bool {
        self.highest = self.highest.max(used);
        let applied = match self.pending_max {
            Some(pending) if used <= pending => {
                self.max = pending;
                self.pending_max = None;
                true
            }
            _ => false,
        };
        self.refresh();
        applied
    }

    /// Whether a change of use must be followed up even without a new highest.
    fn watched(&self) -> bool {
        self.subscribed || self.pending_max.is_some()
    }

    /// Whether a change of use from `old` to `new` must be followed up: a new highest, or
    /// a watched level.
    fn noteworthy(&self, old: u64, new: u64) -> bool {
        (new > old && new > self.highest) || self.watched()
    }

    /// Derives the limit and the two thresholds from the figures they depend on.
    fn refresh(&mut self) {
        self.limit = self.pending_max.unwrap_or(self.max);
        self.gate = self.limit.min(self.highest);
        self.floor = if self.watched() { u64::MAX } else { self.min };
    }
}

/// The change of charge a level passes on when its use, below its min before or after,
/// moves from `old_used` to `new_used` (growth when `UP`): the reservation absorbs the
/// part of the change beneath the min. Out of line: a level above its min passes the
/// whole change on, and the walk's hot path need not carry this.
#[cold]
#[inline(never)]
fn through_reservation<const UP: bool>(old_used: u64, new_used: u64, min: u64) -> u64 {
    if UP {
        new_used.saturating_sub(min.max(old_used))
    } else {
        old_used.saturating_sub(min.max(new_used))
    }
}

/// What one level of a walk passes on.
enum Step {
    /// This change of charge goes on to the parent.
    Pass(u64),
    /// The level's reservation absorbed the rest: the walk ends here.
    Absorbed,
}

impl Record {
    /// One level of a walk: the level's use moves by `d` (growth when `UP`). Growth above
    /// the limit is refused in a checked walk, and a figure that would leave 64 bits
    /// always; the level is unchanged then. `noteworthy` is set when the change must be
    /// followed up (a new highest, a watched level).
    ///
    /// A level that is above its min, not watched and not at a new highest takes two
    /// comparisons, one each against `gate` and `floor`; everything else is off that path.
    #[inline(always)]
    fn step<const UP: bool>(
        &mut self,
        d: u64,
        checked: bool,
        noteworthy: &mut bool,
    ) -> Result<Step, Refusal> {
        let old = self.used;
        let new = if UP {
            let Some(new) = old.checked_add(d) else {
                return Err(self.overflow());
            };
            if new > self.gate {
                if checked && new > self.limit && d != 0 {
                    return Err(self.over_max(new));
                }
                *noteworthy = true;
            }
            new
        } else {
            let Some(new) = old.checked_sub(d) else {
                return Err(self.overflow());
            };
            new
        };
        self.used = new;
        let lower = if UP { old } else { new };
        if lower < self.floor {
            *noteworthy |= self.watched();
            return match through_reservation::<UP>(old, new, self.min) {
                0 => Ok(Step::Absorbed),
                passed => Ok(Step::Pass(passed)),
            };
        }
        Ok(Step::Pass(d))
    }

    #[cold]
    fn overflow(&self) -> Refusal {
        Refusal::Overflow {
            index: self.key.index(),
        }
    }

    #[cold]
    fn over_max(&self, used: u64) -> Refusal {
        Refusal::OverMax {
            index: self.key.index(),
            used,
            limit: self.limit,
        }
    }
}

/// A change of a charge: `amount` bytes up or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delta {
    /// Whether the charge grows.
    pub up: bool,
    /// By how many bytes.
    pub amount: u64,
}

impl Delta {
    /// Growth by `amount`.
    pub fn up(amount: u64) -> Delta {
        Delta { up: true, amount }
    }

    /// Shrinkage by `amount`.
    pub fn down(amount: u64) -> Delta {
        Delta { up: false, amount }
    }

    fn between(old: u64, new: u64) -> Delta {
        if new >= old {
            Delta::up(new - old)
        } else {
            Delta::down(old - new)
        }
    }

    /// The value before this change was applied to `value`.
    pub fn revert(self, value: u64) -> u64 {
        if self.up {
            value.saturating_sub(self.amount)
        } else {
            value.saturating_add(self.amount)
        }
    }
}

/// How a walk treats the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Refuse growth above a max or the class size; nothing changes then.
    Checked,
    /// Apply a measured figure whatever the limits say (overflow is still refused).
    Forced,
}

/// Why a walk changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The partition at `index` would use `used` bytes, above `limit`.
    OverMax { index: u32, used: u64, limit: u64 },
    /// The class at `class` lacks `needs - free` bytes.
    ClassFull { class: u32, needs: u64, free: u64 },
    /// A figure of the partition at `index` would not fit in 64 bits.
    Overflow { index: u32 },
    /// The charge of the class at `class` would leave the range of 64 bits.
    ClassOverflow { class: u32 },
    /// No record at `index` (a stale or corrupt link).
    Missing { index: u32 },
    /// A change of `bytes` at the partition at `index` that is not a multiple of its
    /// class's allocation unit.
    Unaligned { index: u32, bytes: u64, unit: u64 },
}

/// A change of one partition's own bytes or min, as it was before: enough to read the
/// whole change back from the ledger afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LeafChange {
    /// The partition's record.
    pub index: u32,
    /// Its own bytes before.
    pub old_own: u64,
    /// Its min before.
    pub old_min: u64,
}

/// One level of a change, read back after the change was applied.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Level {
    /// The record's index.
    pub index: u32,
    /// Its use before the change.
    pub old_used: u64,
    /// Its use after the change.
    pub new_used: u64,
}

/// Every partition's record, at the index of its slab slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Ledger {
    /// Destroyed partitions leave vacant records, never reached by a walk: a live
    /// partition's parent is live, and a vacant record's key matches no partition's.
    records: Vec<Record>,
}

impl Ledger {
    /// The record at `index`.
    pub fn get(&self, index: u32) -> Option<&Record> {
        self.records
            .get(index as usize)
            .filter(|r| r.key != Key::VACANT)
    }

    /// The record at `index`, mutably.
    pub fn get_mut(&mut self, index: u32) -> Option<&mut Record> {
        self.records
            .get_mut(index as usize)
            .filter(|r| r.key != Key::VACANT)
    }

    /// The record of the partition `key`, if it is still there.
    pub fn live(&self, key: Key) -> Option<&Record> {
        self.records
            .get(key.index() as usize)
            .filter(|r| r.key == key)
    }

    /// The record of the partition `key`, mutably.
    pub fn live_mut(&mut self, key: Key) -> Option<&mut Record> {
        self.records
            .get_mut(key.index() as usize)
            .filter(|r| r.key == key)
    }

    /// Stores the record of a new partition at the index of its key.
    pub fn put(&mut self, record: Record) {
        let at = record.key.index() as usize;
        if self.records.len() <= at {
            self.records.resize(at + 1, Record::vacant());
        }
        if let Some(slot) = self.records.get_mut(at) {
            *slot = record;
        }
    }

    /// Forgets the record of the partition `key`.
    pub fn remove(&mut self, key: Key) {
        if let Some(slot) = self.live_mut(key) {
            *slot = Record::vacant();
        }
    }

    /// Sets the own bytes and min of the partition at `index` and carries the change of
    /// its charge up to the class. Refused (see [`Mode`]) with nothing changed; otherwise
    /// says whether the change needs following up ([`Ledger::read_back`]).
    #[inline]
    pub fn set_own_min(
        &mut self,
        classes: &mut [Class],
        index: u32,
        new_own: u64,
        new_min: u64,
        mode: Mode,
    ) -> Result<bool, Refusal> {
        let r = self.get_mut(index).ok_or(Refusal::Missing { index })?;
        let old_used = r.used();
        let new_used = new_own
            .checked_add(r.children_charge())
            .ok_or(Refusal::Overflow { index })?;
        if mode == Mode::Checked && new_used > old_used && new_used > r.limit {
            return Err(Refusal::OverMax {
                index,
                used: new_used,
                limit: r.limit,
            });
        }
        let delta = Delta::between(r.charge(), new_min.max(new_used));
        let (old_own, old_min, parent, class) = (r.own, r.min, r.parent, r.class);
        let leaf_eventful = r.noteworthy(old_used, new_used);
        r.own = new_own;
        r.used = new_used;
        r.set_min(new_min);
        let walked = match classes.get_mut(class as usize) {
            Some(c) if delta.up => self.walk::<true>(c, class, parent, delta.amount, mode),
            Some(c) => self.walk::<false>(c, class, parent, delta.amount, mode),
            None => Err(Refusal::Missing { index }),
        };
        let eventful = match walked {
            Ok(eventful) => eventful || leaf_eventful,
            Err(refusal) => {
                if let Some(r) = self.get_mut(index) {
                    r.own = old_own;
                    r.used = old_used;
                    r.set_min(old_min);
                }
                return Err(refusal);
            }
        };
        match classes.get_mut(class as usize) {
            Some(c) if old_own != new_own => {
                c.allocated = c.allocated.saturating_sub(old_own).saturating_add(new_own);
                Ok(eventful || c.allocated >= c.alert)
            }
            _ => Ok(eventful),
        }
    }

    /// Adds (`delta.up`) or takes `delta.amount` own bytes of the partition `key`, its
    /// min unchanged, in [`Mode::Checked`]. Says whether the change needs following up
    /// ([`Ledger::shifted`] tells what it was).
    #[inline]
    pub fn shift_own(
        &mut self,
        classes: &mut [Class],
        key: Key,
        delta: Delta,
    ) -> Result<bool, Refusal> {
        match delta.up {
            true => self.shift::<true>(classes, key, delta.amount),
            false => self.shift::<false>(classes, key, delta.amount),
        }
    }

    /// The change [`Ledger::shift_own`] made with `delta`, read back from the record.
    pub fn shifted(&self, key: Key, delta: Delta) -> Option<LeafChange> {
        let r = self.live(key)?;
        Some(LeafChange {
            index: key.index(),
            old_own: delta.revert(r.own),
            old_min: r.min,
        })
    }

    /// [`Ledger::shift_own`] in one direction: the allocation path, without the general
    /// leaf change of [`Ledger::set_own_min`] (the min stays, so the leaf's charge moves the
    /// same way as its own bytes).
    #[inline(always)]
    fn shift<const UP: bool>(
        &mut self,
        classes: &mut [Class],
        key: Key,
        bytes: u64,
    ) -> Result<bool, Refusal> {
        let index = key.index();
        let Some(r) = self.records.get_mut(index as usize) else {
            return Err(Refusal::Missing { index });
        };
        if r.key != key {
            return Err(Refusal::Missing { index });
        }
        let class = r.class;
        let c = classes
            .get_mut(class as usize)
            .ok_or(Refusal::Missing { index })?;
        // Units are powers of two (checked when the class is added).
        if bytes & c.unit.wrapping_sub(1) != 0 {
            return Err(Refusal::Unaligned {
                index,
                bytes,
                unit: c.unit,
            });
        }
        if !UP && r.own < bytes {
            return Err(Refusal::Overflow { index });
        }
        let mut noteworthy = false;
        let step = r.step::<UP>(bytes, true, &mut noteworthy)?;
        // `own` is part of `used`, which took the change without leaving 64 bits.
        if UP {
            r.own += bytes;
        } else {
            r.own -= bytes;
        }
        if let Step::Pass(d) = step {
            let parent = r.parent;
            match self.walk::<UP>(c, class, parent, d, Mode::Checked) {
                Ok(above) => noteworthy |= above,
                Err(refusal) => {
                    if let Some(r) = self.get_mut(index) {
                        if UP {
                            r.own -= bytes;
                            r.used -= bytes;
                        } else {
                            r.own += bytes;
                            r.used += bytes;
                        }
                    }
                    return Err(refusal);
                }
            }
        }
        c.allocated = if UP {
            c.allocated.saturating_add(bytes)
        } else {
            c.allocated.saturating_sub(bytes)
        };
        Ok(noteworthy | (c.allocated >= c.alert))
    }

    /// Carries `delta` of a child's charge into the level `entry` (a record index, or
    /// [`CLASS_LEVEL`]) and on up to class `class`, checking every level in
    /// [`Mode::Checked`]. Refused with nothing changed; otherwise says whether the change
    /// needs following up.
    pub fn carry_into(
        &mut self,
        classes: &mut [Class],
        class: u32,
        entry: u32,
        delta: Delta,
        mode: Mode,
    ) -> Result<bool, Refusal> {
        let c = classes
            .get_mut(class as usize)
            .ok_or(Refusal::Missing { index: entry })?;
        match delta.up {
            true => self.walk::<true>(c, class, entry, delta.amount, mode),
            false => self.walk::<false>(c, class, entry, delta.amount, mode),
        }
    }

    /// The walk itself: carries a charge change of `amount` (growth when `UP`) into
    /// `entry` and up, level by level, stopping where a reservation absorbs the rest. The
    /// direction never flips on the way: a child's charge growing cannot shrink its
    /// parent's. On refusal, the levels already changed are changed back.
    #[inline(always)]
    fn walk<const UP: bool>(
        &mut self,
        c: &mut Class,
        class: u32,
        entry: u32,
        amount: u64,
        mode: Mode,
    ) -> Result<bool, Refusal> {
        if amount == 0 {
            return Ok(false);
        }
        let checked = mode == Mode::Checked;
        let mut noteworthy = false;
        let mut at = entry;
        let mut d = amount;
        while let Some(r) = self.records.get_mut(at as usize) {
            match r.step::<UP>(d, checked, &mut noteworthy) {
                Ok(Step::Pass(passed)) => d = passed,
                Ok(Step::Absorbed) => return Ok(noteworthy),
                Err(refusal) => {
                    self.undo(entry, Delta { up: UP, amount }, at);
                    return Err(refusal);
                }
            }
            at = r.parent;
        }
        self.walk_into_class::<UP>(c, class, entry, amount, at, d, checked)
            .map(|()| noteworthy)
    }

    /// The last step of a walk: the change of a root's charge against the class size.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn walk_into_class<const UP: bool>(
        &mut self,
        c: &mut Class,
        class: u32,
        entry: u32,
        amount: u64,
        at: u32,
        d: u64,
        checked: bool,
    ) -> Result<(), Refusal> {
        let delta = Delta { up: UP, amount };
        if at != CLASS_LEVEL {
            self.undo(entry, delta, at);
            return Err(Refusal::Missing { index: at });
        }
        let charge = if UP {
            c.roots_charge.checked_add(d)
        } else {
            c.roots_charge.checked_sub(d)
        };
        let refusal = match charge {
            Some(charge) if !(UP && checked && charge > c.size) => {
                c.roots_charge = charge;
                return Ok(());
            }
            Some(_) => Refusal::ClassFull {
                class,
                needs: d,
                free: c.size.saturating_sub(c.roots_charge),
            },
            None => Refusal::ClassOverflow { class },
        };
        self.undo(entry, delta, at);
        Err(refusal)
    }

    /// Changes back the levels from `entry` up to (not including) `stop` that a walk
    /// carrying `delta` changed.
    #[cold]
    fn undo(&mut self, entry: u32, delta: Delta, stop: u32) {
        let mut at = entry;
        let mut d = delta;
        while at != stop {
            let Some((level, next, parent)) = self.level_after(at, d) else {
                return;
            };
            if let Some(r) = self.get_mut(at) {
                r.used = level.old_used;
            }
            d = next;
            at = parent;
        }
    }

    /// Reads back a change [`Ledger::set_own_min`] applied: the leaf's level, and the
    /// level and change its charge entered first.
    pub fn read_back(&self, leaf: LeafChange) -> Option<(Level, u32, Delta)> {
        let r = self.get(leaf.index)?;
        let new_used = r.used();
        let old_used = leaf.old_own.saturating_add(r.children_charge());
        let delta = Delta::between(leaf.old_min.max(old_used), r.charge());
        let level = Level {
            index: leaf.index,
            old_used,
            new_used,
        };
        Some((level, r.parent, delta))
    }

    /// The level at `at` as a walk that carried `d` into it left it: its use before and
    /// after, the change it carried on, and where to. `None` past the last changed level.
    pub fn level_after(&self, at: u32, d: Delta) -> Option<(Level, Delta, u32)> {
        if d.amount == 0 {
            return None;
        }
        let r = self.get(at)?;
        let new_used = r.used();
        let old_used = d.revert(new_used);
        let next = Delta::between(r.min.max(old_used), r.min.max(new_used));
        let level = Level {
            index: at,
            old_used,
            new_used,
        };
        Some((level, next, r.parent))
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::partition::UNLIMITED;

    fn class(size: u64) -> Class {
        Class::new("c", size, 1)
    }

    /// A chain root(0) <- mid(1) <- leaf(2) with these limits.
    fn chain(limits: [Limits; 3]) -> Ledger {
        let mut l = Ledger::default();
        for (i, lim) in limits.into_iter().enumerate() {
            let parent = if i == 0 { CLASS_LEVEL } else { i as u32 - 1 };
            l.put(Record::new(Key::new(i as u32, 0), lim, parent, 0));
        }
        l
    }

    #[test]
    fn refusal_at_an_ancestor_leaves_every_level_as_it_was() {
        let open = Limits::OPEN;
        let capped = Limits { min: 0, max: 100 };
        let mut l = chain([open, capped, Limits { min: 40, max: 200 }]);
        let mut classes = vec![class(1000)];
        l.carry_into(&mut classes, 0, 1, Delta::up(40), Mode::Checked)
            .unwrap_or_else(|r| panic!("{r:?}"));
        let before = (l.clone(), classes.clone());
        let refused = l.set_own_min(&mut classes, 2, 120, 40, Mode::Checked);
        assert_eq!(
            refused,
            Err(Refusal::OverMax {
                index: 1,
                used: 120,
                limit: 100
            })
        );
        assert_eq!((l.clone(), classes.clone()), before);
        let full = l.set_own_min(&mut classes, 2, 60, 40, Mode::Checked);
        assert!(full.is_ok());
        assert_eq!(l.get(0).map(Record::used), Some(60));
        assert_eq!(classes.first().map(|c| c.roots_charge), Some(60));
    }

    #[test]
    fn refusal_by_the_class_undoes_the_whole_path() {
        let mut l = chain([Limits::OPEN; 3]);
        let mut classes = vec![class(64)];
        let before = (l.clone(), classes.clone());
        let refused = l.set_own_min(&mut classes, 2, 65, 0, Mode::Checked);
        assert_eq!(
            refused,
            Err(Refusal::ClassFull {
                class: 0,
                needs: 65,
                free: 64
            })
        );
        assert_eq!((l, classes), before);
    }

    #[test]
    fn a_reservation_absorbs_growth_and_stops_the_walk() {
        let reserved = Limits {
            min: 50,
            max: UNLIMITED,
        };
        let mut l = chain([Limits::OPEN, reserved, Limits::OPEN]);
        let mut classes = vec![class(100)];
        l.carry_into(&mut classes, 0, 0, Delta::up(50), Mode::Checked)
            .unwrap_or_else(|r| panic!("{r:?}"));
        let leaf = LeafChange {
            index: 2,
            old_own: 0,
            old_min: 0,
        };
        l.set_own_min(&mut classes, 2, 30, 0, Mode::Checked)
            .unwrap_or_else(|r| panic!("{r:?}"));
        assert_eq!(l.get(0).map(Record::used), Some(50));
        assert_eq!(l.get(1).map(Record::used), Some(30));
        let (own, entry, delta) = l.read_back(leaf).unwrap_or_else(|| panic!("leaf"));
        assert_eq!((own.old_used, own.new_used), (0, 30));
        let (mid, next, parent) = l.level_after(entry, delta).unwrap_or_else(|| panic!("mid"));
        assert_eq!((mid.old_used, mid.new_used), (0, 30));
        assert_eq!(l.level_after(parent, next).map(|(l, ..)| l.index), None);
    }

    #[test]
    fn only_a_new_highest_or_a_watched_level_asks_for_follow_up() {
        let mut l = chain([Limits::OPEN; 3]);
        let mut classes = vec![class(100)];
        let grow = |l: &mut Ledger, classes: &mut Vec<Class>, own| {
            l.set_own_min(classes, 2, own, 0, Mode::Checked)
                .unwrap_or_else(|r| panic!("{r:?}"))
        };
        assert!(
            grow(&mut l, &mut classes, 10),
            "every level reaches a new highest"
        );
        for level in 0..3 {
            if let Some(r) = l.get_mut(level) {
                r.note_used(r.used());
            }
        }
        classes.iter_mut().for_each(Class::note_allocated);
        assert!(
            !grow(&mut l, &mut classes, 5),
            "shrinking below the highest is quiet"
        );
        assert!(
            !grow(&mut l, &mut classes, 10),
            "growing back to it is quiet too"
        );
        if let Some(root) = l.get_mut(0) {
            root.set_subscribed(true);
        }
        assert!(
            grow(&mut l, &mut classes, 5),
            "a subscribed root hears of every change"
        );
        assert!(grow(&mut l, &mut classes, 0), "down to nothing, too");
        if let Some(root) = l.get_mut(0) {
            root.set_subscribed(false);
            root.set_pending_max(Some(6));
            assert_eq!(
                root.limit(),
                6,
                "a pending max is what growth is checked against"
            );
        }
        assert!(grow(&mut l, &mut classes, 4), "so does a pending max");
    }

    #[test]
    fn forced_figures_pass_every_limit() {
        let mut l = chain([Limits { min: 0, max: 10 }, Limits::OPEN, Limits::OPEN]);
        let mut classes = vec![class(20)];
        let change = l.set_own_min(&mut classes, 2, 30, 0, Mode::Forced);
        assert!(change.is_ok());
        assert_eq!(classes.first().map(|c| c.roots_charge), Some(30));
        let overflow = l.set_own_min(&mut classes, 1, u64::MAX, 0, Mode::Forced);
        assert_eq!(overflow, Err(Refusal::Overflow { index: 1 }));
    }

    #[test]
    fn a_partition_over_its_limit_takes_no_growth_but_refuses_no_zero_change() {
        let mut l = chain([Limits::OPEN, Limits::OPEN, Limits { min: 0, max: 10 }]);
        let mut classes = vec![class(100)];
        let leaf = Key::new(2, 0);
        l.set_own_min(&mut classes, 2, 30, 0, Mode::Forced)
            .unwrap_or_else(|r| panic!("{r:?}"));
        let before = (l.clone(), classes.clone());
        assert!(l.shift_own(&mut classes, leaf, Delta::up(0)).is_ok());
        assert_eq!((l.clone(), classes.clone()), before);
        assert_eq!(
            l.shift_own(&mut classes, leaf, Delta::up(1)),
            Err(Refusal::OverMax {
                index: 2,
                used: 31,
                limit: 10
            })
        );
        assert_eq!((l.clone(), classes.clone()), before);
        assert!(l.shift_own(&mut classes, leaf, Delta::down(25)).is_ok());
        assert_eq!(l.get(0).map(Record::used), Some(5));
        assert_eq!(classes.first().map(|c| c.roots_charge), Some(5));
    }
}
