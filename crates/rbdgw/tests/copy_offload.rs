//! Copy offload through real gateways: two `rbdgw serve` (gw1 on 127.0.0.1, gw2 on
//! 127.0.0.2) export two file images as LUNs 0 and 1 of one target. EXTENDED COPY moves data
//! between the LUNs inside a gateway; a ROD token made by POPULATE TOKEN through gw1 is written
//! with WRITE USING TOKEN through gw2, and a write to its source through gw2 revokes it.

mod common;

use common::client::Client;
use common::{free_port, Gateway, Scratch};
use iscsi::pdu::{Bhs, Opcode, Pdu};

const TARGET: &str = "iqn.2026-11.org.rbdgw:copy";
const BLOCK: usize = 512;

fn write(c: &mut Client, lun: u64, lba: u32, blocks: u16, byte: u8) {
    let mut cdb = [0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    let o = c.scsi_ready(lun, &cdb, &vec![byte; blocks as usize * BLOCK], 0);
    assert_eq!(o.status, 0, "{o:?}");
}

fn read(c: &mut Client, lun: u64, lba: u32, blocks: u16) -> Vec<u8> {
    let mut cdb = [0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    let o = c.scsi_ready(lun, &cdb, &[], (blocks as usize * BLOCK) as u32);
    assert_eq!(o.status, 0, "{o:?}");
    o.data
}

/// An EXTENDED COPY (LID1) list 7 (held): two identification CSCDs, `segments`
/// block-to-block segments of `blocks` each, one after the other.
fn xcopy_list(src: &[u8], dst: &[u8], blocks: u16, src_lba: u64, dst_lba: u64) -> Vec<u8> {
    xcopy_segments(src, dst, 1, blocks, src_lba, dst_lba)
}

fn xcopy_segments(
    src: &[u8],
    dst: &[u8],
    segments: u32,
    blocks: u16,
    src_lba: u64,
    dst_lba: u64,
) -> Vec<u8> {
    let mut l = vec![0u8; 16];
    l[0] = 7;
    l[3] = 64;
    l[8..12].copy_from_slice(&(segments * 28).to_be_bytes());
    for naa in [src, dst] {
        let mut d = vec![0u8; 32];
        d[0] = 0xe4;
        d[4] = 0x01;
        d[5] = 0x03;
        d[7] = naa.len() as u8;
        d[8..8 + naa.len()].copy_from_slice(naa);
        d[30] = 0x02; // 512-byte blocks
        l.extend(d);
    }
    for i in 0..segments as u64 {
        let step = i * blocks as u64;
        let mut s = vec![0u8; 28];
        s[0] = 0x02;
        s[3] = 24;
        s[6..8].copy_from_slice(&1u16.to_be_bytes());
        s[10..12].copy_from_slice(&blocks.to_be_bytes());
        s[12..20].copy_from_slice(&(src_lba + step).to_be_bytes());
        s[20..28].copy_from_slice(&(dst_lba + step).to_be_bytes());
        l.extend(s);
    }
    l
}

fn xcopy_cdb(len: usize) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x83;
    cdb[10..14].copy_from_slice(&(len as u32).to_be_bytes());
    cdb
}

fn ranges_list(head: usize, ranges: &[(u64, u32)]) -> Vec<u8> {
    let mut l = vec![0u8; head];
    l[head - 2..].copy_from_slice(&((ranges.len() * 16) as u16).to_be_bytes());
    for (lba, n) in ranges {
        l.extend_from_slice(&lba.to_be_bytes());
        l.extend_from_slice(&n.to_be_bytes());
        l.extend_from_slice(&[0; 4]);
    }
    l
}

fn lid4_cdb(sa: u8, list: u32, len: usize) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x83;
    c[1] = sa;
    c[6..10].copy_from_slice(&list.to_be_bytes());
    c[10..14].copy_from_slice(&(len as u32).to_be_bytes());
    c
}

