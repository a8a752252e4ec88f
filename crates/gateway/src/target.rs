//! The gateway's runtime view of the config: the targets this host serves, their logical
//! units over opened backstores, and the login [`Directory`] answering who may log in to what.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use backstore::{Device, FileDevice};
use iscsi::login::{AuthPolicy, ChapSecrets, Directory, Grant, LoginStatus, SessionType};
use iscsi::params::{Digest, TargetLimits};
use scsi::{LogicalUnit, LuConfig, TargetPortGroup};
use tracing::{info, warn};

use crate::config::{AuthMode, BackstoreSpec, Chap, Config, Lun, Target};
use crate::session::SessionRegistry;

pub type Lu = LogicalUnit<Device>;

/// A target as served here.
pub struct TargetRuntime {
    pub cfg: Target,
    pub luns: BTreeMap<u64, Arc<Lu>>,
    /// ALUA ownership per LUN (absent for targets only described, not served, here).
    pub owners: BTreeMap<u64, Arc<crate::ownership::Ownership>>,
}

impl TargetRuntime {
    /// The LUNs `initiator` may see: an image entry that names initiators (lrbd's
    /// `initiator`) is mapped to those only.
    pub fn visible_luns(&self, initiator: &str) -> Vec<u64> {
        self.cfg
            .luns
            .iter()
            .filter(|l| {
                l.initiators.is_empty()
                    || l.initiators
                        .iter()
                        .any(|i| i.eq_ignore_ascii_case(initiator))
            })
            .map(|l| l.lun)
            .collect()
    }
}

/// Whether `initiator` may log in to (or discover) a target, per its authentication mode.
fn admits(cfg: &Target, initiator: &str) -> bool {
    let named = || {
        cfg.auth.acl(initiator).is_some()
            || cfg.luns.iter().any(|l| {
                l.initiators
                    .iter()
                    .any(|i| i.eq_ignore_ascii_case(initiator))
            })
    };
    match cfg.auth.mode {
        AuthMode::None | AuthMode::Tpg => true,
        AuthMode::Identified | AuthMode::TpgIdentified | AuthMode::Acls => named(),
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
    /// Replaced whole when the shared config changes ([`Gateway::apply`]).
    served: std::sync::RwLock<Arc<Served>>,
    /// Counts the config versions applied; sessions compare it to notice a change.
    epoch: std::sync::atomic::AtomicU64,
    /// The same count, for tasks that wait for a change (the listeners).
    epoch_changes: tokio::sync::watch::Sender<u64>,
    ceph: CephOptions,
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

async fn open_device(lun: &Lun, ceph: &CephOptions) -> anyhow::Result<Device> {
    match &lun.backstore {
        BackstoreSpec::File { path, size } => {
            let dev = FileDevice::open(Path::new(path), *size)
                .with_context(|| format!("opening file backstore {path}"))?;
            Ok(Device::File(dev))
        }
        BackstoreSpec::Memory { size } => Ok(Device::File(
            FileDevice::memory(*size).context("creating memory backstore")?,
        )),
        BackstoreSpec::Rbd {
            pool,
            namespace,
            image,
            size,
        } => {
            let cfg = backstore::rbd::RbdConfig {
                conf: ceph.conf.clone(),
                id: ceph.id.clone(),
                pool: pool.clone(),
                namespace: namespace.clone(),
                image: image.clone(),
                create_size: *size,
                own_client: false,
            };
            let dev = tokio::task::spawn_blocking(move || backstore::rbd::RbdDevice::open(&cfg))
                .await
                .context("opening the rbd image")?
                .with_context(|| format!("rbd image {pool}/{image} (ceph.conf {})", ceph.conf))?;
            Ok(Device::Rbd(dev))
        }
    }
}

/// How many LUNs of a target open at the same time.
const OPENING_AT_ONCE: usize = 64;

/// What every LUN of a target being opened shares.
struct LunContext {
    iqn: String,
    write_protect: bool,
    local_tag: u16,
    port_groups: Vec<TargetPortGroup>,
    ceph: CephOptions,
    aborts: TaskAborts,
    slots: tokio::sync::Semaphore,
}

/// Opens one LUN's backstore and builds its LU and ownership.
async fn open_lun(
    l: &Lun,
    at: &LunContext,
    owner_tag: Option<u16>,
) -> anyhow::Result<(Arc<Lu>, Arc<crate::ownership::Ownership>)> {
    let dev = open_device(l, &at.ceph)
        .await
        .with_context(|| format!("target {} LUN {}", at.iqn, l.lun))?;
    let size = backstore::BlockDevice::size(&dev);
    if size < l.attributes.block_size as u64 {
        bail!(
            "target {} LUN {}: the image is smaller than one block ({size} bytes)",
            at.iqn,
            l.lun
        );
    }
    let mut c = LuConfig::new(l.lun, l.serial.clone(), at.iqn.clone());
    c.product = format!("{} {}", l.backstore.kind(), l.image)
        .chars()
        .take(16)
        .collect();
    c.block_size = l.attributes.block_size;
    c.read_only = at.write_protect;
    c.local_tpg = at.local_tag;
    c.port_groups = at.port_groups.clone();
    c.write_cache = l.attributes.write_cache;
    let a = &l.attributes;
    c.max_unmap_lba_count = a.max_unmap_lba_count.unwrap_or(c.max_unmap_lba_count);
    c.max_unmap_descriptors = a
        .max_unmap_block_desc_count
        .unwrap_or(c.max_unmap_descriptors);
    c.max_write_same_blocks = a.max_write_same_len.unwrap_or(c.max_write_same_blocks);
    c.optimal_unmap_granularity = a.unmap_granularity.unwrap_or(c.optimal_unmap_granularity);
    let lu = Arc::new(LogicalUnit::new(c, dev));
    let to_sessions = at.aborts.clone();
    lu.on_task_abort(Box::new(move |a| {
        // (No receiver: no session here has tasks to abort.)
        let _ = to_sessions.send(Arc::new(a));
    }));
    lu.load_persistent_state().await;
    let o = crate::ownership::Ownership::start(lu.clone(), at.local_tag, owner_tag).await;
    info!(target = %at.iqn, lun = l.lun, backstore = l.backstore.kind(), image = %l.image, serial = %l.serial, bytes = size, "LUN ready");
    Ok((lu, o))
}

/// Opens one target's LUNs as seen from `local`, reusing the LUs of `prev` whose
/// definition did not change (their sessions, reservations and ownership carry on).
async fn open_target(
    t: &Target,
    local: &crate::config::Tpg,
    ceph: &CephOptions,
    prev: Option<&TargetRuntime>,
    aborts: &TaskAborts,
) -> anyhow::Result<TargetRuntime> {
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
        port_groups,
        ceph: ceph.clone(),
        aborts: aborts.clone(),
        slots: tokio::sync::Semaphore::new(OPENING_AT_ONCE),
    });
    let mut opening = tokio::task::JoinSet::new();
    for l in &t.luns {
        if let Some(p) = reusable.filter(|p| p.cfg.luns.contains(l)) {
            if let (Some(lu), Some(o)) = (p.luns.get(&l.lun), p.owners.get(&l.lun)) {
                luns.insert(l.lun, lu.clone());
                owners.insert(l.lun, o.clone());
                continue;
            }
        }
        let owner_tag = t.tpgs.iter().find(|g| g.host == l.owner).map(|g| g.tag);
        let (l, at) = (l.clone(), at.clone());
        opening.spawn(async move {
            // (The semaphore is never closed.)
            let _slot = at.slots.acquire().await;
            let (lu, o) = open_lun(&l, &at, owner_tag).await?;
            Ok::<_, anyhow::Error>((l.lun, lu, o))
        });
    }
    // Every LUN opens at once (up to OPENING_AT_ONCE): each spends about a second on the
    // image and on asking who else serves it, which one after another made 1,000 LUNs
    // take a quarter of an hour to start. The first failure fails them all (and drops the
    // others' tasks).
    while let Some(r) = opening.join_next().await {
        let (n, lu, o) = r.context("a LUN's opening task failed")??;
        luns.insert(n, lu);
        owners.insert(n, o);
    }
    Ok(TargetRuntime {
        cfg: t.clone(),
        luns,
        owners,
    })
}

