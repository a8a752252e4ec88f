//! Offloaded data transfer (ODX) without I/O: ROD tokens (SPC-4 §6.?: the ROD token format),
//! the POPULATE TOKEN and WRITE USING TOKEN parameter lists (SBC-3 §5.11, §5.36), and the
//! shared record of the tokens a LU has handed out.
//!
//! A token names the LU it was made on (its NAA designator) and carries a random identifier
//! and secret; the LU's record, kept in its shared metadata, holds what the token stands for
//! (the source ranges) and whether it still may be used. Any gateway serving the LU can thus
//! honour a token made by another. Tokens are of the "point in time copy, change vulnerable"
//! type: a write to a range a token stands for revokes the token.

use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cdb::{be16, be32, be64, get};
use crate::sense::{Asc, SenseData};

/// The metadata key of a LU's token record.
pub const METADATA_KEY: &str = "rod_tokens";
/// ROD type: point in time copy, change vulnerable (SPC-4 Table 132).
pub const ROD_TYPE_CHANGE_VULNERABLE: u32 = 0x0080_0001;
/// ROD type: the block device zero ROD token (SBC-3 §4.31.?): reads as zeroes.
pub const ROD_TYPE_BLOCK_ZERO: u32 = 0xffff_0001;
pub const TOKEN_LEN: usize = 512;
/// Range descriptors one POPULATE TOKEN or WRITE USING TOKEN may carry.
pub const MAX_RANGES: usize = 64;
/// Tokens one LU keeps at once, and their ranges in all: the record is rewritten whole on
/// every change (an xattr of the image's state object on RBD), so it stays small.
pub const MAX_TOKENS: usize = 64;
pub const MAX_RECORDED_RANGES: usize = 512;
/// Inactivity timeouts, in seconds (VPD 0x8F, Block Device ROD Limits).
pub const DEFAULT_INACTIVITY: u32 = 60;
pub const MAX_INACTIVITY: u32 = 600;

const RANGE_LEN: usize = 16;
/// Where a WRITE USING TOKEN parameter list's token and ranges start (SBC-3 Table 89).
const WUT_TOKEN_AT: usize = 16;
const WUT_RANGES_AT: usize = 536;
const PT_RANGES_AT: usize = 16;

/// A block device range descriptor (SBC-3 §5.11.3): `blocks` logical blocks from `lba`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub lba: u64,
    pub blocks: u32,
}

/// A POPULATE TOKEN parameter list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PopulateToken {
    pub inactivity_timeout: u32,
    pub ranges: Vec<Range>,
}

/// A WRITE USING TOKEN parameter list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteUsingToken {
    pub delete_token: bool,
    /// OFFSET INTO ROD, in logical blocks of this LU.
    pub offset_into_rod: u64,
    pub token: Vec<u8>,
    pub ranges: Vec<Range>,
}

fn ranges(
    list: &[u8],
    at: usize,
    len_at: usize,
    capacity_blocks: u64,
) -> Result<Vec<Range>, SenseData> {
    let len = be16(list, len_at) as usize;
    if len == 0 || !len.is_multiple_of(RANGE_LEN) || at + len > list.len() {
        return Err(SenseData::invalid_param(len_at as u16, None));
    }
    if len / RANGE_LEN > MAX_RANGES {
        // SBC-3 §5.11.2: more range descriptors than the Block Device ROD Limits allow.
        return Err(SenseData::illegal(Asc::TOO_MANY_SEGMENT_DESCRIPTORS));
    }
    let mut out = Vec::with_capacity(len / RANGE_LEN);
    for d in list[at..at + len].chunks_exact(RANGE_LEN) {
        let r = Range {
            lba: be64(d, 0),
            blocks: be32(d, 8),
        };
        if r.lba
            .checked_add(r.blocks as u64)
            .is_none_or(|end| end > capacity_blocks)
        {
            return Err(SenseData {
                information: Some(r.lba),
                ..SenseData::lba_out_of_range()
            });
        }
        out.push(r);
    }
    // Ranges that overlap make no sense for a copy (SBC-3 §5.11.3).
    let mut sorted: Vec<Range> = out.iter().copied().filter(|r| r.blocks > 0).collect();
    sorted.sort_by_key(|r| r.lba);
    if sorted
        .windows(2)
        .any(|w| w[0].lba + w[0].blocks as u64 > w[1].lba)
    {
        return Err(SenseData::invalid_param(at as u16, None));
    }
    Ok(out)
}

