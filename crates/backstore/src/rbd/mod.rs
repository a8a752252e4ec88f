//! The `rbd` engine: an RBD image through librbd's asynchronous API, completions delivered
//! into tokio by librbd's callback thread (no thread per I/O). Every image feature stays on:
//! exclusive-lock, object-map, fast-diff, deep-flatten.
//!
//! Buffers belong to the completion context, not to the awaiting future: if a command is
//! aborted while librbd still fills its read buffer, the buffer lives until the callback.

mod ffi;
mod state;

use std::ffi::{c_int, c_void, CString};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use crate::{check_range, BackstoreError, BlockDevice, Capabilities, Extent, Result};
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
}

struct Handle {
    cluster: ffi::RadosT,
    ioctx: ffi::IoCtx,
    image: ffi::Image,
    /// Dropped first (declared in Drop before the image closes).
    state: Option<state::SharedState>,
}

// SAFETY: librados and librbd handles are thread-safe (the C API is used from many threads).
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Ok(a) = api() {
            // The watch goes before the ioctx it lives on.
            self.state = None;
            // SAFETY: closing handles we opened, once, in reverse order.
            unsafe {
                if !self.image.is_null() {
                    (a.rbd_close)(self.image);
                }
                if !self.ioctx.is_null() {
                    (a.rados_ioctx_destroy)(self.ioctx);
                }
                if !self.cluster.is_null() {
                    (a.rados_shutdown)(self.cluster);
                }
            }
        }
    }
}

/// An open RBD image.
#[derive(Clone)]
pub struct RbdDevice {
    h: Arc<Handle>,
    size: u64,
    name: String,
}

impl std::fmt::Debug for RbdDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RbdDevice({}, {} bytes)", self.name, self.size)
    }
}

