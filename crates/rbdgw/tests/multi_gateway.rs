//! The seed's scenario on loopback: two `rbdgw serve` processes, gw1 on 127.0.0.1 (TPG 1)
//! and gw2 on 127.0.0.2 (TPG 2), export one file image as LUN 0 of one target.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::client::Client;
use common::reservations::{prout, read_keys, write10};
use common::{free_port, require, Gateway, Scratch};

const TARGET: &str = "iqn.2026-11.org.rbdgw:ha";

fn vpd(c: &mut Client, page: u8) -> Vec<u8> {
    let o = c.scsi_ready(0, &[0x12, 1, page, 0x10, 0, 0], &[], 4096);
    assert_eq!(o.status, 0);
    o.data
}

/// NAA designator of VPD 0x83.
fn naa(page83: &[u8]) -> Vec<u8> {
    let mut off = 4;
    while off + 4 <= page83.len() {
        let len = page83[off + 3] as usize;
        if page83[off + 1] & 0x0f == 3 {
            return page83[off + 4..off + 4 + len].to_vec();
        }
        off += 4 + len;
    }
    panic!("no NAA designator");
}

/// REPORT TARGET PORT GROUPS: (tag, access state) per group.
fn rtpg(c: &mut Client) -> Vec<(u16, u8)> {
    let o = c.scsi_ready(0, &[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0], &[], 1024);
    assert_eq!(o.status, 0, "{o:?}");
    let mut v = Vec::new();
    let mut off = 4;
    while off + 8 <= o.data.len() {
        v.push((
            u16::from_be_bytes([o.data[off + 2], o.data[off + 3]]),
            o.data[off] & 0x0f,
        ));
        off += 8 + 4 * o.data[off + 7] as usize;
    }
    v
}

/// Waits for `f`; returns how long it took.
fn wait_for(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    t0.elapsed()
}