/// Parses a POPULATE TOKEN parameter list (SBC-3 §5.11.2) for a LU of `capacity_blocks`.
pub fn parse_populate_token(list: &[u8], capacity_blocks: u64) -> Result<PopulateToken, SenseData> {
    if list.len() < PT_RANGES_AT {
        return Err(SenseData::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let flags = list[2];
    let inactivity_timeout = be32(list, 4);
    if inactivity_timeout > MAX_INACTIVITY {
        return Err(SenseData::invalid_param(4, None));
    }
    // RTV: the initiator asks for a ROD type; this copy manager makes one kind.
    if flags & 0x02 != 0 {
        let t = be32(list, 8);
        if t != 0 && t != ROD_TYPE_CHANGE_VULNERABLE {
            return Err(SenseData::invalid_param(8, None));
        }
    }
    Ok(PopulateToken {
        inactivity_timeout,
        ranges: ranges(list, PT_RANGES_AT, 14, capacity_blocks)?,
    })
}

/// Parses a WRITE USING TOKEN parameter list (SBC-3 §5.36.2) for a LU of `capacity_blocks`.
pub fn parse_write_using_token(
    list: &[u8],
    capacity_blocks: u64,
) -> Result<WriteUsingToken, SenseData> {
    if list.len() < WUT_RANGES_AT {
        return Err(SenseData::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    Ok(WriteUsingToken {
        delete_token: list[2] & 0x02 != 0,
        offset_into_rod: be64(list, 8),
        token: list[WUT_TOKEN_AT..WUT_TOKEN_AT + TOKEN_LEN].to_vec(),
        ranges: ranges(list, WUT_RANGES_AT, 534, capacity_blocks)?,
    })
}

/// A token's state in its LU's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenState {
    Valid,
    /// A write changed data it stands for.
    Revoked,
    /// WRITE USING TOKEN with DEL_TKN used it last.
    Deleted,
}

/// One token a LU handed out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: u64,
    pub secret: [u8; 16],
    pub ranges: Vec<Range>,
    pub block_size: u32,
    /// Seconds since the epoch when it was last made or used, and its inactivity timeout.
    pub last_used: u64,
    pub timeout: u32,
    pub state: TokenState,
}

impl TokenRecord {
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.blocks as u64).sum::<u64>() * self.block_size as u64
    }

    pub fn expired(&self, now: u64) -> bool {
        now > self.last_used + self.timeout as u64
    }

    fn overlaps(&self, lba: u64, blocks: u64) -> bool {
        self.ranges
            .iter()
            .any(|r| r.lba < lba + blocks && lba < r.lba + r.blocks as u64)
    }
}

/// The tokens of one LU, as kept in its shared metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRegistry {
    pub tokens: Vec<TokenRecord>,
    /// Writes of the record so far, through any gateway: a reload that read the record
    /// before this gateway's latest write (and returned after it) is told by a lower one.
    #[serde(default)]
    pub version: u64,
}

impl TokenRegistry {
    pub fn decode(b: &[u8]) -> Self {
        serde_json::from_slice(b).unwrap_or_default()
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a token record serializes")
    }

    /// Drops what can no longer be used.
    pub fn prune(&mut self, now: u64) {
        self.tokens
            .retain(|t| t.state == TokenState::Valid && !t.expired(now));
    }

