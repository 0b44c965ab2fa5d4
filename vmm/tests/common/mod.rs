//! Helpers shared by the VMM's integration tests: building test guests, finding KVM.

// Each test crate includes this module and uses only part of it.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;

/// Makes every build's output file unique, so tests running in parallel never share one.
static BUILDS: AtomicUsize = AtomicUsize::new(0);

/// Builds `tests/guests/<name>.c` (or `.S`) into a static ELF linked at 2 MiB, with the
/// flags a freestanding, SIMD-free guest needs.
pub fn guest(name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/guests");
    let build = BUILDS.fetch_add(1, Ordering::Relaxed);
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}-{build}.elf", std::process::id()));
    let source = ["c", "S"]
        .iter()
        .map(|ext| src.join(format!("{name}.{ext}")))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no guest source {name}"));
    let status = Command::new("gcc")
        .args([
            "-ffreestanding",
            "-nostdlib",
            "-static",
            "-no-pie",
            "-fno-pic",
        ])
        .args(["-mno-sse", "-mgeneral-regs-only", "-mno-red-zone", "-O2"])
        .args([
            "-Wl,-Ttext=0x200000",
            "-Wl,--build-id=none",
            "-e",
            "_start",
            "-o",
        ])
        .arg(&out)
        .arg(source)
        .status()
        .unwrap_or_else(|e| panic!("gcc: {e}"));
    assert!(status.success(), "gcc failed on guest {name}");
    out
}

/// Whether /dev/kvm can be opened; says why a test is skipped when not.
pub fn kvm_available() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        eprintln!("skipped: /dev/kvm is not available");
    }
    ok
}

/// A guard against a hung guest, not a synchronisation: every wait ends on an event first.
pub const GUARD: Duration = Duration::from_secs(180);

/// Sends the console's bytes to the test, a line at a time.
pub struct Lines {
    tx: Sender<String>,
    pending: Vec<u8>,
}

impl Lines {
    /// Lines go to `tx`.
    pub fn new(tx: Sender<String>) -> Lines {
        Lines {
            tx,
            pending: Vec::new(),
        }
    }
}

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.pending)
                    .trim_end_matches('\r')
                    .to_string();
                let _ = self.tx.send(line);
                self.pending.clear();
            } else {
                self.pending.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The next console line.
pub fn next_line(rx: &Receiver<String>) -> String {
    rx.recv_timeout(GUARD)
        .unwrap_or_else(|e| panic!("no console line within {GUARD:?}: {e}"))
}

/// The first console line starting with `prefix`, skipping the others (kernel messages).
pub fn line_starting(rx: &Receiver<String>, prefix: &str) -> String {
    loop {
        let line = next_line(rx);
        if line.starts_with(prefix) {
            return line;
        }
    }
}

/// A VM of one tiny guest: `cpus` vCPUs, the classes given (sysram added when missing),
/// the serial console's lines on the returned receiver, the agent channel raw.
pub fn tiny_config(
    kernel: PathBuf,
    cpus: u32,
    classes: &[&str],
) -> (vmm::VmConfig, Receiver<String>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let classes = classes
        .iter()
        .map(|c| vmm::config::parse_class(c).unwrap_or_else(|e| panic!("class {c}: {e}")))
        .collect();
    let config = vmm::VmConfig {
        zones: Vec::new(),
        disks: Vec::new(),
        nets: Vec::new(),
        kernel,
        initrd: None,
        cmdline: String::new(),
        cpus,
        classes: vmm::config::with_sysram(classes).unwrap_or_else(|e| panic!("classes: {e}")),
        topology: None,
        serial: vmm::SerialOut::Writer(Box::new(Lines::new(tx))),
        kvm_device: PathBuf::from("/dev/kvm"),
        agent_end: vmm::config::AgentEnd::Raw,
    };
    (config, rx)
}

/// A child process killed (and reaped) when the test lets go of it, even through a failed
/// assertion, so a broken test never leaves a process spinning.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    /// Waits for the child to exit. A child still running after `limit` is killed, so a
    /// child that does not stop fails the test instead of hanging it.
    pub fn wait_at_most(&mut self, limit: Duration) -> std::process::ExitStatus {
        let pid = self.0.id().to_string();
        let (exited, told) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if told.recv_timeout(limit).is_err() {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
        });
        let status = self
            .0
            .wait()
            .unwrap_or_else(|e| panic!("waiting for the child: {e}"));
        let _ = exited.send(());
        let _ = watchdog.join();
        status
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A binary of the workspace, next to this test's own executable's directory. The
/// guest-agent binaries are built (or found up to date) once per test run, so a test
/// never runs a stale agent against a newer service.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "guest-agent"])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building guest-agent failed");
    });
    let exe = std::env::current_exe().expect("test path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join(name)
}

/// A protocol client of the VM's partition service with the authority of the agent
/// channel (guest identities only), as a guest agent would be.
pub fn agent_client(handle: &vmm::VmHandle) -> protocol::Client<std::os::unix::net::UnixStream> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("pair");
    let service = handle.service();
    std::thread::spawn(move || {
        let reader = theirs.try_clone().expect("clone");
        service.serve(reader, theirs, vmm::service::Authority::Guest)
    });
    protocol::Client::connect(ours).expect("handshake")
}
