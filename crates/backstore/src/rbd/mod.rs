//! The `rbd` engine: an RBD image through librbd's asynchronous API, completions delivered
//! into tokio in batches through a completion port (port.rs; no thread per I/O). Every image
//! feature stays on: exclusive-lock, object-map, fast-diff, deep-flatten.
//!
//! Buffers belong to the completion context, not to the awaiting future: if a command is
//! aborted while librbd still fills its read buffer, the buffer lives until the callback.

mod aio;
mod client;
mod ffi;
mod liveness;
mod objects;
mod port;
mod predecessor;
mod state;
mod workers;

pub use client::open_connections;
pub use objects::{list_pools, ObjectWatch, RadosPool, Xattrs};
pub use workers::wait_for_closes;

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use crate::{
    check_range, BackstoreError, BlockDevice, Capabilities, DataOutBuffer, Extent, Member, Publish,
    Result,
};
use ffi::{api, Completion};

/// Where an image is and how to reach its cluster, like the `rbd` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdConfig {
    /// ceph.conf (default /etc/ceph/ceph.conf).
    pub conf: String,
    /// The client id (`admin` for client.admin); its keyring comes from ceph.conf.
    pub id: Option<String>,
    pub pool: String,
    pub namespace: Option<String>,
    pub image: String,
    /// Create the image with this many bytes when it does not exist.
    pub create_size: Option<u64>,
    /// A RADOS client of its own instead of the one every image of the process shares: for
    /// tests that play two gateways in one process (a client cannot fence itself).
    pub own_client: bool,
    /// The gateway's name (its host in the config): its client's address is recorded under
    /// it in the pool, and the gateway's next process fences that client (predecessor.rs).
    pub gateway: Option<String>,
}

/// An open image and what it was opened with, closed in order by [`OpenImage::close`].
struct OpenImage {
    /// The shared client; shut down after this handle's image and I/O context close (and
    /// those of every other image on it).
    conn: Arc<client::Connection>,
    ioctx: ffi::IoCtx,
    image: ffi::Image,
    /// Dropped first, before the image closes.
    state: Option<state::SharedState>,
    /// Where this image answers and asks who is alive (its pool's presence on `conn`).
    liveness: Option<Arc<liveness::PoolLiveness>>,
    /// Set by librbd when the image's header changed (a resize): the monitor then reads the
    /// size, instead of asking a thousand images twice a second. Boxed: librbd holds its
    /// address until the update watch is removed (in close).
    header_changed: Box<AtomicBool>,
    update_watch: Option<u64>,
}

/// An open image, closed on a closing thread when the last reference goes (workers.rs):
/// closing waits for the cluster, without end when it cannot be reached.
struct Handle(std::mem::ManuallyDrop<OpenImage>);

impl std::ops::Deref for Handle {
    type Target = OpenImage;
    fn deref(&self) -> &OpenImage {
        &self.0
    }
}

impl std::ops::DerefMut for Handle {
    fn deref_mut(&mut self) -> &mut OpenImage {
        &mut self.0
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: taken once, here; the handle is not used after.
        let open = unsafe { std::mem::ManuallyDrop::take(&mut self.0) };
        workers::CLOSING.run(move || open.close());
    }
}

extern "C" fn on_header_update(arg: *mut c_void) {
    // SAFETY: `arg` is the Handle's boxed flag, alive until the update watch is removed.
    let changed = unsafe { &*(arg as *const AtomicBool) };
    changed.store(true, Ordering::Release);
}

// SAFETY: librados and librbd handles are thread-safe (the C API is used from many threads).
unsafe impl Send for OpenImage {}
// SAFETY: as above.
unsafe impl Sync for OpenImage {}

impl OpenImage {
    fn close(mut self) {
        let Ok(a) = api() else { return };
        // Pings are no longer answered for this image; the watch goes before the ioctx it
        // lives on.
        if let (Some(l), Some(s)) = (&self.liveness, &self.state) {
            l.leave(&s.key());
        }
        self.state = None;
        // SAFETY: closing handles we opened, once, in reverse order (`conn` is dropped after
        // this); removing the update watch waits for its callback in progress, so the flag
        // outlives every call.
        unsafe {
            if let Some(w) = self.update_watch.take() {
                (a.rbd_update_unwatch)(self.image, w);
            }
            if !self.image.is_null() {
                (a.rbd_close)(self.image);
            }
            if !self.ioctx.is_null() {
                (a.rados_ioctx_destroy)(self.ioctx);
            }
        }
    }
}

/// `RBD_FEATURE_EXCLUSIVE_LOCK` (librbd/features.h).
const FEATURE_EXCLUSIVE_LOCK: u64 = 1 << 2;
/// What an OSD answers a blocklisted client (`EBLOCKLISTED` is `ESHUTDOWN` on Linux).
const EBLOCKLISTED: i64 = libc::ESHUTDOWN as i64;
/// How often the monitor thread looks at the image (reconnects when fenced, reads the size
/// when its header changed)…
const MONITOR_EVERY: std::time::Duration = std::time::Duration::from_millis(500);
/// …and reads the size anyway, every this many looks (30 s).
const SIZE_CHECK_EVERY: u64 = 60;
/// How long a replaced connection stays open for the calls still running on it (a
/// blocklisted client's calls fail within moments; closing waits for any still running).
const RETIRE_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

