//! The logical unit: configuration, shared state (unit attentions, mode parameters,
//! reservations) and the command dispatcher.
//!
//! Checks run in the order SAM-5 §5.14 and SPC-4 §5.9 give them: CDB sanity, unit attention,
//! reservation conflict, then the command itself.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};

use backstore::{BackstoreError, BlockDevice};
use tracing::warn;

use crate::abort::{AbortHook, AbortScope, TaskAbort};
use crate::alua::TargetPortGroup;
use crate::cdb::{cdb_len, get};
use crate::pr::PrState;
use crate::sense::{Asc, SenseData, SenseKey};
use crate::{CmdResult, ItNexus, ScsiCommand, ScsiResponse};

/// Static description of a logical unit.
#[derive(Debug, Clone)]
pub struct LuConfig {
    pub lun: u64,
    /// VPD 0x80 unit serial number (lrbd: the entry's uuid, or uuid3 of pool+target+image).
    pub serial: String,
    pub vendor: String,
    pub product: String,
    pub revision: String,
    /// Logical block length in bytes (512 or 4096).
    pub block_size: u32,
    pub read_only: bool,
    /// The iSCSI target name, for the SCSI name string designators of VPD 0x83.
    pub target_name: String,
    /// The target port group this gateway serves the LU through.
    pub local_tpg: u16,
    /// Every target port group of the target, on every gateway (ALUA, SPC-4 §5.16).
    pub port_groups: Vec<TargetPortGroup>,
    /// Initial write cache enable (caching mode page WCE).
    pub write_cache: bool,
    /// Block limits (VPD 0xB0), in logical blocks.
    pub max_transfer_blocks: u32,
    pub max_unmap_lba_count: u32,
    pub max_unmap_descriptors: u32,
    pub max_write_same_blocks: u32,
    pub max_compare_and_write_blocks: u8,
    pub optimal_unmap_granularity: u32,
    /// UNMAP GRANULARITY ALIGNMENT (reported, with UGAVALID, when set).
    pub unmap_granularity_alignment: Option<u32>,
}

impl LuConfig {
    /// Sensible defaults for a LU of `serial`, served by TPG 1 alone.
    pub fn new(lun: u64, serial: impl Into<String>, target_name: impl Into<String>) -> Self {
        LuConfig {
            lun,
            serial: serial.into(),
            vendor: "RBDGW".into(),
            product: "RBD disk".into(),
            revision: "0001".into(),
            block_size: 512,
            read_only: false,
            target_name: target_name.into(),
            local_tpg: 1,
            port_groups: vec![TargetPortGroup {
                tag: 1,
                relative_port: 1,
            }],
            write_cache: true,
            max_transfer_blocks: 16384,
            max_unmap_lba_count: 1024 * 1024,
            max_unmap_descriptors: 256,
            max_write_same_blocks: 0xffff,
            max_compare_and_write_blocks: 1,
            optimal_unmap_granularity: 8,
            unmap_granularity_alignment: None,
        }
    }
}

/// Mutable state of the LU on this gateway.
#[derive(Debug, Default)]
pub(crate) struct LuState {
    /// Pending unit attention conditions per I_T nexus (SAM-5 §5.14).
    pub ua: HashMap<ItNexus, VecDeque<Asc>>,
    /// Nexuses that have been told about power on / reset.
    pub seen: HashSet<ItNexus>,
    /// Caching mode page WCE.
    pub wce: bool,
    /// Persistent reservations and the SPC-2 holder, as last read from the shared metadata.
    pub pr: PrState,
    /// The metadata generation `pr` was read at.
    pub seen_generation: u64,
    /// The last reservation notice raised here (`PrState::notices`).
    pub applied_notice: u64,
    /// The LOGICAL UNIT RESET and CLEAR TASK SET counts (`PrState::resets`, `clears`) whose
    /// unit attentions and aborts were raised here: each once, however often a count is
    /// read (a read older than this gateway's own write may show a count again).
    pub applied_resets: u64,
    pub applied_clears: u64,
    /// Nexuses that sent PREVENT ALLOW MEDIUM REMOVAL with PREVENT=1 (SBC-3 §5.12).
    pub prevent: HashSet<ItNexus>,
    /// The owning TPG (ALUA Active/Optimized); None means every TPG is optimized.
    pub owner_tpg: Option<u16>,
    /// TPGs whose gateways are gone (not answering): Unavailable.
    pub gone_tpgs: Vec<u16>,
    /// TPGs whose gateways are drained for maintenance, this one's included: Standby.
    pub standby_tpgs: Vec<u16>,
    /// This gateway cannot tell who is alive (its own pings do not come back): its port is
    /// never reported Active/Optimized meanwhile (`alua::AccessState`).
    pub isolated: bool,
    /// Abort orders for the transport, not yet handed over (see [`LogicalUnit::on_task_abort`]).
    pub aborts: Vec<(AbortScope, Option<ItNexus>)>,
    /// Copy lists with an identifier (EXTENDED COPY, POPULATE TOKEN, WRITE USING TOKEN),
    /// running or held for RECEIVE COPY RESULTS and RECEIVE ROD TOKEN INFORMATION (SPC-4
    /// §6.18), per nexus: 64 finished ones at most, gone with the nexus or a reset.
    pub copies: HashMap<(ItNexus, crate::xcopy::ListId), crate::xcopy::CopyProgress>,
    /// This LU's ROD tokens (ODX), as last read from the shared metadata.
    pub tokens: crate::rod_token::TokenRegistry,
}

