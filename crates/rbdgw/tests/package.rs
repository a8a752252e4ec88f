//! The Debian package: `scripts/package` (cargo-deb) builds it from this build's binary;
//! lintian finds no error and no warning that is not overridden with a reason; it installs,
//! `rbdgw --version` and `rbdgw plan` on its example config run from it, its unit verifies,
//! and a purge leaves nothing behind. Root only (dpkg).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Purges the package when the test ends, whatever happened.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "rbdgw"]).output();
    }
}

#[test]
fn the_debian_package_lints_installs_runs_and_purges() {
    if cfg!(debug_assertions) {
        eprintln!("skipped: the package is made from the release build (cargo test --release)");
        return;
    }
    common::require("cargo-deb", "cargo install --locked cargo-deb");
    common::require("lintian", "lintian");
    common::require("dpkg", "dpkg");
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "dpkg -i needs root");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let (ok, out) = run(Command::new(root.join("scripts/package")).arg("--no-build"));
    assert!(ok, "scripts/package: {out}");
    let deb: PathBuf = out
        .lines()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(|l| root.join(l))
        .unwrap_or_else(|| panic!("no .deb named in: {out}"));
    assert!(deb.exists(), "{}", deb.display());

    let (_, lint) = run(Command::new("lintian").arg(&deb));
    let complaints: Vec<&str> = lint
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .collect();
    assert!(complaints.is_empty(), "lintian:\n{lint}");

    let _ = Command::new("dpkg").args(["--purge", "rbdgw"]).output();
    let (ok, out) = run(Command::new("dpkg").arg("-i").arg(&deb));
    let installed = Installed;
    assert!(ok, "dpkg -i: {out}");
    let (ok, version) = run(Command::new("/usr/bin/rbdgw").arg("--version"));
    assert!(ok, "{version}");
    assert_eq!(
        version.trim(),
        format!("rbdgw {}", env!("CARGO_PKG_VERSION"))
    );
    let (ok, plan) = run(Command::new("/usr/bin/rbdgw").args([
        "plan",
        "--config",
        "/etc/rbdgw/config.json",
        "--host",
        "gw1",
    ]));
    assert!(ok, "{plan}");
    assert!(
        plan.contains("target iqn.2026-11.org.example:gateway"),
        "{plan}"
    );
    assert!(plan.contains("lun 0: rbd rbd/disk1"), "{plan}");
    let (_, files) = run(Command::new("dpkg").args(["-L", "rbdgw"]));
    for f in [
        "/usr/bin/rbdgw",
        "/usr/lib/systemd/system/rbdgw@.service",
        "/etc/rbdgw/config.json",
        "/usr/share/man/man1/rbdgw.1.gz",
        "/usr/share/man/man1/rbdgw-serve.1.gz",
        "/usr/share/bash-completion/completions/rbdgw",
        "/usr/share/zsh/vendor-completions/_rbdgw",
        "/usr/share/fish/vendor_completions.d/rbdgw.fish",
    ] {
        assert!(
            files.lines().any(|l| l == f),
            "{f} not in the package:\n{files}"
        );
        assert!(Path::new(f).exists(), "{f} not installed");
    }
    if common::have("systemd-analyze") {
        let dir = common::Scratch::new("package-unit");
        let unit = dir.0.join("rbdgw@gw1.service");
        std::fs::copy("/usr/lib/systemd/system/rbdgw@.service", &unit).unwrap();
        let (_, out) = run(Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit));
        let ours: Vec<&str> = out.lines().filter(|l| l.contains("rbdgw")).collect();
        assert!(ours.is_empty(), "{out}");
    }

    let (ok, out) = run(Command::new("dpkg").args(["--purge", "rbdgw"]));
    assert!(ok, "dpkg --purge: {out}");
    std::mem::forget(installed);
    for f in [
        "/usr/bin/rbdgw",
        "/etc/rbdgw/config.json",
        "/usr/share/doc/rbdgw",
    ] {
        assert!(!Path::new(f).exists(), "{f} left after purge");
    }
}
