//! Serial number arithmetic (RFC 1982, 32-bit) as RFC 7143 §4.2.2 requires for CmdSN and StatSN.

/// `a < b` in serial number arithmetic.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

/// `a <= b` in serial number arithmetic.
pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

/// The session's command window: ExpCmdSN and the number of commands the target accepts ahead of
/// it (RFC 7143 §4.2.2.1). MaxCmdSN = ExpCmdSN + depth - 1.
#[derive(Debug, Clone)]
pub struct CmdWindow {
    exp_cmd_sn: u32,
    depth: u32,
}

/// Where a received CmdSN falls relative to the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmdSnCheck {
    /// The next expected command: deliver it.
    InOrder,
    /// Inside the window but ahead of ExpCmdSN (a gap: only possible with several connections).
    Ahead,
    /// Outside the window (a duplicate or beyond MaxCmdSN): RFC 7143 §4.2.2.1 says silently
    /// ignore it.
    Outside,
}

impl CmdWindow {
    pub fn new(exp_cmd_sn: u32, depth: u32) -> Self {
        CmdWindow {
            exp_cmd_sn,
            depth: depth.max(1),
        }
    }

    pub fn exp_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn
    }

    pub fn max_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn.wrapping_add(self.depth - 1)
    }

    /// Classify a non-immediate command's CmdSN.
    pub fn check(&self, cmd_sn: u32) -> CmdSnCheck {
        if cmd_sn == self.exp_cmd_sn {
            CmdSnCheck::InOrder
        } else if sn_lt(self.exp_cmd_sn, cmd_sn) && sn_le(cmd_sn, self.max_cmd_sn()) {
            CmdSnCheck::Ahead
        } else {
            CmdSnCheck::Outside
        }
    }

    /// Account for an in-order command: ExpCmdSN moves on by one.
    pub fn advance(&mut self) {
        self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
    }
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

    #[test]
    fn window_classifies() {
        let mut w = CmdWindow::new(0xffff_ffff, 128);
        assert_eq!(w.max_cmd_sn(), 126);
        assert_eq!(w.check(0xffff_ffff), CmdSnCheck::InOrder);
        assert_eq!(w.check(3), CmdSnCheck::Ahead);
        assert_eq!(w.check(127), CmdSnCheck::Outside);
        assert_eq!(w.check(0xffff_fffe), CmdSnCheck::Outside);
        w.advance();
        assert_eq!(w.exp_cmd_sn(), 0);
        assert_eq!(w.check(0), CmdSnCheck::InOrder);
    }
}
