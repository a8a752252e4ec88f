//! The seed's scenario on real Ceph: two `rbdgw serve` processes export the seed's image
//! `rbd/wuxingyi` (every RBD feature on, exclusive-lock included) from a throwaway cluster on
//! loopback. libiscsi's SCSI family runs against one gateway while the other runs, and
//! MultipathIO across both; a reservation taken through one gateway binds the other.

#[path = "../../../tests/support/ceph.rs"]
mod ceph;
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::client::Client;
use common::{free_port, require, Scratch};

const TARGET: &str = "iqn.1994-05.com.redhat:37d4cea93db4";

struct Serve {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Serve {
    fn start(
        cfg: &std::path::Path,
        host: &str,
        ceph_conf: &str,
        addr: &str,
        log: std::path::PathBuf,
    ) -> Serve {
        let child = Command::new(env!("CARGO_BIN_EXE_rbdgw"))
            .args(["serve", "--config"])
            .arg(cfg)
            .args(["--host", host, "--ceph-conf", ceph_conf])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("rbdgw");
        let s = Serve { child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect_timeout(
            &addr.parse().unwrap(),
            Duration::from_millis(200),
        )
        .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "gateway {host} did not start:\n{}",
                std::fs::read_to_string(&s.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn summary(args: &[String]) -> (String, Vec<String>) {
    let out = Command::new("iscsi-test-cu")
        .args([
            "-d",
            "-i",
            "iqn.2026-11.org.rbdgw:ceph-init1",
            "-I",
            "iqn.2026-11.org.rbdgw:ceph-init2",
        ])
        .args(args)
        .output()
        .expect("iscsi-test-cu");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("tests"))
        .unwrap_or("")
        .to_string();
    (text, line.split_whitespace().map(str::to_string).collect())
}

#[test]
fn seed_scenario_on_ceph() {
    require("iscsi-test-cu", "libiscsi-bin");
    let cluster = ceph::Cluster::start();
    cluster.rbd(&["create", "wuxingyi", "--size", "256M"]);
    let info = Command::new("rbd")
        .args(["-c", &cluster.conf(), "info", "wuxingyi"])
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains("exclusive-lock")
            && info.contains("object-map")
            && info.contains("fast-diff"),
        "{info}"
    );

    let dir = Scratch::new("ceph");
    let port = free_port();
    let (a1, a2) = (format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}"));
    let mut doc: serde_json::Value =
        serde_json::from_str(include_str!("../../../examples/seed-config.json")).unwrap();
    doc["portals"][0]["addresses"] = serde_json::json!([a1]);
    doc["portals"][1]["addresses"] = serde_json::json!([a2]);
    let cfg = dir.0.join("config.json");
    std::fs::write(&cfg, doc.to_string()).unwrap();
    let _g1 = Serve::start(
        &cfg,
        "testscsi.novalocal",
        &cluster.conf(),
        &a1,
        dir.0.join("gw1.log"),
    );
    let _g2 = Serve::start(
        &cfg,
        "scsifirst",
        &cluster.conf(),
        &a2,
        dir.0.join("gw2.log"),
    );

    // A reservation through gw1 binds gw2.
    let mut s1 = Client::connect(a1.parse().unwrap());
    s1.login("iqn.2026-11.org.rbdgw:ceph-a", Some(TARGET), "");
    let mut s2 = Client::connect(a2.parse().unwrap());
    s2.login("iqn.2026-11.org.rbdgw:ceph-b", Some(TARGET), "");
    let prout = |sa: u8, kind: u8, key: u64, sark: u64| {
        let mut p = vec![0u8; 24];
        p[..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sark.to_be_bytes());
        ([0x5f, sa, kind, 0, 0, 0, 0, 0, 24, 0], p)
    };
    let (c, p) = prout(0, 0, 0, 0x77);
    assert_eq!(s1.scsi_ready(0, &c, &p, 0).status, 0);
    let (c, p) = prout(1, 3, 0x77, 0); // Exclusive Access
    assert_eq!(s1.scsi_ready(0, &c, &p, 0).status, 0);
    let read = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    assert_eq!(
        s2.scsi_ready(0, &read, &[], 512).status,
        0x18,
        "RESERVATION CONFLICT on the other gateway"
    );
    let (c, p) = prout(3, 0, 0x77, 0); // CLEAR
    assert_eq!(s1.scsi_ready(0, &c, &p, 0).status, 0);
    assert_eq!(s2.scsi_ready(0, &read, &[], 512).status, 0);
    drop((s1, s2));

    let url = |a: &str| format!("iscsi://{a}/{TARGET}/0");
    let (text, w) = summary(&["-t".into(), "SCSI.MultipathIO".into(), url(&a1), url(&a2)]);
    println!("MultipathIO across two gateways on Ceph: {}", w.join(" "));
    assert!(
        w.len() >= 5 && w[1] == "4" && w[4] == "0",
        "MultipathIO on Ceph:\n{text}"
    );
    let (text, w) = summary(&["-V".into(), "-t".into(), "SCSI".into(), url(&a1)]);
    std::fs::write(dir.0.join("scsi.log"), &text).unwrap();
    println!("SCSI family on Ceph through gw1: {}", w.join(" "));
    assert!(
        w.len() >= 5 && w[4] == "0",
        "SCSI family on Ceph:\n{}",
        &text[text.len().saturating_sub(4000)..]
    );
}
