//! The Linux initiator VM: an initramfs built around a guest script, booted under qemu (TCG).

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds the VM's initramfs around a guest script; returns (kernel, initrd).
pub fn build_vm(dir: &Path, guest: &str) -> (PathBuf, PathBuf) {
    let script = dir.join("guest.sh");
    std::fs::write(&script, guest).expect("guest script");
    let out = Command::new("bash")
        .arg(repo_root().join("tests/vm/build-initrd.sh"))
        .arg(dir)
        .arg(&script)
        .output()
        .expect("run build-initrd.sh");
    assert!(
        out.status.success(),
        "initramfs build failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let kernel = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    (PathBuf::from(kernel), dir.join("initrd.gz"))
}

/// The VM's qemu command line (TCG, one CPU, serial console), without its network.
pub fn qemu_args(kernel: &Path, initrd: &Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-m",
        "1024",
        "-smp",
        "1",
        "-nographic",
        "-no-reboot",
        "-kernel",
    ]
    .iter()
    .map(Into::into)
    .collect();
    v.push(kernel.into());
    v.push("-initrd".into());
    v.push(initrd.into());
    v.push("-append".into());
    v.push("console=ttyS0 quiet panic=-1".into());
    v
}

/// Boots the VM on qemu's user network and returns what its console printed.
pub fn boot(kernel: &Path, initrd: &Path) -> String {
    let out = Command::new("timeout")
        .arg("600")
        .args(qemu_args(kernel, initrd))
        .args(["-nic", "user,model=virtio-net-pci"])
        .output()
        .expect("run qemu");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A lab guest script with the shared setup (`tests/lab/guest-setup.sh`) in its place.
pub fn lab_guest(script: &str) -> String {
    script.replace(
        "@SETUP@",
        include_str!("../../../../tests/lab/guest-setup.sh"),
    )
}

/// Starts the VM inside the network namespace `ns`, on its tap device `tap0`, its console on
/// a pipe (and its input on one, when `stdin`), in a process group of its own ([`stop`]).
pub fn spawn_on_tap(ns: &str, kernel: &Path, initrd: &Path, stdin: bool) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    Command::new("ip")
        .process_group(0)
        .args(["netns", "exec", ns, "timeout", "1800"])
        .args(qemu_args(kernel, initrd))
        .args([
            "-netdev",
            "tap,id=n0,ifname=tap0,script=no,downscript=no",
            "-device",
            "virtio-net-pci,netdev=n0",
        ])
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the VM")
}

/// A VM of [`spawn_on_tap`] that is stopped when dropped, however the test ends.
pub struct Vm(pub std::process::Child);

impl Drop for Vm {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

/// Stops a VM of [`spawn_on_tap`]: its whole process group, qemu included (killing the
/// child alone, `timeout`, left qemu running on its own, a core busy for minutes).
pub fn stop(vm: &mut std::process::Child) {
    // SAFETY: kill(2) on the VM's own process group, which this test created.
    unsafe { libc::kill(-(vm.id() as i32), libc::SIGKILL) };
    let _ = vm.wait();
}
