//! Model-based property test: random operation sequences over random trees, checked after
//! every step against a from-scratch recomputation of the accounting model.

// The oracle indexes its own freshly built tables; a bad index is a bug in the test.
#![allow(clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use mempart::{
    ClassSpec, Credential, Engine, Errno, EventFilter, Grant, Limits, NewPartition, PartId, Policy,
    Spawn, UNLIMITED,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const PAGE: u64 = 4096;
/// The last class is measured: nothing allocates in it, its partitions' use is reported
/// (as the agent reports sysram's) and kept even above a limit.
const CLASSES: [(&str, u64); 3] = [
    ("sysram", 64 * PAGE),
    ("fast", 32 * PAGE),
    (MEASURED, 48 * PAGE),
];
const MEASURED: &str = "measured";
const OBJECTS: [&str; 3] = ["shm-a", "shm b", "shm-c"];
const STEPS: usize = 250;
const CASES: u32 = 420;

static OPERATIONS: AtomicUsize = AtomicUsize::new(0);
static JUDGED_FITS: AtomicUsize = AtomicUsize::new(0);
static JUDGED_ENOMEM: AtomicUsize = AtomicUsize::new(0);
static REPORTS: AtomicUsize = AtomicUsize::new(0);
static FORCED: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Clone)]
enum Op {
    Create {
        parent: u8,
        class: u8,
        min: u8,
        max: Option<u8>,
        guest: bool,
    },
    Destroy {
        part: u8,
        guest: bool,
    },
    SetMin {
        part: u8,
        min: u8,
    },
    SetMax {
        part: u8,
        max: Option<u8>,
        reclaim: bool,
    },
    Start {
        parent: Option<u8>,
        list: Option<Vec<u8>>,
    },
    Associate {
        pid: u8,
        part: u8,
        guest: bool,
    },
    Disassociate {
        pid: u8,
        part: u8,
    },
    NoInherit {
        pid: u8,
        part: u8,
        flag: bool,
    },
    Exit {
        pid: u8,
    },
    Alloc {
        pid: u8,
        class: u8,
        pages: u8,
    },
    Free {
        grant: u8,
    },
    ObjCreate {
        pid: u8,
        class: u8,
        name: u8,
    },
    ObjResize {
        name: u8,
        pages: u8,
    },
    ObjUnlink {
        name: u8,
    },
    ObjMap {
        pid: u8,
        name: u8,
        map: bool,
    },
    SetPolicy {
        part: u8,
        policy: u8,
    },
    Chmod {
        part: u8,
        mode: u16,
        guest: bool,
    },
    /// A measured partition's use as reported (up to beyond the class's size).
    Report {
        part: u8,
        pages: u8,
        guest: bool,
    },
    /// A subscriber on a partition: changes of its use then take the engine's follow-up
    /// path (events), which must leave the figures as exact as the quiet path.
    Subscribe {
        part: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let small = 0u8..12;
    prop_oneof![
        4 => (any::<u8>(), 0u8..3, small.clone(), prop::option::of(0u8..40), any::<bool>())
            .prop_map(|(parent, class, min, max, guest)| Op::Create { parent, class, min, max, guest }),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(part, guest)| Op::Destroy { part, guest }),
        2 => (any::<u8>(), small.clone()).prop_map(|(part, min)| Op::SetMin { part, min }),
        2 => (any::<u8>(), prop::option::of(0u8..40), any::<bool>())
            .prop_map(|(part, max, reclaim)| Op::SetMax { part, max, reclaim }),
        3 => (prop::option::of(any::<u8>()), prop::option::of(prop::collection::vec(any::<u8>(), 0..3)))
            .prop_map(|(parent, list)| Op::Start { parent, list }),
        3 => (any::<u8>(), any::<u8>(), any::<bool>()).prop_map(|(pid, part, guest)| Op::Associate { pid, part, guest }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(pid, part)| Op::Disassociate { pid, part }),
        1 => (any::<u8>(), any::<u8>(), any::<bool>()).prop_map(|(pid, part, flag)| Op::NoInherit { pid, part, flag }),
        1 => any::<u8>().prop_map(|pid| Op::Exit { pid }),
        6 => (any::<u8>(), 0u8..2, 0u8..10).prop_map(|(pid, class, pages)| Op::Alloc { pid, class, pages }),
        4 => any::<u8>().prop_map(|grant| Op::Free { grant }),
        1 => (any::<u8>(), 0u8..2, 0u8..3).prop_map(|(pid, class, name)| Op::ObjCreate { pid, class, name }),
        2 => (0u8..3, 0u8..12).prop_map(|(name, pages)| Op::ObjResize { name, pages }),
        1 => (0u8..3).prop_map(|name| Op::ObjUnlink { name }),
        2 => (any::<u8>(), 0u8..3, any::<bool>()).prop_map(|(pid, name, map)| Op::ObjMap { pid, name, map }),
        1 => (any::<u8>(), 0u8..3).prop_map(|(part, policy)| Op::SetPolicy { part, policy }),
        1 => (any::<u8>(), 0u16..0o1000, any::<bool>()).prop_map(|(part, mode, guest)| Op::Chmod { part, mode, guest }),
        3 => (any::<u8>(), 0u8..60, any::<bool>()).prop_map(|(part, pages, guest)| Op::Report { part, pages, guest }),
        1 => any::<u8>().prop_map(|part| Op::Subscribe { part }),
    ]
}

