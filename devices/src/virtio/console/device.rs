//! The console device model: port 0 a plain console, port 1 the agent port, announced
//! and opened through the control queues.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::handle::Channel;
use super::queues::{chain_len, read_chain};
use super::{
    AgentChannel, AGENT_PORT, AGENT_PORT_NAME, AGENT_RX, AGENT_TX, BUFFER_LIMIT, CONSOLE_PORT,
    CONTROL_BACKLOG, CONTROL_RX, CONTROL_TX, DEVICE_ADD, DEVICE_READY, DEVICE_TYPE, F_MULTIPORT,
    MAX_CHAIN, PORT0_TX, PORT_NAME, PORT_OPEN, PORT_READY, QUEUE_SIZE,
};
use crate::virtio::{
    lock, read_config_bytes, write_chain, ActivateError, Activation, Interrupt, VirtioDevice,
    VIRTIO_F_VERSION_1,
};

/// The console device model.
pub struct Console {
    channel: Arc<Mutex<Channel>>,
    moved: Arc<Condvar>,
    kick: Arc<EventFd>,
    mem: Option<GuestMemoryMmap>,
    queues: Vec<Queue>,
    interrupt: Option<Interrupt>,
    control_out: VecDeque<Vec<u8>>,
}

impl Console {
    /// A console with the agent port; `kick` wakes the event loop when the VMM side moved bytes.
    pub fn new(kick: EventFd) -> (Console, AgentChannel) {
        let channel = Arc::new(Mutex::new(Channel::default()));
        let moved = Arc::new(Condvar::new());
        let kick = Arc::new(kick);
        let handle = AgentChannel {
            channel: Arc::clone(&channel),
            moved: Arc::clone(&moved),
            kick: Arc::clone(&kick),
        };
        let console = Console {
            channel,
            moved,
            kick,
            mem: None,
            queues: Vec::new(),
            interrupt: None,
            control_out: VecDeque::new(),
        };
        (console, handle)
    }

    fn control(&mut self, id: u32, event: u16, value: u16, extra: &[u8]) {
        if self.control_out.len() >= CONTROL_BACKLOG {
            lock(&self.channel).rejected += 1;
            return;
        }
        let mut msg = Vec::with_capacity(8 + extra.len());
        msg.extend_from_slice(&id.to_le_bytes());
        msg.extend_from_slice(&event.to_le_bytes());
        msg.extend_from_slice(&value.to_le_bytes());
        msg.extend_from_slice(extra);
        self.control_out.push_back(msg);
    }

    fn handle_control(&mut self, id: u32, event: u16, value: u16) {
        match event {
            DEVICE_READY if value == 1 => {
                self.control(0, DEVICE_ADD, 0, &[]);
                self.control(AGENT_PORT, DEVICE_ADD, 0, &[]);
            }
            PORT_READY if value == 1 && id == 0 => self.control(0, CONSOLE_PORT, 1, &[]),
            PORT_READY if value == 1 && id == AGENT_PORT => {
                self.control(AGENT_PORT, PORT_NAME, 1, AGENT_PORT_NAME.as_bytes());
                self.control(AGENT_PORT, PORT_OPEN, 1, &[]);
            }
            PORT_OPEN if id == AGENT_PORT => lock(&self.channel).guest_open = value == 1,
            _ => {}
        }
    }

    /// Moves everything that can move: control messages both ways, agent bytes both ways,
    /// console output drained. Raises the interrupt if any used ring changed.
    pub fn pump(&mut self) {
        let Some(mem) = self.mem.clone() else { return };
        let mut used = [false; 6];
        used[CONTROL_TX] = self.read_control(&mem);
        used[CONTROL_RX] = self.write_control(&mem);
        used[PORT0_TX] = self.drain_console(&mem);
        used[AGENT_TX] = self.read_agent(&mem);
        used[AGENT_RX] = self.write_agent(&mem);
        if used[AGENT_TX] || used[AGENT_RX] {
            self.moved.notify_all();
        }
        let notify = used.iter().enumerate().any(|(i, u)| {
            *u && self
                .queues
                .get_mut(i)
                .is_some_and(|q| q.needs_notification(&mem).unwrap_or(true))
        });
        if notify {
            if let Some(interrupt) = &self.interrupt {
                let _ = interrupt.used_ring();
            }
        }
    }

