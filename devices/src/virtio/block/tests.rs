//! The block device against mock queues and real image files: data reaches the file at
//! the right offsets, read-only disks refuse writes, and every malformed chain is a status
//! (or, with nowhere to write one, an empty used entry) and a counted error.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;

use proptest::prelude::*;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_RO, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::virtio::{Activation, Interrupt, VirtioDevice};

const MEMORY: u64 = 0x100_0000;
const HEADER_AT: u64 = 0x10_0000;
const DATA_AT: u64 = 0x20_0000;
const STATUS_AT: u64 = 0x30_0000;
/// Image size in the tests: 64 sectors.
const IMAGE: u64 = 64 * SECTOR;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY as usize)])
        .unwrap_or_else(|e| panic!("{e}"))
}

/// An image of [`IMAGE`] bytes, byte i holding i % 251.
fn image() -> TempFile {
    let file = TempFile::new().unwrap_or_else(|e| panic!("{e}"));
    let bytes: Vec<u8> = (0..IMAGE).map(|i| (i % 251) as u8).collect();
    file.as_file()
        .write_all(&bytes)
        .unwrap_or_else(|e| panic!("{e}"));
    file
}

fn contents(file: &TempFile) -> Vec<u8> {
    let mut f = file.as_file();
    let mut out = Vec::new();
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.read_to_end(&mut out))
        .unwrap_or_else(|e| panic!("{e}"));
    out
}

struct Rig<'a> {
    mem: &'a GuestMemoryMmap,
    queue: MockSplitQueue<'a, GuestMemoryMmap>,
    block: Block,
    info: DiskInfo,
    next: u16,
}

fn rig<'a>(mem: &'a GuestMemoryMmap, file: &TempFile, read_only: bool) -> Rig<'a> {
    let disk = Disk::open(file.as_path(), read_only, "test-disk").unwrap_or_else(|e| panic!("{e}"));
    let (mut block, info) = Block::new(disk);
    let queue = MockSplitQueue::create(mem, GuestAddress(0), 64);
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap_or_else(|e| panic!("{e}"));
    block
        .activate(Activation {
            mem: mem.clone(),
            queues: vec![queue.create_queue().unwrap_or_else(|e| panic!("{e}"))],
            interrupt: Interrupt::new(irq),
            features: block.features(),
        })
        .unwrap_or_else(|e| panic!("{e}"));
    Rig {
        mem,
        queue,
        block,
        info,
        next: 0,
    }
}

fn header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = kind.to_le_bytes().to_vec();
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

