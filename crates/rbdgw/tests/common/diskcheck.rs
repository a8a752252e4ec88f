//! The diskchecker method for crash consistency: a pipelined writer puts sequence-numbered
//! 4 KiB blocks in slots of the LU, some with FUA, the rest made durable by a SYNCHRONIZE
//! CACHE, and records what the target acknowledged, until the gateway dies under it. Then
//! every sector of every slot is read back (through any gateway) and must come from a write
//! at least as new as the newest one that was durable: acknowledged with FUA, or
//! acknowledged before a SYNCHRONIZE CACHE that completed GOOD (SBC-3 §5.24).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use iscsi::pdu::{Bhs, Opcode, Pdu};

use super::client::Client;

const SECTOR: usize = 512;
const BLOCK: usize = 4096;
const MAGIC: u64 = 0x6469_736b_6368_6b21; // "diskchk!"

/// One writer's history.
pub struct DiskCheck {
    /// LBA of slot 0, in 512-byte sectors; slots are 8 sectors apart.
    pub base: u32,
    pub slots: u32,
    /// Per slot, the newest sequence number known durable (0: none).
    durable: Vec<u64>,
    /// Per slot, every sequence number written there (the last one possibly in flight).
    written: Vec<Vec<u64>>,
    pub acked: u64,
    pub fua_acked: u64,
    pub syncs: u64,
    /// Commands in flight when the connection broke.
    pub in_flight_at_crash: usize,
}

/// A write in flight.
struct Pending {
    slot: u32,
    seq: u64,
    fua: bool,
    data: Bytes,
}

fn block(slot: u32, seq: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    for (i, s) in b.chunks_mut(SECTOR).enumerate() {
        s[..8].copy_from_slice(&MAGIC.to_be_bytes());
        s[8..12].copy_from_slice(&slot.to_be_bytes());
        s[12..20].copy_from_slice(&seq.to_be_bytes());
        s[20] = i as u8;
        let fill = (seq as u8) ^ (slot as u8) ^ (i as u8);
        s[21..].fill(fill);
    }
    b
}

/// What a sector holds: Some((slot, seq)) for an intact sector of ours, None for zeroes;
/// panics on anything else (a torn or foreign sector).
fn sector(s: &[u8], slot: u32, index: usize) -> Option<u64> {
    if s.iter().all(|&b| b == 0) {
        return None;
    }
    let seq = u64::from_be_bytes(s[12..20].try_into().unwrap());
    assert_eq!(
        s,
        &block(slot, seq)[index * SECTOR..(index + 1) * SECTOR],
        "slot {slot} sector {index}: neither zero nor an intact sector of write {seq}"
    );
    Some(seq)
}

fn cdb(op: u8, lba: u32, blocks: u16, fua: bool) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    [
        op,
        if fua { 0x08 } else { 0 },
        l[0],
        l[1],
        l[2],
        l[3],
        0,
        n[0],
        n[1],
        0,
    ]
}

impl DiskCheck {
    pub fn new(base: u32, slots: u32) -> Self {
        DiskCheck {
            base,
            slots,
            durable: vec![0; slots as usize],
            written: vec![Vec::new(); slots as usize],
            acked: 0,
            fua_acked: 0,
            syncs: 0,
            in_flight_at_crash: 0,
        }
    }

    fn lba(&self, slot: u32) -> u32 {
        self.base + slot * (BLOCK / SECTOR) as u32
    }

