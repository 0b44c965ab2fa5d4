//! The engine's allocate+free against the chain baselines as ratios that hold on a noisy,
//! shared machine: the rounds of engine, baseline and by-pid baseline alternate, and each
//! figure is the median over the rounds (criterion times its rows one after another,
//! seconds apart, so drift of the machine lands in a ratio of two rows).
//!
//! `cargo bench -p mempart --bench ratio` prints one line per depth and process count.

// A benchmark whose set-up fails has nothing to measure: it stops with the reason.
#![allow(clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{
    by_pid_rounds, chain_engine, chain_rounds, crowded_engine, engine_rounds, ByPid, Chain,
};

/// Alternations of the three workloads per line.
const ROUNDS: usize = 61;
/// Allocate+free pairs per workload per round (a few milliseconds).
const ITERS: u64 = 200_000;

fn per_iter(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9 / ITERS as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn line(depth: usize, others: u32) {
    let mut engine = if others == 0 {
        chain_engine(depth)
    } else {
        crowded_engine(depth, others)
    };
    let sysram = engine.class_id("sysram").expect("sysram");
    let mut chain = Chain::new(depth);
    let mut by_pid = ByPid::new(depth);
    let (mut e, mut b, mut p, mut ratio) = (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        let te = per_iter(engine_rounds(&mut engine, sysram, ITERS));
        let tb = per_iter(chain_rounds(&mut chain, depth, ITERS));
        let tp = per_iter(by_pid_rounds(&mut by_pid, ITERS));
        e.push(te);
        b.push(tb);
        p.push(tp);
        ratio.push(te / tb);
    }
    println!(
        "{depth:>5} {:>9} {:>9.2} {:>9.2} {:>7.2}x {:>9.2}",
        others + 1,
        median(e),
        median(b),
        median(ratio),
        median(p)
    );
}

fn main() {
    println!("depth processes engine-ns  chain-ns   ratio by-pid-ns");
    for depth in [1, 4, 8] {
        line(depth, 0);
    }
    for others in [99, 9_999] {
        line(4, others);
    }
}
