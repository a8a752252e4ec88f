//! Collecting a SCSI command's data-out buffer (RFC 7143 §4.2.3.1, §11.7, §11.8):
//! immediate data, unsolicited Data-Out up to FirstBurstLength, then solicited Data-Out in
//! bursts of at most MaxBurstLength, each asked for by an R2T, with at most MaxOutstandingR2T
//! R2Ts in flight.
//!
//! [`WriteTransfer`] is a state machine: the driver feeds it Data-Out PDUs and sends the R2Ts
//! it asks for; it never touches a socket.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use crate::pdu::RESERVED_TAG;

/// The negotiated keys that shape a transfer.
#[derive(Debug, Clone, Copy)]
pub struct TransferParams {
    pub initial_r2t: bool,
    pub first_burst_length: u32,
    pub max_burst_length: u32,
    pub max_outstanding_r2t: u32,
}

/// An R2T to send (RFC 7143 §11.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct R2t {
    pub ttt: u32,
    pub r2t_sn: u32,
    pub offset: u32,
    pub len: u32,
}

/// Data-Out PDUs that break the sequence rules. At error recovery level 0 these end the
/// connection (RFC 7143 §7.1.4.1: the target cannot ask for a retransmission).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DataOutError {
    #[error("Data-Out with target transfer tag {0:#x} that no R2T gave")]
    UnknownTtt(u32),
    #[error("Data-Out DataSN {got}, expected {expected}")]
    DataSn { expected: u32, got: u32 },
    #[error("Data-Out at offset {offset}+{len} outside the burst {start}+{burst}")]
    Offset {
        offset: u32,
        len: u32,
        start: u32,
        burst: u32,
    },
    #[error("unsolicited Data-Out that was not allowed")]
    Unsolicited,
    #[error("R2T burst {ttt:#x} ended (F bit) after {received} of its {len} bytes")]
    ShortBurst { ttt: u32, received: u32, len: u32 },
}

#[derive(Debug, Clone)]
struct Burst {
    ttt: u32,
    offset: u32,
    len: u32,
    next_sn: u32,
    received: u32,
}

/// The data-out side of one write-direction SCSI command.
#[derive(Debug)]
pub struct WriteTransfer {
    /// The data kept for the command (the rest, beyond what the command needs, is discarded)
    /// as it arrives in order from offset 0: the PDUs' data segments themselves, not copied.
    parts: Vec<Bytes>,
    /// Bytes in `parts`.
    filled: usize,
    /// Data of a later burst that came before an earlier one was complete, by offset: kept
    /// as received (never a buffer allocated ahead of its data) until the gap before it fills.
    ahead: BTreeMap<usize, Bytes>,
    /// How many bytes the command needs.
    keep: usize,
    /// We solicit data up to this offset.
    solicit_end: u32,
    unsolicited: Option<Burst>,
    next_offset: u32,
    r2t_sn: u32,
    bursts: Vec<Burst>,
    received: u64,
}

impl WriteTransfer {
    /// Starts a transfer: `edtl` is the command's Expected Data Transfer Length, `keep` how
    /// many bytes of it the command needs (at most `edtl`), `immediate` the command PDU's
    /// data segment and `final_bit` its F bit (set when no unsolicited Data-Out follows).
    pub fn new(
        edtl: u32,
        keep: u32,
        immediate: Bytes,
        final_bit: bool,
        p: &TransferParams,
    ) -> Self {
        let keep = keep.min(edtl);
        let mut t = WriteTransfer {
            parts: Vec::new(),
            filled: 0,
            ahead: BTreeMap::new(),
            keep: keep as usize,
            solicit_end: keep,
            unsolicited: None,
            next_offset: 0,
            r2t_sn: 0,
            bursts: Vec::new(),
            received: 0,
        };
        let imm = (immediate.len() as u32).min(edtl);
        t.store(0, immediate);
        t.next_offset = imm;
        if !p.initial_r2t && !final_bit {
            let limit = p.first_burst_length.min(edtl);
            if limit > imm {
                t.unsolicited = Some(Burst {
                    ttt: RESERVED_TAG,
                    offset: imm,
                    len: limit - imm,
                    next_sn: 0,
                    received: 0,
                });
            }
        }
        t
    }

