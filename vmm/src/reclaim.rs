//! Balloon-style reconfiguration: lowering a partition's max below its use and driving
//! the guest until use fits (or a deadline passes), and raising a max giving memory back.
//!
//! A reclaim of a **sysram** partition sets the lower max as pending (the agent mirrors
//! it into the guest's cgroup, so the guest kernel reclaims), follows the use the agent
//! reports, and inflates the balloon by every page the partition gave back. It is
//! `done` when use fits the new max and the balloon holds what was given back. At the
//! deadline with use still above the new max it is `expired`: the lower max is withdrawn
//! (the previous max stays in force) and the balloon keeps the pages the guest did hand
//! back, which the sysram class no longer counts.
//!
//! A reclaim of a **zoned** sysram partition needs no balloon: the agent mirrors the
//! lower max into the cgroup so the guest frees the memory; once use fits, the lower max
//! is in force and the VMM's zone follower lowers the zone's requested size to it, the
//! guest's driver unplugs the freed blocks and the VMM punches them out. (Lowering the
//! zone first would have the guest move the partition's pages to node 0, not free them.)
//! It is `done` when use fits and the zone's plugged size is within the new max; at the
//! deadline it is `expired` as above, the zone keeping the max that stays in force.
//!
//! A reclaim of a **typed** class partition asks the partition's users through a
//! `reclaim` event to free extents. At the deadline the VMM, which owns typed memory,
//! takes back the newest extents charged to the partition until use fits: `revoked`.
//!
//! Either ends `abandoned` if the partition is destroyed or its limits are changed by
//! someone else meanwhile; the engine's figures stay whatever those changes made them.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use devices::virtio::balloon::{BalloonHandle, BALLOON_PAGE};
use mempart::{Credential, Engine, Errno, SetOutcome, SYSRAM, UNLIMITED};
use serde::{Deserialize, Serialize};

use crate::service::{PartitionService, RevokedExtent};

/// Deadline when the caller gives none.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);
/// Longest deadline accepted.
pub const MAX_DEADLINE: Duration = Duration::from_secs(3600);
/// Finished reclaims kept for `GET /reclaim`; older ones are forgotten.
pub const KEPT_FINISHED: usize = 32;
/// Longest a reclaim waits without looking at the balloon again.
const BALLOON_POLL: Duration = Duration::from_millis(20);

/// Where a reclaim stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReclaimState {
    /// Waiting for the guest.
    Running,
    /// Use fits the new max, which is in force.
    Done,
    /// Deadline passed with use above the new max; the previous max stays in force.
    Expired,
    /// Deadline passed; the VMM took typed extents back until use fit the new max.
    Revoked,
    /// The partition went away or its limits were changed by someone else.
    Abandoned,
}

/// Progress of one reclaim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReclaimStatus {
    /// Its number.
    pub id: u64,
    /// The partition.
    pub path: String,
    /// Its class.
    pub class: String,
    /// The max asked for.
    pub max: u64,
    /// The max before.
    pub previous_max: u64,
    /// Use when the reclaim started.
    pub start_used: u64,
    /// Use now.
    pub used: u64,
    /// Bytes the partition gave back so far (lowest use seen below the start).
    pub given_back: u64,
    /// Balloon pages asked of the guest on this reclaim's behalf (sysram).
    pub balloon_pages: u64,
    /// Extents the VMM took back at the deadline (typed classes).
    pub revoked: Vec<RevokedExtent>,
    /// Bytes of the partition's zone plugged now (zoned partitions).
    pub zone_plugged: Option<u64>,
    /// Bytes of the zone's host memory backed now (zoned partitions).
    pub zone_host_resident: Option<u64>,
    /// Where it stands.
    pub state: ReclaimState,
    /// Milliseconds since it started.
    pub elapsed_ms: u64,
    /// Its deadline, in milliseconds from the start.
    pub deadline_ms: u64,
    /// What happened, in words.
    pub message: String,
}

#[derive(Default)]
struct Table {
    next: u64,
    entries: BTreeMap<u64, ReclaimStatus>,
    /// Bytes the balloon holds because of reclaims; raising a max gives them back.
    ballooned: u64,
}

