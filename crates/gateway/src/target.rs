//! The gateway's runtime view of the config: the targets this host serves, their logical
//! units over opened backstores, and the login [`Directory`] answering who may log in to what.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use anyhow::bail;
use backstore::Device;
use iscsi::login::{AuthPolicy, ChapSecrets, Directory, Grant, LoginStatus, SessionType};
use iscsi::params::{Digest, TargetLimits};
use scsi::{LogicalUnit, TargetPortGroup};
use tracing::warn;

use crate::config::{AuthMode, Chap, Config, Target};
use crate::lun_open::{LunContext, Opening};
use crate::session::SessionRegistry;

pub type Lu = LogicalUnit<Device>;

/// A target as served here.
pub struct TargetRuntime {
    pub cfg: Target,
    pub luns: BTreeMap<u64, Arc<Lu>>,
    /// ALUA ownership per LUN (absent for targets only described, not served, here).
    pub owners: BTreeMap<u64, Arc<crate::ownership::Ownership>>,
    /// The I/O counters of each LUN.
    pub io: BTreeMap<u64, Arc<crate::metrics::LunIo>>,
}

impl TargetRuntime {
    fn new(
        cfg: Target,
        luns: BTreeMap<u64, Arc<Lu>>,
        owners: BTreeMap<u64, Arc<crate::ownership::Ownership>>,
    ) -> TargetRuntime {
        let m = crate::metrics::metrics();
        let io = cfg
            .luns
            .iter()
            .filter(|l| luns.contains_key(&l.lun))
            .map(|l| (l.lun, m.lun_io(&cfg.iqn, l.lun, &l.image)))
            .collect();
        TargetRuntime {
            cfg,
            luns,
            owners,
            io,
        }
    }

    /// The LUNs `initiator` may see here: in the modes that map initiators (lrbd's node ACLs),
    /// those whose entries name it; otherwise every LUN (LIO's demo mode).
    pub fn visible_luns(&self, initiator: &str) -> Vec<u64> {
        let maps = self.cfg.auth.mode.maps_initiators();
        self.cfg
            .luns
            .iter()
            .filter(|l| self.luns.contains_key(&l.lun))
            .filter(|l| {
                !maps
                    || l.initiators
                        .iter()
                        .any(|i| i.eq_ignore_ascii_case(initiator))
            })
            .map(|l| l.lun)
            .collect()
    }
}

/// Whether `initiator` may log in to (or discover) a target on `host`, per its authentication
/// mode: where lrbd made node ACLs, only the initiators named on the image entries that this
/// host serves (lrbd made the ACLs of a host-keyed entry on its host alone).
fn admits(cfg: &Target, host: &str, initiator: &str) -> bool {
    match cfg.auth.mode {
        AuthMode::None | AuthMode::Tpg => true,
        AuthMode::Unconfigured => false,
        AuthMode::Identified | AuthMode::TpgIdentified | AuthMode::Acls => {
            cfg.luns.iter().filter(|l| l.served_by(host)).any(|l| {
                l.initiators
                    .iter()
                    .any(|i| i.eq_ignore_ascii_case(initiator))
            })
        }
    }
}

/// What a gateway serves under one version of the config.
pub struct Served {
    pub config: Config,
    pub targets: Vec<Arc<TargetRuntime>>,
}

/// Everything one gateway process serves.
pub struct Gateway {
    pub host: String,
    serving: Arc<Serving>,
    pub sessions: SessionRegistry,
    next_tsih: AtomicU16,
    /// Orders from the LUs to abort tasks of other nexuses, for every session to look at.
    pub aborts: TaskAborts,
}

/// Where LUs send their abort orders (PREEMPT AND ABORT, CLEAR TASK SET, LOGICAL UNIT RESET)
/// to the sessions, which hold the tasks. Orders are rare; a session that falls this far
/// behind says so and aborts nothing it missed.
pub type TaskAborts = tokio::sync::broadcast::Sender<Arc<scsi::TaskAbort>>;
const TASK_ABORTS_QUEUED: usize = 256;

