//! Metadata shared by every gateway of an RBD image: xattrs of one RADOS object beside the
//! image, `rbdgw.<image id>`, changed only by compare-and-set write operations (cmpxattr +
//! setxattr, atomic on the OSD). Each gateway watches the object; a change is announced with
//! a notify that returns once every watcher has seen it, so a reservation taken through one
//! gateway binds the next command on any other. The watch bumps a generation counter that
//! commands read with one atomic load.

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::ffi::{self, api};
use super::{ceph_err, cstr};
use crate::{BackstoreError, Result};

/// Context of the watch callback; boxed, it outlives the watch (unwatched before drop).
pub(super) struct WatchCtx {
    pub generation: AtomicU64,
    ioctx: ffi::IoCtx,
    oid: CString,
    cookie: AtomicU64,
    /// The watch broke (a network blip longer than the watch timeout): it must be renewed.
    broken: AtomicBool,
}

// SAFETY: the ioctx is thread-safe; the rest is atomics and immutable data.
unsafe impl Send for WatchCtx {}
// SAFETY: as above.
unsafe impl Sync for WatchCtx {}

extern "C" fn on_notify(
    arg: *mut c_void,
    notify_id: u64,
    cookie: u64,
    _notifier: u64,
    _data: *mut c_void,
    _len: usize,
) {
    // SAFETY: `arg` is the WatchCtx registered with the watch, alive until unwatched.
    let w = unsafe { &*(arg as *const WatchCtx) };
    w.generation.fetch_add(1, Ordering::AcqRel);
    if let Ok(a) = api() {
        // SAFETY: acknowledging the notify on the watched object.
        unsafe {
            (a.rados_notify_ack)(
                w.ioctx,
                w.oid.as_ptr(),
                notify_id,
                cookie,
                std::ptr::null(),
                0,
            )
        };
    }
}

extern "C" fn on_watch_error(arg: *mut c_void, _cookie: u64, err: c_int) {
    // SAFETY: as in on_notify.
    let w = unsafe { &*(arg as *const WatchCtx) };
    // Whatever changed while the watch was broken: make every command reload.
    w.generation.fetch_add(1, Ordering::AcqRel);
    w.broken.store(true, Ordering::Release);
    tracing::warn!("watch on {:?} failed ({err}); renewing it", w.oid);
}

/// The state object of one image.
pub(super) struct SharedState {
    ioctx: ffi::IoCtx,
    oid: CString,
    pub watch: Box<WatchCtx>,
}

// SAFETY: see WatchCtx.
unsafe impl Send for SharedState {}
// SAFETY: see WatchCtx.
unsafe impl Sync for SharedState {}

impl SharedState {
    /// Creates (if needed) and watches `rbdgw.<image id>`.
    pub fn open(ioctx: ffi::IoCtx, image: ffi::Image) -> Result<SharedState> {
        let a = api().map_err(BackstoreError::Other)?;
        let mut id = [0u8; 64];
        // SAFETY: the buffer is valid for its length; librbd NUL-terminates the id.
        let rc = unsafe { (a.rbd_get_id)(image, id.as_mut_ptr() as *mut c_char, id.len()) };
        if rc < 0 {
            return Err(ceph_err("rbd_get_id", rc as i64));
        }
        let end = id.iter().position(|b| *b == 0).unwrap_or(id.len());
        let oid = cstr(&format!("rbdgw.{}", String::from_utf8_lossy(&id[..end])))?;
        Self::open_object(ioctx, oid, true)
    }

    /// Watches the object `oid` (creating it first when `create`).
    pub fn open_object(ioctx: ffi::IoCtx, oid: CString, create: bool) -> Result<SharedState> {
        let a = api().map_err(BackstoreError::Other)?;
        let watch = Box::new(WatchCtx {
            generation: AtomicU64::new(1),
            ioctx,
            oid: oid.clone(),
            cookie: AtomicU64::new(0),
            broken: AtomicBool::new(false),
        });
        let s = SharedState { ioctx, oid, watch };
        // SAFETY: write op built, run and released here; the watch context is boxed and
        // unwatched in Drop before it is freed.
        unsafe {
            if create {
                let op = (a.rados_create_write_op)();
                (a.rados_write_op_create)(op, 0, std::ptr::null());
                let rc =
                    (a.rados_write_op_operate)(op, ioctx, s.oid.as_ptr(), std::ptr::null_mut(), 0);
                (a.rados_release_write_op)(op);
                if rc < 0 {
                    return Err(ceph_err("creating the rbdgw state object", rc as i64));
                }
            }
        }
        s.watch_now()?;
        Ok(s)
    }