    fn read_control(&mut self, mem: &GuestMemoryMmap) -> bool {
        let mut messages = Vec::new();
        let mut any = false;
        if let Some(q) = self.queues.get_mut(CONTROL_TX) {
            while let Some(chain) = q.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let mut header = [0u8; 8];
                let ok = read_chain(mem, chain, &mut header).is_some_and(|n| n >= 8);
                if ok {
                    let id = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
                    let event = u16::from_le_bytes([header[4], header[5]]);
                    let value = u16::from_le_bytes([header[6], header[7]]);
                    messages.push((id, event, value));
                } else {
                    lock(&self.channel).rejected += 1;
                }
                any |= q.add_used(mem, head, 0).is_ok();
            }
        }
        for (id, event, value) in messages {
            self.handle_control(id, event, value);
        }
        any
    }

    fn write_control(&mut self, mem: &GuestMemoryMmap) -> bool {
        let mut any = false;
        let Some(q) = self.queues.get_mut(CONTROL_RX) else {
            return false;
        };
        while let Some(msg) = self.control_out.front() {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let written = write_chain(mem, chain, msg);
            if written < msg.len() {
                lock(&self.channel).rejected += 1;
            }
            self.control_out.pop_front();
            any |= q.add_used(mem, head, written as u32).is_ok();
        }
        any
    }

    fn drain_console(&mut self, mem: &GuestMemoryMmap) -> bool {
        let mut any = false;
        if let Some(q) = self.queues.get_mut(PORT0_TX) {
            while let Some(chain) = q.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                any |= q.add_used(mem, head, 0).is_ok();
            }
        }
        any
    }

    fn read_agent(&mut self, mem: &GuestMemoryMmap) -> bool {
        let mut any = false;
        let Some(q) = self.queues.get_mut(AGENT_TX) else {
            return false;
        };
        loop {
            let room = BUFFER_LIMIT.saturating_sub(lock(&self.channel).to_host.len());
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let Some(len) = chain_len(&chain, false) else {
                lock(&self.channel).rejected += 1;
                any |= q.add_used(mem, head, 0).is_ok();
                continue;
            };
            if len > room {
                // No room yet: leave the chain for when the VMM has read.
                q.go_to_previous_position();
                break;
            }
            let mut bytes = vec![0u8; len];
            let n = read_chain(mem, chain, &mut bytes).unwrap_or(0);
            let mut c = lock(&self.channel);
            if n == len {
                c.to_host.extend(&bytes);
            } else {
                c.rejected += 1;
            }
            drop(c);
            any |= q.add_used(mem, head, 0).is_ok();
        }
        any
    }

    fn write_agent(&mut self, mem: &GuestMemoryMmap) -> bool {
        let mut any = false;
        let Some(q) = self.queues.get_mut(AGENT_RX) else {
            return false;
        };
        loop {
            let pending: Vec<u8> = {
                let c = lock(&self.channel);
                if c.to_guest.is_empty() {
                    break;
                }
                c.to_guest.iter().take(MAX_CHAIN).copied().collect()
            };
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let written = write_chain(mem, chain, &pending);
            if written == 0 {
                lock(&self.channel).rejected += 1;
            }
            lock(&self.channel).to_guest.drain(..written);
            any |= q.add_used(mem, head, written as u32).is_ok();
        }
        any
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | F_MULTIPORT
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 6]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols, rows (unused), max_nr_ports = 2, emerg_wr.
        let mut config = [0u8; 12];
        config[4..8].copy_from_slice(&2u32.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let need = if activation.features & F_MULTIPORT != 0 {
            6
        } else {
            2
        };
        if activation.queues.len() < need {
            return Err(ActivateError::Queues {
                got: activation.queues.len(),
                need,
            });
        }
        self.queues = activation.queues;
        self.mem = Some(activation.mem);
        self.interrupt = Some(activation.interrupt);
        Ok(())
    }

    fn queue_notified(&mut self, _index: usize) {
        self.pump();
    }

    fn backend_event(&self) -> Option<&EventFd> {
        Some(&self.kick)
    }

    fn backend_ready(&mut self) {
        self.pump();
    }

    fn reset(&mut self) {
        self.queues.clear();
        self.mem = None;
        self.interrupt = None;
        self.control_out.clear();
        lock(&self.channel).guest_open = false;
    }
}
