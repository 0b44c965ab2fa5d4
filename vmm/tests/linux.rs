//! Boots a real Linux kernel when one is given in MEMPART_TEST_KERNEL (a vmlinux or
//! bzImage, e.g. from images/build-kernel); skips with a one-line reason otherwise.
//! Without an initramfs the kernel runs its whole boot, fails to find a root file system,
//! panics and, with `panic=-1 reboot=k`, resets through the i8042: the VMM exits 0.

// Test helpers fail the test loudly with the reason.
#![allow(clippy::expect_used)]

mod common;

use std::process::Command;

#[test]
fn linux_boots_to_its_console_and_resets_cleanly() {
    let Some(kernel) = std::env::var_os("MEMPART_TEST_KERNEL") else {
        eprintln!("skipped: set MEMPART_TEST_KERNEL to a vmlinux or bzImage to boot Linux");
        return;
    };
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("skipped: /dev/kvm is not available");
        return;
    }
    let backend = vmm::Backend::detect();
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_mempart-vmm"))
        .args([
            "run",
            "--class",
            "sysram=128M",
            "--cmdline",
            "console=ttyS0 reboot=k panic=-1",
            "--kernel",
        ])
        .arg(&kernel)
        .output()
        .expect("mempart-vmm runs");
    let console = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "backend {}: Linux ran {:.1} s and exited with {:?}",
        backend.name(),
        started.elapsed().as_secs_f64(),
        out.status.code()
    );
    assert!(
        console.contains("Linux version"),
        "no kernel banner:\n{console}"
    );
    assert!(
        console.contains("Kernel panic"),
        "the kernel did not finish booting:\n{console}"
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
