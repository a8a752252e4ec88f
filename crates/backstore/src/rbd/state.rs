//! Metadata shared by every gateway of an RBD image: xattrs of one RADOS object beside the
//! image, `rbdgw.<image id>`, changed only by compare-and-set write operations (cmpxattr +
//! setxattr, atomic on the OSD). A change is announced with a notify on the pool's presence
//! object (payload [`CHANGED`] and the object's name), which every gateway of the pool
//! watches; the notify returns once every watcher has seen it, so a reservation taken through
//! one gateway binds the next command on any other. The watch bumps the image's generation
//! counter, which commands read with one atomic load. (The config object, also a
//! `SharedState`, is watched itself and announced on itself.)
//!
//! Which gateways are alive is asked once per pool, not per image (`liveness.rs`): a ping (a
//! notify with the payload [`PING`]) on the pool's presence object, which every live
//! gateway's watch answers for all of its images at once ([`Presence`] per image). A gateway
//! whose process is stopped, killed or cut off does not answer; one whose control loop
//! stalls stops answering for that image ([`Presence::beat`]).

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CString};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::aio;
use super::ffi::{self, api};
use super::{ceph_err, cstr, EBLOCKLISTED};
use crate::{BackstoreError, Member, Publish, Result, Standing};

/// The payload of a liveness ping; any other notify announces a change of the state.
pub(super) const PING: &[u8] = b"rbdgw-ping";
/// How a change of an image's state is announced on its pool's presence object: this, then
/// the image's key. (A watch per image object made 1,000 LUNs 1,000 more watches, each
/// pinged by librados every 2 s: most of an idle gateway's CPU.)
const CHANGED: &[u8] = b"rbdgw-changed ";
/// How long a ping waits for the answers. A live gateway answers within milliseconds.
const PING_TIMEOUT_MS: u64 = 1000;
/// A gateway whose control loop has not beaten for this long leaves pings unanswered.
const BEAT_STALE_MS: u64 = 3000;
/// The OSD drops a watch it has not heard from for this long (a dead gateway's watch would
/// otherwise make every notify wait for it for the default 30 s); pinged every 2 s (the
/// objecter tick set in `connect_cluster`).
const WATCH_TIMEOUT_S: u32 = 6;

/// What this gateway answers pings with; shared by every connection of one image.
#[derive(Default)]
pub(super) struct Presence {
    /// This gateway's TPG tag; 0 until the gateway joined.
    pub tag: AtomicU16,
    /// This connection holds the image's exclusive lock.
    pub lock_held: AtomicBool,
    /// When the gateway's control loop last beat (ms on [`monotonic_ms`]).
    beat_ms: AtomicU64,
    /// The gateway's standing ([`Standing`] as u8).
    standing: std::sync::atomic::AtomicU8,
}

impl Presence {
    /// The gateway's control loop is alive and serves TPG `tag` (or is starting to, or
    /// draining).
    pub fn beat(&self, tag: u16, standing: Standing) {
        self.tag.store(tag, Ordering::Release);
        self.standing.store(standing as u8, Ordering::Release);
        self.beat_ms.store(monotonic_ms(), Ordering::Release);
    }

    /// The answer to a ping, or None while this gateway should count as absent.
    pub(super) fn answer(&self) -> Option<String> {
        self.answer_at(monotonic_ms())
    }

    fn answer_at(&self, now_ms: u64) -> Option<String> {
        let tag = self.tag.load(Ordering::Acquire);
        let fresh = now_ms.saturating_sub(self.beat_ms.load(Ordering::Acquire)) < BEAT_STALE_MS;
        let standing = match self.standing.load(Ordering::Acquire) {
            s if s == Standing::Starting as u8 => " starting",
            s if s == Standing::Draining as u8 => " draining",
            _ => "",
        };
        (tag != 0 && fresh).then(|| {
            format!(
                "{tag} {}{standing}",
                u8::from(self.lock_held.load(Ordering::Acquire))
            )
        })
    }
}

