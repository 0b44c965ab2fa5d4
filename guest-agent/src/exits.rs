//! Waiting for a process to end through its pidfd (works without epoll, which minimal
//! guest kernels leave out).

// pidfd_open and poll have no safe wrapper in std; each call says why it is sound.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A handle on a running process that becomes readable when it exits.
pub struct PidFd {
    fd: OwnedFd,
}

impl PidFd {
    /// Opens process `pid`; fails with `ESRCH` if it is already gone.
    pub fn open(pid: u32) -> io::Result<PidFd> {
        let pid =
            libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: pidfd_open takes a pid and flags, no pointers.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(PidFd { fd })
    }

    /// Blocks until the process has exited.
    pub fn wait(&self) -> io::Result<()> {
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: `poll` is one valid pollfd, as the count says.
            let n = unsafe { libc::poll(&mut poll, 1, -1) };
            if n > 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}