impl Rig<'_> {
    /// Offers one chain of (addr, len, writable) and serves it; returns its used length
    /// and the status byte.
    fn submit(&mut self, descs: &[(u64, u32, bool)]) -> (u32, u8) {
        let start = self.next;
        let raw = crate::virtio::testing::chain(start, descs);
        self.mem
            .write_obj(0xeeu8, GuestAddress(STATUS_AT))
            .unwrap_or_else(|e| panic!("{e}"));
        self.queue
            .add_desc_chains(&raw, start)
            .unwrap_or_else(|e| panic!("{e:?}"));
        self.next += descs.len() as u16;
        self.block.queue_notified(0);
        let used = self.queue.used_addr();
        let idx: u16 = self.mem.read_obj(used.unchecked_add(2)).unwrap_or_default();
        let last = used.unchecked_add(4 + 8 * u64::from(idx.wrapping_sub(1)));
        let len: u32 = self.mem.read_obj(last.unchecked_add(4)).unwrap_or(u32::MAX);
        let status: u8 = self
            .mem
            .read_obj(GuestAddress(STATUS_AT))
            .unwrap_or_default();
        (len, status)
    }

    /// A request with a header, one data buffer and a status byte.
    fn request(&mut self, kind: u32, sector: u64, data_len: u32, data_writable: bool) -> (u32, u8) {
        self.mem
            .write_slice(&header(kind, sector), GuestAddress(HEADER_AT))
            .unwrap_or_else(|e| panic!("{e}"));
        self.submit(&[
            (HEADER_AT, 16, false),
            (DATA_AT, data_len, data_writable),
            (STATUS_AT, 1, true),
        ])
    }

    fn data(&self, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem
            .read_slice(&mut out, GuestAddress(DATA_AT))
            .unwrap_or_else(|e| panic!("{e}"));
        out
    }

    fn set_data(&self, bytes: &[u8]) {
        self.mem
            .write_slice(bytes, GuestAddress(DATA_AT))
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

#[test]
fn reads_and_writes_reach_the_file_at_their_offsets() {
    let mem = memory();
    let file = image();
    let mut r = rig(&mem, &file, false);
    let before = contents(&file);
    // Read sectors 3..5: the image's bytes at 1536..2560, and the used length counts
    // the data and the status byte.
    assert_eq!(r.request(VIRTIO_BLK_T_IN, 3, 1024, true), (1025, OK));
    assert_eq!(r.data(1024), before[1536..2560]);
    // Write sector 10 (split over two buffers) and read it back from the file.
    let written: Vec<u8> = (0..512u32).map(|i| (i * 7) as u8).collect();
    mem.write_slice(&header(VIRTIO_BLK_T_OUT, 10), GuestAddress(HEADER_AT))
        .unwrap_or_else(|e| panic!("{e}"));
    r.set_data(&written);
    let (len, status) = r.submit(&[
        (HEADER_AT, 16, false),
        (DATA_AT, 200, false),
        (DATA_AT + 200, 312, false),
        (STATUS_AT, 1, true),
    ]);
    assert_eq!((len, status), (1, OK));
    let after = contents(&file);
    assert_eq!(after[5120..5632], written[..]);
    assert_eq!(
        after[..5120],
        before[..5120],
        "nothing before the sector changed"
    );
    assert_eq!(after[5632..], before[5632..], "nothing after it changed");
    assert_eq!(r.request(VIRTIO_BLK_T_FLUSH, 0, 0, false).1, OK);
    assert_eq!(
        r.info.counters(),
        BlockCounters {
            reads: 1,
            read_bytes: 1024,
            writes: 1,
            write_bytes: 512,
            flushes: 1,
            zeroings: 0,
            errors: 0,
        }
    );
}

#[test]
fn a_read_only_disk_refuses_writes_and_says_so() {
    let mem = memory();
    let file = image();
    let mut r = rig(&mem, &file, true);
    assert_ne!(r.block.features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(r.block.features() & (1 << VIRTIO_BLK_F_DISCARD), 0);
    let before = contents(&file);
    r.set_data(&[0xaa; 512]);
    assert_eq!(r.request(VIRTIO_BLK_T_OUT, 0, 512, false), (1, IOERR));
    assert_eq!(r.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, 16, false).1, IOERR);
    assert_eq!(contents(&file), before, "the image is unchanged");
    assert_eq!(r.request(VIRTIO_BLK_T_IN, 0, 512, true), (513, OK));
    assert_eq!(r.request(VIRTIO_BLK_T_FLUSH, 0, 0, false).1, OK);
    let c = r.info.counters();
    assert_eq!((c.writes, c.reads, c.errors), (0, 1, 2));
}

#[test]
fn the_id_and_the_capacity_are_the_disks() {
    let mem = memory();
    let file = image();
    let mut r = rig(&mem, &file, false);
    r.set_data(&[0xff; 20]);
    assert_eq!(r.request(VIRTIO_BLK_T_GET_ID, 0, 20, true), (21, OK));
    let mut want = b"test-disk".to_vec();
    want.resize(20, 0);
    assert_eq!(r.data(20), want);
    let mut capacity = [0u8; 8];
    r.block.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), IMAGE / SECTOR);
    assert!(matches!(
        Disk::open(file.as_path(), false, "a-name-longer-than-twenty"),
        Err(DiskError::IdTooLong { .. })
    ));
}

