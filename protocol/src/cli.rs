//! The command-line verbs `mpctl` and `mempart-vmm ctl` share — changes to one node of
//! the name space — and their argument parsers (feature `cli`). Arguments are parsed when
//! the verb runs, so each tool reports a bad one its own way.

use crate::{Op, Policy};

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
}
