//! Start-up timestamps: with `MEMPART_STARTUP_TRACE` set, each set-up step is printed to
//! stderr with the time since the VMM was spawned (or since `main` when the spawn time is
//! not given), so a slow start can be taken apart without a tracer.

use std::io::Write;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Environment variable that turns the start-up trace on (any value).
pub const TRACE_ENV: &str = "MEMPART_STARTUP_TRACE";
/// Environment variable with the wall-clock time (ns since the epoch) the VMM was spawned
/// at; the trace's times count from it when it is set.
pub const SPAWN_NS_ENV: &str = "MEMPART_SPAWN_NS";

/// The trace's origin (ns since the epoch), or `None` when tracing is off.
static ORIGIN: OnceLock<Option<u128>> = OnceLock::new();

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn origin() -> Option<u128> {
    *ORIGIN.get_or_init(|| {
        std::env::var_os(TRACE_ENV)?;
        let spawned = std::env::var(SPAWN_NS_ENV)
            .ok()
            .and_then(|v| v.parse::<u128>().ok());
        Some(spawned.unwrap_or_else(now_ns))
    })
}

/// Whether the trace is on.
pub fn enabled() -> bool {
    origin().is_some()
}

/// Prints `step` with the time since the origin, when the trace is on. The first call
/// fixes the origin when no spawn time was given.
pub fn mark(step: &str) {
    if let Some(origin) = origin() {
        let us = now_ns().saturating_sub(origin) / 1000;
        // One write, so the line costs one system call and never interleaves.
        let line = format!(
            "mempart-vmm: startup {:>4}.{:03} ms  {step}\n",
            us / 1000,
            us % 1000
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}