    /// Registers the watch (again).
    fn watch_now(&self) -> Result<()> {
        let a = api().map_err(BackstoreError::Other)?;
        let mut cookie = 0u64;
        let arg = &*self.watch as *const WatchCtx as *mut c_void;
        // SAFETY: the watch context is boxed and outlives the watch (unwatched in Drop).
        let rc = unsafe {
            (a.rados_watch2)(
                self.ioctx,
                self.oid.as_ptr(),
                &mut cookie,
                on_notify,
                on_watch_error,
                arg,
            )
        };
        if rc < 0 {
            return Err(ceph_err(&format!("watching {:?}", self.oid), rc as i64));
        }
        self.watch.cookie.store(cookie, Ordering::Release);
        Ok(())
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
        if let Ok(a) = api() {
            // SAFETY: unwatching the broken registration (its error is expected).
            unsafe { (a.rados_unwatch2)(self.ioctx, self.watch.cookie.load(Ordering::Acquire)) };
        }
        let r = self.watch_now();
        if r.is_err() {
            self.watch.broken.store(true, Ordering::Release);
        } else {
            self.watch.generation.fetch_add(1, Ordering::AcqRel);
            tracing::info!("renewed the watch on {:?}", self.oid);
        }
        r
    }

    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let a = api().map_err(BackstoreError::Other)?;
        let name = cstr(key)?;
        let mut buf = vec![0u8; 64 * 1024];
        // SAFETY: the buffer is valid for its length.
        let rc = unsafe {
            (a.rados_getxattr)(
                self.ioctx,
                self.oid.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr() as *mut c_char,
                buf.len(),
            )
        };
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

    /// Writes `value` if the key holds `expected` (`None`: absent or empty); announces it.
    pub fn compare_and_set(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        compare: bool,
    ) -> Result<bool> {
        let a = api().map_err(BackstoreError::Other)?;
        let name = cstr(key)?;
        let exp = expected.unwrap_or(b"");
        // SAFETY: write op built, run and released here, buffers alive throughout.
        let rc = unsafe {
            let op = (a.rados_create_write_op)();
            if compare {
                (a.rados_write_op_cmpxattr)(
                    op,
                    name.as_ptr(),
                    ffi::CMPXATTR_OP_EQ,
                    exp.as_ptr() as *const c_char,
                    exp.len(),
                );
            }
            (a.rados_write_op_setxattr)(
                op,
                name.as_ptr(),
                value.as_ptr() as *const c_char,
                value.len(),
            );
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
        if rc == -libc::ECANCELED {
            return Ok(false);
        }
        if rc < 0 {
            return Err(ceph_err(&format!("updating {key}"), rc as i64));
        }
        self.watch.generation.fetch_add(1, Ordering::AcqRel);
        notify(self.ioctx, &self.oid, key);
        Ok(true)
    }
}

impl Drop for SharedState {
    fn drop(&mut self) {
        if let Ok(a) = api() {
            // SAFETY: unwatching the watch registered in open, before the context is freed.
            unsafe { (a.rados_unwatch2)(self.ioctx, self.watch.cookie.load(Ordering::Acquire)) };
        }
    }
}

/// How long a change waits for every watcher to acknowledge it. A live gateway answers in
/// milliseconds; a hung or cut-off one is what failover is about, and every shared-state update
/// made during a takeover waits this long for it (the change still reaches a late watcher).
const NOTIFY_TIMEOUT_MS: u64 = 2000;

/// Tells every watcher of `oid` that it changed; returns once they have seen it (or after
/// [`NOTIFY_TIMEOUT_MS`]).
pub(super) fn notify(ioctx: ffi::IoCtx, oid: &CString, what: &str) {
    let Ok(a) = api() else { return };
    let mut reply: *mut c_char = std::ptr::null_mut();
    let mut reply_len = 0usize;
    // SAFETY: notify with no payload; the reply buffer is freed as librados asks.
    unsafe {
        let rc = (a.rados_notify2)(
            ioctx,
            oid.as_ptr(),
            std::ptr::null(),
            0,
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
