//! Asymmetric logical unit access, implicit only (SPC-4 §5.16): REPORT TARGET PORT GROUPS.
//! One target port group per gateway; the LU's owner gateway is Active/Optimized, the others
//! Active/Non-optimized.

use backstore::BlockDevice;

use crate::cdb::be32;
use crate::lu::LogicalUnit;
use crate::sense::SenseData;
use crate::{CmdResult, ScsiResponse};

/// A target port group: its tag (the iSCSI TPGT) and the one target port in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetPortGroup {
    pub tag: u16,
    pub relative_port: u16,
}

/// Asymmetric access states (SPC-4 §5.16.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AccessState {
    ActiveOptimized = 0x0,
    ActiveNonOptimized = 0x1,
    Standby = 0x2,
    Unavailable = 0x3,
    Transitioning = 0xf,
}

impl<B: BlockDevice> LogicalUnit<B> {
    /// The access state of a TPG for this LU.
    pub fn access_state(&self, tag: u16) -> AccessState {
        if tag == self.cfg.local_tpg && !self.dev.available() {
            // (See `execute_inner`: fenced for a moment, or not open yet for as long as that takes.)
            return if self.dev.opened() {
                AccessState::Transitioning
            } else {
                AccessState::Unavailable
            };
        }
        let st = self.state();
        if tag != self.cfg.local_tpg && st.gone_tpgs.contains(&tag) {
            return AccessState::Unavailable;
        }
        if st.standby_tpgs.contains(&tag) {
            return AccessState::Standby;
        }
        if tag == self.cfg.local_tpg && st.isolated {
            // The others may have taken the LU over by now: not optimized, yet still
            // active, so that an initiator left with this path (every gateway cut off from
            // the cluster for a moment) keeps its I/O waiting here rather than failing it.
            return AccessState::ActiveNonOptimized;
        }
        match st.owner_tpg {
            None => AccessState::ActiveOptimized,
            Some(owner) if owner == tag => AccessState::ActiveOptimized,
            Some(_) => AccessState::ActiveNonOptimized,
        }
    }

    /// Marks this gateway as cut off from the shared state (its own pings have not come back
    /// for a while) or back. A gateway cut off cannot know whether the others took its LUs
    /// over: a partitioned ex-owner whose link came back reported itself optimized until it
    /// learned it had been fenced, and the initiator sent its writes there. Announced like
    /// an owner change; true when it changed.
    pub fn set_isolated(&self, isolated: bool) -> bool {
        let mut st = self.state();
        if st.isolated == isolated {
            return false;
        }
        st.isolated = isolated;
        st.ua_all(crate::sense::Asc::ASYMMETRIC_ACCESS_STATE_CHANGED, None);
        true
    }

    /// The owning TPG (Active/Optimized), if one is set.
    pub fn owner_tpg(&self) -> Option<u16> {
        self.state().owner_tpg
    }

    /// Sets the owning TPG. A change alters the access state of two port groups, so every
    /// nexus through this gateway gets ASYMMETRIC ACCESS STATE CHANGED (SPC-4 §5.16.2.6:
    /// an implicit transition is announced to every I_T nexus) and re-reads the groups — the
    /// new owner's paths too: an initiator whose other paths died learns only there that the
    /// path it uses became active/optimized.
    pub fn set_owner_tpg(&self, owner: Option<u16>) {
        let mut st = self.state();
        if st.owner_tpg != owner {
            st.owner_tpg = owner;
            st.ua_all(crate::sense::Asc::ASYMMETRIC_ACCESS_STATE_CHANGED, None);
        }
    }

    /// Marks the TPGs whose gateways are gone (they stopped answering: killed, hung, cut
    /// off) as Unavailable (SPC-4 §5.16.2.4.5): an initiator then stops sending to their paths
    /// at once (Linux fails a path in that state) instead of waiting for its own timeouts. A
    /// change is announced like an owner change.
    pub fn set_gone_tpgs(&self, mut gone: Vec<u16>) {
        gone.sort_unstable();
        gone.retain(|t| *t != self.cfg.local_tpg);
        let mut st = self.state();
        if st.gone_tpgs != gone {
            st.gone_tpgs = gone;
            st.ua_all(crate::sense::Asc::ASYMMETRIC_ACCESS_STATE_CHANGED, None);
        }
    }

    /// Marks the TPGs whose gateways are drained for maintenance (this one's too) as Standby
    /// (SPC-4 §5.16.2.4.4): initiators keep those paths but send them no I/O. A change is
    /// announced like an owner change.
    pub fn set_standby_tpgs(&self, mut standby: Vec<u16>) {
        standby.sort_unstable();
        let mut st = self.state();
        if st.standby_tpgs != standby {
            st.standby_tpgs = standby;
            st.ua_all(crate::sense::Asc::ASYMMETRIC_ACCESS_STATE_CHANGED, None);
        }
    }

    /// REPORT TARGET PORT GROUPS (SPC-4 §6.37), length-only or extended header.
    pub(crate) fn report_target_port_groups(&self, cdb: &[u8]) -> CmdResult {
        let format = cdb[1] >> 5;
        let alloc = be32(cdb, 6) as usize;
        if format > 1 {
            return Err(SenseData::invalid_cdb(1, Some(7)));
        }
        let mut body = Vec::new();
        for g in &self.cfg.port_groups {
            let state = self.access_state(g.tag);
            let pref = if state == AccessState::ActiveOptimized {
                0x80
            } else {
                0
            };
            body.push(pref | state as u8);
            // Supported states: transitioning, unavailable, standby, non-optimized, optimized.
            body.push(0x80 | 0x08 | 0x04 | 0x02 | 0x01);
            body.extend_from_slice(&g.tag.to_be_bytes());
            body.push(0);
            body.push(0x02); // STATUS CODE: altered by implicit asymmetric access behaviour
            body.push(0);
            body.push(1); // TARGET PORT COUNT
            body.extend_from_slice(&[0, 0]);
            body.extend_from_slice(&g.relative_port.to_be_bytes());
        }
        let mut d = Vec::with_capacity(8 + body.len());
        // RETURN DATA LENGTH counts the descriptors only, in both formats.
        d.extend_from_slice(&(body.len() as u32).to_be_bytes());
        if format == 1 {
            d.extend_from_slice(&[0x10, 0x02, 0, 0]); // FORMAT TYPE 001b, IMPLICIT TRANSITION TIME
        }
        d.extend_from_slice(&body);
        Ok(ScsiResponse::data_alloc(d, alloc))
    }
}
