//! What `mempart-agent` and `mpctl` share: where the agent listens, and who is on the
//! other end of a local socket.

pub mod cgroup;
pub mod devmem;
pub mod exits;
pub mod forks;
pub mod view;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// Where the agent listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/mempart.sock";
/// The environment variable that overrides the socket path for `mpctl`.
pub const SOCKET_ENV: &str = "MPCTL_SOCKET";

/// The kernel-verified identity of a local peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Process id.
    pub pid: u32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

/// Asks the kernel who is connected (`SO_PEERCRED`).
pub fn peer_of(stream: &UnixStream) -> std::io::Result<Peer> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writing and describe a `ucred`, which is what
    // SO_PEERCRED fills in.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Peer {
        pid: u32::try_from(cred.pid).unwrap_or(0),
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// `SO_PEERPIDFD` (Linux 6.5; not yet in the libc crate): a pidfd of the process that
/// connected, tied to it even if its pid number is reused.
const SO_PEERPIDFD: libc::c_int = 77;
/// `SO_PEERGROUPS` (Linux 4.13; not yet in the libc crate): the connecting process's
/// supplementary groups as they were when it connected.
const SO_PEERGROUPS: libc::c_int = 59;
/// Most supplementary groups taken from a peer; more only ever grant more, so a peer
/// with more is treated as having these.
pub const MAX_PEER_GROUPS: usize = 64;

/// A pidfd of the process that connected (`SO_PEERPIDFD`). Fails with `ENOPROTOOPT` on
/// kernels before 6.5 and `ESRCH` if that process is gone.
pub fn peer_pidfd(stream: &UnixStream) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` and `len` are valid for writing and describe one int, which is what
    // SO_PEERPIDFD fills in.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if fd < 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidData));
    }
    // SAFETY: the kernel just created `fd` for this process; nobody else owns it.
    #[allow(unsafe_code)]
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// The connecting process's supplementary groups when it connected (`SO_PEERGROUPS`):
/// the first [`MAX_PEER_GROUPS`] of them.
pub fn peer_groups(stream: &UnixStream) -> std::io::Result<Vec<u32>> {
    // Linux's NGROUPS_MAX: the kernel never asks for more room than this.
    const NGROUPS_MAX: usize = 65536;
    let mut groups = vec![0 as libc::gid_t; MAX_PEER_GROUPS];
    loop {
        let mut len = std::mem::size_of_val(groups.as_slice()) as libc::socklen_t;
        // SAFETY: `groups` has room for `len` bytes, which is what SO_PEERGROUPS may write.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count.min(MAX_PEER_GROUPS));
            return Ok(groups);
        }
        let err = std::io::Error::last_os_error();
        // ERANGE: more groups than there is room for; `len` says how much is needed.
        if err.raw_os_error() != Some(libc::ERANGE) || count <= groups.len() || count > NGROUPS_MAX
        {
            return Err(err);
        }
        groups = vec![0; count];
    }
}

/// Clock ticks per second in `/proc` figures: USER_HZ, 100 on every Linux ABI this runs on.
const USER_HZ: f64 = 100.0;

/// Clock ticks since boot now (from `/proc/uptime`), the unit of a process's start time.
pub fn boot_ticks_now() -> Option<u64> {
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let seconds: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    Some((seconds * USER_HZ) as u64)
}

/// When process `pid` started, in clock ticks since boot (`/proc/<pid>/stat`).
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields follow the last ')',
    // starting with the third (state); start time is the 22nd.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Supplementary groups of a process, from `/proc/<pid>/status` (empty if unreadable).
pub fn groups_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|g| {
                    g.split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .take(64)
                        .collect()
                })
        })
        .unwrap_or_default()
}
