//! Reservation sequences run through two gateways, on whatever backstore the caller's
//! config serves (file images in `multi_gateway`, RBD in `ceph`).
#![allow(dead_code)]

use std::time::{Duration, Instant};

use super::client::Client;

/// (sense key, ASC, ASCQ).
pub type Sense = (u8, u8, u8);

pub fn prout(sa: u8, kind: u8, key: u64, sark: u64) -> ([u8; 10], Vec<u8>) {
    let mut p = vec![0u8; 24];
    p[..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    ([0x5f, sa, kind, 0, 0, 0, 0, 0, 24, 0], p)
}

pub fn write10(lba: u32) -> [u8; 10] {
    let mut c = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c
}

/// A WRITE(10) of one 512-byte block sent without its data: the target answers with an R2T
/// (InitialR2T=Yes) and waits. Returns the ITT and the R2T's TTT.
pub fn write_waiting_for_data(c: &mut Client, lba: u32) -> (u32, u32) {
    let cmd = c.scsi_command(0, &write10(lba), false, true, 512, bytes::Bytes::new());
    let itt = cmd.bhs.itt();
    c.send(&cmd);
    let r2t = c.recv_timeout(Duration::from_secs(5)).expect("an R2T");
    assert_eq!(r2t.bhs.opcode(), Some(iscsi::pdu::Opcode::ReadyToTransfer));
    assert_eq!(r2t.bhs.itt(), itt);
    (itt, r2t.bhs.ttt())
}

/// Sends the data of the write `itt` waits for (late, if it was aborted).
pub fn send_data(c: &mut Client, (itt, ttt): (u32, u32), fill: u8) {
    let mut bhs = iscsi::pdu::Bhs::new(iscsi::pdu::Opcode::DataOut);
    bhs.set_flags(0x80); // F: the last (only) Data-Out
    bhs.set_lun_raw(0)
        .set_itt(itt)
        .set_ttt(ttt)
        .set_exp_stat_sn(c.exp_stat_sn);
    bhs.set_data_sn(0).set_buffer_offset(0);
    c.send(&iscsi::pdu::Pdu::with_data(
        bhs,
        bytes::Bytes::from(vec![fill; 512]),
    ));
}

/// The SCSI Response for `itt`, if one comes within `t`: its status and (sense key, ASC,
/// ASCQ).
pub fn response_status(c: &mut Client, itt: u32, t: Duration) -> Option<(u8, Option<Sense>)> {
    let end = Instant::now() + t;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        let p = c.recv_timeout(left)?;
        if p.bhs.opcode() == Some(iscsi::pdu::Opcode::ScsiResponse) && p.bhs.itt() == itt {
            let sense = (p.data.len() >= 16).then(|| (p.data[4] & 0x0f, p.data[14], p.data[15]));
            return Some((p.bhs.0[3], sense));
        }
    }
    None
}

