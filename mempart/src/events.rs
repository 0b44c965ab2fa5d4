//! Event subscriptions: what a subscriber asked for, its bounded queue and sequence numbers.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::ids::{ClassId, PartId, Pid};
use crate::security::Uid;

/// The largest queue a subscriber may ask for.
pub const MAX_QUEUE: usize = 4096;
/// Most subscriptions one engine holds.
pub const MAX_SUBSCRIPTIONS: usize = 1024;

/// What a subscription watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A real partition: its size is `used`.
    Partition(PartId),
    /// A class as a whole: its size is `allocated`.
    Class(ClassId),
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The size crossed the subscription's threshold.
    Threshold {
        /// The threshold.
        threshold: u64,
        /// The size after the change.
        size: u64,
        /// True when crossing upwards.
        up: bool,
    },
    /// The size moved by at least the subscription's delta since the last delivered delta event.
    Delta {
        /// Size at the last delivered delta event (or at subscription).
        previous: u64,
        /// Size now.
        size: u64,
    },
    /// Limits, policies, permissions (or a class's size) changed.
    ConfigChanged,
    /// A process was associated.
    ProcessAssociated {
        /// The process.
        pid: Pid,
    },
    /// A process was disassociated.
    ProcessDisassociated {
        /// The process.
        pid: Pid,
    },
    /// An immediate child partition was created.
    ChildCreated {
        /// The child.
        child: PartId,
    },
    /// An immediate child partition was destroyed.
    ChildDestroyed {
        /// The child (now stale).
        child: PartId,
    },
    /// The watched partition itself was destroyed; nothing more will arrive.
    Destroyed,
    /// A lower max is pending: the partition's users are asked to free `excess` bytes.
    Reclaim {
        /// The max that applies once use fits.
        max: u64,
        /// Bytes above it when the reclaim was asked for.
        excess: u64,
    },
    /// A reported use is above the partition's (pending) max; kept as reported.
    OverLimit {
        /// Use as reported.
        used: u64,
        /// The limit it breaks.
        limit: u64,
    },
    /// The guest touched class memory that was not granted to it.
    Violation {
        /// Guest-physical address of the access.
        gpa: u64,
    },
}

/// One delivered event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Per-subscription sequence number, from 1, counting missed events too.
    pub seq: u64,
    /// What the subscription watches.
    pub target: Target,
    /// What happened.
    pub kind: EventKind,
}

/// Which events a subscription wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFilter {
    /// Report crossings of this size, up and down.
    pub threshold: Option<u64>,
    /// Report each change of at least this many bytes since the last delivered report (> 0).
    pub delta: Option<u64>,
    /// Report configuration changes.
    pub config: bool,
    /// Report processes associating and leaving.
    pub processes: bool,
    /// Report immediate children created and destroyed.
    pub children: bool,
    /// Report access violations (class subscriptions).
    pub violations: bool,
}

impl Default for EventFilter {
    /// Every non-size kind; no threshold or delta.
    fn default() -> Self {
        EventFilter {
            threshold: None,
            delta: None,
            config: true,
            processes: true,
            children: true,
            violations: true,
        }
    }
}

/// What a drain returns: queued events in order and how many were dropped since the last drain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    /// Events in sequence order.
    pub events: Vec<Event>,
    /// Events that found the queue full and were dropped (their sequence numbers are skipped).
    pub missed: u64,
}

/// A subscription as the engine keeps it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Subscription {
    pub target: Target,
    /// The user it counts against (0 for root and the host).
    pub owner: Uid,
    filter: EventFilter,
    queue: VecDeque<Event>,
    capacity: usize,
    last_seq: u64,
    missed: u64,
    delta_base: u64,
}

impl Subscription {
    /// A subscription with room for `capacity` undrained events, watching a target now of `size`.
    pub fn new(target: Target, filter: EventFilter, capacity: usize, size: u64) -> Subscription {
        Subscription {
            target,
            owner: 0,
            filter,
            queue: VecDeque::with_capacity(capacity),
            capacity,
            last_seq: 0,
            missed: 0,
            delta_base: size,
        }
    }