    /// Writes with up to `depth` commands in flight until the connection breaks (or
    /// `limit` passes); `crash` is called once, after `crash_after`, from this thread.
    pub fn write_until_crash(
        &mut self,
        c: &mut Client,
        depth: usize,
        crash_after: Duration,
        crash: impl FnOnce(),
    ) {
        let start = Instant::now();
        let mut crash = Some(crash);
        let mut pending: HashMap<u32, Pending> = HashMap::new();
        // Writes acknowledged without FUA since the last SYNCHRONIZE CACHE was sent, and
        // those a SYNCHRONIZE CACHE in flight covers (by its ITT).
        let mut unsynced: Vec<(u32, u64)> = Vec::new();
        let mut syncing: HashMap<u32, Vec<(u32, u64)>> = HashMap::new();
        let mut seq = *self.written.iter().flatten().max().unwrap_or(&0);
        let mut busy = vec![false; self.slots as usize];
        let mut rng = 0x2545_f491_4f6c_dd1du64 ^ start.elapsed().as_nanos() as u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut sent = 0u64;
        loop {
            if start.elapsed() >= crash_after {
                if let Some(f) = crash.take() {
                    f();
                }
            }
            assert!(
                start.elapsed() < crash_after + Duration::from_secs(60),
                "the connection outlived the crash by a minute"
            );
            while pending.len() + syncing.len() < depth {
                sent += 1;
                if sent.is_multiple_of(16) {
                    let pdu = c.scsi_command(
                        0,
                        &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                        false,
                        false,
                        0,
                        Bytes::new(),
                    );
                    syncing.insert(pdu.bhs.itt(), std::mem::take(&mut unsynced));
                    if c.send_raw(&pdu.to_bytes(c.header_digest, c.data_digest))
                        .is_err()
                    {
                        break;
                    }
                    continue;
                }
                let slot = loop {
                    let s = (next() % self.slots as u64) as u32;
                    if !busy[s as usize] {
                        break s;
                    }
                };
                seq += 1;
                let fua = next() % 2 == 0;
                let data = Bytes::from(block(slot, seq));
                let pdu = c.scsi_command(
                    0,
                    &cdb(0x2a, self.lba(slot), 8, fua),
                    false,
                    true,
                    BLOCK as u32,
                    data.clone(),
                );
                busy[slot as usize] = true;
                self.written[slot as usize].push(seq);
                pending.insert(
                    pdu.bhs.itt(),
                    Pending {
                        slot,
                        seq,
                        fua,
                        data,
                    },
                );
                if c.send_raw(&pdu.to_bytes(c.header_digest, c.data_digest))
                    .is_err()
                {
                    break;
                }
            }
            let Some(p) = c.recv_timeout(Duration::from_secs(5)) else {
                break;
            };
            let itt = p.bhs.itt();
            match p.bhs.opcode() {
                Some(Opcode::ReadyToTransfer) => {
                    let Some(w) = pending.get(&itt) else { continue };
                    let (off, len) = (
                        p.bhs.buffer_offset() as usize,
                        p.bhs.residual_count() as usize,
                    );
                    let mut bhs = Bhs::new(Opcode::DataOut);
                    bhs.set_lun_raw(0)
                        .set_itt(itt)
                        .set_ttt(p.bhs.ttt())
                        .set_data_sn(0)
                        .set_buffer_offset(off as u32);
                    let pdu = Pdu::with_data(bhs, w.data.slice(off..off + len));
                    if c.send_raw(&pdu.to_bytes(c.header_digest, c.data_digest))
                        .is_err()
                    {
                        break;
                    }
                }
                Some(Opcode::ScsiResponse) => {
                    let good = p.bhs.0[2] == 0 && p.bhs.0[3] == 0;
                    if let Some(w) = pending.remove(&itt) {
                        busy[w.slot as usize] = false;
                        if good {
                            self.acked += 1;
                            if w.fua {
                                self.fua_acked += 1;
                                let d = &mut self.durable[w.slot as usize];
                                *d = (*d).max(w.seq);
                            } else {
                                unsynced.push((w.slot, w.seq));
                            }
                        }
                    } else if let Some(covered) = syncing.remove(&itt) {
                        if good {
                            self.syncs += 1;
                            for (slot, s) in covered {
                                let d = &mut self.durable[slot as usize];
                                *d = (*d).max(s);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        assert!(crash.is_none(), "the connection broke before the crash");
        self.in_flight_at_crash = pending.len() + syncing.len();
    }

    /// Reads every slot through `c` and checks it against what was durable; returns how
    /// many slots hold a write newer than the newest durable one (acknowledged or not).
    pub fn verify(&self, c: &mut Client, through: &str) -> usize {
        let mut newer = 0;
        for slot in 0..self.slots {
            let o = c.scsi_ready(0, &cdb(0x28, self.lba(slot), 8, false), &[], BLOCK as u32);
            assert_eq!(o.status, 0, "READ of slot {slot} through {through}: {o:?}");
            let durable = self.durable[slot as usize];
            let mut newest = 0;
            for (i, s) in o.data.chunks(SECTOR).enumerate() {
                let got = sector(s, slot, i);
                match got {
                    None => assert_eq!(
                        durable, 0,
                        "slot {slot} sector {i} through {through}: zero, but write {durable} was durable"
                    ),
                    Some(seq) => {
                        assert!(
                            self.written[slot as usize].contains(&seq),
                            "slot {slot} sector {i}: write {seq} was never sent there"
                        );
                        assert!(
                            seq >= durable,
                            "slot {slot} sector {i} through {through}: write {seq}, older than durable write {durable}"
                        );
                        newest = newest.max(seq);
                    }
                }
            }
            if newest > durable {
                newer += 1;
            }
        }
        newer
    }
}
