//! The command line's contract: clear errors and a non-zero exit for a bad config or a portal
//! that cannot be bound; `plan` on the seed's config; SIGTERM asks initiators to log out
//! (Async Message) and stops cleanly; idle connections are pinged, silent ones dropped; SIGHUP
//! reloads the config live; the open-file limit is raised to the hard one at start.

mod common;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::client::Client;
use common::{free_port, Gateway, Scratch};
use iscsi::pdu::{Bhs, Opcode, Pdu};

fn rbdgw(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rbdgw"))
        .args(args)
        .output()
        .expect("run rbdgw")
}

#[test]
fn plan_shows_the_seed_as_lrbd_applied_it() {
    let seed = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/seed-config.json"
    );
    let out = rbdgw(&["plan", "--config", seed, "--host", "testscsi.novalocal"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("target iqn.1994-05.com.redhat:37d4cea93db4"),
        "{text}"
    );
    assert!(
        text.contains(
            "tpg 1: host testscsi.novalocal, portal portal1 [192.168.0.27:3260]  (enabled here)"
        ),
        "{text}"
    );
    assert!(
        text.contains("tpg 2: host scsifirst, portal portal2 [192.168.0.32:3260]  (disabled here)"),
        "{text}"
    );
    assert!(text.contains("lun 0: rbd rbd/wuxingyi"), "{text}");
    assert!(text.contains("wwid naa.6001405"), "{text}");
}