/// One partition as seen through the public API.
#[derive(Debug, Clone)]
struct Seen {
    id: Option<PartId>,
    parent: Option<usize>,
    class: String,
    min: u64,
    limit: u64,
    own: u64,
}

/// Everything the oracle needs, read through the public API only (and, for measured
/// partitions, the use the test reported); parents are indices.
fn observe(e: &Engine, reported: &BTreeMap<PartId, u64>) -> Vec<Seen> {
    let ids = e.partitions();
    let index: BTreeMap<PartId, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut out = Vec::new();
    for id in &ids {
        let m = e
            .partition_metrics(*id)
            .unwrap_or_else(|err| panic!("{err}"));
        let parent = m
            .path
            .rsplit_once('/')
            .and_then(|(p, _)| e.resolve_partition(p).ok())
            .and_then(|p| index.get(&p).copied());
        out.push(Seen {
            id: Some(*id),
            parent,
            class: m.class,
            min: m.current.limits.min,
            limit: m.pending_max.unwrap_or(m.current.limits.max),
            own: reported.get(id).copied().unwrap_or(0),
        });
    }
    let mut add = |id: PartId, bytes: u64| {
        if let Some(s) = index.get(&id).and_then(|i| out.get_mut(*i)) {
            s.own += bytes;
        }
    };
    for pid in e.pids() {
        for a in e
            .process_partitions(pid)
            .unwrap_or_else(|err| panic!("{err}"))
        {
            add(a.partition, a.charged);
        }
        for g in e
            .retained_charges(pid)
            .unwrap_or_else(|err| panic!("{err}"))
        {
            add(g.partition, g.bytes);
        }
    }
    for o in e.objects().unwrap_or_else(|err| panic!("{err}")) {
        add(
            e.resolve_partition(&o.partition)
                .unwrap_or_else(|err| panic!("{err}")),
            o.size,
        );
    }
    out
}

/// `used` of every partition and `Σ charge(roots)` of every class, from scratch (§4).
fn recompute(seen: &[Seen]) -> (Vec<u128>, BTreeMap<String, u128>) {
    let depth = |i: usize| {
        let mut d = 0usize;
        let mut cur = seen[i].parent;
        while let Some(p) = cur {
            d += 1;
            assert!(d <= seen.len(), "parent cycle");
            cur = seen[p].parent;
        }
        d
    };
    let mut order: Vec<usize> = (0..seen.len()).collect();
    order.sort_by_key(|i| std::cmp::Reverse(depth(*i)));
    let mut used: Vec<u128> = seen.iter().map(|s| u128::from(s.own)).collect();
    let mut roots: BTreeMap<String, u128> =
        CLASSES.iter().map(|(c, _)| (c.to_string(), 0)).collect();
    for i in order {
        let charge = u128::from(seen[i].min).max(used[i]);
        match seen[i].parent {
            Some(p) => used[p] += charge,
            None => *roots.entry(seen[i].class.clone()).or_default() += charge,
        }
    }
    (used, roots)
}