impl Handle {
    /// Opens the image on the shared client (`fenced_on`: the connection this image found
    /// blocklisted, replaced by a new client identity, which the blocklist entry of the
    /// earlier one does not cover).
    fn open(
        cfg: &RbdConfig,
        name: &str,
        presence: &Arc<state::Presence>,
        fenced_on: Option<&Arc<client::Connection>>,
    ) -> Result<Handle> {
        let a = api().map_err(BackstoreError::Other)?;
        let image = cstr(&cfg.image)?;
        let conn = client::connection(&cfg.conf, cfg.id.as_deref(), cfg.own_client, fenced_on)?;
        let ioctx = conn.ioctx(&cfg.pool, cfg.namespace.as_deref())?;
        let mut h = Handle(std::mem::ManuallyDrop::new(OpenImage {
            conn,
            ioctx,
            image: std::ptr::null_mut(),
            state: None,
            liveness: None,
            header_changed: Box::new(AtomicBool::new(true)),
            update_watch: None,
        }));
        // SAFETY: C calls with valid NUL-terminated strings and out-pointers; `h` closes
        // whatever was opened if a later step fails.
        unsafe {
            let mut rc = (a.rbd_open)(h.ioctx, image.as_ptr(), &mut h.image, std::ptr::null());
            if let (true, Some(size)) = (rc == -libc::ENOENT, cfg.create_size) {
                create_image(a, h.ioctx, &image, size, name)?;
                rc = (a.rbd_open)(h.ioctx, image.as_ptr(), &mut h.image, std::ptr::null());
            }
            if rc < 0 {
                return Err(ceph_err(&format!("opening image {name}"), rc as i64));
            }
            ensure_exclusive_lock(a, h.image, name)?;
            let mut w = 0u64;
            let flag = &*h.header_changed as *const AtomicBool as *mut c_void;
            let rc = (a.rbd_update_watch)(h.image, &mut w, on_header_update, flag);
            if rc < 0 {
                return Err(ceph_err(
                    &format!("watching the header of {name}"),
                    rc as i64,
                ));
            }
            h.update_watch = Some(w);
            let liveness = liveness::PoolLiveness::of(
                &h.conn,
                &cfg.pool,
                cfg.namespace.as_deref(),
                cfg.gateway.as_deref(),
            )?;
            let state = liveness.open_state(h.ioctx, h.image)?;
            liveness.join(&state.key(), presence);
            h.state = Some(state);
            h.liveness = Some(liveness);
        }
        Ok(h)
    }

    fn state(&self) -> Result<&state::SharedState> {
        self.state
            .as_ref()
            .ok_or_else(|| BackstoreError::Other("image state is not open".into()))
    }

    /// Ceph refused this handle's connection, as its pool's presence watch or ping saw.
    fn blocklisted(&self) -> bool {
        self.liveness.as_ref().is_some_and(|l| l.blocklisted())
    }

    /// The image's size as librbd knows it now (librbd refreshes its header when another
    /// client resized the image and told the watchers).
    fn size(&self) -> std::result::Result<u64, i64> {
        let a = api().map_err(|_| -(libc::ENOSYS as i64))?;
        let mut size = 0u64;
        // SAFETY: plain call on our image handle.
        let rc = unsafe { (a.rbd_get_size)(self.image, &mut size) };
        if rc < 0 {
            return Err(rc as i64);
        }
        Ok(size)
    }
}

/// Creates a cluster handle and connects, like the `rbd` command line: ceph.conf at
/// `conf_path`, client `id` (default admin) with its keyring.
///
/// # Safety
/// Plain librados calls; the caller owns (and must shut down) what is returned.
unsafe fn connect_cluster(conf_path: &str, id: Option<&str>) -> Result<ffi::RadosT> {
    let a = api().map_err(BackstoreError::Other)?;
    let id = id.map(cstr).transpose()?;
    let conf = cstr(conf_path)?;
    let mut cluster: ffi::RadosT = std::ptr::null_mut();
    let rc = (a.rados_create)(
        &mut cluster,
        id.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
    );
    if rc < 0 {
        return Err(ceph_err("rados_create", rc as i64));
    }
    let fail = |what: String, rc: c_int| {
        (a.rados_shutdown)(cluster);
        Err(ceph_err(&what, rc as i64))
    };
    let rc = (a.rados_conf_read_file)(cluster, conf.as_ptr());
    if rc < 0 {
        return fail(format!("reading {conf_path}"), rc);
    }
    // No client-side write-back cache: a write is acknowledged only once the OSDs hold it.
    // With librbd's cache on, a write acknowledged from the cache of a gateway that is then
    // fenced would be lost on failover — the initiator sees one device across paths and
    // does not expect a path change to drop acknowledged writes.
    let rc = (a.rados_conf_set)(cluster, c"rbd_cache".as_ptr(), c"false".as_ptr());
    if rc < 0 {
        return fail("setting rbd_cache=false".into(), rc);
    }
    // Watches are pinged every tick: well inside the short watch timeout of the shared state
    // (state.rs), so a live gateway's watch never lapses.
    let rc = (a.rados_conf_set)(cluster, c"objecter_tick_interval".as_ptr(), c"2".as_ptr());
    if rc < 0 {
        return fail("setting objecter_tick_interval".into(), rc);
    }
    let rc = (a.rados_connect)(cluster);
    if rc < 0 {
        return fail("connecting to the cluster".into(), rc);
    }
    Ok(cluster)
}