#[test]
fn malformed_chains_are_a_status_and_counted() {
    let mem = memory();
    let file = image();
    let mut r = rig(&mem, &file, false);
    let before = contents(&file);
    let cases: Vec<(&str, u32, u64, u32, bool)> = vec![
        (
            "a read with device-readable data",
            VIRTIO_BLK_T_IN,
            0,
            512,
            false,
        ),
        (
            "a write with device-writable data",
            VIRTIO_BLK_T_OUT,
            0,
            512,
            true,
        ),
        (
            "a read past the end",
            VIRTIO_BLK_T_IN,
            IMAGE / SECTOR,
            512,
            true,
        ),
        (
            "a write straddling the end",
            VIRTIO_BLK_T_OUT,
            IMAGE / SECTOR - 1,
            1024,
            false,
        ),
        (
            "a sector whose offset overflows",
            VIRTIO_BLK_T_IN,
            u64::MAX,
            512,
            true,
        ),
        (
            "a length that is not whole sectors",
            VIRTIO_BLK_T_IN,
            0,
            100,
            true,
        ),
        (
            "more data than a request may carry",
            VIRTIO_BLK_T_IN,
            0,
            (MAX_REQUEST + 512) as u32,
            true,
        ),
    ];
    for (n, (what, kind, sector, len, writable)) in cases.into_iter().enumerate() {
        let (used, status) = r.request(kind, sector, len, writable);
        assert_eq!(status, IOERR, "{what}");
        assert_eq!(used, 1, "{what}: only the status was written");
        assert_eq!(r.info.counters().errors, n as u64 + 1, "{what}");
    }
    // A header shorter than 16 bytes.
    assert_eq!(
        r.submit(&[(HEADER_AT, 8, false), (STATUS_AT, 1, true)]),
        (1, IOERR)
    );
    // A device-readable buffer after a device-writable one.
    assert_eq!(
        r.submit(&[
            (HEADER_AT, 16, false),
            (DATA_AT, 512, true),
            (DATA_AT + 512, 512, false),
            (STATUS_AT, 1, true)
        ]),
        (1, IOERR)
    );
    // A header outside guest memory.
    assert_eq!(
        r.submit(&[(MEMORY - 8, 16, false), (STATUS_AT, 1, true)]),
        (1, IOERR)
    );
    // No status buffer at all: nothing to write, an empty used entry.
    mem.write_slice(&header(VIRTIO_BLK_T_IN, 0), GuestAddress(HEADER_AT))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        r.submit(&[(HEADER_AT, 16, false), (DATA_AT, 512, false)]),
        (0, 0xee)
    );
    // A status buffer of zero bytes.
    assert_eq!(
        r.submit(&[(HEADER_AT, 16, false), (STATUS_AT, 0, true)]),
        (0, 0xee)
    );
    // An unknown request type is unsupported.
    assert_eq!(r.request(99, 0, 0, false).1, UNSUPP);
    assert_eq!(r.info.counters().errors, 13);
    let c = r.info.counters();
    assert_eq!((c.reads, c.writes), (0, 0));
    assert_eq!(
        contents(&file),
        before,
        "no malformed request wrote the image"
    );
}

