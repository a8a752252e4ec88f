//! Which gateway owns a LU: implicit ALUA (SPC-4 §5.16) tied to the backstore's ownership
//! lock, so that only the owner writes.
//!
//! The owner holds the lock (for RBD the image's exclusive lock; for a file image an OFD lock,
//! released by the kernel when the process dies) and its TPG tag is in the image's metadata
//! (`alua_owner`), so every gateway answers REPORT TARGET PORT GROUPS alike. A write arriving
//! at another gateway takes the lock if it is free and nobody else waits for it (the owner
//! left), or asks the owner to hand over (`alua_request`): the owner stops writing, waits for
//! its writes in flight, flushes and releases. Until the new owner holds the lock the write is
//! answered NOT READY, ASYMMETRIC ACCESS STATE TRANSITION and the initiator retries.
//!
//! An owner that does not answer a request for [`FENCE_AFTER`] is taken for dead or cut off:
//! the requester fences it (RBD: blocklists its client and breaks its lock, so the OSDs refuse
//! its late writes) and takes over. The fenced gateway's commands fail until it reconnects as
//! a new client; it then serves again as a non-owner. A gateway that lost the lock never
//! writes again without taking it back the same way.
//!
//! The write lock may bounce between gateways when an initiator writes down several paths at
//! once (round robin, or libiscsi's MultipathIO). The ALUA owner — what REPORT TARGET PORT
//! GROUPS shows and ASYMMETRIC ACCESS STATE CHANGED announces — moves only on a failover: at
//! once when the lock was free (the owner is gone) or broken, else once the new holder kept
//! the lock for [`STABLE`] (the initiator stays on its paths: the old owner's are down).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backstore::BlockDevice;
use scsi::{Asc, SenseData, SenseKey};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::target::Lu;

const OWNER_KEY: &str = "alua_owner";
const REQUEST_KEY: &str = "alua_request";
/// How often a gateway looks at the shared ownership state.
const POLL: Duration = Duration::from_millis(200);
/// How long a gateway must keep the lock, taken by handover, to become the ALUA owner.
const STABLE: Duration = Duration::from_secs(5);
/// How long a write waits for a handover before the initiator is told to retry.
const HANDOVER_WAIT: Duration = Duration::from_secs(5);
/// How long a handover request may go unanswered before the owner is fenced. Longer than a
/// live owner needs (one [`POLL`], its writes in flight and a flush).
const FENCE_AFTER: Duration = Duration::from_secs(8);

fn parse_tag(v: Option<Vec<u8>>) -> Option<u16> {
    v.and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.trim().parse().ok())
}

/// The ownership of one LU as this gateway sees it.
pub struct Ownership {
    lu: Arc<Lu>,
    my_tag: u16,
    owned: AtomicBool,
    /// Handing over: writes wait instead of taking the lock back.
    yielding: AtomicBool,
    writes_in_flight: AtomicU32,
    seen_generation: AtomicU64,
    acquiring: tokio::sync::Mutex<()>,
    /// When this gateway last took the lock.
    taken_at: std::sync::Mutex<Option<Instant>>,
    /// Since when this gateway's handover request is unanswered, and when a write last
    /// waited for it (a request nobody waited for lately is stale: it starts afresh).
    requested_at: std::sync::Mutex<Option<(Instant, Instant)>>,
}

/// Held by a write while it runs on the owner.
pub struct WriteGuard(Arc<Ownership>);