/// The owners of the image's exclusive lock and the lock's mode (none: not locked).
///
/// # Safety
/// `image` is an open image.
unsafe fn lock_owners(a: &ffi::Api, image: ffi::Image) -> Result<(c_int, Vec<CString>)> {
    let mut list: [*mut c_char; 8] = [std::ptr::null_mut(); 8];
    let mut count = list.len();
    let mut mode: c_int = 0;
    let rc = (a.rbd_lock_get_owners)(image, &mut mode, list.as_mut_ptr(), &mut count);
    if rc == -libc::ENOENT {
        return Ok((mode, Vec::new()));
    }
    if rc < 0 {
        return Err(ceph_err("rbd_lock_get_owners", rc as i64));
    }
    let owners = list[..count]
        .iter()
        .map(|p| std::ffi::CStr::from_ptr(*p).to_owned())
        .collect();
    (a.rbd_lock_get_owners_cleanup)(list.as_mut_ptr(), count);
    Ok((mode, owners))
}

/// Creates a missing image of `size` bytes with the cluster's default features (the
/// config's optional auto-create).
///
/// # Safety
/// `ioctx` is an open pool context.
unsafe fn create_image(
    a: &ffi::Api,
    ioctx: ffi::IoCtx,
    image: &CString,
    size: u64,
    name: &str,
) -> Result<()> {
    let mut order: c_int = 0;
    let rc = (a.rbd_create)(ioctx, image.as_ptr(), size, &mut order);
    // Another gateway may have created it at the same moment.
    if rc < 0 && rc != -libc::EEXIST {
        return Err(ceph_err(&format!("creating image {name}"), rc as i64));
    }
    if rc == 0 {
        tracing::info!(image = name, size, "created the missing image");
    }
    Ok(())
}

/// Failover is safe only with the exclusive lock: an image created without it (as the seed
/// had to) gets it turned on, which librbd allows on a live image.
///
/// # Safety
/// `image` is an open image.
unsafe fn ensure_exclusive_lock(a: &ffi::Api, image: ffi::Image, name: &str) -> Result<()> {
    let mut features = 0u64;
    let rc = (a.rbd_get_features)(image, &mut features);
    if rc < 0 {
        return Err(ceph_err("rbd_get_features", rc as i64));
    }
    if features & FEATURE_EXCLUSIVE_LOCK == 0 {
        let rc = (a.rbd_update_features)(image, FEATURE_EXCLUSIVE_LOCK, 1);
        if rc < 0 {
            return Err(ceph_err(
                &format!("image {name} lacks exclusive-lock, and enabling it failed"),
                rc as i64,
            ));
        }
        tracing::warn!(
            image = name,
            "enabled the exclusive-lock feature: failover needs it to fence the old owner"
        );
    }
    Ok(())
}

/// The state shared by every clone of an [`RbdDevice`].
struct Inner {
    cfg: RbdConfig,
    name: String,
    /// The current connection; replaced after this client was blocklisted.
    h: RwLock<Arc<Handle>>,
    size: AtomicU64,
    /// Ceph refused this client as blocklisted (another gateway broke our lock): nothing
    /// goes to the image until the monitor thread has reconnected.
    fenced: AtomicBool,
    /// What pings are answered with, whether this connection holds the exclusive lock (taken
    /// with `rbd_lock_acquire`) among it.
    presence: Arc<state::Presence>,
    /// Reconnections so far; part of the metadata generation, whose counter restarts with
    /// each connection.
    epoch: AtomicU64,
    /// Blocklisted connections replaced by a reconnection, with when: calls still running on
    /// one fail on their own, and closing it at once could wait for them, so the monitor
    /// closes it [`RETIRE_AFTER`] later, or the device's drop does. (A thread that slept
    /// with it instead left a live librados client at process exit; librados' teardown with
    /// a live client is the likely cause of a SIGSEGV seen once at the exit of the rbd_live
    /// test binary, after the test had passed.)
    retired: std::sync::Mutex<Vec<(std::time::Instant, Arc<Handle>)>>,
    /// The monitor's looks at this image so far.
    monitor_passes: AtomicU64,
    /// A reopening thread is reconnecting this image.
    reopening: AtomicBool,
}

/// An open RBD image.
#[derive(Clone)]
pub struct RbdDevice {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RbdDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RbdDevice({}, {} bytes)", self.inner.name, self.size())
    }
}

