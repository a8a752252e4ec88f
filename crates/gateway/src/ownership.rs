//! Which gateway owns a LU: implicit ALUA (SPC-4 §5.16) decided by a rule every gateway
//! computes alike, and the backstore's ownership lock, so that only one gateway writes.
//!
//! **Who is alive.** Every gateway beats on each LU's device and pings it every
//! [`PING_EVERY`] (RBD: a notify on the pool's presence object, answered by every live
//! gateway's watch with its TPG tag and whether it holds the lock, for each of its images of
//! the pool; file: presence files under
//! OFD locks, which the kernel drops with a dead process). A gateway that has not answered for
//! [`ABSENT_AFTER`] is gone. A gateway whose own ping does not come back (cut off) cannot tell
//! and decides nothing.
//!
//! **Who owns.** The preference order of a LU is its configured owner, then the other TPGs in
//! tag order after it. The *desired owner* is the first live gateway in that order; only it
//! acts. When the lock holder is gone it takes the lock — fencing the holder first if the
//! lock is still held (RBD: blocklist and lock break, so the OSDs refuse its late writes) —
//! and records itself as the ALUA owner (`alua_owner`), which every gateway reports and which
//! raises ASYMMETRIC ACCESS STATE CHANGED on every nexus of every gateway. The others stay
//! active/non-optimized. When the configured owner is back (alive for [`FAILBACK_AFTER`] and
//! used by an initiator) it becomes the owner again; the lock follows the initiator's first
//! write through it.
//!
//! **Writes follow the initiator.** A write arriving at a gateway without the lock asks the
//! holder to hand over (`alua_request`): the holder stops writing, waits for its writes in
//! flight, flushes and releases. The ALUA owner keeps the lock while its own paths write and
//! yields to a non-owner path only when they pause for [`YIELD_IDLE`] or the request has
//! waited [`YIELD_AFTER`]: an initiator round-robining over several paths while it learns the
//! new owner does not bounce the lock on every command. The ALUA owner moves only by the
//! rule, never by where writes come from. Until a writer holds the lock its write is answered
//! NOT READY, ASYMMETRIC ACCESS STATE TRANSITION and the initiator retries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstore::{BlockDevice, Publish, Standing};
use scsi::{Asc, SenseData, SenseKey};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::target::Lu;

const OWNER_KEY: &str = "alua_owner";
const REQUEST_KEY: &str = "alua_request";
/// How often a gateway looks at the shared ownership state while a handover is under way (a
/// request stands, or this gateway asked); otherwise when it changes (or, on a device that
/// cannot tell, every [`backstore::METADATA_POLL`]) and before each ping.
const POLL_HANDOVER: Duration = Duration::from_millis(20);
/// How often a gateway asks who is alive.
const PING_EVERY: Duration = Duration::from_secs(1);
/// A gateway that has not answered for this long is gone: three to four missed pings, so one
/// lost answer or a short stall is not a failover.
const ABSENT_AFTER: Duration = Duration::from_millis(3500);
/// How long a held lock must have had no live holder before the holder is fenced: longer
/// than one ping, so a gateway that has just taken the lock says so first.
const ORPHAN_FOR: Duration = Duration::from_millis(1500);
/// How long the configured owner must be back, and able to tell who is alive, before it
/// takes its LUs back.
const FAILBACK_AFTER: Duration = Duration::from_secs(3);
/// A failback is asked for again after this long at the earliest (the initiator may keep
/// writing through the other gateway, which then takes the lock back).
const FAILBACK_BACKOFF: Duration = Duration::from_secs(30);
/// The configured owner takes its LU back only if an initiator used this path this recently.
const SERVED_WITHIN: Duration = Duration::from_secs(30);
/// How long a write waits for a handover before the initiator is told to retry.
const HANDOVER_WAIT: Duration = Duration::from_secs(5);
/// The ALUA owner yields to a write on a non-owner path once its own writes paused this long
/// (an initiator that alternates paths one command at a time: a multipath test)…
const YIELD_IDLE: Duration = Duration::from_millis(100);
/// …or, while its own paths keep writing (a queue round-robined over two paths), once the
/// request has waited this long.
const YIELD_AFTER: Duration = Duration::from_secs(3);
/// For this long after the ALUA owner changed, initiators are still learning it (Linux:
/// the unit attention, then multipathd's next check of each path) and may round-robin over
/// the old group; the owner then yields to a non-owner path only after [`YIELD_SETTLING`],
/// whether its own paths pause or not. Just under [`HANDOVER_WAIT`], so the waiting write is
/// still served.
/// A drained gateway that still holds the lock after its successor became the owner hands
/// it over once no write came for this long (the initiator moved its I/O).
const DRAIN_IDLE: Duration = Duration::from_secs(1);
const SETTLING: Duration = Duration::from_secs(20);
const YIELD_SETTLING: Duration = Duration::from_secs(4);

