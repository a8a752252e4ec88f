//! What a LU's copy manager (EXTENDED COPY) asks of the gateway: the other LUs, in any target
//! it serves, by their designators; write admission through the destination's write lock,
//! as for a WRITE; and a bound on the memory all copies hold at once.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use backstore::Device;
use scsi::copy_manager::{BoxFuture, Held, COPY_CHUNK};
use scsi::xcopy::Designator;
use scsi::{CopyTargets, SenseData};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::target::{Lu, Serving};

/// Copy memory of the whole gateway, in chunks: 64 MiB (32 copies moving data at full
/// speed; more wait their turn).
const COPY_MEMORY_CHUNKS: usize = 64;

pub(crate) struct GatewayCopyTargets {
    serving: Weak<Serving>,
    memory: Arc<Semaphore>,
    /// When a copy last had to wait for memory (said in the log once a minute at most).
    waited: Mutex<Option<Instant>>,
}

impl GatewayCopyTargets {
    pub(crate) fn new(serving: Weak<Serving>) -> Self {
        GatewayCopyTargets {
            serving,
            memory: Arc::new(Semaphore::new(COPY_MEMORY_CHUNKS)),
            waited: Mutex::new(None),
        }
    }
}

impl CopyTargets<Device> for GatewayCopyTargets {
    fn find(&self, d: &Designator) -> Option<Arc<Lu>> {
        let served = self.serving.upgrade()?.served();
        let mut found: Option<Arc<Lu>> = None;
        for lu in served.targets.iter().flat_map(|t| t.luns.values()) {
            if !lu.has_designator(d) {
                continue;
            }
            match &found {
                None => found = Some(lu.clone()),
                // The same image in two targets: one serial, one LU's data.
                Some(f) if f.config().serial == lu.config().serial => {}
                Some(f) => {
                    // An NAA designator holds only 25 digits of the serial: two serials alike
                    // there name two images, and a copy must not guess.
                    warn!(
                        first = %f.config().serial,
                        second = %lu.config().serial,
                        "a copy names a designator two LUs share: refused"
                    );
                    return None;
                }
            }
        }
        found
    }

    fn admit_write(&self, lu: Arc<Lu>) -> BoxFuture<'static, Result<Held, SenseData>> {
        let owner = self.serving.upgrade().and_then(|s| {
            s.served().targets.iter().find_map(|t| {
                let (lun, _) = t.luns.iter().find(|(_, l)| Arc::ptr_eq(l, &lu))?;
                t.owners.get(lun).cloned()
            })
        });
        Box::pin(async move {
            match owner {
                Some(o) => Ok(Box::new(o.write_guard().await?) as Held),
                // (A stand-in for a LU still opening: the copy finds it unavailable.)
                None => Ok(Box::new(()) as Held),
            }
        })
    }

    fn reserve_memory(&self, bytes: usize) -> BoxFuture<'static, Held> {
        let chunks = bytes.div_ceil(COPY_CHUNK).clamp(1, COPY_MEMORY_CHUNKS) as u32;
        let memory = self.memory.clone();
        if memory.available_permits() < chunks as usize {
            let mut w = self.waited.lock().unwrap_or_else(|e| e.into_inner());
            if w.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                *w = Some(Instant::now());
                info!(
                    "the gateway's copy memory ({} MiB) is in use: copies wait their turn",
                    (COPY_MEMORY_CHUNKS * COPY_CHUNK) >> 20
                );
            }
        }
        Box::pin(async move {
            // (The semaphore is never closed.)
            Box::new(memory.acquire_many_owned(chunks).await.ok()) as Held
        })
    }
}
