//! PDU framing (RFC 7143 §11): the 48-byte Basic Header Segment, additional header segments, the
//! data segment padded to a multiple of four bytes, and optional CRC32C digests (RFC 7143 §11.1,
//! §13.1 HeaderDigest/DataDigest).
//!
//! [`PduDecoder::decode`] follows mini-redis' `Frame::check`/`parse` split: it returns `Ok(None)`
//! until a whole PDU is buffered, and never panics on hostile input.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;
/// The DataSegmentLength field has 24 bits: nothing larger can ever be framed.
pub const MAX_DATA_SEGMENT: usize = (1 << 24) - 1;
/// Initiator Task Tag / Target Transfer Tag value meaning "none" (RFC 7143 §11.18, §11.19).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// iSCSI opcodes (RFC 7143 §11.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    NopOut = 0x00,
    ScsiCommand = 0x01,
    TaskMgmtRequest = 0x02,
    LoginRequest = 0x03,
    TextRequest = 0x04,
    DataOut = 0x05,
    LogoutRequest = 0x06,
    SnackRequest = 0x10,
    NopIn = 0x20,
    ScsiResponse = 0x21,
    TaskMgmtResponse = 0x22,
    LoginResponse = 0x23,
    TextResponse = 0x24,
    DataIn = 0x25,
    LogoutResponse = 0x26,
    ReadyToTransfer = 0x31,
    AsyncMessage = 0x32,
    Reject = 0x3f,
}

impl Opcode {
    pub fn from_u8(v: u8) -> Option<Opcode> {
        use Opcode::*;
        Some(match v & 0x3f {
            0x00 => NopOut,
            0x01 => ScsiCommand,
            0x02 => TaskMgmtRequest,
            0x03 => LoginRequest,
            0x04 => TextRequest,
            0x05 => DataOut,
            0x06 => LogoutRequest,
            0x10 => SnackRequest,
            0x20 => NopIn,
            0x21 => ScsiResponse,
            0x22 => TaskMgmtResponse,
            0x23 => LoginResponse,
            0x24 => TextResponse,
            0x25 => DataIn,
            0x26 => LogoutResponse,
            0x31 => ReadyToTransfer,
            0x32 => AsyncMessage,
            0x3f => Reject,
            _ => return None,
        })
    }

    /// Opcodes an initiator may send (RFC 7143 §11.1.1).
    pub fn is_initiator(self) -> bool {
        (self as u8) < 0x20
    }
}

/// Reject reasons (RFC 7143 §11.17.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RejectReason {
    DataDigestError = 0x02,
    SnackReject = 0x03,
    ProtocolError = 0x04,
    CommandNotSupported = 0x05,
    ImmediateCommandReject = 0x06,
    TaskInProgress = 0x07,
    InvalidDataAck = 0x08,
    InvalidPduField = 0x09,
    LongOperationReject = 0x0a,
    WaitingForLogout = 0x0c,
}

/// The Basic Header Segment. Field accessors name the field as RFC 7143 §11 does; where several
/// PDUs keep different fields at one offset the accessor says which PDUs it applies to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bhs(pub [u8; BHS_LEN]);

impl std::fmt::Debug for Bhs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Bhs({:?} itt={:#x} len={})",
            self.opcode(),
            self.itt(),
            self.data_segment_len()
        )
    }
}

impl Default for Bhs {
    fn default() -> Self {
        Bhs([0; BHS_LEN])
    }
}

macro_rules! u32_field {
    ($get:ident, $set:ident, $off:expr, $doc:expr) => {
        #[doc = $doc]
        pub fn $get(&self) -> u32 {
            self.u32_at($off)
        }
        #[doc = $doc]
        pub fn $set(&mut self, v: u32) -> &mut Self {
            self.set_u32_at($off, v);
            self
        }
    };
}