    fn store(&mut self, offset: u32, data: Bytes) {
        self.received += data.len() as u64;
        let start = offset as usize;
        if start >= self.keep || data.is_empty() {
            return;
        }
        let data = data.slice(..data.len().min(self.keep - start));
        if start > self.filled {
            self.ahead.insert(start, data);
            return;
        }
        // (Bursts never overlap and a burst's PDUs are contiguous: nothing before `filled`
        // comes twice, but a stray repeat is dropped rather than trusted.)
        let data = data.slice((self.filled - start).min(data.len())..);
        self.filled += data.len();
        if !data.is_empty() {
            self.parts.push(data);
        }
        while let Some(next) = self.ahead.first_entry().filter(|e| *e.key() <= self.filled) {
            let (at, d) = next.remove_entry();
            let d = d.slice((self.filled - at).min(d.len())..);
            self.filled += d.len();
            if !d.is_empty() {
                self.parts.push(d);
            }
        }
    }

    /// The R2Ts to send now; `next_ttt` hands out target transfer tags.
    pub fn next_r2ts(&mut self, p: &TransferParams, next_ttt: &mut dyn FnMut() -> u32) -> Vec<R2t> {
        let mut out = Vec::new();
        if self.unsolicited.is_some() {
            return out;
        }
        while self.next_offset < self.solicit_end
            && (self.bursts.len() as u32) < p.max_outstanding_r2t.max(1)
        {
            let len = (self.solicit_end - self.next_offset).min(p.max_burst_length.max(512));
            let ttt = next_ttt();
            let r = R2t {
                ttt,
                r2t_sn: self.r2t_sn,
                offset: self.next_offset,
                len,
            };
            self.r2t_sn += 1;
            self.bursts.push(Burst {
                ttt,
                offset: r.offset,
                len,
                next_sn: 0,
                received: 0,
            });
            self.next_offset += len;
            out.push(r);
        }
        out
    }

    /// Takes one Data-Out PDU (RFC 7143 §11.7).
    pub fn on_data_out(
        &mut self,
        ttt: u32,
        data_sn: u32,
        offset: u32,
        data: Bytes,
        final_bit: bool,
    ) -> Result<(), DataOutError> {
        let (burst, unsolicited) = if ttt == RESERVED_TAG {
            (
                self.unsolicited.as_mut().ok_or(DataOutError::Unsolicited)?,
                true,
            )
        } else {
            (
                self.bursts
                    .iter_mut()
                    .find(|b| b.ttt == ttt)
                    .ok_or(DataOutError::UnknownTtt(ttt))?,
                false,
            )
        };
        if data_sn != burst.next_sn {
            return Err(DataOutError::DataSn {
                expected: burst.next_sn,
                got: data_sn,
            });
        }
        let len = data.len() as u32;
        let end = offset as u64 + len as u64;
        // DataPDUInOrder=Yes (the only value rbdgw negotiates, RFC 7143 §13.19): a burst's PDUs
        // come at continuously increasing offsets with no gaps, so each one starts where the
        // last ended.
        if offset != burst.offset + burst.received || end > burst.offset as u64 + burst.len as u64 {
            return Err(DataOutError::Offset {
                offset,
                len,
                start: burst.offset + burst.received,
                burst: burst.len - burst.received,
            });
        }
        burst.next_sn += 1;
        burst.received += len;
        // An R2T asks for exactly its length (RFC 7143 §11.8.5); only unsolicited data may end
        // early, the rest being solicited.
        if final_bit && !unsolicited && burst.received < burst.len {
            return Err(DataOutError::ShortBurst {
                ttt,
                received: burst.received,
                len: burst.len,
            });
        }
        let done = final_bit || burst.received >= burst.len;
        let (b_ttt, b_end) = (burst.ttt, burst.offset + burst.received);
        self.store(offset, data);
        if done {
            if unsolicited {
                self.unsolicited = None;
                // Solicit the rest from where the unsolicited data ended.
                self.next_offset = self.next_offset.max(b_end);
            } else {
                self.bursts.retain(|b| b.ttt != b_ttt);
            }
        }
        Ok(())
    }

    /// Every byte the command needs has arrived.
    pub fn is_complete(&self) -> bool {
        self.unsolicited.is_none() && self.bursts.is_empty() && self.next_offset >= self.solicit_end
    }