/// `config check` validates without storing (exit 0 / 1, the error naming the key);
/// `config diff` shows what a new file changes on each host of the stored one (exit 0 when
/// nothing, 1 when something, 2 when the stored one cannot be read: diff(1)'s statuses).
#[test]
fn config_check_and_diff_speak_to_scripts() {
    let dir = Scratch::new("lifecycle-config-check");
    let seed = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/seed-config.json"
    );
    let out = rbdgw(&["config", "check", seed]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("valid: 1 targets, 1 LUNs, hosts: testscsi.novalocal, scsifirst"),
        "{out:?}"
    );
    let bad = dir.0.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"targets": [{"target": "iqn.2026-11.org.x:t", "hots": []}]}"#,
    )
    .unwrap();
    let out = rbdgw(&["config", "check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("targets[0]"),
        "{out:?}"
    );

    let changed = dir.0.join("changed.json");
    std::fs::write(
        &changed,
        std::fs::read_to_string(seed)
            .unwrap()
            .replace("wuxingyi", "other"),
    )
    .unwrap();
    let out = rbdgw(&[
        "config",
        "diff",
        "--at",
        seed,
        "-f",
        changed.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for host in ["testscsi.novalocal", "scsifirst"] {
        assert!(text.contains(&format!("+++ {host} (new)")), "{text}");
    }
    assert!(text.contains("-  lun 0: rbd rbd/wuxingyi"), "{text}");
    assert!(text.contains("+  lun 0: rbd rbd/other"), "{text}");
    let out = rbdgw(&["config", "diff", "--at", seed, "-f", seed]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("scsifirst: unchanged"));
    let missing = dir.0.join("missing.json");
    let out = rbdgw(&[
        "config",
        "diff",
        "--at",
        missing.to_str().unwrap(),
        "-f",
        seed,
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn bad_config_and_busy_portal_fail_before_serving() {
    let dir = Scratch::new("lifecycle-errors");
    let cfg = dir.0.join("bad.json");
    std::fs::write(
        &cfg,
        r#"{"targets": [{"target": "iqn.2026-11.org.x:t", "host": "gw1", "colour": "red"}]}"#,
    )
    .unwrap();
    let out = rbdgw(&["serve", "--config", cfg.to_str().unwrap(), "--host", "gw1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.json") && err.contains("targets[0]") && err.contains("colour"),
        "{err}"
    );
    let out = rbdgw(&[
        "plan",
        "--config",
        dir.0.join("missing.json").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));

    // A portal already in use.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let config = serde_json::json!({
        "targets": [{"target": "iqn.2026-11.org.rbdgw:busy", "hosts": [{"host": "gw1", "portal": "p1"}]}],
        "portals": [{"name": "p1", "addresses": [addr.to_string()]}],
        "pools": [{"pool": "rbd", "gateways": [{"target": "iqn.2026-11.org.rbdgw:busy", "tpg": [
            {"image": "m", "backstore": "memory", "size": "1M"}]}]}]
    });
    std::fs::write(&cfg, config.to_string()).unwrap();
    let out = rbdgw(&["serve", "--config", cfg.to_str().unwrap(), "--host", "gw1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on portal {addr}")),
        "{err}"
    );
}

#[test]
fn sigterm_asks_initiators_to_log_out() {
    let dir = Scratch::new("lifecycle-term");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = serde_json::json!({
        "targets": [{"target": "iqn.2026-11.org.rbdgw:term", "hosts": [{"host": "gw1", "portal": "p1"}]}],
        "portals": [{"name": "p1", "addresses": [addr.to_string()]}],
        "pools": [{"pool": "rbd", "gateways": [{"target": "iqn.2026-11.org.rbdgw:term", "tpg": [
            {"image": "m", "backstore": "memory", "size": "1M"}]}]}]
    });
    let gw = Gateway::start(&dir.0, &config.to_string(), "gw1", addr);
    let mut c = Client::connect(addr);
    c.login(
        "iqn.2026-11.org.rbdgw:term-init",
        Some("iqn.2026-11.org.rbdgw:term"),
        "",
    );
    // SAFETY: kill(2) on our own child's PID.
    unsafe { kill(gw.child.id() as i32, 15) };
    let msg = c
        .recv_timeout(Duration::from_secs(5))
        .expect("an Async Message");
    assert_eq!(msg.bhs.opcode(), Some(Opcode::AsyncMessage));
    assert_eq!(
        msg.bhs.0[36], 1,
        "AsyncEvent 1: the target requests a logout"
    );
    let mut bhs = Bhs::new(Opcode::LogoutRequest);
    bhs.0[0] |= 0x40;
    bhs.set_flags(0x80);
    bhs.set_itt(77)
        .set_cmd_sn(c.cmd_sn)
        .set_exp_stat_sn(c.exp_stat_sn);
    c.send(&Pdu::with_data(bhs, Bytes::new()));
    let r = c.recv().expect("logout response");
    assert_eq!(r.bhs.opcode(), Some(Opcode::LogoutResponse));
    assert_eq!(r.bhs.0[2], 0);
    let status = gw.terminate();
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// The soft and hard open-file limits of a process (`Max open files` of /proc/PID/limits).
fn open_file_limits(pid: u32) -> (String, String) {
    let l = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let w: Vec<String> = l
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    (w[3].clone(), w[4].clone())
}

/// `rbdgw serve` of one memory LUN of `target` under sh's `ulimit LIMIT`, once it listens:
/// the child, its portal and its log.
fn serve_limited(
    dir: &Scratch,
    target: &str,
    limit: &str,
) -> (
    std::process::Child,
    std::net::SocketAddr,
    std::path::PathBuf,
) {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = serde_json::json!({
        "targets": [{"target": target, "hosts": [{"host": "gw1", "portal": "p1"}]}],
        "portals": [{"name": "p1", "addresses": [addr.to_string()]}],
        "pools": [{"pool": "rbd", "gateways": [{"target": target, "tpg": [
            {"image": "m", "backstore": "memory", "size": "1M"}]}]}]
    });
    let cfg = dir.0.join("config.json");
    std::fs::write(&cfg, config.to_string()).unwrap();
    let log = dir.0.join("gw1.log");
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit {limit} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_rbdgw"))
        .args(["serve", "--host", "gw1", "--config"])
        .arg(&cfg)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, addr, log)
}

/// A gateway started with the default 1,024-like soft limit (here 256) runs with the hard
/// limit and says so: with the soft one it would run out of descriptors at a few dozen RBD
/// LUNs.
#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit() {
    let dir = Scratch::new("lifecycle-nofile");
    let (mut child, _, log) = serve_limited(&dir, "iqn.2026-11.org.rbdgw:nofile", "-Sn 256");
    let (soft, hard) = open_file_limits(child.id());
    let text = std::fs::read_to_string(&log).unwrap();
    // SAFETY: kill(2) on our own child's PID.
    unsafe { kill(child.id() as i32, 9) };
    let _ = child.wait();
    assert_eq!(soft, hard, "soft limit raised to the hard one");
    assert!(
        text.contains(&format!("open files: limit raised from 256 to {hard}")),
        "{text}"
    );
}

/// Out of descriptors (a hard limit of 64 and more connections than that), the gateway says
/// so, with what to do, and serves again once connections go.
#[test]
fn running_out_of_descriptors_is_logged_and_survived() {
    let dir = Scratch::new("lifecycle-emfile");
    let target = "iqn.2026-11.org.rbdgw:emfile";
    let (mut child, addr, log) = serve_limited(&dir, target, "-n 64");
    // More connections than descriptors (the kernel's backlog takes the rest), each from an
    // address of its own (the admission control refuses many from one before they log in).
    let mut held: Vec<std::net::TcpStream> = (0..80u8)
        .filter_map(|i| common::client::tcp_from(addr, [127, 0, 1, 1 + i].into()).ok())
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let said = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("out of file descriptors") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    held.clear();
    // Served again: a login on a fresh connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let logged_in = loop {
        let ok = std::panic::catch_unwind(|| {
            let mut c = Client::connect(addr);
            c.login("iqn.2026-11.org.rbdgw:emfile-init", Some(target), "");
        })
        .is_ok();
        if ok || std::time::Instant::now() > deadline {
            break ok;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // SAFETY: kill(2) on our own child's PID.
    unsafe { kill(child.id() as i32, 9) };
    let _ = child.wait();
    assert!(
        said.contains("out of file descriptors; raise the limit (systemd: LimitNOFILE=)"),
        "{said}"
    );
    assert!(logged_in, "{}", std::fs::read_to_string(&log).unwrap());
}

/// The target pings an idle connection (NOP-In asking for an answer, RFC 7143 §11.19) after the
/// initiator's `attrib_nopin_timeout`, keeps a connection that answers and drops one that
/// stays silent past `attrib_nopin_response_timeout`.
#[test]
fn idle_connections_are_pinged_and_silent_ones_dropped() {
    let dir = Scratch::new("lifecycle-nopin");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let target = "iqn.2026-11.org.rbdgw:nopin";
    let (quiet, chatty) = (
        "iqn.2026-11.org.rbdgw:quiet",
        "iqn.2026-11.org.rbdgw:chatty",
    );
    let config = serde_json::json!({
        "auth": [{"target": target, "authentication": "identified", "identified": [
            {"initiator": quiet, "attrib_nopin_timeout": 1, "attrib_nopin_response_timeout": 2},
            {"initiator": chatty, "attrib_nopin_timeout": 1, "attrib_nopin_response_timeout": 2}]}],
        "targets": [{"target": target, "hosts": [{"host": "gw1", "portal": "p1"}]}],
        "portals": [{"name": "p1", "addresses": [addr.to_string()]}],
        "pools": [{"pool": "rbd", "gateways": [{"target": target, "tpg": [
            {"image": "m", "backstore": "memory", "size": "1M", "initiator": quiet},
            {"image": "m", "backstore": "memory", "size": "1M", "initiator": chatty}]}]}]
    });
    let gw = Gateway::start(&dir.0, &config.to_string(), "gw1", addr);
    let mut silent = Client::connect(addr);
    silent.login(quiet, Some(target), "");
    let mut answers = Client::connect(addr);
    answers.login(chatty, Some(target), "");

    let started = std::time::Instant::now();
    let ping = silent
        .recv_timeout(Duration::from_secs(5))
        .expect("a NOP-In on the idle connection");
    assert_eq!(ping.bhs.opcode(), Some(Opcode::NopIn));
    assert_ne!(
        ping.bhs.ttt(),
        0xffff_ffff,
        "a ping that asks for an answer"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "pinged after ~1 s"
    );

    // Answer every ping on one connection for a while; the other stays silent.
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        if let Some(p) = answers.recv_timeout(Duration::from_millis(500)) {
            if p.bhs.opcode() == Some(Opcode::NopIn) && p.bhs.ttt() != 0xffff_ffff {
                let mut bhs = Bhs::new(Opcode::NopOut);
                bhs.0[0] |= 0x40;
                bhs.set_flags(0x80);
                bhs.set_itt(0xffff_ffff)
                    .set_ttt(p.bhs.ttt())
                    .set_lun_raw(p.bhs.lun_raw())
                    .set_cmd_sn(answers.cmd_sn)
                    .set_exp_stat_sn(answers.exp_stat_sn);
                answers.send(&Pdu::new(bhs));
            }
        }
    }
    assert!(
        silent.closed(),
        "a connection that never answers is dropped"
    );
    assert!(answers.ping(), "a connection that answers stays");
    assert!(
        gw.log_text().contains("no answer to NOP-In within 2s"),
        "the drop is logged"
    );
}

/// SIGHUP reads the config file again and applies it live: a LUN and a portal added (the new
/// portal is listened on at once, the running session keeps going and learns of the LUN),
/// then the portal removed again (no longer listened on); a broken file is refused and the
/// running config kept.
#[test]
fn sighup_reloads_the_config_with_new_portals_and_luns() {
    let dir = Scratch::new("lifecycle-hup");
    let port = free_port();
    let a1: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let a2: std::net::SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
    let target = "iqn.2026-11.org.rbdgw:hup";
    let config = |addrs: &[std::net::SocketAddr], luns: usize| {
        let tpg: Vec<serde_json::Value> = (0..luns)
            .map(|i| serde_json::json!({"image": format!("m{i}"), "backstore": "memory", "size": "1M"}))
            .collect();
        serde_json::json!({
            "targets": [{"target": target, "hosts": [{"host": "gw1", "portal": "p1"}]}],
            "portals": [{"name": "p1", "addresses": addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>()}],
            "pools": [{"pool": "rbd", "gateways": [{"target": target, "tpg": tpg}]}]
        })
        .to_string()
    };
    let gw = Gateway::start(&dir.0, &config(&[a1], 1), "gw1", a1);
    let path = dir.0.join("config-gw1.json");
    let mut s = Client::connect(a1);
    s.login("iqn.2026-11.org.rbdgw:hup-init", Some(target), "");
    s.scsi_ready(0, &[0u8; 6], &[], 0);
    let reachable = |a: std::net::SocketAddr| {
        std::net::TcpStream::connect_timeout(&a, Duration::from_millis(300)).is_ok()
    };
    assert!(!reachable(a2));

    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}:\n{}",
                gw.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    std::fs::write(&path, config(&[a1, a2], 2)).unwrap();
    common::signal(&gw.child, 1);
    wait_for("listening on the added portal", &|| reachable(a2));
    let mut s2 = Client::connect(a2);
    let t = s2.login("iqn.2026-11.org.rbdgw:hup-init2", Some(target), "");
    assert_eq!(t.get("TargetPortalGroupTag"), Some("1"));
    // The running session: REPORTED LUNS DATA HAS CHANGED, then both LUNs.
    let o = s.scsi(0, &[0u8; 6], &[], 0);
    assert_eq!(o.sense, Some((0x06, 0x3f, 0x0e)), "{o:?}");
    let r = s.scsi_ready(0, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0], &[], 64);
    assert_eq!(
        u32::from_be_bytes(r.data[..4].try_into().unwrap()),
        16,
        "two LUNs"
    );

    // A broken file is refused; the running config stays.
    std::fs::write(&path, "{ not json").unwrap();
    common::signal(&gw.child, 1);
    wait_for("the broken config refused", &|| {
        gw.log_text()
            .contains("the new config is invalid, keeping the running one")
    });
    assert!(reachable(a2) && s.ping());

    // The portal goes away again: no longer listened on; the session made through it goes on.
    std::fs::write(&path, config(&[a1], 2)).unwrap();
    common::signal(&gw.child, 1);
    wait_for("not listening on the removed portal", &|| !reachable(a2));
    assert!(
        s2.ping(),
        "a connection made through a removed portal goes on"
    );
    assert!(s.ping());

    // An image whose backstore name sorts first would take LUN 0 from m0 (lrbd's numbering):
    // refused while m0 is served as LUN 0.
    let mut doc: serde_json::Value = serde_json::from_str(&config(&[a1], 2)).unwrap();
    doc["pools"][0]["gateways"][0]["tpg"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"image": "a", "backstore": "memory", "size": "1M"}));
    std::fs::write(&path, doc.to_string()).unwrap();
    common::signal(&gw.child, 1);
    wait_for("the renumbering refused", &|| {
        gw.log_text().contains(
            "config not applied: it moves m0 of iqn.2026-11.org.rbdgw:hup from LUN 0 to LUN 1",
        )
    });
    let r = s.scsi_ready(0, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0], &[], 64);
    assert_eq!(
        u32::from_be_bytes(r.data[..4].try_into().unwrap()),
        16,
        "still two LUNs"
    );
    // Given a number of its own, it is added.
    doc["pools"][0]["gateways"][0]["tpg"][2]["lun"] = serde_json::json!("2");
    std::fs::write(&path, doc.to_string()).unwrap();
    common::signal(&gw.child, 1);
    wait_for("the numbered image added", &|| {
        gw.log_text()
            .contains("LUN ready target=iqn.2026-11.org.rbdgw:hup lun=2")
    });
    let o = s.scsi(0, &[0u8; 6], &[], 0);
    assert_eq!(o.sense, Some((0x06, 0x3f, 0x0e)), "{o:?}");
    let r = s.scsi_ready(0, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0], &[], 64);
    assert_eq!(
        u32::from_be_bytes(r.data[..4].try_into().unwrap()),
        24,
        "three LUNs"
    );
}