impl Inner {
    fn handle(&self) -> Arc<Handle> {
        self.h.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Called when Ceph answered EBLOCKLISTED: this client is fenced for good.
    fn fenced_by_ceph(&self) {
        self.presence.lock_held.store(false, Ordering::Release);
        if !self.fenced.swap(true, Ordering::AcqRel) {
            tracing::error!(
                image = self.name,
                "Ceph refuses this gateway's client (blocklisted: another gateway broke its \
                 lock after it did not answer); the LUN answers NOT READY until reconnected"
            );
        }
    }

    /// One look at the image: size changes, and reconnection when fenced.
    fn monitor(self: &Arc<Self>) {
        let due: Vec<Arc<Handle>> = {
            let mut r = self.retired.lock().unwrap_or_else(|e| e.into_inner());
            let (due, keep) = r.drain(..).partition(|(t, _)| t.elapsed() >= RETIRE_AFTER);
            *r = keep;
            due.into_iter().map(|(_, h)| h).collect()
        };
        drop(due); // closed outside the lock
        if !self.fenced.load(Ordering::Acquire) && self.handle().blocklisted() {
            // Seen by the watch (or a ping) before any I/O: a gateway cut off while it was
            // fenced learns it as soon as it reaches the OSDs again.
            self.fenced_by_ceph();
        }
        if self.fenced.load(Ordering::Acquire) {
            // On a reopening thread, a few images at a time (workers.rs): one after another
            // here, a thousand fenced LUNs took minutes to come back, and an image whose
            // open hangs held up every other.
            if !self.reopening.swap(true, Ordering::AcqRel) {
                let me = self.clone();
                workers::REOPENING.run(move || {
                    me.reopen();
                    me.reopening.store(false, Ordering::Release);
                });
            }
            return;
        }
        let h = self.handle();
        if let Some(Err(e)) = h.liveness.as_ref().map(|l| l.renew_watch()) {
            tracing::warn!(image = self.name, "renewing the presence watch failed: {e}");
        }
        // The size when librbd saw the header change, and now and then in case a notice was
        // missed.
        let passes = self.monitor_passes.fetch_add(1, Ordering::Relaxed);
        if !h.header_changed.swap(false, Ordering::AcqRel)
            && !passes.is_multiple_of(SIZE_CHECK_EVERY)
        {
            return;
        }
        match h.size() {
            Ok(size) => {
                let old = self.size.swap(size, Ordering::AcqRel);
                if old != size {
                    tracing::info!(image = self.name, old, new = size, "the image was resized");
                }
            }
            Err(rc) if rc == -EBLOCKLISTED => self.fenced_by_ceph(),
            Err(_) => {}
        }
    }

    /// Reconnects a fenced image as a new client (blocking).
    fn reopen(&self) {
        let fenced_on = self.handle().conn.clone();
        match Handle::open(&self.cfg, &self.name, &self.presence, Some(&fenced_on)) {
            Ok(h) => {
                let old = std::mem::replace(
                    &mut *self.h.write().unwrap_or_else(|e| e.into_inner()),
                    Arc::new(h),
                );
                self.epoch.fetch_add(1, Ordering::AcqRel);
                self.fenced.store(false, Ordering::Release);
                tracing::info!(
                    image = self.name,
                    "reconnected to the cluster as a new client; the LUN serves again \
                     (without the write lock until it takes it over)"
                );
                self.retired
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((std::time::Instant::now(), old));
            }
            Err(e) => tracing::warn!(image = self.name, "reconnecting failed: {e}"),
        }
    }
}

/// Adds an image to those one thread looks at every [`MONITOR_EVERY`] (size changes,
/// reconnection after a fence): a thread per image made a thousand LUNs a thousand threads.
fn watch_over(inner: &Arc<Inner>) -> Result<()> {
    static IMAGES: std::sync::Mutex<Vec<std::sync::Weak<Inner>>> =
        std::sync::Mutex::new(Vec::new());
    static THREAD: std::sync::OnceLock<std::result::Result<(), String>> =
        std::sync::OnceLock::new();
    let images = || IMAGES.lock().unwrap_or_else(|e| e.into_inner());
    images().push(Arc::downgrade(inner));
    THREAD
        .get_or_init(|| {
            std::thread::Builder::new()
                .name("rbd-monitor".into())
                .spawn(move || loop {
                    std::thread::sleep(MONITOR_EVERY);
                    let open: Vec<Arc<Inner>> = {
                        let mut v = images();
                        v.retain(|w| w.strong_count() > 0);
                        v.iter().filter_map(std::sync::Weak::upgrade).collect()
                    };
                    for i in open {
                        i.monitor();
                    }
                })
                .map(drop)
                .map_err(|e| format!("cannot start the image monitor thread: {e}"))
        })
        .clone()
        .map_err(BackstoreError::Other)
}

/// The walk of rbd_diff_iterate2 for [`BlockDevice::allocation`]: the state of the range's
/// first extent, and how far it goes.
#[derive(Debug)]
struct AllocationScan {
    start: u64,
    end: u64,
    /// The end of the mapped run that begins at `start`, if one does.
    mapped_to: Option<u64>,
    /// Where the first mapped extent begins, if after `start` (the range begins unmapped).
    unmapped_to: Option<u64>,
}

impl AllocationScan {
    fn new(start: u64, end: u64) -> Self {
        AllocationScan {
            start,
            end,
            mapped_to: None,
            unmapped_to: None,
        }
    }

