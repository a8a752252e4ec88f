//! Running it like a service: the Prometheus endpoint on a live gateway (every family a
//! scrape should show, values that follow the I/O done, `promtool check metrics` clean) and
//! what a hostile scraper cannot do to it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::client::Client;
use common::{free_port, Gateway, Scratch};

const TARGET: &str = "iqn.2026-11.org.rbdgw:ops";

/// GET `path` on `addr`; the status line and the body.
fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("a response");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x2a;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = write10(lba, blocks);
    c[0] = 0x28;
    c
}

/// The value of the sample `name{labels}` (labels as the exposition writes them, sorted).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_follow_the_io_and_pass_promtool() {
    common::require("promtool", "prometheus");
    let dir = Scratch::new("operations-metrics");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = serde_json::json!({
        "targets": [{"target": TARGET, "hosts": [{"host": "gw1", "portal": "p1"}]}],
        "portals": [{"name": "p1", "addresses": [addr.to_string()]}],
        "pools": [{"pool": "rbd", "gateways": [{"target": TARGET, "tpg": [
            {"image": "disk", "backstore": "memory", "size": "8M", "lun": 0}]}]}]
    });
    let gw = Gateway::start_with(
        &dir.0,
        &config.to_string(),
        "gw1",
        addr,
        &["--metrics", &metrics.to_string()],
    );
    let mut c = Client::connect(addr);
    c.login("iqn.2026-11.org.rbdgw:ops-init", Some(TARGET), "");
    // 3 writes of 8 KiB, 2 reads of 4 KiB (after the power-on unit attention).
    let _ = c.scsi(0, &[0, 0, 0, 0, 0, 0], &[], 0);
    for i in 0..3 {
        let o = c.scsi(0, &write10(i * 16, 16), &[0x5a; 8192], 0);
        assert_eq!(o.status, 0, "{o:?}");
    }
    for i in 0..2 {
        let o = c.scsi(0, &read10(i * 16, 8), &[], 4096);
        assert_eq!(o.status, 0, "{o:?}");
    }
    // A login to a target that is not there: refused, counted.
    let mut bad = Client::connect(addr);
    let pdu = bad.login_pdu(
        1,
        Some(3),
        "InitiatorName=iqn.2026-11.org.rbdgw:ops-init|TargetName=iqn.2026-11.org.rbdgw:nope|SessionType=Normal|",
    );
    bad.send(&pdu);
    let r = bad.recv().expect("a login response");
    assert_eq!((r.bhs.0[36], r.bhs.0[37]), (2, 3), "not found");

    let (status, text) = http_get(metrics, "/metrics");
    assert!(status.contains(" 200 "), "{status}");
    // (An excerpt for whoever reads the test's output.)
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains("_bucket") && !l.contains("op=\"read\""))
    {
        println!("{l}");
    }
    let lun = r#"image="disk",lun="0",op="#;
    let series = |family: &str, op: &str| format!(r#"{family}{{{lun}"{op}",target="{TARGET}"}}"#);
    for (family, op, want) in [
        ("rbdgw_lun_commands_total", "write", 3.0),
        ("rbdgw_lun_bytes_total", "write", 24576.0),
        ("rbdgw_lun_commands_total", "read", 2.0),
        ("rbdgw_lun_bytes_total", "read", 8192.0),
        ("rbdgw_lun_command_duration_seconds_count", "write", 3.0),
    ] {
        assert_eq!(
            sample(&text, &series(family, op)),
            Some(want),
            "{family} {op}\n{text}"
        );
    }
    assert_eq!(
        sample(&text, r#"rbdgw_sessions{type="normal"}"#),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "rbdgw_connections").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"rbdgw_logins_total{reason="",result="accepted"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"rbdgw_logins_total{reason="not_found",result="refused"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert!(text.contains("rbdgw_build_info{version=\""), "{text}");
    for family in [
        "rbdgw_lock_handovers_total",
        "rbdgw_fencings_total",
        "rbdgw_alua_owner_changes_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} counter")),
            "{family}\n{text}"
        );
    }

    // Prometheus' own linter on the live scrape.
    let mut lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(text.as_bytes());
    assert!(lint.0.success(), "promtool: {}\n{text}", lint.1);
    lint.1.clear();

    // Other paths and methods; a scraper that never finishes its request is dropped, and the
    // endpoint still answers the next one.
    assert!(http_get(metrics, "/nope").0.contains(" 404 "));
    let mut slow = TcpStream::connect(metrics).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 256];
    let _ = slow.read(&mut buf);
    assert!(
        t0.elapsed() < Duration::from_secs(12),
        "a slow client is dropped"
    );
    assert!(http_get(metrics, "/metrics").0.contains(" 200 "));
    drop(gw);
}

