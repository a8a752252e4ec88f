//! One clone for `bench/run copy`: BYTES from the start of LUN SRC to LUN DST of TARGET at
//! PORTAL, in one of three ways, printing the seconds it took and the bytes that crossed the
//! initiator's connection (from the kernel's TCP_INFO: sent and received, headers included).
//!
//! Usage: copy_bench PORTAL TARGET SRC DST BYTES MODE
//!   read-write  READ 1 MiB, WRITE it, one after the other (what `dd` through the initiator does)
//!   xcopy       EXTENDED COPY (LID1): 64 segments of up to 65,535 blocks per command
//!   odx         POPULATE TOKEN over the range, RECEIVE ROD TOKEN INFORMATION, WRITE USING TOKEN

#[path = "../tests/common/client.rs"]
#[allow(dead_code)]
mod client;

use std::os::fd::AsRawFd;
use std::time::Instant;

use client::Client;

const CHUNK: u64 = 1 << 20;

/// (bytes sent and acknowledged, bytes received) on the connection so far.
fn tcp_bytes(c: &Client) -> (u64, u64) {
    // SAFETY: getsockopt(TCP_INFO) fills a tcp_info of the length given, on our own socket.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let r = libc::getsockopt(
            c.stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut _ as *mut libc::c_void,
            &mut len,
        );
        assert_eq!(r, 0, "TCP_INFO");
        (info.tcpi_bytes_acked, info.tcpi_bytes_received)
    }
}

fn block_size(c: &mut Client, lun: u64) -> u64 {
    let o = c.scsi_ready(
        lun,
        &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        &[],
        32,
    );
    u32::from_be_bytes([o.data[8], o.data[9], o.data[10], o.data[11]]) as u64
}

fn rw16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn expect_good(o: &client::Outcome, what: &str) {
    assert_eq!(o.status, 0, "{what}: {o:?}");
}

fn read_write(c: &mut Client, src: u64, dst: u64, bytes: u64, bs: u64) {
    let mut at = 0;
    while at < bytes {
        let n = CHUNK.min(bytes - at);
        let blocks = (n / bs) as u32;
        let o = c.scsi(src, &rw16(0x88, at / bs, blocks), &[], n as u32);
        expect_good(&o, "READ(16)");
        let o = c.scsi(dst, &rw16(0x8a, at / bs, blocks), &o.data, 0);
        expect_good(&o, "WRITE(16)");
        at += n;
    }
}

fn xcopy(c: &mut Client, src: u64, dst: u64, bytes: u64, bs: u64) {
    let (s, d) = (c.naa(src), c.naa(dst));
    let total = bytes / bs;
    let mut lba = 0u64;
    while lba < total {
        let mut segs = Vec::new();
        while lba < total && segs.len() < 64 {
            let n = (total - lba).min(65535);
            let mut seg = vec![0u8; 28];
            seg[0] = 0x02;
            seg[3] = 24;
            seg[6..8].copy_from_slice(&1u16.to_be_bytes());
            seg[10..12].copy_from_slice(&(n as u16).to_be_bytes());
            seg[12..20].copy_from_slice(&lba.to_be_bytes());
            seg[20..28].copy_from_slice(&lba.to_be_bytes());
            segs.extend(seg);
            lba += n;
        }
        let mut l = vec![0u8; 16];
        l[1] = 3 << 3; // no list identifier
        l[3] = 64;
        l[8..12].copy_from_slice(&(segs.len() as u32).to_be_bytes());
        for naa in [&s, &d] {
            let mut cscd = vec![0u8; 32];
            cscd[0] = 0xe4;
            cscd[4] = 0x01;
            cscd[5] = 0x03;
            cscd[7] = naa.len() as u8;
            cscd[8..8 + naa.len()].copy_from_slice(naa);
            cscd[29..32].copy_from_slice(&(bs as u32).to_be_bytes()[1..]);
            l.extend(cscd);
        }
        l.extend(segs);
        let mut cdb = [0u8; 16];
        cdb[0] = 0x83;
        cdb[10..14].copy_from_slice(&(l.len() as u32).to_be_bytes());
        expect_good(&c.scsi(src, &cdb, &l, 0), "EXTENDED COPY");
    }
}

fn odx(c: &mut Client, src: u64, dst: u64, bytes: u64, bs: u64) {
    let range = |blocks: u64| {
        let mut r = Vec::new();
        r.extend_from_slice(&0u64.to_be_bytes());
        r.extend_from_slice(&(blocks as u32).to_be_bytes());
        r.extend_from_slice(&[0; 4]);
        r
    };
    let cdb = |sa: u8, len: usize| {
        let mut c = [0u8; 16];
        c[0] = 0x83;
        c[1] = sa;
        c[6..10].copy_from_slice(&1u32.to_be_bytes());
        c[10..14].copy_from_slice(&(len as u32).to_be_bytes());
        c
    };
    let mut pt = vec![0u8; 16];
    pt[15] = 16;
    pt.extend(range(bytes / bs));
    expect_good(&c.scsi(src, &cdb(0x10, pt.len()), &pt, 0), "POPULATE TOKEN");
    let mut rrti = [0u8; 16];
    rrti[0] = 0x84;
    rrti[1] = 0x07;
    rrti[5] = 1;
    rrti[10..14].copy_from_slice(&1024u32.to_be_bytes());
    let o = c.scsi(src, &rrti, &[], 1024);
    expect_good(&o, "RECEIVE ROD TOKEN INFORMATION");
    let token = &o.data[38..38 + 512];
    let mut wut = vec![0u8; 536];
    wut[16..528].copy_from_slice(token);
    wut[535] = 16;
    wut.extend(range(bytes / bs));
    expect_good(
        &c.scsi(dst, &cdb(0x11, wut.len()), &wut, 0),
        "WRITE USING TOKEN",
    );
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 7 {
        eprintln!("usage: copy_bench PORTAL TARGET SRC DST BYTES read-write|xcopy|odx");
        std::process::exit(2);
    }
    let (src, dst): (u64, u64) = (a[3].parse().unwrap(), a[4].parse().unwrap());
    let bytes: u64 = a[5].parse().unwrap();
    let mut c = Client::connect(a[1].parse().expect("PORTAL as address:port"));
    c.login(
        "iqn.2026-11.org.rbdgw:copy-bench",
        Some(&a[2]),
        "MaxRecvDataSegmentLength=262144|ImmediateData=Yes|",
    );
    let bs = block_size(&mut c, src);
    let _ = block_size(&mut c, dst);
    let (s0, r0) = tcp_bytes(&c);
    let t0 = Instant::now();
    match a[6].as_str() {
        "read-write" => read_write(&mut c, src, dst, bytes, bs),
        "xcopy" => xcopy(&mut c, src, dst, bytes, bs),
        "odx" => odx(&mut c, src, dst, bytes, bs),
        m => panic!("no mode {m}"),
    }
    let secs = t0.elapsed().as_secs_f64();
    let (s1, r1) = tcp_bytes(&c);
    println!("{} {secs:.3} {}", a[6], (s1 - s0) + (r1 - r0));
}
