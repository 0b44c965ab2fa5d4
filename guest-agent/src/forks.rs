//! Hearing of every fork in the system through the kernel's process events connector
//! (netlink, `CONFIG_PROC_EVENTS`), so processes that never talk to the agent are still
//! tracked when their parent is. Needs `CAP_NET_ADMIN`.

// Netlink sockets have no safe wrapper in std; each call says why it is sound.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_CONNECTOR: libc::c_int = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_FORK: u32 = 1;
/// `struct nlmsghdr`.
const NLMSG_HDR: usize = 16;
/// `struct cn_msg` without its payload.
const CN_MSG_HDR: usize = 20;
/// `what`, `cpu` and `timestamp_ns` of `struct proc_event`.
const PROC_EVENT_HDR: usize = 16;

/// A new process: `child` was forked by `parent` (thread ids are left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fork {
    /// The parent process (thread group id).
    pub parent: u32,
    /// The new process.
    pub child: u32,
}

/// A subscription to the kernel's process events.
pub struct ForkEvents {
    fd: OwnedFd,
}

impl ForkEvents {
    /// Opens the connector and asks the kernel for process events.
    pub fn listen() -> io::Result<ForkEvents> {
        // SAFETY: socket takes no pointers; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_CONNECTOR,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero sockaddr_nl is valid; its fields are set below.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = CN_IDX_PROC;
        let len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: `addr` is a valid sockaddr_nl of `len` bytes.
        let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut msg = Vec::with_capacity(NLMSG_HDR + CN_MSG_HDR + 4);
        let total = (NLMSG_HDR + CN_MSG_HDR + 4) as u32;
        msg.extend_from_slice(&total.to_ne_bytes());
        msg.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&std::process::id().to_ne_bytes());
        msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&4u16.to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
        // SAFETY: sends `msg.len()` bytes from `msg`, which is that long.
        let sent = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ForkEvents { fd })
    }

    /// Blocks until the next fork of a process (not a thread) and returns it.
    pub fn next(&self) -> io::Result<Fork> {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: receives at most `buf.len()` bytes into `buf`.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            let got = buf.get(..usize::try_from(n).unwrap_or(0)).unwrap_or(&[]);
            if let Some(fork) = parse_fork(got) {
                return Ok(fork);
            }
        }
    }
}

/// The fork in one netlink datagram from the connector, if it holds one.
fn parse_fork(datagram: &[u8]) -> Option<Fork> {
    let word = |at: usize| -> Option<u32> {
        let bytes = datagram.get(at..at + 4)?;
        Some(u32::from_ne_bytes(bytes.try_into().ok()?))
    };
    let event = NLMSG_HDR + CN_MSG_HDR;
    if word(NLMSG_HDR)? != CN_IDX_PROC || word(event)? != PROC_EVENT_FORK {
        return None;
    }
    let data = event + PROC_EVENT_HDR;
    let (parent_tgid, child_pid, child_tgid) = (word(data + 4)?, word(data + 8)?, word(data + 12)?);
    (child_pid == child_tgid).then_some(Fork {
        parent: parent_tgid,
        child: child_tgid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(what: u32, parent_tgid: u32, child_pid: u32, child_tgid: u32) -> Vec<u8> {
        let mut d = vec![0u8; NLMSG_HDR];
        for w in [CN_IDX_PROC, CN_VAL_PROC, 0, 0] {
            d.extend_from_slice(&w.to_ne_bytes());
        }
        d.extend_from_slice(&[0u8; 4]);
        d.extend_from_slice(&what.to_ne_bytes());
        d.extend_from_slice(&[0u8; 12]);
        for w in [parent_tgid, parent_tgid, child_pid, child_tgid] {
            d.extend_from_slice(&w.to_ne_bytes());
        }
        d
    }

    #[test]
    fn forks_of_processes_are_read_and_threads_and_other_events_are_not() {
        assert_eq!(
            parse_fork(&datagram(PROC_EVENT_FORK, 10, 11, 11)),
            Some(Fork {
                parent: 10,
                child: 11
            })
        );
        assert_eq!(
            parse_fork(&datagram(PROC_EVENT_FORK, 10, 12, 10)),
            None,
            "a thread"
        );
        assert_eq!(parse_fork(&datagram(2, 10, 11, 11)), None, "an exec");
        let whole = datagram(PROC_EVENT_FORK, 10, 11, 11);
        for cut in 0..whole.len() {
            assert_eq!(parse_fork(&whole[..cut]), None, "cut at {cut}");
        }
    }
}
