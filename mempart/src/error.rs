//! The one error type of the engine: an errno, the path at fault and why.

use std::fmt;

/// The POSIX error codes the engine returns; each refusal maps to exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Errno {
    /// Operation not permitted: a policy forbids it, or it would clear a policy.
    Eperm,
    /// No such partition, class, group, object or association.
    Enoent,
    /// No such process.
    Esrch,
    /// Not enough memory: a reservation or allocation does not fit.
    Enomem,
    /// Permission denied by mode bits, or the partition is permanent.
    Eacces,
    /// Busy: processes, objects or references still use it, or max below use.
    Ebusy,
    /// Already exists.
    Eexist,
    /// Not a directory-like node where one was needed.
    Enotdir,
    /// Invalid argument: bad size, bad name, `min > max`.
    Einval,
    /// A name or path over its length limit.
    Enametoolong,
    /// Destroying a partition or group that still has children or members.
    Enotempty,
}

impl Errno {
    /// The Linux x86-64 value of this errno.
    pub fn code(self) -> i32 {
        match self {
            Errno::Eperm => 1,
            Errno::Enoent => 2,
            Errno::Esrch => 3,
            Errno::Enomem => 12,
            Errno::Eacces => 13,
            Errno::Ebusy => 16,
            Errno::Eexist => 17,
            Errno::Enotdir => 20,
            Errno::Einval => 22,
            Errno::Enametoolong => 36,
            Errno::Enotempty => 39,
        }
    }

    /// The symbolic name, e.g. `"ENOMEM"`.
    pub fn name(self) -> &'static str {
        match self {
            Errno::Eperm => "EPERM",
            Errno::Enoent => "ENOENT",
            Errno::Esrch => "ESRCH",
            Errno::Enomem => "ENOMEM",
            Errno::Eacces => "EACCES",
            Errno::Ebusy => "EBUSY",
            Errno::Eexist => "EEXIST",
            Errno::Enotdir => "ENOTDIR",
            Errno::Einval => "EINVAL",
            Errno::Enametoolong => "ENAMETOOLONG",
            Errno::Enotempty => "ENOTEMPTY",
        }
    }

    /// The errno for a symbolic name, the inverse of [`Errno::name`].
    pub fn from_name(name: &str) -> Option<Errno> {
        ALL.iter().copied().find(|e| e.name() == name)
    }
}

const ALL: [Errno; 11] = [
    Errno::Eperm,
    Errno::Enoent,
    Errno::Esrch,
    Errno::Enomem,
    Errno::Eacces,
    Errno::Ebusy,
    Errno::Eexist,
    Errno::Enotdir,
    Errno::Einval,
    Errno::Enametoolong,
    Errno::Enotempty,
];

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A refused operation: which errno, the path (or other subject) at fault, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{errno}: {subject}: {reason}")]
pub struct Error {
    /// The errno a caller would see.
    pub errno: Errno,
    /// The path, pid or name the refusal concerns.
    pub subject: String,
    /// A short human explanation.
    pub reason: String,
}

impl Error {
    /// Builds an error about `subject`.
    pub fn new(errno: Errno, subject: impl fmt::Display, reason: impl Into<String>) -> Error {
        Error {
            errno,
            subject: subject.to_string(),
            reason: reason.into(),
        }
    }
}

/// The engine's result type.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names_round_trip_and_codes_are_distinct() {
        let mut codes: Vec<i32> = ALL.iter().map(|e| e.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ALL.len());
        for e in ALL {
            assert_eq!(Errno::from_name(e.name()), Some(e));
        }
        assert_eq!(Errno::from_name("EWHAT"), None);
    }

    #[test]
    fn error_message_names_errno_subject_and_reason() {
        let e = Error::new(Errno::Enomem, "/partition/mem/sysram/a", "does not fit");
        assert_eq!(
            e.to_string(),
            "ENOMEM: /partition/mem/sysram/a: does not fit"
        );
    }
}
