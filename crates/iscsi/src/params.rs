//! Operational parameter negotiation (RFC 7143 §6.2, §13).
//!
//! The initiator offers; we answer each key by the key's function (minimum, maximum, boolean
//! AND/OR, list choice, declaration). [`TargetLimits`] holds what this target is willing to do
//! (the defaults, overridden per initiator by lrbd's `param_*` ACL keys); [`Negotiated`] holds the
//! outcome the session and connection run with.

/// RFC 7143 §13.12: before negotiation every PDU may carry at most 8192 data bytes.
pub const DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH: u32 = 8192;

/// Digest algorithms (RFC 7143 §13.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Digest {
    #[default]
    None,
    Crc32c,
}

impl Digest {
    fn parse(s: &str) -> Option<Digest> {
        match s {
            "None" => Some(Digest::None),
            "CRC32C" => Some(Digest::Crc32c),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Digest::None => "None",
            Digest::Crc32c => "CRC32C",
        }
    }
}

/// What this target accepts or prefers, key by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetLimits {
    /// Digests we accept, in our order of preference when the initiator leaves the choice open.
    pub header_digests: Vec<Digest>,
    pub data_digests: Vec<Digest>,
    pub max_connections: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    /// Our declared MaxRecvDataSegmentLength (what the initiator may send us in one PDU).
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u32,
}

impl Default for TargetLimits {
    fn default() -> Self {
        TargetLimits {
            header_digests: vec![Digest::None, Digest::Crc32c],
            data_digests: vec![Digest::None, Digest::Crc32c],
            // One connection per session: multipath across gateways is done with sessions.
            max_connections: 1,
            initial_r2t: false,
            immediate_data: true,
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1 << 20,
            first_burst_length: 262_144,
            default_time2wait: 2,
            default_time2retain: 0,
            max_outstanding_r2t: 16,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
        }
    }
}

/// The outcome of negotiation, starting from the RFC 7143 §13 defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub header_digest: Digest,
    pub data_digest: Digest,
    pub max_connections: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    /// The initiator's MaxRecvDataSegmentLength: the largest data segment we may send.
    pub max_xmit_data_segment_length: u32,
    /// Ours: the largest data segment the initiator may send us.
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u32,
}

impl Default for Negotiated {
    fn default() -> Self {
        Negotiated {
            header_digest: Digest::None,
            data_digest: Digest::None,
            max_connections: 1,
            initial_r2t: true,
            immediate_data: true,
            max_xmit_data_segment_length: DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH,
            max_recv_data_segment_length: DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
        }
    }
}

/// The answer to one offered key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Send `key=value` back.
    Value(String),
    /// The key needs no answer (a declaration we only take note of).
    None,
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_string()
}

/// RFC 7143 §6.1: numbers are decimal, or hex with 0x, up to the key's range.
fn parse_num(v: &str, lo: u32, hi: u32) -> Option<u32> {
    let n = if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()?
    } else {
        v.parse::<u64>().ok()?
    };
    (n >= lo as u64 && n <= hi as u64).then_some(n as u32)
}

/// Keys a discovery session answers with "Irrelevant" (RFC 7143 §13: "Irrelevant when
/// SessionType=Discovery").
const NORMAL_ONLY: &[&str] = &[
    "MaxConnections",
    "InitialR2T",
    "ImmediateData",
    "MaxBurstLength",
    "FirstBurstLength",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
];

