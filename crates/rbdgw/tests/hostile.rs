//! Hostile clients, tried as the issue did (loopback only, bounded in count and time): each
//! attack is refused or bounded, and beside each the gateway's RSS and the time a legitimate
//! initiator (from another address) takes to log in and read are measured and printed.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::client::{tcp_from, Client};
use common::{free_port, Gateway, Scratch};
use iscsi::pdu::{Bhs, Opcode, Pdu};

const TARGET: &str = "iqn.2026-11.org.rbdgw:hostile";
const LEGIT: &str = "iqn.2026-11.org.rbdgw:legit";

fn lo(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

fn config(addr: SocketAddr, target_extra: serde_json::Value) -> String {
    let mut target =
        serde_json::json!({"target": TARGET, "hosts": [{"host": "gw1", "portal": "p1"}]});
    for (k, v) in target_extra.as_object().unwrap() {
        target[k] = v.clone();
    }
    serde_json::json!({
        "targets": [target],
        "portals": [{"name": "p1", "addresses": [addr.to_string()]}],
        "pools": [{"pool": "rbd", "gateways": [{"target": TARGET, "tpg": [
            {"image": "mem", "backstore": "memory", "size": "64M"}]}]}]
    })
    .to_string()
}

fn start(name: &str, target_extra: serde_json::Value, args: &[&str]) -> (Scratch, Gateway) {
    let dir = Scratch::new(name);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = Gateway::start_with(&dir.0, &config(addr, target_extra), "gw1", addr, args);
    (dir, gw)
}

/// A legitimate initiator from 127.0.0.2: discovery, login, a 4 KiB READ; how long it took.
fn legitimate(gw: &Gateway) -> Duration {
    let t = Instant::now();
    let mut d = Client::connect_from(gw.addr, lo(2));
    d.login(LEGIT, None, "");
    assert!(d.send_targets().get("TargetName").is_some());
    let mut c = Client::connect_from(gw.addr, lo(2));
    c.login(LEGIT, Some(TARGET), "");
    let o = c.scsi_ready(0, &[0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0], &[], 4096);
    assert_eq!((o.status, o.data.len()), (0, 4096), "the legitimate READ");
    t.elapsed()
}

fn report(attack: &str, before: u64, during: u64, after: u64, legit: Duration) {
    println!(
        "{attack}: RSS {} / {} / {} MiB (before / during / after); legitimate login + read {} ms",
        before / 1024,
        during / 1024,
        after / 1024,
        legit.as_millis()
    );
}

/// Whether the peer closed `s` within `t` (end of stream or reset).
fn closed_within(s: &mut TcpStream, t: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let until = Instant::now() + t;
    let mut b = [0u8; 4096];
    while Instant::now() < until {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

fn login_header(data_len: u32) -> [u8; 48] {
    let mut bhs = Bhs::new(Opcode::LoginRequest);
    bhs.0[0] |= 0x40;
    bhs.set_flags(0x80 | (1 << 2) | 3);
    bhs.0[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0, 1]);
    bhs.set_data_segment_len(data_len as usize);
    bhs.0
}

#[test]
fn floods_before_login_leave_room_for_legitimate_initiators() {
    let (_dir, gw) = start("hostile-floods", serde_json::json!({}), &[]);
    let base = gw.rss_kib();
    let legit0 = legitimate(&gw);
    report("baseline", base, base, base, legit0);

    // 32 unauthenticated connections declaring 16 MiB data segments, then sending 64 KiB:
    // refused from the header, before anything is buffered.
    let mut big: Vec<TcpStream> = (0..32)
        .map(|i| {
            let mut s = tcp_from(gw.addr, lo(10 + (i % 4) as u8)).unwrap();
            s.write_all(&login_header((1 << 24) - 1)).unwrap();
            let _ = s.write_all(&vec![b'x'; 64 << 10]);
            s
        })
        .collect();
    let during = gw.rss_kib();
    let legit = legitimate(&gw);
    let closed = big
        .iter_mut()
        .map(|s| closed_within(s, Duration::from_secs(2)))
        .filter(|c| *c)
        .count();
    drop(big);
    let after = gw.rss_kib();
    report(
        "32 logins declaring 16 MiB segments",
        base,
        during,
        after,
        legit,
    );
    assert_eq!(closed, 32, "every oversized login is refused");
    assert!(
        during < base + 32 * 1024,
        "RSS grew to {during} KiB from {base}"
    );
    assert!(legit < Duration::from_secs(1));

    // 1,024 idle discovery sessions from one address: the oldest ones are closed to make
    // room, no more than the per-source bound stay.
    let base = gw.rss_kib();
    let mut idle: Vec<Client> = (0..1024)
        .map(|_| {
            let mut c = Client::connect_from(gw.addr, lo(1));
            c.login("iqn.2026-11.org.rbdgw:idle", None, "");
            c
        })
        .collect();
    let during = gw.rss_kib();
    let legit = legitimate(&gw);
    std::thread::sleep(Duration::from_millis(300));
    let open = idle
        .iter_mut()
        .rev()
        .take(64)
        .filter(|c| {
            c.stream.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            let alive = matches!((&c.stream).read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
            c.stream.set_nonblocking(false).unwrap();
            alive
        })
        .count();
    let first_closed = closed_within(&mut idle[0].stream, Duration::from_secs(2));
    drop(idle);
    let after = gw.rss_kib();
    report("1,024 idle discovery sessions", base, during, after, legit);
    assert!(first_closed, "the oldest discovery sessions were closed");
    assert!(
        open <= 8,
        "{open} of the newest 64 discovery sessions still open"
    );
    assert!(open >= 1, "the newest discovery sessions serve");
    assert!(
        legit < Duration::from_secs(1),
        "legitimate initiator took {legit:?}"
    );

    // 2,000 half-open logins from 21 addresses, a byte a second each: they fill both the
    // per-source and the total bound; stale ones make room for the legitimate initiator.
    let base = gw.rss_kib();
    let mut half: Vec<TcpStream> = Vec::new();
    for i in 0..2000 {
        let src = if i % 21 == 0 {
            lo(1)
        } else {
            lo(30 + (i % 21) as u8)
        };
        if let Ok(mut s) = tcp_from(gw.addr, src) {
            let _ = s.write_all(&[0x43]);
            half.push(s);
        }
    }
    let mut worst = Duration::ZERO;
    let mut during = 0;
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(1100));
        for s in &mut half {
            let _ = s.write_all(&[round]);
        }
        during = during.max(gw.rss_kib());
        worst = worst.max(legitimate(&gw));
    }
    drop(half);
    std::thread::sleep(Duration::from_millis(300));
    let after = gw.rss_kib();
    report(
        "2,000 half-open logins, a byte a second",
        base,
        during,
        after,
        worst,
    );
    assert!(
        worst < Duration::from_secs(1),
        "legitimate initiator took {worst:?}"
    );
    assert!(
        during < base + 64 * 1024,
        "RSS grew to {during} KiB from {base}"
    );

    // Refusals are logged at most once per source and interval.
    let log = gw.log_text();
    let per_source = log
        .lines()
        .filter(|l| l.contains("source=127.0.0.34 ") && l.contains("logging in"))
        .count();
    assert!(
        (1..=3).contains(&per_source),
        "{per_source} log lines for one source's refusals"
    );
}

/// A WRITE(10) of `blocks` 512-byte blocks at LBA 0, waiting for R2T (no immediate data).
fn write_cmd(c: &mut Client, blocks: u16, immediate: bool) -> u32 {
    let cdb = [0x2a, 0, 0, 0, 0, 0, 0, (blocks >> 8) as u8, blocks as u8, 0];
    let mut cmd = c.scsi_command(0, &cdb, false, true, blocks as u32 * 512, Bytes::new());
    if immediate {
        cmd.bhs.0[0] |= 0x40;
        // An immediate command carries the CmdSN of the next command without taking it.
        c.cmd_sn = c.cmd_sn.wrapping_sub(1);
        cmd.bhs.set_cmd_sn(c.cmd_sn);
    }
    let itt = cmd.bhs.itt();
    c.send(&cmd);
    itt
}

/// (ITT, TTT) of each R2T; (ITT, status) of each SCSI response.
type Answers = (Vec<(u32, u32)>, Vec<(u32, u8)>);

/// What came back within `t`: R2Ts and SCSI statuses, by ITT.
fn collect(c: &mut Client, t: Duration) -> Answers {
    let (mut r2ts, mut statuses) = (Vec::new(), Vec::new());
    let until = Instant::now() + t;
    while Instant::now() < until {
        let Some(p) = c.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        match p.bhs.opcode() {
            Some(Opcode::ReadyToTransfer) => r2ts.push((p.bhs.itt(), p.bhs.ttt())),
            Some(Opcode::ScsiResponse) => statuses.push((p.bhs.itt(), p.bhs.0[3])),
            _ => {}
        }
    }
    (r2ts, statuses)
}

fn data_out(c: &mut Client, itt: u32, ttt: u32, offset: u32, len: usize) {
    let mut bhs = Bhs::new(Opcode::DataOut);
    bhs.set_flags(0x80);
    bhs.set_lun_raw(0)
        .set_itt(itt)
        .set_ttt(ttt)
        .set_exp_stat_sn(c.exp_stat_sn);
    bhs.set_data_sn(0).set_buffer_offset(offset);
    c.send(&Pdu::with_data(bhs, Bytes::from(vec![0xa5; len])));
}

#[test]
fn a_session_holds_no_more_than_it_negotiated() {
    let (_dir, gw) = start(
        "hostile-window",
        serde_json::json!({"tpg_default_cmdsn_depth": 16}),
        &["--command-memory-mib", "64"],
    );
    let base = gw.rss_kib();
    let extra = "InitialR2T=Yes|ImmediateData=No|MaxBurstLength=16776192|FirstBurstLength=65536|";
    let mut c = Client::connect(gw.addr);
    c.login("iqn.2026-11.org.rbdgw:greedy", Some(TARGET), extra);

    // 400 commands at once against a depth of 16: the 16 within MaxCmdSN run, the rest are
    // beyond the window and ignored.
    let first = c.cmd_sn;
    let mut itts = Vec::new();
    for _ in 0..400 {
        itts.push(write_cmd(&mut c, 8, false));
    }
    let (r2ts, statuses) = collect(&mut c, Duration::from_secs(1));
    println!("400 commands against depth 16: {} outstanding", r2ts.len());
    assert_eq!(r2ts.len(), 16, "only the window's commands were taken");
    assert!(statuses.is_empty(), "{statuses:?}");
    assert!(r2ts.iter().all(|(itt, _)| itts[..16].contains(itt)));

    // 100 immediate commands: beyond twice the depth outstanding, TASK SET FULL.
    for _ in 0..100 {
        write_cmd(&mut c, 8, true);
    }
    let (more, full) = collect(&mut c, Duration::from_secs(1));
    println!(
        "100 immediate commands more: {} taken ({} outstanding against depth 16), {} TASK SET FULL",
        more.len(),
        r2ts.len() + more.len(),
        full.len()
    );
    assert_eq!(more.len(), 16);
    assert_eq!(full.len(), 84);
    assert!(full.iter().all(|(_, s)| *s == 0x28));

    // Sparse Data-Out: one 512-byte PDU at the far end of each outstanding burst is out of
    // order (DataPDUInOrder=Yes): each command fails (data phase error), nothing allocated.
    for (itt, ttt) in r2ts.iter().chain(&more) {
        data_out(&mut c, *itt, *ttt, 3584, 512);
    }
    let (_, failed) = collect(&mut c, Duration::from_secs(1));
    assert_eq!(failed.len(), 32, "every sparse burst failed the command");
    assert!(failed.iter().all(|(_, s)| *s == 0x02));

    // 16 MiB bursts: the command memory (64 MiB) takes 4 of them; the rest TASK SET FULL.
    // (CmdSN goes on after the 16 commands that were taken.)
    c.cmd_sn = first.wrapping_add(16);
    for _ in 0..16 {
        write_cmd(&mut c, 32768, false);
    }
    let (big, full) = collect(&mut c, Duration::from_secs(1));
    for (itt, ttt) in &big {
        data_out(&mut c, *itt, *ttt, (16 << 20) - 512, 512);
    }
    let during = gw.rss_kib();
    let (_, failed) = collect(&mut c, Duration::from_secs(1));
    let legit = legitimate(&gw);
    println!(
        "16 WRITEs of 16 MiB, 64 MiB command memory: {} taken, {} TASK SET FULL",
        big.len(),
        full.len()
    );
    assert_eq!((big.len(), full.len()), (4, 12));
    assert_eq!(failed.len(), 4);
    // The session still works.
    let o = c.scsi_ready(0, &[0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0], &[], 4096);
    assert_eq!(o.status, 0, "{o:?}");
    let after = gw.rss_kib();
    report(
        "sparse Data-Out and 16 MiB bursts",
        base,
        during,
        after,
        legit,
    );
    assert!(
        during < base + 48 * 1024,
        "RSS grew to {during} KiB from {base}"
    );
    assert!(gw
        .log_text()
        .contains("command memory of the gateway used up"));
}

#[test]
fn an_initiator_that_stops_reading_is_dropped() {
    let dir = Scratch::new("hostile-stall");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let stalled = "iqn.2026-11.org.rbdgw:stalled";
    let cfg = serde_json::json!({
        "auth": [{"target": TARGET, "authentication": "identified", "identified": [
            {"initiator": stalled, "attrib_nopin_timeout": 1, "attrib_nopin_response_timeout": 2},
            {"initiator": LEGIT}]}],
        "targets": [{"target": TARGET, "hosts": [{"host": "gw1", "portal": "p1"}]}],
        "portals": [{"name": "p1", "addresses": [addr.to_string()]}],
        "pools": [{"pool": "rbd", "gateways": [{"target": TARGET, "tpg": [
            {"image": "mem", "backstore": "memory", "size": "64M", "initiator": stalled},
            {"image": "mem", "backstore": "memory", "size": "64M", "initiator": LEGIT}]}]}]
    });
    let gw = Gateway::start(&dir.0, &cfg.to_string(), "gw1", addr);
    let base = gw.rss_kib();
    let mut c = Client::connect(addr);
    c.login(stalled, Some(TARGET), "");
    // A small receive buffer, and nothing read from here on.
    let sock = socket2::SockRef::from(&c.stream);
    let _ = sock.set_recv_buffer_size(4096);
    let t = Instant::now();
    for _ in 0..3000 {
        let cmd = c.scsi_command(
            0,
            &[0x28, 0, 0, 0, 0, 0, 0, 0, 128, 0],
            true,
            false,
            65536,
            Bytes::new(),
        );
        if c.stream.write_all(&cmd.to_bytes(false, false)).is_err() {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let during = gw.rss_kib();
    let legit = legitimate(&gw);
    let mut dropped = None;
    while t.elapsed() < Duration::from_secs(10) {
        if gw.log_text().contains("the initiator read nothing") {
            dropped = Some(t.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = gw.rss_kib();
    report("3,000 READs never read", base, during, after, legit);
    let dropped = dropped.expect("the stalled connection was dropped");
    println!(
        "stalled connection dropped after {} ms",
        dropped.as_millis()
    );
    assert!(dropped < Duration::from_secs(6));
    assert!(
        during < base + 64 * 1024,
        "RSS grew to {during} KiB from {base}"
    );
    // Everything it held was freed: well below what it held.
    assert!(
        after < base + 16 * 1024,
        "RSS {after} KiB after, from {base}"
    );
    drop(c);
}

#[test]
fn task_management_and_logs_respect_the_initiator() {
    let dir = Scratch::new("hostile-tmf");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (owner, stranger) = (
        "iqn.2026-11.org.rbdgw:owner",
        "iqn.2026-11.org.rbdgw:stranger",
    );
    let cfg = serde_json::json!({
        "auth": [{"target": TARGET, "authentication": "identified", "identified": [
            {"initiator": owner}, {"initiator": stranger}]}],
        "targets": [{"target": TARGET, "hosts": [{"host": "gw1", "portal": "p1"}]}],
        "portals": [{"name": "p1", "addresses": [addr.to_string()]}],
        "pools": [{"pool": "rbd", "gateways": [{"target": TARGET, "tpg": [
            {"image": "mem", "backstore": "memory", "size": "8M", "initiator": owner},
            {"image": "other", "backstore": "memory", "size": "8M", "initiator": stranger}]}]}]
    });
    let gw = Gateway::start(&dir.0, &cfg.to_string(), "gw1", addr);
    let mut a = Client::connect(addr);
    a.login(owner, Some(TARGET), "");
    let o = a.scsi_ready(0, &[0x16, 0, 0, 0, 0, 0], &[], 0); // RESERVE(6)
    assert_eq!(o.status, 0);

    // TARGET WARM RESET from an initiator mapped to another LUN only: it resets that one.
    let mut b = Client::connect(addr);
    b.login(stranger, Some(TARGET), "");
    let itt = b.next_itt();
    let mut bhs = Bhs::new(Opcode::TaskMgmtRequest);
    bhs.0[0] |= 0x40;
    bhs.set_flags(0x80 | 6);
    bhs.set_itt(itt)
        .set_ttt(0xffff_ffff)
        .set_cmd_sn(b.cmd_sn)
        .set_exp_stat_sn(b.exp_stat_sn);
    b.send(&Pdu::new(bhs));
    let r = b.recv().expect("TMF response");
    assert_eq!(r.bhs.opcode(), Some(Opcode::TaskMgmtResponse));
    assert_eq!(r.bhs.0[2], 0, "function complete, on the stranger's LUN");

    // The reservation stands: another nexus of the owner still conflicts.
    let mut a2 = Client::connect(addr);
    a2.login(owner, Some(TARGET), "");
    let o = a2.scsi_ready(0, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[], 512);
    assert_eq!(o.status, 0x18, "RESERVATION CONFLICT: the reserve survived");
    let o = a.scsi(0, &[0x00, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(o.status, 0, "no reset reached the owner");

    // An initiator name that would forge a log line is refused, and nothing of it is
    // written raw.
    let mut f = Client::connect(addr);
    let pdu = f.login_pdu(
        1,
        Some(3),
        &format!("InitiatorName=iqn.x\n2026-12-03T00:00:00Z INFO forged: login complete\x1b[31m|TargetName={TARGET}|"),
    );
    f.send(&pdu);
    let r = f.recv().expect("login response");
    assert_eq!(r.bhs.0[36], 2, "initiator error");
    std::thread::sleep(Duration::from_millis(200));
    let log = gw.log_text();
    assert!(!log.lines().any(|l| l.contains("forged")), "{log}");
    assert!(!log.contains('\x1b'), "no escape codes in a log file");
}
