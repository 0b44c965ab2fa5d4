//! The VMM's end of the agent port: bounded byte buffers each way, and a blocking reader
//! and writer over them for a protocol server.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use vmm_sys_util::eventfd::EventFd;

use super::BUFFER_LIMIT;
use crate::virtio::lock;

/// Both directions of the agent port, shared by the device and the VMM's end.
#[derive(Default)]
pub(super) struct Channel {
    pub(super) to_host: VecDeque<u8>,
    pub(super) to_guest: VecDeque<u8>,
    pub(super) guest_open: bool,
    pub(super) rejected: u64,
    pub(super) closed: bool,
}

/// The VMM's end of the agent port: a bounded byte stream each way.
#[derive(Clone)]
pub struct AgentChannel {
    pub(super) channel: Arc<Mutex<Channel>>,
    pub(super) moved: Arc<Condvar>,
    pub(super) kick: Arc<EventFd>,
}

impl AgentChannel {
    /// Queues bytes for the guest; returns how many fit (the rest must be written again later).
    pub fn write(&self, bytes: &[u8]) -> usize {
        let n = {
            let mut c = lock(&self.channel);
            let n = bytes
                .len()
                .min(BUFFER_LIMIT.saturating_sub(c.to_guest.len()));
            c.to_guest.extend(bytes.iter().take(n));
            n
        };
        if n > 0 {
            let _ = self.kick.write(1);
        }
        n
    }

    /// Takes up to `buf.len()` bytes the guest sent; returns how many.
    pub fn read(&self, buf: &mut [u8]) -> usize {
        let n = {
            let mut c = lock(&self.channel);
            let n = buf.len().min(c.to_host.len());
            for (dst, src) in buf.iter_mut().zip(c.to_host.drain(..n)) {
                *dst = src;
            }
            n
        };
        if n > 0 {
            let _ = self.kick.write(1);
        }
        n
    }

    /// Whether the guest has the port open.
    pub fn guest_open(&self) -> bool {
        lock(&self.channel).guest_open
    }

    /// Transmit chains and control messages refused as malformed.
    pub fn rejected(&self) -> u64 {
        lock(&self.channel).rejected
    }

    /// A blocking reader and writer over the channel, for a protocol server.
    pub fn stream(&self) -> (AgentReader, AgentWriter) {
        (AgentReader(self.clone()), AgentWriter(self.clone()))
    }

    /// Ends the stream: blocked readers see end of file, writers an error.
    pub fn close(&self) {
        lock(&self.channel).closed = true;
        self.moved.notify_all();
    }
}

/// Reads what the guest sent, waiting for bytes; end of file once closed.
pub struct AgentReader(AgentChannel);

impl Read for AgentReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let channel = &self.0;
        let mut c = lock(&channel.channel);
        while c.to_host.is_empty() && !c.closed {
            c = channel
                .moved
                .wait(c)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let n = buf.len().min(c.to_host.len());
        for (dst, src) in buf.iter_mut().zip(c.to_host.drain(..n)) {
            *dst = src;
        }
        drop(c);
        if n > 0 {
            let _ = channel.kick.write(1);
        }
        Ok(n)
    }
}

/// Writes to the guest, waiting while its buffer is full.
pub struct AgentWriter(AgentChannel);

impl Write for AgentWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let channel = &self.0;
        loop {
            {
                let mut c = lock(&channel.channel);
                if c.closed {
                    return Err(std::io::ErrorKind::BrokenPipe.into());
                }
                if c.to_guest.len() >= BUFFER_LIMIT {
                    c = channel
                        .moved
                        .wait(c)
                        .unwrap_or_else(PoisonError::into_inner);
                    drop(c);
                    continue;
                }
            }
            return Ok(channel.write(bytes));
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