    /// Queues `kind` if it passes the filter; a full queue counts it as missed.
    /// Returns whether it was queued.
    pub fn offer(&mut self, kind: EventKind) -> bool {
        let wanted = match kind {
            EventKind::Threshold { .. } | EventKind::Delta { .. } | EventKind::Destroyed => true,
            EventKind::ConfigChanged | EventKind::Reclaim { .. } | EventKind::OverLimit { .. } => {
                self.filter.config
            }
            EventKind::ProcessAssociated { .. } | EventKind::ProcessDisassociated { .. } => {
                self.filter.processes
            }
            EventKind::ChildCreated { .. } | EventKind::ChildDestroyed { .. } => {
                self.filter.children
            }
            EventKind::Violation { .. } => self.filter.violations,
        };
        if !wanted {
            return false;
        }
        self.last_seq += 1;
        if self.queue.len() >= self.capacity {
            self.missed += 1;
            return false;
        }
        self.queue.push_back(Event {
            seq: self.last_seq,
            target: self.target,
            kind,
        });
        true
    }

    /// Reports a size change from `old` to `new` as threshold and delta events.
    pub fn size_changed(&mut self, old: u64, new: u64) {
        if let Some(threshold) = self.filter.threshold {
            let up = old < threshold && new >= threshold;
            let down = old >= threshold && new < threshold;
            if up || down {
                self.offer(EventKind::Threshold {
                    threshold,
                    size: new,
                    up,
                });
            }
        }
        if let Some(delta) = self.filter.delta {
            let previous = self.delta_base;
            if new.abs_diff(previous) >= delta
                && self.offer(EventKind::Delta {
                    previous,
                    size: new,
                })
            {
                self.delta_base = new;
            }
        }
    }

    /// Takes every queued event and the missed count.
    pub fn drain(&mut self) -> EventBatch {
        EventBatch {
            events: self.queue.drain(..).collect(),
            missed: std::mem::take(&mut self.missed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(filter: EventFilter, capacity: usize) -> Subscription {
        Subscription::new(Target::Class(ClassId(0)), filter, capacity, 0)
    }

    #[test]
    fn threshold_reports_up_and_down_crossings_only() {
        let mut s = sub(
            EventFilter {
                threshold: Some(100),
                ..EventFilter::default()
            },
            8,
        );
        s.size_changed(0, 50);
        s.size_changed(50, 100);
        s.size_changed(100, 150);
        s.size_changed(150, 99);
        let kinds: Vec<_> = s.drain().events.into_iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            vec![
                EventKind::Threshold {
                    threshold: 100,
                    size: 100,
                    up: true
                },
                EventKind::Threshold {
                    threshold: 100,
                    size: 99,
                    up: false
                },
            ]
        );
    }

    #[test]
    fn delta_is_measured_from_the_last_delivered_event() {
        let mut s = sub(
            EventFilter {
                delta: Some(10),
                ..EventFilter::default()
            },
            8,
        );
        for size in [4, 8, 12, 16, 21, 30] {
            s.size_changed(size - 4, size);
        }
        let sizes: Vec<_> = s
            .drain()
            .events
            .into_iter()
            .map(|e| match e.kind {
                EventKind::Delta { previous, size } => (previous, size),
                _ => (0, 0),
            })
            .collect();
        assert_eq!(sizes, vec![(0, 12), (12, 30)]);
    }

    #[test]
    fn full_queue_counts_missed_and_skips_sequence_numbers() {
        let mut s = sub(EventFilter::default(), 2);
        for _ in 0..5 {
            s.offer(EventKind::ConfigChanged);
        }
        let batch = s.drain();
        assert_eq!(batch.missed, 3);
        assert_eq!(
            batch.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        s.offer(EventKind::ConfigChanged);
        let batch = s.drain();
        assert_eq!(batch.missed, 0);
        assert_eq!(batch.events.first().map(|e| e.seq), Some(6));
    }

    #[test]
    fn filtered_kinds_are_neither_queued_nor_numbered() {
        let mut s = sub(
            EventFilter {
                config: false,
                ..EventFilter::default()
            },
            4,
        );
        s.offer(EventKind::ConfigChanged);
        s.offer(EventKind::ProcessAssociated { pid: 7 });
        let batch = s.drain();
        assert_eq!(batch.events.len(), 1);
        assert_eq!(batch.events.first().map(|e| e.seq), Some(1));
    }
}
