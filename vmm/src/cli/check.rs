//! `mempart-vmm check`: a topology validated against the classes without booting.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use mempart::topology::{Topology, TopologyError};
use mempart::ClassSpec;
use vmm::vm::zones;

use super::run::{classes, print_table};

/// Prints the accounting table of `topology` over the classes, or every rule it breaks.
pub fn check(topology: PathBuf, class_args: &[String]) -> anyhow::Result<ExitCode> {
    let classes = classes(class_args)?;
    let text = std::fs::read_to_string(&topology)
        .with_context(|| format!("topology {}", topology.display()))?;
    let specs: Vec<ClassSpec> = classes
        .iter()
        .map(|c| ClassSpec::new(c.name.clone(), c.size))
        .collect();
    // Each zoned partition gets the zone of its own the VMM would give it.
    let built = Topology::parse(&text).map_err(|e| vec![e]).and_then(|t| {
        let zones = zones::for_topology(&t, &[]).map_err(|e| {
            vec![TopologyError::Rule {
                entry: "zones".into(),
                message: e.to_string(),
            }]
        })?;
        t.build_with_zones(&specs, &zones::engine_specs(&zones))
    });
    match built {
        Ok(engine) => {
            print_table(&engine, &std::collections::HashMap::new())?;
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for e in errors {
                eprintln!("mempart-vmm: {}: {e}", topology.display());
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
