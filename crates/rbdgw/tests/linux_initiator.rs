//! A real Linux initiator: Debian's kernel under qemu (TCG) with open-iscsi logs in to
//! `rbdgw serve` (an image in /dev/shm), makes an ext4 file system, writes files, checks it
//! with e2fsck, logs out and in again and verifies every checksum.

mod common;

use common::vm::{boot, build_vm};
use common::{free_port, require, Gateway, Scratch};

const TARGET: &str = "iqn.2026-11.org.rbdgw:linux";

#[test]
fn linux_initiator_ext4_round_trip() {
    require("qemu-system-x86_64", "qemu-system-x86");
    require("iscsiadm", "open-iscsi");
    let dir = Scratch::new("linux");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // The image lives in memory (tmpfs), so the kernel initiator drives the engine's memory
    // path: large reads sent by sendfile, writes done inline. The on-disk file engine is
    // covered by the conformance and lab tests.
    let shm = Scratch::new_in(std::path::Path::new("/dev/shm"), "linux");
    let image = shm.0.join("disk.img");
    let config = serde_json::json!({
        "targets": [{"target": TARGET, "hosts": [{"host": "gw1", "portal": "p1"}]}],
        "portals": [{"name": "p1", "addresses": [addr]}],
        "pools": [{"pool": "rbd", "gateways": [{"target": TARGET, "tpg": [
            {"image": "disk", "backstore": "file", "path": image.display().to_string(), "size": "256M"}]}]}]
    });
    let gw = Gateway::start(&dir.0, &config.to_string(), "gw1", addr.parse().unwrap());
    let guest = include_str!("../../../tests/vm/guest-basic.sh")
        .replace("@PORTAL@", &format!("10.0.2.2:{port}"))
        .replace("@TARGET@", TARGET);
    let (kernel, initrd) = build_vm(&dir.0, &guest);
    let started = std::time::Instant::now();
    let console = boot(&kernel, &initrd);
    println!("VM finished in {:.1}s", started.elapsed().as_secs_f64());
    let tail: Vec<&str> = console.lines().rev().take(60).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    assert!(
        console.contains("RBDGW-VM-RESULT: OK"),
        "the Linux initiator check failed; console tail:\n{}\ngateway log:\n{}",
        tail.join("\n"),
        gw.log_text()
    );
    assert!(!gw.log_text().contains("panicked"));
}
