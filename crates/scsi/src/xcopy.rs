//! EXTENDED COPY (LID1) parameter lists (SPC-4 §6.4), parsed without I/O, and what the copy
//! manager reports of itself: RECEIVE COPY RESULTS' OPERATING PARAMETERS and COPY STATUS
//! (§6.18) and the Third-party Copy VPD page (§7.8.17). The copy itself is `copy_manager`'s.

use crate::cdb::{be16, be24, be32, be64, get};
use crate::sense::{Asc, SenseData, SenseKey};

/// Copy source and destination (CSCD) descriptors one list may carry.
pub const MAX_CSCD_DESCRIPTORS: u16 = 16;
/// Segment descriptors one list may carry.
pub const MAX_SEGMENT_DESCRIPTORS: u16 = 64;
/// The CSCD and segment descriptor lists together, in bytes: room for the counts above.
pub const MAX_DESCRIPTOR_LIST_LENGTH: u32 = 4096;
/// Copies the gateway runs at once, reported (each holds at most two chunks in memory, and
/// the gateway's copy memory is bounded as a whole).
pub const TOTAL_CONCURRENT_COPIES: u16 = 64;

/// Segment descriptor type code: block device to block device (SPC-4 §6.4.6.5).
pub const SEG_BLOCK_TO_BLOCK: u8 = 0x02;
/// CSCD descriptor type code: identification descriptor (SPC-4 §6.4.5.6).
pub const CSCD_IDENTIFICATION: u8 = 0xe4;
/// CSCD descriptor index naming the logical unit that received the command (SPC-4 §6.4.5.1).
pub const CSCD_ID_THIS_LU: u16 = 0xffff;

const HEADER: usize = 16;
const CSCD_LEN: usize = 32;
const SEG_B2B_LEN: usize = 28;

/// What the copy manager keeps of a list after it ends (the LIST ID USAGE field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListIdUsage {
    /// 00b: the status is held for RECEIVE COPY RESULTS.
    Hold,
    /// 10b: the list identifier is unique but nothing is held.
    NoHold,
    /// 11b: no list identifier (it must be zero).
    None,
}

/// A logical unit named by a designator of its VPD 0x83 page (association: logical unit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Designator {
    /// DESIGNATOR TYPE (SPC-4 Table 459): 1 T10 vendor ID, 3 NAA, ...
    pub kind: u8,
    pub value: Vec<u8>,
}

/// A copy source or destination: an identification descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cscd {
    pub designator: Designator,
    /// PERIPHERAL DEVICE TYPE (0: a block device, the only kind copied here).
    pub device_type: u8,
    /// DISK BLOCK LENGTH of the device-type specific parameters.
    pub block_length: u32,
}

/// One block device to block device segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub source: u16,
    pub destination: u16,
    /// DC: `blocks` counts destination blocks (else source blocks).
    pub destination_count: bool,
    pub blocks: u16,
    pub source_lba: u64,
    pub destination_lba: u64,
    /// Where the descriptor starts in the parameter list (for sense field pointers).
    pub at: usize,
}

/// A parsed EXTENDED COPY (LID1) parameter list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyList {
    pub list_id: u8,
    pub usage: ListIdUsage,
    pub cscds: Vec<Cscd>,
    pub segments: Vec<Segment>,
}

fn length_error() -> SenseData {
    SenseData::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR)
}

fn at(mut s: SenseData, byte: usize, bit: Option<u8>) -> SenseData {
    s.field = Some((false, byte.min(u16::MAX as usize) as u16, bit));
    s
}

