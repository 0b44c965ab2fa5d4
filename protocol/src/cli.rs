//! What `mpctl` and `mempart-vmm ctl` share (feature `cli`): the verbs that change one
//! node of the name space, their argument parsers, and how a partition, a class and a
//! listing are printed, so both tools show them alike. Arguments are parsed when the verb
//! runs, so each tool reports a bad one its own way.

use crate::{
    ClassMetrics, DirEntry, EntryKind, ObjectInfo, Op, PartitionMetrics, Policy, UNLIMITED,
};

/// A change to one node of the name space.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum NodeVerb {
    /// Destroy a partition, group or pseudo partition.
    Destroy {
        /// The path.
        path: String,
    },
    /// Change mode bits (octal).
    Chmod {
        /// Mode, e.g. 750.
        mode: String,
        /// The path.
        path: String,
    },
    /// Change owner and group (UID:GID).
    Chown {
        /// Owner and group, numeric.
        owner: String,
        /// The path.
        path: String,
    },
    /// Set a one-way policy: terminal, config_lock or permanent. Policies cannot be
    /// cleared: asking with --clear (or POLICY=false) is refused with EPERM when set.
    Policy {
        /// The path.
        path: String,
        /// The policy, or POLICY=false to ask to clear it.
        policy: String,
        /// Ask to clear the policy instead of setting it.
        #[arg(long)]
        clear: bool,
    },
    /// Create a pseudo partition in a group naming a real partition.
    Pseudo {
        /// /partition/mem/<group>/<name>.
        pseudo: String,
        /// The real partition.
        target: String,
    },
}

impl NodeVerb {
    /// The request that carries out this change, or what is wrong with an argument.
    pub fn op(self) -> Result<Op, String> {
        Ok(match self {
            NodeVerb::Destroy { path } => Op::Destroy { path },
            NodeVerb::Chmod { mode, path } => Op::Chmod {
                path,
                mode: parse_mode(&mode)?,
            },
            NodeVerb::Chown { owner, path } => {
                let Owner { uid, gid } = parse_owner(&owner)?;
                Op::Chown { path, uid, gid }
            }
            NodeVerb::Policy {
                path,
                policy,
                clear,
            } => {
                let (policy, set) = parse_policy_change(&policy, clear)?;
                if set {
                    Op::SetPolicy { path, policy }
                } else {
                    Op::ClearPolicy { path, policy }
                }
            }
            NodeVerb::Pseudo { pseudo, target } => Op::Link { pseudo, target },
        })
    }
}

/// A numeric owner and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Parses octal mode bits (`750`, `0o750`); the engine refuses bits above 0777.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .map_err(|_| format!("mode {text:?} is not octal"))
}

/// Parses `UID:GID`.
pub fn parse_owner(text: &str) -> Result<Owner, String> {
    text.split_once(':')
        .and_then(|(u, g)| {
            Some(Owner {
                uid: u.parse().ok()?,
                gid: g.parse().ok()?,
            })
        })
        .ok_or_else(|| format!("owner {text:?}: use UID:GID"))
}

/// Parses a policy change: `POLICY` or `POLICY=true` sets it, `POLICY=false` or `--clear`
/// (`clear`) asks to clear it. Returns the policy and whether it is set.
pub fn parse_policy_change(text: &str, clear: bool) -> Result<(Policy, bool), String> {
    let (name, set) = match text.split_once('=') {
        Some((name, "true")) => (name, true),
        Some((name, "false")) => (name, false),
        Some((_, value)) => return Err(format!("policy {text:?}: {value:?} is not true or false")),
        None => (text, true),
    };
    if clear && text.contains('=') {
        return Err(format!(
            "policy {text:?}: give --clear or =true/=false, not both"
        ));
    }
    Ok((parse_policy(name)?, set && !clear))
}

/// Parses `terminal`, `config_lock` (or `config-lock`) or `permanent`.
pub fn parse_policy(text: &str) -> Result<Policy, String> {
    match text {
        "terminal" => Ok(Policy::Terminal),
        "config_lock" | "config-lock" => Ok(Policy::ConfigLock),
        "permanent" => Ok(Policy::Permanent),
        other => Err(format!(
            "policy {other:?}: use terminal, config_lock or permanent"
        )),
    }
}