    /// Bytes of data-out held for the command: never more than it needs.
    pub fn buffered(&self) -> u64 {
        (self.filled + self.ahead.values().map(Bytes::len).sum::<usize>()) as u64
    }

    /// Number of R2Ts sent so far (for ExpDataSN in the SCSI Response).
    pub fn r2t_count(&self) -> u32 {
        self.r2t_sn
    }

    /// The data-out buffer, in order: the data segments as they came, or one buffer if they
    /// came out of order. What never came (a short transfer) reads as zeroes, never as
    /// whatever memory held before.
    pub fn into_data(mut self) -> Vec<Bytes> {
        if self.ahead.is_empty() && self.filled == self.keep {
            return self.parts;
        }
        // Gaps (data that never came: unsolicited data ended early and nothing solicited the
        // rest) read as zeroes, never as whatever memory held before.
        let mut buf = BytesMut::zeroed(self.keep);
        buf[..self.filled].copy_from_slice(&self.parts.concat());
        for (at, d) in std::mem::take(&mut self.ahead) {
            buf[at..at + d.len()].copy_from_slice(&d);
        }
        vec![buf.freeze()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(v: u8, n: usize) -> Bytes {
        Bytes::from(vec![v; n])
    }

    fn flat(parts: Vec<Bytes>) -> Vec<u8> {
        parts.concat()
    }

    fn params(initial_r2t: bool) -> TransferParams {
        TransferParams {
            initial_r2t,
            first_burst_length: 1024,
            max_burst_length: 2048,
            max_outstanding_r2t: 2,
        }
    }

    /// Within a burst, data comes in order (DataPDUInOrder=Yes): a PDU anywhere but where the
    /// last ended is a sequence error, and nothing is allocated for it. A later burst's data
    /// may come before an earlier burst is complete; it lands where its offset says.
    #[test]
    fn data_in_order_within_a_burst_any_order_across_bursts() {
        let p = params(false);
        let mut t = WriteTransfer::new(12, 12, Bytes::new(), false, &p);
        assert!(matches!(
            t.on_data_out(RESERVED_TAG, 0, 8, b(3, 4), false),
            Err(DataOutError::Offset { start: 0, .. })
        ));
        let p = params(true);
        let mut t = WriteTransfer::new(4096, 4096, Bytes::new(), true, &p);
        let r = t.next_r2ts(&p, &mut || 1);
        assert_eq!(r.len(), 2);
        // The sparse write of an attacker: one small PDU far into the burst.
        assert!(matches!(
            t.on_data_out(r[0].ttt, 0, 1500, b(9, 16), true),
            Err(DataOutError::Offset { .. })
        ));
        let mut t = WriteTransfer::new(4096, 4096, Bytes::new(), true, &p);
        let mut tag = 0;
        let r = t.next_r2ts(&p, &mut || {
            tag += 1;
            tag
        });
        t.on_data_out(r[1].ttt, 0, 2048, b(2, 2048), true).unwrap();
        t.on_data_out(r[0].ttt, 0, 0, b(1, 1024), false).unwrap();
        t.on_data_out(r[0].ttt, 1, 1024, b(1, 1024), true).unwrap();
        assert!(t.is_complete());
        let d = flat(t.into_data());
        assert_eq!(
            (d[0], d[2047], d[2048], d[4095], d.len()),
            (1, 1, 2, 2, 4096)
        );
    }

    /// An R2T's burst ended early by its F bit is an error; unsolicited data may end early,
    /// the rest is solicited, and what never came reads as zeroes.
    #[test]
    fn short_bursts() {
        let p = params(true);
        let mut t = WriteTransfer::new(1024, 1024, Bytes::new(), true, &p);
        t.next_r2ts(&p, &mut || 3);
        assert_eq!(
            t.on_data_out(3, 0, 0, b(1, 512), true),
            Err(DataOutError::ShortBurst {
                ttt: 3,
                received: 512,
                len: 1024
            })
        );
        let p = params(false);
        let mut t = WriteTransfer::new(2048, 2048, Bytes::new(), false, &p);
        t.on_data_out(RESERVED_TAG, 0, 0, b(5, 512), true).unwrap();
        let r = t.next_r2ts(&p, &mut || 4);
        assert_eq!((r[0].offset, r[0].len), (512, 1536));
        t.on_data_out(4, 0, 512, b(6, 1536), true).unwrap();
        assert!(t.is_complete());
        let d = flat(t.into_data());
        assert_eq!((d[511], d[512], d.len()), (5, 6, 2048));
    }

    /// Data in order is handed on as the PDUs' own segments: no copy.
    #[test]
    fn in_order_data_is_not_copied() {
        let p = params(true);
        let (imm, later) = (b(1, 512), b(2, 512));
        let mut t = WriteTransfer::new(1024, 1024, imm.clone(), false, &p);
        let r = t.next_r2ts(&p, &mut || 5);
        assert_eq!((r[0].offset, r[0].len), (512, 512));
        t.on_data_out(5, 0, 512, later.clone(), true).unwrap();
        assert!(t.is_complete());
        let parts = t.into_data();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].as_ptr(), imm.as_ptr());
        assert_eq!(parts[1].as_ptr(), later.as_ptr());
    }