/// When a LU that last pinged at `t` pings next. Every LU of the process pings on one grid,
/// [`PING_EVERY`] apart: a gateway's LUs wake together once a second, answered by one round of
/// pings per pool, instead of a thousand times spread across the second.
fn next_ping_after(t: Instant) -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    match t.checked_duration_since(origin) {
        Some(since) => {
            let periods = since.as_nanos() / PING_EVERY.as_nanos();
            origin + PING_EVERY * (periods as u32 + 1)
        }
        // Before the grid was laid (the first ping of the process).
        None => t + PING_EVERY,
    }
}

fn parse_tag(v: Option<Vec<u8>>) -> Option<u16> {
    v.and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.trim().parse().ok())
}

/// The order in which gateways take a LU: the configured owner, then the others in tag order
/// after it (wrapping), so that every gateway computes the same successor.
pub fn preference(tags: &[u16], configured: Option<u16>) -> Vec<u16> {
    let mut t = tags.to_vec();
    t.sort_unstable();
    t.dedup();
    if let Some(at) = configured.and_then(|c| t.iter().position(|x| *x == c)) {
        t.rotate_left(at);
    }
    t
}

/// Who this gateway has heard from.
#[derive(Default)]
struct View {
    /// When each gateway last answered.
    seen: HashMap<u16, Instant>,
    /// Gateways whose last answer said they hold the lock.
    holding: HashMap<u16, Instant>,
    /// Gateways whose last answer said they are drained.
    draining: std::collections::HashSet<u16>,
    /// When this gateway last pinged.
    pinged: Option<Instant>,
    /// Since when this gateway's own pings come back (None: it cannot tell now).
    healthy_since: Option<Instant>,
    /// When its last ping came back.
    last_ok: Option<Instant>,
    /// When it started following the LU (its view is as fresh as the records it read then).
    started: Option<Instant>,
}

impl View {
    fn alive(&self, tag: u16, now: Instant) -> bool {
        self.seen
            .get(&tag)
            .is_some_and(|t| now.duration_since(*t) < ABSENT_AFTER)
    }

    fn record(&mut self, members: &[backstore::Member], now: Instant) {
        for m in members {
            self.seen.insert(m.tag, now);
            if m.draining {
                self.draining.insert(m.tag);
            } else {
                self.draining.remove(&m.tag);
            }
            if m.holds_lock {
                // A lock has one holder: whoever held it before does no longer.
                self.holding.clear();
                self.holding.insert(m.tag, now);
            } else {
                self.holding.remove(&m.tag);
            }
        }
        self.healthy_since.get_or_insert(now);
        self.last_ok = Some(now);
    }

    fn failed(&mut self) {
        self.healthy_since = None;
    }

    /// Whether no answer came back since `t`: what this view says of the gateways predates it.
    fn older_than(&self, t: Instant) -> bool {
        self.last_ok.is_none_or(|ok| t > ok)
    }

    /// Whether this gateway has heard nothing for as long as the others take to call it
    /// gone ([`ABSENT_AFTER`] since its last answer came back, or since it started): from
    /// then on they may have taken its LUs over, and what it knows of the owner is stale.
    /// Its pings failed (cut off, fenced) or never went out (the process was stopped: then
    /// this holds from the moment it runs again, before its next ping).
    fn isolated(&self, now: Instant) -> bool {
        self.last_ok
            .or(self.started)
            .is_some_and(|t| now.saturating_duration_since(t) >= ABSENT_AFTER)
    }
}

/// The ownership of one LU as this gateway sees it.
pub struct Ownership {
    lu: Arc<Lu>,
    my_tag: u16,
    /// The gateway is drained (`rbdgw drain`): shared by all its LUs.
    draining: Arc<AtomicBool>,
    preference: Vec<u16>,
    owned: AtomicBool,
    /// Handing over: writes wait instead of taking the lock back.
    yielding: AtomicBool,
    /// The gateway is stopping: the lock is let go and never taken again.
    stopping: AtomicBool,
    writes_in_flight: AtomicU32,
    /// When a write here last finished (ms since `epoch`).
    last_write_ms: AtomicU64,
    epoch: Instant,
    seen_generation: AtomicU64,
    acquiring: tokio::sync::Mutex<()>,
    /// Another gateway's handover request, and since when this gateway has seen it.
    pending: Mutex<Option<(u16, Instant)>>,
    /// This gateway asked for the lock (a failback, or a write here) and takes it once free.
    asked: AtomicBool,
    /// Since when the lock has been seen held with no live gateway saying it holds it.
    orphan_since: Mutex<Option<Instant>>,
    view: Mutex<View>,
    /// When this gateway last asked for its LU back.
    failback_at: Mutex<Option<Instant>>,
    /// When the ALUA owner last changed, as seen here.
    owner_changed_at: Mutex<Option<Instant>>,
    /// When a command last came through this gateway for the LU (seen by `refresh`).
    served_at: Mutex<Option<Instant>>,
}

/// How long letting the lock go took: the writes running here to finish, the flush, the
/// unlock (logged: a slow hand-over says which part was slow).
struct LetGo {
    writes: Duration,
    flush: Duration,
    unlock: Duration,
}

/// Held by a write while it runs on the owner.
pub struct WriteGuard(Arc<Ownership>);

