//! Who is asking (credentials), what a node allows (owner, group, mode) and its one-way policies.

use serde::{Deserialize, Serialize};

/// A user id inside the guest.
pub type Uid = u32;
/// A group id inside the guest.
pub type Gid = u32;

/// The identity behind a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Credential {
    /// The host (VMM operator): above every guest identity, bound only by policies.
    Host,
    /// A guest process's identity as authenticated by the agent.
    Guest {
        /// Effective user id; 0 is the guest's superuser.
        uid: Uid,
        /// Effective group id.
        gid: Gid,
        /// Supplementary groups.
        groups: Vec<Gid>,
    },
}

impl Credential {
    /// A guest identity without supplementary groups.
    pub fn guest(uid: Uid, gid: Gid) -> Credential {
        Credential::Guest {
            uid,
            gid,
            groups: Vec::new(),
        }
    }

    /// The guest superuser (uid 0, gid 0).
    pub fn guest_root() -> Credential {
        Credential::guest(0, 0)
    }

    /// The uid and gid that nodes created by this identity are owned by.
    pub fn owner(&self) -> (Uid, Gid) {
        match self {
            Credential::Host => (0, 0),
            Credential::Guest { uid, gid, .. } => (*uid, *gid),
        }
    }

    /// Whether this identity may act on a process owned by `uid`.
    pub fn controls_uid(&self, uid: Uid) -> bool {
        match self {
            Credential::Host => true,
            Credential::Guest { uid: me, .. } => *me == 0 || *me == uid,
        }
    }

    fn in_group(&self, gid: Gid) -> bool {
        match self {
            Credential::Host => true,
            Credential::Guest { gid: g, groups, .. } => *g == gid || groups.contains(&gid),
        }
    }
}

/// One of the three permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read metrics, list, subscribe.
    Read,
    /// Create children, change attributes, destroy, chmod, chown.
    Write,
    /// Associate a process.
    Execute,
}

impl Access {
    fn bit(self) -> u32 {
        match self {
            Access::Read => 4,
            Access::Write => 2,
            Access::Execute => 1,
        }
    }
}

/// Owner, group and mode bits of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Perm {
    /// Owning user.
    pub uid: Uid,
    /// Owning group.
    pub gid: Gid,
    /// `rwxrwxrwx` bits (only the low nine are kept).
    pub mode: u32,
}

/// The mask of the mode bits that mean anything here.
pub const MODE_MASK: u32 = 0o777;

impl Perm {
    /// A permission set; mode bits above `0o777` are rejected by callers, not here.
    pub fn new(uid: Uid, gid: Gid, mode: u32) -> Perm {
        Perm {
            uid,
            gid,
            mode: mode & MODE_MASK,
        }
    }

    /// Whether `cred` has `access` here.
    ///
    /// The host always has. The guest superuser has read and write, and execute
    /// when any execute bit is set (as POSIX treats root). Others get the owner,
    /// group or other bits, whichever class they fall in first.
    pub fn allows(&self, cred: &Credential, access: Access) -> bool {
        let uid = match cred {
            Credential::Host => return true,
            Credential::Guest { uid, .. } => *uid,
        };
        if uid == 0 {
            return access != Access::Execute || self.mode & 0o111 != 0;
        }
        let shift = if uid == self.uid {
            6
        } else if cred.in_group(self.gid) {
            3
        } else {
            0
        };
        (self.mode >> shift) & access.bit() != 0
    }
}

/// The one-way policies of a partition: once set, never cleared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policies {
    /// No child partitions may be created.
    pub terminal: bool,
    /// No attribute or permission changes (children still allowed; terminal may still be set).
    pub config_lock: bool,
    /// The partition cannot be destroyed.
    pub permanent: bool,
}

/// One policy, for setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// See [`Policies::terminal`].
    Terminal,
    /// See [`Policies::config_lock`].
    ConfigLock,
    /// See [`Policies::permanent`].
    Permanent,
}

impl Policies {
    /// Whether `policy` is set.
    pub fn get(&self, policy: Policy) -> bool {
        match policy {
            Policy::Terminal => self.terminal,
            Policy::ConfigLock => self.config_lock,
            Policy::Permanent => self.permanent,
        }
    }

    pub(crate) fn set(&mut self, policy: Policy) {
        match policy {
            Policy::Terminal => self.terminal = true,
            Policy::ConfigLock => self.config_lock = true,
            Policy::Permanent => self.permanent = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_group_other_bits_are_chosen_by_first_matching_class() {
        let p = Perm::new(1000, 100, 0o750);
        let owner = Credential::guest(1000, 5);
        let member = Credential::Guest {
            uid: 1001,
            gid: 5,
            groups: vec![100],
        };
        let other = Credential::guest(1002, 5);
        assert!(p.allows(&owner, Access::Write));
        assert!(p.allows(&member, Access::Read));
        assert!(!p.allows(&member, Access::Write));
        assert!(p.allows(&member, Access::Execute));
        assert!(!p.allows(&other, Access::Read));
    }

    #[test]
    fn guest_root_needs_some_execute_bit_but_host_does_not() {
        let p = Perm::new(1000, 100, 0o600);
        assert!(p.allows(&Credential::guest_root(), Access::Write));
        assert!(!p.allows(&Credential::guest_root(), Access::Execute));
        assert!(p.allows(&Credential::Host, Access::Execute));
    }

    #[test]
    fn owner_bits_apply_even_when_group_bits_are_wider() {
        let p = Perm::new(1000, 100, 0o070);
        assert!(!p.allows(&Credential::guest(1000, 100), Access::Read));
        assert!(p.allows(&Credential::guest(1001, 100), Access::Read));
    }

    #[test]
    fn controls_uid_only_for_self_root_and_host() {
        assert!(Credential::guest(5, 5).controls_uid(5));
        assert!(!Credential::guest(5, 5).controls_uid(6));
        assert!(Credential::guest_root().controls_uid(6));
        assert!(Credential::Host.controls_uid(6));
    }
}
