//! A gateway's previous client, fenced when the gateway starts again.
//!
//! A gateway that was killed (or crashed) leaves librbd's watches on the headers of its
//! images until the OSDs time them out, 30 s later (`osd_client_watch_timeout`, the OSDs'
//! setting). Meanwhile every notify on those headers waits for the dead watcher, up to
//! librbd's 5 s: a lock release waits for its notifies, so every hand-over of those images
//! (a failback, a drain) stalled writes for seconds. A gateway records its client's address
//! per pool, on the pool's presence object; the next process of that gateway blocklists
//! the address it finds there, which makes the OSDs drop that client's watches at once
//! (and fences it, should it still run: two processes must not serve one gateway's ports).
//! A gateway that stops cleanly unwatches as it goes and takes its record away: its next
//! start fences nobody.

use std::collections::HashSet;
use std::ffi::{c_char, CString};
use std::sync::{Mutex, OnceLock};

use super::client::Connection;
use super::{api, ffi};

/// librados' LIBRADOS_CMPXATTR_OP_EQ.
const CMPXATTR_EQ: u8 = 1;
/// How long the blocklist entry of a predecessor lasts (s): its watches are gone long before.
const FENCE_FOR_S: u32 = 3600;

/// A pool and namespace.
type PoolKey = (String, Option<String>);

/// The xattr of the presence object that records gateway `name`'s client.
fn record_name(name: &str) -> Option<CString> {
    CString::new(format!("rbdgw.client.{name}")).ok()
}

/// What a connection recorded: the xattr and its value (this client's address).
pub(super) struct Record {
    key: CString,
    own: String,
}

/// Fences the client that the previous process of gateway `name` recorded on `oid` in
/// `pool` (once per pool and process), then records this connection's client there
/// (blocking). Failures are logged: the gateway serves on without either.
pub(super) fn fence_and_record(
    conn: &Connection,
    ioctx: ffi::IoCtx,
    oid: &CString,
    pool: (&str, Option<&str>),
    name: &str,
) -> Option<Record> {
    let key = record_name(name)?;
    let Some(own) = conn.address() else {
        tracing::warn!(gateway = name, "cannot read this gateway's client address");
        return None;
    };
    // The pool's first connection in this process: what is recorded is a predecessor's (later
    // connections, after this process was fenced, find their own process's earlier client).
    static SEEN: OnceLock<Mutex<HashSet<PoolKey>>> = OnceLock::new();
    let first = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((pool.0.to_string(), pool.1.map(str::to_string)));
    if first {
        if let Some(prev) = read(ioctx, oid, &key).filter(|p| *p != own) {
            match conn.blocklist(&prev, FENCE_FOR_S) {
                Ok(()) => tracing::warn!(
                    gateway = name,
                    client = prev,
                    "fenced this gateway's previous client (its process was killed or is \
                     stuck): its watches no longer hold up lock hand-overs"
                ),
                Err(rc) => tracing::warn!(
                    gateway = name,
                    client = prev,
                    "cannot blocklist this gateway's previous client ({}): lock hand-overs \
                     may wait for its watches to time out (30 s)",
                    std::io::Error::from_raw_os_error(-rc)
                ),
            }
        }
    }
    if let Err(rc) = write(ioctx, oid, &key, &own, false) {
        tracing::warn!(
            gateway = name,
            "cannot record this gateway's client address: {}",
            std::io::Error::from_raw_os_error(-rc)
        );
        return None;
    }
    Some(Record { key, own })
}

/// Takes `record` away if it still names this client (a clean stop; blocking).
pub(super) fn forget(ioctx: ffi::IoCtx, oid: &CString, record: &Record) {
    // (Fails harmlessly when a newer client of this process replaced the record, or when
    // this client was fenced.)
    let _ = write(ioctx, oid, &record.key, &record.own, true);
}

fn read(ioctx: ffi::IoCtx, oid: &CString, key: &CString) -> Option<String> {
    let a = api().ok()?;
    let mut buf = vec![0u8; 256];
    // SAFETY: a valid ioctx, NUL-terminated names, a buffer of the length given.
    let n = unsafe {
        (a.rados_getxattr)(
            ioctx,
            oid.as_ptr(),
            key.as_ptr(),
            buf.as_mut_ptr() as *mut c_char,
            buf.len(),
        )
    };
    if n <= 0 {
        return None;
    }
    buf.truncate(n as usize);
    String::from_utf8(buf).ok().filter(|s| !s.is_empty())
}

/// Sets `key` to `value`, or with `remove` takes it away if it still is `value`: one atomic
/// operation on the OSD.
fn write(
    ioctx: ffi::IoCtx,
    oid: &CString,
    key: &CString,
    value: &str,
    remove: bool,
) -> Result<(), i32> {
    let a = api().map_err(|_| -libc::ENOSYS)?;
    // SAFETY: a write op created, used and released here, on a valid ioctx with
    // NUL-terminated names and a value of the length given.
    unsafe {
        let op = (a.rados_create_write_op)();
        let v = value.as_ptr() as *const c_char;
        if remove {
            (a.rados_write_op_cmpxattr)(op, key.as_ptr(), CMPXATTR_EQ, v, value.len());
            (a.rados_write_op_rmxattr)(op, key.as_ptr());
        } else {
            (a.rados_write_op_setxattr)(op, key.as_ptr(), v, value.len());
        }
        let rc = (a.rados_write_op_operate)(op, ioctx, oid.as_ptr(), std::ptr::null_mut(), 0);
        (a.rados_release_write_op)(op);
        if rc < 0 {
            return Err(rc);
        }
    }
    Ok(())
}
