//! CHAP (RFC 1994) as iSCSI uses it (RFC 7143 §12.1.3): the response is
//! H(identifier || secret || challenge), with MD5 (CHAP_A=5) or SHA-256 (CHAP_A=7, RFC 7143
//! §13.13 / IANA).

use md5::{Digest as _, Md5};
use sha2::Sha256;

/// CHAP digest algorithms, by their IANA PPP numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChapAlgorithm {
    Md5 = 5,
    Sha256 = 7,
}

impl ChapAlgorithm {
    /// Chooses from an offer like `7,5`: the initiator's first choice that we implement.
    pub fn choose(offer: &str) -> Option<ChapAlgorithm> {
        offer.split(',').find_map(|a| match a.trim() {
            "5" => Some(ChapAlgorithm::Md5),
            "7" => Some(ChapAlgorithm::Sha256),
            _ => None,
        })
    }

    pub fn digest_len(self) -> usize {
        match self {
            ChapAlgorithm::Md5 => 16,
            ChapAlgorithm::Sha256 => 32,
        }
    }

    /// H(id || secret || challenge).
    pub fn response(self, id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        match self {
            ChapAlgorithm::Md5 => {
                let mut h = Md5::new();
                h.update([id]);
                h.update(secret);
                h.update(challenge);
                h.finalize().to_vec()
            }
            ChapAlgorithm::Sha256 => {
                let mut h = Sha256::new();
                h.update([id]);
                h.update(secret);
                h.update(challenge);
                h.finalize().to_vec()
            }
        }
    }
}

/// Fresh random bytes for a challenge or identifier.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    if getrandom::getrandom(&mut v).is_err() {
        // The OS RNG failing is not something to recover from quietly: CHAP would be weak.
        panic!("the operating system's random number generator failed");
    }
    v
}

/// Encodes binary as RFC 7143 §6.1 "0x" hex.
pub fn encode_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * b.len());
    s.push_str("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// Decodes an RFC 7143 §6.1 binary value: `0x` hex or `0b` base64.
pub fn decode_binary(s: &str) -> Option<Vec<u8>> {
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        if h.is_empty() {
            return None;
        }
        // An odd number of digits has an implied leading zero.
        let padded = if h.len() % 2 == 1 {
            format!("0{h}")
        } else {
            h.to_string()
        };
        (0..padded.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(padded.get(i..i + 2)?, 16).ok())
            .collect()
    } else if let Some(b) = s.strip_prefix("0b").or_else(|| s.strip_prefix("0B")) {
        decode_base64(b)
    } else {
        None
    }
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Constant-time comparison, so a response check leaks nothing through timing.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_response_matches_rfc1994_construction() {
        // Computed independently: md5(b"\x01" + b"secret" + b"\x00\x01\x02\x03")
        let r = ChapAlgorithm::Md5.response(1, b"secret", &[0, 1, 2, 3]);
        let mut h = Md5::new();
        h.update([1u8]);
        h.update(b"secret");
        h.update([0u8, 1, 2, 3]);
        assert_eq!(r, h.finalize().to_vec());
        assert_eq!(r.len(), 16);
        assert_eq!(ChapAlgorithm::Sha256.response(1, b"s", b"c").len(), 32);
    }

    #[test]
    fn binary_encodings() {
        assert_eq!(decode_binary("0x0a0B"), Some(vec![10, 11]));
        assert_eq!(decode_binary("0xabc"), Some(vec![0x0a, 0xbc]));
        assert_eq!(decode_binary("0bAQID"), Some(vec![1, 2, 3]));
        assert_eq!(decode_binary("0x"), None);
        assert_eq!(decode_binary("0xzz"), None);
        assert_eq!(decode_binary("12"), None);
        assert_eq!(encode_hex(&[1, 0xff]), "0x01ff");
    }

    #[test]
    fn algorithm_choice() {
        assert_eq!(ChapAlgorithm::choose("7,5"), Some(ChapAlgorithm::Sha256));
        assert_eq!(ChapAlgorithm::choose("6,5"), Some(ChapAlgorithm::Md5));
        assert_eq!(ChapAlgorithm::choose("6"), None);
    }
}