/// What applying a new config changed here.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub targets_added: Vec<String>,
    pub targets_removed: Vec<String>,
    /// (target, LUN) pairs.
    pub luns_added: Vec<(String, u64)>,
    pub luns_removed: Vec<(String, u64)>,
    /// Portal addresses the new config adds here (the server starts listening on them).
    pub new_portals: Vec<SocketAddr>,
    /// Portal addresses it no longer has here (the server stops listening on them; the
    /// connections made through them go on).
    pub removed_portals: Vec<SocketAddr>,
}

fn secrets(c: &Chap) -> ChapSecrets {
    ChapSecrets {
        user: c.user.clone(),
        secret: c.secret.clone(),
        mutual: c.mutual.clone(),
    }
}

/// The target's login limits with an initiator's `param_*` overrides applied.
fn limits_for(params: Option<&BTreeMap<String, String>>) -> TargetLimits {
    let mut l = TargetLimits::default();
    let Some(params) = params else { return l };
    for (k, v) in params {
        let num = v.parse::<u32>().ok();
        let yes = v.eq_ignore_ascii_case("yes");
        let digests = || -> Vec<Digest> {
            v.split(',')
                .filter_map(|d| match d.trim() {
                    "None" => Some(Digest::None),
                    "CRC32C" => Some(Digest::Crc32c),
                    _ => None,
                })
                .collect()
        };
        match (k.as_str(), num) {
            ("MaxBurstLength", Some(n)) => l.max_burst_length = n.clamp(512, 16_777_215),
            ("FirstBurstLength", Some(n)) => l.first_burst_length = n.clamp(512, 16_777_215),
            ("MaxRecvDataSegmentLength", Some(n)) => {
                l.max_recv_data_segment_length = n.clamp(512, 16_777_215)
            }
            ("MaxOutstandingR2T", Some(n)) => l.max_outstanding_r2t = n.max(1),
            ("DefaultTime2Wait", Some(n)) => l.default_time2wait = n,
            ("DefaultTime2Retain", Some(n)) => l.default_time2retain = n,
            ("ImmediateData", _) => l.immediate_data = yes,
            ("InitialR2T", _) => l.initial_r2t = yes,
            ("HeaderDigest", _) => l.header_digests = digests(),
            ("DataDigest", _) => l.data_digests = digests(),
            _ => warn!("initiator parameter {k}={v} is not applied"),
        }
    }
    l
}

/// How to reach the Ceph cluster, like the `rbd` command line's `--conf` and `--id`.
#[derive(Debug, Clone)]
pub struct CephOptions {
    pub conf: String,
    pub id: Option<String>,
}

impl Default for CephOptions {
    fn default() -> Self {
        CephOptions {
            conf: "/etc/ceph/ceph.conf".into(),
            id: None,
        }
    }
}

/// A target whose LUNs are opening ([`start_target`]).
struct OpeningTarget {
    cfg: Target,
    luns: BTreeMap<u64, Arc<Lu>>,
    owners: BTreeMap<u64, Arc<crate::ownership::Ownership>>,
    opening: Vec<(u64, Opening)>,
}

impl OpeningTarget {
    /// The target with every LUN that opened by `deadline`, stand-ins for the others.
    async fn by(mut self, deadline: tokio::time::Instant) -> TargetRuntime {
        for (n, o) in self.opening {
            let (lu, o) = o.by(deadline).await;
            self.luns.insert(n, lu);
            if let Some(o) = o {
                self.owners.insert(n, o);
            }
        }
        TargetRuntime::new(self.cfg, self.luns, self.owners)
    }
}

