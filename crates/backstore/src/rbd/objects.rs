//! Plain RADOS objects of one pool: where the shared gateway config lives
//! (`rados://POOL/OBJECT`), and where lrbd kept its own (xattrs of `lrbd.conf`).

use std::ffi::c_char;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::client::{connection, Connection};
use super::ffi::{self, api};
use super::state::{notify, SharedState};
use super::{ceph_err, connect_cluster, cstr, EBLOCKLISTED};
use crate::{BackstoreError, Result};

/// An object's extended attributes, name and value.
pub type Xattrs = Vec<(String, Vec<u8>)>;

/// A pool (and RADOS namespace) on the gateway's shared RADOS client ([`super::client`]):
/// the shared config, the status documents and lrbd's objects are read and written on the
/// client the images use, not on one of their own (which cost a dozen threads and two
/// connections more per gateway). Fencing is per client: when Ceph refuses this one as
/// blocklisted, the pool moves to the replacement connection (the one the images reopen
/// on, whoever asks first creates it) and the call is tried once more there.
pub struct RadosPool {
    conf: String,
    id: Option<String>,
    pool: String,
    namespace: Option<String>,
    link: RwLock<Arc<Link>>,
}

/// An I/O context on one connection.
struct Link {
    ioctx: ffi::IoCtx,
    pool: String,
    conn: Arc<Connection>,
}

// SAFETY: librados handles are thread-safe.
unsafe impl Send for Link {}
// SAFETY: as above.
unsafe impl Sync for Link {}

impl Drop for Link {
    fn drop(&mut self) {
        if let Ok(a) = api() {
            // SAFETY: destroying the ioctx `Link::open` created, once; the connection it
            // lives on is let go of after it (a field, dropped after this).
            unsafe { (a.rados_ioctx_destroy)(self.ioctx) };
        }
    }
}

/// A watch on one object: its generation changes whenever a writer notifies, and when the
/// watch moved to a new connection (changes may have been missed meanwhile).
pub struct ObjectWatch {
    pool: Arc<RadosPool>,
    oid: String,
    on: Mutex<Watching>,
    /// What the generations of earlier watches (on fenced connections) add up to.
    earlier: AtomicU64,
}

struct Watching {
    /// Dropped (unwatched) before the link it lives on.
    state: SharedState,
    _link: Arc<Link>,
}

impl ObjectWatch {
    fn watching(&self) -> std::sync::MutexGuard<'_, Watching> {
        self.on.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn generation(&self) -> u64 {
        self.earlier.load(Ordering::Acquire)
            + self
                .watching()
                .state
                .watch
                .changes
                .generation
                .load(Ordering::Acquire)
    }

    /// Whether the watch broke and needs [`ObjectWatch::renew`].
    pub fn is_broken(&self) -> bool {
        self.watching().state.watch_broken()
    }

    /// Renews a broken watch (blocking); on a fenced connection, watches anew on the
    /// replacement.
    pub fn renew(&self) -> Result<()> {
        let mut w = self.watching();
        match w.state.renew_watch() {
            Err(_) if w.state.blocklisted() => {
                let link = self.pool.reconnect(&w._link)?;
                let state = watch_on(&link, &self.oid)?;
                // Strictly greater than anything the old watch counted: a reader compares
                // generations for equality and must read again.
                let was = w.state.watch.changes.generation.load(Ordering::Acquire);
                self.earlier.fetch_add(was + 1, Ordering::AcqRel);
                *w = Watching { state, _link: link };
                tracing::info!(
                    "watching {}/{} again, on the new client",
                    self.pool.pool,
                    self.oid
                );
                Ok(())
            }
            r => r,
        }
    }
}

fn watch_on(link: &Link, oid: &str) -> Result<SharedState> {
    SharedState::open_object(link.ioctx, cstr(oid)?, false, None, None)
}

fn blocklisted(e: &BackstoreError) -> bool {
    e.raw_os_error().map(i64::from) == Some(EBLOCKLISTED)
}