/// Milliseconds since the first call, on the monotonic clock.
fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// How an object's changes reach this gateway: a generation counter that commands read with
/// one atomic load, and the tasks waiting for it to move.
pub(super) struct Changes {
    pub generation: AtomicU64,
    pub waiters: tokio::sync::Notify,
}

impl Changes {
    fn new() -> Arc<Changes> {
        Arc::new(Changes {
            generation: AtomicU64::new(1),
            waiters: tokio::sync::Notify::new(),
        })
    }

    /// Something changed: the counter moves and every waiter wakes (callable from any
    /// thread: librados' callbacks).
    pub fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.waiters.notify_waiters();
    }

    /// Resolves once the generation is no longer `seen`, or after `at_most`.
    pub async fn wait(&self, seen: u64, at_most: std::time::Duration) {
        let notified = self.waiters.notified();
        tokio::pin!(notified);
        // Registered before the check: a bump between the two still wakes it.
        notified.as_mut().enable();
        if self.generation.load(Ordering::Acquire) != seen {
            return;
        }
        let _ = tokio::time::timeout(at_most, notified).await;
    }
}

/// The changes of the images announced on one presence object, by key (weak: an image's
/// state object owns them).
pub(super) type Listeners = Arc<Mutex<HashMap<String, Vec<Weak<Changes>>>>>;

/// Context of the watch callback; boxed, it outlives the watch (unwatched before drop).
pub(super) struct WatchCtx {
    /// Bumped by every change announced for this object (and by a broken watch).
    pub changes: Arc<Changes>,
    ioctx: ffi::IoCtx,
    oid: CString,
    /// The registered watch, if any. librados' cookie is the address of its watch object,
    /// freed by the unwatch: it is taken out here so that it is unwatched exactly once (a
    /// second unwatch of a renewed-then-failed watch was a use after free that crashed
    /// fenced gateways when their retired connection closed).
    cookie: Mutex<Option<u64>>,
    /// The watch broke (a network blip longer than the watch timeout): it must be renewed.
    broken: AtomicBool,
    /// Ceph refused this connection as blocklisted (seen by the watch or a ping).
    pub blocklisted: AtomicBool,
    /// What this watch answers pings with (None: it does not answer them).
    answers: Option<Answers>,
    /// The images whose changes this watch hears (on a presence object).
    listeners: Option<Listeners>,
}

impl WatchCtx {
    /// Something may have changed unseen (the watch broke or was renewed): every command of
    /// this object and of the images announced on it reloads.
    fn everything_changed(&self) {
        self.changes.bump();
        if let Some(l) = &self.listeners {
            let mut m = l.lock().unwrap_or_else(|e| e.into_inner());
            m.retain(|_, v| {
                v.retain(|c| c.upgrade().map(|c| c.bump()).is_some());
                !v.is_empty()
            });
        }
    }

    /// The image `key` announced a change.
    fn changed(&self, key: &[u8]) {
        let (Some(l), Ok(key)) = (&self.listeners, std::str::from_utf8(key)) else {
            return;
        };
        let m = l.lock().unwrap_or_else(|e| e.into_inner());
        for c in m.get(key).into_iter().flatten().filter_map(Weak::upgrade) {
            c.bump();
        }
    }
}

/// Builds the answer to a ping (None: no answer, this gateway counts as absent).
pub(super) type Answers = Arc<dyn Fn() -> Option<String> + Send + Sync>;

// SAFETY: the ioctx is thread-safe; the rest is atomics and immutable data.
unsafe impl Send for WatchCtx {}
// SAFETY: as above.
unsafe impl Sync for WatchCtx {}