/// A change the oracle judges: to one partition's own bytes and min, or a new child.
enum Change<'a> {
    Own {
        id: PartId,
        delta: i128,
        min: Option<u64>,
    },
    Child {
        parent: Option<PartId>,
        class: &'a str,
        min: u64,
    },
}

/// Whether `change` keeps every invariant, judged from scratch: no partition whose use
/// grows ends above its (pending) max and no class whose roots' charge grows ends above
/// its size.
fn fits(e: &Engine, reported: &BTreeMap<PartId, u64>, change: Change) -> bool {
    let mut seen = observe(e, reported);
    let (before_used, before_roots) = recompute(&seen);
    let position = |seen: &[Seen], id: PartId| seen.iter().position(|s| s.id == Some(id));
    match change {
        Change::Own { id, delta, min } => {
            let Some(s) = position(&seen, id).and_then(|i| seen.get_mut(i)) else {
                return false;
            };
            let Ok(own) = u64::try_from(i128::from(s.own) + delta) else {
                return false;
            };
            s.own = own;
            if let Some(m) = min {
                s.min = m;
            }
        }
        Change::Child { parent, class, min } => {
            let parent = parent.and_then(|p| position(&seen, p));
            seen.push(Seen {
                id: None,
                parent,
                class: class.to_string(),
                min,
                limit: UNLIMITED,
                own: 0,
            });
        }
    }
    let (after_used, after_roots) = recompute(&seen);
    let parts_ok = after_used.iter().enumerate().all(|(i, u)| {
        before_used.get(i).is_some_and(|b| u <= b) || *u <= u128::from(seen[i].limit)
    });
    let classes_ok = CLASSES.iter().all(|(c, size)| {
        let (b, a) = (before_roots[*c], after_roots[*c]);
        a <= b || a <= u128::from(*size)
    });
    parts_ok && classes_ok
}

/// The invariants and the engine's incremental figures against the from-scratch model.
/// `highest` holds each partition's highest use as of the previous step, `class_highest`
/// each class's highest allocated bytes: no operation raises a figure and lowers it
/// again, so the highest now is exactly the larger of that and the figure now.
fn check(
    e: &Engine,
    reported: &BTreeMap<PartId, u64>,
    highest: &mut BTreeMap<PartId, u64>,
    class_highest: &mut BTreeMap<&'static str, u64>,
) -> Result<(), TestCaseError> {
    let seen = observe(e, reported);
    let (used, roots) = recompute(&seen);
    for (s, used) in seen.iter().zip(&used) {
        let id =
            s.id.unwrap_or_else(|| panic!("observed partitions have ids"));
        let m = e
            .partition_metrics(id)
            .map_err(|err| TestCaseError::fail(err.to_string()))?;
        prop_assert_eq!(m.own, s.own, "own of {}", m.path);
        prop_assert_eq!(u128::from(m.used), *used, "used of {}", m.path);
        prop_assert_eq!(
            u128::from(m.charge),
            u128::from(s.min).max(*used),
            "charge of {}",
            m.path
        );
        // A report is kept even above a limit; everything else keeps the invariant.
        prop_assert!(
            m.used <= m.current.limits.max || s.class == MEASURED,
            "used above max in {}",
            m.path
        );
        prop_assert!(m.current.limits.min <= m.current.limits.max);
        let expected = highest.get(&id).copied().unwrap_or(0).max(m.used);
        prop_assert_eq!(m.highest, expected, "highest of {}", m.path);
        highest.insert(id, expected);
        if let Some(pending) = m.pending_max {
            prop_assert!(m.used > pending, "{} fits its pending max", m.path);
        }
    }
    for (class, size) in CLASSES {
        let c = e
            .class_figures(e.class_id(class).unwrap_or_else(|| panic!("class")))
            .map_err(|err| TestCaseError::fail(err.to_string()))?;
        let own: u64 = seen
            .iter()
            .filter(|s| s.class == class)
            .map(|s| s.own)
            .sum();
        prop_assert!(
            roots[class] <= u128::from(size) || class == MEASURED,
            "class {} over its size",
            class
        );
        prop_assert_eq!(c.allocated, own);
        prop_assert_eq!(
            u128::from(c.free),
            u128::from(size).saturating_sub(roots[class])
        );
        prop_assert_eq!(
            u128::from(c.reserved_unused),
            roots[class] - u128::from(own)
        );
        let expected = class_highest
            .get(class)
            .copied()
            .unwrap_or(0)
            .max(c.allocated);
        prop_assert_eq!(c.highest_allocated, expected, "highest of {}", class);
        class_highest.insert(class, expected);
    }
    Ok(())
}

