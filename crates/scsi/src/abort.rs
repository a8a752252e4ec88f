//! Tasks aborted on behalf of another I_T nexus (SAM-5 §5.6): what a PREEMPT AND ABORT
//! (SPC-4 §5.12.11.2.6), a CLEAR TASK SET or a LOGICAL UNIT RESET owes to the tasks of
//! nexuses other than the issuer's, on this gateway or on any other serving the LU.
//!
//! The LU decides *which* nexuses; the transport, which holds the tasks, aborts them. With
//! the control mode page's TAS bit set (as rbdgw reports it), each such task ends with status
//! TASK ABORTED (SAM-5 §5.3.1).

use crate::pr::Registration;
use crate::ItNexus;

/// Whose tasks a [`TaskAbort`] ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbortScope {
    /// The nexuses of one registration (PREEMPT AND ABORT).
    Registrant(Registration),
    /// Every nexus (one task set per LU: the control mode page's TST is 000b).
    All,
}

/// An order to abort the tasks of some nexuses on one LU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskAbort {
    /// The target the LU belongs to (its iSCSI name) and the LU's number there.
    pub target: String,
    pub lun: u64,
    pub scope: AbortScope,
    /// The issuer: its own tasks are not aborted by the order (a task management function
    /// ends them itself; a PERSISTENT RESERVE OUT is never aborted by its own effect).
    pub except: Option<ItNexus>,
}

impl TaskAbort {
    /// Whether the tasks of nexus `n` are to be aborted.
    pub fn applies_to(&self, n: &ItNexus) -> bool {
        if self.except.as_ref() == Some(n) {
            return false;
        }
        match &self.scope {
            AbortScope::All => true,
            AbortScope::Registrant(r) => r.matches(n),
        }
    }
}

/// Where a LU hands its abort orders to the transport.
pub type AbortHook = Box<dyn Fn(TaskAbort) + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    fn nexus(isid: u8, port: u16) -> ItNexus {
        ItNexus {
            initiator: "iqn.a".into(),
            isid: [0, 0, 0, 0, 0, isid],
            relative_port: port,
        }
    }

    #[test]
    fn an_order_spares_its_issuer_and_follows_the_registration() {
        let reg = Registration {
            initiator: "IQN.A".into(),
            isid: [0, 0, 0, 0, 0, 1],
            relative_port: 2,
            all_tg_pt: false,
            key: 7,
        };
        let a = TaskAbort {
            target: "t".into(),
            lun: 0,
            scope: AbortScope::Registrant(reg.clone()),
            except: None,
        };
        assert!(a.applies_to(&nexus(1, 2)));
        assert!(!a.applies_to(&nexus(1, 1)), "another target port");
        assert!(!a.applies_to(&nexus(2, 2)), "another initiator port");
        let all_ports = TaskAbort {
            scope: AbortScope::Registrant(Registration {
                all_tg_pt: true,
                ..reg
            }),
            ..a
        };
        assert!(all_ports.applies_to(&nexus(1, 1)));
        let all = TaskAbort {
            target: "t".into(),
            lun: 0,
            scope: AbortScope::All,
            except: Some(nexus(1, 1)),
        };
        assert!(all.applies_to(&nexus(2, 1)));
        assert!(!all.applies_to(&nexus(1, 1)), "the issuer");
    }
}