/// PREEMPT and PREEMPT AND ABORT of a node whose write waits for its data behind the other
/// gateway (SPC-4 §5.12.11.2.5, §5.12.11.2.6): node-a on the gateway at `a1` preempts node-b
/// on the one at `a2`, reservation type 5 (Write Exclusive, Registrants Only), LUN 0.
pub fn preempt_and_abort_across_gateways(a1: &str, a2: &str, target: &str) {
    let login = |a: &str, who: &str| {
        let mut c = Client::connect(a.parse().unwrap());
        c.login(&format!("iqn.2026-11.org.rbdgw:{who}"), Some(target), "");
        c
    };
    // The surviving node on gw1, the node to be fenced on gw2.
    let (mut keep, mut fenced) = (login(a1, "node-a"), login(a2, "node-b"));
    let read_block = |c: &mut Client, lba: u32| {
        let o = c.scsi_ready(0, &[0x28, 0, 0, 0, 0, lba as u8, 0, 0, 1, 0], &[], 512);
        assert_eq!(o.status, 0);
        o.data
    };
    for (sa, with_abort) in [(4u8, false), (5u8, true)] {
        for (c, key) in [(&mut keep, 0xa1u64), (&mut fenced, 0xb2)] {
            let (cdb, p) = prout(0, 0, 0, key);
            assert_eq!(c.scsi_ready(0, &cdb, &p, 0).status, 0, "register {key:x}");
        }
        let (cdb, p) = prout(1, 5, 0xb2, 0);
        assert_eq!(fenced.scsi_ready(0, &cdb, &p, 0).status, 0, "reserve");
        let lba = u32::from(sa) * 8;
        let task = write_waiting_for_data(&mut fenced, lba);
        let itt = task.0;
        // node-a takes the reservation, through the other gateway.
        let (cdb, p) = prout(sa, 5, 0xa1, 0xb2);
        assert_eq!(keep.scsi_ready(0, &cdb, &p, 0).status, 0, "preempt sa={sa}");
        if with_abort {
            // SPC-4 §5.12.11.2.6 with TAS=1: the waiting write ends TASK ABORTED, at once.
            let t0 = Instant::now();
            assert_eq!(
                response_status(&mut fenced, itt, Duration::from_secs(5)),
                Some((0x40, None)),
                "the preempted node's write is aborted"
            );
            println!(
                "PREEMPT AND ABORT: the write behind gw2 aborted {:?} after",
                t0.elapsed()
            );
            // Its data, sent late, lands nowhere and the connection goes on.
            send_data(&mut fenced, task, 0xee);
            assert!(fenced.ping(), "the session serves on");
            // The preempted node hears REGISTRATIONS PREEMPTED on its next command.
            let o = fenced.scsi(0, &[0x00; 6], &[], 0);
            assert_eq!(o.sense, Some((0x06, 0x2a, 0x05)));
        } else {
            // PREEMPT aborts nothing: the write waits for its data, then ends with the unit
            // attention REGISTRATIONS PREEMPTED, writing nothing.
            assert_eq!(
                response_status(&mut fenced, itt, Duration::from_secs(1)),
                None
            );
            send_data(&mut fenced, task, 0xee);
            assert_eq!(
                response_status(&mut fenced, itt, Duration::from_secs(5)),
                Some((0x02, Some((0x06, 0x2a, 0x05))))
            );
        }
        assert_eq!(
            read_block(&mut keep, lba),
            vec![0u8; 512],
            "sa={sa}: nothing written"
        );
        // Then the preempted node's writes conflict.
        assert_eq!(
            fenced.scsi_ready(0, &write10(lba), &[0xee; 512], 0).status,
            0x18
        );
        // Start over: node-a clears every registration.
        let (cdb, p) = prout(3, 0, 0xa1, 0);
        assert_eq!(keep.scsi_ready(0, &cdb, &p, 0).status, 0, "clear");
        let _ = fenced.scsi_ready(0, &[0x00; 6], &[], 0);
    }
}

/// READ KEYS: (PRgeneration, keys).
pub fn read_keys(c: &mut Client) -> (u32, Vec<u64>) {
    let o = c.scsi_ready(0, &[0x5e, 0, 0, 0, 0, 0, 0, 1, 0, 0], &[], 256);
    assert_eq!(o.status, 0, "READ KEYS");
    let d = &o.data;
    let len = u32::from_be_bytes([d[4], d[5], d[6], d[7]]) as usize;
    let keys = d[8..8 + len]
        .chunks(8)
        .map(|k| u64::from_be_bytes(k.try_into().unwrap()))
        .collect();
    (u32::from_be_bytes([d[0], d[1], d[2], d[3]]), keys)
}

/// READ RESERVATION: the holder's key and the type, if there is a reservation.
pub fn read_reservation(c: &mut Client) -> Option<(u64, u8)> {
    let o = c.scsi_ready(0, &[0x5e, 1, 0, 0, 0, 0, 0, 0, 64, 0], &[], 64);
    assert_eq!(o.status, 0, "READ RESERVATION");
    let d = &o.data;
    (u32::from_be_bytes([d[4], d[5], d[6], d[7]]) == 16).then(|| {
        (
            u64::from_be_bytes(d[8..16].try_into().unwrap()),
            d[21] & 0x0f,
        )
    })
}

/// The unit attention a nexus has pending (consumed), if any.
pub fn unit_attention(c: &mut Client) -> Option<Sense> {
    let o = c.scsi(0, &[0x00; 6], &[], 0);
    o.sense.filter(|s| s.0 == 0x06)
}