impl RadosPool {
    /// The pool on the shared client of `conf` and `id`, connecting if there is none yet
    /// (blocking).
    pub fn connect(
        conf: &str,
        id: Option<&str>,
        pool: &str,
        namespace: Option<&str>,
    ) -> Result<RadosPool> {
        let conn = connection(conf, id, false, None)?;
        Ok(RadosPool {
            conf: conf.to_string(),
            id: id.map(str::to_string),
            pool: pool.to_string(),
            namespace: namespace.map(str::to_string),
            link: RwLock::new(Link::open(conn, pool, namespace)?),
        })
    }

    fn link(&self) -> Arc<Link> {
        self.link.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Moves to the connection that replaces `fenced` (unless that was done already).
    fn reconnect(&self, fenced: &Arc<Link>) -> Result<Arc<Link>> {
        let mut l = self.link.write().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&l, fenced) {
            return Ok(l.clone());
        }
        let conn = connection(&self.conf, self.id.as_deref(), false, Some(&fenced.conn))?;
        *l = Link::open(conn, &self.pool, self.namespace.as_deref())?;
        Ok(l.clone())
    }

    /// Runs `op` on the current link, and once more on a new one if Ceph refused this client
    /// as blocklisted.
    fn on_link<T>(&self, op: impl Fn(&Link) -> Result<T>) -> Result<T> {
        let l = self.link();
        match op(&l) {
            Err(e) if blocklisted(&e) => op(&*self.reconnect(&l)?),
            r => r,
        }
    }

    /// The whole content of `oid`, `None` when it does not exist.
    pub fn read(&self, oid: &str) -> Result<Option<Vec<u8>>> {
        self.on_link(|l| l.read(oid))
    }

    /// Replaces the content of `oid` atomically and tells its watchers.
    pub fn write_full(&self, oid: &str, data: &[u8]) -> Result<()> {
        self.on_link(|l| l.write_full(oid, data))
    }

    /// Removes `oid` (after telling its watchers); false when it did not exist.
    pub fn remove(&self, oid: &str) -> Result<bool> {
        self.on_link(|l| l.remove(oid))
    }

    /// Every extended attribute of `oid`, `None` when it does not exist.
    pub fn xattrs(&self, oid: &str) -> Result<Option<Xattrs>> {
        self.on_link(|l| l.xattrs(oid))
    }

    /// Watches `oid`, which must exist.
    pub fn watch(self: &Arc<Self>, oid: &str) -> Result<ObjectWatch> {
        let (link, state) = {
            let l = self.link();
            match watch_on(&l, oid) {
                Err(e) if blocklisted(&e) => {
                    let l = self.reconnect(&l)?;
                    let s = watch_on(&l, oid)?;
                    (l, s)
                }
                r => (l, r?),
            }
        };
        Ok(ObjectWatch {
            pool: self.clone(),
            oid: oid.to_string(),
            on: Mutex::new(Watching { state, _link: link }),
            earlier: AtomicU64::new(0),
        })
    }
}

impl Link {
    fn open(conn: Arc<Connection>, pool: &str, namespace: Option<&str>) -> Result<Arc<Link>> {
        Ok(Arc::new(Link {
            ioctx: conn.ioctx(pool, namespace)?,
            pool: pool.to_string(),
            conn,
        }))
    }

    /// The whole content of `oid`, `None` when it does not exist.
    fn read(&self, oid: &str) -> Result<Option<Vec<u8>>> {
        let a = api().map_err(BackstoreError::Other)?;
        let name = cstr(oid)?;
        let (mut size, mut mtime) = (0u64, 0i64);
        // SAFETY: out-pointers valid for the call.
        let rc = unsafe { (a.rados_stat)(self.ioctx, name.as_ptr(), &mut size, &mut mtime) };
        if rc == -libc::ENOENT {
            return Ok(None);
        }
        if rc < 0 {
            return Err(ceph_err(&format!("stat {}/{oid}", self.pool), rc as i64));
        }
        let mut buf = vec![0u8; size as usize];
        let mut got = 0usize;
        while got < buf.len() {
            // SAFETY: the buffer is valid from `got` to its end.
            let rc = unsafe {
                (a.rados_read)(
                    self.ioctx,
                    name.as_ptr(),
                    buf[got..].as_mut_ptr() as *mut c_char,
                    buf.len() - got,
                    got as u64,
                )
            };
            if rc < 0 {
                return Err(ceph_err(&format!("reading {}/{oid}", self.pool), rc as i64));
            }
            if rc == 0 {
                break;
            }
            got += rc as usize;
        }
        buf.truncate(got);
        Ok(Some(buf))
    }

