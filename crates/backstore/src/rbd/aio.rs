//! Asynchronous librados operations awaited from async code: a completion whose callback
//! answers through a oneshot channel, so that no thread waits for the OSD. (A blocking call
//! per shared-state read or update took a thread of tokio's blocking pool each: a gateway
//! starting a thousand LUNs ran over a hundred threads, and an unreachable pool would hold
//! one per waiting command.)

use std::ffi::{c_int, c_void};

use tokio::sync::oneshot;

use super::ffi::{self, api};

/// Owned by librados from the submission to the callback: who waits, and what the operation
/// needs until librados is done with it (the buffers it fills or reads, what keeps its I/O
/// context open), whether or not anybody still waits.
struct InFlight<K> {
    tx: oneshot::Sender<(c_int, K)>,
    keep: K,
}

extern "C" fn on_complete<K: Send + 'static>(c: ffi::Completion, arg: *mut c_void) {
    // SAFETY: `arg` is the InFlight leaked at submission, reclaimed exactly once, here; `c`
    // the completion librados calls us for, released once.
    let ctx = unsafe { Box::from_raw(arg as *mut InFlight<K>) };
    let rc = match api() {
        // SAFETY: as above.
        Ok(a) => unsafe {
            let rc = (a.rados_aio_get_return_value)(c);
            (a.rados_aio_release)(c);
            rc
        },
        Err(_) => -libc::EIO,
    };
    let InFlight { tx, keep } = *ctx;
    if let Err((_, keep)) = tx.send((rc, keep)) {
        // Nobody waits any more (an aborted command): what the operation kept may be the
        // last reference to a connection, which must not close on librados' own thread
        // (closing waits for that thread).
        let _ = std::thread::Builder::new()
            .name("rbdgw-aio-drop".into())
            .spawn(move || drop(keep));
    }
}

/// Submits an operation with `submit(completion, &mut keep)`, which returns librados'
/// submission code and may point librados into `keep` (it stays put until the callback),
/// and waits for its return value; `keep` comes back with it. Err: the submission failed
/// (negative errno).
pub(super) async fn run<K: Send + 'static>(
    keep: K,
    submit: impl FnOnce(ffi::Completion, &mut K) -> c_int,
) -> Result<(c_int, K), c_int> {
    start(keep, submit)?.await.map_err(|_| -libc::ECANCELED)
}

/// Submits an operation as [`run`] does, at once, and hands back what its completion will
/// send: the caller may await it or leave the operation to finish on its own.
pub(super) fn start<K: Send + 'static>(
    keep: K,
    submit: impl FnOnce(ffi::Completion, &mut K) -> c_int,
) -> Result<oneshot::Receiver<(c_int, K)>, c_int> {
    let a = api().map_err(|_| -libc::ENOSYS)?;
    let (tx, rx) = oneshot::channel();
    let ctx = Box::into_raw(Box::new(InFlight { tx, keep }));
    // SAFETY: the context is leaked to librados until its callback reclaims it, or reclaimed
    // here when nothing was submitted (no callback comes then); it is not touched after a
    // submission, which may complete at once.
    unsafe {
        let mut c: ffi::Completion = std::ptr::null_mut();
        let rc = (a.rados_aio_create_completion2)(ctx as *mut c_void, on_complete::<K>, &mut c);
        if rc < 0 {
            drop(Box::from_raw(ctx));
            return Err(rc);
        }
        let rc = submit(c, &mut (*ctx).keep);
        if rc < 0 {
            (a.rados_aio_release)(c);
            drop(Box::from_raw(ctx));
            return Err(rc);
        }
    }
    Ok(rx)
}