/// The persistent reservation sequence of Windows failover cluster validation ([MS-CSVP]
/// §3.2.4: CprepDiskPRRegister, -Reserve, -Preempt, -Release, -Clear, -UnRegister, and the
/// arbitration between two nodes by reservation), node 1 through the gateway at `n1` and
/// node 2 through the one at `n2`, type 5 (Write Exclusive, Registrants Only), LUN 0. Every
/// answer is checked, and what each node reads back agrees whichever gateway it asks.
pub fn cluster_validation_sequence(n1: &str, n2: &str, target: &str) {
    let login = |a: &str, who: &str| {
        let mut c = Client::connect(a.parse().unwrap());
        c.login(
            &format!("iqn.1991-05.com.microsoft:{who}"),
            Some(target),
            "",
        );
        c
    };
    let (mut node1, mut node2) = (login(n1, "node1"), login(n2, "node2"));
    let (k1, k2) = (0x1111_0000_0000_0001u64, 0x2222_0000_0000_0002u64);
    let out = |c: &mut Client, sa: u8, kind: u8, key: u64, sark: u64| {
        let (cdb, p) = prout(sa, kind, key, sark);
        c.scsi_ready(0, &cdb, &p, 0).status
    };
    let write = |c: &mut Client| c.scsi_ready(0, &write10(100), &[0x5a; 512], 0).status;
    let (g0, keys) = read_keys(&mut node1);
    assert_eq!(keys, Vec::<u64>::new(), "a clean LU");
    // CprepDiskPRRegister (REGISTER AND IGNORE EXISTING KEY), then CprepDiskPRReserve.
    assert_eq!(out(&mut node1, 6, 0, 0, k1), 0, "node1 registers");
    assert_eq!(out(&mut node1, 1, 5, k1, 0), 0, "node1 reserves");
    for c in [&mut node1, &mut node2] {
        assert_eq!(read_reservation(c), Some((k1, 5)));
    }
    // The second node registers; its reservation attempt conflicts; as a registrant of a
    // registrants-only reservation it may write.
    assert_eq!(out(&mut node2, 6, 0, 0, k2), 0, "node2 registers");
    let (g2, mut keys) = read_keys(&mut node2);
    keys.sort_unstable();
    assert_eq!(keys, vec![k1, k2]);
    assert_eq!(
        g2,
        g0.wrapping_add(2),
        "PRgeneration counts both registrations"
    );
    assert_eq!(
        out(&mut node2, 1, 5, k2, 0),
        0x18,
        "node2's RESERVE conflicts"
    );
    assert_eq!(write(&mut node2), 0, "a registrant writes");
    // Arbitration: node2 preempts node1 (CprepDiskPRPreempt).
    assert_eq!(out(&mut node2, 4, 5, k2, k1), 0, "node2 preempts");
    assert_eq!(
        unit_attention(&mut node1),
        Some((0x06, 0x2a, 0x05)),
        "node1 told"
    );
    for c in [&mut node1, &mut node2] {
        assert_eq!(read_reservation(c), Some((k2, 5)));
        assert_eq!(read_keys(c).1, vec![k2]);
    }
    assert_eq!(write(&mut node1), 0x18, "the preempted node cannot write");
    assert_eq!(
        out(&mut node1, 1, 5, k1, 0),
        0x18,
        "nor reserve with its old key"
    );
    // node1 registers again and loses the arbitration while node2 defends.
    assert_eq!(out(&mut node1, 6, 0, 0, k1), 0);
    assert_eq!(out(&mut node1, 1, 5, k1, 0), 0x18);
    assert_eq!(
        out(&mut node2, 1, 5, k2, 0),
        0,
        "the holder reserves again: GOOD"
    );
    // CprepDiskPRRelease: node2 lets go, node1 hears RESERVATIONS RELEASED and wins.
    assert_eq!(out(&mut node2, 2, 5, k2, 0), 0, "node2 releases");
    assert_eq!(unit_attention(&mut node1), Some((0x06, 0x2a, 0x04)));
    assert_eq!(read_reservation(&mut node1), None);
    assert_eq!(out(&mut node1, 1, 5, k1, 0), 0, "node1 reserves");
    assert_eq!(read_reservation(&mut node2), Some((k1, 5)));
    // A release of the wrong type is refused (SPC-4 §5.12.11.2.2) and changes nothing.
    let (cdb, p) = prout(2, 6, k1, 0);
    let o = node1.scsi_ready(0, &cdb, &p, 0);
    assert_eq!(o.sense, Some((0x05, 0x26, 0x04)), "INVALID RELEASE");
    assert_eq!(read_reservation(&mut node2), Some((k1, 5)));
    // CprepDiskPRClear through node2: every registration and the reservation go.
    let (g_before, _) = read_keys(&mut node2);
    assert_eq!(out(&mut node2, 3, 0, k2, 0), 0, "node2 clears");
    assert_eq!(unit_attention(&mut node1), Some((0x06, 0x2a, 0x03)));
    for c in [&mut node1, &mut node2] {
        let (g, keys) = read_keys(c);
        assert_eq!((g, keys), (g_before.wrapping_add(1), vec![]));
        assert_eq!(read_reservation(c), None);
    }
    // CprepDiskPRUnRegister of a node no longer registered: GOOD, nothing changes.
    assert_eq!(out(&mut node1, 6, 0, 0, 0), 0);
    assert_eq!(write(&mut node1), 0, "no reservation: anyone writes");
}