    /// Whether a valid token stands for some of `blocks` blocks from `lba`.
    pub fn covers(&self, lba: u64, blocks: u64, now: u64) -> bool {
        self.tokens
            .iter()
            .any(|t| t.state == TokenState::Valid && !t.expired(now) && t.overlaps(lba, blocks))
    }

    /// Revokes every token standing for some of `blocks` blocks from `lba`; true if any.
    pub fn revoke(&mut self, lba: u64, blocks: u64) -> bool {
        let mut any = false;
        for t in &mut self.tokens {
            if t.state == TokenState::Valid && t.overlaps(lba, blocks) {
                t.state = TokenState::Revoked;
                any = true;
            }
        }
        any
    }
}

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// 64 unpredictable bits: SipHash under the process's random keys (std's `RandomState`, seeded
/// from the operating system) over the time and a counter. A token must not be guessable: it
/// lets whoever holds it read the data it stands for.
pub fn random_u64() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// The 512-byte ROD token for `record`, made by the LU of NAA designator `naa` (SPC-4 ROD
/// token format): its type and length, the identifier, the creator LU as an identification
/// CSCD descriptor, the number of bytes it stands for, then the secret.
pub fn build_token(record: &TokenRecord, naa: &[u8; 16]) -> Vec<u8> {
    let mut t = vec![0u8; TOKEN_LEN];
    t[0..4].copy_from_slice(&ROD_TYPE_CHANGE_VULNERABLE.to_be_bytes());
    t[6..8].copy_from_slice(&((TOKEN_LEN - 8) as u16).to_be_bytes());
    t[8..16].copy_from_slice(&record.id.to_be_bytes());
    // CREATOR LOGICAL UNIT DESCRIPTOR: identification descriptor, block device, NAA.
    t[16] = crate::xcopy::CSCD_IDENTIFICATION;
    t[20] = 0x01;
    t[21] = 0x03;
    t[23] = 16;
    t[24..40].copy_from_slice(naa);
    t[45..48].copy_from_slice(&record.block_size.to_be_bytes()[1..]);
    // NUMBER OF BYTES REPRESENTED (128 bits).
    t[56..64].copy_from_slice(&record.bytes().to_be_bytes());
    t[128..144].copy_from_slice(&record.secret);
    t
}

/// What a token presented to WRITE USING TOKEN names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresentedToken {
    /// The block device zero ROD token: zeroes.
    Zero,
    /// A token of ours: the creator LU's NAA designator, its identifier and secret.
    Ours {
        naa: Vec<u8>,
        id: u64,
        secret: [u8; 16],
    },
}