impl Drop for WriteGuard {
    fn drop(&mut self) {
        self.0.writes_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn transitioning() -> SenseData {
    SenseData::new(SenseKey::NotReady, Asc::LU_NOT_ACCESSIBLE_TRANSITIONING)
}

impl Ownership {
    /// Sets up ownership at start: the configured owner takes the lock if it is free.
    pub async fn start(lu: Arc<Lu>, my_tag: u16, configured_owner: Option<u16>) -> Arc<Ownership> {
        let o = Arc::new(Ownership {
            lu,
            my_tag,
            owned: AtomicBool::new(false),
            yielding: AtomicBool::new(false),
            writes_in_flight: AtomicU32::new(0),
            seen_generation: AtomicU64::new(u64::MAX),
            acquiring: tokio::sync::Mutex::new(()),
            taken_at: std::sync::Mutex::new(None),
            requested_at: std::sync::Mutex::new(None),
        });
        let recorded = parse_tag(o.lu.device().metadata_get(OWNER_KEY).await.ok().flatten());
        if configured_owner == Some(my_tag)
            && (recorded.is_none() || recorded == Some(my_tag))
            && o.try_take().await
        {
            o.set_alua_owner(my_tag).await;
        }
        o.refresh().await;
        if recorded.is_none() && !o.is_owner() {
            o.lu.set_owner_tpg(configured_owner);
        }
        let weak = Arc::downgrade(&o);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(POLL).await;
                let Some(o) = weak.upgrade() else { return };
                o.refresh().await;
            }
        });
        o
    }

    pub fn is_owner(&self) -> bool {
        self.owned.load(Ordering::Acquire)
    }

    /// Takes the lock if it is free.
    async fn try_take(&self) -> bool {
        let dev = self.lu.device();
        match dev.try_acquire_ownership().await {
            Ok(true) => {
                self.owned.store(true, Ordering::Release);
                *self.taken_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                *self.requested_at.lock().unwrap_or_else(|e| e.into_inner()) = None;
                // Our request is answered; one another gateway posted since stays for us to
                // answer.
                let mine = self.my_tag.to_string().into_bytes();
                let _ = dev
                    .metadata_compare_and_set(REQUEST_KEY, Some(mine), Vec::new())
                    .await;
                info!(
                    lun = self.lu.config().lun,
                    tpg = self.my_tag,
                    "this gateway holds the write lock"
                );
                true
            }
            Ok(false) => false,
            Err(e) => {
                warn!(lun = self.lu.config().lun, "ownership lock failed: {e}");
                false
            }
        }
    }

    /// Records `tag` as the ALUA owner, for every gateway to report.
    async fn set_alua_owner(&self, tag: u16) {
        if let Err(e) = self
            .lu
            .device()
            .metadata_set(OWNER_KEY, tag.to_string().into_bytes())
            .await
        {
            warn!(
                lun = self.lu.config().lun,
                "cannot record the ALUA owner: {e}"
            );
        }
        self.lu.set_owner_tpg(Some(tag));
        info!(
            lun = self.lu.config().lun,
            tpg = tag,
            "ALUA owner (active/optimized) is now TPG {tag}"
        );
    }

    /// Follows the shared state: the recorded owner (for ALUA) and handover requests; claims
    /// the ALUA ownership when the lock stayed here for [`STABLE`].
    async fn refresh(&self) {
        let held_long = self
            .taken_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| t.elapsed() >= STABLE);
        if self.is_owner() && held_long && self.lu.owner_tpg() != Some(self.my_tag) {
            self.set_alua_owner(self.my_tag).await;
        }
        let dev = self.lu.device();
        if self.is_owner() && !dev.holds_ownership() {
            self.owned.store(false, Ordering::Release);
            warn!(
                lun = self.lu.config().lun,
                tpg = self.my_tag,
                "lost the write lock: another gateway fenced this one"
            );
        }
        let generation = dev.metadata_generation();
        if self.seen_generation.swap(generation, Ordering::AcqRel) == generation {
            return;
        }
        if let Some(owner) = parse_tag(dev.metadata_get(OWNER_KEY).await.ok().flatten()) {
            self.lu.set_owner_tpg(Some(owner));
        }
        if !self.is_owner() {
            return;
        }
        let request = parse_tag(dev.metadata_get(REQUEST_KEY).await.ok().flatten());
        if let Some(to) = request.filter(|t| *t != self.my_tag) {
            self.hand_over(to).await;
        }
    }

    /// Gives the LU up to the gateway of TPG `to`: no new writes, wait for the running ones,
    /// flush, unlock.
    async fn hand_over(&self, to: u16) {
        let lun = self.lu.config().lun;
        self.yielding.store(true, Ordering::Release);
        self.owned.store(false, Ordering::Release);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.writes_in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let dev = self.lu.device();
        if let Err(e) = dev.flush().await {
            warn!(lun, "flush before handover failed: {e}");
        }
        if let Err(e) = dev.release_ownership().await {
            warn!(lun, "releasing the ownership lock failed: {e}");
        }
        self.yielding.store(false, Ordering::Release);
        info!(lun, to_tpg = to, "handed the write lock over");
    }

    /// Admits one write: on the owner at once; elsewhere after taking the ownership over.
    pub async fn write_guard(self: &Arc<Self>) -> Result<WriteGuard, SenseData> {
        loop {
            if self.is_owner() {
                self.writes_in_flight.fetch_add(1, Ordering::AcqRel);
                if self.is_owner() {
                    return Ok(WriteGuard(self.clone()));
                }
                self.writes_in_flight.fetch_sub(1, Ordering::AcqRel);
            }
            let _one = self.acquiring.lock().await;
            if self.is_owner() {
                continue;
            }
            let dev = self.lu.device();
            // A free lock with another gateway's request pending is a handover on its way
            // there, not an owner gone: taking it would steal it from the requester.
            let pending = match dev.metadata_get(REQUEST_KEY).await {
                Ok(v) => parse_tag(v),
                Err(_) => return Err(transitioning()),
            };
            if !self.yielding.load(Ordering::Acquire)
                && pending.is_none_or(|t| t == self.my_tag)
                && self.try_take().await
            {
                if pending.is_none() && self.lu.owner_tpg() != Some(self.my_tag) {
                    // The lock was free and nobody waited: the owner is gone. A failover.
                    self.set_alua_owner(self.my_tag).await;
                }
                continue;
            }
            info!(
                lun = self.lu.config().lun,
                tpg = self.my_tag,
                "write on a non-owner path: asking the owner to hand over"
            );
            if dev
                .metadata_set(REQUEST_KEY, self.my_tag.to_string().into_bytes())
                .await
                .is_err()
            {
                return Err(transitioning());
            }
            let since = {
                let mut r = self.requested_at.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                // The initiator retries a NOT READY within seconds; an older request was
                // given up, and must not count toward fencing the owner now.
                let since = match *r {
                    Some((since, last)) if now.duration_since(last) < 2 * HANDOVER_WAIT => since,
                    _ => now,
                };
                *r = Some((since, now + HANDOVER_WAIT));
                since
            };
            let deadline = Instant::now() + HANDOVER_WAIT;
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if !self.yielding.load(Ordering::Acquire) && self.try_take().await {
                    break;
                }
                if since.elapsed() >= FENCE_AFTER && self.fence_owner().await {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(transitioning());
                }
            }
        }
    }

    /// The owner left a request unanswered for [`FENCE_AFTER`]: fence it and take the lock.
    async fn fence_owner(&self) -> bool {
        let lun = self.lu.config().lun;
        match self.lu.device().break_ownership().await {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                warn!(lun, "fencing the unresponsive owner failed: {e}");
                return false;
            }
        }
        if !self.try_take().await {
            return false;
        }
        warn!(
            lun,
            tpg = self.my_tag,
            "the owner did not hand over within {FENCE_AFTER:?}: fenced it and took over"
        );
        self.set_alua_owner(self.my_tag).await;
        true
    }
}

/// Commands that change the medium and so need ownership (SBC-3 write-class commands).
pub fn needs_ownership(opcode: u8) -> bool {
    matches!(
        opcode,
        0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e | 0x41 | 0x93 | 0x42 | 0x89 | 0x8b
    )
}
