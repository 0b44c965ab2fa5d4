//! The `/partition` view: a read-only FUSE file system that shows the partition name
//! space as directories, each process associated with a partition as a link to its
//! `/proc/<pid>`, each pseudo partition as a link to its real partition, and each class's
//! and partition's figures in a `metrics` file. Every listing and every read is asked of
//! the VMM with the caller's identity, so the engine decides who may see what.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, Request, SessionACL,
};
use protocol::{ClassMetrics, Credential, EntryKind, Op, PartitionMetrics, Reply, WireError};

/// The name of the file that holds a class's or partition's figures.
pub const METRICS_FILE: &str = "metrics";
/// Most inodes the view keeps at once; a lookup beyond that fails with `ENFILE`.
pub const MAX_INODES: usize = 1 << 16;
/// Most directories and files open through the view at once (`ENFILE` beyond).
pub const MAX_OPEN: usize = 4096;

/// Asks the VMM's partition service `op` with a caller's identity; `None` when the
/// service cannot be reached.
pub type Ask = Box<dyn Fn(&Credential, Op) -> Option<Result<Reply, WireError>> + Send + Sync>;

/// What an inode of the view is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// The mount point itself, holding `mem`.
    Root,
    /// `/partition/mem`: classes and groups.
    Mem,
    /// A memory class: its root partitions and its `metrics`.
    Class,
    /// A partition group: its pseudo partitions.
    Group,
    /// A real partition: its children, its processes and its `metrics`.
    Partition,
    /// An associated process: a link to `/proc/<pid>`.
    Process(u32),
    /// A pseudo partition: a link to its real partition (a name-space path).
    Pseudo(String),
    /// The `metrics` file of a class (`true`) or partition (`false`).
    Metrics { class: bool },
    /// A shared object charged to the partition: a file of the object's size whose text
    /// describes it.
    Object(u64),
}

impl Kind {
    fn from_entry(entry: EntryKind, name: &str) -> Kind {
        match entry {
            EntryKind::Class => Kind::Class,
            EntryKind::Group => Kind::Group,
            EntryKind::Partition => Kind::Partition,
            EntryKind::Process => Kind::Process(name.parse().unwrap_or(0)),
            EntryKind::Pseudo { target } => Kind::Pseudo(target),
            EntryKind::Object { size } => Kind::Object(size),
        }
    }

    fn file_type(&self) -> FileType {
        match self {
            Kind::Root | Kind::Mem | Kind::Class | Kind::Group | Kind::Partition => {
                FileType::Directory
            }
            Kind::Process(_) | Kind::Pseudo(_) => FileType::Symlink,
            Kind::Metrics { .. } | Kind::Object(_) => FileType::RegularFile,
        }
    }
}

/// One inode: a name-space path (`/partition/mem/...`, or `.../metrics` for a file) and
/// how many lookups the kernel holds on it.
struct Inode {
    path: String,
    kind: Kind,
    lookups: u64,
}

/// What an open handle holds: a directory's entries or a file's text, taken at open.
enum Open {
    Dir(Vec<(String, Kind)>),
    File(Vec<u8>),
}

#[derive(Default)]
struct Table {
    inodes: HashMap<u64, Inode>,
    by_path: HashMap<String, u64>,
    next_ino: u64,
    open: HashMap<u64, Open>,
    next_fh: u64,
}

impl Table {
    /// The inode of `path`, made when new; one more lookup is held on it.
    fn remember(&mut self, path: String, kind: Kind) -> Result<u64, Errno> {
        if let Some(&ino) = self.by_path.get(&path) {
            if let Some(inode) = self.inodes.get_mut(&ino) {
                inode.lookups = inode.lookups.saturating_add(1);
                inode.kind = kind;
                return Ok(ino);
            }
        }
        if self.inodes.len() >= MAX_INODES {
            return Err(Errno::ENFILE);
        }
        self.next_ino = self.next_ino.max(INodeNo::ROOT.0).saturating_add(1);
        let ino = self.next_ino;
        self.by_path.insert(path.clone(), ino);
        self.inodes.insert(
            ino,
            Inode {
                path,
                kind,
                lookups: 1,
            },
        );
        Ok(ino)
    }

    fn forget(&mut self, ino: u64, lookups: u64) {
        if ino == INodeNo::ROOT.0 {
            return;
        }
        let gone = match self.inodes.get_mut(&ino) {
            Some(inode) => {
                inode.lookups = inode.lookups.saturating_sub(lookups);
                inode.lookups == 0
            }
            None => false,
        };
        if gone {
            if let Some(inode) = self.inodes.remove(&ino) {
                self.by_path.remove(&inode.path);
            }
        }
    }