impl Negotiated {
    /// Answers one operational key offered by the initiator and records the result.
    /// `discovery` is true for SessionType=Discovery.
    pub fn answer(
        &mut self,
        limits: &TargetLimits,
        key: &str,
        value: &str,
        discovery: bool,
    ) -> Answer {
        if discovery && NORMAL_ONLY.contains(&key) {
            return Answer::Value("Irrelevant".into());
        }
        let reject = || Answer::Value("Reject".into());
        match key {
            "HeaderDigest" | "DataDigest" => {
                let ours = if key == "HeaderDigest" {
                    &limits.header_digests
                } else {
                    &limits.data_digests
                };
                // RFC 7143 §6.2.1: the responder picks the first value of the offer it supports.
                let offered: Vec<Digest> = value.split(',').filter_map(Digest::parse).collect();
                match offered.into_iter().find(|d| ours.contains(d)) {
                    Some(d) => {
                        if key == "HeaderDigest" {
                            self.header_digest = d
                        } else {
                            self.data_digest = d
                        }
                        Answer::Value(d.name().into())
                    }
                    None => reject(),
                }
            }
            "MaxConnections" => match parse_num(value, 1, 65535) {
                Some(n) => {
                    self.max_connections = n.min(limits.max_connections);
                    Answer::Value(self.max_connections.to_string())
                }
                None => reject(),
            },
            "InitialR2T" => match parse_bool(value) {
                // OR function (RFC 7143 §13.10).
                Some(b) => {
                    self.initial_r2t = b || limits.initial_r2t;
                    Answer::Value(yes_no(self.initial_r2t))
                }
                None => reject(),
            },
            "ImmediateData" => match parse_bool(value) {
                // AND function (RFC 7143 §13.11).
                Some(b) => {
                    self.immediate_data = b && limits.immediate_data;
                    Answer::Value(yes_no(self.immediate_data))
                }
                None => reject(),
            },
            "DataPDUInOrder" | "DataSequenceInOrder" => match parse_bool(value) {
                Some(b) => {
                    let r = if key == "DataPDUInOrder" {
                        self.data_pdu_in_order = b || limits.data_pdu_in_order;
                        self.data_pdu_in_order
                    } else {
                        self.data_sequence_in_order = b || limits.data_sequence_in_order;
                        self.data_sequence_in_order
                    };
                    Answer::Value(yes_no(r))
                }
                None => reject(),
            },
            "MaxRecvDataSegmentLength" => match parse_num(value, 512, 16_777_215) {
                // Declarative (RFC 7143 §13.12): the initiator's receive limit bounds what we send.
                Some(n) => {
                    self.max_xmit_data_segment_length = n;
                    Answer::None
                }
                None => reject(),
            },
            "MaxBurstLength" => match parse_num(value, 512, 16_777_215) {
                Some(n) => {
                    self.max_burst_length = n.min(limits.max_burst_length);
                    self.first_burst_length = self.first_burst_length.min(self.max_burst_length);
                    Answer::Value(self.max_burst_length.to_string())
                }
                None => reject(),
            },
            "FirstBurstLength" => match parse_num(value, 512, 16_777_215) {
                Some(n) => {
                    self.first_burst_length =
                        n.min(limits.first_burst_length).min(self.max_burst_length);
                    Answer::Value(n.min(limits.first_burst_length).to_string())
                }
                None => reject(),
            },
            "DefaultTime2Wait" => match parse_num(value, 0, 3600) {
                Some(n) => {
                    self.default_time2wait = n.max(limits.default_time2wait);
                    Answer::Value(self.default_time2wait.to_string())
                }
                None => reject(),
            },
            "DefaultTime2Retain" => match parse_num(value, 0, 3600) {
                Some(n) => {
                    self.default_time2retain = n.min(limits.default_time2retain);
                    Answer::Value(self.default_time2retain.to_string())
                }
                None => reject(),
            },
            "MaxOutstandingR2T" => match parse_num(value, 1, 65535) {
                Some(n) => {
                    self.max_outstanding_r2t = n.min(limits.max_outstanding_r2t);
                    Answer::Value(self.max_outstanding_r2t.to_string())
                }
                None => reject(),
            },
            "ErrorRecoveryLevel" => match parse_num(value, 0, 2) {
                Some(n) => {
                    self.error_recovery_level = n.min(limits.error_recovery_level);
                    Answer::Value(self.error_recovery_level.to_string())
                }
                None => reject(),
            },
            // Markers were removed by RFC 7143 (§13.25); RFC 3720 initiators may still offer
            // them: Boolean AND with our "No".
            "IFMarker" | "OFMarker" => Answer::Value("No".into()),
            "OFMarkInt" | "IFMarkInt" => Answer::Value("Irrelevant".into()),
            // RFC 7144 §2.1: the lower of the two levels wins; we implement RFC 7143 (level 1).
            "iSCSIProtocolLevel" => match parse_num(value, 0, 31) {
                Some(n) => Answer::Value(n.min(1).to_string()),
                None => reject(),
            },
            "TaskReporting" => Answer::Value("RFC3720".into()),
            _ => Answer::Value("NotUnderstood".into()),
        }
    }