extern "C" fn on_notify(
    arg: *mut c_void,
    notify_id: u64,
    cookie: u64,
    _notifier: u64,
    data: *mut c_void,
    len: usize,
) {
    // SAFETY: `arg` is the WatchCtx registered with the watch, alive until unwatched.
    let w = unsafe { &*(arg as *const WatchCtx) };
    let payload: &[u8] = if data.is_null() {
        &[]
    } else {
        // SAFETY: librados hands the notify's payload, `len` bytes, for this call.
        unsafe { std::slice::from_raw_parts(data as *const u8, len) }
    };
    // A ping changes nothing: it is answered (or not) and leaves the generation alone.
    let answer = if payload == PING {
        match w.answers.as_ref().and_then(|f| f()) {
            Some(a) => a,
            None => return,
        }
    } else if let Some(key) = payload.strip_prefix(CHANGED) {
        w.changed(key);
        String::new()
    } else {
        w.changes.bump();
        String::new()
    };
    if let Ok(a) = api() {
        // SAFETY: acknowledging the notify on the watched object, with a payload alive for
        // the call.
        unsafe {
            (a.rados_notify_ack)(
                w.ioctx,
                w.oid.as_ptr(),
                notify_id,
                cookie,
                answer.as_ptr() as *const c_char,
                answer.len() as c_int,
            )
        };
    }
}

extern "C" fn on_watch_error(arg: *mut c_void, _cookie: u64, err: c_int) {
    // SAFETY: as in on_notify.
    let w = unsafe { &*(arg as *const WatchCtx) };
    // Whatever changed while the watch was broken: make every command reload.
    w.everything_changed();
    w.broken.store(true, Ordering::Release);
    if i64::from(err) == -EBLOCKLISTED {
        w.blocklisted.store(true, Ordering::Release);
    }
    tracing::warn!("watch on {:?} failed ({err}); renewing it", w.oid);
}

/// The state object of one image.
pub(super) struct SharedState {
    ioctx: ffi::IoCtx,
    oid: CString,
    pub watch: Box<WatchCtx>,
    /// Where changes are announced, and how: the pool's presence object with [`CHANGED`]
    /// and the key (an image's state); None: on this object itself, which is watched.
    announce_on: Option<(CString, Vec<u8>)>,
}

// SAFETY: see WatchCtx.
unsafe impl Send for SharedState {}
// SAFETY: see WatchCtx.
unsafe impl Sync for SharedState {}

impl SharedState {
    /// Creates (if needed) `rbdgw.<image id>`; its changes are announced on, and heard
    /// through, the presence object `presence` of its pool, whose watch bumps the generation
    /// of the image through `listeners`.
    pub fn open(
        ioctx: ffi::IoCtx,
        image: ffi::Image,
        presence: &CString,
        listeners: &Listeners,
    ) -> Result<SharedState> {
        let a = api().map_err(BackstoreError::Other)?;
        let mut id = [0u8; 64];
        // SAFETY: the buffer is valid for its length; librbd NUL-terminates the id.
        let rc = unsafe { (a.rbd_get_id)(image, id.as_mut_ptr() as *mut c_char, id.len()) };
        if rc < 0 {
            return Err(ceph_err("rbd_get_id", rc as i64));
        }
        let end = id.iter().position(|b| *b == 0).unwrap_or(id.len());
        let key = format!("rbdgw.{}", String::from_utf8_lossy(&id[..end]));
        let oid = cstr(&key)?;
        let mut s = Self::new(ioctx, oid, None, None);
        s.create()?;
        let mut m = listeners.lock().unwrap_or_else(|e| e.into_inner());
        let v = m.entry(key.clone()).or_default();
        v.retain(|c| c.strong_count() > 0);
        v.push(Arc::downgrade(&s.watch.changes));
        s.announce_on = Some((presence.clone(), [CHANGED, key.as_bytes()].concat()));
        Ok(s)
    }

    /// The object's name, which also names the image in ping answers.
    pub fn key(&self) -> String {
        self.oid.to_string_lossy().into_owned()
    }

    /// Watches the object `oid` (creating it first when `create`); `answers` answers pings
    /// on it, and the changes of the images in `listeners` are heard through it.
    pub fn open_object(
        ioctx: ffi::IoCtx,
        oid: CString,
        create: bool,
        answers: Option<Answers>,
        listeners: Option<Listeners>,
    ) -> Result<SharedState> {
        let s = Self::new(ioctx, oid, answers, listeners);
        if create {
            s.create()?;
        }
        s.watch_now()?;
        Ok(s)
    }