    fn open(&mut self, what: Open) -> Result<u64, Errno> {
        if self.open.len() >= MAX_OPEN {
            return Err(Errno::ENFILE);
        }
        self.next_fh = self.next_fh.wrapping_add(1);
        self.open.insert(self.next_fh, what);
        Ok(self.next_fh)
    }
}

/// The file system the agent mounts.
pub struct PartitionView {
    ask: Ask,
    table: Mutex<Table>,
}

/// The namespace path the view's root stands for.
const ROOT_PATH: &str = "/partition";

/// Attributes are never cached: the tree changes under the kernel's feet.
const NO_CACHE: Duration = Duration::ZERO;

fn errno_of(e: &WireError) -> Errno {
    Errno::from_i32(e.errno)
}

impl PartitionView {
    /// A view whose every question goes through `ask`.
    pub fn new(ask: Ask) -> PartitionView {
        let mut table = Table::default();
        table.inodes.insert(
            INodeNo::ROOT.0,
            Inode {
                path: ROOT_PATH.into(),
                kind: Kind::Root,
                lookups: 1,
            },
        );
        table.by_path.insert(ROOT_PATH.into(), INodeNo::ROOT.0);
        PartitionView {
            ask,
            table: Mutex::new(table),
        }
    }

    /// Mounts the view on `mountpoint` (read-only, open to every user); it is served
    /// until the returned session is dropped.
    pub fn mount(self, mountpoint: &Path) -> std::io::Result<BackgroundSession> {
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::RO,
            MountOption::NoSuid,
            MountOption::NoDev,
            MountOption::NoExec,
            MountOption::FSName("mempart".into()),
            MountOption::Subtype("partition".into()),
        ];
        config.acl = SessionACL::All;
        fuser::spawn_mount(self, mountpoint, &config)
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn call(&self, caller: &Credential, op: Op) -> Result<Reply, Errno> {
        match (self.ask)(caller, op) {
            Some(Ok(reply)) => Ok(reply),
            Some(Err(e)) => Err(errno_of(&e)),
            None => Err(Errno::EIO),
        }
    }

    fn node(&self, ino: INodeNo) -> Result<(String, Kind), Errno> {
        self.table()
            .inodes
            .get(&ino.0)
            .map(|i| (i.path.clone(), i.kind.clone()))
            .ok_or(Errno::ENOENT)
    }

    /// The entries of directory `path` of kind `kind`, as the caller may see them.
    fn entries(
        &self,
        caller: &Credential,
        path: &str,
        kind: &Kind,
    ) -> Result<Vec<(String, Kind)>, Errno> {
        let mut out = Vec::new();
        match kind {
            Kind::Root => out.push(("mem".to_string(), Kind::Mem)),
            Kind::Mem | Kind::Class | Kind::Group | Kind::Partition => {
                let Reply::Entries(entries) = self.call(
                    caller,
                    Op::List {
                        path: path.to_string(),
                    },
                )?
                else {
                    return Err(Errno::EIO);
                };
                for entry in entries {
                    let kind = Kind::from_entry(entry.kind, &entry.name);
                    out.push((entry.name, kind));
                }
                match kind {
                    Kind::Class => out.push((METRICS_FILE.into(), Kind::Metrics { class: true })),
                    Kind::Partition => {
                        out.push((METRICS_FILE.into(), Kind::Metrics { class: false }))
                    }
                    _ => {}
                }
            }
            _ => return Err(Errno::ENOTDIR),
        }
        Ok(out)
    }

