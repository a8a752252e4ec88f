//! Hostile and broken input: each case gets a Reject, a login failure, or only its own
//! connection dropped; the gateway never panics and a session opened beside keeps working.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::client::Client;
use common::{free_port, Gateway, Scratch};
use iscsi::pdu::{Bhs, Opcode, Pdu};

const TARGET: &str = "iqn.2026-11.org.rbdgw:bad-input";

fn start(dir: &Scratch) -> Gateway {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = serde_json::json!({
        "targets": [{"target": TARGET, "hosts": [{"host": "gw1", "portal": "p1"}]}],
        "portals": [{"name": "p1", "addresses": [addr.to_string()]}],
        "pools": [{"pool": "rbd", "gateways": [{"target": TARGET, "tpg": [
            {"image": "mem", "backstore": "memory", "size": "16M"}]}]}]
    });
    Gateway::start(&dir.0, &config.to_string(), "gw1", addr)
}

fn session(gw: &Gateway, extra: &str) -> Client {
    let mut c = Client::connect(gw.addr);
    c.login("iqn.2026-11.org.rbdgw:bystander", Some(TARGET), extra);
    c
}

fn expect_reject(c: &mut Client, reason: u8) {
    loop {
        let p = c.recv().expect("a Reject");
        if p.bhs.opcode() == Some(Opcode::Reject) {
            assert_eq!(p.bhs.0[2], reason, "reject reason");
            return;
        }
    }
}

#[test]
fn bad_pdus_are_rejected_and_the_gateway_keeps_serving() {
    let dir = Scratch::new("bad-input");
    let gw = start(&dir);
    let mut bystander = session(&gw, "");
    assert!(bystander.ping());

    // A truncated header, then the connection closes mid-PDU.
    let mut c = Client::connect(gw.addr);
    c.send_raw(&[0x43, 0x87, 0, 0, 0, 0, 0]).unwrap();
    drop(c);

    // Unknown opcode in full feature phase: Reject, Command not supported.
    let mut c = session(&gw, "");
    let mut bhs = Bhs::new(Opcode::NopOut);
    bhs.0[0] = 0x1e;
    c.send(&Pdu::new(bhs));
    expect_reject(&mut c, 0x05);
    assert!(c.ping(), "connection still serves after a Reject");

    // A data segment over our MaxRecvDataSegmentLength: Reject (protocol error).
    let limit = c.target_max_recv;
    let pdu = c.scsi_command(
        0,
        &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        false,
        true,
        512,
        Bytes::from(vec![0u8; limit + 512]),
    );
    c.send(&pdu);
    expect_reject(&mut c, 0x04);
    assert!(c.ping());

    // A login PDU in full feature phase: Reject.
    let login = c.login_pdu(1, Some(3), "InitiatorName=x|");
    c.send(&login);
    expect_reject(&mut c, 0x04);

    // A CmdSN beyond MaxCmdSN is ignored silently (RFC 7143 §4.2.2.1); the next good one runs.
    let mut tur = c.scsi_command(0, &[0; 6], false, false, 0, Bytes::new());
    tur.bhs.set_cmd_sn(c.cmd_sn.wrapping_add(100_000));
    c.send(&tur);
    assert!(
        c.recv_timeout(Duration::from_millis(500)).is_none(),
        "no answer to an out-of-window command"
    );
    c.cmd_sn = c.cmd_sn.wrapping_sub(1);
    let tur = c.scsi_command(0, &[0; 6], false, false, 0, Bytes::new());
    c.send(&tur);
    let r = c.recv().expect("response");
    assert_eq!(r.bhs.opcode(), Some(Opcode::ScsiResponse));
    assert_eq!(r.bhs.itt(), tur.bhs.itt());

    // Data-Out for a task that does not exist: Reject.
    let mut d = Bhs::new(Opcode::DataOut);
    d.set_itt(0x7777).set_ttt(0x1234);
    c.send(&Pdu::with_data(d, Bytes::from(vec![0u8; 512])));
    expect_reject(&mut c, 0x09);
    assert!(c.ping());

    // A command during login fails the login (RFC 7143 §6.1).
    let mut c = Client::connect(gw.addr);
    let cmd = c.scsi_command(0, &[0; 6], false, false, 0, Bytes::new());
    c.send(&cmd);
    let r = c.recv().expect("login response");
    assert_eq!(r.bhs.opcode(), Some(Opcode::LoginResponse));
    assert_eq!(
        (r.bhs.0[36], r.bhs.0[37]),
        (0x02, 0x0b),
        "invalid during login"
    );
    assert!(c.closed());

    // Garbage text keys at login: initiator error, connection closed.
    let mut c = Client::connect(gw.addr);
    let p = c.login_pdu(1, Some(3), "this is not a key|=|");
    c.send(&p);
    let r = c.recv().expect("login response");
    assert_eq!(r.bhs.0[36], 0x02);
    assert!(c.closed());

    // Unknown target: not found.
    let mut c = Client::connect(gw.addr);
    let p = c.login_pdu(
        1,
        Some(3),
        "InitiatorName=iqn.2026-11.org.x:i|TargetName=iqn.2026-11.org.x:none|",
    );
    c.send(&p);
    let r = c.recv().expect("login response");
    assert_eq!((r.bhs.0[36], r.bhs.0[37]), (0x02, 0x03));

    // Header digest mismatch: framing is lost, only that connection is dropped.
    let mut c = session(&gw, "HeaderDigest=CRC32C|");
    assert!(c.header_digest);
    let mut wire = Pdu::new(Bhs::new(Opcode::NopOut))
        .to_bytes(true, false)
        .to_vec();
    wire[48] ^= 0xff;
    c.send_raw(&wire).unwrap();
    assert!(c.closed(), "connection dropped on a header digest error");

    // Data digest mismatch: Reject with reason Data Digest Error, connection kept.
    let mut c = session(&gw, "DataDigest=CRC32C|");
    assert!(c.data_digest);
    let mut bhs = Bhs::new(Opcode::NopOut);
    bhs.0[0] |= 0x40;
    bhs.set_itt(99).set_ttt(0xffff_ffff).set_cmd_sn(c.cmd_sn);
    let mut wire = Pdu::with_data(bhs, Bytes::from_static(b"abcd"))
        .to_bytes(false, true)
        .to_vec();
    let n = wire.len();
    wire[n - 1] ^= 0xff;
    c.send_raw(&wire).unwrap();
    expect_reject(&mut c, 0x02);
    assert!(c.ping());

    // Fuzz-ish: random garbage after login drops at most that connection.
    let mut c = session(&gw, "");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let junk: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let _ = c.send_raw(&junk);
    drop(c);

    assert!(bystander.ping(), "the session beside kept working");
    let log = gw.log_text();
    assert!(!log.contains("panicked"), "gateway panicked:\n{log}");
}