impl Bhs {
    /// A header for a target PDU: opcode set, the final bit set, tags "none".
    pub fn new(op: Opcode) -> Self {
        let mut b = Bhs::default();
        b.0[0] = op as u8;
        b.0[1] = 0x80;
        b.set_itt(RESERVED_TAG);
        b
    }

    pub fn u32_at(&self, off: usize) -> u32 {
        u32::from_be_bytes([
            self.0[off],
            self.0[off + 1],
            self.0[off + 2],
            self.0[off + 3],
        ])
    }

    pub fn set_u32_at(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_be_bytes());
    }

    pub fn u16_at(&self, off: usize) -> u16 {
        u16::from_be_bytes([self.0[off], self.0[off + 1]])
    }

    pub fn set_u16_at(&mut self, off: usize, v: u16) {
        self.0[off..off + 2].copy_from_slice(&v.to_be_bytes());
    }

    pub fn opcode_raw(&self) -> u8 {
        self.0[0] & 0x3f
    }

    pub fn opcode(&self) -> Option<Opcode> {
        Opcode::from_u8(self.0[0])
    }

    /// The I bit: an immediate command (RFC 7143 §11.1.1.1).
    pub fn immediate(&self) -> bool {
        self.0[0] & 0x40 != 0
    }

    /// The F bit (final) of most PDUs, the T bit (transit) of login PDUs.
    pub fn final_bit(&self) -> bool {
        self.0[1] & 0x80 != 0
    }

    pub fn set_final(&mut self, on: bool) -> &mut Self {
        if on {
            self.0[1] |= 0x80
        } else {
            self.0[1] &= !0x80
        }
        self
    }

    /// Byte 1 (flags and opcode-specific bits).
    pub fn flags(&self) -> u8 {
        self.0[1]
    }

    pub fn set_flags(&mut self, v: u8) -> &mut Self {
        self.0[1] = v;
        self
    }

    pub fn total_ahs_len(&self) -> usize {
        self.0[4] as usize * 4
    }

    pub fn data_segment_len(&self) -> usize {
        (self.0[5] as usize) << 16 | (self.0[6] as usize) << 8 | self.0[7] as usize
    }

    pub fn set_data_segment_len(&mut self, len: usize) -> &mut Self {
        debug_assert!(len <= MAX_DATA_SEGMENT);
        self.0[5] = (len >> 16) as u8;
        self.0[6] = (len >> 8) as u8;
        self.0[7] = len as u8;
        self
    }

    /// Bytes 8..16: the LUN field (SCSI Command, Data, NOP, Task Management, R2T, Async).
    pub fn lun_raw(&self) -> u64 {
        u64::from_be_bytes(self.0[8..16].try_into().expect("8 bytes"))
    }

    pub fn set_lun_raw(&mut self, v: u64) -> &mut Self {
        self.0[8..16].copy_from_slice(&v.to_be_bytes());
        self
    }

    u32_field!(
        itt,
        set_itt,
        16,
        "Initiator Task Tag (all PDUs but Reject's reserved one)."
    );
    u32_field!(ttt, set_ttt, 20, "Target Transfer Tag (Data, R2T, NOP, Text); Referenced Task Tag (TMF); Expected Data Transfer Length (SCSI Command).");
    u32_field!(cmd_sn, set_cmd_sn, 24, "CmdSN (initiator requests).");
    u32_field!(stat_sn, set_stat_sn, 24, "StatSN (target responses).");
    u32_field!(
        exp_stat_sn,
        set_exp_stat_sn,
        28,
        "ExpStatSN (initiator requests)."
    );
    u32_field!(
        exp_cmd_sn,
        set_exp_cmd_sn,
        28,
        "ExpCmdSN (target responses)."
    );
    u32_field!(
        max_cmd_sn,
        set_max_cmd_sn,
        32,
        "MaxCmdSN (target responses); RefCmdSN (TMF request)."
    );
    u32_field!(
        data_sn,
        set_data_sn,
        36,
        "DataSN (Data-In/Out), R2TSN (R2T), ExpDataSN (SCSI Response, TMF request)."
    );
    u32_field!(
        buffer_offset,
        set_buffer_offset,
        40,
        "Buffer Offset (Data-In/Out, R2T)."
    );
    u32_field!(
        residual_count,
        set_residual_count,
        44,
        "Residual Count (Data-In, SCSI Response); Desired Data Transfer Length (R2T)."
    );

    /// Expected Data Transfer Length of a SCSI Command (RFC 7143 §11.3.4).
    pub fn expected_data_transfer_length(&self) -> u32 {
        self.u32_at(20)
    }

    /// The 16-byte CDB field of a SCSI Command (RFC 7143 §11.3.5).
    pub fn cdb(&self) -> &[u8] {
        &self.0[32..48]
    }

    /// Total length of this PDU on the wire, digests included.
    pub fn wire_len(&self, header_digest: bool, data_digest: bool) -> usize {
        let data = self.data_segment_len();
        let mut n = BHS_LEN + self.total_ahs_len() + pad4(data);
        if header_digest {
            n += 4;
        }
        if data_digest && data > 0 {
            n += 4;
        }
        n
    }
}

