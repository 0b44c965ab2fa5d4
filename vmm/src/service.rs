//! The partition service: serves the wire protocol over any byte stream on one engine.
//! Every permission decision is the engine's; the service only checks that a guest
//! connection does not claim the host's authority.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use mempart::{Credential, Engine, Errno, NewPartition, SubId};
use protocol::{
    read_frame, write_frame, ClientFrame, Op, ProtocolError, Reply, ServerFrame, WireError, MAGIC,
    MAX_FRAME, VERSION,
};

mod objects;

/// Most subscriptions one host connection may hold. The agent's connection carries every
/// guest user's: there the engine's per-user shares apply instead.
pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 64;

/// The VMM's typed memory, as the service asks for it: extents of class memory made
/// accessible to the guest for an allocation, and taken back when it is freed.
pub trait TypedMemory: Send + Sync {
    /// Grants `bytes` of `class`; returns the extent's guest-physical base.
    fn grant(&self, class: &str, bytes: u64) -> Result<u64, String>;
    /// Takes back the extent granted at `gpa`.
    fn revoke(&self, class: &str, gpa: u64) -> Result<(), String>;
}

/// A zone's figures from below the guest OS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneMeasure {
    /// Bytes plugged into the guest.
    pub plugged: u64,
    /// Bytes of its host memory backed.
    pub host_resident: u64,
}

/// The VMM's zones, as the service measures them for zoned partitions' metrics.
pub trait ZoneMeter: Send + Sync {
    /// The figures of the zone that is guest node `node`.
    fn measure(&self, node: u32) -> Option<ZoneMeasure>;
}

/// One extent backing an allocation.
struct Extent {
    class: String,
    grant: mempart::Grant,
    gpa: u64,
    /// Order of granting, to take back the newest first.
    seq: u64,
}

/// An extent the VMM took back from a process to enforce a reclaim.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RevokedExtent {
    /// The process it was granted to.
    pub pid: mempart::Pid,
    /// Its guest-physical base.
    pub gpa: u64,
    /// Its length.
    pub bytes: u64,
}

/// Whose stream a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    /// The host API: requests may carry the host credential.
    Host,
    /// The guest agent: requests carry guest credentials only.
    Guest,
}

/// Writes the answer to request `id`. An answer too large for one frame (a listing of
/// hundreds of long names) becomes `EOVERFLOW` for that request alone: the connection,
/// which the agent shares among all guest users, stays up.
fn respond<W: Write>(
    writer: &mut W,
    id: u32,
    result: Result<Reply, WireError>,
) -> Result<(), ProtocolError> {
    match write_frame(writer, &ServerFrame::Response { id, result }) {
        Err(ProtocolError::TooLarge(bytes)) => {
            let refusal = WireError {
                errno: EOVERFLOW,
                name: "EOVERFLOW".into(),
                message: format!(
                    "EOVERFLOW: the reply of {bytes} bytes is over the {MAX_FRAME}-byte frame \
                     limit; ask for less (a deeper path)"
                ),
            };
            write_frame(
                writer,
                &ServerFrame::Response {
                    id,
                    result: Err(refusal),
                },
            )
        }
        written => written,
    }
}

/// The class called `name`, or `ENOENT` naming its path.
fn class_named(e: &Engine, name: &str) -> Result<mempart::ClassId, mempart::Error> {
    e.class_id(name).ok_or_else(|| {
        mempart::Error::new(
            Errno::Enoent,
            format!("{}/{name}", mempart::MEM_ROOT),
            "no such class",
        )
    })
}

/// Linux's errno for a value too large for its destination.
const EOVERFLOW: i32 = 75;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Wakes connections' event pushers when the engine changed.
#[derive(Default)]
struct Changes {
    generation: Mutex<u64>,
    cond: Condvar,
}

/// One engine, served to any number of connections.
#[derive(Clone)]
pub struct PartitionService {
    engine: Arc<Mutex<Engine>>,
    changes: Arc<Changes>,
    typed: Arc<std::sync::OnceLock<Arc<dyn TypedMemory>>>,
    zones: Arc<std::sync::OnceLock<Arc<dyn ZoneMeter>>>,
    extents: Arc<Mutex<std::collections::HashMap<mempart::Pid, Vec<Extent>>>>,
    object_extents: Arc<Mutex<objects::ObjectExtents>>,
    granted: Arc<std::sync::atomic::AtomicU64>,
}