#[test]
fn discard_punches_and_write_zeroes_zeroes() {
    let mem = memory();
    let file = image();
    let mut r = rig(&mem, &file, false);
    assert!(r.info.discard, "a temporary file can punch holes");
    let segment = |sector: u64, sectors: u32, flags: u32| {
        let mut s = sector.to_le_bytes().to_vec();
        s.extend_from_slice(&sectors.to_le_bytes());
        s.extend_from_slice(&flags.to_le_bytes());
        s
    };
    // Discard sectors 8..16 (4 KiB aligned): they read as zeroes, the rest is intact.
    r.set_data(&segment(8, 8, 0));
    assert_eq!(r.request(VIRTIO_BLK_T_DISCARD, 0, 16, false), (1, OK));
    let after = contents(&file);
    assert!(after[4096..8192].iter().all(|b| *b == 0));
    assert_eq!(after[4095], (4095 % 251) as u8);
    assert_eq!(after[8192], (8192 % 251) as u8);
    // Write-zeroes of sector 20, kept allocated.
    r.set_data(&segment(20, 1, 0));
    assert_eq!(r.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, 16, false).1, OK);
    assert!(contents(&file)[10240..10752].iter().all(|b| *b == 0));
    // Discard with the unmap flag is unsupported; a range past the end, a segment count
    // other than one, and too many sectors are errors.
    r.set_data(&segment(0, 1, 1));
    assert_eq!(r.request(VIRTIO_BLK_T_DISCARD, 0, 16, false).1, UNSUPP);
    r.set_data(&segment(IMAGE / SECTOR, 1, 0));
    assert_eq!(r.request(VIRTIO_BLK_T_DISCARD, 0, 16, false).1, IOERR);
    assert_eq!(r.request(VIRTIO_BLK_T_DISCARD, 0, 32, false).1, IOERR);
    r.set_data(&segment(0, MAX_ZEROING_SECTORS + 1, 0));
    assert_eq!(r.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, 16, false).1, IOERR);
    let c = r.info.counters();
    assert_eq!((c.zeroings, c.errors), (2, 4));
    assert_eq!(
        file.as_file().metadata().map(|m| m.size()).ok(),
        Some(IMAGE)
    );
}

proptest! {
    /// Random descriptor tables (any address, length, direction and link, loops among
    /// them) over headers of every type: the device never panics, never changes the
    /// image's size, answers every chain it takes, and counts each as served or failed.
    #[test]
    fn random_descriptor_tables_are_answered_safely(
        descs in prop::collection::vec(
            (prop_oneof![
                Just(HEADER_AT), Just(DATA_AT), Just(STATUS_AT),
                Just(MEMORY - 4), Just(u64::MAX - 8), 0u64..MEMORY * 2,
            ],
            prop_oneof![Just(0u32), Just(1), Just(16), Just(512), Just(4096), any::<u32>()],
            any::<bool>(), any::<bool>(), 0u16..64),
            1..40,
        ),
        kind in prop_oneof![
            Just(VIRTIO_BLK_T_IN), Just(VIRTIO_BLK_T_OUT), Just(VIRTIO_BLK_T_FLUSH),
            Just(VIRTIO_BLK_T_GET_ID), Just(VIRTIO_BLK_T_DISCARD),
            Just(VIRTIO_BLK_T_WRITE_ZEROES), any::<u32>(),
        ],
        sector in prop_oneof![0u64..80, any::<u64>()],
        read_only in any::<bool>(),
    ) {
        let mem = memory();
        let file = image();
        let mut r = rig(&mem, &file, read_only);
        mem.write_slice(&header(kind, sector), GuestAddress(HEADER_AT))
            .unwrap_or_else(|e| panic!("{e}"));
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .map(|&(addr, len, writable, next, to)| {
                let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
                if next {
                    flags |= VRING_DESC_F_NEXT;
                }
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, to))
            })
            .collect();
        r.queue.add_desc_chains(&raw, 0).unwrap_or_else(|e| panic!("{e:?}"));
        r.block.queue_notified(0);
        let used: u16 = mem
            .read_obj(r.queue.used_addr().unchecked_add(2))
            .unwrap_or_default();
        let avail: u16 = mem
            .read_obj(r.queue.avail_addr().unchecked_add(2))
            .unwrap_or_default();
        prop_assert_eq!(used, avail, "every chain offered was answered");
        let c = r.info.counters();
        prop_assert!(c.reads + c.writes + c.flushes + c.zeroings + c.errors <= u64::from(used));
        prop_assert_eq!(file.as_file().metadata().map(|m| m.size()).ok(), Some(IMAGE));
        if read_only {
            prop_assert_eq!(c.writes + c.zeroings, 0);
        }
    }
}
