//! Helpers shared by the engine's integration tests.

// Each test crate includes this module and uses only part of it.
#![allow(dead_code)]

/// The value of a result that must succeed; the engine's message otherwise.
pub fn ok<T>(r: mempart::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// The errno of a result that must fail.
pub fn errno<T: std::fmt::Debug>(r: mempart::Result<T>) -> mempart::Errno {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.errno,
    }
}