/// `n` rounded up to a multiple of four (RFC 7143 §11.1: segments are padded to 4 bytes).
pub fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// CRC32C as iSCSI uses it (RFC 7143 §13.1, Appendix B): the Castagnoli polynomial with the
/// standard reflected, inverted presentation, which is what `crc32c` computes.
pub fn crc32c(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0, |crc, p| crc32c::crc32c_append(crc, p))
}

/// A whole PDU: header, additional header segments and data segment (without padding).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pdu {
    pub bhs: Bhs,
    pub ahs: Bytes,
    pub data: Bytes,
}

impl Pdu {
    pub fn new(bhs: Bhs) -> Self {
        Pdu {
            bhs,
            ahs: Bytes::new(),
            data: Bytes::new(),
        }
    }

    /// A PDU with a data segment; DataSegmentLength is set from `data`.
    pub fn with_data(mut bhs: Bhs, data: Bytes) -> Self {
        bhs.set_data_segment_len(data.len());
        Pdu {
            bhs,
            ahs: Bytes::new(),
            data,
        }
    }

    /// Appends the wire form of this PDU to `out`. DataSegmentLength and TotalAHSLength are
    /// taken from the segments themselves.
    pub fn encode(&self, out: &mut BytesMut, header_digest: bool, data_digest: bool) {
        out.reserve(self.bhs.wire_len(header_digest, data_digest) + self.data.len());
        self.encode_head(out, header_digest);
        out.put_slice(&self.data);
        self.encode_tail(out, data_digest);
    }

    /// The wire form up to the data segment: BHS, AHS, header digest. With
    /// [`Pdu::encode_tail`] after the data, a large data segment can be sent from its own buffer
    /// (vectored I/O) instead of being copied.
    pub fn encode_head(&self, out: &mut BytesMut, header_digest: bool) {
        self.encode_head_for(out, header_digest, self.data.len());
    }

    /// [`Pdu::encode_head`] for a data segment of `data_len` bytes that the caller sends
    /// from elsewhere (a file), followed by [`pad_segment`].
    pub fn encode_head_for(&self, out: &mut BytesMut, header_digest: bool, data_len: usize) {
        let mut bhs = self.bhs;
        bhs.0[4] = (self.ahs.len() / 4) as u8;
        bhs.set_data_segment_len(data_len);
        out.reserve(48 + self.ahs.len() + 4);
        out.put_slice(&bhs.0);
        out.put_slice(&self.ahs);
        if header_digest {
            out.put_u32_le(crc32c(&[&bhs.0, &self.ahs]));
        }
    }

    /// What follows the data segment: padding to 4 bytes and the data digest.
    pub fn encode_tail(&self, out: &mut BytesMut, data_digest: bool) {
        if !self.data.is_empty() {
            let pad = pad_segment(out, self.data.len());
            if data_digest {
                out.put_u32_le(crc32c(&[&self.data, &[0u8; 3][..pad]]));
            }
        }
    }