/// Starts opening one target's LUNs as seen from `local`, reusing the LUs of `prev` whose
/// definition did not change (their sessions, reservations and ownership carry on).
fn start_target(
    t: &Target,
    local: &crate::config::Tpg,
    prev: Option<&TargetRuntime>,
    serving: &Arc<Serving>,
) -> OpeningTarget {
    let port_groups: Vec<TargetPortGroup> = t
        .tpgs
        .iter()
        .map(|g| TargetPortGroup {
            tag: g.tag,
            relative_port: g.tag,
        })
        .collect();
    // LUs are kept only where nothing they were built from changed: the target's port groups
    // (tags and hosts: their addresses are the listeners' business), its attributes, and the
    // LUN's own entry. A rebuilt LU starts afresh (power-on unit attention; a memory LU's data
    // is gone), so a portal address added to a TPG must not rebuild its LUs.
    let same_groups = |a: &[crate::config::Tpg]| {
        a.len() == t.tpgs.len()
            && a.iter()
                .zip(&t.tpgs)
                .all(|(x, y)| x.tag == y.tag && x.host == y.host)
    };
    let reusable = prev.filter(|p| same_groups(&p.cfg.tpgs) && p.cfg.attributes == t.attributes);
    let mut luns = BTreeMap::new();
    let mut owners = BTreeMap::new();
    let at = Arc::new(LunContext {
        iqn: t.iqn.clone(),
        write_protect: t.attributes.write_protect,
        local_tag: local.tag,
        host: local.host.clone(),
        port_groups,
        ceph: serving.ceph.clone(),
        aborts: serving.aborts.clone(),
        draining: serving.draining.clone(),
        copy_targets: serving.copy_targets.clone(),
    });
    // Every LUN opens at once (up to 32 images at a time per gateway): each spends about a
    // second on the image and on asking who else serves it, which one after another made
    // 1,000 LUNs take a quarter of an hour to start.
    let mut opening = Vec::new();
    for l in t.luns.iter().filter(|l| l.served_by(&local.host)) {
        if let Some(p) = reusable.filter(|p| p.cfg.luns.contains(l)) {
            // (A stand-in is kept too: its task, still opening, finds it in the new version.)
            if let Some(lu) = p.luns.get(&l.lun) {
                luns.insert(l.lun, lu.clone());
                if let Some(o) = p.owners.get(&l.lun) {
                    owners.insert(l.lun, o.clone());
                }
                continue;
            }
        }
        let owner_tag = t.tpgs.iter().find(|g| g.host == l.owner).map(|g| g.tag);
        let o = Opening::start(l, &at, owner_tag, Arc::downgrade(serving));
        opening.push((l.lun, o));
    }
    OpeningTarget {
        cfg: t.clone(),
        luns,
        owners,
        opening,
    }
}

/// What the gateway serves and the changes to it: a new config ([`Gateway::apply`]) and a LUN
/// that opened late ([`Serving::install`]), one at a time.
pub(crate) struct Serving {
    /// Replaced whole on every change.
    served: std::sync::RwLock<Arc<Served>>,
    /// Counts the changes; sessions compare it to notice one.
    epoch: std::sync::atomic::AtomicU64,
    /// The same count, for tasks that wait for a change (the listeners).
    epoch_changes: tokio::sync::watch::Sender<u64>,
    /// Held by whoever changes `served`, from reading it to replacing it.
    changing: tokio::sync::Mutex<()>,
    pub ceph: CephOptions,
    pub aborts: TaskAborts,
    /// `rbdgw drain`: this gateway hands its LUs over and serves no I/O.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// Where the LUs' copy managers find each other.
    pub copy_targets: Arc<crate::copy_targets::GatewayCopyTargets>,
}