    #[test]
    fn immediate_unsolicited_and_solicited() {
        let p = params(false);
        let mut t = WriteTransfer::new(8192, 8192, b(1u8, 512), false, &p);
        let mut tag = 10;
        let mut next = || {
            tag += 1;
            tag
        };
        assert!(
            t.next_r2ts(&p, &mut next).is_empty(),
            "unsolicited data first"
        );
        t.on_data_out(RESERVED_TAG, 0, 512, b(2u8, 512), true)
            .unwrap();
        let r = t.next_r2ts(&p, &mut next);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].offset, r[0].len, r[0].r2t_sn), (1024, 2048, 0));
        assert_eq!((r[1].offset, r[1].len, r[1].r2t_sn), (3072, 2048, 1));
        t.on_data_out(r[0].ttt, 0, 1024, b(3u8, 1024), false)
            .unwrap();
        t.on_data_out(r[0].ttt, 1, 2048, b(3u8, 1024), true)
            .unwrap();
        let r2 = t.next_r2ts(&p, &mut next);
        assert_eq!((r2[0].offset, r2[0].len), (5120, 2048));
        t.on_data_out(r[1].ttt, 0, 3072, b(4u8, 2048), true)
            .unwrap();
        let r3 = t.next_r2ts(&p, &mut next);
        assert_eq!((r3[0].offset, r3[0].len), (7168, 1024));
        t.on_data_out(r2[0].ttt, 0, 5120, b(5u8, 2048), true)
            .unwrap();
        assert!(!t.is_complete());
        t.on_data_out(r3[0].ttt, 0, 7168, b(6u8, 1024), true)
            .unwrap();
        assert!(t.is_complete());
        let d = flat(t.into_data());
        assert_eq!(d[0], 1);
        assert_eq!(d[600], 2);
        assert_eq!(d[8191], 6);
    }

    #[test]
    fn sequence_errors() {
        let p = params(true);
        let mut t = WriteTransfer::new(1024, 1024, Bytes::new(), true, &p);
        assert_eq!(
            t.on_data_out(RESERVED_TAG, 0, 0, b(0, 512), true),
            Err(DataOutError::Unsolicited)
        );
        let r = t.next_r2ts(&p, &mut || 7);
        assert_eq!(
            t.on_data_out(9, 0, 0, b(0, 512), false),
            Err(DataOutError::UnknownTtt(9))
        );
        assert!(matches!(
            t.on_data_out(r[0].ttt, 1, 0, b(0, 512), false),
            Err(DataOutError::DataSn { .. })
        ));
        assert!(matches!(
            t.on_data_out(r[0].ttt, 0, 900, b(0, 512), false),
            Err(DataOutError::Offset { .. })
        ));
    }

    #[test]
    fn keeps_only_what_the_command_needs() {
        let p = params(true);
        // EDTL 10000 for a one-block write: solicit 512 only.
        let mut t = WriteTransfer::new(10000, 512, Bytes::new(), true, &p);
        let r = t.next_r2ts(&p, &mut || 1);
        assert_eq!(
            r,
            vec![R2t {
                ttt: 1,
                r2t_sn: 0,
                offset: 0,
                len: 512
            }]
        );
        t.on_data_out(1, 0, 0, b(9, 512), true).unwrap();
        assert!(t.is_complete());
        assert_eq!(flat(t.into_data()).len(), 512);
        // Nothing to collect at all.
        assert!(WriteTransfer::new(0, 0, Bytes::new(), true, &p).is_complete());
    }
}