fn pick<T: Clone>(items: &[T], i: u8) -> Option<T> {
    if items.is_empty() {
        None
    } else {
        items.get(usize::from(i) % items.len()).cloned()
    }
}

fn run_sequence(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let specs: Vec<ClassSpec> = CLASSES
        .iter()
        .map(|(n, s)| ClassSpec::new(*n, *s))
        .collect();
    let mut e = Engine::new(&specs).map_err(|err| TestCaseError::fail(err.to_string()))?;
    let host = Credential::Host;
    let guest = Credential::guest(1000, 1000);
    let mut grants: Vec<(u32, Grant)> = Vec::new();
    let mut reported: BTreeMap<PartId, u64> = BTreeMap::new();
    let mut highest: BTreeMap<PartId, u64> = BTreeMap::new();
    let mut class_highest: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut next_pid = 1u32;
    let mut names = 0usize;
    for op in ops {
        OPERATIONS.fetch_add(1, Ordering::Relaxed);
        let before = e.clone();
        let mut paths: Vec<String> = e
            .partitions()
            .into_iter()
            .filter_map(|id| e.path_of(id).ok())
            .collect();
        paths.sort();
        let pids = e.pids();
        let cred = |g: bool| if g { guest.clone() } else { host.clone() };
        let class_name = |c: u8| CLASSES[usize::from(c) % CLASSES.len()].0;
        let mut oracle: Option<bool> = None;
        let result: mempart::Result<()> = match op {
            Op::Create {
                parent,
                class,
                min,
                max,
                guest: g,
            } => {
                let parent_path = pick(&paths, parent)
                    .filter(|_| parent % 3 != 0)
                    .unwrap_or_else(|| format!("/partition/mem/{}", class_name(class)));
                names += 1;
                let path = format!("{parent_path}/n{names}");
                let min = u64::from(min) * PAGE;
                let max = max.map_or(UNLIMITED, |m| u64::from(m) * PAGE);
                if min <= max {
                    let parent_id = e.resolve_partition(&parent_path).ok();
                    let class = parent_id
                        .and_then(|p| e.partition_metrics(p).ok())
                        .map_or(class_name(class).to_string(), |m| m.class);
                    oracle = Some(fits(
                        &e,
                        &reported,
                        Change::Child {
                            parent: parent_id,
                            class: &class,
                            min,
                        },
                    ));
                }
                e.create(
                    &cred(g),
                    &path,
                    NewPartition {
                        limits: Limits { min, max },
                        mode: 0o755,
                        zone: false,
                    },
                )
                .map(drop)
            }
            Op::Destroy { part, guest: g } => match pick(&paths, part) {
                Some(p) => e.destroy(&cred(g), &p),
                None => Ok(()),
            },
            Op::SetMin { part, min } => match pick(&paths, part) {
                Some(p) => {
                    let min = u64::from(min) * PAGE;
                    let id = e
                        .resolve_partition(&p)
                        .map_err(|err| TestCaseError::fail(err.to_string()))?;
                    oracle = Some(fits(
                        &e,
                        &reported,
                        Change::Own {
                            id,
                            delta: 0,
                            min: Some(min),
                        },
                    ));
                    e.set_limits(&host, &p, Some(min), None, false).map(drop)
                }
                None => Ok(()),
            },
            Op::SetMax { part, max, reclaim } => match pick(&paths, part) {
                Some(p) => e
                    .set_limits(
                        &host,
                        &p,
                        None,
                        Some(max.map_or(UNLIMITED, |m| u64::from(m) * PAGE)),
                        reclaim,
                    )
                    .map(drop),
                None => Ok(()),
            },
            Op::Start { parent, list } => {
                let pid = next_pid;
                next_pid += 1;
                let parent = parent.and_then(|p| pick(&pids, p));
                let spawn = match list {
                    None => Spawn::Inherit,
                    Some(l) => {
                        Spawn::SetMpart(l.into_iter().filter_map(|i| pick(&paths, i)).collect())
                    }
                };
                e.process_start(&host, pid, parent, &spawn)
            }
            Op::Associate {
                pid,
                part,
                guest: g,
            } => match (pick(&pids, pid), pick(&paths, part)) {
                (Some(pid), Some(p)) => e.associate(&cred(g), pid, &p),
                _ => Ok(()),
            },
            Op::Disassociate { pid, part } => match (pick(&pids, pid), pick(&paths, part)) {
                (Some(pid), Some(p)) => e.disassociate(&host, pid, &p),
                _ => Ok(()),
            },
            Op::NoInherit { pid, part, flag } => match (pick(&pids, pid), pick(&paths, part)) {
                (Some(pid), Some(p)) => e.set_no_inherit(&host, pid, &p, flag),
                _ => Ok(()),
            },
            Op::Exit { pid } => match pick(&pids, pid) {
                Some(pid) => {
                    grants.retain(|(p, _)| *p != pid);
                    e.process_exit(pid).map(drop)
                }
                None => Ok(()),
            },
            Op::Alloc { pid, class, pages } => match pick(&pids, pid) {
                Some(pid) => {
                    let class_id = e
                        .class_id(class_name(class))
                        .unwrap_or_else(|| panic!("class"));
                    let bytes = u64::from(pages) * PAGE;
                    let target = e
                        .process_partitions(pid)
                        .ok()
                        .and_then(|v| v.into_iter().find(|a| a.class == class_name(class)))
                        .map(|a| a.partition);
                    if bytes > 0 {
                        oracle = target.map(|id| {
                            fits(
                                &e,
                                &reported,
                                Change::Own {
                                    id,
                                    delta: i128::from(bytes),
                                    min: None,
                                },
                            )
                        });
                    }
                    e.allocate(pid, class_id, bytes)
                        .map(|g| grants.push((pid, g)))
                }
                None => Ok(()),
            },
            Op::Free { grant } => {
                if grants.is_empty() {
                    Ok(())
                } else {
                    let (pid, g) = grants.remove(usize::from(grant) % grants.len());
                    e.free(pid, g)
                }
            }
            Op::ObjCreate { pid, class, name } => match pick(&pids, pid) {
                Some(pid) => {
                    let class_id = e
                        .class_id(class_name(class))
                        .unwrap_or_else(|| panic!("class"));
                    e.object_create(pid, OBJECTS[usize::from(name)], class_id)
                }
                None => Ok(()),
            },
            Op::ObjResize { name, pages } => {
                let name = OBJECTS[usize::from(name)];
                let new = u64::from(pages) * PAGE;
                if let Some(o) = e
                    .objects()
                    .ok()
                    .and_then(|v| v.into_iter().find(|o| o.linked && o.name == name))
                {
                    let id = e
                        .resolve_partition(&o.partition)
                        .map_err(|err| TestCaseError::fail(err.to_string()))?;
                    oracle = Some(fits(
                        &e,
                        &reported,
                        Change::Own {
                            id,
                            delta: i128::from(new) - i128::from(o.size),
                            min: None,
                        },
                    ));
                }
                e.object_resize(name, new)
            }
            Op::ObjUnlink { name } => e.object_unlink(&host, OBJECTS[usize::from(name)]).map(drop),
            Op::ObjMap { pid, name, map } => match pick(&pids, pid) {
                Some(pid) if map => e
                    .object_map(&host, pid, OBJECTS[usize::from(name)])
                    .map(drop),
                Some(pid) => e
                    .object_unmap(&host, pid, OBJECTS[usize::from(name)])
                    .map(drop),
                None => Ok(()),
            },
            Op::SetPolicy { part, policy } => match pick(&paths, part) {
                Some(p) => {
                    let policy = [Policy::Terminal, Policy::ConfigLock, Policy::Permanent]
                        [usize::from(policy)];
                    e.set_policy(&host, &p, policy)
                }
                None => Ok(()),
            },
            Op::Chmod {
                part,
                mode,
                guest: g,
            } => match pick(&paths, part) {
                Some(p) => e.chmod(&cred(g), &p, u32::from(mode)),
                None => Ok(()),
            },
            Op::Subscribe { part } => match pick(&paths, part) {
                Some(p) => e
                    .subscribe(&host, &p, EventFilter::default(), 4)
                    .map(|_| ()),
                None => Ok(()),
            },
            Op::Report {
                part,
                pages,
                guest: g,
            } => {
                let measured: Vec<String> = paths
                    .iter()
                    .filter(|p| p.starts_with(&format!("/partition/mem/{MEASURED}/")))
                    .cloned()
                    .collect();
                match pick(&measured, part) {
                    Some(p) => {
                        let own = u64::from(pages) * PAGE;
                        let id = e
                            .resolve_partition(&p)
                            .map_err(|err| TestCaseError::fail(err.to_string()))?;
                        let outcome = e.report_usage(&cred(g), &p, own);
                        if outcome.is_ok() {
                            reported.insert(id, own);
                            REPORTS.fetch_add(1, Ordering::Relaxed);
                            let over = e
                                .partition_metrics(id)
                                .is_ok_and(|m| m.used > m.current.limits.max);
                            if over {
                                FORCED.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        outcome
                    }
                    None => Ok(()),
                }
            }
        };
        match &result {
            Ok(()) => {
                if let Some(fit) = oracle {
                    prop_assert!(fit, "succeeded although the model says it does not fit");
                    JUDGED_FITS.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(err) => {
                prop_assert!(e == before, "failed with {} but changed the state", err);
                if err.errno == Errno::Enomem {
                    if let Some(fit) = oracle {
                        prop_assert!(!fit, "ENOMEM although the model says it fits: {}", err);
                        JUDGED_ENOMEM.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        reported.retain(|id, _| e.partition_metrics(*id).is_ok());
        highest.retain(|id, _| e.partition_metrics(*id).is_ok());
        check(&e, &reported, &mut highest, &mut class_highest)?;
    }
    Ok(())
}

#[test]
fn random_operation_sequences_keep_the_model_exact() {
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        max_shrink_iters: 0,
        ..Config::default()
    });
    let strategy = prop::collection::vec(op(), STEPS);
    let outcome = runner.run(&strategy, run_sequence);
    if let Err(err) = outcome {
        panic!("{err}");
    }
    let checked = OPERATIONS.load(Ordering::Relaxed);
    assert!(checked >= 100_000, "only {checked} operations were checked");
    let (fit, enomem) = (
        JUDGED_FITS.load(Ordering::Relaxed),
        JUDGED_ENOMEM.load(Ordering::Relaxed),
    );
    assert!(
        fit >= 5_000 && enomem >= 1_000,
        "too few judged outcomes: {fit} fits, {enomem} ENOMEM"
    );
    let (reports, forced) = (
        REPORTS.load(Ordering::Relaxed),
        FORCED.load(Ordering::Relaxed),
    );
    assert!(
        reports >= 1_000 && forced >= 100,
        "only {reports} reports were accepted, {forced} of them above a max"
    );
    eprintln!("{checked} operations, {fit} fits and {enomem} ENOMEM judged, {reports} reports ({forced} above a max)");
}