/// A LUN whose backstore cannot be opened does not hold the others back (issue 9): the
/// gateway serves the rest at once, lists the broken LUN but answers NOT READY (LOGICAL UNIT
/// NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE: SPC-4 §5.16.2.5) with this gateway's
/// port group unavailable in REPORT TARGET PORT GROUPS, so multipath goes to another gateway;
/// it keeps retrying, says so in the log, and serves the LUN once its backstore appears.
#[test]
fn a_lun_that_cannot_open_is_not_ready_and_serves_once_it_can() {
    let dir = Scratch::new("lifecycle-unopened");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let target = "iqn.2026-11.org.rbdgw:unopened";
    // Without a size, a missing file is not created: the LUN waits for it.
    let image = dir.0.join("disk.img");
    let config = serde_json::json!({
        "targets": [{"target": target, "hosts": [{"host": "gw1", "portal": "p1"}]}],
        "portals": [{"name": "p1", "addresses": [addr.to_string()]}],
        "pools": [{"pool": "rbd", "gateways": [{"target": target, "tpg": [
            {"image": "m", "lun": 0, "backstore": "memory", "size": "1M"},
            {"image": "disk", "lun": 1, "backstore": "file", "path": image.display().to_string()}]}]}]
    });
    let started = std::time::Instant::now();
    let gw = Gateway::start(&dir.0, &config.to_string(), "gw1", addr);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the broken LUN held the start back"
    );
    let mut s = Client::connect(addr);
    s.login("iqn.2026-11.org.rbdgw:unopened-init", Some(target), "");
    let tur = [0u8; 6];
    assert_eq!(s.scsi_ready(0, &tur, &[], 0).status, 0, "LUN 0 serves");
    let r = s.scsi_ready(0, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0], &[], 64);
    assert_eq!(
        u32::from_be_bytes(r.data[..4].try_into().unwrap()),
        16,
        "both LUNs listed"
    );
    let o = s.scsi_ready(1, &tur, &[], 0);
    assert_eq!(o.sense, Some((0x02, 0x04, 0x0c)), "{o:?}");
    let inquiry = s.scsi_ready(1, &[0x12, 0, 0, 0, 96, 0], &[], 96);
    assert_eq!(inquiry.status, 0, "INQUIRY answered: {inquiry:?}");
    // REPORT TARGET PORT GROUPS: this gateway's group (tag 1) unavailable (0x3).
    let rtpg = s.scsi_ready(1, &[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[], 256);
    assert_eq!(rtpg.status, 0, "{rtpg:?}");
    let mut groups = Vec::new();
    let mut at = 4;
    while at + 8 <= rtpg.data.len() {
        let d = &rtpg.data[at..];
        groups.push((u16::from_be_bytes([d[2], d[3]]), d[0] & 0x0f));
        at += 8 + 4 * d[7] as usize;
    }
    assert!(groups.contains(&(1, 0x3)), "{groups:?}");
    let wait_for = |what: &str, f: &mut dyn FnMut() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while !f() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}:\n{}",
                gw.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_for("the failure logged", &mut || {
        gw.log_text().contains("LUN not ready")
    });

    std::fs::File::create(&image)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    wait_for("LUN 1 serving once its file exists", &mut || {
        s.scsi_ready(1, &tur, &[], 0).status == 0
    });
    let block = vec![0x5au8; 512];
    let w = s.scsi_ready(1, &[0x2a, 0, 0, 0, 0, 7, 0, 0, 1, 0], &block, 0);
    assert_eq!(w.status, 0, "{w:?}");
    let r = s.scsi_ready(1, &[0x28, 0, 0, 0, 0, 7, 0, 0, 1, 0], &[], 512);
    assert_eq!(r.data, block);
    assert!(gw.log_text().contains("LUN serving: its backstore opened"));
}

