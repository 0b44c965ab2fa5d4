//! Processes held by their pidfds, and one thread that watches all of them exit (poll,
//! which minimal guest kernels keep when they leave epoll out).

// pidfd_open, pidfd_send_signal, pipe2 and poll have no safe wrapper in std; each call
// says why it is sound.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};

/// A handle on one process that stays tied to it: its pid number may be reused once it
/// is gone, the handle never is. It becomes readable when the process exits.
#[derive(Debug)]
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

    /// A pidfd the kernel handed out another way (`SO_PEERPIDFD`).
    pub fn from_fd(fd: OwnedFd) -> PidFd {
        PidFd { fd }
    }

    /// Whether the process still holds its pid number (running, or exited and not yet
    /// reaped): what was read about that pid before this says yes was about this process.
    pub fn holds_its_pid(&self) -> bool {
        // SAFETY: signal 0 only checks that the process exists; no pointers are passed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                0,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        rc == 0
    }
}

/// Watches processes on one thread and sends each one's pid on a channel when it exits,
/// however many there are.
pub struct ExitWatcher {
    additions: Sender<(u32, PidFd)>,
    wake: OwnedFd,
}

impl ExitWatcher {
    /// Starts the watching thread; exited pids go to `exited`. The thread ends when the
    /// watcher is dropped.
    pub fn start(exited: Sender<u32>) -> io::Result<ExitWatcher> {
        let mut ends = [0i32; 2];
        // SAFETY: `ends` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are fresh and owned by nobody else.
        let (read, write) =
            unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
        let (additions, added) = channel();
        std::thread::Builder::new()
            .name("exit-watcher".into())
            .stack_size(64 * 1024)
            .spawn(move || watch(&read, &added, &exited))?;
        Ok(ExitWatcher {
            additions,
            wake: write,
        })
    }

    /// Watches `pidfd`, reporting `pid` when it exits (at once if it already has).
    pub fn watch(&self, pid: u32, pidfd: PidFd) -> io::Result<()> {
        self.additions
            .send((pid, pidfd))
            .map_err(|_| io::Error::other("the exit watcher has stopped"))?;
        let byte = 1u8;
        // SAFETY: one byte from a valid buffer. A full pipe already holds a wake-up.
        unsafe { libc::write(self.wake.as_raw_fd(), (&byte as *const u8).cast(), 1) };
        Ok(())
    }
}

/// The watching loop: polls the wake pipe and every pidfd; ends when the watcher (the
/// pipe's write end and the channel) is gone or nobody hears of exits any more.
fn watch(wake: &OwnedFd, added: &Receiver<(u32, PidFd)>, exited: &Sender<u32>) {
    let mut watched: Vec<(u32, PidFd)> = Vec::new();
    let mut polled: Vec<libc::pollfd> = Vec::new();
    loop {
        polled.clear();
        polled.push(readable(wake.as_raw_fd()));
        polled.extend(watched.iter().map(|(_, p)| readable(p.fd.as_raw_fd())));
        let count = libc::nfds_t::try_from(polled.len()).unwrap_or(libc::nfds_t::MAX);
        // SAFETY: `polled` holds `count` valid pollfds.
        let n = unsafe { libc::poll(polled.as_mut_ptr(), count, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        let mut index = 0;
        let mut heard = true;
        watched.retain(|(pid, _)| {
            index += 1;
            let gone = polled.get(index).is_some_and(|p| p.revents != 0);
            if gone {
                heard &= exited.send(*pid).is_ok();
            }
            !gone
        });
        if !heard {
            return;
        }
        if polled.first().is_some_and(|p| p.revents != 0) {
            let mut sink = [0u8; 64];
            // SAFETY: reads into a valid buffer of its length; the pipe is non-blocking.
            let read =
                unsafe { libc::read(wake.as_raw_fd(), sink.as_mut_ptr().cast(), sink.len()) };
            if read == 0 {
                return;
            }
            loop {
                match added.try_recv() {
                    Ok(entry) => watched.push(entry),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
        }
    }
}

fn readable(fd: i32) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn exits_are_reported_once_each_and_the_living_are_not() {
        let (tx, rx) = channel();
        let watcher = ExitWatcher::start(tx).unwrap_or_else(|e| panic!("{e}"));
        let mut sleeper = Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        let mut quick = Command::new("true")
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        let sleeping = PidFd::open(sleeper.id()).unwrap_or_else(|e| panic!("{e}"));
        let quitting = PidFd::open(quick.id()).unwrap_or_else(|e| panic!("{e}"));
        assert!(sleeping.holds_its_pid());
        watcher
            .watch(sleeper.id(), sleeping)
            .unwrap_or_else(|e| panic!("{e}"));
        watcher
            .watch(quick.id(), quitting)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rx.recv().ok(), Some(quick.id()));
        let _ = quick.wait();
        let _ = sleeper.kill();
        assert_eq!(rx.recv().ok(), Some(sleeper.id()));
        let _ = sleeper.wait();
        // Reported in the order they end: a repeat of either would come before this one.
        let mut last = Command::new("true")
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        let ending = PidFd::open(last.id()).unwrap_or_else(|e| panic!("{e}"));
        watcher
            .watch(last.id(), ending)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            rx.recv().ok(),
            Some(last.id()),
            "each exit is reported once"
        );
        let _ = last.wait();
    }
}