impl Gateway {
    /// Opens the backstores of every LUN that `host` serves.
    pub async fn open(config: Config, host: &str, ceph: &CephOptions) -> anyhow::Result<Gateway> {
        let aborts = tokio::sync::broadcast::channel(TASK_ABORTS_QUEUED).0;
        let mut targets = Vec::new();
        for t in &config.targets {
            let Some(local) = t.tpgs_of(host).next() else {
                continue;
            };
            targets.push(Arc::new(open_target(t, local, ceph, None, &aborts).await?));
        }
        if targets.is_empty() {
            bail!("host {host} serves no target in {}", config.source_name);
        }
        Ok(Gateway {
            host: host.to_string(),
            served: std::sync::RwLock::new(Arc::new(Served { config, targets })),
            epoch: std::sync::atomic::AtomicU64::new(0),
            epoch_changes: tokio::sync::watch::channel(0).0,
            ceph: ceph.clone(),
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
        let old = self.served();
        let mut report = ApplyReport::default();
        let mut targets = Vec::new();
        for t in &config.targets {
            let Some(local) = t.tpgs_of(&self.host).next() else {
                continue;
            };
            let prev = old
                .targets
                .iter()
                .find(|p| p.cfg.iqn.eq_ignore_ascii_case(&t.iqn));
            let rt = open_target(t, local, &self.ceph, prev.map(|p| &**p), &self.aborts).await?;
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
        *self.served.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(Served { config, targets });
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        let after = self.listen_addresses();
        report.new_portals = after
            .iter()
            .filter(|a| !before.contains(a))
            .copied()
            .collect();
        report.removed_portals = before.into_iter().filter(|a| !after.contains(a)).collect();
        self.epoch_changes.send_replace(epoch);
        Ok(report)
    }

    /// The config version being served.
    pub fn served(&self) -> Arc<Served> {
        self.served
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes whenever a new config is applied.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Wakes whenever a new config is applied.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.epoch_changes.subscribe()
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

    /// Discovery CHAP, if any target asks for it (lrbd's `discovery` is global in LIO).
    fn discovery_chap(&self) -> Option<Chap> {
        self.served()
            .config
            .targets
            .iter()
            .find_map(|t| t.auth.discovery.clone())
    }

    /// Targets an initiator may discover.
    pub fn discoverable(&self, initiator: &str) -> Vec<Target> {
        self.served()
            .config
            .targets
            .iter()
            .filter(|t| admits(t, initiator))
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
        if !admits(&t.cfg, initiator) {
            return Err(LoginStatus::AUTHORIZATION_FAILURE);
        }
        let acl = t.cfg.auth.acl(initiator);
        let auth = match t.cfg.auth.mode {
            AuthMode::None | AuthMode::Identified => AuthPolicy::None,
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