    fn new(
        ioctx: ffi::IoCtx,
        oid: CString,
        answers: Option<Answers>,
        listeners: Option<Listeners>,
    ) -> SharedState {
        let watch = Box::new(WatchCtx {
            changes: Changes::new(),
            ioctx,
            oid: oid.clone(),
            cookie: Mutex::new(None),
            broken: AtomicBool::new(false),
            blocklisted: AtomicBool::new(false),
            answers,
            listeners,
        });
        SharedState {
            ioctx,
            oid,
            watch,
            announce_on: None,
        }
    }

    /// Creates the object if it does not exist.
    fn create(&self) -> Result<()> {
        let a = api().map_err(BackstoreError::Other)?;
        // SAFETY: write op built, run and released here.
        let rc = unsafe {
            let op = (a.rados_create_write_op)();
            (a.rados_write_op_create)(op, 0, std::ptr::null());
            let rc = (a.rados_write_op_operate)(
                op,
                self.ioctx,
                self.oid.as_ptr(),
                std::ptr::null_mut(),
                0,
            );
            (a.rados_release_write_op)(op);
            rc
        };
        if rc < 0 {
            return Err(ceph_err("creating the rbdgw state object", rc as i64));
        }
        Ok(())
    }

    /// Registers the watch (again).
    fn watch_now(&self) -> Result<()> {
        let a = api().map_err(BackstoreError::Other)?;
        let mut slot = self.watch.cookie.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return Ok(());
        }
        let mut cookie = 0u64;
        let arg = &*self.watch as *const WatchCtx as *mut c_void;
        // SAFETY: the watch context is boxed and outlives the watch (unwatched in Drop).
        let rc = unsafe {
            (a.rados_watch3)(
                self.ioctx,
                self.oid.as_ptr(),
                &mut cookie,
                on_notify,
                on_watch_error,
                WATCH_TIMEOUT_S,
                arg,
            )
        };
        if rc < 0 {
            if i64::from(rc) == -EBLOCKLISTED {
                self.watch.blocklisted.store(true, Ordering::Release);
            }
            return Err(ceph_err(&format!("watching {:?}", self.oid), rc as i64));
        }
        *slot = Some(cookie);
        Ok(())
    }

    /// Removes the watch if one is registered; never twice for one registration.
    fn unwatch(&self) {
        let cookie = self
            .watch
            .cookie
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let (Some(cookie), Ok(a)) = (cookie, api()) {
            // SAFETY: unwatching a registration made by watch_now and not yet removed (the
            // cookie was taken out of its slot above); its error is expected when it broke.
            unsafe { (a.rados_unwatch2)(self.ioctx, cookie) };
        }
    }

    /// Ceph refused this connection as blocklisted.
    pub fn blocklisted(&self) -> bool {
        self.watch.blocklisted.load(Ordering::Acquire)
    }

    /// Pings every watcher and returns the answers that came back, or the notify's error
    /// (negative errno; a timeout is not one: somebody not answering is what a ping is for).
    pub async fn ping(&self) -> std::result::Result<Vec<Vec<u8>>, i32> {
        let a = api().map_err(|_| -libc::ENOSYS)?;
        // Asynchronous: a blocking notify waits up to its timeout on a thread of its own.
        // The ioctx outlives the notify: its owner holds it while it waits for the answer.
        let reply = NotifyReply(std::ptr::null_mut(), 0);
        // SAFETY: the reply's pointers stay put in the operation's context until it completes.
        let (rc, reply) = aio::run(reply, |c, reply| unsafe {
            (a.rados_aio_notify)(
                self.ioctx,
                self.oid.as_ptr(),
                c,
                PING.as_ptr() as *const c_char,
                PING.len() as c_int,
                PING_TIMEOUT_MS,
                &mut reply.0,
                &mut reply.1,
            )
        })
        .await?;
        if rc < 0 && rc != -libc::ETIMEDOUT {
            if i64::from(rc) == -EBLOCKLISTED {
                self.watch.blocklisted.store(true, Ordering::Release);
            }
            return Err(rc);
        }
        Ok(reply.payloads())
    }

    /// Whether the watch broke and waits for [`SharedState::renew_watch`].
    pub fn watch_broken(&self) -> bool {
        self.watch.broken.load(Ordering::Acquire)
    }

    /// Replaces a broken watch (blocking); changes made meanwhile are picked up through the
    /// generation bump the break caused.
    pub fn renew_watch(&self) -> Result<()> {
        if !self.watch.broken.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        self.unwatch();
        let r = self.watch_now();
        if r.is_err() {
            self.watch.broken.store(true, Ordering::Release);
        } else {
            self.watch.everything_changed();
            tracing::info!("renewed the watch on {:?}", self.oid);
        }
        r
    }

    /// Reads `key` (None: absent or empty); `keep` holds the connection the object lives on
    /// until librados is done, even when the caller stops waiting.
    pub async fn get(&self, key: &str, keep: KeepAlive) -> Result<Option<Vec<u8>>> {
        let a = api().map_err(BackstoreError::Other)?;
        let name = cstr(key)?;
        let buf = vec![0u8; 64 * 1024];
        // SAFETY: librados copies the names at submission and fills the buffer, which stays
        // put in the operation's context, by its completion.
        let (rc, (mut buf, _)) = aio::run((buf, keep), |c, (buf, _)| unsafe {
            (a.rados_aio_getxattr)(
                self.ioctx,
                self.oid.as_ptr(),
                c,
                name.as_ptr(),
                buf.as_mut_ptr() as *mut c_char,
                buf.len(),
            )
        })
        .await
        .map_err(|rc| ceph_err(&format!("reading {key}"), rc as i64))?;
        if rc == -libc::ENODATA || rc == -libc::ENOENT {
            return Ok(None);
        }
        if rc < 0 {
            return Err(ceph_err(&format!("reading {key}"), rc as i64));
        }
        buf.truncate(rc as usize);
        // An empty value is an absent one (a compare-and-set from "absent" compares with "").
        Ok((!buf.is_empty()).then_some(buf))
    }

    /// Writes `value` if the key holds `expected` (`None`: absent or empty), or whatever it
    /// holds when `compare` is false; then announces it and returns once every watcher has
    /// seen it. `keep` as for [`SharedState::get`].
    pub async fn compare_and_set(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        compare: bool,
        publish: Publish,
        keep: KeepAlive,
    ) -> Result<bool> {
        let a = api().map_err(BackstoreError::Other)?;
        let name = cstr(key)?;
        let exp = expected.unwrap_or(b"");
        // SAFETY: librados copies the name and values into the operation as it is built.
        let op = unsafe {
            let op = WriteOp((a.rados_create_write_op)());
            if compare {
                (a.rados_write_op_cmpxattr)(
                    op.0,
                    name.as_ptr(),
                    ffi::CMPXATTR_OP_EQ,
                    exp.as_ptr() as *const c_char,
                    exp.len(),
                );
            }
            (a.rados_write_op_setxattr)(
                op.0,
                name.as_ptr(),
                value.as_ptr() as *const c_char,
                value.len(),
            );
            op
        };
        // SAFETY: the operation lives in the context until it completes.
        let (rc, _) = aio::run((op, keep.clone()), |c, (op, _)| unsafe {
            (a.rados_aio_write_op_operate)(
                op.0,
                self.ioctx,
                c,
                self.oid.as_ptr(),
                std::ptr::null_mut(),
                0,
            )
        })
        .await
        .map_err(|rc| ceph_err(&format!("updating {key}"), rc as i64))?;
        if rc == -libc::ECANCELED {
            return Ok(false);
        }
        if rc < 0 {
            return Err(ceph_err(&format!("updating {key}"), rc as i64));
        }
        self.watch.changes.bump();
        let seen = self.announce(key, keep);
        if publish == Publish::SeenByAll {
            seen.await;
        } else {
            tokio::spawn(seen);
        }
        Ok(true)
    }

    /// Tells every gateway that `key` changed: a notify on the pool's presence object (or on
    /// this object, for one that is watched itself), sent at once; the future resolves once
    /// every watcher has seen it, or after [`NOTIFY_TIMEOUT_MS`].
    fn announce(&self, key: &str, keep: KeepAlive) -> impl Future<Output = ()> + Send + 'static {
        let key = key.to_string();
        let started = api().map_err(|_| -libc::ENOSYS).and_then(|a| {
            let (oid, payload) = match &self.announce_on {
                Some((oid, payload)) => (oid, payload.as_slice()),
                None => (&self.oid, &[][..]),
            };
            let reply = NotifyReply(std::ptr::null_mut(), 0);
            // SAFETY: librados copies the payload at submission; the reply's pointers stay put
            // in the operation's context until it completes.
            aio::start((reply, keep), |c, (reply, _)| unsafe {
                (a.rados_aio_notify)(
                    self.ioctx,
                    oid.as_ptr(),
                    c,
                    payload.as_ptr() as *const c_char,
                    payload.len() as c_int,
                    NOTIFY_TIMEOUT_MS,
                    &mut reply.0,
                    &mut reply.1,
                )
            })
        });
        async move {
            let rc = match started {
                Ok(done) => done.await.map_or(-libc::ECANCELED, |(rc, _)| rc),
                Err(rc) => rc,
            };
            if rc < 0 {
                tracing::warn!("notifying the watchers of {key} failed: {rc}");
            }
        }
    }
}