impl Serving {
    pub(crate) fn served(&self) -> Arc<Served> {
        self.served
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces what is served (the caller holds `changing`) and tells the sessions.
    fn replace(&self, new: Served) {
        *self.served.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        self.epoch_changes.send_replace(epoch);
    }

    /// Puts a LUN that opened late in its stand-in's place; false (and the LU dropped) when
    /// the stand-in is no longer served (a config change removed or redefined the LUN).
    pub(crate) async fn install(
        &self,
        iqn: &str,
        lun: u64,
        stand_in: &std::sync::Weak<Lu>,
        (lu, owner): (Arc<Lu>, Arc<crate::ownership::Ownership>),
    ) -> bool {
        let _changing = self.changing.lock().await;
        let Some(stand_in) = stand_in.upgrade() else {
            return false;
        };
        let cur = self.served();
        let Some(i) = cur.targets.iter().position(|t| {
            t.cfg.iqn == iqn && t.luns.get(&lun).is_some_and(|l| Arc::ptr_eq(l, &stand_in))
        }) else {
            return false;
        };
        let old = &cur.targets[i];
        let (mut luns, mut owners) = (old.luns.clone(), old.owners.clone());
        luns.insert(lun, lu);
        owners.insert(lun, owner);
        let t = TargetRuntime::new(old.cfg.clone(), luns, owners);
        let mut targets = cur.targets.clone();
        targets[i] = Arc::new(t);
        self.replace(Served {
            config: cur.config.clone(),
            targets,
        });
        true
    }
}

impl Gateway {
    /// Opens the backstores of every LUN that `host` serves (those that take longer than
    /// [`START_PATIENCE`](crate::lun_open::START_PATIENCE) or fail go on opening in the
    /// background, see [`crate::lun_open`]).
    pub async fn open(config: Config, host: &str, ceph: &CephOptions) -> anyhow::Result<Gateway> {
        let aborts = tokio::sync::broadcast::channel(TASK_ABORTS_QUEUED).0;
        let serving = Arc::new_cyclic(|me| Serving {
            copy_targets: Arc::new(crate::copy_targets::GatewayCopyTargets::new(me.clone())),
            served: std::sync::RwLock::new(Arc::new(Served {
                config: config.clone(),
                targets: Vec::new(),
            })),
            epoch: std::sync::atomic::AtomicU64::new(0),
            epoch_changes: tokio::sync::watch::channel(0).0,
            changing: tokio::sync::Mutex::new(()),
            ceph: ceph.clone(),
            aborts: aborts.clone(),
            draining: Default::default(),
        });
        let changing = serving.changing.lock().await;
        let deadline = tokio::time::Instant::now() + crate::lun_open::START_PATIENCE;
        let opening: Vec<OpeningTarget> = config
            .targets
            .iter()
            .filter_map(|t| Some(start_target(t, t.tpgs_of(host).next()?, None, &serving)))
            .collect();
        if opening.is_empty() {
            bail!("host {host} serves no target in {}", config.source_name);
        }
        let mut targets = Vec::new();
        for t in opening {
            targets.push(Arc::new(t.by(deadline).await));
        }
        *serving.served.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(Served { config, targets });
        drop(changing);
        Ok(Gateway {
            host: host.to_string(),
            serving,
            sessions: SessionRegistry::default(),
            next_tsih: AtomicU16::new(1),
            aborts,
        })
    }

    /// Applies a new version of the shared config without disturbing what it does not
    /// change: unchanged LUNs keep their sessions, reservations and ownership; a target whose
    /// LUNs changed tells its sessions with REPORTED LUNS DATA HAS CHANGED (SPC-4 §6.33,
    /// SAM-5 §5.14); sessions of a removed target end. On any error nothing changes.
    pub async fn apply(&self, config: Config) -> anyhow::Result<ApplyReport> {
        let _changing = self.serving.changing.lock().await;
        let old = self.served();
        if let Some(why) = config.renumbers(&old.config) {
            bail!("config not applied: {why}");
        }
        let mut report = ApplyReport::default();
        let deadline = tokio::time::Instant::now() + crate::lun_open::START_PATIENCE;
        let mut opening = Vec::new();
        for t in &config.targets {
            let Some(local) = t.tpgs_of(&self.host).next() else {
                continue;
            };
            let prev = old
                .targets
                .iter()
                .find(|p| p.cfg.iqn.eq_ignore_ascii_case(&t.iqn));
            opening.push((
                start_target(t, local, prev.map(|p| &**p), &self.serving),
                prev,
            ));
        }
        let mut targets = Vec::new();
        for (o, prev) in opening {
            let rt = o.by(deadline).await;
            let t = &rt.cfg;
            match prev {
                None => report.targets_added.push(t.iqn.clone()),
                Some(p) => {
                    let added: Vec<u64> = rt
                        .luns
                        .keys()
                        .filter(|n| !p.luns.contains_key(n))
                        .copied()
                        .collect();
                    let removed: Vec<u64> = p
                        .luns
                        .keys()
                        .filter(|n| !rt.luns.contains_key(n))
                        .copied()
                        .collect();
                    let replaced = rt
                        .luns
                        .iter()
                        .any(|(n, lu)| p.luns.get(n).is_some_and(|o| !Arc::ptr_eq(o, lu)));
                    if !added.is_empty() || !removed.is_empty() || replaced {
                        // The LUs that stay or arrive; removed ones are no longer reachable.
                        for lu in rt.luns.values() {
                            lu.unit_attention_all(scsi::Asc::REPORTED_LUNS_DATA_HAS_CHANGED);
                        }
                    }
                    report
                        .luns_added
                        .extend(added.into_iter().map(|n| (t.iqn.clone(), n)));
                    report
                        .luns_removed
                        .extend(removed.into_iter().map(|n| (t.iqn.clone(), n)));
                }
            }
            targets.push(Arc::new(rt));
        }
        if targets.is_empty() {
            bail!(
                "host {} serves no target in the new config {}; keeping the running one",
                self.host,
                config.source_name
            );
        }
        for p in &old.targets {
            if !targets
                .iter()
                .any(|t| t.cfg.iqn.eq_ignore_ascii_case(&p.cfg.iqn))
            {
                report.targets_removed.push(p.cfg.iqn.clone());
            }
        }
        let before = self.listen_addresses();
        self.serving.replace(Served { config, targets });
        let after = self.listen_addresses();
        report.new_portals = after
            .iter()
            .filter(|a| !before.contains(a))
            .copied()
            .collect();
        report.removed_portals = before.into_iter().filter(|a| !after.contains(a)).collect();
        Ok(report)
    }

