//! SCSI logical unit emulation for rbdgw: SPC-4 and SBC-3 commands over a
//! [`backstore::BlockDevice`], with no network I/O.
//!
//! [`LogicalUnit::execute`] takes a CDB, the data-out buffer and the I_T nexus it came from and
//! returns status, data-in and sense. The iSCSI layer maps that onto PDUs.
//!
//! Modules, one command family each (mini-redis' `cmd/` layout): [`sbc`] (block I/O and
//! capacity), [`inquiry`] (standard INQUIRY and VPD pages), [`mode`] (MODE SENSE/SELECT),
//! [`reports`] (REPORT LUNS, supported opcodes and task management functions), [`pr`]
//! (persistent reservations and RESERVE/RELEASE), [`alua`] (target port groups), [`abort`]
//! (tasks aborted on behalf of another nexus), [`xcopy`] and [`copy_manager`] (EXTENDED COPY
//! and RECEIVE COPY RESULTS).

use std::sync::Arc;

use bytes::Bytes;

pub mod abort;
pub mod alua;
mod cdb;
pub mod copy_manager;
pub mod inquiry;
pub mod lu;
pub mod mode;
mod odx;
pub mod pr;
pub mod reports;
pub mod rod_token;
pub mod sbc;
pub mod sense;
pub mod xcopy;

pub use abort::{AbortScope, TaskAbort};
pub use alua::{AccessState, TargetPortGroup};
pub use copy_manager::CopyTargets;
pub use lu::{LogicalUnit, LuConfig};
pub use sense::{Asc, ScsiStatus, SenseData, SenseKey};

/// The I_T nexus a command arrived on (SAM-5 §4.6.4): the iSCSI initiator port (name and
/// ISID, RFC 7143 §10.1) and the target port (relative target port identifier) it used.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ItNexus {
    pub initiator: Arc<str>,
    pub isid: [u8; 6],
    pub relative_port: u16,
}

impl ItNexus {
    /// The iSCSI initiator port name: `iqn...,i,0x<ISID>` (RFC 7143 §10.1.1).
    pub fn initiator_port(&self) -> String {
        let mut s = format!("{},i,0x", self.initiator);
        for b in self.isid {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

/// One SCSI command as the LU sees it.
#[derive(Debug, Clone)]
pub struct ScsiCommand<'a> {
    pub cdb: &'a [u8],
    pub nexus: &'a ItNexus,
    /// The data-out buffer: what the command needs of what the initiator sent.
    pub data_out: backstore::DataOutBuffer,
    /// The initiator's Expected Data Transfer Length (RFC 7143 §11.3.4).
    pub transfer_length: u32,
}

/// Outcome of a command: status, data-in (already cut to the CDB's allocation length) and
/// sense data for CHECK CONDITION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiResponse {
    pub status: ScsiStatus,
    pub data: Bytes,
    /// Data-in that the transport sends straight from a file instead of `data` (a READ
    /// from an in-memory engine; [`backstore::FileExtent`]).
    pub data_file: Option<backstore::FileExtent>,
    pub sense: Option<SenseData>,
}

impl ScsiResponse {
    pub fn good() -> Self {
        ScsiResponse {
            status: ScsiStatus::Good,
            data: Bytes::new(),
            data_file: None,
            sense: None,
        }
    }

    pub fn data(data: impl Into<Bytes>) -> Self {
        ScsiResponse {
            status: ScsiStatus::Good,
            data: data.into(),
            data_file: None,
            sense: None,
        }
    }

    /// Data-in sent from a file by the transport.
    pub fn file(extent: backstore::FileExtent) -> Self {
        ScsiResponse {
            data_file: Some(extent),
            ..Self::good()
        }
    }

    /// The data-in, wherever it is.
    pub fn data_in(&self) -> std::io::Result<Bytes> {
        match &self.data_file {
            Some(f) => f.read(),
            None => Ok(self.data.clone()),
        }
    }

    /// Data-in cut to the allocation length (SPC-4 §4.2.5.6).
    pub fn data_alloc(mut data: Vec<u8>, alloc_len: usize) -> Self {
        data.truncate(alloc_len);
        Self::data(data)
    }

    pub fn check(sense: SenseData) -> Self {
        ScsiResponse {
            status: ScsiStatus::CheckCondition,
            data: Bytes::new(),
            data_file: None,
            sense: Some(sense),
        }
    }

    pub fn status(status: ScsiStatus) -> Self {
        ScsiResponse {
            status,
            data: Bytes::new(),
            data_file: None,
            sense: None,
        }
    }