    /// Takes one allocated extent (in increasing order); false: the first extent is known.
    fn take(&mut self, off: u64, len: u64) -> bool {
        let (s, e) = (off.max(self.start), (off + len).min(self.end));
        if e <= s {
            return true;
        }
        match self.mapped_to {
            None if s > self.start => {
                self.unmapped_to = Some(s);
                false
            }
            None => {
                self.mapped_to = Some(e);
                true
            }
            Some(m) if s <= m => {
                self.mapped_to = Some(m.max(e));
                true
            }
            Some(_) => false,
        }
    }

    fn first_extent(&self) -> Extent {
        let (end, mapped) = match (self.mapped_to, self.unmapped_to) {
            (Some(m), _) => (m, true),
            (None, Some(u)) => (u, false),
            (None, None) => (self.end, false),
        };
        Extent {
            offset: self.start,
            len: end - self.start,
            mapped,
        }
    }
}

extern "C" fn allocation_cb(off: u64, len: usize, exists: c_int, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the AllocationScan that `allocation` passed, alive during the walk.
    let scan = unsafe { &mut *(arg as *mut AllocationScan) };
    if exists == 0 || scan.take(off, len as u64) {
        0
    } else {
        -libc::ECANCELED
    }
}

/// Runs a blocking librados call off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackstoreError::Other(e.to_string()))?
}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| BackstoreError::Other(format!("{s:?} contains a NUL byte")))
}

fn ceph_err(what: &str, rc: i64) -> BackstoreError {
    BackstoreError::Os {
        what: what.to_string(),
        errno: (-rc) as i32,
    }
}

/// What a completion hands back.
struct Done {
    ret: isize,
    buf: Option<BytesMut>,
    mismatch: u64,
}

/// Owned by librbd from submission to callback.
struct Ctx {
    tx: oneshot::Sender<Done>,
    buf: Option<BytesMut>,
    keep: Vec<Bytes>,
    mismatch: u64,
}

/// A completion on its way from librbd's thread to its waiter.
struct Finished {
    ret: isize,
    ctx: Box<Ctx>,
}

/// Every image's completions, handed to the runtime in batches.
static COMPLETIONS: port::Port<Finished> = port::Port::new(deliver);

fn deliver(f: Finished) {
    let Ctx {
        tx, buf, mismatch, ..
    } = *f.ctx;
    let _ = tx.send(Done {
        ret: f.ret,
        buf,
        mismatch,
    });
}

extern "C" fn on_complete(c: Completion, arg: *mut c_void) {
    let Ok(a) = api() else { return };
    // SAFETY: `c` is the completion librbd calls us for; `arg` is the Box<Ctx> leaked at
    // submission, reclaimed exactly once here.
    let (ret, ctx) = unsafe {
        let ret = (a.rbd_aio_get_return_value)(c);
        (a.rbd_aio_release)(c);
        (ret, Box::from_raw(arg as *mut Ctx))
    };
    COMPLETIONS.complete(Finished { ret, ctx });
}

impl RbdDevice {
    /// Opens the image on the gateway's shared client, connecting it if need be (blocking:
    /// call from a blocking context or at start-up). The monitor thread of every image
    /// follows its size and reconnects it after a fence.
    pub fn open(cfg: &RbdConfig) -> Result<RbdDevice> {
        let name = format!(
            "{}/{}{}",
            cfg.pool,
            cfg.namespace
                .as_ref()
                .map_or(String::new(), |n| format!("{n}/")),
            cfg.image
        );
        let presence = Arc::new(state::Presence::default());
        let h = Handle::open(cfg, &name, &presence, None)?;
        let size = h.size().map_err(|rc| ceph_err("rbd_get_size", rc))?;
        let inner = Arc::new(Inner {
            cfg: cfg.clone(),
            name,
            h: RwLock::new(Arc::new(h)),
            size: AtomicU64::new(size),
            fenced: AtomicBool::new(false),
            presence,
            epoch: AtomicU64::new(0),
            retired: std::sync::Mutex::new(Vec::new()),
            monitor_passes: AtomicU64::new(0),
            reopening: AtomicBool::new(false),
        });
        watch_over(&inner)?;
        Ok(RbdDevice { inner })
    }

    /// Whether Ceph fenced this gateway's client and it has not reconnected yet.
    pub fn is_fenced(&self) -> bool {
        self.inner.fenced.load(Ordering::Acquire)
    }

    /// Refuses what would change the image unless this connection holds the exclusive lock:
    /// a gateway never writes on a lock it lost (SBC-3 writes answer NOT READY instead and
    /// the initiator retries on the owner's path).
    fn check_writable(&self) -> Result<()> {
        if self.inner.fenced.load(Ordering::Acquire)
            || !self.inner.presence.lock_held.load(Ordering::Acquire)
        {
            return Err(BackstoreError::NotOwner);
        }
        Ok(())
    }

    fn check_readable(&self) -> Result<()> {
        if self.inner.fenced.load(Ordering::Acquire) {
            return Err(BackstoreError::NotOwner);
        }
        Ok(())
    }

    /// Submits one aio call built by `submit` (from the buffers in the context) and awaits
    /// its completion.
    async fn aio(
        &self,
        what: &str,
        buf: Option<BytesMut>,
        keep: Vec<Bytes>,
        submit: impl FnOnce(ffi::Image, Completion, &mut Ctx) -> isize,
    ) -> Result<Done> {
        let rx = self.start(what, buf, keep, submit)?;
        rx.await
            .map_err(|_| BackstoreError::Other(format!("{what}: completion lost")))
    }