/// What keeps an object's I/O context open while an operation on it is in flight (the
/// handle of the connection it belongs to).
pub(super) type KeepAlive = Arc<dyn std::any::Any + Send + Sync>;

/// A RADOS write operation, released once.
struct WriteOp(ffi::WriteOp);

// SAFETY: a librados object used by one operation at a time.
unsafe impl Send for WriteOp {}

impl Drop for WriteOp {
    fn drop(&mut self) {
        if let Ok(a) = api() {
            // SAFETY: created by rados_create_write_op, released once.
            unsafe { (a.rados_release_write_op)(self.0) };
        }
    }
}

impl Drop for SharedState {
    fn drop(&mut self) {
        // Before the context is freed; and after it, no callback can come (unwatch waits
        // for the callbacks in progress).
        self.unwatch();
    }
}

/// An answer to [`PING`] for one image: `"<tag> <holds the lock: 0|1>"`, then `" starting"`
/// while the gateway starts the LU or `" draining"` while it is drained (an earlier version
/// says neither: it counts as serving).
pub(super) fn parse_answer(p: &[u8]) -> Option<Member> {
    let s = std::str::from_utf8(p).ok()?;
    let (tag, rest) = s.split_once(' ')?;
    let (held, word) = rest.split_once(' ').unwrap_or((rest, ""));
    let standing = Standing::from_word(word)?;
    Some(Member {
        tag: tag.parse().ok().filter(|t| *t != 0)?,
        holds_lock: held == "1",
        starting: standing == Standing::Starting,
        draining: standing == Standing::Draining,
    })
}