fn populate(c: &mut Client, lun: u64, list: u32, ranges: &[(u64, u32)]) -> Vec<u8> {
    let p = ranges_list(16, ranges);
    let o = c.scsi_ready(lun, &lid4_cdb(0x10, list, p.len()), &p, 0);
    assert_eq!(o.status, 0, "POPULATE TOKEN: {o:?}");
    let mut rrti = [0u8; 16];
    rrti[0] = 0x84;
    rrti[1] = 0x07;
    rrti[2..6].copy_from_slice(&list.to_be_bytes());
    rrti[10..14].copy_from_slice(&1024u32.to_be_bytes());
    let o = c.scsi_ready(lun, &rrti, &[], 1024);
    assert_eq!(o.status, 0, "RECEIVE ROD TOKEN INFORMATION: {o:?}");
    assert_eq!(o.data[5], 0x01, "completed");
    o.data[38..38 + 512].to_vec()
}

fn write_using(
    c: &mut Client,
    lun: u64,
    token: &[u8],
    ranges: &[(u64, u32)],
) -> (u8, Option<(u8, u8, u8)>) {
    let mut p = ranges_list(536, ranges);
    p[16..528].copy_from_slice(token);
    let o = c.scsi_ready(lun, &lid4_cdb(0x11, 9, p.len()), &p, 0);
    (o.status, o.sense)
}

