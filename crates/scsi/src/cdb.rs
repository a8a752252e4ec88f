//! Big-endian field access on CDBs and parameter lists that never panics: a short buffer
//! reads as zeroes past its end (a CDB shorter than its opcode's length is rejected first).

pub fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([get(b, off), get(b, off + 1)])
}

pub fn be24(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([0, get(b, off), get(b, off + 1), get(b, off + 2)])
}

pub fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([
        get(b, off),
        get(b, off + 1),
        get(b, off + 2),
        get(b, off + 3),
    ])
}

pub fn be64(b: &[u8], off: usize) -> u64 {
    (be32(b, off) as u64) << 32 | be32(b, off + 4) as u64
}

pub fn get(b: &[u8], off: usize) -> u8 {
    b.get(off).copied().unwrap_or(0)
}

/// The CDB length implied by the opcode's group code (SPC-4 §4.2.5.1).
pub fn cdb_len(opcode: u8) -> usize {
    match opcode >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 0,
    }
}
