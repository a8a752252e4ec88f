//! Text data segments: `key=value` pairs, each ended by a NUL (RFC 7143 §6.1).

use thiserror::Error;

/// RFC 7143 §6.1: key names are at most 63 bytes.
pub const MAX_KEY_LEN: usize = 63;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TextError {
    #[error("text pair {0:?} has no '='")]
    MissingEquals(String),
    #[error("text key {0:?} is empty, too long or not made of key characters")]
    BadKey(String),
    #[error("text is not UTF-8")]
    NotUtf8,
    #[error("key {0} appears twice")]
    Duplicate(String),
}

/// An ordered list of key=value pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextPairs(pub Vec<(String, String)>);

impl TextPairs {
    pub fn new() -> Self {
        TextPairs(Vec::new())
    }

    /// Parses a complete text segment (the concatenation of a sequence of C-bit PDUs).
    /// Empty strings between NULs are tolerated, as initiators pad.
    pub fn parse(data: &[u8]) -> Result<Self, TextError> {
        Self::parse_inner(data, false)
    }

    /// Parses a text where keys may repeat, as in a SendTargets answer (RFC 7143 Appendix C:
    /// one TargetAddress per portal).
    pub fn parse_list(data: &[u8]) -> Result<Self, TextError> {
        Self::parse_inner(data, true)
    }

    fn parse_inner(data: &[u8], repeats: bool) -> Result<Self, TextError> {
        let mut out: Vec<(String, String)> = Vec::new();
        for item in data.split(|b| *b == 0) {
            if item.is_empty() {
                continue;
            }
            let s = std::str::from_utf8(item).map_err(|_| TextError::NotUtf8)?;
            let (k, v) = s
                .split_once('=')
                .ok_or_else(|| TextError::MissingEquals(s.into()))?;
            if k.is_empty()
                || k.len() > MAX_KEY_LEN
                || !k
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b".-+@_".contains(&c))
            {
                return Err(TextError::BadKey(k.into()));
            }
            // RFC 7143 §6.2: a key sent twice in one negotiation is a protocol error.
            if !repeats && out.iter().any(|(ek, _)| ek == k) {
                return Err(TextError::Duplicate(k.into()));
            }
            out.push((k.to_string(), v.to_string()));
        }
        Ok(TextPairs(out))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn push(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.push((key.into(), value.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for (k, val) in &self.0 {
            v.extend_from_slice(k.as_bytes());
            v.push(b'=');
            v.extend_from_slice(val.as_bytes());
            v.push(0);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_encode() {
        let t = TextPairs::parse(b"InitiatorName=iqn.x\0SessionType=Normal\0\0").unwrap();
        assert_eq!(t.get("SessionType"), Some("Normal"));
        assert_eq!(TextPairs::parse(&t.encode()).unwrap(), t);
    }

    #[test]
    fn garbage_is_an_error() {
        assert_eq!(
            TextPairs::parse(b"junk\0"),
            Err(TextError::MissingEquals("junk".into()))
        );
        assert!(matches!(
            TextPairs::parse(b"=x\0"),
            Err(TextError::BadKey(_))
        ));
        assert!(matches!(
            TextPairs::parse(b"a b=x\0"),
            Err(TextError::BadKey(_))
        ));
        assert_eq!(TextPairs::parse(b"\xff=1\0"), Err(TextError::NotUtf8));
        assert!(matches!(
            TextPairs::parse(b"A=1\0A=2\0"),
            Err(TextError::Duplicate(_))
        ));
    }
}
