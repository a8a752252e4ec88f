//! The seed's scenario on real Ceph: two `rbdgw serve` processes export the seed's image
//! `rbd/wuxingyi` (every RBD feature on, exclusive-lock included) from a throwaway cluster on
//! loopback, both reading the shared config from RADOS (`rbdgw config store`). libiscsi's
//! SCSI family runs against one gateway while the other runs, and MultipathIO across both; a
//! reservation taken through one gateway binds the other, and a PREEMPT AND ABORT through one
//! aborts a write waiting behind the other. Then: an online resize reaches a
//! live session, a config change adds a LUN (auto-created) without dropping it, and the owner
//! is partitioned (SIGSTOP): the other gateway fences it, and its late write is refused.
//! Fifty RBD LUNs share one RADOS client, and recover together when it is blocklisted.

#[path = "../../../tests/support/ceph.rs"]
mod ceph;
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::client::Client;
use common::{free_port, require, Scratch};

const TARGET: &str = "iqn.1994-05.com.redhat:37d4cea93db4";

/// The tests here run one after another: two clusters and their gateways at once on two
/// cores would make the timings they check meaningless.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

struct Serve {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Serve {
    fn start(cfg: &str, host: &str, ceph_conf: &str, addr: &str, log: std::path::PathBuf) -> Serve {
        let child = Command::new(env!("CARGO_BIN_EXE_rbdgw"))
            .args(["serve", "--config"])
            .arg(cfg)
            .env("RUST_LOG", "info")
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

/// Runs `rbdgw ARGS EXTRA --ceph-conf <the cluster's>`; its stdout, or the test fails.
fn rbdgw_cli(cluster: &ceph::Cluster, args: &[&str], extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rbdgw"))
        .args(args)
        .args(extra)
        .args(["--ceph-conf", &cluster.conf()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rbdgw {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The tests that failed in an `iscsi-test-cu -V` output, with CUnit's lines about them.
fn failures(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.contains("FAILED") || l.contains("[FAILED]") {
            out.extend(
                lines[i.saturating_sub(3)..(i + 3).min(lines.len())]
                    .iter()
                    .copied(),
            );
            out.push("--");
        }
    }
    out.join("\n")
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
    let _serial = one_at_a_time();
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
    let file = dir.0.join("config.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    // The shared config goes to RADOS; both gateways read and watch it there.
    let at = "rados://rbd/rbdgw.config";
    let cli = |args: &[&str]| rbdgw_cli(&cluster, args, &["--at", at]);
    cli(&["config", "store", "-f", file.to_str().unwrap()]);
    assert_eq!(cli(&["config", "show"]), doc.to_string());

    // Migration: the same config in lrbd's layout (xattrs of `lrbd.conf`) imports back.
    let rados = |args: &[&str]| {
        let out = Command::new("rados")
            .args(["-c", &cluster.conf(), "-p", "rbd"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "rados {args:?}: {out:?}");
    };
    rados(&["create", "lrbd.conf"]);
    let gw_entry = doc["pools"][0]["gateways"][0].clone();
    for (key, value) in [
        ("targets".to_string(), doc["targets"].to_string()),
        ("portals".to_string(), doc["portals"].to_string()),
        (format!("_{TARGET}"), doc["auth"][0].to_string()),
        (TARGET.to_string(), gw_entry.to_string()),
    ] {
        rados(&["setxattr", "lrbd.conf", &key, &value]);
    }
    let imported: serde_json::Value =
        serde_json::from_str(&cli(&["config", "import-lrbd", "--pool", "rbd"])).unwrap();
    for key in ["auth", "targets", "portals", "pools"] {
        assert_eq!(imported[key], doc[key], "imported {key}");
    }
    let start = |i: usize| {
        let (host, addr) = [("testscsi.novalocal", &a1), ("scsifirst", &a2)][i];
        Serve::start(
            at,
            host,
            &cluster.conf(),
            addr,
            dir.0.join(format!("gw{}.log", i + 1)),
        )
    };
    let mut g1 = start(0);
    let mut g2 = start(1);

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
    // PREEMPT AND ABORT through gw1 aborts node-b's write waiting behind gw2, on RBD.
    common::reservations::preempt_and_abort_across_gateways(&a1, &a2, TARGET);
    // Windows cluster validation's reservation sequence, each node on either gateway.
    common::reservations::cluster_validation_sequence(&a1, &a2, TARGET);
    common::reservations::cluster_validation_sequence(&a2, &a1, TARGET);

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
    // The copy offload suites ran on the RBD LUN, not skipped.
    assert!(
        text.contains("Suite: ExtendedCopy")
            && !text.contains("EXTENDEDCOPY is not implemented")
            && !text.contains("RECEIVECOPYRESULT is not implemented"),
        "copy offload suites on Ceph"
    );
    assert!(
        w.len() >= 5 && w[4] == "0",
        "SCSI family on Ceph: {}\n{}",
        failures(&text),
        &text[text.len().saturating_sub(2000)..]
    );

    // Online resize: a live session hears CAPACITY DATA HAS CHANGED, then the new size.
    let mut s3 = Client::connect(a1.parse().unwrap());
    s3.login("iqn.2026-11.org.rbdgw:ceph-c", Some(TARGET), "");
    let tur = [0u8; 6];
    assert_eq!(s3.scsi_ready(0, &tur, &[], 0).status, 0);
    cluster.rbd(&["resize", "--size", "384M", "wuxingyi"]);
    let rc16 = [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = s3.scsi(0, &rc16, &[], 32);
        if o.sense == Some((0x06, 0x2a, 0x09)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no CAPACITY DATA HAS CHANGED: {o:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = s3.scsi_ready(0, &rc16, &[], 32);
    assert_eq!(
        u64::from_be_bytes(o.data[..8].try_into().unwrap()),
        (384 << 20) / 512 - 1,
        "READ CAPACITY after the resize"
    );
    println!("online resize: CAPACITY DATA HAS CHANGED, then 384 MiB");

    // A config change adds LUN 1 (created by the gateway: it has a size) while s3 stays.
    doc["pools"][0]["gateways"][0]["tpg"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"image": "extra", "lun": "1", "size": "32M"}));
    std::fs::write(&file, doc.to_string()).unwrap();
    cli(&["config", "store", "-f", file.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = s3.scsi(0, &tur, &[], 0);
        if o.sense == Some((0x06, 0x3f, 0x0e)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no REPORTED LUNS DATA HAS CHANGED: {o:?}\n{}",
            std::fs::read_to_string(&g1.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = s3.scsi_ready(0, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0], &[], 64);
    assert_eq!(
        &o.data[..4],
        &[0, 0, 0, 16],
        "two LUNs reported: {:?}",
        o.data
    );
    let rc10 = [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let o = s3.scsi_ready(1, &rc10, &[], 8);
    assert_eq!(
        u32::from_be_bytes(o.data[..4].try_into().unwrap()),
        (32 << 20) / 512 - 1,
        "the new LUN is the auto-created 32 MiB image"
    );
    println!("config change: LUN 1 added live, session kept");

    // Fencing: gw1 owns the LU and is cut off (SIGSTOP) with a write queued on it; gw2
    // fences it and takes over; gw1's late write is refused by Ceph; the data verifies.
    let write10 = |lba: u32, blocks: u16| {
        let l = lba.to_be_bytes();
        let b = blocks.to_be_bytes();
        [0x2a, 0, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0]
    };
    let read10 = |lba: u32, blocks: u16| {
        let mut c = write10(lba, blocks);
        c[0] = 0x28;
        c
    };
    let mut s1 = Client::connect(a1.parse().unwrap());
    s1.login("iqn.2026-11.org.rbdgw:ceph-a", Some(TARGET), "");
    let mut s2 = Client::connect(a2.parse().unwrap());
    s2.login("iqn.2026-11.org.rbdgw:ceph-b", Some(TARGET), "");
    let old = vec![0x11u8; 4096];
    assert_eq!(s1.scsi_ready(0, &write10(100, 8), &old, 0).status, 0);
    common::signal(&g1.child, 19); // SIGSTOP
                                   // Only once every thread has stopped is gw1 cut off; then its write is queued.
    let tasks = format!("/proc/{}/task", g1.child.id());
    let stopped = || {
        std::fs::read_dir(&tasks).unwrap().all(|t| {
            let st = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
            st.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('T'))
                == Some(true)
        })
    };
    let t = Instant::now();
    while !stopped() {
        assert!(t.elapsed() < Duration::from_secs(5), "gw1 did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    let stale = s1.scsi_command(
        0,
        &write10(100, 8),
        false,
        true,
        4096,
        bytes::Bytes::from(vec![0xeeu8; 4096]),
    );
    let stale_itt = stale.bhs.itt();
    s1.send(&stale);
    let new = vec![0x22u8; 4096];
    let t0 = Instant::now();
    loop {
        let o = s2.scsi(0, &write10(100, 8), &new, 0);
        if o.status == 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "gw2 never took over: {o:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let takeover = t0.elapsed();
    common::signal(&g1.child, 18); // SIGCONT
                                   // Back, gw1 still takes itself for the owner and Ceph has not told it otherwise yet: a
                                   // login there would read stale port groups, so it is refused for now (service
                                   // unavailable, RFC 7143 §11.13.5) until gw1 has heard from the cluster again.
    let login_status = || {
        let mut c = Client::connect(a1.parse().unwrap());
        let pdu = c.login_pdu(
            1,
            Some(3),
            &format!(
                "InitiatorName=iqn.2026-11.org.rbdgw:late|TargetName={TARGET}|SessionType=Normal|"
            ),
        );
        c.send(&pdu);
        let r = c.recv().expect("a login response");
        (r.bhs.0[36], r.bhs.0[37])
    };
    assert_eq!(
        login_status(),
        (3, 1),
        "a login to the fenced ex-owner waits"
    );
    let late = loop {
        let p = s1
            .recv_timeout(Duration::from_secs(30))
            .expect("gw1 answers its queued write");
        if p.bhs.itt() == stale_itt && p.bhs.opcode() == Some(iscsi::pdu::Opcode::ScsiResponse) {
            break p;
        }
    };
    assert_ne!(
        late.bhs.0[3], 0,
        "the fenced gateway's late write must not succeed"
    );
    let o = s2.scsi_ready(0, &read10(100, 8), &[], 4096);
    assert!(o.data == new, "the image holds the new owner's data");
    // gw1 reconnects as a new client and serves again (reads), now a non-owner.
    let t1 = Instant::now();
    let o = loop {
        let o = s1.scsi(0, &read10(100, 8), &[], 4096);
        if o.status == 0 {
            break o;
        }
        assert!(t1.elapsed() < Duration::from_secs(30), "gw1 rejoins: {o:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(o.data == new);
    let t2 = Instant::now();
    while login_status() != (0, 0) {
        assert!(
            t2.elapsed() < Duration::from_secs(15),
            "gw1 admits logins again"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log1 = std::fs::read_to_string(&g1.log).unwrap_or_default();
    assert!(
        log1.contains("login refused for now (service unavailable)"),
        "{log1}"
    );
    assert!(log1.contains("blocklisted"), "gw1 logs its fencing");
    println!(
        "fencing: gw2 took over {:.1} s after gw1 stopped; gw1's late write answered {:?}; \
         gw1 rejoined {:.1} s after it resumed",
        takeover.as_secs_f64(),
        late.data.get(4).map(|k| k & 0x0f),
        t1.elapsed().as_secs_f64()
    );

    // Crash consistency on RBD (issue 8): a gateway SIGKILLed under FUA writes, plain writes
    // and SYNCHRONIZE CACHE; every durable write reads back through the other gateway and
    // the restarted one.
    drop((s1, s2));
    let crash_login = |a: &str| {
        let mut c = Client::connect(a.parse().unwrap());
        c.login(
            "iqn.2026-11.org.rbdgw:ceph-crash",
            Some(TARGET),
            "ImmediateData=Yes|",
        );
        c
    };
    let mut check = common::diskcheck::DiskCheck::new(65536, 256);
    for round in 0..2 {
        let (victim, other) = [(0, 1), (1, 0)][round];
        let addr = [&a1, &a2];
        let mut c = crash_login(addr[victim]);
        // The writer's gateway takes the exclusive lock first (from a killed owner: by
        // fencing it).
        write_until_done(&mut c, &write10(65536, 8), 0, Duration::from_secs(60));
        let g = if victim == 0 { &mut g1 } else { &mut g2 };
        check.write_until_crash(&mut c, 8, Duration::from_secs(2), || {
            common::signal(&g.child, 9);
        });
        let _ = g.child.wait();
        let newer = check.verify(&mut crash_login(addr[other]), addr[other]);
        *g = start(victim);
        assert_eq!(
            check.verify(&mut crash_login(addr[victim]), addr[victim]),
            newer
        );
        println!(
            "crash on RBD, round {round}: killed with {} in flight; {} writes acknowledged ({} FUA), \
             {} SYNCHRONIZE CACHE so far; every durable write read back through both gateways",
            check.in_flight_at_crash, check.acked, check.fua_acked, check.syncs
        );
        assert!(check.in_flight_at_crash > 0);
    }

    // A killed gateway that held no lock leaves librbd's watch on the image's header until
    // the OSD times it out (30 s), and every notify on the header waits for it meanwhile (5
    // s): a lock release waits for its notifies. Its next process fences the old client,
    // which drops the watch: hand-overs right after go at their usual pace.
    write_until_done(
        &mut crash_login(&a1),
        &write10(0, 8),
        3,
        Duration::from_secs(60),
    );
    common::signal(&g2.child, 9);
    let _ = g2.child.wait();
    g2 = start(1);
    let log2 = std::fs::read_to_string(&g2.log).unwrap_or_default();
    assert!(
        log2.contains("fenced this gateway's previous client"),
        "the restarted gw2 fences its predecessor:\n{log2}"
    );
    // gw2 takes the lock over (and tells the header's watchers), then gw1 asks it back: gw2's
    // release waits for that notify.
    let to_gw2 = write_until_done(
        &mut crash_login(&a2),
        &write10(0, 8),
        4,
        Duration::from_secs(30),
    );
    let to_gw1 = write_until_done(
        &mut crash_login(&a1),
        &write10(0, 8),
        5,
        Duration::from_secs(30),
    );
    println!(
        "after a non-owner was killed and restarted: hand-overs took {to_gw2:.1?} and {to_gw1:.1?}"
    );
    assert!(
        to_gw1 < Duration::from_millis(2500),
        "hand-over back to gw1 took {to_gw1:?}: a dead watcher held up the release"
    );

    // A gateway stopped with SIGTERM lets its write locks go as it stops (not when the
    // process exits): the other gateway's first write takes the lock without fencing.
    write_until_done(
        &mut crash_login(&a1),
        &write10(0, 8),
        1,
        Duration::from_secs(60),
    );
    let fenced_before = std::fs::read_to_string(&g2.log)
        .unwrap_or_default()
        .matches("fenced the unresponsive lock owner")
        .count();
    common::signal(&g1.child, libc::SIGTERM);
    let _ = g1.child.wait();
    let took_over = write_until_done(
        &mut crash_login(&a2),
        &write10(0, 8),
        2,
        Duration::from_secs(30),
    );
    let log1 = std::fs::read_to_string(&g1.log).unwrap_or_default();
    assert!(log1.contains("stopping: released the write lock"), "{log1}");
    let log2 = std::fs::read_to_string(&g2.log).unwrap_or_default();
    assert_eq!(
        log2.matches("fenced the unresponsive lock owner").count(),
        fenced_before,
        "gw2 fenced a gateway that stopped cleanly:\n{log2}"
    );
    println!("graceful stop: gw2 wrote {took_over:.1?} after gw1 exited, no fencing");
    g1 = start(0);

    // Reservations across the loss of every gateway, on RBD (SPC-4 §5.9.5): without APTPL a
    // registration and its reservation are gone, with APTPL both stay.
    use common::reservations::{read_keys, read_reservation};
    let login = |a: &str| {
        let mut c = Client::connect(a.parse().unwrap());
        c.login("iqn.2026-11.org.rbdgw:ceph-pr", Some(TARGET), "");
        c
    };
    for aptpl in [false, true] {
        let mut c = login(&a1);
        let (cdb, mut p) = prout(0, 0, 0, 0xc1);
        p[20] = u8::from(aptpl);
        assert_eq!(c.scsi_ready(0, &cdb, &p, 0).status, 0, "register");
        let (cdb, p) = prout(1, 5, 0xc1, 0);
        assert_eq!(c.scsi_ready(0, &cdb, &p, 0).status, 0, "reserve");
        drop(c);
        drop((g1, g2));
        (g1, g2) = (start(0), start(1));
        for a in [&a1, &a2] {
            let mut c = login(a);
            let want = if aptpl { vec![0xc1] } else { vec![] };
            assert_eq!(read_keys(&mut c).1, want, "aptpl={aptpl} through {a}");
            let held = read_reservation(&mut c);
            assert_eq!(held.is_some(), aptpl, "aptpl={aptpl} through {a}: {held:?}");
        }
    }
    println!("reservations on RBD: gone after every gateway went down without APTPL, kept with it");
}

/// Sends `write` (4 KiB of `fill` to LUN 0) until it succeeds (the gateway may first have to
/// take the write lock); how long that took.
fn write_until_done(c: &mut Client, write: &[u8], fill: u8, limit: Duration) -> Duration {
    let t0 = Instant::now();
    while c.scsi_ready(0, write, &[fill; 4096], 0).status != 0 {
        assert!(t0.elapsed() < limit, "no write in {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}

/// The names of a process's threads, with how many of each.
fn thread_names(pid: u32) -> std::collections::BTreeMap<String, usize> {
    let mut names = std::collections::BTreeMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        *names.entry(n.trim().to_string()).or_insert(0) += 1;
    }
    names
}

/// Threads and open descriptors of a process.
fn threads_and_fds(pid: u32) -> (usize, usize) {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (threads, fds)
}

/// Fifty RBD LUNs share the gateway's one RADOS client: the thread count does not grow with
/// them. Fencing is per client, so when the client is blocklisted every LUN is fenced at
/// once; each reopens on one new client, the gateway takes its locks back, and every LUN
/// serves writes again, with no thread or descriptor left behind.
#[test]
fn a_fenced_gateway_with_fifty_luns_recovers() {
    let _serial = one_at_a_time();
    const LUNS: usize = 50;
    // Once the opening's blocking threads have ended: the runtime's, one RADOS client's, and
    // no thread per image (pings are asynchronous notifies).
    const STEADY_THREADS: usize = 40;
    let cluster = ceph::Cluster::start();
    let dir = Scratch::new("ceph-fifty");
    let addr = format!("127.0.0.1:{}", free_port());
    let target = "iqn.2026-11.org.rbdgw:fifty";
    let mut tpg: Vec<serde_json::Value> = (0..LUNS)
        .map(|i| serde_json::json!({"image": format!("lun{i}"), "lun": i, "size": "8M", "owner": "gw1"}))
        .collect();
    // And one more whose image does not exist yet (no size: not created by the gateway).
    tpg.push(serde_json::json!({"image": "late", "lun": LUNS, "owner": "gw1"}));
    const LATE: u64 = LUNS as u64;
    let config = serde_json::json!({
        "auth": [{"target": target, "authentication": "none"}],
        "targets": [{"target": target, "hosts": [{"host": "gw1", "portal": "p1"}]}],
        "portals": [{"name": "p1", "addresses": [addr]}],
        "pools": [{"pool": "rbd", "gateways": [{"target": target, "tpg": tpg}]}]
    });
    let file = dir.0.join("config.json");
    std::fs::write(&file, config.to_string()).unwrap();
    let log = dir.0.join("gw1.log");
    let t0 = Instant::now();
    let gw = Serve::start(
        file.to_str().unwrap(),
        "gw1",
        &cluster.conf(),
        &addr,
        log.clone(),
    );
    let mut s = Client::connect(addr.parse().unwrap());
    s.login("iqn.2026-11.org.rbdgw:fifty-init", Some(target), "");
    let write10 = |lba: u8| [0x2a, 0, 0, 0, 0, lba, 0, 0, 1, 0];
    let read10 = |lba: u8| [0x28, 0, 0, 0, 0, lba, 0, 0, 1, 0];
    // Every LUN writes, which also waits for every image to be open and its lock held.
    let write_all = |s: &mut Client, luns: u64, lba: u8, fill: u8, within: Duration| {
        let deadline = Instant::now() + within;
        for lun in 0..luns {
            loop {
                let o = s.scsi_ready(lun, &write10(lba), &[fill; 512], 0);
                if o.status == 0 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "LUN {lun} does not take writes: {:?}\n{}",
                    o.sense,
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    write_all(&mut s, LATE, 1, 0xa1, Duration::from_secs(60));
    println!(
        "{LUNS} RBD LUNs serving writes {:.1?} after start",
        t0.elapsed()
    );
    // The missing image held nobody back; its LUN is NOT READY (04/0C) until it exists.
    let tur = [0u8; 6];
    let o = s.scsi_ready(LATE, &tur, &[], 0);
    assert_eq!(o.sense, Some((0x02, 0x04, 0x0c)), "{o:?}");
    cluster.tool("rbd", &["create", "--size", "8M", "late"]);
    let t_late = Instant::now();
    while s.scsi_ready(LATE, &tur, &[], 0).status != 0 {
        assert!(
            t_late.elapsed() < Duration::from_secs(45),
            "the late image is not served:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    println!(
        "the late image served {:.1?} after it was created",
        t_late.elapsed()
    );
    let o = s.scsi_ready(LATE, &write10(1), &[0xa1; 512], 0);
    assert_eq!(o.status, 0, "{o:?}");
    let (threads, fds) = threads_and_fds(gw.child.id());
    println!("{LUNS} RBD LUNs: {threads} threads, {fds} open files");
    // One client's threads and the runtime's, not a client (a dozen threads) per image.
    assert!(
        threads < 100,
        "{threads} threads for {LUNS} LUNs: {:?}",
        thread_names(gw.child.id())
    );

    // Fence the gateway's client, as a peer breaking one image's lock would.
    let lock = cluster.tool("rbd", &["lock", "ls", "--format", "json", "lun0"]);
    let locks: serde_json::Value = serde_json::from_str(&lock).unwrap();
    let client_addr = locks[0]["address"]
        .as_str()
        .expect("lun0 is locked")
        .to_string();
    cluster.tool("ceph", &["osd", "blocklist", "add", &client_addr]);
    let t1 = Instant::now();
    write_all(&mut s, LATE + 1, 2, 0xa2, Duration::from_secs(90));
    println!(
        "fenced: all {} LUNs took writes again {:.1?} after the blocklist",
        LATE + 1,
        t1.elapsed()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("blocklisted"),
        "the fencing is logged:\n{text}"
    );
    assert_eq!(
        text.matches("connected to the cluster as a new client (the previous one was blocklisted)")
            .count(),
        1,
        "one new client for every image:\n{text}"
    );
    for lun in 0..=LATE {
        let o = s.scsi_ready(lun, &read10(1), &[], 512);
        assert_eq!(
            (o.status, o.data.as_slice()),
            (0, &[0xa1; 512][..]),
            "LUN {lun}"
        );
        let o = s.scsi_ready(lun, &read10(2), &[], 512);
        assert_eq!(
            (o.status, o.data.as_slice()),
            (0, &[0xa2; 512][..]),
            "LUN {lun}"
        );
    }
    // The blocklisted client is closed once its images' handles retire (10 s), and idle
    // blocking threads end 10 s after their last call.
    let deadline = Instant::now() + Duration::from_secs(45);
    let (threads_after, fds_after) = loop {
        let (t, f) = threads_and_fds(gw.child.id());
        if (t <= STEADY_THREADS && f <= fds + 10) || Instant::now() > deadline {
            break (t, f);
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    println!("after the fence: {threads_after} threads, {fds_after} open files");
    assert!(
        threads_after <= STEADY_THREADS && fds_after <= fds + 10,
        "the old client is gone: {threads}→{threads_after} threads, {fds}→{fds_after} fds; \
         threads now {:?}",
        thread_names(gw.child.id())
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("panicked") && !text.contains("ceph_assert"),
        "{text}"
    );

    // Asked to stop with its cluster gone, the gateway can neither release its write locks
    // nor close its images (both take the OSD): it still exits, after its patience (5 s for
    // the locks, 10 s for closes begun), and says why. (It used to hang in the first close
    // for good.)
    drop(cluster);
    drop(s);
    let mut gw = gw;
    let t2 = Instant::now();
    common::signal(&gw.child, libc::SIGTERM);
    let status = loop {
        if let Some(status) = gw.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            t2.elapsed() < Duration::from_secs(40),
            "the gateway does not exit without its cluster:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    println!(
        "stopped without its cluster in {:.1?} ({status})",
        t2.elapsed()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("the write locks were not all released within 5 s")
            || text.contains("did not close within 10 s"),
        "{text}"
    );
}

/// `config import-lrbd` reads a config stored the way `lrbd -f` stored it (in every pool of
/// the config, an empty object `lrbd.conf` with an xattr per gateway entry named by its
/// `target` or `host`, `_<target or host>` per auth entry, and `targets` and `portals`), and
/// the document it rebuilds plans exactly as the file did, on every host: targets, TPGs, LUN
/// numbers and images, serials, mappings, auth and discovery auth, and lrbd's commands.
#[test]
fn a_config_stored_by_lrbd_imports_to_the_same_plan() {
    let _serial = one_at_a_time();
    let cluster = ceph::Cluster::start();
    cluster.tool("ceph", &["osd", "pool", "create", "iscsi", "8"]);
    let dir = Scratch::new("ceph-import-lrbd");
    let t = "iqn.2003-01.org.linux-iscsi:igw.x86:sn.redundant";
    let own = "iqn.2003-01.org.linux-iscsi:generic.x86:sn.abcdefghijk";
    let doc = serde_json::json!({
        "auth": [
            {"target": t, "authentication": "tpg+identified",
             "tpg": {"userid": "common", "password": "common-secret"}},
            {"host": "igw1", "authentication": "none",
             "discovery": {"auth": "enable", "userid": "disc", "password": "disc-secret-1"}}],
        "targets": [
            {"target": t, "hosts": [{"host": "igw1", "portal": "p1"}, {"host": "igw2", "portal": "p2"}]},
            {"target": own, "host": "igw1", "wwn_generate": "original"}],
        "portals": [{"name": "p1", "addresses": ["127.0.0.1"]}, {"name": "p2", "addresses": ["127.0.0.2 3261"]},
                    {"name": "p3", "addresses": ["127.0.0.3"]}],
        "pools": [
            {"pool": "rbd", "gateways": [
                {"target": t, "tpg": [
                    {"image": "wood", "initiator": "iqn.1996-04.de.suse:01:a"},
                    {"image": "city", "lun": "0", "initiator": "iqn.1996-04.de.suse:01:a"},
                    {"image": "wood", "initiator": "iqn.1996-04.de.suse:01:b"}]},
                {"host": "igw1", "tpg": [{"image": "archive", "portal": "p3", "rbd_name": "simple"}]},
                {"host": "igw2", "tpg": [{"image": "spare", "initiator": "iqn.1996-04.de.suse:01:b"}]}]},
            {"pool": "iscsi", "gateways": [
                {"target": t, "tpg": [{"image": "city", "initiator": "iqn.1996-04.de.suse:01:b"}]}]}]
    });
    let original = dir.0.join("lrbd.json");
    std::fs::write(&original, doc.to_string()).unwrap();
    // As lrbd's Content.save wrote it.
    for pool in ["rbd", "iscsi"] {
        let rados = |args: &[&str]| {
            let mut a = vec!["-p", pool];
            a.extend_from_slice(args);
            cluster.tool("rados", &a);
        };
        rados(&["create", "lrbd.conf"]);
        let p = doc["pools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pool"] == pool)
            .unwrap();
        for g in p["gateways"].as_array().unwrap() {
            let key = g.get("target").or(g.get("host")).unwrap().as_str().unwrap();
            rados(&["setxattr", "lrbd.conf", key, &g.to_string()]);
        }
        for a in doc["auth"].as_array().unwrap() {
            let key = a.get("target").or(a.get("host")).unwrap().as_str().unwrap();
            rados(&["setxattr", "lrbd.conf", &format!("_{key}"), &a.to_string()]);
        }
        rados(&[
            "setxattr",
            "lrbd.conf",
            "targets",
            &doc["targets"].to_string(),
        ]);
        rados(&[
            "setxattr",
            "lrbd.conf",
            "portals",
            &doc["portals"].to_string(),
        ]);
    }
    let rbdgw = |args: &[&str]| rbdgw_cli(&cluster, args, &[]);
    let imported = dir.0.join("imported.json");
    std::fs::write(&imported, rbdgw(&["config", "import-lrbd"])).unwrap();
    for host in ["igw1", "igw2"] {
        let plan = |file: &std::path::Path, extra: &[&str]| {
            let mut a = vec!["plan", "--host", host, "--config", file.to_str().unwrap()];
            a.extend_from_slice(extra);
            // The first line names the config file.
            rbdgw(&a).lines().skip(1).collect::<Vec<_>>().join("\n")
        };
        let want = plan(&original, &[]);
        assert_eq!(plan(&imported, &[]), want, "plan of {host}");
        assert_eq!(
            plan(&imported, &["--lrbd-commands"]),
            plan(&original, &["--lrbd-commands"]),
            "lrbd's commands on {host}"
        );
        // And the plan is the one lrbd made: city (given 0), then by backstore name:
        // "iscsi-city" < "rbd-spare" (igw2's own entry, served there alone) < "rbd-wood".
        for line in [
            "lun 0: rbd rbd/city",
            "lun 1: rbd iscsi/city",
            "lun 2: rbd rbd/spare",
            "lun 3: rbd rbd/wood",
        ] {
            assert!(want.contains(line), "{host}: {line}\n{want}");
        }
        let disc = if host == "igw1" {
            "discovery: CHAP user disc"
        } else {
            "discovery: no authentication"
        };
        assert!(want.contains(disc), "{host}: {want}");
    }
    // Stored for rbdgw, an added image that would move served LUNs is refused.
    rbdgw(&["config", "store", "-f", imported.to_str().unwrap()]);
    let mut more = doc.clone();
    more["pools"][0]["gateways"][0]["tpg"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"image": "aaa", "initiator": "iqn.1996-04.de.suse:01:a"}));
    let changed = dir.0.join("more.json");
    std::fs::write(&changed, more.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rbdgw"))
        .args([
            "config",
            "store",
            "-f",
            changed.to_str().unwrap(),
            "--ceph-conf",
            &cluster.conf(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("moves spare"),
        "{err}"
    );
    rbdgw(&[
        "config",
        "store",
        "--renumber",
        "-f",
        changed.to_str().unwrap(),
    ]);
}
