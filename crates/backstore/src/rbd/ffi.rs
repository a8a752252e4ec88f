//! The part of librados' and librbd's C API that rbdgw uses, loaded at run time from
//! `librados.so.2` and `librbd.so.1` (Debian: librados2, librbd1).

use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;

use libloading::Library;

pub type RadosT = *mut c_void;
pub type IoCtx = *mut c_void;
pub type Image = *mut c_void;
pub type Completion = *mut c_void;
pub type Callback = extern "C" fn(Completion, *mut c_void);
pub type WriteOp = *mut c_void;
/// `int (*)(uint64_t offset, size_t len, int exists, void *arg)` of rbd_diff_iterate2.
pub type DiffCallback = extern "C" fn(u64, usize, c_int, *mut c_void) -> c_int;
pub type XattrsIter = *mut c_void;
pub type WatchCallback = extern "C" fn(*mut c_void, u64, u64, u64, *mut c_void, usize);
pub type WatchErrorCallback = extern "C" fn(*mut c_void, u64, c_int);
/// `rbd_update_callback_t`: the image's header changed (resize, features…).
pub type UpdateCallback = extern "C" fn(*mut c_void);

/// `struct notify_ack_t` (rados_types.h): one watcher's answer to a notify.
#[repr(C)]
pub struct NotifyAck {
    pub notifier_id: u64,
    pub cookie: u64,
    pub payload: *mut c_char,
    pub payload_len: u64,
}

/// `LIBRADOS_CMPXATTR_OP_EQ` (librados.h).
pub const CMPXATTR_OP_EQ: u8 = 1;

/// `RBD_LOCK_MODE_EXCLUSIVE` (librbd.h).
pub const LOCK_MODE_EXCLUSIVE: c_int = 0;

macro_rules! api {
    ($($name:ident: fn($($arg:ty),*) -> $ret:ty;)*) => {
        /// Function pointers resolved from the libraries, which stay loaded for the process.
        pub struct Api {
            $(pub $name: unsafe extern "C" fn($($arg),*) -> $ret,)*
            _rados: Library,
            _rbd: Library,
        }

        impl Api {
            fn load() -> Result<Api, String> {
                // SAFETY: loading the system's Ceph client libraries, whose initialisers are
                // safe to run; symbols are looked up by their C names with the C signatures
                // of librados.h and librbd.h.
                unsafe {
                    let rados = Library::new("librados.so.2").map_err(|e| format!("cannot load librados.so.2 (install librados2): {e}"))?;
                    let rbd = Library::new("librbd.so.1").map_err(|e| format!("cannot load librbd.so.1 (install librbd1): {e}"))?;
                    $(
                        let $name = {
                            let sym = concat!(stringify!($name), "\0");
                            let lib = if sym.starts_with("rados") { &rados } else { &rbd };
                            *lib.get::<unsafe extern "C" fn($($arg),*) -> $ret>(sym.as_bytes())
                                .map_err(|e| format!("librbd/librados lacks {}: {e}", stringify!($name)))?
                        };
                    )*
                    Ok(Api { $($name,)* _rados: rados, _rbd: rbd })
                }
            }
        }
    };
}