impl PartitionService {
    /// A service over `engine`.
    pub fn new(engine: Arc<Mutex<Engine>>) -> PartitionService {
        PartitionService {
            engine,
            changes: Arc::new(Changes::default()),
            typed: Arc::default(),
            zones: Arc::default(),
            extents: Arc::default(),
            object_extents: Arc::default(),
            granted: Arc::default(),
        }
    }

    /// Backs allocations of classes other than sysram with extents of `typed` (once).
    pub fn set_typed_memory(&self, typed: Arc<dyn TypedMemory>) {
        let _ = self.typed.set(typed);
    }

    /// Measures zoned partitions' zones with `meter` (once).
    pub fn set_zone_meter(&self, meter: Arc<dyn ZoneMeter>) {
        let _ = self.zones.set(meter);
    }

    /// Fills a zoned partition's figures from below the guest OS into `m`.
    pub fn measure_zone(&self, m: &mut mempart::PartitionMetrics) {
        let (Some(zone), Some(meter)) = (m.zone.as_mut(), self.zones.get()) else {
            return;
        };
        if let Some(measure) = meter.measure(zone.spec.node) {
            zone.plugged = measure.plugged;
            zone.host_resident = measure.host_resident;
        }
    }

    /// Takes back every extent of `pid`'s allocations (it exited, and the engine freed
    /// them). An extent the guest keeps is reported: the process is gone either way.
    fn revoke_all(&self, pid: mempart::Pid) {
        let gone = lock(&self.extents).remove(&pid).unwrap_or_default();
        if let Some(typed) = self.typed.get() {
            for extent in gone {
                if let Err(why) = typed.revoke(&extent.class, extent.gpa) {
                    eprintln!(
                        "mempart-vmm: {} extent at 0x{:x} of exited pid {pid} stays mapped: {why}",
                        extent.class, extent.gpa
                    );
                }
            }
        }
    }

    /// Tells the connections that the engine changed outside the protocol (a violation,
    /// a reclaim), so they push pending events.
    pub fn changed(&self) {
        *lock(&self.changes.generation) += 1;
        self.changes.cond.notify_all();
    }

    /// How many changes have been announced so far.
    pub fn generation(&self) -> u64 {
        *lock(&self.changes.generation)
    }

    /// Waits until a change after `seen` is announced or `timeout` passes; returns the
    /// generation then.
    pub fn wait_change(&self, seen: u64, timeout: std::time::Duration) -> u64 {
        let generation = lock(&self.changes.generation);
        let (generation, _) = self
            .changes
            .cond
            .wait_timeout_while(generation, timeout, |g| *g == seen)
            .unwrap_or_else(PoisonError::into_inner);
        *generation
    }

    /// Takes back extents of `class` charged to partition `part`, newest first, until
    /// `bytes` are freed or none is left: each is made inaccessible to the guest, then
    /// freed in the engine. An extent the guest cannot be made to give up stays granted
    /// and charged (reported on stderr) and is passed over. Returns what was taken.
    pub fn revoke_newest(
        &self,
        class: &str,
        part: mempart::PartId,
        bytes: u64,
    ) -> Vec<RevokedExtent> {
        let mut taken = Vec::new();
        let mut kept = BTreeSet::new();
        let mut freed = 0u64;
        let mut engine = lock(&self.engine);
        let mut extents = lock(&self.extents);
        while freed < bytes {
            let newest = extents
                .iter()
                .flat_map(|(pid, list)| list.iter().enumerate().map(move |(i, x)| (*pid, i, x)))
                .filter(|(_, _, x)| x.class == class && x.grant.partition == part)
                .filter(|(_, _, x)| !kept.contains(&x.seq))
                .max_by_key(|(_, _, x)| x.seq)
                .map(|(pid, i, x)| (pid, i, x.seq));
            let Some((pid, i, seq)) = newest else { break };
            let Some(list) = extents.get_mut(&pid) else {
                break;
            };
            if let (Some(extent), Some(typed)) = (list.get(i), self.typed.get()) {
                if let Err(why) = typed.revoke(&extent.class, extent.gpa) {
                    eprintln!(
                        "mempart-vmm: reclaim keeps the {class} extent at 0x{:x}: {why}",
                        extent.gpa
                    );
                    kept.insert(seq);
                    continue;
                }
            }
            let extent = list.swap_remove(i);
            if let Err(why) = engine.free(pid, extent.grant) {
                eprintln!(
                    "mempart-vmm: the {class} extent at 0x{:x} was taken back but stays charged: {why}",
                    extent.gpa
                );
                continue;
            }
            freed += extent.grant.bytes;
            taken.push(RevokedExtent {
                pid,
                gpa: extent.gpa,
                bytes: extent.grant.bytes,
            });
        }
        drop((engine, extents));
        if !taken.is_empty() {
            self.changed();
        }
        taken
    }

