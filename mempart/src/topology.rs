//! The start-up topology file (TOML): classes, nested partitions, groups, modes and policies.
//!
//! ```toml
//! [classes.sysram]
//! sys_min = "32M"            # sys becomes a Guarantee partition
//!
//! [classes.fast]
//! size = "128M"              # optional when the VMM defines the class
//!
//! [[partition]]
//! path = "/partition/mem/sysram/apps"
//! min = "64M"
//! max = "unlimited"
//! mode = 0o750
//! uid = 1000
//! gid = 1000
//! policies = ["permanent"]
//!
//! [[partition]]
//! path = "/partition/mem/sysram/db"
//! max = "256M"
//! zone = true                # a guest NUMA node of its own, sized by the VMM
//!
//! [[group]]
//! name = "web"
//! members = { ram = "/partition/mem/sysram/apps" }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::class::{ClassSpec, DEFAULT_UNIT};
use crate::engine::Engine;
use crate::name::components;
use crate::partition::{Limits, NewPartition, UNLIMITED};
use crate::security::{Credential, Policy, MODE_MASK};
use crate::zone::ZoneSpec;

/// Largest topology file accepted, in bytes.
pub const MAX_TOPOLOGY_BYTES: usize = 1 << 20;

/// A problem found while reading or applying a topology.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// The text is not a valid topology document.
    #[error("{0}")]
    Parse(String),
    /// An entry breaks a rule.
    #[error("{entry}: {message}")]
    Rule {
        /// The entry at fault, e.g. `partition "/partition/mem/sysram/a"`.
        entry: String,
        /// What is wrong.
        message: String,
    },
}

fn rule(entry: impl fmt::Display, message: impl fmt::Display) -> TopologyError {
    TopologyError::Rule {
        entry: entry.to_string(),
        message: message.to_string(),
    }
}

/// A size in bytes, written as an integer or a string with a binary suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

/// Parses `4096`, `4K`, `4KiB`, `64M`, `1G`, `2T` (binary multiples) or `unlimited`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("unlimited") || t == "inf" {
        return Ok(UNLIMITED);
    }
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, suffix) = t.split_at(digits_end);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("size {text:?} does not start with a number"))?;
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "size {text:?} has an unknown suffix (use K, M, G or T)"
            ))
        }
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {text:?} overflows 64 bits"))
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte count or a string such as \"64M\" or \"unlimited\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("size {v} is negative")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size(v).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Mode bits, written as a TOML integer (`0o750`) or an octal string (`"0750"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Mode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("mode bits such as 0o750 or \"0750\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Mode, E> {
                u32::try_from(v)
                    .ok()
                    .filter(|m| m & !MODE_MASK == 0)
                    .map(Mode)
                    .ok_or_else(|| E::custom(format!("mode {v:o} is not within 0o777")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Mode, E> {
                u32::from_str_radix(v.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| m & !MODE_MASK == 0)
                    .map(Mode)
                    .ok_or_else(|| E::custom(format!("mode {v:?} is not octal within 0777")))
            }
        }
        d.deserialize_any(V)
    }
}

/// One class entry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassEntry {
    /// Size; required unless the VMM defines the class.
    pub size: Option<Size>,
    /// Allocation unit (default 4K).
    pub unit: Option<Size>,
    /// Minimum of the class's `sys` partition.
    pub sys_min: Option<Size>,
}

/// One partition entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionEntry {
    /// Full path; its parent is another entry or a class.
    pub path: String,
    /// Minimum (default 0).
    pub min: Option<Size>,
    /// Maximum (default unlimited).
    pub max: Option<Size>,
    /// Mode bits (default 0o755).
    pub mode: Option<Mode>,
    /// Owner (default 0).
    pub uid: Option<u32>,
    /// Group (default 0).
    pub gid: Option<u32>,
    /// Policies to set.
    #[serde(default)]
    pub policies: Vec<Policy>,
    /// Back it with a zone of its own (top-level sysram, finite max).
    #[serde(default)]
    pub zone: bool,
}