impl LuState {
    /// Queues a unit attention for every known nexus but `except`.
    pub fn ua_all(&mut self, asc: Asc, except: Option<&ItNexus>) {
        let seen: Vec<ItNexus> = self
            .seen
            .iter()
            .filter(|n| Some(*n) != except)
            .cloned()
            .collect();
        for n in seen {
            self.ua_one(&n, asc);
        }
    }

    pub fn ua_one(&mut self, n: &ItNexus, asc: Asc) {
        let q = self.ua.entry(n.clone()).or_default();
        if !q.contains(&asc) {
            q.push_back(asc);
        }
    }
}

/// A SCSI logical unit (a direct-access block device, SBC-3) over a backstore.
pub struct LogicalUnit<B> {
    pub(crate) cfg: LuConfig,
    pub(crate) dev: B,
    state: Mutex<LuState>,
    /// The device size (bytes) the initiators were last told of.
    known_size: std::sync::atomic::AtomicU64,
    /// Whether the device was reachable at the last command (see `notice_access_state`).
    was_available: std::sync::atomic::AtomicBool,
    /// A command came since the last [`LogicalUnit::take_served`]: initiators use this path.
    served: std::sync::atomic::AtomicBool,
    /// Where abort orders go ([`LogicalUnit::on_task_abort`]).
    abort_hook: std::sync::OnceLock<AbortHook>,
    /// The other LUs a copy may name ([`LogicalUnit::set_copy_targets`]).
    pub(crate) copy_targets:
        std::sync::OnceLock<std::sync::Arc<dyn crate::copy_manager::CopyTargets<B>>>,
}

/// Kinds of reset a task management function causes (SAM-5 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetKind {
    LogicalUnit,
    TargetWarm,
    TargetCold,
}

impl<B: BlockDevice> LogicalUnit<B> {
    pub fn new(cfg: LuConfig, dev: B) -> Self {
        let state = LuState {
            wce: cfg.write_cache,
            ..Default::default()
        };
        LogicalUnit {
            known_size: std::sync::atomic::AtomicU64::new(dev.size()),
            was_available: std::sync::atomic::AtomicBool::new(dev.available()),
            served: std::sync::atomic::AtomicBool::new(false),
            abort_hook: std::sync::OnceLock::new(),
            copy_targets: std::sync::OnceLock::new(),
            cfg,
            dev,
            state: Mutex::new(state),
        }
    }

    pub fn config(&self) -> &LuConfig {
        &self.cfg
    }

