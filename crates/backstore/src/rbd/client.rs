//! One RADOS client per cluster identity, shared by every image this gateway opens.
//!
//! A RADOS client costs a dozen threads, a monitor session and a connection to every OSD it
//! talks to: one per image made 1,000 LUNs cost thousands of threads and descriptors. Images
//! of the same ceph.conf and client id share one [`Connection`] instead.
//!
//! **Fencing is per client.** A peer that breaks one image's lock blocklists the client, so
//! every image on it is fenced at once. Each image learns it from its own next I/O, ping or
//! watch and reopens on a replacement connection; the first to ask creates the replacement,
//! the others find it ([`connection`] with the connection they were fenced on). The
//! replacement is a new client identity, which the blocklist entry does not cover; an image
//! that held its lock on the old client takes it back through the ownership rules, like any
//! other gateway would.
//!
//! The gateway's own objects ([`super::RadosPool`]: the shared config and its watch, the
//! status documents, lrbd's objects) use the same connection, and follow it to its
//! replacement when Ceph refuses it as blocklisted.
//!
//! A connection is shut down when the last image handle or pool on it is closed, after their
//! watches and images (they hold it by `Arc`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::{api, ceph_err, connect_cluster, ffi, Result};
use crate::BackstoreError;

/// A connected RADOS client.
pub(crate) struct Connection {
    cluster: ffi::RadosT,
}

// SAFETY: a librados cluster handle is thread-safe.
unsafe impl Send for Connection {}
// SAFETY: as above.
unsafe impl Sync for Connection {}

impl Connection {
    /// Opens an I/O context on `pool` (and `namespace`); the caller destroys it before it
    /// drops its hold on the connection.
    pub(crate) fn ioctx(&self, pool: &str, namespace: Option<&str>) -> Result<ffi::IoCtx> {
        let a = api().map_err(BackstoreError::Other)?;
        let p = super::cstr(pool)?;
        let ns = namespace.map(super::cstr).transpose()?;
        let mut ioctx: ffi::IoCtx = std::ptr::null_mut();
        // SAFETY: a connected cluster handle, NUL-terminated names, a valid out-pointer.
        unsafe {
            let rc = (a.rados_ioctx_create)(self.cluster, p.as_ptr(), &mut ioctx);
            if rc < 0 {
                return Err(ceph_err(&format!("opening pool {pool}"), rc as i64));
            }
            if let Some(ns) = ns {
                (a.rados_ioctx_set_namespace)(ioctx, ns.as_ptr());
            }
        }
        Ok(ioctx)
    }

    /// This client's address as the OSDs and the blocklist know it (`ip:port/nonce`).
    pub(crate) fn address(&self) -> Option<String> {
        let a = api().ok()?;
        let mut out: *mut std::ffi::c_char = std::ptr::null_mut();
        // SAFETY: a connected cluster handle and a valid out-pointer; the string librados
        // returns is copied, then freed as it asks.
        unsafe {
            if (a.rados_getaddrs)(self.cluster, &mut out) < 0 || out.is_null() {
                return None;
            }
            let s = std::ffi::CStr::from_ptr(out).to_string_lossy().into_owned();
            (a.rados_buffer_free)(out);
            Some(s)
        }
    }

    /// Blocklists the client at `addr` for `seconds` (negative errno on failure).
    pub(crate) fn blocklist(&self, addr: &str, seconds: u32) -> std::result::Result<(), i32> {
        let a = api().map_err(|_| -libc::ENOSYS)?;
        let c = std::ffi::CString::new(addr).map_err(|_| -libc::EINVAL)?;
        // SAFETY: a connected cluster handle and a NUL-terminated address (librados takes a
        // mutable pointer but does not write through it).
        let rc = unsafe { (a.rados_blocklist_add)(self.cluster, c.as_ptr() as *mut _, seconds) };
        if rc < 0 {
            return Err(rc);
        }
        Ok(())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Ok(a) = api() {
            // SAFETY: the handle we connected, shut down once, after every image and I/O
            // context on it was closed (they hold this connection).
            unsafe { (a.rados_shutdown)(self.cluster) };
        }
    }
}

type Key = (String, Option<String>);

fn registry() -> &'static Mutex<HashMap<Key, Weak<Connection>>> {
    static R: OnceLock<Mutex<HashMap<Key, Weak<Connection>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// The shared connection for ceph.conf `conf` and client `id`, connecting if there is none.
/// `fenced_on`: the connection the caller found blocklisted; if it is still the shared one,
/// a new client replaces it (once, whoever asks first). `own`: a new client that nobody
/// shares.
pub(crate) fn connection(
    conf: &str,
    id: Option<&str>,
    own: bool,
    fenced_on: Option<&Arc<Connection>>,
) -> Result<Arc<Connection>> {
    if own {
        // SAFETY: the handle is owned by the Connection, which shuts it down.
        let cluster = unsafe { connect_cluster(conf, id)? };
        return Ok(Arc::new(Connection { cluster }));
    }
    let key = (conf.to_string(), id.map(str::to_string));
    // Held while connecting: every image of a starting gateway waits for the one connection
    // instead of each making its own.
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    r.retain(|_, w| w.strong_count() > 0);
    if let Some(c) = r.get(&key).and_then(Weak::upgrade) {
        if !fenced_on.is_some_and(|f| Arc::ptr_eq(f, &c)) {
            return Ok(c);
        }
    }
    // SAFETY: the handle is owned by the Connection, which shuts it down.
    let cluster = unsafe { connect_cluster(conf, id)? };
    let c = Arc::new(Connection { cluster });
    if fenced_on.is_some() {
        tracing::info!(
            "connected to the cluster as a new client (the previous one was blocklisted)"
        );
    }
    r.insert(key, Arc::downgrade(&c));
    Ok(c)
}

/// How many shared connections are open now.
pub fn open_connections() -> usize {
    let r = registry().lock().unwrap_or_else(|e| e.into_inner());
    r.values().filter(|w| w.strong_count() > 0).count()
}