    /// Serves one connection until the peer closes it or breaks the protocol: the
    /// handshake, then each request answered in order, with the connection's events
    /// pushed on `writer` as they happen. Returns how the connection ended.
    pub fn serve<R, W>(&self, mut reader: R, writer: W, authority: Authority) -> ProtocolError
    where
        R: Read,
        W: Write + Send + 'static,
    {
        let writer = Arc::new(Mutex::new(writer));
        match read_frame(&mut reader) {
            Ok(ClientFrame::Hello { magic, version }) if magic == MAGIC && version == VERSION => {
                if let Err(e) = write_frame(&mut *lock(&writer), &ServerFrame::Welcome { version })
                {
                    return e;
                }
            }
            Ok(other) => {
                let reason = match other {
                    ClientFrame::Hello { version, .. } => {
                        format!("version {version} or magic not understood; this service speaks {VERSION}")
                    }
                    ClientFrame::Request { .. } => "a request before the hello".to_string(),
                };
                let _ = write_frame(
                    &mut *lock(&writer),
                    &ServerFrame::Refused {
                        reason: reason.clone(),
                    },
                );
                return ProtocolError::Handshake(reason);
            }
            Err(e) => return e,
        }
        let subs: Arc<Mutex<BTreeSet<SubId>>> = Arc::default();
        let done = Arc::new(Mutex::new(false));
        let pusher = {
            let service = self.clone();
            let writer = Arc::clone(&writer);
            let subs = Arc::clone(&subs);
            let done = Arc::clone(&done);
            // Read now, not when the thread gets going: a change made before then (by
            // this connection's first requests) must still wake it.
            let seen = self.generation();
            std::thread::spawn(move || service.push_events(&writer, &subs, &done, seen))
        };
        let end = loop {
            let frame = match read_frame(&mut reader) {
                Ok(frame) => frame,
                Err(e) => break e,
            };
            let ClientFrame::Request { id, caller, op } = frame else {
                break ProtocolError::Decode("a second hello".into());
            };
            let reads_only = matches!(
                op,
                Op::List { .. }
                    | Op::Objects
                    | Op::ObjectStat { .. }
                    | Op::Metrics { .. }
                    | Op::ClassMetrics { .. }
                    | Op::Stat { .. }
                    | Op::ProcessView { .. }
            );
            let result = self.handle(&caller, op, authority, &subs);
            if !reads_only {
                self.changed();
            }
            if let Err(e) = respond(&mut *lock(&writer), id, result) {
                break e;
            }
        };
        *lock(&done) = true;
        self.changed();
        let _ = pusher.join();
        let mut engine = lock(&self.engine);
        for sub in std::mem::take(&mut *lock(&subs)) {
            let _ = engine.unsubscribe(sub);
        }
        end
    }