/// Starts, runs and reports reclaims of one VM.
#[derive(Clone)]
pub struct Reclaimer {
    engine: Arc<Mutex<Engine>>,
    service: PartitionService,
    balloon: BalloonHandle,
    table: Arc<(Mutex<Table>, Condvar)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Reclaimer {
    /// A reclaimer over the VM's engine, service (whose changes it follows) and balloon.
    pub fn new(
        engine: Arc<Mutex<Engine>>,
        service: PartitionService,
        balloon: BalloonHandle,
    ) -> Reclaimer {
        Reclaimer {
            engine,
            service,
            balloon,
            table: Arc::default(),
        }
    }

    /// Lowers `path`'s max to `max` with reclaim. When use already fits the reclaim is
    /// `done` at once; otherwise it runs on its own thread until `deadline` (capped at
    /// [`MAX_DEADLINE`]). Refused like the engine's limit change (`EINVAL`, `EACCES`,
    /// `EPERM`, `ENOENT`), and with `EBUSY` while another reclaim of `path` runs.
    pub fn start(
        &self,
        path: &str,
        max: u64,
        deadline: Duration,
    ) -> Result<ReclaimStatus, mempart::Error> {
        let deadline = deadline.min(MAX_DEADLINE);
        let running = lock(&self.table.0)
            .entries
            .values()
            .any(|r| r.path == path && r.state == ReclaimState::Running);
        if running {
            return Err(mempart::Error::new(
                Errno::Ebusy,
                path,
                "a reclaim of this partition is running",
            ));
        }
        let (before, outcome) = {
            let mut e = lock(&self.engine);
            let before = e.metrics(&Credential::Host, path)?;
            let outcome = e.set_limits(&Credential::Host, path, None, Some(max), true)?;
            (before, outcome)
        };
        self.service.changed();
        let (state, message) = match outcome {
            SetOutcome::Applied => (ReclaimState::Done, "use already fits".to_string()),
            SetOutcome::ReclaimPending { excess } => (
                ReclaimState::Running,
                format!("asked the guest to give back {excess} bytes"),
            ),
        };
        let status = {
            let mut table = lock(&self.table.0);
            table.next += 1;
            let status = ReclaimStatus {
                id: table.next,
                path: before.path.clone(),
                class: before.class.clone(),
                max,
                previous_max: before.current.limits.max,
                start_used: before.used,
                used: before.used,
                given_back: 0,
                balloon_pages: 0,
                revoked: Vec::new(),
                zone_plugged: None,
                zone_host_resident: None,
                state,
                elapsed_ms: 0,
                deadline_ms: millis(deadline),
                message,
            };
            table.entries.insert(status.id, status.clone());
            prune(&mut table.entries);
            status
        };
        if state == ReclaimState::Running {
            let worker = self.clone();
            let id = status.id;
            let started = Instant::now();
            std::thread::Builder::new()
                .name(format!("reclaim-{id}"))
                .spawn(move || worker.run(id, started, deadline))
                .map_err(|e| {
                    mempart::Error::new(Errno::Enomem, path, format!("no reclaim thread: {e}"))
                })?;
        }
        Ok(status)
    }

    /// A reclaim's progress.
    pub fn status(&self, id: u64) -> Option<ReclaimStatus> {
        lock(&self.table.0).entries.get(&id).cloned()
    }

    /// Every running reclaim and the latest finished ones.
    pub fn list(&self) -> Vec<ReclaimStatus> {
        lock(&self.table.0).entries.values().cloned().collect()
    }

    /// Waits until reclaim `id` satisfies `until` or `timeout` passes; returns its status
    /// then (`None` for an unknown id).
    pub fn wait(
        &self,
        id: u64,
        timeout: Duration,
        until: impl Fn(&ReclaimStatus) -> bool,
    ) -> Option<ReclaimStatus> {
        let table = lock(&self.table.0);
        let (table, _) = self
            .table
            .1
            .wait_timeout_while(table, timeout, |t| {
                t.entries.get(&id).is_some_and(|s| !until(s))
            })
            .unwrap_or_else(PoisonError::into_inner);
        table.entries.get(&id).cloned()
    }

    /// Changes `path`'s limits with host authority, without reclaim. Raising a sysram
    /// partition's max deflates the balloon by as much of the raise as reclaims put in
    /// it; returns the engine's outcome and the pages given back to the guest.
    pub fn set_limits(
        &self,
        path: &str,
        min: Option<u64>,
        max: Option<u64>,
    ) -> Result<(SetOutcome, u64), mempart::Error> {
        let (outcome, raise) = {
            let mut e = lock(&self.engine);
            let before = e.metrics(&Credential::Host, path)?;
            let outcome = e.set_limits(&Credential::Host, path, min, max, false)?;
            let old = before.current.limits.max;
            let raise = match max {
                Some(new) if before.class == SYSRAM && before.zone.is_none() && new > old => {
                    if new == UNLIMITED {
                        u64::MAX
                    } else {
                        new - old
                    }
                }
                _ => 0,
            };
            (outcome, raise)
        };
        self.service.changed();
        let pages = {
            let mut table = lock(&self.table.0);
            let pages = raise.min(table.ballooned) / BALLOON_PAGE;
            table.ballooned -= pages * BALLOON_PAGE;
            pages
        };
        if pages > 0 {
            let target = u64::from(self.balloon.status().target_pages).saturating_sub(pages);
            let _ = self
                .balloon
                .set_target(u32::try_from(target).unwrap_or(u32::MAX));
        }
        Ok((outcome, pages))
    }

    /// Bytes the balloon holds on reclaims' behalf.
    pub fn ballooned(&self) -> u64 {
        lock(&self.table.0).ballooned
    }

    /// Records `change` on reclaim `id` and wakes waiters.
    fn update(&self, id: u64, change: impl FnOnce(&mut ReclaimStatus)) {
        let mut table = lock(&self.table.0);
        if let Some(status) = table.entries.get_mut(&id) {
            change(status);
        }
        drop(table);
        self.table.1.notify_all();
    }

    /// Follows reclaim `id` until it ends.
    fn run(&self, id: u64, started: Instant, deadline: Duration) {
        let Some(first) = self.status(id) else { return };
        let mut sysram = first.class == SYSRAM;
        let end = started + deadline;
        let mut lowest = first.start_used;
        let mut balloon_pages = 0u64;
        let mut seen = self.service.generation();
        loop {
            let now = Instant::now();
            let elapsed_ms = millis(now.duration_since(started));
            let metrics = lock(&self.engine).metrics(&Credential::Host, &first.path);
            let mut m = match metrics {
                Ok(m) => m,
                Err(e) => {
                    return self.update(id, |s| {
                        s.state = ReclaimState::Abandoned;
                        s.elapsed_ms = elapsed_ms;
                        s.message = format!("the partition went away: {e}");
                    });
                }
            };
            if m.pending_max != Some(first.max) && m.current.limits.max != first.max {
                return self.update(id, |s| {
                    s.state = ReclaimState::Abandoned;
                    s.used = m.used;
                    s.elapsed_ms = elapsed_ms;
                    s.message = "the partition's limits were changed meanwhile".into();
                });
            }
            self.service.measure_zone(&mut m);
            // A zoned partition gives memory back by unplugging, not through the balloon.
            sysram &= m.zone.is_none();
            let zone_fits = m.zone.is_none_or(|z| z.plugged <= first.max);
            if sysram && m.used < lowest {
                let pages = (lowest - m.used) / BALLOON_PAGE;
                if pages > 0 {
                    lowest -= pages * BALLOON_PAGE;
                    balloon_pages += pages;
                    self.inflate(pages);
                }
            }
            let balloon = self.balloon.status();
            let (held, target) = (balloon.inflated_pages, u64::from(balloon.target_pages));
            let fits = m.pending_max.is_none();
            let balloon_full = !sysram || held >= target;
            let given_back = first.start_used - lowest.min(first.start_used);
            let progress = |s: &mut ReclaimStatus| {
                s.used = m.used;
                s.given_back = if sysram {
                    given_back
                } else {
                    first.start_used.saturating_sub(m.used)
                };
                s.balloon_pages = balloon_pages;
                s.elapsed_ms = elapsed_ms;
                s.zone_plugged = m.zone.map(|z| z.plugged);
                s.zone_host_resident = m.zone.map(|z| z.host_resident);
            };
            if fits && balloon_full && zone_fits {
                return self.update(id, |s| {
                    progress(s);
                    s.state = ReclaimState::Done;
                    s.message = match m.zone {
                        Some(z) => format!(
                            "use {} fits the new max {}; its zone has {} bytes plugged",
                            m.used, first.max, z.plugged
                        ),
                        None => format!("use {} fits the new max {}", m.used, first.max),
                    };
                });
            }
            if now >= end {
                if let (true, Some(z)) = (fits, m.zone.filter(|_| !zone_fits)) {
                    return self.update(id, |s| {
                        progress(s);
                        s.state = ReclaimState::Expired;
                        s.message = format!(
                            "deadline: use fits the new max {}, which is in force, but the guest \
                             still has {} bytes of its zone plugged",
                            first.max, z.plugged
                        );
                    });
                }
                return self.expire(id, &first, fits, held, target, progress);
            }
            self.update(id, progress);
            seen = self
                .service
                .wait_change(seen, end.duration_since(now).min(BALLOON_POLL));
        }
    }

    /// Ends reclaim `first.id` at its deadline, as the module documentation says.
    fn expire(
        &self,
        id: u64,
        first: &ReclaimStatus,
        fits: bool,
        held: u64,
        target: u64,
        progress: impl Fn(&mut ReclaimStatus),
    ) {
        if fits {
            return self.update(id, |s| {
                progress(s);
                s.state = ReclaimState::Done;
                s.message = format!(
                    "use fits the new max; at the deadline the balloon held {held} of {target} pages"
                );
            });
        }
        if first.class != SYSRAM {
            let (part, used) = {
                let e = lock(&self.engine);
                let part = e.resolve_partition(&first.path);
                let used = e.metrics(&Credential::Host, &first.path).map(|m| m.used);
                (part, used)
            };
            if let (Ok(part), Ok(used)) = (part, used) {
                let revoked =
                    self.service
                        .revoke_newest(&first.class, part, used.saturating_sub(first.max));
                let after = lock(&self.engine).metrics(&Credential::Host, &first.path);
                if let Some(after) = after.ok().filter(|m| m.pending_max.is_none()) {
                    let used = after.used;
                    return self.update(id, |s| {
                        progress(s);
                        s.used = used;
                        s.given_back = s.start_used.saturating_sub(used);
                        s.state = ReclaimState::Revoked;
                        s.message = format!(
                            "deadline: took back {} extents; use {used} fits the new max",
                            revoked.len()
                        );
                        s.revoked = revoked;
                    });
                }
                self.update(id, |s| s.revoked = revoked);
            }
        }
        let withdrawn = lock(&self.engine).withdraw_reclaim(&Credential::Host, &first.path);
        self.service.changed();
        let used = lock(&self.engine)
            .metrics(&Credential::Host, &first.path)
            .map(|m| m.used);
        self.update(id, |s| {
            progress(s);
            if let Ok(used) = used {
                s.used = used;
            }
            s.state = ReclaimState::Expired;
            s.message = match withdrawn {
                Ok(_) => format!(
                    "deadline: use {} is above the new max {}; the max stays {}, the balloon keeps the {} bytes given back",
                    s.used, s.max, s.previous_max, s.given_back
                ),
                Err(e) => format!("deadline: withdrawing the lower max failed: {e}"),
            };
        });
    }

    /// Asks the guest to hold `pages` more balloon pages.
    fn inflate(&self, pages: u64) {
        let target = u64::from(self.balloon.status().target_pages).saturating_add(pages);
        let _ = self
            .balloon
            .set_target(u32::try_from(target).unwrap_or(u32::MAX));
        lock(&self.table.0).ballooned += pages * BALLOON_PAGE;
    }
}

/// Forgets the oldest finished reclaims beyond [`KEPT_FINISHED`].
fn prune(entries: &mut BTreeMap<u64, ReclaimStatus>) {
    let finished: Vec<u64> = entries
        .iter()
        .filter(|(_, s)| s.state != ReclaimState::Running)
        .map(|(id, _)| *id)
        .collect();
    for id in finished
        .iter()
        .take(finished.len().saturating_sub(KEPT_FINISHED))
    {
        entries.remove(id);
    }
}
