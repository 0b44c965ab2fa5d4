//! Names and paths of the `/partition/mem` name space: their rules and parsing.

use crate::error::{Errno, Error, Result};

/// The prefix every path in the memory-partition name space starts with.
pub const MEM_ROOT: &str = "/partition/mem";
/// The longest name of a class, partition, group, pseudo partition or object, in bytes.
pub const NAME_MAX: usize = 255;
/// The longest path, in bytes.
pub const PATH_MAX: usize = 4096;

/// Checks one name: UTF-8 (guaranteed by `&str`), 1..=255 bytes, no `/` or NUL, not `.` or `..`.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::new(
            Errno::Einval,
            "\"\"",
            "a name must not be empty",
        ));
    }
    if name.len() > NAME_MAX {
        return Err(Error::new(
            Errno::Enametoolong,
            shorten(name),
            format!(
                "a name is at most {NAME_MAX} bytes, this one has {}",
                name.len()
            ),
        ));
    }
    if name.contains('/') || name.contains('\0') {
        return Err(Error::new(
            Errno::Einval,
            name.escape_debug(),
            "a name must not contain '/' or NUL",
        ));
    }
    if name == "." || name == ".." {
        return Err(Error::new(
            Errno::Einval,
            name,
            "'.' and '..' are not names",
        ));
    }
    Ok(())
}

/// The one name a partition cannot have: in the guest's `/partition` view every class
/// and partition directory holds a file of that name with its figures.
pub const RESERVED_NAME: &str = "metrics";

/// Checks a partition name: a name that is not all digits (digits name processes) and
/// not [`RESERVED_NAME`].
pub fn check_partition_name(name: &str) -> Result<()> {
    check_name(name)?;
    if name == RESERVED_NAME {
        return Err(Error::new(
            Errno::Einval,
            name,
            "a partition must not be called \"metrics\": the /partition view shows each partition's figures under that name",
        ));
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::new(
            Errno::Einval,
            name,
            "a partition name must not be all digits: those name processes",
        ));
    }
    Ok(())
}

/// Splits a path under [`MEM_ROOT`] into its checked components.
///
/// `/partition/mem` gives no components; one trailing `/` is allowed.
pub fn components(path: &str) -> Result<Vec<&str>> {
    if path.len() > PATH_MAX {
        return Err(Error::new(
            Errno::Enametoolong,
            shorten(path),
            format!(
                "a path is at most {PATH_MAX} bytes, this one has {}",
                path.len()
            ),
        ));
    }
    let rest = path.strip_prefix(MEM_ROOT).ok_or_else(|| {
        Error::new(
            Errno::Enoent,
            path.escape_debug(),
            format!("paths start with {MEM_ROOT}"),
        )
    })?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let rest = rest.strip_prefix('/').ok_or_else(|| {
        Error::new(
            Errno::Enoent,
            path.escape_debug(),
            format!("paths start with {MEM_ROOT}/"),
        )
    })?;
    let parts: Vec<&str> = rest.split('/').collect();
    for part in &parts {
        check_name(part).map_err(|e| Error::new(e.errno, path.escape_debug(), e.reason))?;
    }
    Ok(parts)
}

/// Joins components back into a full path.
pub fn join<'a>(components: impl IntoIterator<Item = &'a str>) -> String {
    let mut path = String::from(MEM_ROOT);
    for c in components {
        path.push('/');
        path.push_str(c);
    }
    path
}

/// The first 64 characters of an over-long name, for messages.
fn shorten(s: &str) -> String {
    let head: String = s.chars().take(64).collect();
    format!("{}…", head.escape_debug())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_spaces_are_accepted() {
        assert!(check_name("class 1").is_ok());
        assert_eq!(
            components("/partition/mem/class 1/p1").ok(),
            Some(vec!["class 1", "p1"])
        );
    }

    #[test]
    fn bad_names_are_rejected_with_their_errno() {
        let errno = |n: &str| check_name(n).err().map(|e| e.errno);
        assert_eq!(errno(""), Some(Errno::Einval));
        assert_eq!(errno("a/b"), Some(Errno::Einval));
        assert_eq!(errno("a\0b"), Some(Errno::Einval));
        assert_eq!(errno(".."), Some(Errno::Einval));
        assert_eq!(errno(&"x".repeat(4096)), Some(Errno::Enametoolong));
        assert_eq!(errno(&"x".repeat(255)), None);
        assert_eq!(
            check_partition_name("123").err().map(|e| e.errno),
            Some(Errno::Einval)
        );
        assert!(check_partition_name("p123").is_ok());
        assert_eq!(
            check_partition_name(RESERVED_NAME).err().map(|e| e.errno),
            Some(Errno::Einval)
        );
        assert!(check_partition_name("metrics2").is_ok());
    }

    #[test]
    fn paths_outside_the_name_space_or_with_empty_components_fail() {
        assert_eq!(components("/partition/mem").ok(), Some(vec![]));
        assert_eq!(components("/partition/mem/").ok(), Some(vec![]));
        assert_eq!(
            components("/partition/mem/sysram/").ok(),
            Some(vec!["sysram"])
        );
        let errno = |p: &str| components(p).err().map(|e| e.errno);
        assert_eq!(errno("/partition/memx"), Some(Errno::Enoent));
        assert_eq!(errno("/proc/1"), Some(Errno::Enoent));
        assert_eq!(errno("/partition/mem//a"), Some(Errno::Einval));
        assert_eq!(
            errno(&format!("/partition/mem/{}", "a/".repeat(3000))),
            Some(Errno::Enametoolong)
        );
    }

    #[test]
    fn over_long_names_in_messages_are_shortened() {
        let e = check_name(&"é".repeat(300)).err();
        assert!(e.is_some_and(|e| e.subject.chars().count() <= 65));
    }

    #[test]
    fn join_inverts_components() {
        let p = "/partition/mem/class 1/a/b";
        assert_eq!(components(p).map(join).ok().as_deref(), Some(p));
    }
}
