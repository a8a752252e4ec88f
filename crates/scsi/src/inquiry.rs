//! INQUIRY (SPC-4 §6.6): standard data and the VPD pages 0x00, 0x80, 0x83, 0x8F (SPC-4 §7.8),
//! 0xB0, 0xB1, 0xB2 (SBC-3 §6.6).

use backstore::BlockDevice;

use crate::cdb::be16;
use crate::lu::LogicalUnit;
use crate::sense::SenseData;
use crate::{CmdResult, ScsiCommand, ScsiResponse};

/// Version descriptors (SPC-4 Table 144): SAM-5, iSCSI, SPC-4, SBC-3.
const VERSION_DESCRIPTORS: [u16; 4] = [0x00a0, 0x0960, 0x0460, 0x04c0];

const SUPPORTED_VPD: [u8; 7] = [0x00, 0x80, 0x83, 0x8f, 0xb0, 0xb1, 0xb2];

/// The NAA IEEE Registered Extended designator (NAA 6, SPC-4 §7.8.6.6.5) made as Linux LIO
/// makes it: the IEEE company id 0x001405, then the hexadecimal digits of the unit serial
/// number (other characters skipped) for the remaining 25 nibbles. An lrbd/LIO gateway and an
/// rbdgw gateway with one serial thus report the same WWID.
pub fn naa_designator(serial: &str) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = 0x60;
    b[1] = 0x01;
    b[2] = 0x40;
    b[3] = 0x50;
    // Nibbles 0-6 hold NAA 6 and the company id; the serial's digits fill 7-31.
    for (nibble, d) in (7..32).zip(serial.chars().filter_map(|c| c.to_digit(16))) {
        let byte = nibble / 2;
        if nibble % 2 == 0 {
            b[byte] = (d as u8) << 4;
        } else {
            b[byte] |= d as u8;
        }
    }
    b
}