/// Reads a presented token (SBC-3 §5.36.2); anything else is not a token of ours.
pub fn read_token(t: &[u8]) -> Result<PresentedToken, SenseData> {
    let kind = be32(t, 0);
    if kind == ROD_TYPE_BLOCK_ZERO {
        return Ok(PresentedToken::Zero);
    }
    if kind != ROD_TYPE_CHANGE_VULNERABLE {
        return Err(SenseData::illegal(Asc::UNSUPPORTED_TOKEN_TYPE));
    }
    if be16(t, 6) as usize != TOKEN_LEN - 8 {
        return Err(SenseData::illegal(Asc::INVALID_TOKEN_LENGTH));
    }
    if get(t, 16) != crate::xcopy::CSCD_IDENTIFICATION || get(t, 21) & 0x0f != 3 || get(t, 23) != 16
    {
        return Err(SenseData::illegal(Asc::TOKEN_CORRUPT));
    }
    let mut secret = [0u8; 16];
    secret.copy_from_slice(&t[128..144]);
    Ok(PresentedToken::Ours {
        naa: t[24..40].to_vec(),
        id: be64(t, 8),
        secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range_list(at: usize, ranges: &[(u64, u32)]) -> Vec<u8> {
        let mut l = vec![0u8; at];
        let len = (ranges.len() * RANGE_LEN) as u16;
        l[at - 2..at].copy_from_slice(&len.to_be_bytes());
        for (lba, blocks) in ranges {
            l.extend_from_slice(&lba.to_be_bytes());
            l.extend_from_slice(&blocks.to_be_bytes());
            l.extend_from_slice(&[0; 4]);
        }
        l
    }

    #[test]
    fn parameter_lists_parse_and_their_ranges_are_checked() {
        let p = parse_populate_token(&range_list(16, &[(0, 8), (100, 8)]), 1000).unwrap();
        assert_eq!(
            p.ranges,
            vec![
                Range { lba: 0, blocks: 8 },
                Range {
                    lba: 100,
                    blocks: 8
                }
            ]
        );
        let e = parse_populate_token(&range_list(16, &[(995, 8)]), 1000).unwrap_err();
        assert_eq!((e.asc, e.information), (Asc::LBA_OUT_OF_RANGE, Some(995)));
        let e = parse_populate_token(&range_list(16, &[(0, 8), (4, 8)]), 1000).unwrap_err();
        assert_eq!(e.asc, Asc::INVALID_FIELD_IN_PARAMETER_LIST);
        let many: Vec<(u64, u32)> = (0..65).map(|i| (i * 10, 1)).collect();
        let e = parse_populate_token(&range_list(16, &many), 1000).unwrap_err();
        assert_eq!(e.asc, Asc::TOO_MANY_SEGMENT_DESCRIPTORS);
        let mut w = range_list(536, &[(10, 4)]);
        w[2] = 0x02;
        w[15] = 3;
        let wut = parse_write_using_token(&w, 1000).unwrap();
        assert!(wut.delete_token);
        assert_eq!(wut.offset_into_rod, 3);
        assert_eq!(wut.ranges, vec![Range { lba: 10, blocks: 4 }]);
        assert_eq!(
            parse_write_using_token(&w[..100], 1000).unwrap_err().asc,
            Asc::PARAMETER_LIST_LENGTH_ERROR
        );
    }

    #[test]
    fn a_token_round_trips_and_writes_revoke_it() {
        let rec = TokenRecord {
            id: random_u64(),
            secret: [7; 16],
            ranges: vec![Range { lba: 8, blocks: 8 }],
            block_size: 512,
            last_used: 1000,
            timeout: 60,
            state: TokenState::Valid,
        };
        assert_ne!(rec.id, random_u64());
        let naa = [0x60; 16];
        let t = build_token(&rec, &naa);
        assert_eq!(
            read_token(&t).unwrap(),
            PresentedToken::Ours {
                naa: naa.to_vec(),
                id: rec.id,
                secret: [7; 16]
            }
        );
        assert_eq!(be64(&t, 56), 4096);
        let mut zero = vec![0u8; TOKEN_LEN];
        zero[0..4].copy_from_slice(&ROD_TYPE_BLOCK_ZERO.to_be_bytes());
        assert_eq!(read_token(&zero).unwrap(), PresentedToken::Zero);
        assert_eq!(
            read_token(&[0u8; TOKEN_LEN]).unwrap_err().asc,
            Asc::UNSUPPORTED_TOKEN_TYPE
        );

        let mut reg = TokenRegistry {
            tokens: vec![rec.clone()],
            ..Default::default()
        };
        assert!(reg.covers(15, 1, 1000));
        assert!(!reg.covers(16, 100, 1000));
        assert!(
            !reg.covers(8, 1, 1061),
            "expired after its inactivity timeout"
        );
        assert!(!reg.revoke(0, 8));
        assert!(reg.revoke(10, 1));
        assert_eq!(reg.tokens[0].state, TokenState::Revoked);
        assert_eq!(TokenRegistry::decode(&reg.encode()), reg);
        reg.prune(1000);
        assert!(reg.tokens.is_empty());
    }
}