/// A size as people write it: `unlimited`, or the largest of G, M and K that divides it
/// (`8M`), else bytes.
pub fn human(bytes: u64) -> String {
    if bytes == UNLIMITED {
        return "unlimited".into();
    }
    for (unit, suffix) in [(1u64 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")] {
        if bytes >= unit && bytes % unit == 0 {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// `key value` lines, the keys padded to one column.
fn table(rows: &[(&str, String)]) -> String {
    rows.iter()
        .map(|(key, value)| format!("{key:<12} {value}\n"))
        .collect()
}

/// A partition's metrics as both CLIs print them: sizes in human units, processes as a
/// count (`ls` lists them).
pub fn render_partition(m: &PartitionMetrics) -> String {
    let p = m.current.policies;
    let mut rows = vec![
        ("path", m.path.clone()),
        ("type", format!("{:?}", m.kind)),
        ("min", human(m.current.limits.min)),
        ("max", human(m.current.limits.max)),
    ];
    if let Some(pending) = m.pending_max {
        rows.push(("pending max", human(pending)));
    }
    rows.extend([("used", human(m.used))]);
    if let Some(z) = m.zone {
        rows.extend([
            (
                "zone",
                format!("node {} of {}", z.spec.node, human(z.spec.capacity)),
            ),
            ("plugged", human(z.plugged)),
            ("host res.", human(z.host_resident)),
        ]);
    }
    rows.extend([
        ("highest", human(m.highest)),
        ("reserved", human(m.reserved_unused)),
        ("processes", m.processes.len().to_string()),
        ("objects", m.objects.to_string()),
        ("children", m.children.len().to_string()),
        (
            "mode",
            format!(
                "{:o} {}:{}",
                m.current.perm.mode, m.current.perm.uid, m.current.perm.gid
            ),
        ),
        (
            "policies",
            format!(
                "terminal={} config_lock={} permanent={}",
                p.terminal, p.config_lock, p.permanent
            ),
        ),
    ]);
    table(&rows)
}

/// A class's metrics as both CLIs print them.
pub fn render_class(c: &ClassMetrics) -> String {
    table(&[
        ("class", c.name.clone()),
        ("size", human(c.size)),
        ("allocated", human(c.allocated)),
        ("reserved", human(c.reserved_unused)),
        ("free", human(c.free)),
        ("highest", human(c.highest_allocated)),
        (
            "mode",
            format!("{:o} {}:{}", c.perm.mode, c.perm.uid, c.perm.gid),
        ),
    ])
}

/// A listing as both CLIs print it: a line an entry, directories with a `/`, pseudo
/// partitions with their target, shared objects with their size.
pub fn render_entries(entries: &[DirEntry]) -> String {
    entries
        .iter()
        .map(|e| match &e.kind {
            EntryKind::Pseudo { target } => format!("{} -> {target}\n", e.name),
            EntryKind::Object { size } => format!("{}  shm {}\n", e.name, human(*size)),
            EntryKind::Process | EntryKind::Partition | EntryKind::Class | EntryKind::Group => {
                format!("{}/\n", e.name)
            }
        })
        .collect()
}

/// Shared objects as both CLIs print them: a line each with its size, owner, mappers and
/// partition (`unlinked` for one whose name is gone and that is still mapped).
pub fn render_objects(objects: &[ObjectInfo]) -> String {
    objects
        .iter()
        .map(|o| {
            let gone = if o.linked { "" } else { "  unlinked" };
            format!(
                "{:<24} {:>8}  uid {:<6} mapped by {:<3} {}{gone}\n",
                o.name,
                human(o.size),
                o.owner,
                o.mappers,
                o.partition
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse_or_say_what_is_wrong() {
        assert_eq!(parse_mode("750"), Ok(0o750));
        assert_eq!(parse_mode("0o700"), Ok(0o700));
        assert!(parse_mode("rwx").is_err());
        assert_eq!(
            parse_owner("1000:100"),
            Ok(Owner {
                uid: 1000,
                gid: 100
            })
        );
        assert!(parse_owner("1000").is_err());
        assert!(parse_owner("a:b").is_err());
        assert_eq!(parse_policy("config-lock"), Ok(Policy::ConfigLock));
        assert!(parse_policy("sticky").is_err());
        let chown = NodeVerb::Chown {
            owner: "1000:100".into(),
            path: "/partition/mem/sysram/p".into(),
        };
        assert_eq!(
            chown.op(),
            Ok(Op::Chown {
                path: "/partition/mem/sysram/p".into(),
                uid: 1000,
                gid: 100
            })
        );
    }

    #[test]
    fn sizes_print_in_the_largest_unit_that_divides_them() {
        assert_eq!(human(UNLIMITED), "unlimited");
        assert_eq!(human(8 << 20), "8M");
        assert_eq!(human(3 << 30), "3G");
        assert_eq!(human(4096), "4K");
        assert_eq!(human(1536), "1536");
        assert_eq!(human(0), "0");
    }
}