    /// Whether a key is one of the operational keys handled by [`Negotiated::answer`].
    pub fn is_operational_key(key: &str) -> bool {
        matches!(
            key,
            "HeaderDigest"
                | "DataDigest"
                | "MaxConnections"
                | "InitialR2T"
                | "ImmediateData"
                | "DataPDUInOrder"
                | "DataSequenceInOrder"
                | "MaxRecvDataSegmentLength"
                | "MaxBurstLength"
                | "FirstBurstLength"
                | "DefaultTime2Wait"
                | "DefaultTime2Retain"
                | "MaxOutstandingR2T"
                | "ErrorRecoveryLevel"
                | "IFMarker"
                | "OFMarker"
                | "OFMarkInt"
                | "IFMarkInt"
                | "iSCSIProtocolLevel"
                | "TaskReporting"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ans(n: &mut Negotiated, k: &str, v: &str) -> Answer {
        n.answer(&TargetLimits::default(), k, v, false)
    }

    fn val(s: &str) -> Answer {
        Answer::Value(s.into())
    }

    #[test]
    fn offer_answer_table() {
        let mut n = Negotiated::default();
        let limits = TargetLimits::default();
        for (k, offer, want) in [
            ("HeaderDigest", "CRC32C,None", "CRC32C"),
            ("DataDigest", "None,CRC32C", "None"),
            ("HeaderDigest", "MD5", "Reject"),
            ("MaxConnections", "8", "1"),
            ("InitialR2T", "No", "No"),
            ("ImmediateData", "Yes", "Yes"),
            (
                "MaxBurstLength",
                "16776192",
                &limits.max_burst_length.to_string(),
            ),
            (
                "FirstBurstLength",
                "1048576",
                &limits.first_burst_length.to_string(),
            ),
            ("FirstBurstLength", "4096", "4096"),
            ("DefaultTime2Wait", "0", "2"),
            ("DefaultTime2Retain", "20", "0"),
            ("MaxOutstandingR2T", "1", "1"),
            ("ErrorRecoveryLevel", "2", "0"),
            ("DataPDUInOrder", "No", "Yes"),
            ("IFMarker", "Yes", "No"),
            ("X-com.example.Key", "1", "NotUnderstood"),
            ("MaxBurstLength", "huge", "Reject"),
            ("MaxBurstLength", "0x200", "512"),
            ("InitialR2T", "Maybe", "Reject"),
        ] {
            assert_eq!(ans(&mut n, k, offer), val(want), "{k}={offer}");
        }
        assert_eq!(
            ans(&mut n, "MaxRecvDataSegmentLength", "65536"),
            Answer::None
        );
        assert_eq!(n.max_xmit_data_segment_length, 65536);
        assert_eq!(n.header_digest, Digest::Crc32c);
        assert_eq!(n.first_burst_length, 512, "clamped to MaxBurstLength");
    }

    #[test]
    fn discovery_keys_are_irrelevant() {
        let mut n = Negotiated::default();
        let a = n.answer(&TargetLimits::default(), "MaxBurstLength", "1024", true);
        assert_eq!(a, val("Irrelevant"));
    }

    #[test]
    fn initial_r2t_or_function() {
        let limits = TargetLimits {
            initial_r2t: true,
            ..Default::default()
        };
        let mut n = Negotiated::default();
        assert_eq!(n.answer(&limits, "InitialR2T", "No", false), val("Yes"));
        assert!(n.initial_r2t);
    }
}