/// Parses an EXTENDED COPY (LID1) parameter list (SPC-4 §6.4.3). `None` for an empty one
/// (a PARAMETER LIST LENGTH of zero is no error and copies nothing). The checks come in the
/// order initiators test them: lengths, then descriptor counts, then descriptor types.
pub fn parse(list: &[u8]) -> Result<Option<CopyList>, SenseData> {
    if list.is_empty() {
        return Ok(None);
    }
    if list.len() < HEADER {
        return Err(length_error());
    }
    let list_id = list[0];
    let usage = match (list[1] >> 3) & 3 {
        0 => ListIdUsage::Hold,
        2 => ListIdUsage::NoHold,
        3 if list_id == 0 => ListIdUsage::None,
        3 => return Err(SenseData::invalid_param(0, None)),
        _ => return Err(SenseData::invalid_param(1, Some(4))),
    };
    let cscd_len = be16(list, 2) as usize;
    let seg_len = be32(list, 8) as usize;
    let inline_len = be32(list, 12) as usize;
    if (HEADER as u64) + cscd_len as u64 + seg_len as u64 + inline_len as u64 > list.len() as u64 {
        return Err(length_error());
    }
    if cscd_len as u64 + seg_len as u64 > MAX_DESCRIPTOR_LIST_LENGTH as u64 {
        return Err(length_error());
    }
    if !cscd_len.is_multiple_of(CSCD_LEN) {
        return Err(at(length_error(), 2, None));
    }
    if cscd_len / CSCD_LEN > MAX_CSCD_DESCRIPTORS as usize {
        return Err(SenseData::illegal(Asc::TOO_MANY_TARGET_DESCRIPTORS));
    }
    let mut cscds = Vec::with_capacity(cscd_len / CSCD_LEN);
    for start in (HEADER..HEADER + cscd_len).step_by(CSCD_LEN) {
        cscds.push(parse_cscd(&list[start..start + CSCD_LEN], start)?);
    }
    let seg_start = HEADER + cscd_len;
    let seg_area = &list[seg_start..seg_start + seg_len];
    let mut segments = Vec::new();
    let mut off = 0;
    while off < seg_area.len() {
        let d = &seg_area[off..];
        let pos = seg_start + off;
        if d.len() < 4 {
            return Err(at(length_error(), pos, None));
        }
        if segments.len() >= MAX_SEGMENT_DESCRIPTORS as usize {
            return Err(SenseData::illegal(Asc::TOO_MANY_SEGMENT_DESCRIPTORS));
        }
        if d[0] != SEG_BLOCK_TO_BLOCK {
            return Err(at(
                SenseData::illegal(Asc::UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE),
                pos,
                None,
            ));
        }
        let len = be16(d, 2) as usize + 4;
        if len != SEG_B2B_LEN {
            return Err(SenseData::invalid_param((pos + 2) as u16, None));
        }
        if d.len() < SEG_B2B_LEN {
            return Err(at(length_error(), pos, None));
        }
        segments.push(Segment {
            source: be16(d, 4),
            destination: be16(d, 6),
            destination_count: d[1] & 0x02 != 0,
            blocks: be16(d, 10),
            source_lba: be64(d, 12),
            destination_lba: be64(d, 20),
            at: pos,
        });
        off += len;
    }
    Ok(Some(CopyList {
        list_id,
        usage,
        cscds,
        segments,
    }))
}

/// One CSCD descriptor (SPC-4 §6.4.5): only identification descriptors name logical units
/// this gateway serves; Fibre Channel, SAS or IP addresses name ports it cannot reach.
fn parse_cscd(d: &[u8], pos: usize) -> Result<Cscd, SenseData> {
    if d[0] != CSCD_IDENTIFICATION {
        return Err(at(
            SenseData::illegal(Asc::UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE),
            pos,
            None,
        ));
    }
    // The LU ID TYPE and NUL bits are ignored (SPC-4: the LU ID field is obsolete).
    let device_type = d[1] & 0x1f;
    // The designation descriptor (SPC-4 §7.8.6.1), 20 bytes of designator at most.
    let len = get(d, 7) as usize;
    if len > 20 {
        return Err(SenseData::invalid_param((pos + 7) as u16, None));
    }
    let association = (d[5] >> 4) & 3;
    if association != 0 {
        return Err(SenseData::invalid_param((pos + 5) as u16, Some(5)));
    }
    Ok(Cscd {
        designator: Designator {
            kind: d[5] & 0x0f,
            value: d[8..8 + len].to_vec(),
        },
        device_type,
        block_length: be24(d, 29),
    })
}