    /// `rbdgw drain` / `undrain`: a drained gateway hands its LUs over to the others (each
    /// LU within a ping, about a second), reports its ports in standby on every gateway, and
    /// serves no I/O; undrained, it serves again and takes its own LUs back (failback).
    pub fn set_draining(&self, on: bool) {
        if self.serving.draining.swap(on, Ordering::AcqRel) != on {
            tracing::warn!(
                host = %self.host,
                "{}",
                if on {
                    "drained for maintenance: handing every LU over to the other gateways"
                } else {
                    "undrained: serving again"
                }
            );
        }
    }

    pub fn is_draining(&self) -> bool {
        self.serving.draining.load(Ordering::Acquire)
    }

    /// As the gateway stops, once its connections are closed: every write lock held here is
    /// let go (all LUs at once), so the successors take them over at once rather than when
    /// the process exits and its images close. Returns how many were held.
    pub async fn release_locks_at_stop(&self) -> usize {
        let served = self.served();
        let mut set = tokio::task::JoinSet::new();
        for t in &served.targets {
            for o in t.owners.values() {
                let o = o.clone();
                set.spawn(async move { o.release_at_stop().await });
            }
        }
        let mut released = 0;
        while let Some(r) = set.join_next().await {
            released += usize::from(r.unwrap_or(false));
        }
        released
    }

    /// The LUs this gateway still holds, as `(target, lun, holds the write lock, is the
    /// ALUA owner)`: a drain is complete when none is left.
    pub fn still_held(&self) -> Vec<(String, u64, bool, bool)> {
        let served = self.served();
        let mut out = Vec::new();
        for t in &served.targets {
            for (lun, o) in &t.owners {
                let (lock, owner) = o.still_held();
                if lock || owner {
                    out.push((t.cfg.iqn.clone(), *lun, lock, owner));
                }
            }
        }
        out
    }

    /// The config version being served.
    pub fn served(&self) -> Arc<Served> {
        self.serving.served()
    }

    /// Changes whenever what is served changes (a new config, a LUN that opened late).
    pub fn epoch(&self) -> u64 {
        self.serving.epoch.load(Ordering::Acquire)
    }

    /// Wakes whenever what is served changes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.serving.epoch_changes.subscribe()
    }

    pub fn target(&self, iqn: &str) -> Option<Arc<TargetRuntime>> {
        self.served()
            .targets
            .iter()
            .find(|t| t.cfg.iqn.eq_ignore_ascii_case(iqn))
            .cloned()
    }

    /// Distinct addresses to listen on.
    pub fn listen_addresses(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = Vec::new();
        for t in &self.served().targets {
            for g in t.cfg.tpgs_of(&self.host) {
                for a in &g.addresses {
                    if !v.contains(a) {
                        v.push(*a);
                    }
                }
            }
        }
        v
    }