    /// The wire form in a fresh buffer.
    pub fn to_bytes(&self, header_digest: bool, data_digest: bool) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b, header_digest, data_digest);
        b.freeze()
    }
}

/// Framing errors. Each variant says whether the stream can go on (the PDU was consumed) or the
/// connection must be dropped because framing is lost.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PduError {
    /// RFC 7143 §7.8 / §13.1: at error recovery level 0 a header digest error loses framing;
    /// the connection is dropped.
    #[error("header digest mismatch (received {received:#010x}, computed {computed:#010x})")]
    HeaderDigest { received: u32, computed: u32 },
    /// The PDU was consumed; answer with Reject (reason Data Digest Error) and discard it.
    #[error("data digest mismatch on {bhs:?}")]
    DataDigest { bhs: Bhs },
    /// The data segment exceeds what we declared we can receive (MaxRecvDataSegmentLength,
    /// RFC 7143 §13.12), refused from the header before any of it is buffered: the caller
    /// discards the next `skip` bytes of the stream (the rest of the PDU) and answers with
    /// Reject (Protocol Error), or ends the connection.
    #[error("data segment of {len} bytes exceeds MaxRecvDataSegmentLength {max}")]
    DataSegmentTooLong {
        bhs: Bhs,
        len: usize,
        max: usize,
        skip: usize,
    },
}

impl PduError {
    /// Whether the connection may keep reading after this error.
    pub fn is_recoverable(&self) -> bool {
        !matches!(self, PduError::HeaderDigest { .. })
    }
}

/// Splits a byte stream into PDUs.
#[derive(Debug, Clone, Copy)]
pub struct PduDecoder {
    pub header_digest: bool,
    pub data_digest: bool,
    /// The largest data segment we accept (our MaxRecvDataSegmentLength, or 8192 during login
    /// per RFC 7143 §13.12). Larger segments are consumed and reported, not buffered forever.
    pub max_recv_data_segment_length: usize,
}

impl Default for PduDecoder {
    fn default() -> Self {
        PduDecoder {
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_length: 8192,
        }
    }
}

/// Pads a data segment of `len` bytes to a multiple of 4 (RFC 7143 §11.2.3); returns the
/// padding's length.
pub fn pad_segment(out: &mut BytesMut, len: usize) -> usize {
    let pad = pad4(len) - len;
    out.put_bytes(0, pad);
    pad
}

impl PduDecoder {
    /// How many bytes the PDU at the front of `buf` needs buffered before [`Self::decode`]
    /// can act on it, if its BHS is buffered: the whole PDU, or just its header when the data
    /// segment is too long to accept (the buffer never grows to what a header claims).
    pub fn needed(&self, buf: &[u8]) -> Option<usize> {
        if buf.len() < BHS_LEN {
            return None;
        }
        let bhs = Bhs(buf[..BHS_LEN].try_into().expect("48 bytes"));
        Some(
            if bhs.data_segment_len() > self.max_recv_data_segment_length {
                self.header_len(&bhs)
            } else {
                bhs.wire_len(self.header_digest, self.data_digest)
            },
        )
    }

    /// BHS, AHS and header digest.
    fn header_len(&self, bhs: &Bhs) -> usize {
        BHS_LEN + bhs.total_ahs_len() + if self.header_digest { 4 } else { 0 }
    }

    /// Checks the header digest of the header at the front of `raw` (consumed with it).
    fn check_header(&self, raw: &mut Bytes, bhs: &Bhs) -> Result<Bytes, PduError> {
        let header = raw.split_to(BHS_LEN + bhs.total_ahs_len());
        if self.header_digest {
            let received = raw.get_u32_le();
            let computed = crc32c(&[&header]);
            if received != computed {
                return Err(PduError::HeaderDigest { received, computed });
            }
        }
        Ok(header)
    }

