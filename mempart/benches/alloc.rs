//! Allocate+free through the engine at depths 1, 4 and 8, beside a baseline that only adds
//! and subtracts along a parent chain of the same depth, and the same baseline reached
//! the way an allocation is: by process id, then the process's partition of the class.
//! One more row allocates at depth 4 among 10,000 other tracked processes.

// A benchmark whose set-up fails has nothing to measure: it stops with the reason.
#![allow(clippy::expect_used)]

mod common;

use common::{
    by_pid_rounds, chain_engine, chain_rounds, crowded_engine, engine_rounds, ByPid, Chain,
};
use criterion::{criterion_main, BenchmarkId, Criterion};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("allocate+free");
    for depth in [1usize, 4, 8] {
        let mut engine = chain_engine(depth);
        let sysram = engine.class_id("sysram").expect("sysram");
        group.bench_with_input(BenchmarkId::new("engine", depth), &depth, |b, _| {
            b.iter_custom(|iters| engine_rounds(&mut engine, sysram, iters))
        });
        let mut chain = Chain::new(depth);
        group.bench_with_input(BenchmarkId::new("baseline", depth), &depth, |b, _| {
            b.iter_custom(|iters| chain_rounds(&mut chain, depth, iters))
        });
        let mut by_pid = ByPid::new(depth);
        group.bench_with_input(
            BenchmarkId::new("baseline-by-pid", depth),
            &depth,
            |b, _| b.iter_custom(|iters| by_pid_rounds(&mut by_pid, iters)),
        );
    }
    let mut crowded = crowded_engine(4, 10_000);
    let sysram = crowded.class_id("sysram").expect("sysram");
    group.bench_function(BenchmarkId::new("engine-10k-processes", 4), |b| {
        b.iter_custom(|iters| engine_rounds(&mut crowded, sysram, iters))
    });
    group.finish();
}

/// Criterion's macros generate the undocumented entry points.
#[allow(missing_docs)]
mod entry {
    criterion::criterion_group!(benches, super::bench);
}

criterion_main!(entry::benches);
