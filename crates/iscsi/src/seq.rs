//! Serial number arithmetic (RFC 1982, 32-bit) as RFC 7143 §4.2.2 requires for CmdSN and StatSN.
//! The session's command window itself lives with the connection driver
//! (`gateway::connection::writer::Window`), whose MaxCmdSN follows completions.

/// `a < b` in serial number arithmetic.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

/// `a <= b` in serial number arithmetic.
pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_compare_wraps() {
        assert!(sn_lt(0xffff_fff0, 5));
        assert!(!sn_lt(5, 0xffff_fff0));
        assert!(sn_le(7, 7));
        assert!(!sn_lt(7, 7));
    }
}