    pub fn conflict() -> Self {
        Self::status(ScsiStatus::ReservationConflict)
    }
}

impl From<SenseData> for ScsiResponse {
    fn from(s: SenseData) -> Self {
        ScsiResponse::check(s)
    }
}

/// Result type of command handlers: an error is a CHECK CONDITION.
pub type CmdResult = Result<ScsiResponse, SenseData>;

/// How many data-out bytes a CDB asks for (the SCSI "expected data transfer length" the
/// iSCSI layer compares with the initiator's, RFC 7143 §11.4.5.2), for a LU of `block_size`.
pub fn data_out_length(cdb: &[u8], block_size: u32) -> u64 {
    use cdb::{be16, be32};
    let bs = block_size as u64;
    match cdb.first().copied().unwrap_or(0) {
        0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e | 0x8b => {
            sbc::BlockRange::parse(cdb).blocks * bs
        }
        0x2f | 0xaf | 0x8f => match (cdb::get(cdb, 1) >> 1) & 3 {
            1 => sbc::BlockRange::parse(cdb).blocks * bs,
            3 => bs,
            _ => 0,
        },
        0x41 => bs,
        0x93 if cdb::get(cdb, 1) & 0x01 != 0 => 0,
        0x93 => bs,
        0x89 => 2 * cdb::get(cdb, 13) as u64 * bs,
        0x42 | 0x55 => be16(cdb, 7) as u64,
        0x15 => cdb::get(cdb, 4) as u64,
        0x5f => be32(cdb, 5) as u64,
        0x83 => be32(cdb, 10) as u64,
        _ => 0,
    }
}

/// Encodes a LUN for the iSCSI LUN field and REPORT LUNS (SAM-5 §4.7): peripheral device
/// addressing below 256, flat space addressing up to 16383.
pub fn encode_lun(lun: u64) -> u64 {
    if lun < 256 {
        lun << 48
    } else {
        (0x4000 | (lun & 0x3fff)) << 48
    }
}

/// Decodes the 8-byte LUN field; `None` for addressing methods we never hand out.
///
/// Peripheral device addressing with a nonzero bus identifier (`0x012c` for LUN 300) is read
/// as the 14-bit number it spells, as Linux's `scsilun_to_int` and so LIO read it: that is
/// what libiscsi sends for a LUN above 255 given by number (`iscsi://…/300`, qemu, the
/// libiscsi tools), and this target has no buses to address.
pub fn decode_lun(raw: u64) -> Option<u64> {
    let first = (raw >> 48) as u16;
    if raw & 0x0000_ffff_ffff_ffff != 0 {
        return None;
    }
    match first >> 14 {
        0 | 1 => Some((first & 0x3fff) as u64),
        _ => None,
    }
}

/// The answer for a LUN that does not exist (SPC-4 §4.6.4, §6.6.2): INQUIRY reports peripheral
/// qualifier 011b; REQUEST SENSE and everything else report LOGICAL UNIT NOT SUPPORTED.
pub fn no_such_lun(cdb: &[u8]) -> ScsiResponse {
    match cdb.first() {
        Some(&0x12) if cdb.len() >= 6 => {
            let mut d = vec![0u8; 36];
            d[0] = 0x7f;
            d[2] = 0x06;
            d[3] = 0x02;
            d[4] = 31;
            let alloc = u16::from_be_bytes([cdb[3], cdb[4]]) as usize;
            ScsiResponse::data_alloc(d, alloc)
        }
        _ => ScsiResponse::check(SenseData::illegal(Asc::LOGICAL_UNIT_NOT_SUPPORTED)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_encoding_round_trips() {
        for lun in [0u64, 1, 255, 256, 16383] {
            assert_eq!(decode_lun(encode_lun(lun)), Some(lun));
        }
        assert_eq!(encode_lun(1), 0x0001_0000_0000_0000);
        assert_eq!(decode_lun(0x0001_0000_0000_0001), None);
        // libiscsi's LUN 300: peripheral addressing, "bus" 1.
        assert_eq!(decode_lun(0x012c_0000_0000_0000), Some(300));
        assert_eq!(decode_lun(0x412c_0000_0000_0000), Some(300));
        assert_eq!(
            decode_lun(0x812c_0000_0000_0000),
            None,
            "logical unit addressing"
        );
    }

    #[test]
    fn initiator_port_name() {
        let n = ItNexus {
            initiator: "iqn.a".into(),
            isid: [0x40, 0, 1, 0x37, 0, 0],
            relative_port: 1,
        };
        assert_eq!(n.initiator_port(), "iqn.a,i,0x400001370000");
    }
}

#[cfg(test)]
mod copy_tests;
#[cfg(test)]
mod lu_tests;