    pub fn device(&self) -> &B {
        &self.dev
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, LuState> {
        // State updates are single assignments; a panic elsewhere cannot leave it half-made.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of logical blocks.
    pub fn block_count(&self) -> u64 {
        self.dev.size() / self.cfg.block_size as u64
    }

    /// Sets where the LU sends the orders to abort other nexuses' tasks (PREEMPT AND ABORT,
    /// CLEAR TASK SET, LOGICAL UNIT RESET, here or through another gateway): the transport,
    /// which holds the tasks. Without it, orders are dropped. Set once.
    pub fn on_task_abort(&self, hook: AbortHook) {
        let _ = self.abort_hook.set(hook);
    }

    /// Hands the pending abort orders to the transport.
    pub(crate) fn emit_aborts(&self) {
        let orders = std::mem::take(&mut self.state().aborts);
        let mut sent: Vec<&(AbortScope, Option<ItNexus>)> = Vec::new();
        for o in &orders {
            // (A change retried against newer state may queue an order twice.)
            if sent.contains(&o) {
                continue;
            }
            sent.push(o);
            let order = TaskAbort {
                target: self.cfg.target_name.clone(),
                lun: self.cfg.lun,
                scope: o.0.clone(),
                except: o.1.clone(),
            };
            tracing::info!(
                lun = self.cfg.lun,
                scope = ?order.scope,
                "aborting the tasks of other nexuses (SAM-5 §5.6)"
            );
            if let Some(h) = self.abort_hook.get() {
                h(order);
            }
        }
    }

    /// CLEAR TASK SET (SAM-5 §7.4): every nexus's tasks end, on every gateway (one task set
    /// per LU). The issuer's own are the transport's to end.
    pub async fn clear_task_set(&self, issuer: &ItNexus) {
        let _ = self
            .update_shared(|st| {
                st.pr.clears += 1;
                st.aborts.push((AbortScope::All, Some(issuer.clone())));
                Ok(ScsiResponse::good())
            })
            .await;
    }

    /// Looks at the state shared with the other gateways (the ownership loop calls it a few
    /// times a second): a reservation change or reset made through another gateway takes
    /// effect here even while no command comes, e.g. on a write waiting for its data.
    pub async fn poll_shared(&self) {
        self.refresh_shared().await;
    }

    /// Loads the state kept in the backstore (reservations shared by every gateway).
    pub async fn load_persistent_state(&self) {
        self.state().seen_generation = u64::MAX;
        self.refresh_shared().await;
    }

    /// A task management reset (SAM-5 §6.3.4 LOGICAL UNIT RESET, §6.3.7 TARGET RESET):
    /// SPC-2 reservations and PREVENT are dropped; every nexus gets a unit attention.
    /// A LOGICAL UNIT RESET raises its unit attention on every nexus, the issuer's included
    /// (initiators re-check every path after it, as libiscsi's MultipathIO.Reset does); a
    /// target reset spares the nexus that asked for it, which knows.
    pub async fn reset(&self, kind: ResetKind, issuer: Option<&ItNexus>) {
        // The SPC-2 reservation goes; a LOGICAL UNIT RESET is counted where every gateway
        // sees it, so each raises the unit attention on its own paths.
        let _ = self
            .update_shared(|st| {
                st.pr.legacy_holder = None;
                if kind == ResetKind::LogicalUnit {
                    st.pr.resets += 1;
                }
                // Every other nexus's tasks end (SAM-5 §6.3.2, §6.3.4); the issuer's are
                // the transport's to end.
                st.aborts.push((AbortScope::All, issuer.cloned()));
                Ok(ScsiResponse::good())
            })
            .await;
        let mut st = self.state();
        st.prevent.clear();
        st.copies.clear();
        st.wce = self.cfg.write_cache;
        let asc = match kind {
            ResetKind::LogicalUnit => Asc::BUS_DEVICE_RESET,
            ResetKind::TargetWarm => Asc(0x29, 0x02),
            ResetKind::TargetCold => Asc(0x29, 0x01),
        };
        let except = if kind == ResetKind::LogicalUnit {
            None
        } else {
            issuer
        };
        st.ua_all(asc, except);
    }

    /// The I_T nexus is gone (logout, connection loss, session reinstatement): SPC-2
    /// reservations and PREVENT held through it end (SPC-4 §5.9.2, SBC-3 §5.12).
    pub async fn nexus_lost(&self, nexus: &ItNexus) {
        self.refresh_shared().await;
        let held = self.state().pr.legacy_holder.as_ref().is_some_and(|h| {
            h.initiator.eq_ignore_ascii_case(&nexus.initiator)
                && h.isid == nexus.isid
                && h.relative_port == nexus.relative_port
        });
        if held {
            let _ = self
                .update_shared(|st| {
                    st.pr.legacy_holder = None;
                    Ok(ScsiResponse::good())
                })
                .await;
        }
        let mut st = self.state();
        st.prevent.remove(nexus);
        st.ua.remove(nexus);
        st.seen.remove(nexus);
        st.copies.retain(|(n, _), _| n != nexus);
    }

    /// Raises a unit attention for every nexus (e.g. CAPACITY DATA HAS CHANGED).
    pub fn unit_attention_all(&self, asc: Asc) {
        self.state().ua_all(asc, None);
    }

    /// Whether the command would end in RESERVATION CONFLICT right now.
    pub async fn conflicts(&self, cmd: &ScsiCommand<'_>) -> bool {
        self.refresh_shared().await;
        self.reservation_conflict(cmd).is_some()
    }

    /// Whether a command came through this gateway since the last call (the caller keeps
    /// the time: no clock is read per command).
    pub fn take_served(&self) -> bool {
        self.served
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs one command.
    pub async fn execute(&self, cmd: &ScsiCommand<'_>) -> ScsiResponse {
        self.served
            .store(true, std::sync::atomic::Ordering::Relaxed);
        match self.execute_inner(cmd).await {
            Ok(r) => r,
            Err(sense) => ScsiResponse::check(sense),
        }
    }

    async fn execute_inner(&self, cmd: &ScsiCommand<'_>) -> CmdResult {
        let cdb = cmd.cdb;
        let op = get(cdb, 0);
        let need = cdb_len(op);
        if need == 0 || cdb.len() < need {
            return Err(SenseData::invalid_opcode());
        }
        // NACA (SAM-5 §5.11) is not supported: the CONTROL byte's NACA bit is invalid.
        if cdb[need - 1] & 0x04 != 0 {
            return Err(SenseData::invalid_cdb(need as u16 - 1, Some(2)));
        }
        // Shared state first: a reset or reservation change made through another gateway,
        // or the image resized.
        self.refresh_shared().await;
        self.notice_resize();
        self.notice_access_state();
        if let Some(resp) = self.unit_attention(cmd, op) {
            return Ok(resp);
        }
        // SPC-4 §5.16.2.5: while the device cannot be reached (fenced, reconnecting) this
        // port is transitioning: commands other than those that describe the LU are
        // answered NOT READY, and the initiator retries or moves to another path. While it
        // has not opened at all (a missing image: for as long as that takes) the port is
        // unavailable (§5.16.2.4.5), which makes an initiator move to another path at once.
        if !matches!(op, 0x12 | 0xa0 | 0x03 | 0xa3) {
            self.device_reachable()?;
        }
        // SPC-4 §5.16.2.4.4: through a port in standby (its gateway drained) only the commands
        // that describe or configure the LU are processed; the others are answered NOT READY,
        // and the initiator sends them on another path at once.
        if self.access_state(self.cfg.local_tpg) == crate::alua::AccessState::Standby
            && !matches!(
                op,
                0x12 | 0x4c
                    | 0x4d
                    | 0x15
                    | 0x55
                    | 0x1a
                    | 0x5a
                    | 0xa0
                    | 0x1c
                    | 0x1d
                    | 0xa3
                    | 0xa4
                    | 0x03
                    | 0x5e
                    | 0x5f
            )
        {
            return Err(SenseData::new(
                SenseKey::NotReady,
                Asc::LU_NOT_ACCESSIBLE_STANDBY,
            ));
        }
        if let Some(resp) = self.reservation_conflict(cmd) {
            return Ok(resp);
        }
        self.dispatch(cmd).await
    }

    /// NOT READY while the device cannot be reached: transitioning when it opened (fenced,
    /// reconnecting), unavailable while it has not opened at all.
    pub(crate) fn device_reachable(&self) -> Result<(), SenseData> {
        if self.dev.available() {
            return Ok(());
        }
        let asc = if self.dev.opened() {
            Asc::LU_NOT_ACCESSIBLE_TRANSITIONING
        } else {
            Asc::LU_NOT_ACCESSIBLE_UNAVAILABLE
        };
        Err(SenseData::new(SenseKey::NotReady, asc))
    }

    /// SPC-4 §5.16.2.6: this gateway's port went to or left the transitioning state (its
    /// backstore became unreachable, e.g. fenced, or reachable again): every nexus through it
    /// is told with ASYMMETRIC ACCESS STATE CHANGED, so the initiator re-reads the groups.
    fn notice_access_state(&self) {
        use std::sync::atomic::Ordering;
        let now = self.dev.available();
        if self.was_available.load(Ordering::Acquire) != now
            && self.was_available.swap(now, Ordering::AcqRel) != now
        {
            self.state()
                .ua_all(Asc::ASYMMETRIC_ACCESS_STATE_CHANGED, None);
        }
    }

    /// SBC-3 §4.6 / SPC-4 Annex: a changed capacity (an online resize) is announced to every
    /// I_T nexus with CAPACITY DATA HAS CHANGED before it sees the new READ CAPACITY.
    fn notice_resize(&self) {
        use std::sync::atomic::Ordering;
        let size = self.dev.size();
        // A plain load on every command; the swap only when the size moved.
        if self.known_size.load(Ordering::Acquire) == size {
            return;
        }
        let old = self.known_size.swap(size, Ordering::AcqRel);
        if old != size {
            tracing::info!(
                lun = self.cfg.lun,
                old,
                new = size,
                "capacity changed: unit attention to every nexus"
            );
            self.state().ua_all(Asc::CAPACITY_DATA_HAS_CHANGED, None);
        }
    }

    /// SAM-5 §5.14: a pending unit attention is reported (and cleared) by the next command
    /// other than INQUIRY, REPORT LUNS and REQUEST SENSE.
    fn unit_attention(&self, cmd: &ScsiCommand<'_>, op: u8) -> Option<ScsiResponse> {
        let mut st = self.state();
        // (Looked up first: the nexus is cloned only the first time it is seen.)
        if !st.seen.contains(cmd.nexus) {
            st.seen.insert(cmd.nexus.clone());
            st.ua_one(cmd.nexus, Asc::POWER_ON_RESET);
        }
        if matches!(op, 0x12 | 0xa0 | 0x03) {
            return None;
        }
        let asc = st.ua.get_mut(cmd.nexus)?.pop_front()?;
        Some(ScsiResponse::check(SenseData::unit_attention(asc)))
    }

    /// REQUEST SENSE (SPC-4 §6.39): reports a pending unit attention, else NO SENSE.
    pub(crate) fn request_sense(&self, cmd: &ScsiCommand<'_>) -> CmdResult {
        let cdb = cmd.cdb;
        if cdb[1] & 0x01 != 0 {
            // DESC=1: descriptor format sense is not supported.
            return Err(SenseData::invalid_cdb(1, Some(0)));
        }
        let alloc = cdb[4] as usize;
        let pending = self
            .state()
            .ua
            .get_mut(cmd.nexus)
            .and_then(|q| q.pop_front());
        let sense = match pending {
            Some(asc) => SenseData::unit_attention(asc),
            None => SenseData::new(SenseKey::NoSense, Asc::NO_ADDITIONAL),
        };
        Ok(ScsiResponse::data_alloc(sense.to_fixed().to_vec(), alloc))
    }

    async fn dispatch(&self, cmd: &ScsiCommand<'_>) -> CmdResult {
        let cdb = cmd.cdb;
        if let Some((lba, blocks)) = self.written_range(cdb) {
            self.before_write(lba, blocks).await?;
        }
        match cdb[0] {
            0x00 => Ok(ScsiResponse::good()), // TEST UNIT READY
            0x03 => self.request_sense(cmd),
            0x08 | 0x28 | 0xa8 | 0x88 => self.read(cdb).await,
            0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e => self.write(cdb, &cmd.data_out).await,
            0x2f | 0xaf | 0x8f => self.verify(cdb, &cmd.data_out.to_bytes()).await,
            0x34 | 0x90 => self.pre_fetch(cdb),
            0x35 | 0x91 => self.synchronize_cache(cdb).await,
            0x41 | 0x93 => {
                self.write_same(cdb, &cmd.data_out.to_bytes(), cmd.transfer_length)
                    .await
            }
            0x42 => self.unmap(cdb, &cmd.data_out.to_bytes()).await,
            0x8b => self.or_write(cdb, &cmd.data_out).await,
            0x89 => {
                self.compare_and_write(cdb, &cmd.data_out.to_bytes(), cmd.transfer_length)
                    .await
            }
            0x12 => self.inquiry(cmd),
            0x25 => self.read_capacity10(cdb),
            0x9e => match cdb[1] & 0x1f {
                0x10 => self.read_capacity16(cdb),
                0x12 => self.get_lba_status(cdb).await,
                _ => Err(SenseData::invalid_cdb(1, Some(4))),
            },
            0x1a | 0x5a => self.mode_sense(cdb),
            0x15 | 0x55 => self.mode_select(cmd),
            0xa3 => match cdb[1] & 0x1f {
                0x0a => self.report_target_port_groups(cdb),
                0x0c => self.report_supported_opcodes(cdb),
                0x0d => self.report_supported_tmfs(cdb),
                _ => Err(SenseData::invalid_cdb(1, Some(4))),
            },
            0x1b => self.start_stop_unit(cdb),
            0x1e => self.prevent_allow(cmd),
            0x16 | 0x56 => self.reserve(cmd).await,
            0x17 | 0x57 => self.release(cmd).await,
            0x5e => self.persistent_reserve_in(cmd),
            0x5f => self.persistent_reserve_out(cmd).await,
            0x37 | 0xb7 => self.read_defect_data(cdb),
            0x83 => match cdb[1] & 0x1f {
                0x00 => self.extended_copy(cmd).await,
                0x10 => self.populate_token(cmd).await,
                0x11 => self.write_using_token(cmd).await,
                _ => Err(SenseData::invalid_cdb(1, Some(4))),
            },
            0x84 if cdb[1] & 0x1f == 0x07 => self.receive_rod_token_information(cmd),
            0x84 => self.receive_copy_results(cmd),
            _ => Err(SenseData::invalid_opcode()),
        }
    }

    /// The blocks a write command's CDB names (UNMAP's are in its parameter list; copies name
    /// theirs themselves): ROD tokens standing for them are revoked before it runs.
    fn written_range(&self, cdb: &[u8]) -> Option<(u64, u64)> {
        match cdb[0] {
            0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e | 0x8b => {
                let r = crate::sbc::BlockRange::parse(cdb);
                Some((r.lba, r.blocks))
            }
            0x41 | 0x93 => {
                // WRITE SAME of 0 blocks: to the end of the medium.
                let r = crate::sbc::BlockRange::parse(cdb);
                let blocks = match r.blocks {
                    0 => self.block_count().saturating_sub(r.lba),
                    n => n,
                };
                Some((r.lba, blocks))
            }
            0x89 => Some((crate::cdb::be64(cdb, 2), get(cdb, 13) as u64)),
            _ => None,
        }
    }

    /// START STOP UNIT (SBC-3 §5.25): the medium is not removable, so LOEJ is refused; START
    /// and STOP are accepted (an RBD image has nothing to spin).
    fn start_stop_unit(&self, cdb: &[u8]) -> CmdResult {
        if cdb[4] & 0x02 != 0 {
            return Err(SenseData::invalid_cdb(4, Some(1)));
        }
        Ok(ScsiResponse::good())
    }

    /// PREVENT ALLOW MEDIUM REMOVAL (SBC-3 §5.12): recorded per nexus.
    fn prevent_allow(&self, cmd: &ScsiCommand<'_>) -> CmdResult {
        let prevent = cmd.cdb[4] & 0x03;
        let mut st = self.state();
        match prevent {
            0 => {
                st.prevent.remove(cmd.nexus);
            }
            1 => {
                st.prevent.insert(cmd.nexus.clone());
            }
            _ => return Err(SenseData::invalid_cdb(4, Some(0))),
        }
        Ok(ScsiResponse::good())
    }

    /// READ DEFECT DATA (10)/(12) (SBC-3 §5.13, §5.14): no defects to report.
    fn read_defect_data(&self, cdb: &[u8]) -> CmdResult {
        let (data, alloc) = if cdb[0] == 0x37 {
            (
                vec![0, cdb[2] & 0x1f, 0, 0],
                crate::cdb::be16(cdb, 7) as usize,
            )
        } else {
            (
                vec![0, cdb[1] & 0x1f, 0, 0, 0, 0, 0, 0],
                crate::cdb::be32(cdb, 6) as usize,
            )
        };
        Ok(ScsiResponse::data_alloc(data, alloc))
    }

    /// Maps a backstore failure to sense data (SPC-4 Annex D).
    pub(crate) fn io_error(&self, e: BackstoreError, write: bool) -> SenseData {
        warn!(lun = self.cfg.lun, "backstore I/O failed: {e}");
        match e {
            BackstoreError::OutOfRange { .. } => SenseData::lba_out_of_range(),
            BackstoreError::NotOwner => {
                SenseData::new(SenseKey::NotReady, Asc::LU_NOT_ACCESSIBLE_TRANSITIONING)
            }
            BackstoreError::NotOpen => {
                SenseData::new(SenseKey::NotReady, Asc::LU_NOT_ACCESSIBLE_UNAVAILABLE)
            }
            _ if write => SenseData::new(SenseKey::MediumError, Asc::WRITE_ERROR),
            _ => SenseData::new(SenseKey::MediumError, Asc::UNRECOVERED_READ_ERROR),
        }
    }
}