fn designator(out: &mut Vec<u8>, proto_codeset: u8, piv_assoc_type: u8, value: &[u8]) {
    out.push(proto_codeset);
    out.push(piv_assoc_type);
    out.push(0);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

fn padded_ascii(s: &str, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s
        .bytes()
        .filter(|c| c.is_ascii_graphic() || *c == b' ')
        .take(len)
        .collect();
    v.resize(len, b' ');
    v
}

impl<B: BlockDevice> LogicalUnit<B> {
    pub(crate) fn inquiry(&self, cmd: &ScsiCommand<'_>) -> CmdResult {
        let cdb = cmd.cdb;
        let evpd = cdb[1] & 0x01 != 0;
        let page = cdb[2];
        let alloc = be16(cdb, 3) as usize;
        if cdb[1] & 0x02 != 0 {
            // CMDDT is obsolete (SPC-4 §6.6.1).
            return Err(SenseData::invalid_cdb(1, Some(1)));
        }
        if !evpd {
            if page != 0 {
                return Err(SenseData::invalid_cdb(2, None));
            }
            return Ok(ScsiResponse::data_alloc(self.standard_inquiry(), alloc));
        }
        let body = match page {
            0x00 => SUPPORTED_VPD.to_vec(),
            0x80 => self.cfg.serial.as_bytes().to_vec(),
            0x83 => self.device_identification(),
            0x8f => crate::xcopy::third_party_copy_vpd(self.cfg.block_size),
            0xb0 => self.block_limits(),
            0xb1 => {
                let mut v = vec![0u8; 0x3c];
                v[1] = 0x01; // MEDIUM ROTATION RATE: non-rotating medium
                v
            }
            0xb2 => self.logical_block_provisioning(),
            _ => return Err(SenseData::invalid_cdb(2, None)),
        };
        let mut d = Vec::with_capacity(4 + body.len());
        d.push(0x00); // peripheral qualifier 000b, direct-access block device
        d.push(page);
        d.extend_from_slice(&(body.len() as u16).to_be_bytes());
        d.extend_from_slice(&body);
        Ok(ScsiResponse::data_alloc(d, alloc))
    }

    fn standard_inquiry(&self) -> Vec<u8> {
        let mut d = vec![0u8; 96];
        d[0] = 0x00;
        d[1] = 0x00; // RMB=0: not removable
        d[2] = 0x06; // SPC-4
        d[3] = 0x10 | 0x02; // HISUP, response data format 2
        d[4] = (d.len() - 5) as u8;
        // TPGS=01b: implicit ALUA (SPC-4 §6.4.2); 3PC: a copy manager (EXTENDED COPY).
        d[5] = 0x10 | 0x08;
        d[6] = if self.cfg.port_groups.len() > 1 {
            0x10
        } else {
            0
        }; // MULTIP
        d[7] = 0x02; // CMDQUE
        d[8..16].copy_from_slice(&padded_ascii(&self.cfg.vendor, 8));
        d[16..32].copy_from_slice(&padded_ascii(&self.cfg.product, 16));
        d[32..36].copy_from_slice(&padded_ascii(&self.cfg.revision, 4));
        for (i, v) in VERSION_DESCRIPTORS.iter().enumerate() {
            d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
        }
        d
    }

    /// VPD 0x83 (SPC-4 §7.8.6): the LU's NAA and T10 vendor designators, then the target
    /// port's relative identifier, target port group and SCSI name string, and the target
    /// device's name.
    fn device_identification(&self) -> Vec<u8> {
        let mut v = Vec::new();
        // Binary code set, association LU, type NAA.
        designator(&mut v, 0x01, 0x03, &naa_designator(&self.cfg.serial));
        // ASCII, association LU, type T10 vendor ID: vendor then serial.
        designator(&mut v, 0x02, 0x01, &self.t10_vendor_designator());
        let tpg = self.cfg.local_tpg;
        let rel = self
            .cfg
            .port_groups
            .iter()
            .find(|g| g.tag == tpg)
            .map_or(tpg, |g| g.relative_port);
        // Protocol iSCSI (5) with PIV, association target port: relative target port (type 4)
        // and target port group (type 5).
        let mut rel_v = vec![0, 0];
        rel_v.extend_from_slice(&rel.to_be_bytes());
        designator(&mut v, 0x51, 0x94, &rel_v);
        let mut tpg_v = vec![0, 0];
        tpg_v.extend_from_slice(&tpg.to_be_bytes());
        designator(&mut v, 0x51, 0x95, &tpg_v);
        // SCSI name string (type 8, UTF-8) of the target port: "<iqn>,t,0x<tpgt>" (RFC 7143
        // §10.1.1), NUL-terminated and padded to a multiple of 4 (SPC-4 §7.8.6.11).
        let name_port = format!("{},t,0x{:04x}", self.cfg.target_name, tpg);
        designator(&mut v, 0x53, 0x98, &nul_pad4(&name_port));
        designator(&mut v, 0x53, 0xa8, &nul_pad4(&self.cfg.target_name));
        v
    }

    /// The T10 vendor ID designator: the vendor, padded to 8 bytes, then the serial.
    pub(crate) fn t10_vendor_designator(&self) -> Vec<u8> {
        let mut t10 = padded_ascii(&self.cfg.vendor, 8);
        t10.extend_from_slice(self.cfg.serial.as_bytes());
        t10
    }

    /// VPD 0xB0 (SBC-3 §6.6.4).
    fn block_limits(&self) -> Vec<u8> {
        let c = &self.cfg;
        let mut v = vec![0u8; 0x3c];
        // Bytes below are offsets of the page minus the 4-byte header.
        v[1] = c.max_compare_and_write_blocks;
        let gran = (4096 / c.block_size).max(1) as u16;
        v[2..4].copy_from_slice(&gran.to_be_bytes()); // OPTIMAL TRANSFER LENGTH GRANULARITY
        v[4..8].copy_from_slice(&c.max_transfer_blocks.to_be_bytes());
        v[8..12].copy_from_slice(&c.max_transfer_blocks.to_be_bytes()); // OPTIMAL TRANSFER LENGTH
        if self.dev.capabilities().discard_zeroes {
            v[16..20].copy_from_slice(&c.max_unmap_lba_count.to_be_bytes());
            v[20..24].copy_from_slice(&c.max_unmap_descriptors.to_be_bytes());
            v[24..28].copy_from_slice(&c.optimal_unmap_granularity.to_be_bytes());
            if let Some(a) = c.unmap_granularity_alignment {
                // UGAVALID and the alignment (31 bits), as LIO reports a non-zero one.
                v[28..32].copy_from_slice(&(0x8000_0000 | (a & 0x7fff_ffff)).to_be_bytes());
            }
        }
        v[32..40].copy_from_slice(&(c.max_write_same_blocks as u64).to_be_bytes());
        v
    }

    /// VPD 0xB2 (SBC-3 §6.6.5): thin provisioning with UNMAP and WRITE SAME, reads of
    /// unmapped blocks return zeroes.
    fn logical_block_provisioning(&self) -> Vec<u8> {
        let mut v = vec![0u8; 4];
        if self.dev.capabilities().discard_zeroes {
            v[1] = 0x80 | 0x40 | 0x20 | 0x04; // LBPU, LBPWS, LBPWS10, LBPRZ
            v[2] = 0x02; // PROVISIONING TYPE: thin
        }
        v
    }
}

fn nul_pad4(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naa_follows_lio_rule() {
        // LIO: naa.6001405 + the first 25 hex digits of the serial.
        let serial = "3b4f2e2c-7a1d-3c9e-8d1f-0a2b3c4d5e6f";
        let hex: String = naa_designator(serial)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let digits: String = serial
            .chars()
            .filter(|c| c.is_ascii_hexdigit())
            .take(25)
            .collect();
        assert_eq!(hex, format!("6001405{digits}"));
    }
}
