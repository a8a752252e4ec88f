//! REPORT LUNS (SPC-4 §6.33), REPORT SUPPORTED OPERATION CODES (§6.35) and REPORT SUPPORTED
//! TASK MANAGEMENT FUNCTIONS (§6.36).

use backstore::BlockDevice;

use crate::cdb::{be16, be32};
use crate::lu::LogicalUnit;
use crate::sense::SenseData;
use crate::{encode_lun, CmdResult, ScsiResponse};

/// A supported command: opcode, service action and its CDB usage data (SPC-4 §6.35.3: the
/// bits the device server looks at; the service action field holds the service action).
struct Supported {
    opcode: u8,
    sa: Option<u16>,
    usage: &'static [u8],
}

const fn c(opcode: u8, usage: &'static [u8]) -> Supported {
    Supported {
        opcode,
        sa: None,
        usage,
    }
}

const fn s(opcode: u8, sa: u16, usage: &'static [u8]) -> Supported {
    Supported {
        opcode,
        sa: Some(sa),
        usage,
    }
}

const F: u8 = 0xff;
const RW10: [u8; 10] = [0, 0xf8, F, F, F, F, 0x1f, F, F, 0x04];
const RW12: [u8; 12] = [0, 0xf8, F, F, F, F, F, F, F, F, 0x1f, 0x04];
const RW16: [u8; 16] = [0, 0xf8, F, F, F, F, F, F, F, F, F, F, F, F, 0x1f, 0x04];

macro_rules! with_op {
    ($op:expr, $b1:expr, $tmpl:expr) => {{
        const T: [u8; $tmpl.len()] = {
            let mut t = $tmpl;
            t[0] = $op;
            t[1] = $b1;
            t
        };
        &T
    }};
}