#[test]
fn copies_stay_inside_the_gateways_and_tokens_cross_them() {
    let dir = Scratch::new("copy-offload");
    let port = free_port();
    let (a1, a2) = (format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}"));
    let image = |n: &str| dir.0.join(n).display().to_string();
    let config = serde_json::json!({
        "auth": [{"target": TARGET, "authentication": "none"}],
        "targets": [{"target": TARGET, "hosts": [{"host": "gw1", "portal": "p1"}, {"host": "gw2", "portal": "p2"}]}],
        "portals": [{"name": "p1", "addresses": [a1]}, {"name": "p2", "addresses": [a2]}],
        "pools": [{"pool": "rbd", "gateways": [{"target": TARGET, "tpg": [
            {"image": "src", "lun": 0, "backstore": "file", "path": image("src.img"), "size": "16M", "owner": "gw1"},
            {"image": "dst", "lun": 1, "backstore": "file", "path": image("dst.img"), "size": "16M", "owner": "gw1"},
            {"image": "big", "lun": 2, "backstore": "file", "path": image("big.img"), "size": "512M", "owner": "gw1"},
            {"image": "bigcopy", "lun": 3, "backstore": "file", "path": image("bigcopy.img"), "size": "512M", "owner": "gw1"}]}]}]
    })
    .to_string();
    // 512 MiB of data (no holes) to copy, long enough to abort on the way.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(image("big.img")).unwrap();
        let chunk = vec![0x5au8; 8 << 20];
        for _ in 0..64 {
            f.write_all(&chunk).unwrap();
        }
    }
    let gw1 = Gateway::start(&dir.0, &config, "gw1", a1.parse().unwrap());
    let gw2 = Gateway::start(&dir.0, &config, "gw2", a2.parse().unwrap());
    let mut s1 = Client::connect(a1.parse().unwrap());
    s1.login("iqn.2026-11.org.rbdgw:host-a", Some(TARGET), "");
    let mut s2 = Client::connect(a2.parse().unwrap());
    s2.login("iqn.2026-11.org.rbdgw:host-a", Some(TARGET), "");
    let (src, dst) = (s1.naa(0), s1.naa(1));
    assert_ne!(src, dst);

    // EXTENDED COPY through gw1, from LUN 0 to LUN 1: 2 MiB, of which the last MiB a hole.
    write(&mut s1, 0, 0, 2048, b'X');
    write(&mut s1, 1, 0, 4096, b'y');
    let l = xcopy_list(&src, &dst, 4096, 0, 0);
    let o = s1.scsi_ready(0, &xcopy_cdb(l.len()), &l, 0);
    assert_eq!(o.status, 0, "EXTENDED COPY: {o:?}");
    let got = read(&mut s2, 1, 0, 4096);
    assert!(got[..1 << 20].iter().all(|b| *b == b'X'), "copied data");
    assert!(got[1 << 20..].iter().all(|b| *b == 0), "copied hole");
    // RECEIVE COPY RESULTS, COPY STATUS of list 7: done, one segment, 2 MiB.
    let o = s1.scsi_ready(
        0,
        &[0x84, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0],
        &[],
        64,
    );
    assert_eq!(o.status, 0);
    assert_eq!((o.data[4], o.data[6]), (1, 1));
    assert_eq!(&o.data[8..12], &(2u32 << 20).to_be_bytes());

    // ODX: a token made through gw1, written through gw2.
    write(&mut s1, 0, 100, 8, b'T');
    let token = populate(&mut s1, 0, 1, &[(100, 8)]);
    assert_eq!(write_using(&mut s2, 1, &token, &[(500, 8)]), (0, None));
    assert_eq!(read(&mut s1, 1, 500, 8), vec![b'T'; 8 * BLOCK]);
    // A write to its source through gw2 revokes it (23/06 TOKEN REVOKED), on either gateway.
    write(&mut s2, 0, 104, 1, b'u');
    for s in [&mut s1, &mut s2] {
        assert_eq!(
            write_using(s, 1, &token, &[(500, 8)]),
            (2, Some((0x05, 0x23, 0x06)))
        );
    }
    // An ABORT TASK during a long copy (16 segments of 32 MiB) ends it: the task management
    // function completes, the copy gets no response, its destination is written in part only,
    // and its list identifier is free again.
    let (big, bigcopy) = (s1.naa(2), s1.naa(3));
    // (The power-on unit attentions first: the raw command below must not meet one.)
    for lun in [2, 3] {
        assert_eq!(s1.scsi_ready(lun, &[0; 6], &[], 0).status, 0);
    }
    let l = xcopy_segments(&big, &bigcopy, 16, 65535, 0, 0);
    let cmd = s1.scsi_command(
        2,
        &xcopy_cdb(l.len()),
        false,
        true,
        l.len() as u32,
        l.into(),
    );
    let (itt, ref_cmd_sn) = (cmd.bhs.itt(), s1.cmd_sn.wrapping_sub(1));
    s1.send(&cmd);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let tmf_itt = s1.next_itt();
    let mut bhs = Bhs::new(Opcode::TaskMgmtRequest);
    bhs.0[0] |= 0x40; // immediate
    bhs.set_flags(0x80 | 1); // ABORT TASK
    bhs.set_lun_raw(2 << 48)
        .set_itt(tmf_itt)
        .set_ttt(itt) // REFERENCED TASK TAG
        .set_cmd_sn(s1.cmd_sn)
        .set_exp_stat_sn(s1.exp_stat_sn);
    bhs.0[32..36].copy_from_slice(&ref_cmd_sn.to_be_bytes()); // RefCmdSN
    s1.send(&Pdu::new(bhs));
    let t0 = std::time::Instant::now();
    loop {
        let p = s1
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the task management response");
        assert!(
            !(p.bhs.opcode() == Some(Opcode::ScsiResponse) && p.bhs.itt() == itt),
            "the copy completed before the abort reached it: status {:#x}, sense {:02x?}",
            p.bhs.0[3],
            &p.data[..p.data.len().min(20)]
        );
        if p.bhs.opcode() == Some(Opcode::TaskMgmtResponse) {
            assert_eq!(p.bhs.0[2], 0, "ABORT TASK: function complete");
            break;
        }
    }
    println!("ABORT TASK answered {:?} after it was sent", t0.elapsed());
    let last = read(&mut s1, 3, 16 * 65535 - 8, 8);
    assert!(
        last.iter().all(|b| *b == 0),
        "the copy stopped before its end"
    );
    let l = xcopy_segments(&big, &bigcopy, 1, 8, 0, 0);
    let o = s1.scsi_ready(2, &xcopy_cdb(l.len()), &l, 0);
    assert_eq!(o.status, 0, "list 7 is free again: {o:?}");
    assert_eq!(read(&mut s2, 3, 0, 8), vec![0x5a; 8 * BLOCK]);

    for g in [&gw1, &gw2] {
        let log = g.log_text();
        assert!(!log.contains("panicked"), "{log}");
    }
}