impl Handle {
    fn state(&self) -> Result<&state::SharedState> {
        self.state
            .as_ref()
            .ok_or_else(|| BackstoreError::Other("image state is not open".into()))
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
    BackstoreError::Io(std::io::Error::new(
        std::io::Error::from_raw_os_error((-rc) as i32).kind(),
        format!(
            "{what}: {}",
            std::io::Error::from_raw_os_error((-rc) as i32)
        ),
    ))
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

extern "C" fn on_complete(c: Completion, arg: *mut c_void) {
    let Ok(a) = api() else { return };
    // SAFETY: `c` is the completion librbd calls us for; `arg` is the Box<Ctx> leaked at
    // submission, reclaimed exactly once here.
    let (ret, ctx) = unsafe {
        let ret = (a.rbd_aio_get_return_value)(c);
        (a.rbd_aio_release)(c);
        (ret, Box::from_raw(arg as *mut Ctx))
    };
    let Ctx {
        tx, buf, mismatch, ..
    } = *ctx;
    let _ = tx.send(Done { ret, buf, mismatch });
}

impl RbdDevice {
    /// Connects to the cluster and opens the image (blocking: call from a blocking context
    /// or at start-up).
    pub fn open(cfg: &RbdConfig) -> Result<RbdDevice> {
        let a = api().map_err(BackstoreError::Other)?;
        let name = format!(
            "{}/{}{}",
            cfg.pool,
            cfg.namespace
                .as_ref()
                .map_or(String::new(), |n| format!("{n}/")),
            cfg.image
        );
        let mut h = Handle {
            cluster: std::ptr::null_mut(),
            ioctx: std::ptr::null_mut(),
            image: std::ptr::null_mut(),
            state: None,
        };
        let id = cfg.id.as_deref().map(cstr).transpose()?;
        let conf = cstr(&cfg.conf)?;
        let pool = cstr(&cfg.pool)?;
        let image = cstr(&cfg.image)?;
        // SAFETY: C calls with valid NUL-terminated strings and out-pointers; `h` closes
        // whatever was opened if a later step fails.
        unsafe {
            let rc = (a.rados_create)(
                &mut h.cluster,
                id.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            );
            if rc < 0 {
                return Err(ceph_err("rados_create", rc as i64));
            }
            let rc = (a.rados_conf_read_file)(h.cluster, conf.as_ptr());
            if rc < 0 {
                return Err(ceph_err(&format!("reading {}", cfg.conf), rc as i64));
            }
            let rc = (a.rados_connect)(h.cluster);
            if rc < 0 {
                return Err(ceph_err("connecting to the cluster", rc as i64));
            }
            let rc = (a.rados_ioctx_create)(h.cluster, pool.as_ptr(), &mut h.ioctx);
            if rc < 0 {
                return Err(ceph_err(&format!("opening pool {}", cfg.pool), rc as i64));
            }
            if let Some(ns) = &cfg.namespace {
                let ns = cstr(ns)?;
                (a.rados_ioctx_set_namespace)(h.ioctx, ns.as_ptr());
            }
            let rc = (a.rbd_open)(h.ioctx, image.as_ptr(), &mut h.image, std::ptr::null());
            if rc < 0 {
                return Err(ceph_err(&format!("opening image {name}"), rc as i64));
            }
            h.state = Some(state::SharedState::open(h.ioctx, h.image)?);
            let mut size = 0u64;
            let rc = (a.rbd_get_size)(h.image, &mut size);
            if rc < 0 {
                return Err(ceph_err("rbd_get_size", rc as i64));
            }
            Ok(RbdDevice {
                h: Arc::new(h),
                size,
                name,
            })
        }
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
            let rc = submit(self.h.image, c, &mut *ctx);
            if rc < 0 {
                (a.rbd_aio_release)(c);
                drop(Box::from_raw(ctx));
                return Err(ceph_err(what, rc as i64));
            }
        }
        Ok(rx)
    }

    fn check(what: &str, d: &Done) -> Result<()> {
        if d.ret < 0 {
            return Err(ceph_err(what, d.ret as i64));
        }
        Ok(())
    }
}

impl BlockDevice for RbdDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn capabilities(&self) -> Capabilities {
        // Discarded extents read back as zeroes; allocation status comes with diff-iterate later.
        Capabilities {
            discard_zeroes: true,
            allocation_status: false,
        }
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Bytes> {
        check_range(offset, len as u64, self.size)?;
        let a = api().map_err(BackstoreError::Other)?;
        let d = self
            .aio(
                "read",
                Some(BytesMut::zeroed(len)),
                Vec::new(),
                |img, c, ctx| {
                    let buf = ctx
                        .buf
                        .as_mut()
                        .map_or(std::ptr::null_mut(), |b| b.as_mut_ptr());
                    // SAFETY: the buffer lives in ctx until the callback.
                    unsafe { (a.rbd_aio_read)(img, offset, len, buf as *mut _, c) as isize }
                },
            )
            .await?;
        Self::check("read", &d)?;
        Ok(d.buf.unwrap_or_default().freeze())
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<()> {
        check_range(offset, data.len() as u64, self.size)?;
        let a = api().map_err(BackstoreError::Other)?;
        let d = self
            .aio("write", None, vec![data], |img, c, ctx| {
                let (ptr, len) = (ctx.keep[0].as_ptr(), ctx.keep[0].len());
                // SAFETY: the data is kept alive in ctx until the callback.
                unsafe { (a.rbd_aio_write)(img, offset, len, ptr as *const _, c) as isize }
            })
            .await?;
        Self::check("write", &d)?;
        if fua {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        let a = api().map_err(BackstoreError::Other)?;
        // SAFETY: plain submission on our image handle.
        let d = self
            .aio("flush", None, Vec::new(), |img, c, _| unsafe {
                (a.rbd_aio_flush)(img, c) as isize
            })
            .await?;
        Self::check("flush", &d)
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<()> {
        // librbd's discard skips partial objects (rbd_skip_partial_discard), which would break
        // LBPRZ; write_zeroes deallocates whole objects and zeroes the partial ends.
        self.write_zeroes(offset, len).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.size)?;
        let a = api().map_err(BackstoreError::Other)?;
        // SAFETY: plain submission on our image handle.
        let d = self
            .aio("write_zeroes", None, Vec::new(), |img, c, _| unsafe {
                (a.rbd_aio_write_zeroes)(img, offset, len as usize, c, 0, 0) as isize
            })
            .await?;
        Self::check("write_zeroes", &d)
    }

    async fn compare_and_write(
        &self,
        offset: u64,
        compare: Bytes,
        data: Bytes,
    ) -> Result<Option<u64>> {
        check_range(offset, data.len() as u64, self.size)?;
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
        Self::check("compare_and_write", &d)?;
        Ok(None)
    }

    async fn allocation(&self, offset: u64, len: u64) -> Result<Extent> {
        check_range(offset, len, self.size)?;
        Ok(Extent {
            offset,
            len,
            mapped: true,
        })
    }

    async fn metadata_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let (h, key) = (self.h.clone(), key.to_string());
        blocking(move || h.state()?.get(&key)).await
    }

    async fn metadata_set(&self, key: &str, value: Vec<u8>) -> Result<()> {
        let (h, key) = (self.h.clone(), key.to_string());
        blocking(move || {
            h.state()?
                .compare_and_set(&key, None, &value, false)
                .map(|_| ())
        })
        .await
    }

    async fn metadata_compare_and_set(
        &self,
        key: &str,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<bool> {
        let (h, key) = (self.h.clone(), key.to_string());
        blocking(move || {
            h.state()?
                .compare_and_set(&key, expected.as_deref(), &value, true)
        })
        .await
    }

    fn metadata_generation(&self) -> u64 {
        self.h.state.as_ref().map_or(0, |s| {
            s.watch
                .generation
                .load(std::sync::atomic::Ordering::Acquire)
        })
    }

    async fn try_acquire_ownership(&self) -> Result<bool> {
        let a = api().map_err(BackstoreError::Other)?;
        let h = self.h.clone();
        // rbd_lock_acquire blocks while librbd asks the current holder: off the runtime.
        let rc = tokio::task::spawn_blocking(move || {
            // SAFETY: plain call on our image handle.
            unsafe { (a.rbd_lock_acquire)(h.image, ffi::LOCK_MODE_EXCLUSIVE as c_int) }
        })
        .await
        .map_err(|e| BackstoreError::Other(e.to_string()))?;
        match rc {
            0 => Ok(true),
            rc if rc == -libc::EROFS || rc == -libc::EBUSY || rc == -libc::EAGAIN => Ok(false),
            rc => Err(ceph_err("rbd_lock_acquire", rc as i64)),
        }
    }

    async fn release_ownership(&self) -> Result<()> {
        let a = api().map_err(BackstoreError::Other)?;
        let h = self.h.clone();
        let rc = tokio::task::spawn_blocking(move || {
            // SAFETY: plain call on our image handle.
            unsafe { (a.rbd_lock_release)(h.image) }
        })
        .await
        .map_err(|e| BackstoreError::Other(e.to_string()))?;
        if rc < 0 && rc != -libc::EINVAL {
            return Err(ceph_err("rbd_lock_release", rc as i64));
        }
        Ok(())
    }
}