/// COPY ABORTED while processing segment `n`, whose number goes in the COMMAND-SPECIFIC
/// INFORMATION field (SPC-4 §4.5.2.4, segment pointer).
pub fn copy_aborted(asc: Asc, segment: usize) -> SenseData {
    SenseData {
        command_specific: Some(segment as u32),
        ..SenseData::new(SenseKey::CopyAborted, asc)
    }
}

/// RECEIVE COPY RESULTS, OPERATING PARAMETERS (SPC-4 §6.18.4), for a LU of `block_size`.
pub fn operating_parameters(block_size: u32) -> Vec<u8> {
    let codes = [SEG_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION];
    let mut d = vec![0u8; 44];
    d[4] = 0x01; // SNLID: lists without an identifier are supported
    d[8..10].copy_from_slice(&MAX_CSCD_DESCRIPTORS.to_be_bytes());
    d[10..12].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    d[12..16].copy_from_slice(&MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
    d[16..20].copy_from_slice(&max_segment_length(block_size).to_be_bytes());
    // MAXIMUM INLINE DATA LENGTH, HELD DATA LIMIT, MAXIMUM STREAM DEVICE TRANSFER SIZE: 0.
    d[34..36].copy_from_slice(&TOTAL_CONCURRENT_COPIES.to_be_bytes());
    d[36] = TOTAL_CONCURRENT_COPIES.min(255) as u8; // MAXIMUM CONCURRENT COPIES
                                                    // DATA SEGMENT, INLINE DATA and HELD DATA GRANULARITY: 2^0.
    d[43] = codes.len() as u8;
    d.extend_from_slice(&codes);
    let len = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&len.to_be_bytes());
    d
}

/// The most one block-to-block segment moves: 65,535 blocks.
fn max_segment_length(block_size: u32) -> u32 {
    (u16::MAX as u64 * block_size as u64).min(u32::MAX as u64) as u32
}

/// A list's identifier: a one-byte LID1 (EXTENDED COPY (LID1)) or a four-byte LID4 one
/// (POPULATE TOKEN, WRITE USING TOKEN); each is unique per I_T nexus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListId {
    Lid1(u8),
    Lid4(u32),
}

/// Where a list stands, for RECEIVE COPY RESULTS and RECEIVE ROD TOKEN INFORMATION.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CopyProgress {
    pub done: bool,
    pub failed: bool,
    pub segments: u16,
    pub bytes: u64,
    /// The service action that made the list (0x10 POPULATE TOKEN, 0x11 WRITE USING TOKEN).
    pub service_action: u8,
    /// The ROD token a POPULATE TOKEN made.
    pub token: Option<Vec<u8>>,
    /// The sense data the command ended with, if it failed.
    pub sense: Option<crate::sense::SenseData>,
}

/// RECEIVE COPY RESULTS, COPY STATUS (SPC-4 §6.18.2).
pub fn copy_status(p: &CopyProgress) -> Vec<u8> {
    let mut d = vec![0u8; 12];
    d[0..4].copy_from_slice(&8u32.to_be_bytes());
    d[4] = match (p.done, p.failed) {
        (false, _) => 0x00,
        (true, false) => 0x01,
        (true, true) => 0x02,
    };
    d[5..7].copy_from_slice(&p.segments.to_be_bytes());
    // TRANSFER COUNT in bytes while it fits, else in KiB, MiB, ... (TRANSFER COUNT UNITS).
    let (mut count, mut unit) = (p.bytes, 0u8);
    while count > u32::MAX as u64 {
        count >>= 10;
        unit += 1;
    }
    d[7] = unit;
    d[8..12].copy_from_slice(&(count as u32).to_be_bytes());
    d
}