    /// Takes one PDU off the front of `buf`: `Ok(None)` means "read more".
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Pdu>, PduError> {
        let Some(need) = self.needed(buf) else {
            return Ok(None);
        };
        if buf.len() < need {
            buf.reserve(need - buf.len());
            return Ok(None);
        }
        let bhs = Bhs(buf[..BHS_LEN].try_into().expect("48 bytes"));
        let len = bhs.data_segment_len();
        if len > self.max_recv_data_segment_length {
            // Refused from its (digest-checked) header: the framing is sound, the data is
            // never buffered. What of it is here already goes; the caller skips the rest.
            let total = bhs.wire_len(self.header_digest, self.data_digest);
            let mut header = buf.split_to(need).freeze();
            self.check_header(&mut header, &bhs)?;
            let here = buf.len().min(total - need);
            let _ = buf.split_to(here);
            return Err(PduError::DataSegmentTooLong {
                bhs,
                len,
                max: self.max_recv_data_segment_length,
                skip: total - need - here,
            });
        }
        let mut raw = buf.split_to(need).freeze();
        let header = self.check_header(&mut raw, &bhs)?;
        let mut data = raw.split_to(pad4(len));
        if self.data_digest && len > 0 {
            let received = raw.get_u32_le();
            if received != crc32c(&[&data]) {
                return Err(PduError::DataDigest { bhs });
            }
        }
        data.truncate(len);
        Ok(Some(Pdu {
            bhs,
            ahs: header.slice(BHS_LEN..),
            data,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(op: Opcode, data: &[u8]) -> Pdu {
        let mut bhs = Bhs::new(op);
        bhs.set_itt(0x1234).set_cmd_sn(7).set_exp_stat_sn(9);
        Pdu::with_data(bhs, Bytes::copy_from_slice(data))
    }

    #[test]
    fn round_trip_every_opcode_and_digest_combination() {
        let ops = [
            Opcode::NopOut,
            Opcode::ScsiCommand,
            Opcode::TaskMgmtRequest,
            Opcode::LoginRequest,
            Opcode::TextRequest,
            Opcode::DataOut,
            Opcode::LogoutRequest,
            Opcode::SnackRequest,
            Opcode::NopIn,
            Opcode::ScsiResponse,
            Opcode::TaskMgmtResponse,
            Opcode::LoginResponse,
            Opcode::TextResponse,
            Opcode::DataIn,
            Opcode::LogoutResponse,
            Opcode::ReadyToTransfer,
            Opcode::AsyncMessage,
            Opcode::Reject,
        ];
        for op in ops {
            assert_eq!(Opcode::from_u8(op as u8), Some(op));
            for (hd, dd) in [(false, false), (true, false), (false, true), (true, true)] {
                for data in [&b""[..], b"a", b"abcde", &[7u8; 8192]] {
                    let pdu = sample(op, data);
                    let wire = pdu.to_bytes(hd, dd);
                    assert_eq!(wire.len(), pdu.bhs.wire_len(hd, dd));
                    let dec = PduDecoder {
                        header_digest: hd,
                        data_digest: dd,
                        max_recv_data_segment_length: 8192,
                    };
                    // Byte by byte: Incomplete until the last byte.
                    let mut buf = BytesMut::new();
                    for (i, b) in wire.iter().enumerate() {
                        buf.put_u8(*b);
                        let r = dec.decode(&mut buf).unwrap();
                        if i + 1 < wire.len() {
                            assert!(r.is_none());
                        } else {
                            assert_eq!(r.unwrap(), pdu);
                        }
                    }
                    assert!(buf.is_empty());
                }
            }
        }
    }

    #[test]
    fn known_crc32c_vector() {
        // RFC 7143 Appendix B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[&[0u8; 32]]), 0x8a91_36aa);
        assert_eq!(crc32c(&[&[0xffu8; 32]]), 0x62a8_ab43);
    }

    #[test]
    fn header_digest_mismatch_is_fatal() {
        let mut wire = BytesMut::from(&sample(Opcode::NopOut, b"").to_bytes(true, false)[..]);
        wire[49] ^= 1;
        let dec = PduDecoder {
            header_digest: true,
            ..Default::default()
        };
        let err = dec.decode(&mut wire).unwrap_err();
        assert!(matches!(err, PduError::HeaderDigest { .. }));
        assert!(!err.is_recoverable());
    }

    #[test]
    fn data_digest_mismatch_consumes_the_pdu() {
        let pdu = sample(Opcode::NopOut, b"ping");
        let mut wire = BytesMut::from(&pdu.to_bytes(false, true)[..]);
        wire[48] ^= 1;
        wire.extend_from_slice(&pdu.to_bytes(false, true));
        let dec = PduDecoder {
            data_digest: true,
            ..Default::default()
        };
        assert!(matches!(
            dec.decode(&mut wire),
            Err(PduError::DataDigest { .. })
        ));
        assert_eq!(dec.decode(&mut wire).unwrap().unwrap(), pdu);
    }

    #[test]
    fn oversized_data_segment_is_refused_from_the_header() {
        let pdu = sample(Opcode::ScsiCommand, &[1u8; 9000]);
        let bytes = pdu.to_bytes(true, false);
        let dec = PduDecoder {
            header_digest: true,
            ..Default::default()
        };
        // The whole PDU buffered: all of it consumed, nothing left to skip.
        let mut wire = BytesMut::from(&bytes[..]);
        assert!(matches!(
            dec.decode(&mut wire).unwrap_err(),
            PduError::DataSegmentTooLong {
                len: 9000,
                skip: 0,
                ..
            }
        ));
        assert!(wire.is_empty());
        // Only the header (and its digest) is needed to refuse it: the rest is skipped as it
        // comes, never buffered. A 16 MiB claim asks for no more than the header either.
        let mut wire = BytesMut::from(&bytes[..52 + 100]);
        assert_eq!(dec.needed(&wire), Some(52));
        assert!(matches!(
            dec.decode(&mut wire).unwrap_err(),
            PduError::DataSegmentTooLong { skip, .. } if skip == 9000 - 100
        ));
        assert!(wire.is_empty());
        let mut big = Bhs::new(Opcode::LoginRequest);
        big.set_data_segment_len(MAX_DATA_SEGMENT);
        assert_eq!(PduDecoder::default().needed(&big.0), Some(48));
    }

    #[test]
    fn truncated_input_never_panics() {
        let wire = sample(Opcode::TextRequest, b"SendTargets=All\0").to_bytes(true, true);
        let dec = PduDecoder {
            header_digest: true,
            data_digest: true,
            ..Default::default()
        };
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            assert!(dec.decode(&mut buf).unwrap().is_none());
        }
    }
}

#[cfg(test)]
mod fuzz_smoke {
    //! What `fuzz/fuzz_targets/pdu_decode.rs` checks, over a deterministic stream of random
    //! inputs, so the stable test suite exercises it too.
    use super::*;
    use crate::text::TextPairs;

    #[test]
    fn random_streams_never_panic_and_round_trip() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..20_000 {
            let len = (next() % 300) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Make a plausible header now and then, so decoding goes past the BHS.
            if round % 2 == 0 && bytes.len() > 8 {
                bytes[4] = 0;
                bytes[5] = 0;
                bytes[6] %= 2;
            }
            let dec = PduDecoder {
                header_digest: round % 3 == 0,
                data_digest: round % 5 == 0,
                max_recv_data_segment_length: 8192,
            };
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(pdu)) = dec.decode(&mut buf) {
                let _ = TextPairs::parse(&pdu.data);
                let wire = pdu.to_bytes(dec.header_digest, dec.data_digest);
                let again = dec.decode(&mut BytesMut::from(&wire[..])).unwrap().unwrap();
                assert_eq!(again, pdu);
            }
        }
    }
}