/// Every command this LU implements, in opcode order.
static COMMANDS: &[Supported] = &[
    c(0x00, &[0x00, 0, 0, 0, 0, 0x04]),
    c(0x03, &[0x03, 0x01, 0, 0, F, 0x04]),
    c(0x08, &[0x08, 0x1f, F, F, F, 0x04]),
    c(0x0a, &[0x0a, 0x1f, F, F, F, 0x04]),
    c(0x12, &[0x12, 0x01, F, F, F, 0x04]),
    c(0x15, &[0x15, 0x11, 0, 0, F, 0x04]),
    c(0x16, &[0x16, 0, 0, 0, 0, 0x04]),
    c(0x17, &[0x17, 0, 0, 0, 0, 0x04]),
    c(0x1a, &[0x1a, 0x08, F, F, F, 0x04]),
    c(0x1b, &[0x1b, 0x01, 0, 0x0f, 0xf7, 0x04]),
    c(0x1e, &[0x1e, 0, 0, 0, 0x03, 0x04]),
    c(0x25, &[0x25, 0, F, F, F, F, 0, 0, 0x01, 0x04]),
    c(0x28, with_op!(0x28, 0xf8, RW10)),
    c(0x2a, with_op!(0x2a, 0xf8, RW10)),
    c(0x2e, with_op!(0x2e, 0xf2, RW10)),
    c(0x2f, with_op!(0x2f, 0xf6, RW10)),
    c(0x34, with_op!(0x34, 0x02, RW10)),
    c(0x35, with_op!(0x35, 0x02, RW10)),
    c(0x37, &[0x37, 0, 0x1f, 0, 0, 0, 0, F, F, 0x04]),
    c(0x41, with_op!(0x41, 0xe8, RW10)),
    c(0x42, &[0x42, 0, 0, 0, 0, 0, 0x1f, F, F, 0x04]),
    c(0x55, &[0x55, 0x11, 0, 0, 0, 0, 0, F, F, 0x04]),
    c(0x56, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0x04]),
    c(0x57, &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0x04]),
    c(0x5a, &[0x5a, 0x18, F, F, 0, 0, 0, F, F, 0x04]),
    s(0x5e, 0x00, &[0x5e, 0x00, 0, 0, 0, 0, 0, F, F, 0x04]),
    s(0x5e, 0x01, &[0x5e, 0x01, 0, 0, 0, 0, 0, F, F, 0x04]),
    s(0x5e, 0x02, &[0x5e, 0x02, 0, 0, 0, 0, 0, F, F, 0x04]),
    s(0x5e, 0x03, &[0x5e, 0x03, 0, 0, 0, 0, 0, F, F, 0x04]),
    s(0x5f, 0x00, &[0x5f, 0x00, F, 0, 0, F, F, F, F, 0x04]),
    s(0x5f, 0x01, &[0x5f, 0x01, F, 0, 0, F, F, F, F, 0x04]),
    s(0x5f, 0x02, &[0x5f, 0x02, F, 0, 0, F, F, F, F, 0x04]),
    s(0x5f, 0x03, &[0x5f, 0x03, F, 0, 0, F, F, F, F, 0x04]),
    s(0x5f, 0x04, &[0x5f, 0x04, F, 0, 0, F, F, F, F, 0x04]),
    s(0x5f, 0x05, &[0x5f, 0x05, F, 0, 0, F, F, F, F, 0x04]),
    s(0x5f, 0x06, &[0x5f, 0x06, F, 0, 0, F, F, F, F, 0x04]),
    s(0x5f, 0x07, &[0x5f, 0x07, F, 0, 0, F, F, F, F, 0x04]),
    c(0x88, with_op!(0x88, 0xf8, RW16)),
    c(
        0x89,
        &[0x89, 0xf8, F, F, F, F, F, F, F, F, 0, 0, 0, F, 0x1f, 0x04],
    ),
    c(0x8a, with_op!(0x8a, 0xf8, RW16)),
    c(0x8b, with_op!(0x8b, 0xf8, RW16)),
    c(0x8e, with_op!(0x8e, 0xf2, RW16)),
    c(0x8f, with_op!(0x8f, 0xf6, RW16)),
    c(0x90, with_op!(0x90, 0x02, RW16)),
    c(0x91, with_op!(0x91, 0x02, RW16)),
    c(0x93, with_op!(0x93, 0xe9, RW16)),
    s(
        0x83,
        0x00,
        &[0x83, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, F, F, F, F, 0, 0x04],
    ),
    s(
        0x83,
        0x10,
        &[0x83, 0x10, 0, 0, 0, 0, F, F, F, F, F, F, F, F, 0x3f, 0x04],
    ),
    s(
        0x83,
        0x11,
        &[0x83, 0x11, 0, 0, 0, 0, F, F, F, F, F, F, F, F, 0x3f, 0x04],
    ),
    s(
        0x84,
        0x00,
        &[0x84, 0x00, F, 0, 0, 0, 0, 0, 0, 0, F, F, F, F, 0, 0x04],
    ),
    s(
        0x84,
        0x01,
        &[0x84, 0x01, F, 0, 0, 0, 0, 0, 0, 0, F, F, F, F, 0, 0x04],
    ),
    s(
        0x84,
        0x03,
        &[0x84, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, F, F, F, F, 0, 0x04],
    ),
    s(
        0x84,
        0x07,
        &[0x84, 0x07, F, F, F, F, 0, 0, 0, 0, F, F, F, F, 0, 0x04],
    ),
    s(
        0x9e,
        0x10,
        &[0x9e, 0x10, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0x04],
    ),
    s(
        0x9e,
        0x12,
        &[0x9e, 0x12, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0x04],
    ),
    c(0xa0, &[0xa0, 0, F, 0, 0, 0, F, F, F, F, 0, 0x04]),
    s(0xa3, 0x0a, &[0xa3, 0xea, 0, 0, 0, 0, F, F, F, F, 0, 0x04]),
    s(
        0xa3,
        0x0c,
        &[0xa3, 0x0c, 0x87, F, F, F, F, F, F, F, 0, 0x04],
    ),
    s(
        0xa3,
        0x0d,
        &[0xa3, 0x0d, 0x80, 0, 0, 0, F, F, F, F, 0, 0x04],
    ),
    c(0xa8, with_op!(0xa8, 0xf8, RW12)),
    c(0xaa, with_op!(0xaa, 0xf8, RW12)),
    c(0xae, with_op!(0xae, 0xf2, RW12)),
    c(0xaf, with_op!(0xaf, 0xf6, RW12)),
    c(0xb7, &[0xb7, 0x1f, 0, 0, 0, 0, F, F, F, F, 0, 0x04]),
];

