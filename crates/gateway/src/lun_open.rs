//! Opening a LUN's backstore without holding the others back.
//!
//! Every LUN opens in a task of its own; at most [`OPENING_AT_ONCE`] backstores of the whole
//! gateway open at a time (each holds a blocking thread meanwhile), while the rest of a LUN's
//! start, asking who else serves it, is asynchronous and not limited.
//! The gateway waits for the first attempts until [`START_PATIENCE`] has passed; a LUN whose
//! image has not opened by then (slow: its pool cannot be reached) or failed to (missing,
//! no permission) is served meanwhile by a stand-in LU over [`Unopened`]: listed by REPORT
//! LUNS and described by INQUIRY, but NOT READY with this gateway's port unavailable, so an
//! initiator uses another gateway's path. The task goes on (retrying failures with a growing
//! delay, each one logged) and, once the image opens, puts the real LU in the stand-in's place
//! ([`Serving::install`]); sessions pick it up at their next command.

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::{bail, Context};
use backstore::{Device, FileDevice, Unopened};
use scsi::{LogicalUnit, LuConfig, TargetPortGroup};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::{BackstoreSpec, Lun};
use crate::ownership::Ownership;
use crate::target::{CephOptions, Lu, Serving, TaskAborts};

/// How many backstores the gateway opens at the same time: a blocking thread each (librbd's
/// open is synchronous). 32 open 1,000 RBD images in about 3 s here.
const OPENING_AT_ONCE: usize = 32;
static OPENING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(OPENING_AT_ONCE);
/// How long a start or a config change waits for LUNs to open before serving the others.
pub(crate) const START_PATIENCE: Duration = Duration::from_secs(3);
/// Delays between attempts to open a LUN that failed: doubling up to the last.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What every LUN of a target being opened shares.
pub(crate) struct LunContext {
    pub iqn: String,
    pub write_protect: bool,
    pub local_tag: u16,
    /// This gateway's host name in the config.
    pub host: String,
    pub port_groups: Vec<TargetPortGroup>,
    pub ceph: CephOptions,
    pub aborts: TaskAborts,
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    pub copy_targets: Arc<dyn scsi::CopyTargets<Device>>,
}

/// A LUN as served: its LU, and its ALUA ownership once its backstore is open.
pub(crate) type Served = (Arc<Lu>, Option<Arc<Ownership>>);

/// A LUN being opened: its first attempt's outcome, or its stand-in.
pub(crate) struct Opening {
    first: oneshot::Receiver<Option<(Arc<Lu>, Arc<Ownership>)>>,
    stand_in: Arc<Lu>,
}

impl Opening {
    /// Starts opening `l` in a task that lives until it opened (or the LUN is no longer
    /// served: its stand-in was dropped, or the gateway was).
    pub fn start(
        l: &Lun,
        at: &Arc<LunContext>,
        owner_tag: Option<u16>,
        serving: Weak<Serving>,
    ) -> Opening {
        let stand_in = Arc::new(LogicalUnit::new(
            lu_config(l, at),
            Device::Unopened(Unopened),
        ));
        // Its report of the other gateways' groups: the configured owner optimized.
        stand_in.set_owner_tpg(owner_tag);
        let (tx, first) = oneshot::channel();
        let task = KeepOpening {
            lun: l.clone(),
            at: at.clone(),
            owner_tag,
            stand_in: Arc::downgrade(&stand_in),
            serving,
        };
        tokio::spawn(task.run(tx));
        Opening { first, stand_in }
    }

    /// The LUN's LU by `deadline`: the real one if its first attempt succeeded by then, else
    /// the stand-in (its task installs the real one later).
    pub async fn by(mut self, deadline: Instant) -> Served {
        let first = match tokio::time::timeout_at(deadline, &mut self.first).await {
            Ok(r) => r.ok().flatten(),
            Err(_) => {
                // Too slow: from now on its task installs it. (A result sent before the close
                // is still taken here.)
                self.first.close();
                self.first.try_recv().ok().flatten()
            }
        };
        match first {
            Some((lu, o)) => (lu, Some(o)),
            None => (self.stand_in, None),
        }
    }
}

struct KeepOpening {
    lun: Lun,
    at: Arc<LunContext>,
    owner_tag: Option<u16>,
    stand_in: Weak<Lu>,
    serving: Weak<Serving>,
}

