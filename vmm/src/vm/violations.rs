//! Guest accesses to class memory it was not granted: counted exactly, kept and logged
//! within fixed bounds, however fast the guest makes them.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use mempart::ClassId;

/// How many of the latest violations are kept for inspection.
pub const RECENT_VIOLATIONS: usize = 64;
/// Violations logged per second at most; the rest are counted and summed up in the
/// next line logged.
pub const LOGGED_PER_SECOND: u32 = 10;

/// A guest access to class memory that was not granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    /// The class.
    pub class: ClassId,
    /// Guest-physical address.
    pub gpa: u64,
    /// Whether it was a write.
    pub write: bool,
}

/// Every violation counted, the latest kept, and a log rate limit.
#[derive(Debug, Default)]
pub struct ViolationLog {
    total: u64,
    by_class: BTreeMap<ClassId, u64>,
    by_zone: BTreeMap<usize, u64>,
    recent: VecDeque<Violation>,
    window_start: Option<Instant>,
    logged_in_window: u32,
    unlogged: u64,
}

/// Whether to log a violation just recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLine {
    /// Log it, saying how many went unlogged since the last line.
    Log {
        /// Violations recorded but not logged since the previous line.
        unlogged_before: u64,
    },
    /// Over the rate: counted only.
    Quiet,
}

impl ViolationLog {
    /// Records `violation`, seen at `now`; says whether to log it.
    pub fn record(&mut self, violation: Violation, now: Instant) -> LogLine {
        self.total = self.total.saturating_add(1);
        let count = self.by_class.entry(violation.class).or_default();
        *count = count.saturating_add(1);
        if self.recent.len() == RECENT_VIOLATIONS {
            self.recent.pop_front();
        }
        self.recent.push_back(violation);
        self.rate(now)
    }

    /// Records an access to unplugged memory of zone `zone` (its index), seen at `now`;
    /// says whether to log it.
    pub fn record_zone(&mut self, zone: usize, now: Instant) -> LogLine {
        self.total = self.total.saturating_add(1);
        let count = self.by_zone.entry(zone).or_default();
        *count = count.saturating_add(1);
        self.rate(now)
    }

    /// Whether one more line fits this second's budget.
    fn rate(&mut self, now: Instant) -> LogLine {
        let window_over = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= Duration::from_secs(1));
        if window_over {
            self.window_start = Some(now);
            self.logged_in_window = 0;
        }
        if self.logged_in_window < LOGGED_PER_SECOND {
            self.logged_in_window += 1;
            LogLine::Log {
                unlogged_before: std::mem::take(&mut self.unlogged),
            }
        } else {
            self.unlogged = self.unlogged.saturating_add(1);
            LogLine::Quiet
        }
    }

    /// Violations since the VM started.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Violations of `class` since the VM started.
    pub fn of_class(&self, class: ClassId) -> u64 {
        self.by_class.get(&class).copied().unwrap_or(0)
    }

    /// Accesses to unplugged memory of zone `zone` since the VM started.
    pub fn of_zone(&self, zone: usize) -> u64 {
        self.by_zone.get(&zone).copied().unwrap_or(0)
    }

    /// The latest violations, oldest first (at most [`RECENT_VIOLATIONS`]).
    pub fn recent(&self) -> Vec<Violation> {
        self.recent.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two classes' ids, as the engine hands them out.
    fn classes() -> (ClassId, ClassId) {
        let engine = mempart::Engine::new(&[
            mempart::ClassSpec::new("sysram", 1 << 20),
            mempart::ClassSpec::new("fast", 1 << 20),
            mempart::ClassSpec::new("slow", 1 << 20),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let id = |name| engine.class_id(name).unwrap_or_else(|| panic!("{name}"));
        (id("fast"), id("slow"))
    }

    #[test]
    fn a_flood_is_counted_exactly_kept_boundedly_and_logged_at_the_rate() {
        let (fast, slow) = classes();
        let at = |gpa| Violation {
            class: fast,
            gpa,
            write: false,
        };
        let mut log = ViolationLog::default();
        let t0 = Instant::now();
        let mut logged = Vec::new();
        // 10,000 violations over 2.5 s of simulated time.
        for i in 0..10_000u64 {
            let now = t0 + Duration::from_micros(i * 250);
            if let LogLine::Log { unlogged_before } = log.record(at(i * 8), now) {
                logged.push((i, unlogged_before));
            }
        }
        assert_eq!(log.total(), 10_000);
        assert_eq!(log.of_class(fast), 10_000);
        assert_eq!(log.of_class(slow), 0);
        let recent = log.recent();
        assert_eq!(recent.len(), RECENT_VIOLATIONS);
        assert_eq!(recent.last().map(|v| v.gpa), Some(9_999 * 8));
        // Three windows (0 s, 1 s, 2 s), each logging its first ten.
        assert_eq!(logged.len(), 3 * LOGGED_PER_SECOND as usize);
        assert_eq!(logged.get(10), Some(&(4_000, 3_990)));
        assert_eq!(logged.get(20), Some(&(8_000, 3_990)));
        let unlogged: u64 = logged.iter().map(|(_, n)| n).sum();
        assert_eq!(unlogged + logged.len() as u64 + log.unlogged, 10_000);
    }

    #[test]
    fn zone_accesses_count_apart_and_share_the_log_budget() {
        let mut log = ViolationLog::default();
        let now = Instant::now();
        let lines = (0..25)
            .filter(|i| matches!(log.record_zone(i % 2, now), LogLine::Log { .. }))
            .count();
        assert_eq!(lines, LOGGED_PER_SECOND as usize);
        assert_eq!(
            (log.of_zone(0), log.of_zone(1), log.of_zone(2)),
            (13, 12, 0)
        );
        assert_eq!(log.total(), 25);
        assert!(log.recent().is_empty());
    }
}