api! {
    rados_create: fn(*mut RadosT, *const c_char) -> c_int;
    rados_conf_read_file: fn(RadosT, *const c_char) -> c_int;
    rados_conf_set: fn(RadosT, *const c_char, *const c_char) -> c_int;
    rados_connect: fn(RadosT) -> c_int;
    rados_shutdown: fn(RadosT) -> ();
    rados_ioctx_create: fn(RadosT, *const c_char, *mut IoCtx) -> c_int;
    rados_ioctx_destroy: fn(IoCtx) -> ();
    rados_ioctx_set_namespace: fn(IoCtx, *const c_char) -> ();
    rados_create_write_op: fn() -> WriteOp;
    rados_release_write_op: fn(WriteOp) -> ();
    rados_write_op_create: fn(WriteOp, c_int, *const c_char) -> ();
    rados_write_op_cmpxattr: fn(WriteOp, *const c_char, u8, *const c_char, usize) -> ();
    rados_write_op_setxattr: fn(WriteOp, *const c_char, *const c_char, usize) -> ();
    rados_write_op_rmxattr: fn(WriteOp, *const c_char) -> ();
    rados_write_op_operate: fn(WriteOp, IoCtx, *const c_char, *mut i64, c_int) -> c_int;
    rados_watch3: fn(IoCtx, *const c_char, *mut u64, WatchCallback, WatchErrorCallback, u32, *mut c_void) -> c_int;
    rados_unwatch2: fn(IoCtx, u64) -> c_int;
    rados_notify_ack: fn(IoCtx, *const c_char, u64, u64, *const c_char, c_int) -> c_int;
    rados_notify2: fn(IoCtx, *const c_char, *const c_char, c_int, u64, *mut *mut c_char, *mut usize) -> c_int;
    rados_aio_create_completion2: fn(*mut c_void, Callback, *mut Completion) -> c_int;
    rados_aio_notify: fn(IoCtx, *const c_char, Completion, *const c_char, c_int, u64, *mut *mut c_char, *mut usize) -> c_int;
    rados_aio_getxattr: fn(IoCtx, *const c_char, Completion, *const c_char, *mut c_char, usize) -> c_int;
    rados_aio_write_op_operate: fn(WriteOp, IoCtx, Completion, *const c_char, *mut i64, c_int) -> c_int;
    rados_aio_get_return_value: fn(Completion) -> c_int;
    rados_aio_release: fn(Completion) -> ();
    rados_buffer_free: fn(*mut c_char) -> ();
    rados_decode_notify_response: fn(*mut c_char, usize, *mut *mut NotifyAck, *mut usize, *mut *mut c_void, *mut usize) -> c_int;
    rados_free_notify_response: fn(*mut NotifyAck, usize, *mut c_void) -> ();
    rbd_open: fn(IoCtx, *const c_char, *mut Image, *const c_char) -> c_int;
    rbd_get_id: fn(Image, *mut c_char, usize) -> c_int;
    rbd_close: fn(Image) -> c_int;
    rbd_get_size: fn(Image, *mut u64) -> c_int;
    rbd_aio_create_completion: fn(*mut c_void, Callback, *mut Completion) -> c_int;
    rbd_aio_get_return_value: fn(Completion) -> isize;
    rbd_aio_release: fn(Completion) -> ();
    rbd_aio_read: fn(Image, u64, usize, *mut c_char, Completion) -> c_int;
    rbd_aio_writev: fn(Image, *const libc::iovec, c_int, u64, Completion) -> c_int;
    rbd_aio_flush: fn(Image, Completion) -> c_int;
    rbd_diff_iterate2: fn(Image, *const c_char, u64, u64, u8, u8, DiffCallback, *mut c_void) -> c_int;
    rbd_aio_write_zeroes: fn(Image, u64, usize, Completion, c_int, c_int) -> c_int;
    rbd_aio_compare_and_write: fn(Image, u64, usize, *const c_char, *const c_char, Completion, *mut u64, c_int) -> isize;
    rbd_lock_acquire: fn(Image, c_int) -> c_int;
    rbd_lock_release: fn(Image) -> c_int;
    rbd_lock_get_owners: fn(Image, *mut c_int, *mut *mut c_char, *mut usize) -> c_int;
    rbd_lock_get_owners_cleanup: fn(*mut *mut c_char, usize) -> ();
    rbd_lock_break: fn(Image, c_int, *const c_char) -> c_int;
    rbd_create: fn(IoCtx, *const c_char, u64, *mut c_int) -> c_int;
    rbd_get_features: fn(Image, *mut u64) -> c_int;
    rbd_update_watch: fn(Image, *mut u64, UpdateCallback, *mut c_void) -> c_int;
    rbd_update_unwatch: fn(Image, u64) -> c_int;
    rbd_update_features: fn(Image, u64, u8) -> c_int;
    rados_read: fn(IoCtx, *const c_char, *mut c_char, usize, u64) -> c_int;
    rados_write_full: fn(IoCtx, *const c_char, *const c_char, usize) -> c_int;
    rados_remove: fn(IoCtx, *const c_char) -> c_int;
    rados_stat: fn(IoCtx, *const c_char, *mut u64, *mut i64) -> c_int;
    rados_getxattrs: fn(IoCtx, *const c_char, *mut XattrsIter) -> c_int;
    rados_getxattrs_next: fn(XattrsIter, *mut *const c_char, *mut *const c_char, *mut usize) -> c_int;
    rados_getxattrs_end: fn(XattrsIter) -> ();
    rados_pool_list: fn(RadosT, *mut c_char, usize) -> c_int;
    rados_getaddrs: fn(RadosT, *mut *mut c_char) -> c_int;
    rados_blocklist_add: fn(RadosT, *mut c_char, u32) -> c_int;
    rados_getxattr: fn(IoCtx, *const c_char, *const c_char, *mut c_char, usize) -> c_int;
}

static API: OnceLock<Result<Api, String>> = OnceLock::new();

/// The loaded API, or why it could not be loaded.
pub fn api() -> Result<&'static Api, String> {
    API.get_or_init(Api::load).as_ref().map_err(Clone::clone)
}