impl KeepOpening {
    async fn run(self, first: oneshot::Sender<Option<(Arc<Lu>, Arc<Ownership>)>>) {
        let mut first = Some(first);
        let mut delay = RETRY_FIRST;
        let mut attempts = 0u32;
        let t0 = Instant::now();
        loop {
            attempts += 1;
            let r = open_lun(&self.lun, &self.at, self.owner_tag).await;
            match r {
                Ok(opened) => {
                    let opened = match first.take() {
                        None => opened,
                        Some(tx) => match tx.send(Some(opened)) {
                            Ok(()) => return,
                            // The gateway went on with the stand-in.
                            Err(Some(back)) => back,
                            Err(None) => return,
                        },
                    };
                    if let Some(serving) = self.serving.upgrade() {
                        let placed = serving
                            .install(&self.at.iqn, self.lun.lun, &self.stand_in, opened)
                            .await;
                        if placed {
                            info!(
                                target = %self.at.iqn,
                                lun = self.lun.lun,
                                image = %self.lun.image,
                                attempts,
                                after_s = t0.elapsed().as_secs_f32(),
                                "LUN serving: its backstore opened"
                            );
                        }
                    }
                    return;
                }
                Err(e) => {
                    if let Some(tx) = first.take() {
                        let _ = tx.send(None);
                    }
                    // Only as long as the LUN is still served by its stand-in (a config change
                    // may have removed it, or redefined it: then another task opens it).
                    if self.stand_in.strong_count() == 0 || self.serving.strong_count() == 0 {
                        return;
                    }
                    warn!(
                        target = %self.at.iqn,
                        lun = self.lun.lun,
                        image = %self.lun.image,
                        attempts,
                        retry_in_s = delay.as_secs(),
                        "LUN not ready (NOT READY, this gateway's path unavailable): {e:#}"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                    if self.stand_in.strong_count() == 0 {
                        return;
                    }
                }
            }
        }
    }
}

async fn open_device(lun: &Lun, ceph: &CephOptions, host: &str) -> anyhow::Result<Device> {
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
                gateway: Some(host.to_string()),
            };
            let dev = tokio::task::spawn_blocking(move || backstore::rbd::RbdDevice::open(&cfg))
                .await
                .context("opening the rbd image")?
                .with_context(|| format!("rbd image {pool}/{image} (ceph.conf {})", ceph.conf))?;
            Ok(Device::Rbd(dev))
        }
    }
}

fn lu_config(l: &Lun, at: &LunContext) -> LuConfig {
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
    c.unmap_granularity_alignment = a.unmap_granularity_alignment;
    if let Some(v) = &a.vendor {
        c.vendor = v.clone();
    }
    if let Some(p) = &a.product {
        c.product = p.clone();
    }
    c
}

/// Opens one LUN's backstore and builds its LU and ownership.
async fn open_lun(
    l: &Lun,
    at: &LunContext,
    owner_tag: Option<u16>,
) -> anyhow::Result<(Arc<Lu>, Arc<Ownership>)> {
    let dev = {
        // (The semaphore is never closed.)
        let _slot = OPENING.acquire().await;
        open_device(l, &at.ceph, &at.host).await
    }
    .with_context(|| format!("target {} LUN {}", at.iqn, l.lun))?;
    let size = backstore::BlockDevice::size(&dev);
    if size < l.attributes.block_size as u64 {
        bail!(
            "target {} LUN {}: the image is smaller than one block ({size} bytes)",
            at.iqn,
            l.lun
        );
    }
    let lu = Arc::new(LogicalUnit::new(lu_config(l, at), dev));
    let to_sessions = at.aborts.clone();
    lu.on_task_abort(Box::new(move |a| {
        // (No receiver: no session here has tasks to abort.)
        let _ = to_sessions.send(Arc::new(a));
    }));
    lu.set_copy_targets(at.copy_targets.clone());
    lu.load_persistent_state().await;
    let o = Ownership::start(lu.clone(), at.local_tag, owner_tag, at.draining.clone()).await;
    info!(target = %at.iqn, lun = l.lun, backstore = l.backstore.kind(), image = %l.image, serial = %l.serial, bytes = size, "LUN ready");
    Ok((lu, o))
}