#[test]
fn two_gateways_one_lun() {
    require("iscsi-test-cu", "libiscsi-bin");
    let dir = Scratch::new("multi");
    let port = free_port();
    let (a1, a2) = (format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}"));
    let image = dir.0.join("ha.img");
    let config = serde_json::json!({
        "auth": [{"target": TARGET, "authentication": "none"}],
        "targets": [{"target": TARGET, "hosts": [{"host": "gw1", "portal": "portal1"}, {"host": "gw2", "portal": "portal2"}]}],
        "portals": [{"name": "portal1", "addresses": [a1]}, {"name": "portal2", "addresses": [a2]}],
        "pools": [{"pool": "rbd", "gateways": [{"target": TARGET, "tpg": [
            {"image": "ha", "backstore": "file", "path": image.display().to_string(), "size": "64M", "owner": "gw1"}]}]}]
    })
    .to_string();
    let gw1 = Gateway::start(&dir.0, &config, "gw1", a1.parse().unwrap());
    let gw2 = Gateway::start(&dir.0, &config, "gw2", a2.parse().unwrap());

    // SendTargets on either gateway lists both portals, each with its own TPG tag.
    for addr in [&a1, &a2] {
        let mut d = Client::connect(addr.parse().unwrap());
        d.login("iqn.2026-11.org.rbdgw:disc", None, "");
        let st = d.send_targets();
        let addrs: Vec<&str> =
            st.0.iter()
                .filter(|(k, _)| k == "TargetAddress")
                .map(|(_, v)| v.as_str())
                .collect();
        assert_eq!(st.get("TargetName"), Some(TARGET));
        assert_eq!(
            addrs,
            vec![format!("{a1},1"), format!("{a2},2")],
            "discovery on {addr}"
        );
    }

    // One initiator, one session per gateway; login answers carry each gateway's TPG tag.
    let mut s1 = Client::connect(a1.parse().unwrap());
    let t = s1.login("iqn.2026-11.org.rbdgw:host-a", Some(TARGET), "");
    assert_eq!(t.get("TargetPortalGroupTag"), Some("1"));
    let mut s2 = Client::connect(a2.parse().unwrap());
    let t = s2.login("iqn.2026-11.org.rbdgw:host-a", Some(TARGET), "");
    assert_eq!(t.get("TargetPortalGroupTag"), Some("2"));

    // The same LU identity on both paths.
    assert_eq!(vpd(&mut s1, 0x80), vpd(&mut s2, 0x80), "unit serial");
    let (p1, p2) = (vpd(&mut s1, 0x83), vpd(&mut s2, 0x83));
    assert_eq!(
        naa(&p1),
        naa(&p2),
        "NAA designator (the WWID multipath keys on)"
    );
    assert_ne!(p1, p2, "per-port designators differ");

    // Implicit ALUA: the configured owner gw1 is active/optimized, everywhere.
    assert_eq!(rtpg(&mut s1), vec![(1, 0), (2, 1)]);
    assert_eq!(rtpg(&mut s2), vec![(1, 0), (2, 1)]);

    // Persistent reservations are one state: a reservation through gw1 binds gw2.
    let mut b2 = Client::connect(a2.parse().unwrap());
    b2.login("iqn.2026-11.org.rbdgw:host-b", Some(TARGET), "");
    let (c, p) = prout(0, 0, 0, 0xa1);
    assert_eq!(s1.scsi_ready(0, &c, &p, 0).status, 0);
    let (c, p) = prout(1, 1, 0xa1, 0); // Write Exclusive
    assert_eq!(s1.scsi_ready(0, &c, &p, 0).status, 0);
    assert_eq!(
        b2.scsi_ready(0, &write10(8), &[1u8; 512], 0).status,
        0x18,
        "RESERVATION CONFLICT through the other gateway"
    );
    assert_eq!(
        b2.scsi_ready(0, &[0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0], &[], 512)
            .status,
        0,
        "reads are allowed under Write Exclusive"
    );
    let (c, p) = prout(2, 1, 0xa1, 0);
    assert_eq!(s1.scsi_ready(0, &c, &p, 0).status, 0);
    // A PREEMPT through gw1 reaches the preempted nexus, which is on gw2, as REGISTRATIONS
    // PREEMPTED (SPC-4 §5.9.11.4), raised there by gw2.
    let (c, p) = prout(0, 0, 0, 0xb2);
    assert_eq!(b2.scsi_ready(0, &c, &p, 0).status, 0);
    let (c, p) = prout(4, 1, 0xa1, 0xb2);
    assert_eq!(s1.scsi_ready(0, &c, &p, 0).status, 0);
    let o = b2.scsi(0, &[0; 6], &[], 0);
    assert_eq!(o.sense, Some((0x06, 0x2a, 0x05)), "{o:?}");
    assert_eq!(b2.scsi(0, &[0; 6], &[], 0).status, 0, "raised once");
    let (c, p) = prout(2, 1, 0xa1, 0);
    assert_eq!(s1.scsi_ready(0, &c, &p, 0).status, 0);
    let (c, p) = prout(0, 0, 0xa1, 0);
    assert_eq!(s1.scsi_ready(0, &c, &p, 0).status, 0);

    // Writes through the non-optimized gateway are served: the write lock moves there (the
    // owner hands it over), but the ALUA owner is decided by the rule, not by where writes
    // come from: gw1 stays active/optimized on both gateways.
    let w = b2.scsi_ready(0, &write10(9), &[2u8; 512], 0);
    assert_eq!(w.status, 0, "{w:?}");
    let r = s1.scsi_ready(0, &[0x28, 0, 0, 0, 0, 9, 0, 0, 1, 0], &[], 512);
    assert_eq!(
        r.data,
        vec![2u8; 512],
        "written through gw2, read through gw1"
    );
    assert_eq!(s1.scsi_ready(0, &write10(10), &[3u8; 512], 0).status, 0);
    let r = b2.scsi_ready(0, &[0x28, 0, 0, 0, 0, 10, 0, 0, 1, 0], &[], 512);
    assert_eq!(r.data, vec![3u8; 512]);
    assert_eq!(rtpg(&mut s1), vec![(1, 0), (2, 1)]);
    assert_eq!(rtpg(&mut b2), vec![(1, 0), (2, 1)]);
    drop((s1, s2, b2));

    // libiscsi across the gateways, then the SCSI family against each while the other runs.
    let url = |a: &str| format!("iscsi://{a}/{TARGET}/0");
    let run = |args: &[String]| {
        let out = Command::new("iscsi-test-cu")
            .args([
                "-d",
                "-i",
                "iqn.2026-11.org.rbdgw:mp-init1",
                "-I",
                "iqn.2026-11.org.rbdgw:mp-init2",
            ])
            .args(args)
            .output()
            .expect("iscsi-test-cu");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let summary = text
            .lines()
            .find(|l| l.trim_start().starts_with("tests"))
            .unwrap_or("")
            .to_string();
        (text, summary)
    };
    let (text, summary) = run(&["-t".into(), "SCSI.MultipathIO".into(), url(&a1), url(&a2)]);
    println!("MultipathIO across gw1 and gw2: {summary}");
    let w: Vec<&str> = summary.split_whitespace().collect();
    assert!(
        w.len() >= 5 && w[1] == "4" && w[4] == "0" && !text.contains("Multipath unavailable"),
        "MultipathIO:\n{text}"
    );
    for (name, a) in [("gw1", &a1), ("gw2", &a2)] {
        let (text, summary) = run(&["-t".into(), "SCSI".into(), url(a)]);
        println!("SCSI family on {name} with the other gateway running: {summary}");
        let w: Vec<&str> = summary.split_whitespace().collect();
        assert!(
            w.len() >= 5 && w[4] == "0",
            "SCSI family on {name}:\n{}",
            &text[text.len().saturating_sub(3000)..]
        );
    }
    for g in [&gw1, &gw2] {
        assert!(!g.log_text().contains("panicked"));
    }
}

