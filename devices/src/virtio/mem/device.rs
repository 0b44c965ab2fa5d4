//! The memory device model: its configuration space, the rules each request is checked
//! against, activation and reset.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::handle::{signal, status, Shared};
use super::queues::{read_request, write_response, Request};
use super::{
    BlockBacking, MemHandle, MemStatus, Plugged, RequestedSizeError, DEVICE_TYPE, F_ACPI_PXM,
    F_UNPLUGGED_INACCESSIBLE, QUEUE_SIZE, REQ_PLUG, REQ_STATE, REQ_UNPLUG, REQ_UNPLUG_ALL,
    RESP_ACK, RESP_ERROR, RESP_NACK, STATE_MIXED, STATE_PLUGGED, STATE_UNPLUGGED,
};
use crate::virtio::{
    lock, read_config_bytes, ActivateError, Activation, VirtioDevice, VIRTIO_F_VERSION_1,
};

/// Smallest block: a page.
const MIN_BLOCK: u64 = 4096;

/// Where a memory device's region lies and how it is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemConfig {
    /// Guest-physical start of the region.
    pub addr: u64,
    /// Bytes of the region.
    pub region_size: u64,
    /// Bytes of a block: a power of two, at least a page.
    pub block_size: u64,
    /// The ACPI proximity domain of the region's memory.
    pub node_id: u16,
}

/// A configuration the device cannot serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MemConfigError {
    /// The block size is not a power of two of at least a page.
    #[error("block size {0} is not a power of two of at least 4096")]
    BlockSize(u64),
    /// The region is empty, or its start or size is not a multiple of the block size.
    #[error("region 0x{addr:x}+0x{size:x} is empty or not aligned to its block size 0x{block:x}")]
    Region {
        /// Start.
        addr: u64,
        /// Size.
        size: u64,
        /// Block size.
        block: u64,
    },
    /// The size asked for at first does not fit the region.
    #[error("the size asked for at first: {0}")]
    Requested(RequestedSizeError),
}

impl MemConfig {
    fn check(&self) -> Result<u64, MemConfigError> {
        if self.block_size < MIN_BLOCK || !self.block_size.is_power_of_two() {
            return Err(MemConfigError::BlockSize(self.block_size));
        }
        let fits = self.addr.checked_add(self.region_size).is_some();
        if self.region_size == 0
            || !fits
            || self.addr % self.block_size != 0
            || self.region_size % self.block_size != 0
        {
            return Err(MemConfigError::Region {
                addr: self.addr,
                size: self.region_size,
                block: self.block_size,
            });
        }
        Ok(self.region_size / self.block_size)
    }
}

/// The memory device model.
pub struct Mem {
    shared: Arc<Mutex<Shared>>,
    mem: Option<GuestMemoryMmap>,
    queue: Option<Queue>,
}

impl Mem {
    /// A device over the region `config` describes, asking for `requested` bytes at first;
    /// `backing` maps and frees blocks as they are plugged and unplugged.
    pub fn new(
        config: MemConfig,
        requested: u64,
        backing: Box<dyn BlockBacking>,
    ) -> Result<(Mem, MemHandle), MemConfigError> {
        let blocks = config.check()?;
        let shared = Arc::new(Mutex::new(Shared {
            config,
            requested: 0,
            plugged: Plugged::new(blocks),
            backing,
            interrupt: None,
            requests: 0,
            errors: 0,
            refused: 0,
        }));
        let handle = MemHandle {
            shared: Arc::clone(&shared),
        };
        handle
            .set_requested(requested)
            .map_err(MemConfigError::Requested)?;
        let device = Mem {
            shared,
            mem: None,
            queue: None,
        };
        Ok((device, handle))
    }

    /// A snapshot of the figures.
    pub fn status(&self) -> MemStatus {
        status(&lock(&self.shared))
    }

    fn process(&mut self) {
        let (Some(mem), Some(queue)) = (self.mem.as_ref(), self.queue.as_mut()) else {
            return;
        };
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let (request, writer) = read_request(mem, chain);
            let mut shared = lock(&self.shared);
            shared.requests += 1;
            let (kind, state) = match request {
                Ok(request) => serve(&mut shared, request),
                Err(_) => (RESP_ERROR, 0),
            };
            if kind == RESP_ERROR {
                shared.errors += 1;
            }
            if kind == RESP_NACK {
                shared.refused += 1;
            }
            drop(shared);
            let written = writer.map_or(0, |mut w| write_response(&mut w, kind, state));
            if queue.add_used(mem, head, written).is_ok() {
                used_any = true;
            }
        }
        if used_any {
            signal(&self.shared, queue, mem);
        }
    }
}

