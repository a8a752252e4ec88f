//! Sense data (SPC-4 §4.5) in fixed format (§4.5.3), and the status codes (SAM-5 §5.3).

/// SCSI status codes (SAM-5 §5.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ScsiStatus {
    Good = 0x00,
    CheckCondition = 0x02,
    ConditionMet = 0x04,
    Busy = 0x08,
    ReservationConflict = 0x18,
    TaskSetFull = 0x28,
    TaskAborted = 0x40,
}

/// Sense keys (SPC-4 §4.5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SenseKey {
    NoSense = 0x0,
    NotReady = 0x2,
    MediumError = 0x3,
    HardwareError = 0x4,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
    DataProtect = 0x7,
    CopyAborted = 0xa,
    AbortedCommand = 0xb,
    Miscompare = 0xe,
}

/// Additional sense code and qualifier (SPC-4 Annex D).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asc(pub u8, pub u8);

impl Asc {
    pub const NO_ADDITIONAL: Asc = Asc(0x00, 0x00);
    pub const INVALID_COMMAND_OPERATION_CODE: Asc = Asc(0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Asc = Asc(0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Asc = Asc(0x24, 0x00);
    pub const LOGICAL_UNIT_NOT_SUPPORTED: Asc = Asc(0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Asc = Asc(0x26, 0x00);
    pub const PARAMETER_LIST_LENGTH_ERROR: Asc = Asc(0x1a, 0x00);
    pub const WRITE_PROTECTED: Asc = Asc(0x27, 0x00);
    pub const POWER_ON_RESET: Asc = Asc(0x29, 0x00);
    pub const BUS_DEVICE_RESET: Asc = Asc(0x29, 0x03);
    pub const I_T_NEXUS_LOSS: Asc = Asc(0x29, 0x07);
    pub const MODE_PARAMETERS_CHANGED: Asc = Asc(0x2a, 0x01);
    pub const RESERVATIONS_PREEMPTED: Asc = Asc(0x2a, 0x03);
    pub const RESERVATIONS_RELEASED: Asc = Asc(0x2a, 0x04);
    pub const REGISTRATIONS_PREEMPTED: Asc = Asc(0x2a, 0x05);
    pub const ASYMMETRIC_ACCESS_STATE_CHANGED: Asc = Asc(0x2a, 0x06);
    pub const CAPACITY_DATA_HAS_CHANGED: Asc = Asc(0x2a, 0x09);
    pub const COMMANDS_CLEARED_BY_ANOTHER_INITIATOR: Asc = Asc(0x2f, 0x00);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Asc = Asc(0x39, 0x00);
    pub const REPORTED_LUNS_DATA_HAS_CHANGED: Asc = Asc(0x3f, 0x0e);
    pub const MISCOMPARE_DURING_VERIFY: Asc = Asc(0x1d, 0x00);
    pub const INVALID_FIELD_IN_INFORMATION_UNIT: Asc = Asc(0x0e, 0x03);
    pub const UNRECOVERED_READ_ERROR: Asc = Asc(0x11, 0x00);
    pub const WRITE_ERROR: Asc = Asc(0x0c, 0x00);
    pub const INTERNAL_TARGET_FAILURE: Asc = Asc(0x44, 0x00);
    pub const INSUFFICIENT_REGISTRATION_RESOURCES: Asc = Asc(0x55, 0x04);
    pub const MEDIUM_REMOVAL_PREVENTED: Asc = Asc(0x53, 0x02);
    pub const LU_NOT_ACCESSIBLE_TRANSITIONING: Asc = Asc(0x04, 0x0a);
    pub const LU_NOT_ACCESSIBLE_STANDBY: Asc = Asc(0x04, 0x0b);
    pub const LU_NOT_ACCESSIBLE_UNAVAILABLE: Asc = Asc(0x04, 0x0c);
    pub const OPERATION_IN_PROGRESS: Asc = Asc(0x00, 0x16);
    pub const UNREACHABLE_COPY_TARGET: Asc = Asc(0x08, 0x04);
    pub const THIRD_PARTY_DEVICE_FAILURE: Asc = Asc(0x0d, 0x01);
    pub const INCORRECT_COPY_TARGET_DEVICE_TYPE: Asc = Asc(0x0d, 0x03);
    pub const TOO_MANY_TARGET_DESCRIPTORS: Asc = Asc(0x26, 0x06);
    pub const UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE: Asc = Asc(0x26, 0x07);
    pub const TOO_MANY_SEGMENT_DESCRIPTORS: Asc = Asc(0x26, 0x08);
    pub const UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE: Asc = Asc(0x26, 0x09);
    pub const UNEXPECTED_INEXACT_SEGMENT: Asc = Asc(0x26, 0x0a);
    pub const UNSUPPORTED_TOKEN_TYPE: Asc = Asc(0x23, 0x01);
    pub const REMOTE_TOKEN_USAGE_NOT_SUPPORTED: Asc = Asc(0x23, 0x02);
    pub const TOKEN_UNKNOWN: Asc = Asc(0x23, 0x04);
    pub const TOKEN_CORRUPT: Asc = Asc(0x23, 0x05);
    pub const TOKEN_REVOKED: Asc = Asc(0x23, 0x06);
    pub const TOKEN_EXPIRED: Asc = Asc(0x23, 0x07);
    pub const TOKEN_DELETED: Asc = Asc(0x23, 0x09);
    pub const INVALID_TOKEN_LENGTH: Asc = Asc(0x23, 0x0a);
    pub const INSUFFICIENT_RESOURCES_TO_CREATE_ROD_TOKEN: Asc = Asc(0x55, 0x0d);
}

/// Sense data for one CHECK CONDITION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenseData {
    pub key: SenseKey,
    pub asc: Asc,
    /// The INFORMATION field (e.g. the miscompare offset), with VALID set.
    pub information: Option<u64>,
    /// Sense-key specific field pointer (SPC-4 §4.5.2.4.2): (in CDB?, byte, bit).
    pub field: Option<(bool, u16, Option<u8>)>,
    /// The COMMAND-SPECIFIC INFORMATION field (EXTENDED COPY: the number of the segment
    /// descriptor being processed in its last two bytes, SPC-4 §4.5.2.4 segment pointer).
    pub command_specific: Option<u32>,
}

impl SenseData {
    pub const fn new(key: SenseKey, asc: Asc) -> Self {
        SenseData {
            key,
            asc,
            information: None,
            field: None,
            command_specific: None,
        }
    }

    pub fn invalid_opcode() -> Self {
        SenseData::new(
            SenseKey::IllegalRequest,
            Asc::INVALID_COMMAND_OPERATION_CODE,
        )
        .with_cdb_field(0, Some(7))
    }

    /// INVALID FIELD IN CDB pointing at `byte` (and `bit` when given).
    pub fn invalid_cdb(byte: u16, bit: Option<u8>) -> Self {
        SenseData::new(SenseKey::IllegalRequest, Asc::INVALID_FIELD_IN_CDB)
            .with_cdb_field(byte, bit)
    }

    /// INVALID FIELD IN PARAMETER LIST pointing at `byte` of the data-out buffer.
    pub fn invalid_param(byte: u16, bit: Option<u8>) -> Self {
        let mut s = SenseData::new(
            SenseKey::IllegalRequest,
            Asc::INVALID_FIELD_IN_PARAMETER_LIST,
        );
        s.field = Some((false, byte, bit));
        s
    }

    pub fn illegal(asc: Asc) -> Self {
        SenseData::new(SenseKey::IllegalRequest, asc)
    }

    pub fn lba_out_of_range() -> Self {
        SenseData::illegal(Asc::LBA_OUT_OF_RANGE)
    }

    pub fn unit_attention(asc: Asc) -> Self {
        SenseData::new(SenseKey::UnitAttention, asc)
    }

    pub fn miscompare(offset: u64) -> Self {
        SenseData {
            information: Some(offset),
            ..SenseData::new(SenseKey::Miscompare, Asc::MISCOMPARE_DURING_VERIFY)
        }
    }

    pub fn with_cdb_field(mut self, byte: u16, bit: Option<u8>) -> Self {
        self.field = Some((true, byte, bit));
        self
    }

    /// Fixed format sense data (SPC-4 §4.5.3): 18 bytes.
    pub fn to_fixed(&self) -> [u8; 18] {
        let mut b = [0u8; 18];
        b[0] = 0x70;
        if let Some(info) = self.information {
            b[0] |= 0x80;
            b[3..7].copy_from_slice(&(info as u32).to_be_bytes());
        }
        b[2] = self.key as u8;
        b[7] = 10;
        if let Some(c) = self.command_specific {
            b[8..12].copy_from_slice(&c.to_be_bytes());
        }
        b[12] = self.asc.0;
        b[13] = self.asc.1;
        if let Some((cd, byte, bit)) = self.field {
            b[15] = 0x80 | if cd { 0x40 } else { 0 };
            if let Some(bit) = bit {
                b[15] |= 0x08 | (bit & 7);
            }
            b[16..18].copy_from_slice(&byte.to_be_bytes());
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_layout() {
        let s = SenseData::invalid_cdb(2, Some(5)).to_fixed();
        assert_eq!(s[0], 0x70);
        assert_eq!(s[2], 5);
        assert_eq!(s[7], 10);
        assert_eq!((s[12], s[13]), (0x24, 0));
        assert_eq!(s[15], 0x80 | 0x40 | 0x08 | 5);
        assert_eq!(u16::from_be_bytes([s[16], s[17]]), 2);
        let m = SenseData::miscompare(0x1234).to_fixed();
        assert_eq!(m[0], 0xf0);
        assert_eq!(&m[3..7], &[0, 0, 0x12, 0x34]);
        assert_eq!(m[2], 0xe);
    }
}
