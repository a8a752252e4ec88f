//! Reservations: persistent reservations (SPC-4 §5.9, PERSISTENT RESERVE IN §6.15 and OUT
//! §6.16) and the SPC-2 RESERVE/RELEASE (6)/(10) that older initiators still send.
//!
//! The persistent state is one serializable [`PrState`], saved in the backstore's metadata so
//! that APTPL survives restarts (and, through shared metadata, is one state for all gateways).

use backstore::{BlockDevice, Publish};
use serde::{Deserialize, Serialize};

use crate::abort::AbortScope;
use crate::cdb::{be16, be32, be64};
use crate::lu::{LogicalUnit, LuState};
use crate::sense::{Asc, SenseData};
use crate::{CmdResult, ItNexus, ScsiCommand, ScsiResponse};

/// Metadata key of the persistent reservation state.
pub const METADATA_KEY: &str = "pr_state";

/// Persistent reservation types (SPC-4 §6.16.3 Table 180).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrType {
    WriteExclusive = 1,
    ExclusiveAccess = 3,
    WriteExclusiveRegistrantsOnly = 5,
    ExclusiveAccessRegistrantsOnly = 6,
    WriteExclusiveAllRegistrants = 7,
    ExclusiveAccessAllRegistrants = 8,
}

impl PrType {
    /// SPC-4's name of the type (Table 172).
    pub fn name(self) -> &'static str {
        match self {
            PrType::WriteExclusive => "Write Exclusive",
            PrType::ExclusiveAccess => "Exclusive Access",
            PrType::WriteExclusiveRegistrantsOnly => "Write Exclusive - Registrants Only",
            PrType::ExclusiveAccessRegistrantsOnly => "Exclusive Access - Registrants Only",
            PrType::WriteExclusiveAllRegistrants => "Write Exclusive - All Registrants",
            PrType::ExclusiveAccessAllRegistrants => "Exclusive Access - All Registrants",
        }
    }

    fn from_u8(v: u8) -> Option<PrType> {
        use PrType::*;
        Some(match v {
            1 => WriteExclusive,
            3 => ExclusiveAccess,
            5 => WriteExclusiveRegistrantsOnly,
            6 => ExclusiveAccessRegistrantsOnly,
            7 => WriteExclusiveAllRegistrants,
            8 => ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Registrants-only and all-registrants types let every registered nexus access.
    fn registrants_access(self) -> bool {
        !matches!(self, PrType::WriteExclusive | PrType::ExclusiveAccess)
    }

    fn exclusive_access(self) -> bool {
        matches!(
            self,
            PrType::ExclusiveAccess
                | PrType::ExclusiveAccessRegistrantsOnly
                | PrType::ExclusiveAccessAllRegistrants
        )
    }
}

/// One registered I_T nexus (or, with ALL_TG_PT, an initiator port on every target port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub initiator: String,
    pub isid: [u8; 6],
    pub relative_port: u16,
    pub all_tg_pt: bool,
    pub key: u64,
}

impl Registration {
    /// Whether `n` is a nexus of this registration.
    pub fn matches(&self, n: &ItNexus) -> bool {
        self.initiator.eq_ignore_ascii_case(&n.initiator)
            && self.isid == n.isid
            && (self.all_tg_pt || self.relative_port == n.relative_port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// Index into the registrations of the holder (ignored for all-registrants types).
    pub holder: Registration,
    pub kind: PrType,
}

/// The persistent reservation state of one LU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrState {
    pub generation: u32,
    pub registrations: Vec<Registration>,
    pub reservation: Option<Reservation>,
    pub aptpl: bool,
    /// The SPC-2 RESERVE(6)/(10) holder, kept here so that every gateway enforces it.
    #[serde(default)]
    pub legacy_holder: Option<Registration>,
    /// LOGICAL UNIT RESETs so far, through any gateway: each gateway raises the reset's unit
    /// attention on its own nexuses when it sees the count grow.
    #[serde(default)]
    pub resets: u64,
    /// CLEAR TASK SETs so far, through any gateway: each aborts the tasks of every nexus, on
    /// every gateway (one task set per LU).
    #[serde(default)]
    pub clears: u64,
    /// Unit attentions owed to registrants by the latest changes (SPC-4 §5.9.11: PREEMPT,
    /// CLEAR and RELEASE tell the other registrants), for every gateway to raise on the
    /// nexuses it serves: the nexus that must hear it may sit on another gateway. Numbered;
    /// each gateway raises each once. Only the last [`NOTICES_KEPT`] are kept.
    #[serde(default)]
    pub notices: Vec<PrNotice>,
    #[serde(default)]
    pub notice_seq: u64,
    /// Writes of this state so far, through any gateway: every compare-and-set that changes
    /// it adds one. A read that started before a write and ended after it returns the older
    /// state; this tells it from the newer one this gateway already holds.
    #[serde(default)]
    pub version: u64,
}

/// A unit attention for the nexuses a registration names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrNotice {
    pub seq: u64,
    pub to: Registration,
    pub asc: [u8; 2],
    /// PREEMPT AND ABORT: the tasks of `to`'s nexuses are aborted too.
    #[serde(default)]
    pub abort: bool,
}

/// Notices kept in the shared state: a gateway that missed more than this many reservation
/// changes between two of its commands would miss unit attentions.
const NOTICES_KEPT: usize = 32;

/// Owes `asc` to the nexuses of registration `to`, wherever they are: raised here at once on
/// the ones this gateway serves, and by every other gateway when it loads the state. With
/// `abort_by` (PREEMPT AND ABORT through that nexus), their tasks are aborted as well.
fn notify(st: &mut LuState, to: &Registration, asc: Asc, abort_by: Option<&ItNexus>) {
    st.pr.notice_seq += 1;
    st.pr.notices.push(PrNotice {
        seq: st.pr.notice_seq,
        to: to.clone(),
        asc: [asc.0, asc.1],
        abort: abort_by.is_some(),
    });
    let excess = st.pr.notices.len().saturating_sub(NOTICES_KEPT);
    st.pr.notices.drain(..excess);
    raise_local(st, to, asc);
    if let Some(by) = abort_by {
        st.aborts
            .push((AbortScope::Registrant(to.clone()), Some(by.clone())));
    }
    st.applied_notice = st.pr.notice_seq;
}

/// Raises `asc` on the nexuses of `to` this gateway has seen.
fn raise_local(st: &mut LuState, to: &Registration, asc: Asc) {
    let here: Vec<ItNexus> = st.seen.iter().filter(|s| to.matches(s)).cloned().collect();
    for n in here {
        st.ua_one(&n, asc);
    }
}

/// Installs shared state read from the metadata; a reset made through another gateway shows
/// as a larger reset count and becomes a unit attention here too. A state older than the one
/// held is not installed: a read overtaken by this gateway's own write (the ownership loop's
/// poll while a PERSISTENT RESERVE OUT is written) would otherwise undo the write here, and
/// its reset count coming back would raise the reset's unit attention a second time.
pub(crate) fn install(st: &mut LuState, new: PrState) {
    let first_load = st.seen_generation == u64::MAX;
    if !first_load && new.version < st.pr.version {
        return;
    }
    install_read(st, new, first_load);
}

/// Installs the state a compare-and-set is about to be based on, whatever its version.
fn install_read(st: &mut LuState, new: PrState, first_load: bool) {
    let reset = new.resets > st.applied_resets;
    if !first_load && reset {
        st.ua_all(Asc::BUS_DEVICE_RESET, None);
    }
    // A reset or CLEAR TASK SET through another gateway aborts the tasks here too (SAM-5
    // §7.3, §7.6: one task set per LU).
    if !first_load && (reset || new.clears > st.applied_clears) {
        st.aborts.push((AbortScope::All, None));
    }
    st.applied_resets = st.applied_resets.max(new.resets);
    st.applied_clears = st.applied_clears.max(new.clears);
    if !first_load {
        let applied = st.applied_notice;
        for n in new.notices.iter().filter(|n| n.seq > applied) {
            raise_local(st, &n.to, Asc(n.asc[0], n.asc[1]));
            if n.abort {
                st.aborts.push((AbortScope::Registrant(n.to.clone()), None));
            }
        }
    }
    st.applied_notice = st.applied_notice.max(new.notice_seq);
    st.pr = new;
}

impl PrState {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(b: &[u8]) -> Result<PrState, serde_json::Error> {
        serde_json::from_slice(b)
    }

    /// The nexus as a registration-shaped identity (for the SPC-2 holder).
    pub(crate) fn identity(n: &ItNexus) -> Registration {
        Registration {
            initiator: n.initiator.to_string(),
            isid: n.isid,
            relative_port: n.relative_port,
            all_tg_pt: false,
            key: 0,
        }
    }

    fn registration(&self, n: &ItNexus) -> Option<&Registration> {
        self.registrations.iter().find(|r| r.matches(n))
    }

    fn is_holder(&self, n: &ItNexus) -> bool {
        match &self.reservation {
            None => false,
            Some(r) if r.kind.all_registrants() => self.registration(n).is_some(),
            Some(r) => r.holder.matches(n),
        }
    }

    /// SPC-4 §5.9.10 (Table 50-style): whether `n` may run a command of this class now.
    fn conflicts(&self, n: &ItNexus, class: AccessClass) -> bool {
        let Some(res) = &self.reservation else {
            return false;
        };
        if self.is_holder(n) || (res.kind.registrants_access() && self.registration(n).is_some()) {
            return false;
        }
        match class {
            AccessClass::Allowed => false,
            AccessClass::Read => res.kind.exclusive_access(),
            AccessClass::Write => true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AccessClass {
    /// Allowed under any reservation (INQUIRY, REPORT LUNS, PR IN/OUT, ...).
    Allowed,
    /// Conflicts only under exclusive-access reservations.
    Read,
    /// Conflicts under every reservation.
    Write,
}

fn access_class(cdb: &[u8]) -> AccessClass {
    match cdb[0] {
        0x12 | 0xa0 | 0x03 | 0x5e | 0x5f | 0xa3 | 0x25 | 0x00 => AccessClass::Allowed,
        0x9e if cdb[1] & 0x1f == 0x10 => AccessClass::Allowed,
        // POPULATE TOKEN reads (SBC-3 Table: as READ).
        0x83 if cdb[1] & 0x1f == 0x10 => AccessClass::Read,
        0x08 | 0x28 | 0xa8 | 0x88 | 0x2f | 0xaf | 0x8f | 0x34 | 0x90 | 0x1a | 0x5a | 0x37
        | 0xb7 | 0x9e | 0x84 => AccessClass::Read,
        _ => AccessClass::Write,
    }
}

fn pr_conflict() -> CmdResult {
    Ok(ScsiResponse::conflict())
}

/// iSCSI TransportID, format 01b (initiator port with ISID, SPC-4 §7.6.4.6).
fn transport_id(initiator: &str, isid: &[u8; 6]) -> Vec<u8> {
    let mut name = format!("{initiator},i,0x");
    for b in isid {
        name.push_str(&format!("{b:02x}"));
    }
    let mut v = name.into_bytes();
    v.push(0);
    while v.len() % 4 != 0 || v.len() < 20 {
        v.push(0);
    }
    let mut t = vec![0x40 | 0x05, 0];
    t.extend_from_slice(&(v.len() as u16).to_be_bytes());
    t.extend_from_slice(&v);
    t
}

/// Parses an iSCSI TransportID (format 00b or 01b) into name and ISID.
fn parse_transport_id(b: &[u8]) -> Option<(String, Option<[u8; 6]>)> {
    if b.len() < 4 || b[0] & 0x0f != 0x05 {
        return None;
    }
    let len = be16(b, 2) as usize;
    let body = b.get(4..4 + len)?;
    let s = std::str::from_utf8(body).ok()?.trim_end_matches('\0');
    match b[0] >> 6 {
        0 => Some((s.to_string(), None)),
        1 => {
            let (name, isid) = s.split_once(",i,0x").or_else(|| s.split_once(",I,0X"))?;
            if isid.len() != 12 {
                return None;
            }
            let mut out = [0u8; 6];
            for (i, o) in out.iter_mut().enumerate() {
                *o = u8::from_str_radix(isid.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            Some((name.to_string(), Some(out)))
        }
        _ => None,
    }
}

impl<B: BlockDevice> LogicalUnit<B> {
    /// SPC-2 reservation and persistent reservation conflicts for any command.
    pub(crate) fn reservation_conflict(&self, cmd: &ScsiCommand<'_>) -> Option<ScsiResponse> {
        let st = self.state();
        if let Some(holder) = &st.pr.legacy_holder {
            let exempt = matches!(cmd.cdb[0], 0x12 | 0xa0 | 0x03 | 0x17 | 0x57 | 0xa3);
            if !holder.matches(cmd.nexus) && !exempt {
                return Some(ScsiResponse::conflict());
            }
        }
        st.pr
            .conflicts(cmd.nexus, access_class(cmd.cdb))
            .then(ScsiResponse::conflict)
    }

    /// RESERVE (6)/(10) (SPC-2 §7.21): the whole LU, for this nexus.
    pub(crate) async fn reserve(&self, cmd: &ScsiCommand<'_>) -> CmdResult {
        if cmd.cdb[0] == 0x56 && cmd.cdb[1] & 0x12 != 0 {
            return Err(SenseData::invalid_cdb(1, Some(4))); // third-party / long ID
        }
        let n = cmd.nexus;
        self.update_shared(|st| {
            // SPC-4 §5.9.1: with any persistent registration, RESERVE and RELEASE conflict.
            if !st.pr.registrations.is_empty() {
                return pr_conflict();
            }
            match &st.pr.legacy_holder {
                Some(h) if !h.matches(n) => pr_conflict(),
                _ => {
                    st.pr.legacy_holder = Some(PrState::identity(n));
                    Ok(ScsiResponse::good())
                }
            }
        })
        .await
    }

    /// RELEASE (6)/(10) (SPC-2 §7.17): releasing someone else's reservation is a no-op.
    pub(crate) async fn release(&self, cmd: &ScsiCommand<'_>) -> CmdResult {
        let n = cmd.nexus;
        self.update_shared(|st| {
            if !st.pr.registrations.is_empty() {
                return pr_conflict();
            }
            if st.pr.legacy_holder.as_ref().is_some_and(|h| h.matches(n)) {
                st.pr.legacy_holder = None;
            }
            Ok(ScsiResponse::good())
        })
        .await
    }

    /// Applies `f` to the reservation state shared by every gateway: read it, apply, and
    /// compare-and-set it back, again if another gateway changed it meanwhile. Only a GOOD
    /// outcome is written.
    pub(crate) async fn update_shared(&self, f: impl Fn(&mut LuState) -> CmdResult) -> CmdResult {
        let r = self.update_shared_once(f).await;
        self.emit_aborts();
        r
    }

    async fn update_shared_once(&self, f: impl Fn(&mut LuState) -> CmdResult) -> CmdResult {
        for _ in 0..64 {
            // A try that loses the race must not count its notices as raised: the winner's
            // notices may carry the same numbers.
            let applied = {
                let st = self.state();
                (st.applied_notice, st.applied_resets, st.applied_clears)
            };
            let generation = self.dev.metadata_generation();
            let old = self
                .dev
                .metadata_get(METADATA_KEY)
                .await
                .map_err(|e| self.metadata_error(e))?;
            let (result, new, written, orders) = {
                let mut st = self.state();
                let first_load = st.seen_generation == u64::MAX;
                install_read(
                    &mut st,
                    old.as_deref()
                        .and_then(|b| PrState::decode(b).ok())
                        .unwrap_or_default(),
                    first_load,
                );
                st.seen_generation = generation;
                // Abort orders stand only if the change is written.
                let orders = st.aborts.len();
                let r = f(&mut st);
                if !matches!(r, Ok(ref r) if r.status == crate::ScsiStatus::Good) {
                    st.aborts.truncate(orders);
                    return r;
                }
                // This gateway's own reset or clear is raised by its caller.
                st.applied_resets = st.applied_resets.max(st.pr.resets);
                st.applied_clears = st.applied_clears.max(st.pr.clears);
                let mut new = st.pr.encode();
                if old.as_deref() != Some(&new[..]) {
                    st.pr.version += 1;
                    new = st.pr.encode();
                }
                (r, new, st.pr.clone(), orders)
            };
            if old.as_deref() == Some(&new[..]) {
                return result;
            }
            if self
                .dev
                .metadata_compare_and_set(METADATA_KEY, old, new, Publish::SeenByAll)
                .await
                .map_err(|e| self.metadata_error(e))?
            {
                // A read that began before the write may have installed the older state
                // meanwhile (`install` keeps a newer one, but this one was not yet
                // written when it looked).
                let mut st = self.state();
                if st.pr.version < written.version {
                    st.pr = written;
                }
                // The next command reads the state again (once): a change through another
                // gateway whose notice arrived while this one was written must not be
                // taken as seen.
                return result;
            }
            let mut st = self.state();
            (st.applied_notice, st.applied_resets, st.applied_clears) = applied;
            st.aborts.truncate(orders);
        }
        Err(SenseData::new(
            crate::sense::SenseKey::AbortedCommand,
            Asc::NO_ADDITIONAL,
        ))
    }

    /// The reservation state as it is now, to compare with later ([`Self::power_loss`]);
    /// None when it cannot be read.
    /// The persistent reservation as this gateway last read it: its type and holder (the
    /// initiator name; every registrant for the all-registrants types), and how many keys are
    /// registered.
    pub fn reservation_summary(&self) -> (Option<(&'static str, String)>, usize) {
        let st = self.state();
        let r = st.pr.reservation.as_ref().map(|r| {
            let holder = match r.kind {
                PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants => {
                    "every registrant".to_string()
                }
                _ => r.holder.initiator.clone(),
            };
            (r.kind.name(), holder)
        });
        (r, st.pr.registrations.len())
    }

    pub async fn reservation_snapshot(&self) -> Option<Vec<u8>> {
        let v = self.dev.metadata_get(METADATA_KEY).await.ok()?;
        Some(
            v.and_then(|b| PrState::decode(&b).ok())
                .unwrap_or_default()
                .encode(),
        )
    }

    /// The LU lost power as a whole (every gateway serving it was down): registrations made
    /// without APTPL, their reservation and an SPC-2 reservation do not survive that (SPC-4
    /// §5.9.5; the shared state outlives the gateways, so it is dropped here). With APTPL they
    /// persist. Only if the state is still `before` (taken before this gateway looked for
    /// others): a gateway that started at the same time and already serves may have taken
    /// new registrations since, which are not the lost power's to drop. True when something
    /// was dropped.
    pub async fn power_loss(&self, before: &[u8]) -> bool {
        let dropped = std::sync::atomic::AtomicBool::new(false);
        let r = self
            .update_shared(|st| {
                if st.pr.encode() != before {
                    return Ok(ScsiResponse::good());
                }
                let pr = &mut st.pr;
                let drop_pr =
                    !pr.aptpl && (!pr.registrations.is_empty() || pr.reservation.is_some());
                if drop_pr {
                    pr.registrations.clear();
                    pr.reservation = None;
                    // SPC-4 §6.16.2: PRgeneration is zero after a power on.
                    pr.generation = 0;
                }
                let drop_legacy = pr.legacy_holder.take().is_some();
                if drop_pr || drop_legacy {
                    dropped.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(ScsiResponse::good())
            })
            .await;
        r.is_ok() && dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn metadata_error(&self, e: backstore::BackstoreError) -> SenseData {
        tracing::warn!(lun = self.cfg.lun, "reservation state unavailable: {e}");
        SenseData::illegal(Asc::INSUFFICIENT_REGISTRATION_RESOURCES)
    }

    /// Reloads the shared reservation state when another gateway (or this one) changed it:
    /// one memory read when nothing changed.
    pub(crate) async fn refresh_shared(&self) {
        let generation = self.dev.metadata_generation();
        if self.state().seen_generation == generation {
            return;
        }
        match self.dev.metadata_get(METADATA_KEY).await {
            Ok(v) => {
                let mut st = self.state();
                install(
                    &mut st,
                    v.and_then(|b| PrState::decode(&b).ok()).unwrap_or_default(),
                );
                st.seen_generation = generation;
            }
            Err(e) => tracing::warn!(lun = self.cfg.lun, "cannot reload reservation state: {e}"),
        }
        self.reload_tokens().await;
        self.emit_aborts();
    }

    pub(crate) fn persistent_reserve_in(&self, cmd: &ScsiCommand<'_>) -> CmdResult {
        let cdb = cmd.cdb;
        let alloc = be16(cdb, 7) as usize;
        let st = self.state();
        let pr = &st.pr;
        let mut d = pr.generation.to_be_bytes().to_vec();
        match cdb[1] & 0x1f {
            0x00 => {
                // READ KEYS
                d.extend_from_slice(&((pr.registrations.len() * 8) as u32).to_be_bytes());
                for r in &pr.registrations {
                    d.extend_from_slice(&r.key.to_be_bytes());
                }
            }
            0x01 => {
                // READ RESERVATION
                match &pr.reservation {
                    None => d.extend_from_slice(&0u32.to_be_bytes()),
                    Some(res) => {
                        d.extend_from_slice(&16u32.to_be_bytes());
                        let key = if res.kind.all_registrants() {
                            0
                        } else {
                            res.holder.key
                        };
                        d.extend_from_slice(&key.to_be_bytes());
                        d.extend_from_slice(&[0, 0, 0, 0, 0, res.kind as u8, 0, 0]);
                    }
                }
            }
            0x02 => {
                // REPORT CAPABILITIES (SPC-4 §6.15.4): CRH, ATP_C, PTPL_C; TMV with ALLOW
                // COMMANDS 0; PTPL_A; every type.
                d = vec![
                    0,
                    8,
                    0x10 | 0x04 | 0x01,
                    0x80 | if pr.aptpl { 0x01 } else { 0 },
                    0x80 | 0x40 | 0x20 | 0x08 | 0x02,
                    0x01,
                    0,
                    0,
                ];
            }
            0x03 => {
                // READ FULL STATUS (SPC-4 §6.15.5)
                let mut body = Vec::new();
                for r in &pr.registrations {
                    let holder = pr
                        .reservation
                        .as_ref()
                        .is_some_and(|res| res.kind.all_registrants() || res.holder == *r);
                    body.extend_from_slice(&r.key.to_be_bytes());
                    body.extend_from_slice(&[0; 4]);
                    body.push(if r.all_tg_pt { 0x02 } else { 0 } | holder as u8);
                    body.push(if holder {
                        pr.reservation.as_ref().map_or(0, |res| res.kind as u8)
                    } else {
                        0
                    });
                    body.extend_from_slice(&[0; 4]);
                    body.extend_from_slice(&r.relative_port.to_be_bytes());
                    let tid = transport_id(&r.initiator, &r.isid);
                    body.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                    body.extend_from_slice(&tid);
                }
                d.extend_from_slice(&(body.len() as u32).to_be_bytes());
                d.extend_from_slice(&body);
            }
            _ => return Err(SenseData::invalid_cdb(1, Some(4))),
        }
        Ok(ScsiResponse::data_alloc(d, alloc))
    }

    pub(crate) async fn persistent_reserve_out(&self, cmd: &ScsiCommand<'_>) -> CmdResult {
        let cdb = cmd.cdb;
        let sa = cdb[1] & 0x1f;
        let scope = cdb[2] >> 4;
        let kind = cdb[2] & 0x0f;
        let len = be32(cdb, 5) as usize;
        if sa > 7 {
            return Err(SenseData::invalid_cdb(1, Some(4)));
        }
        if len > cmd.data_out.len() {
            return Err(SenseData::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        let params = cmd.data_out.to_bytes();
        let p = &params[..len];
        if len < 24 {
            return Err(SenseData::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        let key = be64(p, 0);
        let sark = be64(p, 8);
        let (spec_i_pt, all_tg_pt, aptpl) =
            (p[20] & 0x08 != 0, p[20] & 0x04 != 0, p[20] & 0x01 != 0);
        if sa != 7 && (spec_i_pt || len != 24) {
            // SPEC_I_PT is not supported (SIP_C=0): only a 24-byte list is valid.
            return if spec_i_pt {
                Err(SenseData::invalid_param(20, Some(3)))
            } else {
                Err(SenseData::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR))
            };
        }
        let needs_type = matches!(sa, 1 | 2 | 4 | 5);
        let pr_type = PrType::from_u8(kind);
        if needs_type && (scope != 0 || pr_type.is_none()) {
            return Err(SenseData::invalid_cdb(2, None));
        }
        let n = cmd.nexus;
        self.update_shared(|st| {
            let r = match sa {
                0 | 6 => register(st, n, key, sark, sa == 6, all_tg_pt, aptpl),
                1 => reserve(st, n, key, pr_type),
                2 => release(st, n, key, pr_type),
                3 => clear(st, n, key),
                4 | 5 => preempt(st, n, key, sark, pr_type, sa == 5),
                _ => register_and_move(st, n, key, sark, p),
            };
            // Every successful PR OUT but RESERVE and RELEASE advances PRgeneration
            // (SPC-4 §6.15.2).
            if matches!(r, Ok(ref r) if r.status == crate::ScsiStatus::Good) && !matches!(sa, 1 | 2)
            {
                st.pr.generation = st.pr.generation.wrapping_add(1);
            }
            r
        })
        .await
    }
}

fn register(
    st: &mut LuState,
    n: &ItNexus,
    key: u64,
    sark: u64,
    ignore: bool,
    all_tg_pt: bool,
    aptpl: bool,
) -> CmdResult {
    let pr = &mut st.pr;
    let existing = pr.registrations.iter().position(|r| r.matches(n));
    match existing {
        None => {
            if !ignore && key != 0 {
                return pr_conflict();
            }
            if sark != 0 {
                pr.registrations.push(Registration {
                    initiator: n.initiator.to_string(),
                    isid: n.isid,
                    relative_port: n.relative_port,
                    all_tg_pt,
                    key: sark,
                });
                pr.aptpl = aptpl;
            }
        }
        Some(i) => {
            if !ignore && pr.registrations[i].key != key {
                return pr_conflict();
            }
            if sark == 0 {
                unregister(st, i);
            } else {
                let old = pr.registrations[i].clone();
                pr.registrations[i].key = sark;
                if let Some(res) = &mut pr.reservation {
                    if res.holder == old {
                        res.holder.key = sark;
                    }
                }
                pr.aptpl = aptpl;
            }
        }
    }
    Ok(ScsiResponse::good())
}

/// Removes registration `i`; a holder's reservation goes with it (SPC-4 §5.9.11.2.3).
fn unregister(st: &mut LuState, i: usize) {
    let reg = st.pr.registrations.remove(i);
    let Some(res) = st.pr.reservation.clone() else {
        return;
    };
    let released = if res.kind.all_registrants() {
        st.pr.registrations.is_empty()
    } else {
        res.holder == reg
    };
    if released {
        st.pr.reservation = None;
        if res.kind.registrants_access() && !res.kind.all_registrants() {
            ua_registrants(st, Asc::RESERVATIONS_RELEASED, None);
        }
    }
}

fn ua_registrants(st: &mut LuState, asc: Asc, except: Option<&ItNexus>) {
    let to: Vec<Registration> = st
        .pr
        .registrations
        .iter()
        .filter(|r| except.is_none_or(|n| !r.matches(n)))
        .cloned()
        .collect();
    for r in to {
        notify(st, &r, asc, None);
    }
}

fn reserve(st: &mut LuState, n: &ItNexus, key: u64, kind: Option<PrType>) -> CmdResult {
    let kind = kind.ok_or(SenseData::invalid_cdb(2, None))?;
    let pr = &mut st.pr;
    let Some(reg) = pr.registration(n).cloned() else {
        return pr_conflict();
    };
    if reg.key != key {
        return pr_conflict();
    }
    match &pr.reservation {
        None => {
            pr.reservation = Some(Reservation { holder: reg, kind });
            Ok(ScsiResponse::good())
        }
        Some(res) if pr.is_holder(n) && res.kind == kind => Ok(ScsiResponse::good()),
        Some(_) => pr_conflict(),
    }
}

fn release(st: &mut LuState, n: &ItNexus, key: u64, kind: Option<PrType>) -> CmdResult {
    let Some(reg) = st.pr.registration(n).cloned() else {
        return pr_conflict();
    };
    if reg.key != key {
        return pr_conflict();
    }
    let Some(res) = st.pr.reservation.clone() else {
        return Ok(ScsiResponse::good());
    };
    if !st.pr.is_holder(n) {
        return Ok(ScsiResponse::good());
    }
    if Some(res.kind) != kind {
        // SPC-4 §5.9.11.2.2: INVALID RELEASE OF PERSISTENT RESERVATION.
        return Err(SenseData::illegal(Asc(0x26, 0x04)));
    }
    st.pr.reservation = None;
    if res.kind.registrants_access() {
        ua_registrants(st, Asc::RESERVATIONS_RELEASED, Some(n));
    }
    Ok(ScsiResponse::good())
}

fn clear(st: &mut LuState, n: &ItNexus, key: u64) -> CmdResult {
    let Some(reg) = st.pr.registration(n) else {
        return pr_conflict();
    };
    if reg.key != key {
        return pr_conflict();
    }
    ua_registrants(st, Asc::RESERVATIONS_PREEMPTED, Some(n));
    st.pr.registrations.clear();
    st.pr.reservation = None;
    Ok(ScsiResponse::good())
}

/// PREEMPT and PREEMPT AND ABORT (SPC-4 §5.9.11.4; §5.12.11.2.6: with ABORT, every task of
/// the preempted nexuses, on whatever gateway, is aborted too).
fn preempt(
    st: &mut LuState,
    n: &ItNexus,
    key: u64,
    sark: u64,
    kind: Option<PrType>,
    abort: bool,
) -> CmdResult {
    let Some(me) = st.pr.registration(n).cloned() else {
        return pr_conflict();
    };
    if me.key != key {
        return pr_conflict();
    }
    let res = st.pr.reservation.clone();
    let remove = |st: &mut LuState, pred: &dyn Fn(&Registration) -> bool| -> usize {
        let gone: Vec<Registration> = st
            .pr
            .registrations
            .iter()
            .filter(|r| pred(r))
            .cloned()
            .collect();
        for g in &gone {
            notify(st, g, Asc::REGISTRATIONS_PREEMPTED, abort.then_some(n));
        }
        st.pr.registrations.retain(|r| !pred(r));
        gone.len()
    };
    match res {
        None => {
            if sark == 0 {
                return Err(SenseData::invalid_param(8, None));
            }
            if remove(st, &|r: &Registration| r.key == sark) == 0 {
                return pr_conflict();
            }
        }
        Some(res) if res.kind.all_registrants() => {
            let kind = kind.ok_or(SenseData::invalid_cdb(2, None))?;
            if sark == 0 {
                // Preempt everybody else and take the reservation.
                remove(st, &|r: &Registration| r != &me);
                st.pr.reservation = Some(Reservation { holder: me, kind });
            } else if remove(st, &|r: &Registration| r.key == sark && r != &me) == 0 {
                return pr_conflict();
            }
        }
        Some(res) => {
            if res.holder.key == sark {
                let kind = kind.ok_or(SenseData::invalid_cdb(2, None))?;
                remove(st, &|r: &Registration| r.key == sark && r != &me);
                st.pr.reservation = Some(Reservation { holder: me, kind });
            } else {
                if sark == 0 {
                    return Err(SenseData::invalid_param(8, None));
                }
                if remove(st, &|r: &Registration| r.key == sark) == 0 {
                    return pr_conflict();
                }
            }
        }
    }
    Ok(ScsiResponse::good())
}

/// REGISTER AND MOVE (SPC-4 §5.9.8): register the nexus named by a TransportID and make it
/// the reservation holder.
fn register_and_move(st: &mut LuState, n: &ItNexus, key: u64, sark: u64, p: &[u8]) -> CmdResult {
    let Some(me) = st.pr.registration(n).cloned() else {
        return pr_conflict();
    };
    if me.key != key {
        return pr_conflict();
    }
    let Some(res) = st.pr.reservation.clone() else {
        return pr_conflict();
    };
    if !st.pr.is_holder(n) {
        return pr_conflict();
    }
    if res.kind.all_registrants() || sark == 0 {
        return Err(SenseData::invalid_param(8, None));
    }
    let (unreg, rel_port) = (p[17] & 0x02 != 0, be16(p, 18));
    let tid_len = be32(p, 20) as usize;
    let tid = p
        .get(24..24 + tid_len)
        .ok_or(SenseData::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR))?;
    let (name, isid) = parse_transport_id(tid).ok_or(SenseData::invalid_param(24, None))?;
    let isid = isid.ok_or(SenseData::invalid_param(24, None))?;
    let dest = ItNexus {
        initiator: name.as_str().into(),
        isid,
        relative_port: rel_port,
    };
    if dest == *n {
        return Err(SenseData::invalid_param(24, None));
    }
    let reg = match st.pr.registrations.iter_mut().find(|r| r.matches(&dest)) {
        Some(r) => {
            r.key = sark;
            r.clone()
        }
        None => {
            let r = Registration {
                initiator: name,
                isid,
                relative_port: rel_port,
                all_tg_pt: false,
                key: sark,
            };
            st.pr.registrations.push(r.clone());
            r
        }
    };
    st.pr.reservation = Some(Reservation {
        holder: reg,
        kind: res.kind,
    });
    if unreg {
        st.pr.registrations.retain(|r| r != &me);
    }
    Ok(ScsiResponse::good())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_id_round_trip() {
        let t = transport_id("iqn.x", &[1, 2, 3, 4, 5, 6]);
        assert_eq!(t.len() % 4, 0);
        let (name, isid) = parse_transport_id(&t).unwrap();
        assert_eq!(name, "iqn.x");
        assert_eq!(isid, Some([1, 2, 3, 4, 5, 6]));
    }

    /// The ownership loop's poll reads the shared state while a PERSISTENT RESERVE OUT of
    /// this gateway writes it: a read that returns the state from before the write must
    /// neither undo the reservation here nor raise the write's reset a second time.
    #[test]
    fn a_read_older_than_the_state_held_changes_nothing() {
        let nexus = ItNexus {
            initiator: "iqn.x".into(),
            isid: [0x40, 0, 0, 0, 0, 1],
            relative_port: 1,
        };
        let mut st = LuState {
            seen_generation: 0,
            ..Default::default()
        };
        st.seen.insert(nexus.clone());
        let holder = PrState::identity(&nexus);
        let older = PrState {
            version: 6,
            resets: 1,
            ..Default::default()
        };
        let newer = PrState {
            version: 7,
            resets: 2,
            registrations: vec![holder.clone()],
            reservation: Some(Reservation {
                holder,
                kind: PrType::WriteExclusive,
            }),
            ..Default::default()
        };
        install(&mut st, newer.clone());
        assert_eq!(
            st.ua[&nexus],
            [Asc::BUS_DEVICE_RESET],
            "a new reset is raised"
        );
        st.ua.clear();
        install(&mut st, older.clone());
        assert_eq!(st.pr, newer, "the older read is not installed");
        // A compare-and-set bases its change on what it read, whatever its age; the
        // newer state read after it is not a new reset.
        install_read(&mut st, older, false);
        install(&mut st, newer.clone());
        assert_eq!(st.pr, newer);
        assert!(st.ua.values().all(|q| q.is_empty()), "{:?}", st.ua);
    }
}
