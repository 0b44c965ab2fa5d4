//! The `mempart-vmm` subcommands, one module each; `main.rs` parses and dispatches.

pub mod check;
pub mod ctl;
pub mod run;
