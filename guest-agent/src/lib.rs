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
