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
        cfg.auth
            .acls
            .iter()
            .any(|a| a.initiator.eq_ignore_ascii_case(initiator))
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

/// Everything one gateway process serves.
pub struct Gateway {
    pub host: String,
    pub config: Config,
    pub targets: Vec<Arc<TargetRuntime>>,
    pub sessions: SessionRegistry,
    next_tsih: AtomicU16,
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
        BackstoreSpec::Rbd { pool, image } => {
            let cfg = backstore::rbd::RbdConfig {
                conf: ceph.conf.clone(),
                id: ceph.id.clone(),
                pool: pool.clone(),
                namespace: None,
                image: image.clone(),
            };
            let dev = tokio::task::spawn_blocking(move || backstore::rbd::RbdDevice::open(&cfg))
                .await
                .context("opening the rbd image")?
                .with_context(|| format!("rbd image {pool}/{image} (ceph.conf {})", ceph.conf))?;
            Ok(Device::Rbd(dev))
        }
    }
}

impl Gateway {
    /// Opens the backstores of every LUN that `host` serves.
    pub async fn open(config: Config, host: &str, ceph: &CephOptions) -> anyhow::Result<Gateway> {
        let mut targets = Vec::new();
        for t in &config.targets {
            let Some(local) = t.tpgs_of(host).next() else {
                continue;
            };
            let port_groups: Vec<TargetPortGroup> = t
                .tpgs
                .iter()
                .map(|g| TargetPortGroup {
                    tag: g.tag,
                    relative_port: g.tag,
                })
                .collect();
            let mut luns = BTreeMap::new();
            let mut owners = BTreeMap::new();
            for l in &t.luns {
                let dev = open_device(l, ceph)
                    .await
                    .with_context(|| format!("target {} LUN {}", t.iqn, l.lun))?;
                let size = backstore::BlockDevice::size(&dev);
                if size < l.attributes.block_size as u64 {
                    bail!(
                        "target {} LUN {}: the image is smaller than one block ({size} bytes)",
                        t.iqn,
                        l.lun
                    );
                }
                let mut c = LuConfig::new(l.lun, l.serial.clone(), t.iqn.clone());
                c.product = format!("{} {}", l.backstore.kind(), l.image)
                    .chars()
                    .take(16)
                    .collect();
                c.block_size = l.attributes.block_size;
                c.read_only = t.attributes.write_protect;
                c.local_tpg = local.tag;
                c.port_groups = port_groups.clone();
                c.write_cache = l.attributes.write_cache;
                let a = &l.attributes;
                c.max_unmap_lba_count = a.max_unmap_lba_count.unwrap_or(c.max_unmap_lba_count);
                c.max_unmap_descriptors = a
                    .max_unmap_block_desc_count
                    .unwrap_or(c.max_unmap_descriptors);
                c.max_write_same_blocks = a.max_write_same_len.unwrap_or(c.max_write_same_blocks);
                c.optimal_unmap_granularity =
                    a.unmap_granularity.unwrap_or(c.optimal_unmap_granularity);
                let lu = Arc::new(LogicalUnit::new(c, dev));
                lu.load_persistent_state().await;
                let owner_tag = t.tpgs.iter().find(|g| g.host == l.owner).map(|g| g.tag);
                owners.insert(
                    l.lun,
                    crate::ownership::Ownership::start(lu.clone(), local.tag, owner_tag).await,
                );
                info!(target = %t.iqn, lun = l.lun, backstore = l.backstore.kind(), image = %l.image, serial = %l.serial, bytes = size, "LUN ready");
                luns.insert(l.lun, lu);
            }
            targets.push(Arc::new(TargetRuntime {
                cfg: t.clone(),
                luns,
                owners,
            }));
        }
        if targets.is_empty() {
            bail!("host {host} serves no target in {}", config.source_name);
        }
        Ok(Gateway {
            host: host.to_string(),
            config,
            targets,
            sessions: SessionRegistry::default(),
            next_tsih: AtomicU16::new(1),
        })
    }

    pub fn target(&self, iqn: &str) -> Option<&Arc<TargetRuntime>> {
        self.targets
            .iter()
            .find(|t| t.cfg.iqn.eq_ignore_ascii_case(iqn))
    }

    /// Distinct addresses to listen on.
    pub fn listen_addresses(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = Vec::new();
        for t in &self.targets {
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
    fn discovery_chap(&self) -> Option<&Chap> {
        self.config
            .targets
            .iter()
            .find_map(|t| t.auth.discovery.as_ref())
    }

    /// Targets an initiator may discover.
    pub fn discoverable(&self, initiator: &str) -> Vec<&Target> {
        self.config
            .targets
            .iter()
            .filter(|t| admits(t, initiator))
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
                .map_or(AuthPolicy::None, |c| AuthPolicy::Chap(secrets(c)));
            return Ok(Grant {
                auth,
                limits: TargetLimits::default(),
                alias: None,
            });
        }
        let name = target.ok_or(LoginStatus::MISSING_PARAMETER)?;
        let t = gw.target(name).ok_or(LoginStatus::NOT_FOUND)?;
        if gw.tpg_for(t, self.listen).is_none() {
            // The target exists but not behind this portal.
            return Err(LoginStatus::NOT_FOUND);
        }
        if !admits(&t.cfg, initiator) {
            return Err(LoginStatus::AUTHORIZATION_FAILURE);
        }
        let acl = t
            .cfg
            .auth
            .acls
            .iter()
            .find(|a| a.initiator.eq_ignore_ascii_case(initiator));
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