    /// The attributes of an inode. Directories carry their node's owner and mode, read
    /// with the agent's own identity (as `stat` needs no read permission on its target).
    fn attr(&self, ino: u64, path: &str, kind: &Kind) -> FileAttr {
        let (mut uid, mut gid, mut perm) = (0, 0, 0o555);
        let owner = |p: &protocol::Perm| (p.uid, p.gid, (p.mode & 0o777) as u16);
        match kind {
            Kind::Mem | Kind::Class | Kind::Group | Kind::Partition => {
                let stat = Op::Stat {
                    path: path.to_string(),
                };
                if let Ok(Reply::Perm(p)) = self.call(&Credential::guest_root(), stat) {
                    (uid, gid, perm) = owner(&p);
                }
            }
            Kind::Metrics { .. } | Kind::Object(_) => perm = 0o444,
            Kind::Process(_) | Kind::Pseudo(_) => perm = 0o777,
            Kind::Root => {}
        }
        let file_type = kind.file_type();
        FileAttr {
            ino: INodeNo(ino),
            size: match kind {
                Kind::Process(_) | Kind::Pseudo(_) => link_target(path, kind).len() as u64,
                Kind::Object(size) => *size,
                _ => 0,
            },
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: file_type,
            perm,
            nlink: if file_type == FileType::Directory {
                2
            } else {
                1
            },
            uid,
            gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

/// The identity of the process behind a FUSE request.
fn caller_of(req: &Request) -> Credential {
    Credential::Guest {
        uid: req.uid(),
        gid: req.gid(),
        groups: crate::groups_of(req.pid()),
    }
}

/// Where a link points: a process to its `/proc` directory, a pseudo partition to its
/// real partition, relative to the group directory so the view works wherever mounted.
fn link_target(path: &str, kind: &Kind) -> String {
    match kind {
        Kind::Process(pid) => format!("/proc/{pid}"),
        Kind::Pseudo(target) => match target.strip_prefix("/partition/mem/") {
            Some(rest) => format!("../{rest}"),
            None => target.clone(),
        },
        _ => path.to_string(),
    }
}

/// `key value` lines.
fn key_values(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(key, value)| format!("{key} {value}\n"))
        .collect()
}

/// The text of a shared object's file: its size, owner, mappers and partition.
pub fn render_object(o: &protocol::ObjectInfo) -> String {
    key_values(&[
        ("size", o.size.to_string()),
        ("owner", o.owner.to_string()),
        ("mappers", o.mappers.to_string()),
        ("partition", o.partition.clone()),
    ])
}

/// The text of a partition's `metrics` file: one `key value` line per figure, sizes in
/// bytes, as cgroup's `memory.stat` has them.
pub fn render_partition(m: &PartitionMetrics) -> String {
    let (now, made) = (&m.current, &m.created);
    let flag = |b: bool| u8::from(b).to_string();
    let zone = |f: fn(&protocol::ZoneMetrics) -> u64| {
        m.zone.as_ref().map_or("none".into(), |z| f(z).to_string())
    };
    key_values(&[
        ("type", format!("{:?}", m.kind)),
        ("zone_node", zone(|z| u64::from(z.spec.node))),
        ("zone_plugged", zone(|z| z.plugged)),
        ("zone_host_resident", zone(|z| z.host_resident)),
        ("min", now.limits.min.to_string()),
        ("max", now.limits.max.to_string()),
        (
            "pending_max",
            m.pending_max.map_or("none".into(), |max| max.to_string()),
        ),
        ("used", m.used.to_string()),
        ("own", m.own.to_string()),
        ("charge", m.charge.to_string()),
        ("highest", m.highest.to_string()),
        ("reserved_unused", m.reserved_unused.to_string()),
        ("processes", m.processes.len().to_string()),
        ("objects", m.objects.to_string()),
        ("mode", format!("{:03o}", now.perm.mode)),
        ("uid", now.perm.uid.to_string()),
        ("gid", now.perm.gid.to_string()),
        ("terminal", flag(now.policies.terminal)),
        ("config_lock", flag(now.policies.config_lock)),
        ("permanent", flag(now.policies.permanent)),
        ("created_min", made.limits.min.to_string()),
        ("created_max", made.limits.max.to_string()),
        ("created_mode", format!("{:03o}", made.perm.mode)),
    ])
}

/// The text of a class's `metrics` file.
pub fn render_class(c: &ClassMetrics) -> String {
    key_values(&[
        ("size", c.size.to_string()),
        ("unit", c.unit.to_string()),
        ("allocated", c.allocated.to_string()),
        ("reserved_unused", c.reserved_unused.to_string()),
        ("free", c.free.to_string()),
        ("highest_allocated", c.highest_allocated.to_string()),
    ])
}

impl Filesystem for PartitionView {
    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = (|| {
            let (dir, kind) = self.node(parent)?;
            let name = name.to_str().ok_or(Errno::ENOENT)?;
            let entries = self.entries(&caller_of(req), &dir, &kind)?;
            let (_, child) = entries
                .into_iter()
                .find(|(n, _)| n == name)
                .ok_or(Errno::ENOENT)?;
            let path = format!("{dir}/{name}");
            let ino = self.table().remember(path.clone(), child.clone())?;
            Ok::<_, Errno>(self.attr(ino, &path, &child))
        })();
        match found {
            Ok(attr) => reply.entry(&NO_CACHE, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.table().forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Ok((path, kind)) => reply.attr(&NO_CACHE, &self.attr(ino.0, &path, &kind)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino) {
            Ok((path, kind @ (Kind::Process(_) | Kind::Pseudo(_)))) => {
                reply.data(link_target(&path, &kind).as_bytes())
            }
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let opened = self.node(ino).and_then(|(path, kind)| {
            let entries = self.entries(&caller_of(req), &path, &kind)?;
            self.table().open(Open::Dir(entries))
        });
        match opened {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let table = self.table();
        let Some(Open::Dir(entries)) = table.open.get(&fh.0) else {
            reply.error(Errno::EBADF);
            return;
        };
        let dir_path = table.inodes.get(&ino.0).map(|i| i.path.as_str());
        let dots = [
            (".".to_string(), FileType::Directory),
            ("..".to_string(), FileType::Directory),
        ];
        let all = dots.into_iter().chain(
            entries
                .iter()
                .map(|(name, kind)| (name.clone(), kind.file_type())),
        );
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (index, (name, file_type)) in all.enumerate().skip(start) {
            // An entry's inode number is only a hint to readdir's caller; the one the
            // view uses is made by lookup.
            let known = dir_path
                .map(|dir| format!("{dir}/{name}"))
                .and_then(|p| table.by_path.get(&p).copied());
            let hint = known.unwrap_or(u64::MAX - index as u64);
            if reply.add(INodeNo(hint), index as u64 + 1, file_type, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.table().open.remove(&fh.0);
        reply.ok();
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != fuser::OpenAccMode::O_RDONLY {
            reply.error(Errno::EROFS);
            return;
        }
        let opened = self.node(ino).and_then(|(path, kind)| {
            let caller = caller_of(req);
            let class = match kind {
                Kind::Metrics { class } => class,
                Kind::Object(_) => {
                    let name = path.rsplit('/').next().unwrap_or_default().to_string();
                    let Reply::Objects(found) = self.call(&caller, Op::ObjectStat { name })? else {
                        return Err(Errno::EIO);
                    };
                    let text: String = found.iter().map(render_object).collect();
                    return self.table().open(Open::File(text.into_bytes()));
                }
                _ => return Err(Errno::EISDIR),
            };
            let of = path
                .strip_suffix(METRICS_FILE)
                .and_then(|p| p.strip_suffix('/'))
                .ok_or(Errno::ENOENT)?
                .to_string();
            let text = if class {
                match self.call(&caller, Op::ClassMetrics { path: of })? {
                    Reply::Class(c) => render_class(&c),
                    _ => return Err(Errno::EIO),
                }
            } else {
                match self.call(&caller, Op::Metrics { path: of })? {
                    Reply::Metrics(m) => render_partition(&m),
                    _ => return Err(Errno::EIO),
                }
            };
            self.table().open(Open::File(text.into_bytes()))
        });
        match opened {
            // Direct I/O: the file's size is only known once read, as in procfs.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let table = self.table();
        let Some(Open::File(text)) = table.open.get(&fh.0) else {
            reply.error(Errno::EBADF);
            return;
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(text.len());
        let end = start.saturating_add(size as usize).min(text.len());
        reply.data(text.get(start..end).unwrap_or_default());
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.table().open.remove(&fh.0);
        reply.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inode_lives_until_the_kernel_forgets_every_lookup() {
        let mut table = Table::default();
        let path = "/partition/mem/sysram/sys".to_string();
        let ino = table.remember(path.clone(), Kind::Partition);
        assert_eq!(table.remember(path.clone(), Kind::Partition), ino);
        let ino = ino.unwrap_or_default();
        assert!(ino > INodeNo::ROOT.0);
        table.forget(ino, 1);
        assert!(table.inodes.contains_key(&ino));
        table.forget(ino, 1);
        assert!(!table.inodes.contains_key(&ino));
        assert!(!table.by_path.contains_key(&path));
        let again = table.remember(path, Kind::Partition).unwrap_or_default();
        assert_ne!(
            again, ino,
            "a forgotten inode number is not handed out again"
        );
    }

    #[test]
    fn the_table_is_bounded() {
        let mut table = Table::default();
        for n in 0..MAX_INODES {
            assert!(table.remember(format!("/p{n}"), Kind::Partition).is_ok());
        }
        assert_eq!(
            table.remember("/one-more".into(), Kind::Partition),
            Err(Errno::ENFILE)
        );
        for _ in 0..MAX_OPEN {
            assert!(table.open(Open::File(Vec::new())).is_ok());
        }
        assert_eq!(table.open(Open::File(Vec::new())), Err(Errno::ENFILE));
    }

    #[test]
    fn links_point_at_proc_and_relative_to_the_group() {
        assert_eq!(
            link_target("/partition/mem/sysram/sys/42", &Kind::Process(42)),
            "/proc/42"
        );
        let pseudo = Kind::Pseudo("/partition/mem/class 1/p1".into());
        assert_eq!(
            link_target("/partition/mem/team/p1", &pseudo),
            "../class 1/p1"
        );
    }
}