/// How long a change waits for every watcher to acknowledge it. A live gateway answers in
/// milliseconds; a hung or cut-off one is what failover is about, and every shared-state update
/// made during a takeover waits this long for it (the change still reaches a late watcher).
const NOTIFY_TIMEOUT_MS: u64 = 2000;

/// Tells every watcher of `oid` that `what` changed (`payload` says which image, on a
/// presence object); returns once they have seen it (or after [`NOTIFY_TIMEOUT_MS`]).
pub(super) fn notify(ioctx: ffi::IoCtx, oid: &CString, payload: &[u8], what: &str) {
    let Ok(a) = api() else { return };
    let mut reply: *mut c_char = std::ptr::null_mut();
    let mut reply_len = 0usize;
    // SAFETY: notify with a payload alive for the call; the reply buffer is freed as
    // librados asks.
    unsafe {
        let rc = (a.rados_notify2)(
            ioctx,
            oid.as_ptr(),
            payload.as_ptr() as *const c_char,
            payload.len() as c_int,
            NOTIFY_TIMEOUT_MS,
            &mut reply,
            &mut reply_len,
        );
        if !reply.is_null() {
            (a.rados_buffer_free)(reply);
        }
        if rc < 0 {
            tracing::warn!("notifying the watchers of {what} failed: {rc}");
        }
    }
}