/// The first command's unit attention, if one is pending (TEST UNIT READY).
fn pending_ua(c: &mut Client) -> Option<(u8, u8, u8)> {
    c.scsi(0, &[0; 6], &[], 0).sense.filter(|s| s.0 == 0x06)
}

/// Three gateways, one LUN owned by gw1. When gw1 dies, its successor by the rule (gw2, the
/// next tag) becomes active/optimized at once, on every surviving gateway, gw1's group is
/// reported unavailable, and every nexus is told — the new owner's own included; gw3 stays
/// non-optimized and writes through it do not make it the owner. When gw1 comes back and an
/// initiator uses it, it takes the LUN back.
#[test]
fn three_gateways_failover_and_failback() {
    let dir = Scratch::new("three");
    let port = free_port();
    let addrs: Vec<String> = (1..=3).map(|i| format!("127.0.0.{i}:{port}")).collect();
    let image = dir.0.join("three.img");
    let config = serde_json::json!({
        "auth": [{"target": TARGET, "authentication": "none"}],
        "targets": [{"target": TARGET, "hosts": [
            {"host": "gw1", "portal": "p1"}, {"host": "gw2", "portal": "p2"}, {"host": "gw3", "portal": "p3"}]}],
        "portals": [{"name": "p1", "addresses": [addrs[0]]}, {"name": "p2", "addresses": [addrs[1]]},
                    {"name": "p3", "addresses": [addrs[2]]}],
        "pools": [{"pool": "rbd", "gateways": [{"target": TARGET, "tpg": [
            {"image": "three", "backstore": "file", "path": image.display().to_string(), "size": "16M", "owner": "gw1"}]}]}]
    })
    .to_string();
    let start = |i: usize| {
        Gateway::start(
            &dir.0,
            &config,
            &format!("gw{}", i + 1),
            addrs[i].parse().unwrap(),
        )
    };
    let mut gws: Vec<Gateway> = (0..3).map(start).collect();
    let login = |i: usize| {
        let mut c = Client::connect(addrs[i].parse().unwrap());
        c.login("iqn.2026-11.org.rbdgw:three", Some(TARGET), "");
        c
    };
    let mut s: Vec<Client> = (0..3).map(login).collect();
    let all_agree = |s: &mut [Client], want: &[(u16, u8)]| s.iter_mut().all(|c| rtpg(c) == want);
    wait_for("gw1 to be the owner everywhere", || {
        all_agree(&mut s, &[(1, 0), (2, 1), (3, 1)])
    });
    assert_eq!(s[0].scsi_ready(0, &write10(1), &[1u8; 512], 0).status, 0);
    // Quiet nexuses on gw2 and gw3 (another initiator), all attentions consumed: they must
    // learn of the failover from a unit attention.
    let mut quiet: Vec<Client> = (1..3)
        .map(|i| {
            let mut c = Client::connect(addrs[i].parse().unwrap());
            c.login("iqn.2026-11.org.rbdgw:quiet", Some(TARGET), "");
            while pending_ua(&mut c).is_some() {}
            c
        })
        .collect();

    // gw1 dies.
    let t0 = Instant::now();
    drop(gws.remove(0));
    let mut survivors = s.split_off(1);
    wait_for(
        "gw2 (the successor) to be the owner on gw2 and gw3, gw1 unavailable",
        || all_agree(&mut survivors, &[(1, 3), (2, 0), (3, 1)]),
    );
    let took = t0.elapsed();
    println!("failover: gw2 active/optimized on both survivors {took:?} after gw1 died");
    assert!(took < Duration::from_secs(10), "failover took {took:?}");
    // Every surviving nexus was told, the new owner's own too (SPC-4 §5.16.2.6).
    for (i, c) in quiet.iter_mut().enumerate() {
        assert_eq!(pending_ua(c), Some((0x06, 0x2a, 0x06)), "gw{}", i + 2);
        assert_eq!(pending_ua(c), None, "gw{}: raised once", i + 2);
    }
    // gw2 took the lock by itself: its write needs no handover.
    assert_eq!(
        survivors[0]
            .scsi_ready(0, &write10(2), &[2u8; 512], 0)
            .status,
        0
    );
    assert!(gws[0]
        .log_text()
        .contains("ALUA owner (active/optimized) is now TPG 2"));
    // gw3 serves writes (the lock moves there) but does not become the owner.
    assert_eq!(
        survivors[1]
            .scsi_ready(0, &write10(3), &[3u8; 512], 0)
            .status,
        0
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(all_agree(&mut survivors, &[(1, 3), (2, 0), (3, 1)]));
    let r = survivors[0].scsi_ready(0, &[0x28, 0, 0, 0, 0, 1, 0, 0, 3, 0], &[], 1536);
    assert_eq!(
        r.data,
        [[1u8; 512], [2u8; 512], [3u8; 512]].concat(),
        "every acknowledged write is there"
    );

    // gw1 comes back; its initiator logs in again and polls it (as multipathd does).
    gws.insert(0, start(0));
    let mut back = login(0);
    let t1 = Instant::now();
    wait_for("gw1 to take its LUN back", || {
        let _ = pending_ua(&mut back);
        rtpg(&mut back) == vec![(1, 0), (2, 1), (3, 1)]
    });
    println!(
        "failback: gw1 active/optimized again {:?} after it returned",
        t1.elapsed()
    );
    wait_for("the survivors to agree", || {
        let _ = survivors.iter_mut().map(pending_ua).count();
        all_agree(&mut survivors, &[(1, 0), (2, 1), (3, 1)])
    });
    assert_eq!(back.scsi_ready(0, &write10(4), &[4u8; 512], 0).status, 0);
    let r = survivors[1].scsi_ready(0, &[0x28, 0, 0, 0, 0, 1, 0, 0, 4, 0], &[], 2048);
    assert_eq!(
        r.data,
        [[1u8; 512], [2u8; 512], [3u8; 512], [4u8; 512]].concat()
    );
    for g in &gws {
        assert!(!g.log_text().contains("panicked"), "{}", g.log_text());
    }
}

/// Two gateways on 127.0.0.1 (gw1, TPG 1, the owner) and 127.0.0.2 (gw2) serving one 16 MiB
/// file image as LUN 0.
struct FilePair {
    dir: Scratch,
    config: String,
    a1: String,
    a2: String,
}

impl FilePair {
    fn new(name: &str) -> FilePair {
        let dir = Scratch::new(name);
        let port = free_port();
        let (a1, a2) = (format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}"));
        let image = dir.0.join(format!("{name}.img"));
        let config = serde_json::json!({
            "auth": [{"target": TARGET, "authentication": "none"}],
            "targets": [{"target": TARGET, "hosts": [{"host": "gw1", "portal": "p1"}, {"host": "gw2", "portal": "p2"}]}],
            "portals": [{"name": "p1", "addresses": [a1]}, {"name": "p2", "addresses": [a2]}],
            "pools": [{"pool": "rbd", "gateways": [{"target": TARGET, "tpg": [
                {"image": name, "backstore": "file", "path": image.display().to_string(), "size": "16M", "owner": "gw1"}]}]}]
        })
        .to_string();
        FilePair {
            dir,
            config,
            a1,
            a2,
        }
    }

    fn start(&self) -> (Gateway, Gateway) {
        (
            Gateway::start(&self.dir.0, &self.config, "gw1", self.a1.parse().unwrap()),
            Gateway::start(&self.dir.0, &self.config, "gw2", self.a2.parse().unwrap()),
        )
    }
}

/// SPC-4 §5.9.5: registrations made without APTPL do not survive a power loss — for a LU
/// served by several gateways, every one of them going down; they do survive one gateway's
/// restart while another serves on. With APTPL they survive all of it.
#[test]
fn reservations_without_aptpl_end_with_the_last_gateway() {
    let FilePair {
        dir,
        config,
        a1,
        a2,
    } = FilePair::new("aptpl");
    let start = |host: &str, a: &str| Gateway::start(&dir.0, &config, host, a.parse().unwrap());
    let login = |a: &str, who: &str| {
        let mut c = Client::connect(a.parse().unwrap());
        c.login(&format!("iqn.2026-11.org.rbdgw:{who}"), Some(TARGET), "");
        c
    };
    let register = |c: &mut Client, key: u64, aptpl: bool| {
        let (cdb, mut p) = prout(0, 0, 0, key);
        p[20] = u8::from(aptpl);
        assert_eq!(c.scsi_ready(0, &cdb, &p, 0).status, 0);
        let (cdb, p) = prout(1, 1, key, 0);
        assert_eq!(c.scsi_ready(0, &cdb, &p, 0).status, 0, "reserve");
    };
    for aptpl in [false, true] {
        let mut gw1 = start("gw1", &a1);
        let gw2 = start("gw2", &a2);
        register(&mut login(&a1, "node-a"), 0xa1, aptpl);
        // One gateway restarts while the other serves on: nothing is lost.
        drop(gw1);
        gw1 = start("gw1", &a1);
        assert_eq!(
            read_keys(&mut login(&a1, "node-b")).1,
            vec![0xa1],
            "aptpl={aptpl}"
        );
        // Every gateway goes down: a power loss of the LU.
        drop((gw1, gw2));
        let (_gw1, _gw2) = (start("gw1", &a1), start("gw2", &a2));
        let want = if aptpl { vec![0xa1] } else { vec![] };
        for a in [&a1, &a2] {
            let mut c = login(a, "node-b");
            assert_eq!(read_keys(&mut c).1, want, "aptpl={aptpl} through {a}");
            // READ RESERVATION: additional length 16 with a reservation, 0 without.
            let o = c.scsi_ready(0, &[0x5e, 1, 0, 0, 0, 0, 0, 0, 64, 0], &[], 64);
            let len = u32::from_be_bytes([o.data[4], o.data[5], o.data[6], o.data[7]]);
            assert_eq!(len, if aptpl { 16 } else { 0 }, "aptpl={aptpl} through {a}");
        }
        if !aptpl {
            // The state starts afresh: the next round registers on a clean LU.
            assert_eq!(read_keys(&mut login(&a2, "node-b")).1, Vec::<u64>::new());
        }
    }
    // Every gateway goes down and all come back at the same moment: each sees the other
    // starting, which is no witness that the LU kept running, and the registrations made
    // without APTPL are gone all the same. (Each used to take the other for a survivor:
    // both kept them.)
    let (gw1, gw2) = (start("gw1", &a1), start("gw2", &a2));
    // (A new initiator: node-a's APTPL registration and reservation still stand; this one's
    // APTPL=0 makes the LU's state not persist.)
    let (cdb, p) = prout(0, 0, 0, 0xc3);
    let mut c = login(&a1, "node-c");
    assert_eq!(c.scsi_ready(0, &cdb, &p, 0).status, 0, "register");
    assert_eq!(read_keys(&mut c).1, vec![0xa1, 0xc3]);
    drop((c, gw1, gw2));
    let (_gw1, _gw2) = std::thread::scope(|s| {
        let g1 = s.spawn(|| start("gw1", &a1));
        let g2 = s.spawn(|| start("gw2", &a2));
        (g1.join().unwrap(), g2.join().unwrap())
    });
    for a in [&a1, &a2] {
        assert_eq!(
            read_keys(&mut login(a, "node-b")).1,
            Vec::<u64>::new(),
            "both restarted together; through {a}"
        );
    }
}

#[test]
fn preempt_and_abort_aborts_a_write_waiting_behind_the_other_gateway() {
    let pair = FilePair::new("pra");
    let _gws = pair.start();
    common::reservations::preempt_and_abort_across_gateways(&pair.a1, &pair.a2, TARGET);
}

/// The MS-CSVP reservation sequence through two gateways, each node on either.
#[test]
fn cluster_validation_reservations_alike_through_every_gateway() {
    let pair = FilePair::new("csvp");
    let _gws = pair.start();
    common::reservations::cluster_validation_sequence(&pair.a1, &pair.a2, TARGET);
    common::reservations::cluster_validation_sequence(&pair.a2, &pair.a1, TARGET);
}

/// Two gateways started at the same moment on a file image that does not exist yet: both
/// start (one creates it whole under a temporary name and links it into place) and both
/// serve its full size (issue: "File exists" in 9 of 70 starts, a size briefly 0).
#[test]
fn two_gateways_starting_together_on_a_missing_image() {
    for round in 0..10 {
        let pair = FilePair::new(&format!("together{round}"));
        let (g1, g2) = std::thread::scope(|s| {
            let h1 = s.spawn(|| {
                Gateway::start(&pair.dir.0, &pair.config, "gw1", pair.a1.parse().unwrap())
            });
            let h2 = s.spawn(|| {
                Gateway::start(&pair.dir.0, &pair.config, "gw2", pair.a2.parse().unwrap())
            });
            (h1.join().unwrap(), h2.join().unwrap())
        });
        for a in [&pair.a1, &pair.a2] {
            let mut c = Client::connect(a.parse().unwrap());
            c.login("iqn.2026-11.org.rbdgw:together", Some(TARGET), "");
            // READ CAPACITY (10): the last LBA of 16 MiB in 512-byte blocks.
            let o = c.scsi_ready(0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
            assert_eq!(o.status, 0);
            let last = u32::from_be_bytes([o.data[0], o.data[1], o.data[2], o.data[3]]);
            assert_eq!(last, (16 << 20) / 512 - 1, "round {round} through {a}");
        }
        drop((g1, g2));
    }
}

/// LUN numbers in a REPORT LUNS answer (single-level peripheral or flat addressing).
fn report_luns(c: &mut Client) -> Vec<u64> {
    let o = c.scsi_ready(0, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0], &[], 1024);
    assert_eq!(o.status, 0, "{o:?}");
    let n = u32::from_be_bytes(o.data[0..4].try_into().unwrap()) as usize / 8;
    (0..n)
        .map(|i| {
            let e = &o.data[8 + 8 * i..16 + 8 * i];
            (u64::from(e[0] & 0x3f) << 8) | u64::from(e[1])
        })
        .collect()
}

/// A config as `lrbd -m 1.0` leaves it (`rbd_name: "simple"` on every image, `wwn_generate:
/// "original"`), with lrbd's other habits: `lun` as a string, an image listed twice for two
/// initiators, per-initiator mappings in mode `identified`, and a host-keyed entry into its
/// host's own target. Served as LIO served it: the same LUN numbers (given ones first, the rest
/// by backstore name), one LUN per image mapped to each initiator named, serials and WWIDs by
/// lrbd's rule, and the host's own target listed and served only on that host.
#[test]
fn a_migrated_lrbd_config_is_served_as_lio_served_it() {
    let dir = Scratch::new("multi-lrbd-migrated");
    let (a1, a2): (std::net::SocketAddr, std::net::SocketAddr) = (
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("127.0.0.2:{}", free_port()).parse().unwrap(),
    );
    let own = "iqn.2026-11.org.rbdgw:gw1-own";
    let (ini_a, ini_b) = ("iqn.2026-11.org.test:a", "iqn.2026-11.org.test:b");
    let img = |name: &str, extra: serde_json::Value| {
        let mut v = serde_json::json!({"image": name, "rbd_name": "simple", "backstore": "memory", "size": "16M"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    let config = format!(
        "# migrated from lrbd\n{}",
        serde_json::json!({
            "auth": [{"target": TARGET, "authentication": "identified"},
                     {"host": "gw1", "authentication": "none"}],
            "targets": [{"target": TARGET, "wwn_generate": "original",
                         "hosts": [{"host": "gw1", "portal": "p1"}, {"host": "gw2", "portal": "p2"}]},
                        {"target": own, "host": "gw1", "wwn_generate": "original"}],
            "portals": [{"name": "p1", "addresses": [a1.to_string()]},
                        {"name": "p2", "addresses": [a2.to_string()]}],
            "pools": [{"pool": "rbd", "gateways": [
                {"target": TARGET, "tpg": [
                    img("zeta", serde_json::json!({"initiator": ini_a})),
                    img("alpha", serde_json::json!({"initiator": ini_a, "lun": "1"})),
                    img("beta", serde_json::json!({"initiator": ini_a})),
                    img("beta", serde_json::json!({"initiator": ini_b}))]},
                {"host": "gw1", "tpg": [img("mine", serde_json::json!({"portal": "p1", "vendor": "SUSE", "product": "RBD"}))]}]}]
        })
    );
    let g1 = Gateway::start(&dir.0, &config, "gw1", a1);
    let g2 = Gateway::start(&dir.0, &config, "gw2", a2);
    // The WWIDs `rbdgw plan` shows for the LUNs of the redundant target.
    let plan = Command::new(env!("CARGO_BIN_EXE_rbdgw"))
        .args(["plan", "--host", "gw2", "--config"])
        .arg(dir.0.join("config-gw2.json"))
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&plan.stdout).into_owned();
    let serial = |image: &str| {
        uuid::Uuid::new_v3(
            &uuid::Uuid::NAMESPACE_DNS,
            format!("{TARGET}{image}").as_bytes(),
        )
        .to_string()
    };
    for (image, lun) in [("beta", 0), ("alpha", 1), ("zeta", 2)] {
        let want = format!("  lun {lun}: memory");
        assert!(plan.contains(&want), "{want}\n{plan}");
        assert!(
            plan.contains(&format!("serial {}", serial(image))),
            "{image}\n{plan}"
        );
    }
    let wwid = |s: &str| -> Vec<u8> {
        let at = plan.find(&format!("serial {s}  wwid naa.")).unwrap() + s.len() + 18;
        let hex = &plan[at..at + 32];
        (0..16)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    };
    for (gw, addr) in [(&g1, a1), (&g2, a2)] {
        let mut s = Client::connect(addr);
        s.login(ini_a, Some(TARGET), "");
        assert_eq!(report_luns(&mut s), vec![0, 1, 2], "{}", gw.log_text());
        for (image, lun) in [("beta", 0u64), ("alpha", 1), ("zeta", 2)] {
            let o = s.scsi_ready(lun, &[0x12, 1, 0x80, 0x10, 0, 0], &[], 4096);
            assert_eq!(
                String::from_utf8_lossy(&o.data[4..]),
                serial(image),
                "VPD 0x80 of LUN {lun}"
            );
            let o = s.scsi_ready(lun, &[0x12, 1, 0x83, 0x10, 0, 0], &[], 4096);
            assert_eq!(naa(&o.data), wwid(&serial(image)), "VPD 0x83 of LUN {lun}");
        }
        // B is mapped to beta alone, and sees it under the same number.
        let mut s = Client::connect(addr);
        s.login(ini_b, Some(TARGET), "");
        assert_eq!(report_luns(&mut s), vec![0]);
        // An initiator named nowhere has no ACL: LIO refused it.
        let mut s = Client::connect(addr);
        let pdu = s.login_pdu(
            1,
            Some(3),
            &format!(
                "InitiatorName=iqn.2026-11.org.test:c|TargetName={TARGET}|SessionType=Normal|"
            ),
        );
        s.send(&pdu);
        let r = s.recv().expect("login response");
        assert_eq!((r.bhs.0[36], r.bhs.0[37]), (2, 2), "authorization failure");
        // SendTargets lists gw1's own target on gw1 alone; the redundant one on both, with
        // both portals.
        let mut d = Client::connect(addr);
        d.login(ini_a, None, "");
        let names: Vec<String> = d
            .send_targets()
            .0
            .into_iter()
            .filter(|(k, _)| k == "TargetName")
            .map(|(_, v)| v)
            .collect();
        let want: Vec<&str> = if addr == a1 {
            vec![TARGET, own]
        } else {
            vec![TARGET]
        };
        assert_eq!(names, want);
    }
    // gw1's own target, with its image as LUN 0 and the original serial rule.
    let mut s = Client::connect(a1);
    s.login("iqn.2026-11.org.test:anyone", Some(own), "");
    assert_eq!(report_luns(&mut s), vec![0]);
    let o = s.scsi_ready(0, &[0x12, 1, 0x80, 0x10, 0, 0], &[], 4096);
    let want = uuid::Uuid::new_v3(&uuid::Uuid::NAMESPACE_DNS, format!("{own}mine").as_bytes());
    assert_eq!(String::from_utf8_lossy(&o.data[4..]), want.to_string());
    // The INQUIRY identity LIO gave it (lrbd set vendor SUSE on SUSE; LIO's rbd product RBD),
    // for MPIO claims and multipath.conf sections that match on it.
    let o = s.scsi_ready(0, &[0x12, 0, 0, 0, 96, 0], &[], 96);
    assert_eq!(&o.data[8..32], b"SUSE    RBD             ");
}

/// `rbdgw drain`: the owner hands its LU over, the successor becomes active/optimized on
/// both gateways, the drained one is reported in standby everywhere and turns I/O away (NOT
/// READY, standby); the drain command returns once nothing is held there and says stopping
/// is harmless; `undrain` brings it back, and it takes its LU back (failback).
#[test]
fn drain_hands_the_lun_over_and_undrain_takes_it_back() {
    let dir = Scratch::new("drain");
    let port = free_port();
    let addrs: Vec<String> = (1..=2).map(|i| format!("127.0.0.{i}:{port}")).collect();
    let image = dir.0.join("drain.img");
    let config = serde_json::json!({
        "auth": [{"target": TARGET, "authentication": "none"}],
        "targets": [{"target": TARGET, "hosts": [
            {"host": "gw1", "portal": "p1"}, {"host": "gw2", "portal": "p2"}]}],
        "portals": [{"name": "p1", "addresses": [addrs[0]]}, {"name": "p2", "addresses": [addrs[1]]}],
        "pools": [{"pool": "rbd", "gateways": [{"target": TARGET, "tpg": [
            {"image": "drain", "backstore": "file", "path": image.display().to_string(), "size": "16M", "owner": "gw1"}]}]}]
    })
    .to_string();
    let sock = |i: usize| dir.0.join(format!("gw{i}.sock"));
    let gws: Vec<Gateway> = (0..2)
        .map(|i| {
            Gateway::start_with(
                &dir.0,
                &config,
                &format!("gw{}", i + 1),
                addrs[i].parse().unwrap(),
                &["--control", sock(i + 1).to_str().unwrap()],
            )
        })
        .collect();
    let mut s: Vec<Client> = (0..2)
        .map(|i| {
            let mut c = Client::connect(addrs[i].parse().unwrap());
            c.login("iqn.2026-11.org.rbdgw:drain", Some(TARGET), "");
            c
        })
        .collect();
    let all_agree = |s: &mut [Client], want: &[(u16, u8)]| s.iter_mut().all(|c| rtpg(c) == want);
    wait_for("gw1 to be the owner", || {
        all_agree(&mut s, &[(1, 0), (2, 1)])
    });
    assert_eq!(s[0].scsi_ready(0, &write10(1), &[1u8; 512], 0).status, 0);

    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_rbdgw"))
        .args([
            "drain",
            "--control",
            sock(1).to_str().unwrap(),
            "--wait",
            "20",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("stopping it is harmless now"), "{said}");
    println!("drain: {:.1?} ({})", t0.elapsed(), said.trim());
    // Both gateways agree: gw2 optimized, gw1 standby.
    wait_for("gw2 optimized and gw1 standby everywhere", || {
        s.iter_mut().all(|c| {
            while pending_ua(c).is_some() {}
            rtpg(c) == [(1, 2), (2, 0)]
        })
    });
    // I/O through the drained gateway is turned away; through gw2 it is served at once.
    let o = s[0].scsi(0, &write10(2), &[2u8; 512], 0);
    assert_eq!(o.sense, Some((0x02, 0x04, 0x0b)), "standby: {o:?}");
    let o = s[0].scsi(0, &[0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0], &[], 512);
    assert_eq!(o.sense, Some((0x02, 0x04, 0x0b)), "standby: {o:?}");
    assert_eq!(s[1].scsi_ready(0, &write10(2), &[2u8; 512], 0).status, 0);
    let o = s[1].scsi_ready(0, &[0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0], &[], 512);
    assert_eq!(o.data, vec![1u8; 512], "gw1's write is there");
    assert!(gws[0].log_text().contains("drained: handing the LU over"));

    let out = Command::new(env!("CARGO_BIN_EXE_rbdgw"))
        .args(["undrain", "--control", sock(1).to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // gw1 serves again (non-optimized at first), is used, and takes its LU back.
    let back = wait_for("gw1 the owner again, on both gateways", || {
        let _ = s[0].scsi(0, &[0; 6], &[], 0);
        s.iter_mut().all(|c| {
            while pending_ua(c).is_some() {}
            rtpg(c) == [(1, 0), (2, 1)]
        })
    });
    println!("undrain: gw1 the owner again after {back:.1?}");
    assert_eq!(s[0].scsi_ready(0, &write10(3), &[3u8; 512], 0).status, 0);
    drop(gws);
}