/// One partition group entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupEntry {
    /// The group's name under `/partition/mem`.
    pub name: String,
    /// Mode bits (default 0o755).
    pub mode: Option<Mode>,
    /// Pseudo partition name → real partition path.
    #[serde(default)]
    pub members: BTreeMap<String, String>,
}

/// A whole topology document.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Classes by name.
    #[serde(default)]
    pub classes: BTreeMap<String, ClassEntry>,
    /// Partitions, in any order.
    #[serde(default, rename = "partition")]
    pub partitions: Vec<PartitionEntry>,
    /// Groups.
    #[serde(default, rename = "group")]
    pub groups: Vec<GroupEntry>,
}

impl Topology {
    /// Parses a topology document.
    pub fn parse(text: &str) -> Result<Topology, TopologyError> {
        if text.len() > MAX_TOPOLOGY_BYTES {
            return Err(TopologyError::Parse(format!(
                "the topology is {} bytes; at most {MAX_TOPOLOGY_BYTES} are read",
                text.len()
            )));
        }
        toml::from_str(text).map_err(|e| TopologyError::Parse(e.to_string().trim_end().to_string()))
    }

    /// The classes this topology and the VMM's `defined` classes describe together.
    pub fn class_specs(&self, defined: &[ClassSpec]) -> Result<Vec<ClassSpec>, Vec<TopologyError>> {
        let mut errors = Vec::new();
        let mut specs: Vec<ClassSpec> = defined.to_vec();
        for (name, entry) in &self.classes {
            let where_ = format!("class {name:?}");
            let unit = entry.unit.map_or(DEFAULT_UNIT, |u| u.0);
            let spec = match specs.iter_mut().find(|s| &s.name == name) {
                Some(spec) => {
                    if let Some(Size(size)) = entry.size {
                        if size != spec.size {
                            errors.push(rule(
                                &where_,
                                format!("size {size} differs from the VMM's {}", spec.size),
                            ));
                        }
                    }
                    if entry.unit.is_some() && unit != spec.unit {
                        errors.push(rule(
                            &where_,
                            format!("unit {unit} differs from the VMM's {}", spec.unit),
                        ));
                    }
                    spec
                }
                None => {
                    let Some(Size(size)) = entry.size else {
                        errors.push(rule(
                            &where_,
                            "has no size: give one here or define the class on the VMM",
                        ));
                        continue;
                    };
                    specs.push(ClassSpec {
                        name: name.clone(),
                        size,
                        unit,
                        sys_min: 0,
                    });
                    let Some(last) = specs.last_mut() else {
                        continue;
                    };
                    last
                }
            };
            if let Some(Size(min)) = entry.sys_min {
                spec.sys_min = min;
            }
        }
        if errors.is_empty() {
            Ok(specs)
        } else {
            Err(errors)
        }
    }

    /// The zoned partition entries: each path with its max (unlimited when none is given,
    /// which building then refuses). The VMM declares a zone for each.
    pub fn zoned(&self) -> Vec<(&str, u64)> {
        self.partitions
            .iter()
            .filter(|p| p.zone)
            .map(|p| (p.path.as_str(), p.max.map_or(UNLIMITED, |m| m.0)))
            .collect()
    }

    /// Builds an engine without zones; see [`Topology::build_with_zones`].
    pub fn build(&self, defined: &[ClassSpec]) -> Result<Engine, Vec<TopologyError>> {
        self.build_with_zones(defined, &[])
    }

