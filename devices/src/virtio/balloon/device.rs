//! The balloon device model: its queues by role, its configuration space, activation
//! and reset.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::handle::{announce, signal, Shared};
use super::queues::{page_numbers, read_stats, reported_ranges, HeldPages};
use super::{BalloonHandle, DEVICE_TYPE, F_DEFLATE_ON_OOM, F_REPORTING, F_STATS_VQ, QUEUE_SIZE};
use crate::virtio::{
    lock, read_config_bytes, ActivateError, Activation, VirtioDevice, VIRTIO_F_VERSION_1,
};

/// What a queue is for, by the order the spec gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

/// The balloon device model.
pub struct Balloon {
    shared: Arc<Mutex<Shared>>,
    kick: Arc<EventFd>,
    features: u64,
    mem: Option<GuestMemoryMmap>,
    queues: Vec<(Role, Queue)>,
    stats_head: Option<u16>,
    held: HeldPages,
}

impl Balloon {
    /// A balloon offering statistics, deflate-on-OOM and free page reporting; `kick`
    /// wakes the event loop when the VMM asks for statistics.
    pub fn new(kick: EventFd) -> (Balloon, BalloonHandle) {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let kick = Arc::new(kick);
        let handle = BalloonHandle {
            shared: Arc::clone(&shared),
            kick: Arc::clone(&kick),
        };
        let balloon = Balloon {
            shared,
            kick,
            features: VIRTIO_F_VERSION_1 | F_STATS_VQ | F_DEFLATE_ON_OOM | F_REPORTING,
            mem: None,
            queues: Vec::new(),
            stats_head: None,
            held: HeldPages::default(),
        };
        (balloon, handle)
    }

    /// Asks the guest for fresh statistics by returning the buffer it left.
    fn request_stats(&mut self) {
        let (Some(head), Some(mem)) = (self.stats_head.take(), self.mem.as_ref()) else {
            return;
        };
        if let Some((_, queue)) = self.queues.iter_mut().find(|(r, _)| *r == Role::Stats) {
            if queue.add_used(mem, head, 0).is_ok() {
                signal(&self.shared, queue, mem);
            }
        }
    }

    fn process(&mut self, index: usize) {
        let Some(mem) = self.mem.clone() else { return };
        let Some((role, queue)) = self.queues.get_mut(index) else {
            return;
        };
        let role = *role;
        let mut used_any = false;
        let mut changed = false;
        while let Some(chain) = queue.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            let mut shared = lock(&self.shared);
            match role {
                Role::Inflate | Role::Deflate => {
                    changed = true;
                    let inflate = role == Role::Inflate;
                    page_numbers(&mem, chain, inflate, &self.held, &mut shared.status)
                }
                Role::Reporting => {
                    changed = true;
                    reported_ranges(&mem, chain, &mut shared.status)
                }
                Role::Stats => {
                    read_stats(&mem, chain, &mut shared.status);
                    self.stats_head = Some(head);
                    continue;
                }
            }
            drop(shared);
            if queue.add_used(&mem, head, 0).is_ok() {
                used_any = true;
            }
        }
        if used_any {
            signal(&self.shared, queue, &mem);
        }
        if changed {
            announce(&self.shared);
        }
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 4]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let shared = lock(&self.shared);
        let mut config = [0u8; 8];
        config[..4].copy_from_slice(&shared.status.target_pages.to_le_bytes());
        config[4..].copy_from_slice(&shared.status.actual_pages.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (bytes 4..8) is the driver's to write.
        if offset == 4 {
            if let Ok(bytes) = <[u8; 4]>::try_from(data) {
                lock(&self.shared).status.actual_pages = u32::from_le_bytes(bytes);
                announce(&self.shared);
            }
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let mut roles = vec![Role::Inflate, Role::Deflate];
        if activation.features & F_STATS_VQ != 0 {
            roles.push(Role::Stats);
        }
        if activation.features & F_REPORTING != 0 {
            roles.push(Role::Reporting);
        }
        if activation.queues.len() < roles.len() {
            return Err(ActivateError::Queues {
                got: activation.queues.len(),
                need: roles.len(),
            });
        }
        self.queues = roles.into_iter().zip(activation.queues).collect();
        self.held = HeldPages::of(&activation.mem);
        self.mem = Some(activation.mem);
        lock(&self.shared).interrupt = Some(activation.interrupt);
        Ok(())
    }

    fn queue_notified(&mut self, index: usize) {
        self.process(index);
    }

    fn backend_event(&self) -> Option<&EventFd> {
        Some(&self.kick)
    }

    fn backend_ready(&mut self) {
        if std::mem::take(&mut lock(&self.shared).stats_wanted) {
            self.request_stats();
        }
    }

    fn reset(&mut self) {
        self.queues.clear();
        self.mem = None;
        self.stats_head = None;
        // The guest owns all its memory again after a reset.
        self.held = HeldPages::default();
        let mut shared = lock(&self.shared);
        shared.interrupt = None;
        shared.status.actual_pages = 0;
        shared.status.inflated_pages = 0;
    }
}