    fn start(
        &self,
        what: &str,
        buf: Option<BytesMut>,
        keep: Vec<Bytes>,
        submit: impl FnOnce(ffi::Image, Completion, &mut Ctx) -> isize,
    ) -> Result<oneshot::Receiver<Done>> {
        let a = api().map_err(BackstoreError::Other)?;
        let h = self.inner.handle();
        COMPLETIONS.ensure_polled();
        let (tx, rx) = oneshot::channel();
        let ctx = Box::into_raw(Box::new(Ctx {
            tx,
            buf,
            keep,
            mismatch: 0,
        }));
        let mut c: Completion = std::ptr::null_mut();
        // SAFETY: the context pointer is handed to librbd with the completion; on a
        // submission failure no callback will come and we reclaim it here. After a successful
        // submission the context is librbd's until the callback.
        unsafe {
            let rc = (a.rbd_aio_create_completion)(ctx as *mut c_void, on_complete, &mut c);
            if rc < 0 {
                drop(Box::from_raw(ctx));
                return Err(ceph_err(what, rc as i64));
            }
            let rc = submit(h.image, c, &mut *ctx);
            if rc < 0 {
                (a.rbd_aio_release)(c);
                drop(Box::from_raw(ctx));
                return Err(self.error(what, rc as i64));
            }
        }
        Ok(rx)
    }

    /// Turns a librbd return code into an error; a blocklisted client is fenced.
    fn error(&self, what: &str, rc: i64) -> BackstoreError {
        if rc == -EBLOCKLISTED {
            self.inner.fenced_by_ceph();
            return BackstoreError::NotOwner;
        }
        ceph_err(what, rc)
    }

    fn check(&self, what: &str, d: &Done) -> Result<()> {
        if d.ret < 0 {
            return Err(self.error(what, d.ret as i64));
        }
        Ok(())
    }

    /// The handle of the current connection, whose state object an operation is about to
    /// use (and keeps open until librados is done with it).
    fn state_handle(&self) -> Result<Arc<Handle>> {
        self.check_readable()?;
        Ok(self.inner.handle())
    }

    /// A state operation's outcome: EBLOCKLISTED means this client is fenced.
    fn state_outcome<T>(&self, r: Result<T>) -> Result<T> {
        r.inspect_err(|e| {
            if e.raw_os_error() == Some(EBLOCKLISTED as i32) {
                self.inner.fenced_by_ceph();
            }
        })
    }
}

impl BlockDevice for RbdDevice {
    fn size(&self) -> u64 {
        self.inner.size.load(Ordering::Acquire)
    }