/// The Third-party Copy VPD page's descriptors (SPC-4 §7.8.17): the block device ROD limits
/// (ODX), the copy commands and service actions supported, the LID1 parameter limits, the
/// descriptor types, the CSCD IDs, the ROD token features and types, and the general copy
/// limits. Windows looks for the ROD descriptors before it offloads a copy.
pub fn third_party_copy_vpd(block_size: u32) -> Vec<u8> {
    use crate::rod_token::{
        DEFAULT_INACTIVITY, MAX_INACTIVITY, MAX_RANGES, ROD_TYPE_BLOCK_ZERO,
        ROD_TYPE_CHANGE_VULNERABLE,
    };
    let mut v = Vec::new();
    let mut desc = |kind: u16, body: Vec<u8>| {
        let mut body = body;
        while !body.len().is_multiple_of(4) {
            body.push(0);
        }
        v.extend_from_slice(&kind.to_be_bytes());
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(&body);
    };
    // Block Device ROD Limits (0000h): ranges per token, inactivity timeouts; no limit on a
    // token's size or a transfer's.
    let mut body = vec![0u8; 6];
    body.extend_from_slice(&(MAX_RANGES as u16).to_be_bytes());
    body.extend_from_slice(&MAX_INACTIVITY.to_be_bytes());
    body.extend_from_slice(&DEFAULT_INACTIVITY.to_be_bytes());
    body.extend_from_slice(&[0u8; 16]);
    desc(0x0000, body);
    // Supported Commands (0001h): EXTENDED COPY (LID1), POPULATE TOKEN, WRITE USING TOKEN;
    // RECEIVE COPY RESULTS' COPY STATUS, RECEIVE DATA, OPERATING PARAMETERS and RECEIVE ROD
    // TOKEN INFORMATION.
    let cmds: [(u8, &[u8]); 2] = [
        (0x83, &[0x00, 0x10, 0x11]),
        (0x84, &[0x00, 0x01, 0x03, 0x07]),
    ];
    let mut list = Vec::new();
    for (op, sas) in cmds {
        list.push(op);
        list.push(sas.len() as u8);
        list.extend_from_slice(sas);
    }
    let mut body = vec![list.len() as u8];
    body.extend_from_slice(&list);
    desc(0x0001, body);
    // Parameter Data (0004h).
    let mut body = vec![0u8; 4];
    body.extend_from_slice(&MAX_CSCD_DESCRIPTORS.to_be_bytes());
    body.extend_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    body.extend_from_slice(&MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
    body.extend_from_slice(&0u32.to_be_bytes()); // MAXIMUM INLINE DATA LENGTH
    body.extend_from_slice(&[0u8; 12]);
    desc(0x0004, body);
    // Supported Descriptors (0008h).
    desc(0x0008, vec![2, SEG_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION]);
    // Supported CSCD IDs (000Ch): FFFFh, the LU that received the command.
    let mut body = 2u16.to_be_bytes().to_vec();
    body.extend_from_slice(&CSCD_ID_THIS_LU.to_be_bytes());
    desc(0x000c, body);
    // ROD Token Features (0106h): no remote tokens; lifetimes; the block device features
    // (granularity, sizes: no limit, copies of any length welcome).
    let mut body = vec![0u8; 12];
    body.extend_from_slice(&1u32.to_be_bytes()); // MINIMUM TOKEN LIFETIME
    body.extend_from_slice(&u32::MAX.to_be_bytes()); // MAXIMUM TOKEN LIFETIME
    body.extend_from_slice(&MAX_INACTIVITY.to_be_bytes());
    body.extend_from_slice(&[0u8; 18]);
    let mut block = vec![0u8, 0, 0, 0x2c, 0, 0];
    block.extend_from_slice(&1u16.to_be_bytes()); // OPTIMAL LENGTH GRANULARITY (blocks)
    block.extend_from_slice(&0u64.to_be_bytes()); // MAXIMUM BYTES
    block.extend_from_slice(&0u64.to_be_bytes()); // OPTIMAL BYTES
    block.extend_from_slice(&u64::MAX.to_be_bytes()); // OPTIMAL BYTES TO TOKEN PER SEGMENT
    block.extend_from_slice(&(16u64 << 20).to_be_bytes()); // ... FROM TOKEN PER SEGMENT
    block.extend_from_slice(&[0u8; 8]);
    body.extend_from_slice(&(block.len() as u16).to_be_bytes());
    body.extend_from_slice(&block);
    desc(0x0106, body);
    // Supported ROD Types (0108h): ours (ROD token in and out) and the block device zero ROD
    // token (in).
    let mut types = Vec::new();
    for (t, flags) in [
        (ROD_TYPE_CHANGE_VULNERABLE, 0x03u8),
        (ROD_TYPE_BLOCK_ZERO, 0x02),
    ] {
        types.extend_from_slice(&t.to_be_bytes());
        types.push(flags);
        types.extend_from_slice(&[0u8; 59]);
    }
    let mut body = vec![0u8, 0];
    body.extend_from_slice(&(types.len() as u16).to_be_bytes());
    body.extend_from_slice(&types);
    desc(0x0108, body);
    // General Copy Operations (8001h).
    let mut body = Vec::new();
    body.extend_from_slice(&(TOTAL_CONCURRENT_COPIES as u32).to_be_bytes());
    body.extend_from_slice(&(TOTAL_CONCURRENT_COPIES as u32).to_be_bytes());
    body.extend_from_slice(&max_segment_length(block_size).to_be_bytes());
    body.extend_from_slice(&[0u8; 20]); // granularities 2^0, reserved
    desc(0x8001, body);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(list_id: u8, usage: u8, cscd_len: u16, seg_len: u32) -> Vec<u8> {
        let mut h = vec![0u8; HEADER];
        h[0] = list_id;
        h[1] = usage << 3;
        h[2..4].copy_from_slice(&cscd_len.to_be_bytes());
        h[8..12].copy_from_slice(&seg_len.to_be_bytes());
        h
    }

    fn naa_cscd(naa: &[u8; 16], block: u32) -> Vec<u8> {
        let mut d = vec![0u8; CSCD_LEN];
        d[0] = CSCD_IDENTIFICATION;
        d[4] = 0x01; // binary
        d[5] = 0x03; // association LU, NAA
        d[7] = 16;
        d[8..24].copy_from_slice(naa);
        d[29..32].copy_from_slice(&block.to_be_bytes()[1..]);
        d
    }

    fn b2b(src: u16, dst: u16, blocks: u16, src_lba: u64, dst_lba: u64) -> Vec<u8> {
        let mut d = vec![0u8; SEG_B2B_LEN];
        d[0] = SEG_BLOCK_TO_BLOCK;
        d[2..4].copy_from_slice(&((SEG_B2B_LEN - 4) as u16).to_be_bytes());
        d[4..6].copy_from_slice(&src.to_be_bytes());
        d[6..8].copy_from_slice(&dst.to_be_bytes());
        d[10..12].copy_from_slice(&blocks.to_be_bytes());
        d[12..20].copy_from_slice(&src_lba.to_be_bytes());
        d[20..28].copy_from_slice(&dst_lba.to_be_bytes());
        d
    }

    fn list(cscds: usize, segs: usize) -> Vec<u8> {
        let mut l = header(1, 0, (cscds * CSCD_LEN) as u16, (segs * SEG_B2B_LEN) as u32);
        for _ in 0..cscds {
            l.extend(naa_cscd(&[0x60; 16], 512));
        }
        for i in 0..segs {
            l.extend(b2b(0, 0, 8, i as u64 * 8, 1000 + i as u64 * 8));
        }
        l
    }

    #[test]
    fn a_list_parses_whole() {
        let l = parse(&list(2, 3)).unwrap().unwrap();
        assert_eq!(l.list_id, 1);
        assert_eq!(l.usage, ListIdUsage::Hold);
        assert_eq!(l.cscds.len(), 2);
        assert_eq!(l.cscds[0].designator.kind, 3);
        assert_eq!(l.cscds[0].designator.value, vec![0x60; 16]);
        assert_eq!(l.cscds[0].block_length, 512);
        assert_eq!(l.segments.len(), 3);
        assert_eq!(l.segments[2].source_lba, 16);
        assert_eq!(l.segments[2].destination_lba, 1016);
        assert_eq!(l.segments[2].at, HEADER + 2 * CSCD_LEN + 2 * SEG_B2B_LEN);
        assert_eq!(parse(&[]).unwrap(), None);
    }

    #[test]
    fn lengths_are_checked_before_counts_and_types() {
        let asc = |r: Result<Option<CopyList>, SenseData>| r.unwrap_err().asc;
        let full = list(1, 1);
        // Truncated descriptors: the header promises more than came.
        assert_eq!(
            asc(parse(&full[..full.len() - 1])),
            Asc::PARAMETER_LIST_LENGTH_ERROR
        );
        assert_eq!(asc(parse(&full[..10])), Asc::PARAMETER_LIST_LENGTH_ERROR);
        // One CSCD and one segment too many.
        let n = MAX_CSCD_DESCRIPTORS as usize + 1;
        assert_eq!(asc(parse(&list(n, 1))), Asc::TOO_MANY_TARGET_DESCRIPTORS);
        let n = MAX_SEGMENT_DESCRIPTORS as usize + 1;
        assert_eq!(asc(parse(&list(1, n))), Asc::TOO_MANY_SEGMENT_DESCRIPTORS);
        // Both too many and too long: the length wins (libiscsi's DescrLimits).
        let segs = (MAX_DESCRIPTOR_LIST_LENGTH as usize) / SEG_B2B_LEN;
        assert_eq!(
            asc(parse(&list(17, segs))),
            Asc::PARAMETER_LIST_LENGTH_ERROR
        );
    }

    #[test]
    fn unsupported_descriptor_types_are_named() {
        let mut l = list(1, 1);
        l[HEADER] = 0xe0; // Fibre Channel N_Port_Name
        let e = parse(&l).unwrap_err();
        assert_eq!(e.asc, Asc::UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE);
        assert_eq!(e.field, Some((false, HEADER as u16, None)));
        let mut l = list(1, 1);
        l[HEADER + CSCD_LEN] = 0x09; // stream to stream
        assert_eq!(
            parse(&l).unwrap_err().asc,
            Asc::UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE
        );
        // A list without an identifier must not name one.
        let mut l = list(1, 1);
        l[1] = 3 << 3;
        assert_eq!(
            parse(&l).unwrap_err().asc,
            Asc::INVALID_FIELD_IN_PARAMETER_LIST
        );
        l[0] = 0;
        assert_eq!(parse(&l).unwrap().unwrap().usage, ListIdUsage::None);
    }

    #[test]
    fn random_lists_never_panic() {
        // xorshift: lists whose header lengths point anywhere, descriptors of any bytes.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = (next() % 400) as usize;
            let mut l: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= HEADER && next() % 2 == 0 {
                // Plausible lengths, so that parsing gets past the header.
                let c = (next() % 3) as u16 * CSCD_LEN as u16;
                l[2..4].copy_from_slice(&c.to_be_bytes());
                let rest = (len - HEADER).saturating_sub(c as usize) as u32;
                l[8..12].copy_from_slice(&rest.to_be_bytes());
                l[12..16].fill(0);
                if c > 0 && len > HEADER {
                    l[HEADER] = CSCD_IDENTIFICATION;
                }
            }
            let _ = parse(&l);
        }
    }

    #[test]
    fn reports_encode_their_fields() {
        let op = operating_parameters(512);
        assert_eq!(be32(&op, 0) as usize, op.len() - 4);
        assert_eq!(be16(&op, 8), MAX_CSCD_DESCRIPTORS);
        assert_eq!(be16(&op, 10), MAX_SEGMENT_DESCRIPTORS);
        assert_eq!(be32(&op, 16), 65535 * 512);
        assert_eq!(&op[44..], &[SEG_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION]);
        let st = copy_status(&CopyProgress {
            done: true,
            failed: false,
            segments: 2,
            bytes: 1 << 40,
            ..Default::default()
        });
        assert_eq!(st[4], 1);
        assert_eq!(be16(&st, 5), 2);
        assert_eq!((st[7], be32(&st, 8)), (1, 1 << 30));
        let vpd = third_party_copy_vpd(4096);
        // Descriptors: type, length, body; every length a multiple of four.
        let mut off = 0;
        let mut kinds = Vec::new();
        while off < vpd.len() {
            kinds.push(be16(&vpd, off));
            let len = be16(&vpd, off + 2) as usize;
            assert_eq!(len % 4, 0);
            off += 4 + len;
        }
        assert_eq!(off, vpd.len());
        assert_eq!(
            kinds,
            vec![0x0000, 0x0001, 0x0004, 0x0008, 0x000c, 0x0106, 0x0108, 0x8001]
        );
    }
}
