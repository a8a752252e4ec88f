//! Plain RADOS objects of one pool: where the shared gateway config lives
//! (`rados://POOL/OBJECT`), and where lrbd kept its own (xattrs of `lrbd.conf`).

use std::ffi::{c_char, CString};
use std::sync::atomic::Ordering;

use super::ffi::{self, api};
use super::state::{notify, SharedState};
use super::{ceph_err, connect, connect_cluster, cstr};
use crate::{BackstoreError, Result};

/// An object's extended attributes, name and value.
pub type Xattrs = Vec<(String, Vec<u8>)>;

/// A connection to one pool (and RADOS namespace).
pub struct RadosPool {
    cluster: ffi::RadosT,
    ioctx: ffi::IoCtx,
    pool: String,
}

// SAFETY: librados handles are thread-safe.
unsafe impl Send for RadosPool {}
// SAFETY: as above.
unsafe impl Sync for RadosPool {}

impl Drop for RadosPool {
    fn drop(&mut self) {
        if let Ok(a) = api() {
            // SAFETY: closing what `connect` opened, once.
            unsafe {
                (a.rados_ioctx_destroy)(self.ioctx);
                (a.rados_shutdown)(self.cluster);
            }
        }
    }
}

/// A watch on one object: its generation changes whenever a writer notifies.
pub struct ObjectWatch {
    state: SharedState,
    _pool: std::sync::Arc<RadosPool>,
}

impl ObjectWatch {
    pub fn generation(&self) -> u64 {
        self.state.watch.changes.generation.load(Ordering::Acquire)
    }

    /// Whether the watch broke and needs [`ObjectWatch::renew`] (one atomic load).
    pub fn is_broken(&self) -> bool {
        self.state.watch_broken()
    }

    /// Renews a broken watch (blocking).
    pub fn renew(&self) -> Result<()> {
        self.state.renew_watch()
    }
}

impl RadosPool {
    /// Connects like the `rbd` command line (blocking).
    pub fn connect(
        conf: &str,
        id: Option<&str>,
        pool: &str,
        namespace: Option<&str>,
    ) -> Result<RadosPool> {
        // SAFETY: `connect` returns handles we own and close in Drop.
        let (cluster, ioctx) = unsafe { connect(conf, id, pool, namespace)? };
        Ok(RadosPool {
            cluster,
            ioctx,
            pool: pool.to_string(),
        })
    }

    /// The whole content of `oid`, `None` when it does not exist.
    pub fn read(&self, oid: &str) -> Result<Option<Vec<u8>>> {
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
    pub fn write_full(&self, oid: &str, data: &[u8]) -> Result<()> {
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
    pub fn remove(&self, oid: &str) -> Result<bool> {
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
    pub fn xattrs(&self, oid: &str) -> Result<Option<Xattrs>> {
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

    /// Watches `oid`, which must exist.
    pub fn watch(self: &std::sync::Arc<Self>, oid: &str) -> Result<ObjectWatch> {
        let name: CString = cstr(oid)?;
        let state = SharedState::open_object(self.ioctx, name, false, None, None)?;
        Ok(ObjectWatch {
            state,
            _pool: self.clone(),
        })
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
