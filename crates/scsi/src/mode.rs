//! MODE SENSE (6)/(10) and MODE SELECT (6)/(10) (SPC-4 §6.11-6.14) with the caching
//! (SBC-3 §6.5.5), control (SPC-4 §7.5.8) and informational exceptions control (SPC-4
//! §7.5.11) pages. Only WCE is changeable; parameters cannot be saved.

use backstore::BlockDevice;

use crate::cdb::be16;
use crate::lu::LogicalUnit;
use crate::sense::{Asc, SenseData};
use crate::{CmdResult, ScsiCommand, ScsiResponse};

const CACHING: u8 = 0x08;
const CONTROL: u8 = 0x0a;
const INFO_EXCEPTIONS: u8 = 0x1c;

/// Page control (SPC-4 §6.11.1).
#[derive(Clone, Copy, PartialEq, Eq)]
enum PageControl {
    Current,
    Changeable,
    Default,
}

impl<B: BlockDevice> LogicalUnit<B> {
    fn page(&self, code: u8, pc: PageControl) -> Vec<u8> {
        let wce = match pc {
            PageControl::Current => self.state().wce,
            PageControl::Changeable => true,
            PageControl::Default => self.cfg.write_cache,
        };
        let ch = pc == PageControl::Changeable;
        match code {
            CACHING => {
                let mut p = vec![0u8; 20];
                p[0] = CACHING;
                p[1] = 18;
                if wce {
                    p[2] |= 0x04;
                }
                p
            }
            CONTROL => {
                let mut p = vec![0u8; 12];
                p[0] = CONTROL;
                p[1] = 10;
                if !ch {
                    p[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
                    p[5] = 0x40; // TAS: aborted tasks are reported as TASK ABORTED
                    p[8] = 0xff; // BUSY TIMEOUT PERIOD: unlimited
                    p[9] = 0xff;
                }
                p
            }
            _ => {
                let mut p = vec![0u8; 12];
                p[0] = INFO_EXCEPTIONS;
                p[1] = 10;
                p
            }
        }
    }

    pub(crate) fn mode_sense(&self, cdb: &[u8]) -> CmdResult {
        let ten = cdb[0] == 0x5a;
        let dbd = cdb[1] & 0x08 != 0;
        let llbaa = ten && cdb[1] & 0x10 != 0;
        let pc = match cdb[2] >> 6 {
            0 => PageControl::Current,
            1 => PageControl::Changeable,
            2 => PageControl::Default,
            _ => return Err(SenseData::illegal(Asc::SAVING_PARAMETERS_NOT_SUPPORTED)),
        };
        let code = cdb[2] & 0x3f;
        let subpage = cdb[3];
        let alloc = if ten {
            be16(cdb, 7) as usize
        } else {
            cdb[4] as usize
        };
        let pages: Vec<u8> = match (code, subpage) {
            (0x3f, 0x00) | (0x3f, 0xff) => [CACHING, CONTROL, INFO_EXCEPTIONS]
                .iter()
                .flat_map(|c| self.page(*c, pc))
                .collect(),
            (CACHING | CONTROL | INFO_EXCEPTIONS, 0x00) => self.page(code, pc),
            _ => return Err(SenseData::invalid_cdb(2, Some(5))),
        };
        // Block descriptor (SPC-4 §7.5.5): number of blocks and block length.
        let blocks = self.block_count();
        let bd: Vec<u8> = if dbd {
            Vec::new()
        } else if llbaa {
            let mut b = vec![0u8; 16];
            b[..8].copy_from_slice(&blocks.to_be_bytes());
            b[12..16].copy_from_slice(&self.cfg.block_size.to_be_bytes());
            b
        } else {
            let mut b = vec![0u8; 8];
            b[..4].copy_from_slice(&(blocks.min(0xffff_ffff) as u32).to_be_bytes());
            b[5..8].copy_from_slice(&self.cfg.block_size.to_be_bytes()[1..]);
            b
        };
        // Device-specific parameter (SBC-3 §6.5.1): WP, DPOFUA.
        let dsp = 0x10 | if self.cfg.read_only { 0x80 } else { 0 };
        let mut d = Vec::with_capacity(8 + bd.len() + pages.len());
        if ten {
            let len = (6 + bd.len() + pages.len()) as u16;
            d.extend_from_slice(&len.to_be_bytes());
            d.extend_from_slice(&[0, dsp, if llbaa { 1 } else { 0 }, 0]);
            d.extend_from_slice(&(bd.len() as u16).to_be_bytes());
        } else {
            d.extend_from_slice(&[(3 + bd.len() + pages.len()) as u8, 0, dsp, bd.len() as u8]);
        }
        d.extend_from_slice(&bd);
        d.extend_from_slice(&pages);
        Ok(ScsiResponse::data_alloc(d, alloc))
    }

    /// MODE SELECT: each page sent must match the current values except in changeable bits.
    pub(crate) fn mode_select(&self, cmd: &ScsiCommand<'_>) -> CmdResult {
        let cdb = cmd.cdb;
        let ten = cdb[0] == 0x55;
        if cdb[1] & 0x01 != 0 {
            return Err(SenseData::invalid_cdb(1, Some(0))); // SP: nothing can be saved
        }
        let len = if ten {
            be16(cdb, 7) as usize
        } else {
            cdb[4] as usize
        };
        if len == 0 {
            return Ok(ScsiResponse::good());
        }
        if cdb[1] & 0x10 == 0 {
            return Err(SenseData::invalid_cdb(1, Some(4))); // PF=0: vendor-specific pages
        }
        let params = cmd.data_out.to_bytes();
        let data = &params[..len.min(params.len())];
        let hdr = if ten { 8 } else { 4 };
        if data.len() < hdr {
            return Err(SenseData::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        let bd_len = if ten {
            be16(data, 6) as usize
        } else {
            data[3] as usize
        };
        let mut off = hdr + bd_len;
        if off > data.len() {
            return Err(SenseData::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        let mut new_wce = None;
        while off < data.len() {
            if data.len() < off + 2 {
                return Err(SenseData::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
            }
            let code = data[off] & 0x3f;
            if data[off] & 0x40 != 0 {
                return Err(SenseData::invalid_param(off as u16, Some(6))); // SPF: no subpages
            }
            let plen = data[off + 1] as usize + 2;
            if data.len() < off + plen {
                return Err(SenseData::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
            }
            let sent = &data[off..off + plen];
            if !matches!(code, CACHING | CONTROL | INFO_EXCEPTIONS) {
                return Err(SenseData::invalid_param(off as u16, None));
            }
            let cur = self.page(code, PageControl::Current);
            let changeable = self.page(code, PageControl::Changeable);
            if sent.len() != cur.len() {
                return Err(SenseData::invalid_param(off as u16 + 1, None));
            }
            for i in 2..cur.len() {
                let mask = !changeable[i];
                if (sent[i] ^ cur[i]) & mask != 0 {
                    return Err(SenseData::invalid_param((off + i) as u16, None));
                }
            }
            if code == CACHING {
                new_wce = Some(sent[2] & 0x04 != 0);
            }
            off += plen;
        }
        if let Some(wce) = new_wce {
            let mut st = self.state();
            if st.wce != wce {
                st.wce = wce;
                // SPC-4 §7.5.1: other nexuses learn of the change through a unit attention.
                st.ua_all(Asc::MODE_PARAMETERS_CHANGED, Some(cmd.nexus));
            }
        }
        Ok(ScsiResponse::good())
    }
}
