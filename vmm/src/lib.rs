//! `mempart-vmm`: a minimal KVM VMM whose guest memory is split into memory classes, each
//! its own host region, with the partition engine deciding who may use what.

pub mod api;
pub mod config;
pub mod reclaim;
pub mod service;
pub mod startup;
pub mod vm;

pub use config::{SerialOut, VmConfig};
pub use vm::violations::Violation;
pub use vm::{Backend, ExitCounts, Vm, VmError, VmExit, VmHandle, ZoneFigures};