    /// Pushes the connection's events whenever the engine changes after generation
    /// `seen`, until `done`.
    fn push_events<W: Write>(
        &self,
        writer: &Mutex<W>,
        subs: &Mutex<BTreeSet<SubId>>,
        done: &Mutex<bool>,
        mut seen: u64,
    ) {
        loop {
            {
                let mut generation = lock(&self.changes.generation);
                while *generation == seen && !*lock(done) {
                    generation = self
                        .changes
                        .cond
                        .wait(generation)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                seen = *generation;
            }
            let mut frames = Vec::new();
            {
                let mut engine = lock(&self.engine);
                for &sub in lock(subs).iter() {
                    if let Ok(batch) = engine.drain_events(sub) {
                        if batch.missed > 0 {
                            frames.push(ServerFrame::Missed {
                                sub,
                                count: batch.missed,
                            });
                        }
                        frames.extend(
                            batch
                                .events
                                .into_iter()
                                .map(|event| ServerFrame::Event { sub, event }),
                        );
                    }
                }
            }
            let mut w = lock(writer);
            for frame in &frames {
                if write_frame(&mut *w, frame).is_err() {
                    return;
                }
            }
            drop(w);
            if *lock(done) {
                return;
            }
        }
    }

    /// Carries out one operation for `caller`.
    fn handle(
        &self,
        caller: &Credential,
        op: Op,
        authority: Authority,
        subs: &Mutex<BTreeSet<SubId>>,
    ) -> Result<Reply, WireError> {
        if authority == Authority::Guest && *caller == Credential::Host {
            return Err(mempart::Error::new(
                Errno::Eperm,
                "connection",
                "a guest connection cannot act as the host",
            )
            .into());
        }
        let mut engine = lock(&self.engine);
        let e = &mut *engine;
        let mut reply = match op {
            Op::List { path } => Reply::Entries(e.list(caller, &path)?),
            Op::Metrics { path } => Reply::Metrics(Box::new(e.metrics(caller, &path)?)),
            Op::ClassMetrics { path } => Reply::Class(e.class_metrics(caller, &path)?),
            Op::Stat { path } => Reply::Perm(e.stat(&path)?),
            Op::Create {
                path,
                limits,
                mode,
                zone,
            } => {
                e.create(caller, &path, NewPartition { limits, mode, zone })?;
                Reply::Done
            }
            Op::SetLimits {
                path,
                min,
                max,
                reclaim,
            } => Reply::Outcome(e.set_limits(caller, &path, min, max, reclaim)?),
            Op::Destroy { path } => {
                e.destroy(caller, &path)?;
                Reply::Done
            }
            Op::Chmod { path, mode } => {
                e.chmod(caller, &path, mode)?;
                Reply::Done
            }
            Op::Chown { path, uid, gid } => {
                e.chown(caller, &path, uid, gid)?;
                Reply::Done
            }
            Op::SetPolicy { path, policy } => {
                e.set_policy(caller, &path, policy)?;
                Reply::Done
            }
            Op::ClearPolicy { path, policy } => {
                e.clear_policy(caller, &path, policy)?;
                Reply::Done
            }
            Op::ObjectCreate { pid, class, name } => {
                e.may_act_for(caller, pid)?;
                let id = class_named(e, &class)?;
                e.object_create(pid, &name, id)?;
                Reply::Done
            }
            Op::ObjectResize { name, change } => {
                self.resize_object(e, caller, &name, change)?;
                Reply::Done
            }
            Op::ObjectUnlink { name } => {
                let freed = e.object_unlink(caller, &name)?;
                self.revoke_objects(freed);
                Reply::Done
            }
            Op::ObjectMap { pid, name } => self.map_object(e, caller, pid, &name)?,
            Op::ObjectUnmap { pid, name } => {
                let freed = e.object_unmap(caller, pid, &name)?;
                self.revoke_objects(freed);
                Reply::Done
            }
            Op::ObjectStat { name } => Reply::Objects(vec![e.object(&name)?]),
            Op::Objects => Reply::Objects(e.objects()?),
            Op::Link { pseudo, target } => {
                e.link(caller, &pseudo, &target)?;
                Reply::Done
            }
            Op::ResetHighest { path } => Reply::Highest(e.reset_highest(caller, &path)?),
            Op::ProcessStart {
                pid,
                parent,
                spawn,
                owner,
            } => {
                e.register(
                    caller,
                    owner.as_ref().unwrap_or(caller),
                    pid,
                    parent,
                    &spawn,
                )?;
                Reply::Done
            }
            Op::ProcessExit { pid } => {
                e.may_act_for(caller, pid)?;
                let freed = e.process_exit(pid)?;
                self.revoke_all(pid);
                self.revoke_objects(freed);
                Reply::Done
            }
            Op::Associate { pid, path } => {
                e.associate(caller, pid, &path)?;
                Reply::Done
            }
            Op::Disassociate { pid, path } => {
                e.disassociate(caller, pid, &path)?;
                Reply::Done
            }
            Op::SetNoInherit {
                pid,
                path,
                no_inherit,
            } => {
                e.set_no_inherit(caller, pid, &path, no_inherit)?;
                Reply::Done
            }
            Op::ReplaceAssociations { pid, parts } => {
                e.replace_associations(caller, pid, &parts)?;
                Reply::Done
            }
            Op::ProcessView { pid } => Reply::Associations(e.process_partitions(pid)?),
            Op::Subscribe {
                path,
                filter,
                capacity,
            } => {
                let mut mine = lock(subs);
                if authority == Authority::Host && mine.len() >= MAX_SUBSCRIPTIONS_PER_CONNECTION {
                    return Err(mempart::Error::new(
                        Errno::Enomem,
                        path,
                        format!("at most {MAX_SUBSCRIPTIONS_PER_CONNECTION} subscriptions per connection"),
                    )
                    .into());
                }
                let sub = e.subscribe(caller, &path, filter, capacity as usize)?;
                mine.insert(sub);
                Reply::Subscribed(sub)
            }
            Op::Unsubscribe { sub } => {
                if !lock(subs).remove(&sub) {
                    return Err(mempart::Error::new(
                        Errno::Enoent,
                        format!("{sub:?}"),
                        "not a subscription of this connection",
                    )
                    .into());
                }
                e.unsubscribe(sub)?;
                Reply::Done
            }
            Op::Allocate { pid, class, bytes } => {
                e.may_act_for(caller, pid)?;
                let id = class_named(e, &class)?;
                let grant = e.allocate(pid, id, bytes)?;
                let typed = self.typed.get().filter(|_| class != mempart::SYSRAM);
                let gpa = match typed {
                    None => None,
                    Some(typed) => match typed.grant(&class, bytes) {
                        Ok(gpa) => {
                            let extent = Extent {
                                class: class.clone(),
                                grant,
                                gpa,
                                seq: self
                                    .granted
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                            };
                            lock(&self.extents).entry(pid).or_default().push(extent);
                            Some(gpa)
                        }
                        Err(why) => {
                            e.free(pid, grant)?;
                            return Err(mempart::Error::new(
                                Errno::Enomem,
                                format!("{}/{class}", mempart::MEM_ROOT),
                                format!("no extent of {bytes} bytes: {why}"),
                            )
                            .into());
                        }
                    },
                };
                Reply::Granted { grant, gpa }
            }
            Op::ReportUsage { path, own } => {
                e.report_usage(caller, &path, own)?;
                Reply::Done
            }
            Op::Free { pid, grant, gpa } => {
                e.may_act_for(caller, pid)?;
                let mut extents = lock(&self.extents);
                let mine = extents.entry(pid).or_default();
                let at = mine
                    .iter()
                    .enumerate()
                    .filter(|(_, x)| x.grant == grant && gpa.is_none_or(|g| g == x.gpa))
                    .min_by_key(|(_, x)| x.seq)
                    .map(|(i, _)| i);
                if let (Some(gpa), None) = (gpa, at) {
                    return Err(mempart::Error::new(
                        Errno::Enoent,
                        format!("0x{gpa:x}"),
                        "no extent of this grant starts here",
                    )
                    .into());
                }
                // Where typed memory backs the class, a charge exists only as extents: a
                // free that names none of the process's would lower the charge while the
                // guest keeps the memory.
                let typed = self.typed.get().filter(|_| {
                    e.class_of(grant.partition)
                        .is_ok_and(|c| Some(c) != e.class_id(mempart::SYSRAM))
                });
                if typed.is_some() && at.is_none() {
                    return Err(mempart::Error::new(
                        Errno::Enoent,
                        e.path_of(grant.partition)?,
                        format!("no extent of {} bytes is granted to pid {pid}", grant.bytes),
                    )
                    .into());
                }
                // The guest loses the extent before the engine counts it free: if it
                // cannot be taken back, nothing changes.
                if let (Some(extent), Some(typed)) = (at.and_then(|i| mine.get(i)), typed) {
                    typed.revoke(&extent.class, extent.gpa).map_err(|why| {
                        mempart::Error::new(
                            Errno::Ebusy,
                            format!("0x{:x}", extent.gpa),
                            format!("the extent could not be taken back from the guest: {why}"),
                        )
                    })?;
                }
                if let Some(i) = at {
                    mine.remove(i);
                }
                e.free(pid, grant)?;
                Reply::Done
            }
        };
        // A zone is measured (mincore over its region) without holding up the engine.
        drop(engine);
        if let Reply::Metrics(metrics) = &mut reply {
            self.measure_zone(metrics);
        }
        Ok(reply)
    }
}
