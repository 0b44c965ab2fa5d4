//! An existing tap device opened for frames (no packet information, no offload header),
//! and the [`Frames`] interface the device moves frames through.

// TUNSETIFF has no safe wrapper in the crates this workspace uses; the one ioctl below
// says why it is sound.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// Where frames come from and go to: one frame per call, never blocking (`WouldBlock`
/// when there is nothing to read or no room to write).
pub trait Frames: AsRawFd + Send {
    /// Reads one frame into `buf`; returns its length.
    fn recv_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Writes one frame.
    fn send_frame(&mut self, frame: &[u8]) -> std::io::Result<()>;
}

/// Why a tap could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is not an interface name.
    #[error("tap {0:?}: an interface name is 1 to 15 bytes without '/' or spaces")]
    Name(String),
    /// No interface of that name in this network namespace.
    #[error(
        "tap {0:?} does not exist; make it (as root) with `ip tuntap add {0} mode tap user \
         $(id -un)` and `ip link set {0} up`"
    )]
    Missing(String),
    /// The kernel refused.
    #[error("tap {name:?}: {source}")]
    Open {
        /// The interface.
        name: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A tap device: Ethernet frames without a packet-information prefix.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens the existing tap `name` (non-blocking).
    pub fn open(name: &str) -> Result<Tap, TapError> {
        let valid = !name.is_empty()
            && name.len() < libc::IFNAMSIZ
            && name
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
        if !valid || name == "." || name == ".." {
            return Err(TapError::Name(name.to_string()));
        }
        if !Path::new("/sys/class/net").join(name).exists() {
            return Err(TapError::Missing(name.to_string()));
        }
        let open = |source| TapError::Open {
            name: name.to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(open)?;
        // SAFETY: ifreq is a plain C struct (arrays, integers, a pointer in a union) for
        // which all zero bytes is a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in request.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads the ifreq it is given (which outlives the call) and the
        // descriptor is the tun device this function just opened.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
        if rc < 0 {
            return Err(open(std::io::Error::last_os_error()));
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Frames for Tap {
    fn recv_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }

    fn send_frame(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.file.write(frame).map(|_| ())
    }
}

impl Frames for UnixDatagram {
    fn recv_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.recv(buf)
    }

    fn send_frame(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.send(frame).map(|_| ())
    }
}