/// The blocks `[first, first + n)` a request names, if they lie in the region.
fn range(shared: &Shared, request: &Request) -> Option<(u64, u64)> {
    let config = &shared.config;
    let offset = request.addr.checked_sub(config.addr)?;
    let n = u64::from(request.blocks);
    if n == 0 || offset % config.block_size != 0 {
        return None;
    }
    let first = offset / config.block_size;
    let end = first.checked_add(n)?;
    (end <= shared.plugged.blocks()).then_some((first, n))
}

/// Answers one request: the response type and, for STATE, the state.
fn serve(shared: &mut Shared, request: Request) -> (u16, u16) {
    match request.kind {
        REQ_PLUG => {
            let Some((first, n)) = range(shared, &request) else {
                return (RESP_ERROR, 0);
            };
            if shared.plugged.count_in(first, n) != 0 {
                return (RESP_ERROR, 0);
            }
            let after = (shared.plugged.count() + n).saturating_mul(shared.config.block_size);
            if after > shared.requested {
                return (RESP_NACK, 0);
            }
            for index in first..first + n {
                if shared.backing.plug(index).is_err() {
                    // Leave nothing of a failed request plugged.
                    for done in first..index {
                        if shared.backing.unplug(done).is_ok() {
                            shared.plugged.set(done, false);
                        }
                    }
                    return (RESP_ERROR, 0);
                }
                shared.plugged.set(index, true);
            }
            (RESP_ACK, 0)
        }
        REQ_UNPLUG => {
            let Some((first, n)) = range(shared, &request) else {
                return (RESP_ERROR, 0);
            };
            if shared.plugged.count_in(first, n) != n {
                return (RESP_ERROR, 0);
            }
            unplug(shared, first..first + n)
        }
        REQ_UNPLUG_ALL => {
            let plugged: Vec<u64> = shared.plugged.iter().collect();
            unplug(shared, plugged)
        }
        REQ_STATE => {
            let Some((first, n)) = range(shared, &request) else {
                return (RESP_ERROR, 0);
            };
            let state = match shared.plugged.count_in(first, n) {
                0 => STATE_UNPLUGGED,
                k if k == n => STATE_PLUGGED,
                _ => STATE_MIXED,
            };
            (RESP_ACK, state)
        }
        _ => (RESP_ERROR, 0),
    }
}

/// Unplugs `blocks`; a block the backing cannot free stays plugged and the answer is an
/// error.
fn unplug(shared: &mut Shared, blocks: impl IntoIterator<Item = u64>) -> (u16, u16) {
    let mut failed = false;
    for index in blocks {
        if shared.backing.unplug(index).is_ok() {
            shared.plugged.set(index, false);
        } else {
            failed = true;
        }
    }
    (if failed { RESP_ERROR } else { RESP_ACK }, 0)
}

impl VirtioDevice for Mem {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | F_ACPI_PXM | F_UNPLUGGED_INACCESSIBLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let shared = lock(&self.shared);
        let config = &shared.config;
        let plugged = shared.plugged.count() * config.block_size;
        let mut space = [0u8; 56];
        let fields: [(usize, &[u8]); 7] = [
            (0, &config.block_size.to_le_bytes()),
            (8, &config.node_id.to_le_bytes()),
            (16, &config.addr.to_le_bytes()),
            (24, &config.region_size.to_le_bytes()),
            // The whole region is usable.
            (32, &config.region_size.to_le_bytes()),
            (40, &plugged.to_le_bytes()),
            (48, &shared.requested.to_le_bytes()),
        ];
        for (at, bytes) in fields {
            if let Some(dst) = space.get_mut(at..at + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
        }
        read_config_bytes(&space, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Every field is the device's.
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Some(queue) = activation.queues.into_iter().next() else {
            return Err(ActivateError::Queues { got: 0, need: 1 });
        };
        self.queue = Some(queue);
        self.mem = Some(activation.mem);
        lock(&self.shared).interrupt = Some(activation.interrupt);
        Ok(())
    }

    fn queue_notified(&mut self, _index: usize) {
        self.process();
    }

    fn reset(&mut self) {
        // Plugged blocks stay plugged: a driver that starts again reads plugged_size and
        // unplugs what it does not know.
        self.queue = None;
        self.mem = None;
        lock(&self.shared).interrupt = None;
    }
}