/// `Command::output` with bytes on stdin.
trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> (std::process::ExitStatus, String);
}

impl OutputWithStdin for std::process::Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> (std::process::ExitStatus, String) {
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run the command");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status,
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

/// `rbdgw status` from anywhere: two gateways on one file image publish their state beside
/// it; status shows both up with their sessions (initiator, ISID, portal, digests), the LUN's
/// ALUA states as each gateway reports them, the write lock's holder, the reservation and I/O
/// rates; a killed gateway shows as down with how long ago it was seen, and the exit status
/// says so.
#[test]
fn status_shows_every_gateway_and_a_dead_one_as_down() {
    let dir = Scratch::new("operations-status");
    let port = free_port();
    let addrs: Vec<String> = (1..=2).map(|i| format!("127.0.0.{i}:{port}")).collect();
    let image = dir.0.join("st.img");
    let target = "iqn.2026-11.org.rbdgw:status";
    let config = serde_json::json!({
        "auth": [{"target": target, "authentication": "none"}],
        "targets": [{"target": target, "hosts": [
            {"host": "gw1", "portal": "p1"}, {"host": "gw2", "portal": "p2"}]}],
        "portals": [{"name": "p1", "addresses": [addrs[0]]}, {"name": "p2", "addresses": [addrs[1]]}],
        "pools": [{"pool": "rbd", "gateways": [{"target": target, "tpg": [
            {"image": "st", "backstore": "file", "path": image.display().to_string(), "size": "16M", "owner": "gw1"}]}]}]
    })
    .to_string();
    let cfg = dir.0.join("shared.json");
    std::fs::write(&cfg, &config).unwrap();
    let mut gws: Vec<Gateway> = (0..2)
        .map(|i| {
            Gateway::start(
                &dir.0,
                &config,
                &format!("gw{}", i + 1),
                addrs[i].parse().unwrap(),
            )
        })
        .collect();
    let mut c = Client::connect(addrs[0].parse().unwrap());
    c.login(
        "iqn.2026-11.org.rbdgw:status-init",
        Some(target),
        "HeaderDigest=CRC32C|",
    );
    let _ = c.scsi(0, &[0, 0, 0, 0, 0, 0], &[], 0);
    // A registration and a reservation (Write Exclusive - Registrants Only), then writes.
    let (cdb, p) = common::reservations::prout(0, 0, 0, 0xabc);
    assert_eq!(c.scsi_ready(0, &cdb, &p, 0).status, 0);
    let (cdb, p) = common::reservations::prout(1, 5, 0xabc, 0);
    assert_eq!(c.scsi_ready(0, &cdb, &p, 0).status, 0);
    let status = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rbdgw"))
            .args(["status", "--config", cfg.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        for i in 0..20 {
            assert_eq!(
                c.scsi_ready(0, &write10(i * 8, 8), &[7u8; 4096], 0).status,
                0
            );
        }
        let (code, text) = status(&[]);
        if code == Some(0) && text.contains("writes/s") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status never showed both up and the I/O:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("{text}");
    assert!(text.contains("gateway gw1: up"), "{text}");
    assert!(text.contains("gateway gw2: up"), "{text}");
    // (The test client's ISIDs: 80 1234 56 and a counter.)
    let session = "session iqn.2026-11.org.rbdgw:status-init isid 80123456";
    let via = format!(" → {target} via {} from 127.0.0.1:", addrs[0]);
    assert!(
        text.lines()
            .any(|l| l.contains(session) && l.contains(&via)),
        "{text}"
    );
    assert!(text.contains("digests header CRC32C data none"), "{text}");
    assert!(
        text.contains(&format!("LUN 0 of {target}: file {}", image.display())),
        "{text}"
    );
    assert!(text.contains("write lock: gw1"), "{text}");
    for who in ["gw1", "gw2"] {
        assert!(
            text.contains(&format!(
                "ALUA as {who} reports it: tpg 1 (gw1) active/optimized, tpg 2 (gw2) active/non-optimized"
            )),
            "{text}"
        );
    }
    assert!(
        text.contains("reservation: Write Exclusive - Registrants Only, held by iqn.2026-11.org.rbdgw:status-init; 1 keys registered"),
        "{text}"
    );
    let (_, json) = status(&["--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["gw1"]["up"], true, "{json}");
    assert_eq!(
        v["gw1"]["published"]["luns"][0]["write_lock"], true,
        "{json}"
    );

    // gw2 dies: down, with how long ago it was last seen; status exits 1.
    drop(gws.remove(1));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        let (code, text) = status(&[]);
        if code == Some(1) && text.contains("gateway gw2: DOWN, last seen") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gw2 never shown down:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(text.contains("gateway gw1: up"), "{text}");
    drop(gws);
}