    /// Builds an engine: the classes, the `zones` the VMM declared, then every partition
    /// (parents first, zoned ones taking a zone each), then groups. Every violated rule is
    /// reported, each naming its entry.
    pub fn build_with_zones(
        &self,
        defined: &[ClassSpec],
        zones: &[ZoneSpec],
    ) -> Result<Engine, Vec<TopologyError>> {
        let specs = self.class_specs(defined)?;
        let Some(sysram) = specs.iter().find(|s| s.name == crate::class::SYSRAM) else {
            return Err(vec![rule(
                "classes",
                "sysram is not defined: give its size here or define it on the VMM",
            )]);
        };
        let mut engine = Engine::new(std::slice::from_ref(sysram))
            .map_err(|e| vec![rule("class \"sysram\"", e)])?;
        let mut errors = Vec::new();
        for spec in specs.iter().filter(|s| s.name != crate::class::SYSRAM) {
            if let Err(e) = engine.add_class(spec) {
                errors.push(rule(format!("class {:?}", spec.name), e));
            }
        }
        for zone in zones {
            if let Err(e) = engine.add_zone(*zone) {
                errors.push(rule(format!("zone node {}", zone.node), e));
            }
        }
        let host = Credential::Host;
        let mut seen = BTreeSet::new();
        let mut order: Vec<(usize, &PartitionEntry)> = Vec::new();
        for entry in &self.partitions {
            let where_ = format!("partition {:?}", entry.path);
            match components(&entry.path) {
                Ok(c) if c.len() >= 2 => order.push((c.len(), entry)),
                Ok(_) => errors.push(rule(
                    &where_,
                    "a partition path is /partition/mem/<class>/<name>[/...]",
                )),
                Err(e) => errors.push(rule(&where_, e)),
            }
            if !seen.insert(entry.path.trim_end_matches('/')) {
                errors.push(rule(&where_, "declared twice"));
            }
        }
        order.sort_by_key(|(depth, _)| *depth);
        let mut created = Vec::new();
        for (_, entry) in order {
            match create_partition(&mut engine, &host, entry) {
                Ok(()) => created.push(entry),
                Err(e) => errors.push(rule(format!("partition {:?}", entry.path), e)),
            }
        }
        for group in &self.groups {
            let where_ = format!("group {:?}", group.name);
            let path = format!("{}/{}", crate::name::MEM_ROOT, group.name);
            let spec = NewPartition {
                mode: group.mode.map_or(0o755, |m| m.0),
                ..NewPartition::default()
            };
            if let Err(e) = engine.create(&host, &path, spec) {
                errors.push(rule(&where_, e));
                continue;
            }
            for (pseudo, target) in &group.members {
                if let Err(e) = engine.link(&host, &format!("{path}/{pseudo}"), target) {
                    errors.push(rule(format!("group {:?} member {pseudo:?}", group.name), e));
                }
            }
        }
        // Policies come last: a terminal parent must not refuse its declared children.
        for entry in created {
            if let Err(e) = set_policies(&mut engine, &host, entry) {
                errors.push(rule(format!("partition {:?}", entry.path), e));
            }
        }
        if errors.is_empty() {
            Ok(engine)
        } else {
            Err(errors)
        }
    }
}

fn create_partition(
    engine: &mut Engine,
    host: &Credential,
    entry: &PartitionEntry,
) -> crate::error::Result<()> {
    let limits = Limits {
        min: entry.min.map_or(0, |s| s.0),
        max: entry.max.map_or(UNLIMITED, |s| s.0),
    };
    let spec = NewPartition {
        limits,
        mode: entry.mode.map_or(0o755, |m| m.0),
        zone: entry.zone,
    };
    engine.create(host, &entry.path, spec)?;
    if entry.uid.is_some() || entry.gid.is_some() {
        engine.chown(
            host,
            &entry.path,
            entry.uid.unwrap_or(0),
            entry.gid.unwrap_or(0),
        )?;
    }
    Ok(())
}

fn set_policies(
    engine: &mut Engine,
    host: &Credential,
    entry: &PartitionEntry,
) -> crate::error::Result<()> {
    let mut policies = entry.policies.clone();
    // The config lock goes last: it would refuse the other policies.
    policies.sort_by_key(|p| *p == Policy::ConfigLock);
    for policy in policies {
        engine.set_policy(host, &entry.path, policy)?;
    }
    Ok(())
}