/// A notify's reply buffer, freed as librados asks.
struct NotifyReply(*mut c_char, usize);

// SAFETY: a plain heap buffer of librados', owned by this value alone.
unsafe impl Send for NotifyReply {}

impl NotifyReply {
    /// The acks' payloads (empty ones left out).
    fn payloads(&self) -> Vec<Vec<u8>> {
        let mut payloads = Vec::new();
        let Ok(a) = api() else { return payloads };
        if self.0.is_null() {
            return payloads;
        }
        // SAFETY: the reply of a completed notify, decoded and freed as librados asks; the
        // acks' payloads are copied out before they are freed.
        unsafe {
            let mut acks: *mut ffi::NotifyAck = std::ptr::null_mut();
            let mut n_acks = 0usize;
            let mut timeouts: *mut c_void = std::ptr::null_mut();
            let mut n_timeouts = 0usize;
            if (a.rados_decode_notify_response)(
                self.0,
                self.1,
                &mut acks,
                &mut n_acks,
                &mut timeouts,
                &mut n_timeouts,
            ) == 0
            {
                for i in 0..n_acks {
                    let ack = &*acks.add(i);
                    if ack.payload.is_null() || ack.payload_len == 0 {
                        continue;
                    }
                    let p = std::slice::from_raw_parts(
                        ack.payload as *const u8,
                        ack.payload_len as usize,
                    );
                    payloads.push(p.to_vec());
                }
                (a.rados_free_notify_response)(acks, n_acks, timeouts);
            }
        }
        payloads
    }
}

impl Drop for NotifyReply {
    fn drop(&mut self) {
        if let (false, Ok(a)) = (self.0.is_null(), api()) {
            // SAFETY: librados' reply buffer, freed once.
            unsafe { (a.rados_buffer_free)(self.0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_answers_round_trip() {
        let p = Presence::default();
        assert_eq!(p.answer(), None, "not joined: no answer");
        p.beat(3, Standing::Starting);
        let a = p.answer().unwrap();
        assert_eq!(
            parse_answer(a.as_bytes()),
            Some(Member {
                tag: 3,
                holds_lock: false,
                starting: true,
                draining: false,
            })
        );
        p.beat(3, Standing::Serving);
        assert!(
            !parse_answer(p.answer().unwrap().as_bytes())
                .unwrap()
                .starting
        );
        // What an earlier version answers: serving.
        assert_eq!(
            parse_answer(b"2 1"),
            Some(Member {
                tag: 2,
                holds_lock: true,
                starting: false,
                draining: false,
            })
        );
        p.lock_held.store(true, Ordering::Release);
        assert!(
            parse_answer(p.answer().unwrap().as_bytes())
                .unwrap()
                .holds_lock
        );
        let beat = p.beat_ms.load(Ordering::Acquire);
        assert!(p.answer_at(beat + BEAT_STALE_MS - 1).is_some());
        assert_eq!(
            p.answer_at(beat + BEAT_STALE_MS),
            None,
            "a stalled control loop does not answer"
        );
        for bad in [&b""[..], b"x 1", b"0 1", b"7", b"2 1 later"] {
            assert_eq!(parse_answer(bad), None, "{bad:?}");
        }
    }
}