/// `Type=notify`: READY=1 reaches the service manager's socket once the portal accepts
/// connections (not before), and STOPPING=1 on SIGTERM (sd_notify(3)'s protocol, with a
/// socket of the test's standing in for systemd's).
#[test]
fn readiness_is_told_to_systemd_once_the_portals_listen() {
    use std::os::unix::net::UnixDatagram;
    let dir = Scratch::new("lifecycle-notify");
    let sock_path = dir.0.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = serde_json::json!({
        "targets": [{"target": "iqn.2026-11.org.rbdgw:notify", "hosts": [{"host": "gw1", "portal": "p1"}]}],
        "portals": [{"name": "p1", "addresses": [addr.to_string()]}],
        "pools": [{"pool": "rbd", "gateways": [{"target": "iqn.2026-11.org.rbdgw:notify", "tpg": [
            {"image": "m", "backstore": "memory", "size": "1M"}]}]}]
    });
    let cfg = dir.0.join("config.json");
    std::fs::write(&cfg, config.to_string()).unwrap();
    let log = dir.0.join("gw1.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rbdgw"))
        .args(["serve", "--config", cfg.to_str().unwrap(), "--host", "gw1"])
        .env("NOTIFY_SOCKET", &sock_path)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("READY=1 within 15 s");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    // Told ready: the portal must accept now, at once.
    let accepted = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500));
    let asked_to_stop = std::time::Instant::now();
    common::signal(&child, 15);
    let n = sock.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
    let stopping = String::from_utf8_lossy(&buf[..n]).to_string();
    let status = child.wait().unwrap();
    // The connection above never logged in: nothing to log out, nothing to wait for (it
    // used to hold the stop for the whole 5 s logout grace).
    let stopped_in = asked_to_stop.elapsed();
    assert!(
        stopped_in < Duration::from_secs(3),
        "stopped in {stopped_in:?}"
    );
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    assert!(
        msg.contains("STATUS=serving gw1 on 1 portal addresses"),
        "{msg}"
    );
    assert!(
        accepted.is_ok(),
        "told ready before listening: {accepted:?}"
    );
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    assert!(
        status.success(),
        "{status:?}\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
}

/// The shipped systemd unit is one systemd accepts (`systemd-analyze verify`, on an instance
/// of the template whose ExecStart is this build's binary).
#[test]
fn the_shipped_unit_verifies() {
    common::require("systemd-analyze", "systemd");
    let dir = Scratch::new("lifecycle-unit");
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../../dist/rbdgw@.service");
    let text = std::fs::read_to_string(shipped).unwrap();
    assert!(text.contains("LimitNOFILE=1048576"), "{text}");
    assert!(
        text.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "{text}"
    );
    let unit = dir.0.join("rbdgw@gw1.service");
    std::fs::write(
        &unit,
        text.replace("/usr/bin/rbdgw", env!("CARGO_BIN_EXE_rbdgw")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("run systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    // Complaints about the machine's own units are not ours.
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("rbdgw")).collect();
    assert!(out.status.success() && ours.is_empty(), "{err}");
}
