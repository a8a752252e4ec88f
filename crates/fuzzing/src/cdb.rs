//! Arbitrary CDBs from three nexuses on one logical unit over a 1 MiB memory image, with
//! their data-out shaped as the transport shapes it (no more than EDTL; a WRITE whose EDTL
//! is short cut to the blocks it covers). Checked:
//! - a CHECK CONDITION carries sense data, and a status other than GOOD carries no data;
//! - data-in never exceeds the allocation length of the commands that have one;
//! - a GOOD READ returns exactly its blocks, and those are what the GOOD WRITEs before it
//!   wrote (while only commands known not to change the data ran in between).

use std::sync::Arc;

use backstore::FileDevice;
use bytes::Bytes;
use scsi::lu::LuConfig;
use scsi::{ItNexus, LogicalUnit, ScsiCommand, ScsiStatus};

use crate::input::Input;

const IMAGE: usize = 1 << 20;
/// Data-out offered per command, at most (the image is smaller).
const MAX_DATA: u32 = 2 << 20;

/// Commands that never change the image's data: the model stays valid across them.
fn preserves_data(op: u8) -> bool {
    matches!(
        op,
        0x00 | 0x03
            | 0x12
            | 0x1a
            | 0x5a
            | 0x15
            | 0x55
            | 0x25
            | 0x9e
            | 0xa0
            | 0xa3
            | 0x08
            | 0x28
            | 0x88
            | 0xa8
            | 0x35
            | 0x91
            | 0x2f
            | 0x8f
            | 0x5e
            | 0x5f
            | 0x16
            | 0x17
            | 0x56
            | 0x57
            | 0x4d
            | 0x1b
            | 0x1e
            | 0x1c
            | 0x1d
            | 0x34
            | 0x90
    )
}

/// Where a command's allocation length is: (offset, bytes).
fn allocation_length(cdb: &[u8; 16]) -> Option<usize> {
    let be = |o: usize, n: usize| {
        cdb[o..o + n]
            .iter()
            .fold(0usize, |a, &b| a << 8 | b as usize)
    };
    Some(match cdb[0] {
        0x12 | 0x1c => be(3, 2),
        0x03 | 0x1a => be(4, 1),
        0x5a | 0x5e | 0x4d => be(7, 2),
        0xa0 | 0xa3 => be(6, 4),
        0x9e => be(10, 4),
        0x25 => 8,
        _ => return None,
    })
}

/// (LBA, blocks) of the READs and WRITEs the model follows.
fn extent(cdb: &[u8; 16]) -> Option<(u64, u64)> {
    let be = |o: usize, n: usize| cdb[o..o + n].iter().fold(0u64, |a, &b| a << 8 | b as u64);
    match cdb[0] {
        0x28 | 0x2a => Some((be(2, 4), be(7, 2))),
        0x88 | 0x8a => Some((be(2, 8), be(10, 4))),
        _ => None,
    }
}

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let bs: u32 = if inp.bit() { 4096 } else { 512 };
    let mut c = LuConfig::new(0, "fuzz-cdb", "iqn.2026-12.org.rbdgw:fuzz");
    c.block_size = bs;
    c.read_only = inp.one_in(8);
    let lu = Arc::new(LogicalUnit::new(
        c,
        FileDevice::memory(IMAGE as u64).expect("a memfd"),
    ));
    let nexus: Vec<ItNexus> = (1..=3u8)
        .map(|n| ItNexus {
            initiator: format!("iqn.2026-12.org.rbdgw:i{n}").into(),
            isid: [0x40, 0, 0, 0, 0, n],
            relative_port: 1 + n as u16 % 2,
        })
        .collect();
    // What the image holds, while the model can tell.
    let mut model: Option<Vec<u8>> = Some(vec![0; IMAGE]);
    let rt = crate::runtime();
    while !inp.is_empty() {
        let n = &nexus[inp.u8() as usize % nexus.len()];
        let mut cdb: [u8; 16] = inp.array();
        let spdtl = scsi::data_out_length(&cdb, bs);
        let edtl = match inp.u8() {
            0..=191 => spdtl.min(MAX_DATA as u64) as u32,
            _ => inp.u32() % MAX_DATA,
        };
        if spdtl > edtl as u64 {
            scsi::sbc::truncate_write(&mut cdb, edtl / bs);
        }
        let keep = scsi::data_out_length(&cdb, bs).min(edtl as u64) as usize;
        let seed = inp.u8();
        let payload = Bytes::from((0..keep).map(|i| seed ^ (i as u8)).collect::<Vec<u8>>());
        let cmd = ScsiCommand {
            cdb: &cdb,
            nexus: n,
            data_out: payload.clone().into(),
            transfer_length: edtl,
        };
        let resp = rt.block_on(lu.execute(&cmd));
        let data = match &resp.data_file {
            Some(f) => f.read().expect("read data from its file"),
            None => resp.data.clone(),
        };
        match resp.status {
            ScsiStatus::CheckCondition => assert!(
                resp.sense.is_some(),
                "CHECK CONDITION without sense: {cdb:02x?}"
            ),
            ScsiStatus::Good => {}
            s => assert!(
                data.is_empty(),
                "{s:?} with {} bytes of data: {cdb:02x?}",
                data.len()
            ),
        }
        if resp.status != ScsiStatus::Good {
            continue;
        }
        if let Some(alloc) = allocation_length(&cdb) {
            assert!(
                data.len() <= alloc,
                "{} bytes of data-in for allocation length {alloc}: {cdb:02x?}",
                data.len()
            );
        }
        let op = cdb[0];
        match (extent(&cdb), &mut model) {
            (Some((lba, blocks)), Some(m)) if op == 0x28 || op == 0x88 => {
                let (start, len) = ((lba * bs as u64) as usize, (blocks * bs as u64) as usize);
                assert_eq!(
                    data.len(),
                    len,
                    "READ returned {} bytes for {blocks} blocks",
                    data.len()
                );
                assert!(
                    data[..] == m[start..start + len],
                    "READ of LBA {lba} +{blocks} differs from what was written"
                );
            }
            (Some((lba, blocks)), Some(m)) => {
                let (start, len) = ((lba * bs as u64) as usize, (blocks * bs as u64) as usize);
                assert!(
                    payload.len() >= len,
                    "a WRITE of {len} bytes done with {}",
                    payload.len()
                );
                m[start..start + len].copy_from_slice(&payload[..len]);
            }
            _ if !preserves_data(op) => model = None,
            _ => {}
        }
    }
}