    /// The TPG of `target` that a connection to `listen` reaches on this host.
    pub fn tpg_for(&self, target: &TargetRuntime, listen: SocketAddr) -> Option<u16> {
        target
            .cfg
            .tpgs_of(&self.host)
            .find(|g| g.addresses.contains(&listen))
            .map(|g| g.tag)
    }

    /// A fresh, non-zero TSIH (RFC 7143 §11.12.4).
    pub fn allocate_tsih(&self) -> u16 {
        loop {
            let t = self.next_tsih.fetch_add(1, Ordering::Relaxed);
            if t != 0 {
                return t;
            }
        }
    }

    /// Discovery CHAP of this host (lrbd's `discovery`, host-wide in LIO).
    fn discovery_chap(&self) -> Option<Chap> {
        self.served().config.discovery.get(&self.host).cloned()
    }

    /// Targets an initiator may discover here: those this host has a TPG of (LIO lists only
    /// the targets configured on it; a redundant target's TPGs are all configured on each of
    /// its hosts, so SendTargets lists every gateway's portals).
    pub fn discoverable(&self, initiator: &str) -> Vec<Target> {
        self.served()
            .config
            .targets
            .iter()
            .filter(|t| t.tpgs_of(&self.host).next().is_some())
            .filter(|t| admits(t, &self.host, initiator))
            .cloned()
            .collect()
    }
}

/// The login directory of one listening address.
pub struct LoginDirectory<'a> {
    pub gateway: &'a Gateway,
    pub listen: SocketAddr,
}

impl Directory for LoginDirectory<'_> {
    fn grant(
        &self,
        st: SessionType,
        target: Option<&str>,
        initiator: &str,
    ) -> Result<Grant, LoginStatus> {
        let gw = self.gateway;
        if st == SessionType::Discovery {
            let auth = gw
                .discovery_chap()
                .map_or(AuthPolicy::None, |c| AuthPolicy::Chap(secrets(&c)));
            return Ok(Grant {
                auth,
                limits: TargetLimits::default(),
                alias: None,
            });
        }
        let name = target.ok_or(LoginStatus::MISSING_PARAMETER)?;
        let t = gw.target(name).ok_or(LoginStatus::NOT_FOUND)?;
        if gw.tpg_for(&t, self.listen).is_none() {
            // The target exists but not behind this portal.
            return Err(LoginStatus::NOT_FOUND);
        }
        if !admits(&t.cfg, &gw.host, initiator) {
            return Err(LoginStatus::AUTHORIZATION_FAILURE);
        }
        // A session starts by reading the port groups, which apply to every path: while this
        // gateway cannot tell who owns a LU of the target (cut off, fenced), the login waits
        // (RFC 7143 §11.13.5: service unavailable, the initiator retries).
        if let Some(lun) = t
            .owners
            .iter()
            .find_map(|(lun, o)| o.cannot_tell().then_some(*lun))
        {
            tracing::info!(
                target = %t.cfg.iqn,
                initiator,
                lun,
                "login refused for now (service unavailable): this gateway cannot tell who \
                 owns the LUN (cut off from the cluster or fenced, reconnecting)"
            );
            return Err(LoginStatus::SERVICE_UNAVAILABLE);
        }
        let acl = t.cfg.auth.acl(initiator);
        let auth = match t.cfg.auth.mode {
            AuthMode::None | AuthMode::Identified | AuthMode::Unconfigured => AuthPolicy::None,
            AuthMode::Tpg | AuthMode::TpgIdentified => t
                .cfg
                .auth
                .tpg_chap
                .as_ref()
                .map_or(AuthPolicy::None, |c| AuthPolicy::Chap(secrets(c))),
            AuthMode::Acls => match acl.and_then(|a| a.chap.as_ref()) {
                Some(c) => AuthPolicy::Chap(secrets(c)),
                None => return Err(LoginStatus::AUTHORIZATION_FAILURE),
            },
        };
        Ok(Grant {
            auth,
            limits: limits_for(acl.map(|a| &a.params)),
            alias: None,
        })
    }
}