/// Command timeouts descriptor (SPC-4 §6.35.4): no recommended or nominal timeouts.
const TIMEOUTS: [u8; 12] = [0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// REPORT LUNS for a target whose LUNs are `luns` (SPC-4 §6.33).
pub fn report_luns(cdb: &[u8], luns: &[u64]) -> ScsiResponse {
    let alloc = be32(cdb, 6) as usize;
    if alloc < 16 {
        return ScsiResponse::check(SenseData::invalid_cdb(6, None));
    }
    let list: &[u64] = match crate::cdb::get(cdb, 2) {
        0x00 | 0x02 => luns,
        0x01 => &[],
        _ => return ScsiResponse::check(SenseData::invalid_cdb(2, None)),
    };
    let mut d = Vec::with_capacity(8 + 8 * list.len());
    d.extend_from_slice(&((list.len() * 8) as u32).to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    for l in list {
        d.extend_from_slice(&encode_lun(*l).to_be_bytes());
    }
    ScsiResponse::data_alloc(d, alloc)
}

impl<B: BlockDevice> LogicalUnit<B> {
    pub(crate) fn report_supported_opcodes(&self, cdb: &[u8]) -> CmdResult {
        let rctd = cdb[2] & 0x80 != 0;
        let options = cdb[2] & 0x07;
        let (op, sa) = (cdb[3], be16(cdb, 4));
        let alloc = be32(cdb, 6) as usize;
        let d = match options {
            0 => {
                let mut body = Vec::new();
                for cmd in COMMANDS {
                    body.push(cmd.opcode);
                    body.push(0);
                    body.extend_from_slice(&cmd.sa.unwrap_or(0).to_be_bytes());
                    body.push(0);
                    body.push(
                        if rctd { 0x02 } else { 0 } | if cmd.sa.is_some() { 0x01 } else { 0 },
                    );
                    body.extend_from_slice(&(cmd.usage.len() as u16).to_be_bytes());
                    if rctd {
                        body.extend_from_slice(&TIMEOUTS);
                    }
                }
                let mut d = (body.len() as u32).to_be_bytes().to_vec();
                d.extend_from_slice(&body);
                d
            }
            1..=3 => {
                let has_sa = COMMANDS.iter().any(|c| c.opcode == op && c.sa.is_some());
                let found = match options {
                    1 if has_sa => return Err(SenseData::invalid_cdb(2, Some(0))),
                    1 => COMMANDS.iter().find(|c| c.opcode == op),
                    2 if !has_sa && COMMANDS.iter().any(|c| c.opcode == op) => {
                        return Err(SenseData::invalid_cdb(2, Some(1)));
                    }
                    _ if has_sa => COMMANDS.iter().find(|c| c.opcode == op && c.sa == Some(sa)),
                    _ => COMMANDS.iter().find(|c| c.opcode == op),
                };
                let mut d = vec![0u8; 4];
                match found {
                    Some(cmd) => {
                        d[1] = 0x03 | if rctd { 0x80 } else { 0 };
                        d[2..4].copy_from_slice(&(cmd.usage.len() as u16).to_be_bytes());
                        d.extend_from_slice(cmd.usage);
                        if rctd {
                            d.extend_from_slice(&TIMEOUTS);
                        }
                    }
                    None => d[1] = 0x01,
                }
                d
            }
            _ => return Err(SenseData::invalid_cdb(2, Some(2))),
        };
        Ok(ScsiResponse::data_alloc(d, alloc))
    }

    pub(crate) fn report_supported_tmfs(&self, cdb: &[u8]) -> CmdResult {
        let repd = cdb[2] & 0x80 != 0;
        let alloc = be32(cdb, 6) as usize;
        // ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET, TARGET RESET.
        let mut d = vec![0x80 | 0x40 | 0x10 | 0x08 | 0x02, 0, 0, 0];
        if repd {
            d[3] = 0x0c;
            d.resize(16, 0);
        }
        Ok(ScsiResponse::data_alloc(d, alloc))
    }
}