impl Drop for WriteGuard {
    fn drop(&mut self) {
        self.0
            .last_write_ms
            .store(self.0.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.0.writes_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn transitioning() -> SenseData {
    SenseData::new(SenseKey::NotReady, Asc::LU_NOT_ACCESSIBLE_TRANSITIONING)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ownership {
    /// Sets up ownership at start: the configured owner takes the lock if it is free and no
    /// other gateway is recorded as the owner.
    pub async fn start(
        lu: Arc<Lu>,
        my_tag: u16,
        configured_owner: Option<u16>,
        draining: Arc<AtomicBool>,
    ) -> Arc<Ownership> {
        let tags: Vec<u16> = lu.config().port_groups.iter().map(|g| g.tag).collect();
        let o = Arc::new(Ownership {
            preference: preference(&tags, configured_owner),
            lu,
            my_tag,
            draining,
            owned: AtomicBool::new(false),
            yielding: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            writes_in_flight: AtomicU32::new(0),
            last_write_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            seen_generation: AtomicU64::new(u64::MAX),
            acquiring: tokio::sync::Mutex::new(()),
            pending: Mutex::new(None),
            asked: AtomicBool::new(false),
            orphan_since: Mutex::new(None),
            view: Mutex::new(View::default()),
            failback_at: Mutex::new(None),
            owner_changed_at: Mutex::new(None),
            served_at: Mutex::new(None),
        });
        let dev = o.lu.device();
        // Present, but as starting: a gateway starting at the same moment is no witness that
        // the LU kept running, nor is this one to it.
        if let Err(e) = dev.heartbeat(my_tag, Standing::Starting).await {
            warn!(lun = o.lu.config().lun, "cannot announce this gateway: {e}");
        }
        let before = o.lu.reservation_snapshot().await;
        if o.alone().await {
            if let Some(before) = before {
                if o.lu.power_loss(&before).await {
                    info!(
                        lun = o.lu.config().lun,
                        "no other gateway serves this LU: as after a power loss, reservations \
                         made without APTPL are dropped (SPC-4 §5.9.5)"
                    );
                }
            }
        }
        if let Err(e) = dev.heartbeat(my_tag, o.standing()).await {
            warn!(lun = o.lu.config().lun, "cannot announce this gateway: {e}");
        }
        let recorded = parse_tag(dev.metadata_get(OWNER_KEY).await.ok().flatten());
        if configured_owner == Some(my_tag)
            && !o.is_draining()
            && (recorded.is_none() || recorded == Some(my_tag))
            && o.try_take().await
        {
            o.set_alua_owner(my_tag).await;
        }
        // The first ping goes out from the background loop: a LU starts without waiting
        // for the answers.
        {
            let mut v = lock(&o.view);
            v.pinged = Some(Instant::now());
            v.started = v.pinged;
        }
        o.refresh().await;
        if recorded.is_none() && !o.is_owner() {
            o.lu.set_owner_tpg(configured_owner);
        }
        let weak = Arc::downgrade(&o);
        tokio::spawn(async move {
            loop {
                // Asleep until the shared state changes or the next ping is due (a device
                // that cannot be told of changes is looked at every 200 ms); while a
                // handover is under way, every POLL_HANDOVER. Only the LU is held meanwhile,
                // not the ownership, whose drop ends the loop.
                let (lu, seen, wait) = {
                    let Some(o) = weak.upgrade() else { return };
                    let wait = if o.asked.load(Ordering::Acquire) || lock(&o.pending).is_some() {
                        None
                    } else {
                        Some(o.until_ping())
                    };
                    (
                        o.lu.clone(),
                        o.seen_generation.load(Ordering::Acquire),
                        wait,
                    )
                };
                match wait {
                    Some(wait) => lu.device().metadata_changed(seen, wait).await,
                    None => tokio::time::sleep(POLL_HANDOVER).await,
                }
                drop(lu);
                let Some(o) = weak.upgrade() else { return };
                if o.stopping.load(Ordering::Acquire) {
                    // Stopping: no more pings, failbacks or requests from a gateway that
                    // is going away (a request left standing would hold the lock back
                    // from the gateway taking over).
                    return;
                }
                o.refresh().await;
            }
        });
        o
    }

    /// How long until the next ping is due.
    fn until_ping(&self) -> Duration {
        lock(&self.view).pinged.map_or(Duration::ZERO, |t| {
            next_ping_after(t).saturating_duration_since(Instant::now())
        })
    }

    /// Whether no other gateway serves the LU now (two rounds a second apart): gateways still
    /// starting it do not count; false when this gateway cannot tell in four rounds.
    async fn alone(&self) -> bool {
        let dev = self.lu.device();
        // Two rounds a ping apart that find nobody else serving. A round that cannot tell
        // (this LU's own answer missing: a round another LU of this gateway began before this
        // one joined) is asked again, up to four rounds in all; taking it for company left
        // registrations of a lost power in place now and then.
        let mut alone_rounds = 0;
        for i in 0..4 {
            if i > 0 {
                tokio::time::sleep(PING_EVERY).await;
            }
            match dev.members().await {
                Ok(m) if m.iter().all(|m| m.tag == self.my_tag || m.starting) => {
                    alone_rounds += 1;
                    if alone_rounds == 2 {
                        return true;
                    }
                }
                Ok(_) => return false,
                Err(_) => {}
            }
        }
        false
    }

    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    fn standing(&self) -> Standing {
        if self.is_draining() {
            Standing::Draining
        } else {
            Standing::Serving
        }
    }

    /// Where a drain of this gateway stands for the LU: whether it still holds the write lock
    /// and whether it is still the ALUA owner (both false: nothing is lost if it stops). A
    /// hand-over under way (writes finishing, flush, unlock) still holds it: a drain that
    /// reported done there let the gateway be stopped with the lock, and the successor's
    /// writes waited for it to exit (2 s).
    pub fn still_held(&self) -> (bool, bool) {
        (
            self.is_owner() || self.yielding.load(Ordering::Acquire),
            self.lu.owner_tpg() == Some(self.my_tag),
        )
    }

    pub fn is_owner(&self) -> bool {
        self.owned.load(Ordering::Acquire)
    }

    /// Lets the lock go for good as the gateway stops (its connections are closed): the
    /// successor takes it at once instead of when this process exits and its image closes.
    /// Returns whether it was held here.
    pub async fn release_at_stop(&self) -> bool {
        self.stopping.store(true, Ordering::Release);
        let _one = self.acquiring.lock().await;
        if !self.is_owner() {
            return false;
        }
        let t = self.let_go().await;
        info!(
            lun = self.lu.config().lun,
            writes_ms = t.writes.as_millis() as u64,
            flush_ms = t.flush.as_millis() as u64,
            unlock_ms = t.unlock.as_millis() as u64,
            "stopping: released the write lock"
        );
        true
    }

    /// Takes the lock if it is free.
    async fn try_take(&self) -> bool {
        if self.stopping.load(Ordering::Acquire) {
            return false;
        }
        let dev = self.lu.device();
        match dev.try_acquire_ownership().await {
            Ok(true) => {
                // (Taken twice at once, by a write and by the control loop: the lock is
                // ours already; the first says so, once.)
                if self.owned.swap(true, Ordering::AcqRel) {
                    return true;
                }
                lock(&self.view).holding.clear();
                self.asked.store(false, Ordering::Release);
                *lock(&self.orphan_since) = None;
                // Our request is answered; one another gateway posted since stays for us to
                // answer.
                let mine = self.my_tag.to_string().into_bytes();
                let _ = dev
                    .metadata_compare_and_set(REQUEST_KEY, Some(mine), Vec::new(), Publish::Stored)
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
            .metadata_set(OWNER_KEY, tag.to_string().into_bytes(), Publish::Stored)
            .await
        {
            warn!(
                lun = self.lu.config().lun,
                "cannot record the ALUA owner: {e}"
            );
        }
        self.note_owner(tag);
        info!(
            lun = self.lu.config().lun,
            tpg = tag,
            "ALUA owner (active/optimized) is now TPG {tag}"
        );
    }

    /// Another gateway's handover request, if it stands: its requester is alive (a dead
    /// gateway's request would otherwise hold every writer back).
    fn other_request(&self) -> Option<(u16, Instant)> {
        let p = (*lock(&self.pending))?;
        let v = lock(&self.view);
        let now = Instant::now();
        (v.healthy_since.is_none() || v.alive(p.0, now)).then_some(p)
    }

    /// Asks the lock holder to hand over to this gateway.
    async fn ask_for_lock(&self) -> bool {
        if self.stopping.load(Ordering::Acquire) {
            return false;
        }
        self.asked.store(true, Ordering::Release);
        self.lu
            .device()
            .metadata_set(
                REQUEST_KEY,
                self.my_tag.to_string().into_bytes(),
                Publish::Stored,
            )
            .await
            .is_ok()
    }

    /// One round: beat, follow the shared state, answer handover requests, and every
    /// [`PING_EVERY`] look at who is alive and act on it.
    async fn refresh(&self) {
        let dev = self.lu.device();
        let lun = self.lu.config().lun;
        let _ = dev.heartbeat(self.my_tag, self.standing()).await;
        // A reservation change or reset through another gateway acts here without waiting
        // for a command (PREEMPT AND ABORT of a write waiting for its data).
        self.lu.poll_shared().await;
        if self.lu.take_served() {
            *lock(&self.served_at) = Some(Instant::now());
        }
        if self.is_owner() && !dev.holds_ownership() {
            self.owned.store(false, Ordering::Release);
            warn!(
                lun,
                tpg = self.my_tag,
                "lost the write lock: another gateway fenced this one"
            );
        }
        let generation = dev.metadata_generation();
        if self.seen_generation.swap(generation, Ordering::AcqRel) != generation {
            if let Some(owner) = parse_tag(dev.metadata_get(OWNER_KEY).await.ok().flatten()) {
                self.note_owner(owner);
            }
            let request = parse_tag(dev.metadata_get(REQUEST_KEY).await.ok().flatten())
                .filter(|t| *t != self.my_tag);
            let mut p = lock(&self.pending);
            *p = match (request, *p) {
                (Some(t), Some((was, since))) if t == was => Some((t, since)),
                (Some(t), _) => Some((t, Instant::now())),
                (None, _) => None,
            };
            if p.is_some() {
                // Another gateway's request replaced ours: the lock goes there first.
                self.asked.store(false, Ordering::Release);
            }
        }
        let pending = self.other_request();
        if let Some((to, since)) = pending.filter(|_| self.is_owner()) {
            if self.should_yield(to, since) {
                // `pending` stays until the requester, holding the lock, clears its request:
                // until then this gateway must not take the lock it just let go.
                self.hand_over(to).await;
            }
        }
        // Asked for the lock (and the request is still ours): take it once the holder lets go.
        if self.asked.load(Ordering::Acquire)
            && !self.is_owner()
            && pending.is_none()
            && !self.yielding.load(Ordering::Acquire)
            && self.try_take().await
        {
            self.claim_if_desired().await;
        }
        let due = lock(&self.view)
            .pinged
            .is_none_or(|t| Instant::now() >= next_ping_after(t));
        if due {
            self.look_around().await;
        }
    }

    /// Sets the LU's ALUA owner, remembering when it changed.
    fn note_owner(&self, tag: u16) {
        // (Learning the owner at start is no change initiators must follow.)
        if self.lu.owner_tpg().is_some_and(|o| o != tag) {
            crate::metrics::metrics().alua_changes.inc();
            *lock(&self.owner_changed_at) = Some(Instant::now());
        }
        self.lu.set_owner_tpg(Some(tag));
    }

    /// Whether the holder (this gateway) gives the lock to TPG `to`, which asked at `since`.
    fn should_yield(&self, to: u16, since: Instant) -> bool {
        let owner = self.lu.owner_tpg();
        if owner == Some(to) || owner != Some(self.my_tag) {
            return true;
        }
        let settling = lock(&self.owner_changed_at).is_some_and(|t| t.elapsed() < SETTLING);
        if settling {
            return since.elapsed() >= YIELD_SETTLING;
        }
        self.write_idle() >= YIELD_IDLE || since.elapsed() >= YIELD_AFTER
    }

    /// The desired owner (the first live gateway in the preference order), if this gateway
    /// can tell.
    fn desired(&self, view: &View, now: Instant) -> Option<u16> {
        view.healthy_since?;
        let live = |t: &u16| *t == self.my_tag || view.alive(*t, now);
        let drained = |t: &u16| {
            if *t == self.my_tag {
                self.is_draining()
            } else {
                view.draining.contains(t)
            }
        };
        // A drained gateway takes nothing, unless every live one is drained.
        self.preference
            .iter()
            .copied()
            .find(|t| live(t) && !drained(t))
            .or_else(|| self.preference.iter().copied().find(live))
    }

    /// Whether another gateway became the ALUA owner after this gateway's last ping round
    /// came back: what this view says of it is older than its claim. A gateway claims only
    /// while it is not drained, so a view that still has it drained (an undrain and the
    /// failback that follows within a second) must not take the LU back from it.
    fn owner_newer_than_view(&self, v: &View) -> bool {
        let changed = *lock(&self.owner_changed_at);
        self.lu.owner_tpg().is_some_and(|o| o != self.my_tag)
            && changed.is_some_and(|c| v.older_than(c))
    }

    /// Records this gateway as the ALUA owner when the rule says so and it holds the lock.
    async fn claim_if_desired(&self) {
        let now = Instant::now();
        let desired = {
            let v = lock(&self.view);
            if self.owner_newer_than_view(&v) {
                return;
            }
            self.desired(&v, now)
        };
        if desired == Some(self.my_tag) && self.lu.owner_tpg() != Some(self.my_tag) {
            self.set_alua_owner(self.my_tag).await;
        }
    }

    /// Reports this gateway's port as isolated (see [`View::isolated`]) or not any more.
    fn note_isolation(&self, v: &View, now: Instant) {
        let isolated = v.isolated(now);
        if self.lu.set_isolated(isolated) {
            let lun = self.lu.config().lun;
            if isolated {
                warn!(
                    lun,
                    "this gateway has not heard from the cluster for {} ms: another gateway may \
                     take the LU over, so its paths no longer report active/optimized and it \
                     refuses logins",
                    v.last_ok
                        .or(v.started)
                        .map_or(0, |t| now.duration_since(t).as_millis())
                );
            } else {
                info!(lun, "this gateway's pings come back again");
            }
        }
    }

    /// Reports the drained gateways' ports as standby once their successor is the ALUA owner
    /// and they no longer hold the lock. Until then a drained gateway goes on serving: the
    /// initiator, told of the new owner, moves its I/O there at its own pace (multipathd's
    /// next look), and the lock follows its first write there; turning writes away earlier
    /// sent them, retried, to any other path, and one waited 4 s for the lock there. Alone, a
    /// drained gateway stays the owner and serves on: its I/O has nowhere else to go.
    fn note_standby(&self, v: &View, now: Instant) {
        let owner = self.lu.owner_tpg();
        let mut standby: Vec<u16> = v
            .draining
            .iter()
            .copied()
            .filter(|t| {
                *t != self.my_tag
                    && v.alive(*t, now)
                    && owner != Some(*t)
                    && !v.holding.contains_key(t)
            })
            .collect();
        if self.drained_here() {
            standby.push(self.my_tag);
        }
        self.lu.set_standby_tpgs(standby);
    }

    /// Drained, and done here: another gateway owns the LU and this one holds no lock.
    fn drained_here(&self) -> bool {
        self.is_draining()
            && !self.is_owner()
            && self.lu.owner_tpg().is_some_and(|o| o != self.my_tag)
    }

    /// How long since a write here last ran (zero while one runs).
    fn write_idle(&self) -> Duration {
        if self.writes_in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(
            (self.epoch.elapsed().as_millis() as u64)
                .saturating_sub(self.last_write_ms.load(Ordering::Relaxed)),
        )
    }

    /// Whether this gateway cannot tell now who owns the LU: it has not heard from the
    /// others for as long as they take to call it gone, or Ceph fenced it and it has not
    /// reconnected. What it knows of the owner may be stale then, and an initiator that
    /// logged in would read it (REPORT TARGET PORT GROUPS applies to every path): a fenced
    /// ex-owner back from a partition showed every path non-optimized, and writes sent to
    /// it waited there for its reconnection (10 s).
    pub fn cannot_tell(&self) -> bool {
        let dev = self.lu.device();
        (dev.opened() && !dev.available()) || lock(&self.view).isolated(Instant::now())
    }

    /// Pings, then acts if this gateway is the desired owner.
    async fn look_around(&self) {
        let dev = self.lu.device();
        let lun = self.lu.config().lun;
        // (After a stop, before the ping: it may take a while to come back.)
        self.note_isolation(&lock(&self.view), Instant::now());
        let members = dev.members().await;
        if members.is_ok() && lock(&self.view).isolated(Instant::now()) {
            // Back after a silence: the owner may have changed meanwhile (a notify missed
            // while cut off); read it before initiators are told to look again.
            if let Some(owner) = parse_tag(dev.metadata_get(OWNER_KEY).await.ok().flatten()) {
                self.note_owner(owner);
            }
        }
        let now = Instant::now();
        let (desired, holder_alive, holder_gone, recorded_alive, healthy_for) = {
            let mut v = lock(&self.view);
            v.pinged = Some(now);
            match &members {
                Ok(m) => v.record(m, now),
                Err(_) => v.failed(),
            }
            self.note_isolation(&v, now);
            self.note_standby(&v, now);
            let healthy_for = v.healthy_since.map(|t| now.duration_since(t));
            let holder_alive = v
                .holding
                .keys()
                .any(|t| *t != self.my_tag && v.alive(*t, now));
            // The last gateway known to hold the lock is gone (killed, stopped, cut off).
            let holder_gone = v
                .holding
                .keys()
                .any(|t| *t != self.my_tag && !v.alive(*t, now));
            let recorded_alive = self
                .lu
                .owner_tpg()
                .is_some_and(|t| t == self.my_tag || v.alive(t, now));
            (
                self.desired(&v, now),
                holder_alive,
                holder_gone,
                recorded_alive,
                healthy_for,
            )
        };
        // Decide only when this gateway can tell, and has listened long enough to have heard
        // from every live gateway.
        let Some(healthy_for) = healthy_for.filter(|h| *h >= ABSENT_AFTER) else {
            return;
        };
        let gone: Vec<u16> = {
            let v = lock(&self.view);
            self.preference
                .iter()
                .copied()
                .filter(|t| *t != self.my_tag && !v.alive(*t, now))
                .collect()
        };
        self.lu.set_gone_tpgs(gone);
        if let Some(to) = desired.filter(|d| *d != self.my_tag) {
            if self.is_draining()
                && self.is_owner()
                && self.lu.owner_tpg() != Some(self.my_tag)
                && self.write_idle() >= DRAIN_IDLE
            {
                // Drained, the successor is the ALUA owner and the initiator no longer writes
                // here: the lock goes there (its first write would have asked for it).
                info!(lun, to_tpg = to, "drained: handing the LU over");
                self.hand_over(to).await;
            }
        }
        if desired != Some(self.my_tag) || !dev.available() {
            return;
        }
        if self.is_owner() {
            self.claim_if_desired().await;
            return;
        }
        if holder_alive {
            *lock(&self.orphan_since) = None;
        } else {
            // The lock is free, or its holder is gone. A free lock that another gateway
            // asked for is on its way there: not ours to take.
            if self.other_request().is_none() && self.try_take().await {
                self.claim_if_desired().await;
                return;
            }
            // Held, and nobody alive says so. If its last known holder is gone, that one
            // holds it. Otherwise a gateway that took it a moment ago says so in its next
            // answer: only a lock orphaned across two pings is fenced.
            let orphaned_for = lock(&self.orphan_since).get_or_insert(now).elapsed();
            if (holder_gone || orphaned_for >= ORPHAN_FOR) && self.fence_holder().await {
                return;
            }
            // Held by a gateway this engine cannot see or fence (a file's live holder).
        }
        // A live gateway holds the lock (the initiator wrote through it).
        if !recorded_alive {
            // The ALUA owner is gone: this gateway is the owner now; the lock follows when
            // the initiator writes here.
            info!(
                lun,
                "the ALUA owner is gone; taking over as the desired owner"
            );
            self.set_alua_owner(self.my_tag).await;
            self.ask_for_lock().await;
            return;
        }
        // The owner is drained (`rbdgw drain`): its successor becomes the owner at once and the
        // initiator moves its I/O here while the drained one still serves; the lock follows
        // (the drained gateway hands it over as soon as it is no longer the owner).
        let recorded_drained = {
            let v = lock(&self.view);
            self.lu
                .owner_tpg()
                .is_some_and(|t| t != self.my_tag && v.draining.contains(&t))
                && !self.owner_newer_than_view(&v)
        };
        if recorded_drained {
            info!(
                lun,
                tpg = self.my_tag,
                "the owner is drained; taking over as its successor"
            );
            self.set_alua_owner(self.my_tag).await;
            return;
        }
        let configured = self.preference.first() == Some(&self.my_tag);
        let backoff_over = lock(&self.failback_at).is_none_or(|t| t.elapsed() >= FAILBACK_BACKOFF);
        if configured
            && self.lu.owner_tpg() != Some(self.my_tag)
            && healthy_for >= ABSENT_AFTER + FAILBACK_AFTER
            && lock(&self.served_at).is_some_and(|t| t.elapsed() <= SERVED_WITHIN)
            && backoff_over
        {
            info!(
                lun,
                tpg = self.my_tag,
                "failback: the configured owner is back; it is the ALUA owner again"
            );
            *lock(&self.failback_at) = Some(Instant::now());
            // Only the owner moves now: every nexus is told and the initiator moves its I/O
            // here at its own pace, while the holder goes on serving the writes still sent
            // its way. The lock follows the first write here (the holder, no longer the
            // owner, hands over at once): one move. Taking it now made the holder ask for
            // it back for every write the initiator sent before it switched paths, and the
            // lock bounced 4–7 times per failback in the thrasher.
            self.set_alua_owner(self.my_tag).await;
        }
    }

    /// The lock is held by a gateway that no longer answers: fence it and take over.
    async fn fence_holder(&self) -> bool {
        let lun = self.lu.config().lun;
        match self.lu.device().break_ownership().await {
            Ok(true) => crate::metrics::metrics().fencings.inc(),
            Ok(false) => return false,
            Err(e) => {
                warn!(lun, "fencing the gone lock holder failed: {e}");
                return false;
            }
        }
        if !self.try_take().await {
            return false;
        }
        warn!(
            lun,
            tpg = self.my_tag,
            "the lock holder stopped answering: fenced it and took over"
        );
        self.claim_if_desired().await;
        true
    }

    /// Gives the LU up to the gateway of TPG `to`.
    async fn hand_over(&self, to: u16) {
        let t = self.let_go().await;
        crate::metrics::metrics().lock_handovers.inc();
        info!(
            lun = self.lu.config().lun,
            to_tpg = to,
            writes_ms = t.writes.as_millis() as u64,
            flush_ms = t.flush.as_millis() as u64,
            unlock_ms = t.unlock.as_millis() as u64,
            "handed the write lock over"
        );
    }

    /// No new writes, wait for the running ones, flush, unlock.
    async fn let_go(&self) -> LetGo {
        let lun = self.lu.config().lun;
        let began = Instant::now();
        self.yielding.store(true, Ordering::Release);
        self.owned.store(false, Ordering::Release);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.writes_in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let writes = began.elapsed();
        let dev = self.lu.device();
        if let Err(e) = dev.flush().await {
            warn!(lun, "flush before handover failed: {e}");
        }
        let flushed = began.elapsed();
        if let Err(e) = dev.release_ownership().await {
            warn!(lun, "releasing the ownership lock failed: {e}");
        }
        self.yielding.store(false, Ordering::Release);
        LetGo {
            writes,
            flush: flushed - writes,
            unlock: began.elapsed() - flushed,
        }
    }

    /// Admits one write: on the lock holder at once; elsewhere after the holder handed over.
    pub async fn write_guard(self: &Arc<Self>) -> Result<WriteGuard, SenseData> {
        if self.drained_here() {
            // Drained and another gateway owns the LU: no write moves the lock back here
            // (SPC-4 §5.16.2.4.4: the port is in standby).
            return Err(SenseData::new(
                SenseKey::NotReady,
                Asc::LU_NOT_ACCESSIBLE_STANDBY,
            ));
        }
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
            let deadline = Instant::now() + HANDOVER_WAIT;
            // A free lock with another gateway's request standing is a handover on its way
            // there: taking it, or replacing the request with ours, would steal it from the
            // requester. Wait until it has the lock (and cleared its request).
            while self.other_request().is_some() {
                if Instant::now() >= deadline {
                    return Err(transitioning());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if !self.yielding.load(Ordering::Acquire) && self.try_take().await {
                continue;
            }
            if !self.asked.load(Ordering::Acquire) {
                info!(
                    lun = self.lu.config().lun,
                    tpg = self.my_tag,
                    "write on a path without the write lock: asking the holder to hand over"
                );
            }
            if !self.ask_for_lock().await {
                return Err(transitioning());
            }
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                // Another gateway's request, posted after ours, gets the lock first.
                let ours = self.other_request().is_none();
                if self.is_owner()
                    || (ours && !self.yielding.load(Ordering::Acquire) && self.try_take().await)
                {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(transitioning());
                }
            }
        }
    }
}

/// Commands that change the medium and so need ownership (SBC-3 write-class commands).
pub fn needs_ownership(opcode: u8) -> bool {
    matches!(
        opcode,
        0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e | 0x41 | 0x93 | 0x42 | 0x89 | 0x8b
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lu_pings_on_one_grid_a_second_apart() {
        next_ping_after(Instant::now());
        let t = Instant::now();
        let next = next_ping_after(t);
        assert!(next > t && next <= t + PING_EVERY, "{:?}", next - t);
        // Any instant of the same period has the same next ping; the next period's is one
        // PING_EVERY later.
        let later = next - Duration::from_millis(1);
        assert_eq!(next_ping_after(later), next);
        assert_eq!(next_ping_after(next), next + PING_EVERY);
    }

    #[test]
    fn successors_follow_the_configured_owner_in_tag_order() {
        assert_eq!(preference(&[1, 2, 3], Some(1)), vec![1, 2, 3]);
        assert_eq!(preference(&[1, 2, 3], Some(2)), vec![2, 3, 1]);
        assert_eq!(preference(&[3, 1, 2], Some(3)), vec![3, 1, 2]);
        assert_eq!(preference(&[2, 1], None), vec![1, 2]);
        assert_eq!(preference(&[1, 2], Some(9)), vec![1, 2], "unknown owner");
    }

    #[test]
    fn a_gateway_is_gone_after_missed_answers_only() {
        let t0 = Instant::now();
        let mut v = View::default();
        let m = |tag, holds_lock| backstore::Member {
            tag,
            holds_lock,
            starting: false,
            draining: false,
        };
        v.record(&[m(1, true), m(2, false)], t0);
        assert!(v.alive(1, t0 + Duration::from_secs(3)));
        assert!(!v.alive(1, t0 + ABSENT_AFTER));
        assert!(!v.alive(3, t0), "never heard of");
        // One lost answer does not forget that 1 holds the lock.
        v.record(&[m(2, false)], t0 + Duration::from_secs(1));
        assert!(v.holding.contains_key(&1));
        v.record(&[m(1, false)], t0 + Duration::from_secs(2));
        assert!(!v.holding.contains_key(&1), "it said it let go");
        v.record(&[m(1, true)], t0 + Duration::from_secs(3));
        v.record(&[m(2, true)], t0 + Duration::from_secs(4));
        assert_eq!(
            v.holding.keys().collect::<Vec<_>>(),
            vec![&2],
            "one holder at a time"
        );
        // A drained gateway says so in its answers, until it is undrained.
        let drained = backstore::Member {
            draining: true,
            ..m(3, false)
        };
        v.record(&[drained], t0 + Duration::from_secs(5));
        assert!(v.draining.contains(&3) && v.alive(3, t0 + Duration::from_secs(5)));
        v.record(&[m(3, false)], t0 + Duration::from_secs(6));
        assert!(!v.draining.contains(&3));
    }

    #[test]
    fn news_after_the_last_answers_is_newer_than_the_view() {
        let t0 = Instant::now();
        let mut v = View::default();
        assert!(v.older_than(t0), "nothing heard yet");
        v.record(&[], t0);
        // An owner claimed after this round: what the round said of it (drained) predates the
        // claim, until the next round.
        assert!(v.older_than(t0 + Duration::from_millis(400)));
        assert!(!v.older_than(t0 - Duration::from_millis(1)));
        v.record(&[], t0 + PING_EVERY);
        assert!(!v.older_than(t0 + Duration::from_millis(400)));
    }

    #[test]
    fn a_gateway_whose_pings_fail_is_isolated_when_the_others_would_call_it_gone() {
        let t0 = Instant::now();
        let mut v = View::default();
        v.record(&[], t0);
        // Its last answer came at t0; the next ping, a second later, fails, and so on.
        v.failed();
        v.failed();
        assert!(v.healthy_since.is_none());
        let gone_to_others = t0 + ABSENT_AFTER;
        assert!(!v.isolated(gone_to_others - Duration::from_millis(1)));
        assert!(v.isolated(gone_to_others));
        v.record(&[], gone_to_others + PING_EVERY);
        assert!(!v.isolated(gone_to_others + PING_EVERY), "back");
        // Stopped (SIGSTOP) past that point: isolated as soon as it runs, before it pings.
        assert!(v.isolated(gone_to_others + PING_EVERY + ABSENT_AFTER));
        // Just started, nothing heard yet: as fresh as the records it read at start.
        let fresh = View {
            started: Some(t0),
            ..View::default()
        };
        assert!(!fresh.isolated(t0 + PING_EVERY));
        assert!(fresh.isolated(t0 + ABSENT_AFTER), "never heard back");
    }
}