    /// Replaces the content of `oid` atomically and tells its watchers.
    fn write_full(&self, oid: &str, data: &[u8]) -> Result<()> {
        let a = api().map_err(BackstoreError::Other)?;
        let name = cstr(oid)?;
        // SAFETY: the buffer is valid for its length.
        let rc = unsafe {
            (a.rados_write_full)(
                self.ioctx,
                name.as_ptr(),
                data.as_ptr() as *const c_char,
                data.len(),
            )
        };
        if rc < 0 {
            return Err(ceph_err(&format!("writing {}/{oid}", self.pool), rc as i64));
        }
        notify(self.ioctx, &name, &[], oid);
        Ok(())
    }

    /// Removes `oid` (after telling its watchers); false when it did not exist.
    fn remove(&self, oid: &str) -> Result<bool> {
        let a = api().map_err(BackstoreError::Other)?;
        let name = cstr(oid)?;
        notify(self.ioctx, &name, &[], oid);
        // SAFETY: plain call.
        let rc = unsafe { (a.rados_remove)(self.ioctx, name.as_ptr()) };
        if rc == -libc::ENOENT {
            return Ok(false);
        }
        if rc < 0 {
            return Err(ceph_err(
                &format!("removing {}/{oid}", self.pool),
                rc as i64,
            ));
        }
        Ok(true)
    }

    /// Every extended attribute of `oid`, `None` when it does not exist.
    fn xattrs(&self, oid: &str) -> Result<Option<Xattrs>> {
        let a = api().map_err(BackstoreError::Other)?;
        let name = cstr(oid)?;
        let mut it: ffi::XattrsIter = std::ptr::null_mut();
        // SAFETY: the iterator is ended before return; entries are copied out of librados'
        // buffers before the next call.
        unsafe {
            let rc = (a.rados_getxattrs)(self.ioctx, name.as_ptr(), &mut it);
            if rc == -libc::ENOENT {
                return Ok(None);
            }
            if rc < 0 {
                return Err(ceph_err(
                    &format!("xattrs of {}/{oid}", self.pool),
                    rc as i64,
                ));
            }
            let mut out = Vec::new();
            loop {
                let (mut k, mut v, mut len) = (std::ptr::null(), std::ptr::null(), 0usize);
                let rc = (a.rados_getxattrs_next)(it, &mut k, &mut v, &mut len);
                if rc < 0 {
                    (a.rados_getxattrs_end)(it);
                    return Err(ceph_err("rados_getxattrs_next", rc as i64));
                }
                if k.is_null() {
                    break;
                }
                let key = std::ffi::CStr::from_ptr(k).to_string_lossy().into_owned();
                let value = if v.is_null() {
                    Vec::new()
                } else {
                    std::slice::from_raw_parts(v as *const u8, len).to_vec()
                };
                out.push((key, value));
            }
            (a.rados_getxattrs_end)(it);
            Ok(Some(out))
        }
    }
}

/// The names of every pool of the cluster (blocking).
pub fn list_pools(conf: &str, id: Option<&str>) -> Result<Vec<String>> {
    let a = api().map_err(BackstoreError::Other)?;
    // SAFETY: a cluster handle of our own, shut down below.
    let cluster = unsafe { connect_cluster(conf, id)? };
    let mut buf = vec![0u8; 4096];
    let listed = loop {
        // SAFETY: the buffer is valid for its length; librados returns the length it needs.
        let rc =
            unsafe { (a.rados_pool_list)(cluster, buf.as_mut_ptr() as *mut c_char, buf.len()) };
        if rc < 0 {
            break Err(ceph_err("rados_pool_list", rc as i64));
        }
        if rc as usize <= buf.len() {
            break Ok(());
        }
        buf.resize(rc as usize, 0);
    };
    // SAFETY: the handle from connect_cluster, shut down once.
    unsafe { (a.rados_shutdown)(cluster) };
    listed?;
    Ok(buf
        .split(|b| *b == 0)
        .take_while(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect())
}
