//! What the allocation benchmarks share: the engines they allocate in, the chain baselines
//! and the loop that times a workload.

// A benchmark whose set-up fails has nothing to measure: it stops with the reason.
#![allow(clippy::expect_used)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use mempart::{ClassId, ClassSpec, Credential, Engine, Limits, NewPartition, Spawn};

/// The bytes each round allocates and frees.
pub const PAGE: u64 = 4096;

/// An engine whose process 1 is associated with the leaf of a chain `depth` partitions deep.
pub fn chain_engine(depth: usize) -> Engine {
    let host = Credential::Host;
    let mut e = Engine::new(&[ClassSpec::new("sysram", 1 << 30)]).expect("engine");
    let mut path = String::from("/partition/mem/sysram");
    for level in 1..=depth {
        path.push_str(&format!("/l{level}"));
        let spec = NewPartition {
            limits: Limits {
                min: 0,
                max: 1 << 29,
            },
            ..NewPartition::default()
        };
        e.create(&host, &path, spec).expect("create");
    }
    e.process_start(&host, 1, None, &Spawn::SetMpart(vec![path]))
        .expect("process");
    e
}

/// [`chain_engine`] with `others` more processes tracked, their pids spread over Linux's
/// range, the allocating process registered last.
pub fn crowded_engine(depth: usize, others: u32) -> Engine {
    let host = Credential::Host;
    let mut e = chain_engine(depth);
    e.process_exit(1).expect("exit");
    for i in 0..others {
        let pid = 2 + i * (mempart::PID_LIMIT / (others + 2));
        e.process_start(&host, pid, None, &Spawn::Inherit)
            .expect("process");
    }
    let leaf = (1..=depth).fold(String::from("/partition/mem/sysram"), |path, level| {
        format!("{path}/l{level}")
    });
    e.process_start(&host, 1, None, &Spawn::SetMpart(vec![leaf]))
        .expect("process");
    e
}

/// The least work an allocation could do: add to every node up a chain, then take it off.
pub struct Chain {
    parent: Vec<Option<usize>>,
    value: Vec<u64>,
}

impl Chain {
    pub fn new(depth: usize) -> Chain {
        Chain {
            parent: (0..depth).map(|i| i.checked_sub(1)).collect(),
            value: vec![0; depth],
        }
    }

    pub fn add(&mut self, leaf: usize, delta: u64, up: bool) {
        let mut cur = Some(leaf);
        while let Some(i) = cur {
            if let Some(v) = self.value.get_mut(i) {
                *v = if up { *v + delta } else { *v - delta };
            }
            cur = self.parent.get(i).copied().flatten();
        }
    }
}

/// The chain reached by process id: a map from pids to their (class, leaf) pairs, as the
/// least lookup an allocation on behalf of a process needs.
pub struct ByPid {
    processes: BTreeMap<u32, Vec<(u32, usize)>>,
    chain: Chain,
}

impl ByPid {
    pub fn new(depth: usize) -> ByPid {
        ByPid {
            processes: BTreeMap::from([(1, vec![(0, depth - 1)])]),
            chain: Chain::new(depth),
        }
    }

    pub fn add(&mut self, pid: u32, class: u32, delta: u64, up: bool) {
        let leaf = self
            .processes
            .get(&pid)
            .and_then(|assocs| assocs.iter().find(|a| a.0 == class))
            .map(|a| a.1);
        if let Some(leaf) = leaf {
            self.chain.add(leaf, delta, up);
        }
    }
}

/// Times `iters` rounds of `round`. Every row goes through this loop, one copy of it per
/// workload, kept out of line: each workload is compiled as a small function of its own
/// rather than into criterion's generic timing loop, whose surroundings differ from row
/// to row. The round itself is inlined, so no call per round is timed.
#[inline(never)]
pub fn timed<F: FnMut()>(iters: u64, mut round: F) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        round();
    }
    start.elapsed()
}

/// The engine rows' rounds: process 1 allocates a page and frees it. Both engine rows
/// use this one loop.
pub fn engine_rounds(engine: &mut Engine, class: ClassId, iters: u64) -> Duration {
    timed(iters, || {
        let grant = engine
            .allocate(1, class, black_box(PAGE))
            .expect("allocate");
        engine.free(1, grant).expect("free");
    })
}

/// The baseline rows' rounds: add a page along the chain from its leaf and take it off.
pub fn chain_rounds(chain: &mut Chain, depth: usize, iters: u64) -> Duration {
    timed(iters, || {
        chain.add(depth - 1, black_box(PAGE), true);
        chain.add(depth - 1, black_box(PAGE), false);
    })
}

/// The by-pid baseline rows' rounds: the same, reached through process 1.
pub fn by_pid_rounds(by_pid: &mut ByPid, iters: u64) -> Duration {
    timed(iters, || {
        by_pid.add(black_box(1), 0, black_box(PAGE), true);
        by_pid.add(black_box(1), 0, black_box(PAGE), false);
    })
}
