//! The `mempart-vmm` command: `run` boots a guest, `ctl` talks to a running one's API,
//! `check` validates a topology. Each lives in `cli/`; this file parses and dispatches.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

use cli::ctl::Verb;
use cli::run::RunArgs;

/// A minimal KVM VMM whose guest memory is split into memory classes governed by
/// hierarchical partitions.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest kernel. Exit codes: 0 the guest shut down (an i8042 reset, as
    /// `reboot=k` does), 1 the VMM failed, 2 bad arguments, 3 the guest crashed.
    Run(RunArgs),
    /// Query or reshape a running VM through its host API (`run --api-sock`).
    Ctl {
        /// The API socket.
        #[arg(long)]
        api_sock: PathBuf,
        /// Print the API's JSON as it is.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        verb: Verb,
    },
    /// Validate a topology against the classes without booting and print the accounting
    /// table, or every violated rule (exit code 1).
    Check {
        /// Partition topology (TOML).
        #[arg(long)]
        topology: PathBuf,
        /// A memory class, as for `run`.
        #[arg(long = "class", value_name = "SPEC")]
        classes: Vec<String>,
    },
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check { topology, classes } => cli::check::check(topology, &classes),
        Command::Ctl {
            api_sock,
            json,
            verb,
        } => cli::ctl::ctl(&api_sock, json, verb),
        Command::Run(args) => cli::run::boot(args),
    }
}

fn main() -> ExitCode {
    vmm::startup::mark("main");
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mempart-vmm: error: {e:#}");
            ExitCode::FAILURE
        }
    };
    vmm::startup::mark("exiting");
    code
}