    fn capabilities(&self) -> Capabilities {
        // Discarded extents read back as zeroes; allocation status from the object map.
        Capabilities {
            discard_zeroes: true,
            allocation_status: true,
        }
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Bytes> {
        check_range(offset, len as u64, self.size())?;
        self.check_readable()?;
        let a = api().map_err(BackstoreError::Other)?;
        // Not zeroed first (a memset of every 1 MiB read): librbd writes into the spare
        // capacity, and the bytes count only once it reported all of them written.
        let d = self
            .aio(
                "read",
                Some(BytesMut::with_capacity(len)),
                Vec::new(),
                |img, c, ctx| {
                    let buf = ctx.buf.as_mut().map_or(std::ptr::null_mut(), |b| {
                        b.spare_capacity_mut().as_mut_ptr() as *mut u8
                    });
                    // SAFETY: the buffer (capacity `len`) lives in ctx until the callback.
                    unsafe { (a.rbd_aio_read)(img, offset, len, buf as *mut _, c) as isize }
                },
            )
            .await?;
        self.check("read", &d)?;
        let mut buf = d.buf.unwrap_or_default();
        if d.ret as usize != len || buf.capacity() < len {
            // librbd reads every byte in range (holes as zeroes); anything else is not sent.
            return Err(BackstoreError::Other(format!(
                "read of {len} bytes at {offset} returned {}",
                d.ret
            )));
        }
        // SAFETY: librbd wrote all `len` bytes of the capacity (its return value).
        unsafe { buf.set_len(len) };
        Ok(buf.freeze())
    }

    async fn write(&self, offset: u64, data: DataOutBuffer, fua: bool) -> Result<()> {
        check_range(offset, data.len() as u64, self.size())?;
        self.check_writable()?;
        let a = api().map_err(BackstoreError::Other)?;
        let d = self
            .aio("write", None, data.parts().to_vec(), |img, c, ctx| {
                // librbd reads the iovec array during the call only; the data it points to is
                // kept alive in ctx until the callback.
                let iov: Vec<libc::iovec> = ctx
                    .keep
                    .iter()
                    .map(|p| libc::iovec {
                        iov_base: p.as_ptr() as *mut _,
                        iov_len: p.len(),
                    })
                    .collect();
                // SAFETY: as above; the count matches the array.
                unsafe { (a.rbd_aio_writev)(img, iov.as_ptr(), iov.len() as _, offset, c) as isize }
            })
            .await?;
        self.check("write", &d)?;
        if fua {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        self.check_readable()?;
        let a = api().map_err(BackstoreError::Other)?;
        // SAFETY: plain submission on our image handle.
        let d = self
            .aio("flush", None, Vec::new(), |img, c, _| unsafe {
                (a.rbd_aio_flush)(img, c) as isize
            })
            .await?;
        self.check("flush", &d)
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<()> {
        // librbd's discard skips partial objects (rbd_skip_partial_discard), which would break
        // LBPRZ; write_zeroes deallocates whole objects and zeroes the partial ends.
        self.write_zeroes(offset, len).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.size())?;
        self.check_writable()?;
        let a = api().map_err(BackstoreError::Other)?;
        // SAFETY: plain submission on our image handle.
        let d = self
            .aio("write_zeroes", None, Vec::new(), |img, c, _| unsafe {
                (a.rbd_aio_write_zeroes)(img, offset, len as usize, c, 0, 0) as isize
            })
            .await?;
        self.check("write_zeroes", &d)
    }

    async fn compare_and_write(
        &self,
        offset: u64,
        compare: Bytes,
        data: Bytes,
    ) -> Result<Option<u64>> {
        check_range(offset, data.len() as u64, self.size())?;
        self.check_writable()?;
        let a = api().map_err(BackstoreError::Other)?;
        let d = self
            .aio(
                "compare_and_write",
                None,
                vec![compare, data],
                |img, c, ctx| {
                    let (cmp, buf, len) = (
                        ctx.keep[0].as_ptr(),
                        ctx.keep[1].as_ptr(),
                        ctx.keep[1].len(),
                    );
                    let mismatch: *mut u64 = &mut ctx.mismatch;
                    // SAFETY: both buffers and the mismatch offset live in ctx until the callback.
                    unsafe {
                        (a.rbd_aio_compare_and_write)(
                            img,
                            offset,
                            len,
                            cmp as *const _,
                            buf as *const _,
                            c,
                            mismatch,
                            0,
                        )
                    }
                },
            )
            .await?;
        if d.ret == -(libc::EILSEQ as isize) {
            // librbd reports the image offset of the first differing byte.
            return Ok(Some(d.mismatch.saturating_sub(offset)));
        }
        self.check("compare_and_write", &d)?;
        Ok(None)
    }

    async fn allocation(&self, offset: u64, len: u64) -> Result<Extent> {
        check_range(offset, len, self.size())?;
        self.check_readable()?;
        let a = api().map_err(BackstoreError::Other)?;
        let h = self.inner.handle();
        let scan = blocking(move || {
            let mut scan = AllocationScan::new(offset, offset + len);
            // Whole objects from the object map (fast-diff): an object that exists is mapped
            // all through (conservative), one that does not reads as zeroes (LBPRZ). The
            // callback stops the walk at the first change of state.
            // SAFETY: `scan` outlives the call, which invokes the callback synchronously.
            let rc = unsafe {
                (a.rbd_diff_iterate2)(
                    h.image,
                    std::ptr::null(),
                    offset,
                    len,
                    1,
                    1,
                    allocation_cb,
                    &mut scan as *mut AllocationScan as *mut c_void,
                )
            };
            if rc < 0 && rc != -libc::ECANCELED {
                return Err(BackstoreError::Os {
                    what: "rbd_diff_iterate2".into(),
                    errno: -rc,
                });
            }
            Ok(scan)
        })
        .await?;
        Ok(scan.first_extent())
    }

    async fn metadata_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let h = self.state_handle()?;
        let r = h.state()?.get(key, h.clone()).await;
        self.state_outcome(r)
    }

    async fn metadata_set(&self, key: &str, value: Vec<u8>, publish: Publish) -> Result<()> {
        let h = self.state_handle()?;
        let s = h.state()?;
        let r = s
            .compare_and_set(key, None, &value, false, publish, h.clone())
            .await;
        self.state_outcome(r).map(|_| ())
    }

    async fn metadata_compare_and_set(
        &self,
        key: &str,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        publish: Publish,
    ) -> Result<bool> {
        let h = self.state_handle()?;
        let s = h.state()?;
        let r = s
            .compare_and_set(key, expected.as_deref(), &value, true, publish, h.clone())
            .await;
        self.state_outcome(r)
    }

    fn metadata_generation(&self) -> u64 {
        let epoch = self.inner.epoch.load(Ordering::Acquire);
        let h = self.inner.handle();
        let generation = h
            .state
            .as_ref()
            .map_or(0, |s| s.watch.changes.generation.load(Ordering::Acquire));
        (epoch << 40) + generation
    }

    async fn metadata_changed(&self, seen: u64, at_most: std::time::Duration) {
        // (A reconnection moves the epoch part of the generation; a wait on the replaced
        // handle's changes ends by `at_most`.)
        let changes = self
            .inner
            .handle()
            .state
            .as_ref()
            .map(|s| s.watch.changes.clone());
        match changes {
            Some(c) if seen >> 40 == self.inner.epoch.load(Ordering::Acquire) => {
                c.wait(seen & ((1 << 40) - 1), at_most).await
            }
            Some(_) => {}
            None => tokio::time::sleep(at_most.min(crate::METADATA_POLL)).await,
        }
    }

    async fn try_acquire_ownership(&self) -> Result<bool> {
        if self.is_fenced() {
            return Ok(false);
        }
        let a = api().map_err(BackstoreError::Other)?;
        let h = self.inner.handle();
        // rbd_lock_acquire asks a current holder to release, and waits for its answer — long,
        // when the holder hangs. A held lock is seen cheaply in the header's lock list first.
        let rc = tokio::task::spawn_blocking(move || {
            // SAFETY: plain calls on our image handle.
            unsafe {
                if matches!(lock_owners(a, h.image), Ok((_, owners)) if !owners.is_empty()) {
                    return -libc::EBUSY;
                }
                (a.rbd_lock_acquire)(h.image, ffi::LOCK_MODE_EXCLUSIVE as c_int)
            }
        })
        .await
        .map_err(|e| BackstoreError::Other(e.to_string()))?;
        match rc {
            0 => {
                self.inner.presence.lock_held.store(true, Ordering::Release);
                Ok(true)
            }
            rc if rc == -libc::EROFS || rc == -libc::EBUSY || rc == -libc::EAGAIN => Ok(false),
            rc => Err(self.error("rbd_lock_acquire", rc as i64)),
        }
    }

    async fn release_ownership(&self) -> Result<()> {
        self.inner
            .presence
            .lock_held
            .store(false, Ordering::Release);
        let a = api().map_err(BackstoreError::Other)?;
        let h = self.inner.handle();
        let rc = tokio::task::spawn_blocking(move || {
            // SAFETY: plain call on our image handle.
            unsafe { (a.rbd_lock_release)(h.image) }
        })
        .await
        .map_err(|e| BackstoreError::Other(e.to_string()))?;
        if rc < 0 && rc != -libc::EINVAL {
            return Err(self.error("rbd_lock_release", rc as i64));
        }
        Ok(())
    }

    fn holds_ownership(&self) -> bool {
        !self.is_fenced() && self.inner.presence.lock_held.load(Ordering::Acquire)
    }

    fn available(&self) -> bool {
        !self.is_fenced()
    }

    async fn break_ownership(&self) -> Result<bool> {
        self.check_readable()?;
        let a = api().map_err(BackstoreError::Other)?;
        let h = self.inner.handle();
        let name = self.inner.name.clone();
        blocking(move || {
            // SAFETY: plain call on our image handle.
            let (mode, owners) = unsafe { lock_owners(a, h.image)? };
            let mut broke = false;
            for owner in owners {
                // librbd blocklists the owner's client first (rbd_blocklist_on_break_lock,
                // on by default), so its writes still in flight are refused by the OSDs.
                // SAFETY: plain call with a NUL-terminated owner from librbd.
                let rc = unsafe { (a.rbd_lock_break)(h.image, mode, owner.as_ptr()) };
                if rc < 0 && rc != -libc::ENOENT {
                    return Err(ceph_err("rbd_lock_break", rc as i64));
                }
                tracing::warn!(
                    image = name,
                    owner = ?owner,
                    "fenced the unresponsive lock owner: blocklisted its client, broke its lock"
                );
                broke = true;
            }
            Ok(broke)
        })
        .await
    }

    async fn heartbeat(&self, tag: u16, standing: crate::Standing) -> Result<()> {
        self.inner.presence.beat(tag, standing);
        Ok(())
    }

    async fn members(&self) -> Result<Vec<Member>> {
        // One ping per pool answers every image that asks meanwhile (liveness.rs); it waits
        // for the answers (up to a second) without a thread of its own.
        self.check_readable()?;
        let h = self.inner.handle();
        let key = h.state()?.key();
        let liveness = h
            .liveness
            .clone()
            .ok_or_else(|| BackstoreError::Other("image state is not open".into()))?;
        let mine = self.inner.presence.tag.load(Ordering::Acquire);
        let r = liveness.members(&key, mine).await;
        if let Err(e) = &r {
            if e.raw_os_error() == Some(EBLOCKLISTED as i32) {
                self.inner.fenced_by_ceph();
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::AllocationScan;

    fn first(start: u64, end: u64, extents: &[(u64, u64)]) -> (u64, bool) {
        let mut s = AllocationScan::new(start, end);
        for &(o, l) in extents {
            if !s.take(o, l) {
                break;
            }
        }
        let e = s.first_extent();
        assert_eq!(e.offset, start);
        (e.len, e.mapped)
    }

    #[test]
    fn allocation_scan_finds_the_first_extent() {
        let m = 4u64 << 20;
        assert_eq!(first(0, 10 * m, &[]), (10 * m, false), "nothing allocated");
        assert_eq!(
            first(0, 10 * m, &[(0, m), (m, m), (3 * m, m)]),
            (2 * m, true)
        );
        assert_eq!(
            first(m / 2, 10 * m, &[(0, m)]),
            (m / 2, true),
            "clipped at the start"
        );
        assert_eq!(
            first(0, 10 * m, &[(2 * m, m)]),
            (2 * m, false),
            "a hole first"
        );
        assert_eq!(
            first(0, m / 2, &[(0, m)]),
            (m / 2, true),
            "clipped at the end"
        );
    }
}
