//! The VMM's side of a balloon: the target it sets and the figures it reads.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::STAT_TAGS;
use crate::virtio::{lock, Interrupt};

/// Figures the VMM reads and the target it sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BalloonStatus {
    /// Pages the VMM asks the guest to hold in the balloon.
    pub target_pages: u32,
    /// Pages the guest says the balloon holds.
    pub actual_pages: u32,
    /// Pages the balloon holds: each inflated page counts once, until deflated.
    pub inflated_pages: u64,
    /// Bytes the guest reported free and the host released.
    pub reported_bytes: u64,
    /// Latest statistics by tag (swap in/out, major/minor faults, free, total, …).
    pub stats: [Option<u64>; STAT_TAGS],
    /// Requests refused: page numbers outside guest memory, a page inflated while the
    /// balloon holds it or deflated while it does not, wrong descriptor direction,
    /// lengths that are not whole entries.
    pub rejected: u64,
}

/// Called with the balloon's figures after the guest changed them.
pub type Observer = Arc<dyn Fn(&BalloonStatus) + Send + Sync>;

#[derive(Default)]
pub(super) struct Shared {
    pub(super) status: BalloonStatus,
    pub(super) interrupt: Option<Interrupt>,
    pub(super) stats_wanted: bool,
    pub(super) observer: Option<Observer>,
}

/// Tells the observer, if any, the figures as they are now (outside the lock).
pub(super) fn announce(shared: &Mutex<Shared>) {
    let (observer, status) = {
        let shared = lock(shared);
        (shared.observer.clone(), shared.status.clone())
    };
    if let Some(observer) = observer {
        observer(&status);
    }
}

/// The VMM's side of a balloon: set the target, read what the guest did.
#[derive(Clone)]
pub struct BalloonHandle {
    pub(super) shared: Arc<Mutex<Shared>>,
    pub(super) kick: Arc<EventFd>,
}

impl BalloonHandle {
    /// Asks the guest to hold `pages` 4 KiB pages; the guest hears of it by a
    /// configuration interrupt once the driver runs.
    pub fn set_target(&self, pages: u32) -> std::io::Result<()> {
        let mut shared = lock(&self.shared);
        shared.status.target_pages = pages;
        match &shared.interrupt {
            Some(interrupt) => interrupt.config_changed(),
            None => Ok(()),
        }
    }

    /// A snapshot of the balloon's figures.
    pub fn status(&self) -> BalloonStatus {
        lock(&self.shared).status.clone()
    }

    /// Calls `observer` whenever the guest inflated, deflated, reported free pages or
    /// wrote `actual`.
    pub fn observe(&self, observer: Observer) {
        lock(&self.shared).observer = Some(observer);
    }

    /// Asks the guest for fresh statistics (they land in [`BalloonStatus::stats`]).
    pub fn request_stats(&self) -> std::io::Result<()> {
        lock(&self.shared).stats_wanted = true;
        self.kick.write(1)
    }
}

/// Interrupts the guest for the used ring of `queue` if it wants to hear of it.
pub(super) fn signal(shared: &Mutex<Shared>, queue: &mut Queue, mem: &GuestMemoryMmap) {
    if queue.needs_notification(mem).unwrap_or(true) {
        if let Some(interrupt) = &lock(shared).interrupt {
            let _ = interrupt.used_ring();
        }
    }
}
