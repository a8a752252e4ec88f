//! What iSCSI digests cost, for `bench/run`: libiscsi (the benchmark's client) offers no data
//! digest, so this drives sessions with the tests' own initiator, one 1 MiB command at a time,
//! with no digest, header digests, and header and data digests (CRC32C), and prints MB/s of
//! READ(16) and WRITE(16) for each (the median of RUNS runs, the three kinds alternated), and
//! the cost against no digest.
//!
//! Usage: digest_bench HOST:PORT TARGET LUN SECONDS [RUNS]

#[allow(dead_code)]
#[path = "../tests/common/client.rs"]
mod client;

use std::time::{Duration, Instant};

use client::Client;

const MIB: usize = 1 << 20;

fn cdb16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// MB/s of 1 MiB commands (`write` or read) over one session with `keys` for `secs`.
fn run(
    addr: std::net::SocketAddr,
    target: &str,
    lun: u64,
    keys: &str,
    write: bool,
    secs: u64,
) -> f64 {
    let mut c = Client::connect(addr);
    c.login(
        "iqn.2026-11.org.rbdgw:digest-bench",
        Some(target),
        &format!("{keys}MaxRecvDataSegmentLength=262144|"),
    );
    // Unit attentions of a new nexus first.
    c.scsi_ready(lun, &[0u8; 6], &[], 0);
    let data = vec![0x5au8; MIB];
    let blocks = (MIB / 512) as u32;
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        let lba = (n % 256) * blocks as u64;
        let o = if write {
            c.scsi(lun, &cdb16(0x8a, lba, blocks), &data, 0)
        } else {
            c.scsi(lun, &cdb16(0x88, lba, blocks), &[], MIB as u32)
        };
        assert_eq!(o.status, 0, "{o:?}");
        n += 1;
    }
    n as f64 * MIB as f64 / started.elapsed().as_secs_f64() / 1e6
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, target, lun, secs, runs) = match &args[..] {
        [a, t, l, s] => (a, t, l, s, 3),
        [a, t, l, s, r] => (a, t, l, s, r.parse().expect("RUNS")),
        _ => {
            eprintln!("usage: digest_bench HOST:PORT TARGET LUN SECONDS [RUNS]");
            std::process::exit(2);
        }
    };
    let addr = addr.parse().expect("HOST:PORT");
    let lun: u64 = lun.parse().expect("LUN");
    let secs: u64 = secs.parse().expect("SECONDS");
    let modes = [
        ("none", "HeaderDigest=None|DataDigest=None|"),
        ("header", "HeaderDigest=CRC32C|DataDigest=None|"),
        ("header+data", "HeaderDigest=CRC32C|DataDigest=CRC32C|"),
    ];
    for write in [false, true] {
        let mut samples = vec![Vec::new(); modes.len()];
        for _ in 0..runs {
            for (i, (_, keys)) in modes.iter().enumerate() {
                samples[i].push(run(addr, target, lun, keys, write, secs));
            }
        }
        let mut base = 0.0;
        for ((name, _), mut v) in modes.iter().zip(samples) {
            v.sort_by(f64::total_cmp);
            let mbs = v[v.len() / 2];
            if *name == "none" {
                base = mbs;
            }
            println!(
                "  1 MiB {:5} QD1, digests {:11} {:7.0} MB/s  ({:+.0}%)",
                if write { "write" } else { "read" },
                name,
                mbs,
                (mbs / base - 1.0) * 100.0
            );
        }
    }
}
