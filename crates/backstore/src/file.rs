//! The file engine: a (sparse) regular file, or a memfd for the `memory` backstore.
//!
//! I/O runs on tokio's blocking pool with positioned reads and writes, so no file offset is
//! shared. A reader-writer lock makes COMPARE AND WRITE atomic against every other write: writes
//! hold it shared (uncontended, one atomic operation), compare-and-write holds it exclusively.
//! Thin provisioning uses `fallocate(PUNCH_HOLE)` (reads of a hole return zeroes: LBPRZ) and
//! `lseek(SEEK_DATA/SEEK_HOLE)` for allocation status. Ownership is an OFD lock (`F_OFD_SETLK`),
//! which another process — another gateway on a shared file system — sees.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use bytes::{Bytes, BytesMut};

use crate::metadata::Metadata;
use crate::{
    check_range, BackstoreError, BlockDevice, Capabilities, DataOutBuffer, Extent, FileExtent,
    Member, Publish, Result, Standing,
};

struct Inner {
    file: File,
    size: u64,
    /// Shared by writes, exclusive for compare-and-write.
    write_order: RwLock<()>,
    /// Where metadata lives: a sidecar directory beside the file, or memory for a memfd.
    meta: Metadata,
    path: Option<PathBuf>,
    /// This open file description holds the OFD lock.
    lock_held: std::sync::atomic::AtomicBool,
    /// This gateway's presence file (`present.<tag>` in the sidecar directory) and its tag,
    /// OFD-locked for as long as the device is open: the kernel releases it when the
    /// process dies, which is how the other gateways see it gone.
    presence: std::sync::Mutex<Option<(u16, File)>>,
    /// What the presence file says ([`Standing`] as u8).
    said: std::sync::atomic::AtomicU8,
    /// The file lives in memory (tmpfs, a memfd): its I/O never waits for a device, so it
    /// runs on the calling thread instead of paying a hand-off to the blocking pool.
    in_memory: bool,
}

/// Reads from this size on are sent from the file (see `read_extent`).
const EXTENT_MIN: usize = 64 * 1024;

impl AsRawFd for Inner {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

/// A block device over a file descriptor.
#[derive(Clone)]
pub struct FileDevice {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FileDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "FileDevice({:?}, {} bytes)",
            self.inner.path, self.inner.size
        )
    }
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

impl FileDevice {
    /// Opens `path`; when it does not exist and `create_size` is given, creates it sparse.
    pub fn open(path: &Path, create_size: Option<u64>) -> Result<Self> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound && create_size.is_some() => {
                create_sized(path, create_size.unwrap_or(0))?
            }
            Err(e) => {
                return Err(BackstoreError::Io(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", path.display()),
                )))
            }
        };
        let md = file.metadata()?;
        if !md.is_file() {
            return Err(BackstoreError::Other(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        Ok(Self::from_file(
            file,
            md.len(),
            Metadata::sidecar(path)?,
            Some(path.to_path_buf()),
        ))
    }

    /// A memory-backed device of `size` bytes: an anonymous memfd, sparse until written.
    pub fn memory(size: u64) -> Result<Self> {
        // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd or -1.
        let fd = unsafe { libc::memfd_create(c"rbdgw-memory".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(errno().into());
        }
        // SAFETY: fd is a freshly created descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size)?;
        Ok(Self::from_file(file, size, Metadata::memory(), None))
    }

    fn from_file(file: File, size: u64, meta: Metadata, path: Option<PathBuf>) -> Self {
        FileDevice {
            inner: Arc::new(Inner {
                lock_held: std::sync::atomic::AtomicBool::new(false),
                said: std::sync::atomic::AtomicU8::new(Standing::Serving as u8),
                presence: std::sync::Mutex::new(None),
                in_memory: on_tmpfs(&file),
                file,
                size,
                write_order: RwLock::new(()),
                meta,
                path,
            }),
        }
    }

    /// Copies `len` bytes of `src` from `src_off` to this file at `offset` inside the kernel
    /// (copy_file_range(2)): the data never passes through user memory. `Ok(false)` when the
    /// kernel cannot for these two files (another file system: a memory LU and a file; a
    /// kernel without it) and nothing was copied: the caller reads and writes instead.
    pub async fn copy_from_file(
        &self,
        src: &FileDevice,
        src_off: u64,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> Result<bool> {
        check_range(src_off, len, src.inner.size)?;
        check_range(offset, len, self.inner.size)?;
        let from = src.inner.clone();
        self.blocking(move |i| {
            let _g = i.shared();
            let (mut s, mut d) = (src_off as i64, offset as i64);
            let mut left = len;
            while left > 0 {
                // SAFETY: two open descriptors and offsets owned by this frame; the kernel
                // copies between the files and advances the offsets.
                let n = unsafe {
                    libc::copy_file_range(
                        from.file.as_raw_fd(),
                        &mut s,
                        i.file.as_raw_fd(),
                        &mut d,
                        left as usize,
                        0,
                    )
                };
                if n < 0 {
                    let e = errno();
                    let unsupported = matches!(
                        e.raw_os_error(),
                        Some(libc::EXDEV)
                            | Some(libc::EINVAL)
                            | Some(libc::ENOSYS)
                            | Some(libc::EOPNOTSUPP)
                    );
                    if unsupported && left == len {
                        return Ok(false);
                    }
                    return Err(e.into());
                }
                if n == 0 {
                    return Err(BackstoreError::Other(
                        "copy_file_range: the source ended early".into(),
                    ));
                }
                left -= n as u64;
            }
            if fua {
                i.file.sync_data()?;
            }
            Ok(true)
        })
        .await
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| BackstoreError::Other(format!("I/O task failed: {e}")))?
    }
}

/// Whether `file` is on tmpfs (which memfds are too).
fn on_tmpfs(file: &File) -> bool {
    const TMPFS_MAGIC: libc::c_long = 0x0102_1994;
    // SAFETY: statfs is plain data, filled by the kernel for an fd we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    r == 0 && st.f_type as libc::c_long == TMPFS_MAGIC
}

/// One `preadv2` with `RWF_NOWAIT`: done only if the page cache can serve it at once. `None`
/// when the kernel would block (or cannot say), and the caller goes to the blocking pool.
fn read_nowait_into(fd: i32, buf: *mut u8, len: usize, offset: u64) -> Option<std::io::Result<()>> {
    let iov = libc::iovec {
        iov_base: buf as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: one iovec over a buffer valid for `len` bytes.
    let n = unsafe { libc::preadv2(fd, &iov, 1, offset as i64, libc::RWF_NOWAIT) };
    if n == len as isize {
        return Some(Ok(()));
    }
    if n >= 0 {
        // Partly cached (or short): the blocking path redoes the whole range.
        return None;
    }
    let e = errno();
    if would_block(&e) {
        return None;
    }
    Some(Err(e))
}

/// Errors of an `RWF_NOWAIT` call that mean "do it the blocking way".
fn would_block(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOSYS)
    )
}

/// Writes every part of `data` at `offset` with `pwritev2(flags)`, as few calls as the
/// iovec batch allows. With `RWF_NOWAIT` it returns `Ok(false)` as soon as the kernel would
/// block; the caller then writes the whole range again the blocking way (the same bytes,
/// so what was already written does not matter).
fn pwritev_all(
    fd: i32,
    data: &DataOutBuffer,
    offset: u64,
    flags: libc::c_int,
) -> std::io::Result<bool> {
    const BATCH: usize = 64;
    let parts = data.parts();
    // Position: part index and the offset inside it.
    let (mut part, mut skip) = (0usize, 0usize);
    let mut at = offset;
    while part < parts.len() {
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        let mut n_iov = 0;
        for (k, p) in parts[part..].iter().take(BATCH).enumerate() {
            let from = if k == 0 { skip } else { 0 };
            iov[k] = libc::iovec {
                iov_base: p[from..].as_ptr() as *mut libc::c_void,
                iov_len: p.len() - from,
            };
            n_iov = k + 1;
        }
        // SAFETY: the iovecs point into `data`'s parts, alive and unchanged during the call,
        // which only reads them.
        let n = unsafe { libc::pwritev2(fd, iov.as_ptr(), n_iov as i32, at as i64, flags) };
        if n < 0 {
            let e = errno();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            if flags & libc::RWF_NOWAIT != 0 && would_block(&e) {
                return Ok(false);
            }
            return Err(e);
        }
        if n == 0 {
            return Err(ErrorKind::WriteZero.into());
        }
        at += n as u64;
        let mut n = n as usize;
        while n > 0 {
            let left = parts[part].len() - skip;
            if n >= left {
                n -= left;
                part += 1;
                skip = 0;
            } else {
                skip += n;
                n = 0;
            }
        }
    }
    Ok(true)
}

/// Reads exactly `len` bytes at `offset` into uninitialised memory (zeroing a buffer the read
/// overwrites anyway showed in the profile of 1 MiB reads). A file that ends first is an
/// error, never short data.
pub(crate) fn pread_exact(fd: i32, offset: u64, len: usize) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(len);
    while buf.len() < len {
        let got = buf.len();
        // SAFETY: the spare capacity is valid for `len - got` bytes from `got`; pread writes at
        // most that, and only the bytes it reports are exposed by set_len.
        let n = unsafe {
            libc::pread(
                fd,
                buf.as_mut_ptr().add(got) as *mut libc::c_void,
                len - got,
                (offset + got as u64) as i64,
            )
        };
        match n {
            // SAFETY: as above.
            n if n > 0 => unsafe { buf.set_len(got + n as usize) },
            0 => return Err(ErrorKind::UnexpectedEof.into()),
            _ => {
                let e = errno();
                if e.kind() != ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(buf.freeze())
}

impl Inner {
    /// Reads from memory or the page cache without leaving the calling thread, if it can.
    fn read_nowait(&self, offset: u64, len: usize) -> Option<Result<Bytes>> {
        if self.in_memory {
            return Some(self.read_range(offset, len));
        }
        // Into uninitialised memory, as pread_exact.
        let mut buf = BytesMut::with_capacity(len);
        match read_nowait_into(self.file.as_raw_fd(), buf.as_mut_ptr(), len, offset)? {
            Ok(()) => {
                // SAFETY: the read filled all `len` bytes (it succeeds only when it did).
                unsafe { buf.set_len(len) };
                Some(Ok(buf.freeze()))
            }
            Err(e) => Some(Err(e.into())),
        }
    }

    /// Writes into memory or the page cache without leaving the calling thread, if it can.
    fn write_nowait(&self, offset: u64, data: &DataOutBuffer) -> Option<Result<()>> {
        let _g = self.shared();
        let flags = if self.in_memory { 0 } else { libc::RWF_NOWAIT };
        match pwritev_all(self.file.as_raw_fd(), data, offset, flags) {
            Ok(true) => Some(Ok(())),
            Ok(false) => None,
            Err(e) => Some(Err(e.into())),
        }
    }

    fn read_range(&self, offset: u64, len: usize) -> Result<Bytes> {
        Ok(pread_exact(self.file.as_raw_fd(), offset, len)?)
    }

    fn shared(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        // A panic while holding the lock cannot leave file data inconsistent: ignore poison.
        self.write_order.read().unwrap_or_else(|e| e.into_inner())
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> std::io::Result<()> {
        // SAFETY: plain syscall on an fd we own.
        let r = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset as i64, len as i64) };
        if r == 0 {
            Ok(())
        } else {
            Err(errno())
        }
    }

    fn zero_by_writing(&self, offset: u64, len: u64) -> std::io::Result<()> {
        const CHUNK: u64 = 1 << 20;
        let zeroes = vec![0u8; CHUNK.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = CHUNK.min(len - done) as usize;
            self.file.write_all_at(&zeroes[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    fn seek(&self, offset: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
        // SAFETY: plain syscall on an fd we own.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), offset as i64, whence) };
        if r >= 0 {
            Ok(Some(r as u64))
        } else {
            let e = errno();
            if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(None)
            } else {
                Err(e)
            }
        }
    }

    fn ofd_lock(&self, kind: libc::c_short) -> std::io::Result<bool> {
        ofd_lock(&self.file, kind)
    }

    /// Takes this gateway's presence lock once.
    /// Joins as TPG `tag`, or says its new standing: the presence file holds `starting` or
    /// `draining`, and nothing while serving.
    fn join(&self, tag: u16, standing: Standing) -> Result<()> {
        let mut p = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, f)) = p.as_ref().filter(|(t, _)| *t == tag) {
            if self.meta.dir().is_some() {
                say(f, standing)?;
            }
            // Only once the file says so (a failed write is tried again at the next beat).
            self.said
                .store(standing as u8, std::sync::atomic::Ordering::Release);
            return Ok(());
        }
        let Some(dir) = self.meta.dir() else {
            *p = Some((tag, self.file.try_clone()?));
            return Ok(());
        };
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(format!("present.{tag}")))?;
        if !ofd_lock(&f, libc::F_WRLCK as libc::c_short)? {
            return Err(BackstoreError::Other(format!(
                "another live gateway already serves TPG {tag} on {} (two hosts with one portal?)",
                self.path.as_deref().unwrap_or(Path::new("?")).display()
            )));
        }
        say(&f, standing)?;
        self.said
            .store(standing as u8, std::sync::atomic::Ordering::Release);
        *p = Some((tag, f));
        Ok(())
    }

    /// The gateways whose presence file is locked, and this one.
    fn members(&self) -> Result<Vec<Member>> {
        let mine = self
            .presence
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(t, _)| *t);
        let mut out: Vec<Member> = mine
            .map(|tag| Member {
                tag,
                holds_lock: self.lock_held.load(std::sync::atomic::Ordering::Acquire),
                starting: false,
                draining: self.said.load(std::sync::atomic::Ordering::Acquire)
                    == Standing::Draining as u8,
            })
            .into_iter()
            .collect();
        let Some(dir) = self.meta.dir() else {
            return Ok(out);
        };
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(tag) = name
                .to_str()
                .and_then(|n| n.strip_prefix("present."))
                .and_then(|t| t.parse::<u16>().ok())
            else {
                continue;
            };
            if Some(tag) == mine {
                continue;
            }
            let f = match File::open(e.path()) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            if ofd_locked(&f)? {
                let mut said = [0u8; 16];
                let n = std::io::Read::read(&mut (&f), &mut said).unwrap_or(0);
                let standing = std::str::from_utf8(&said[..n])
                    .ok()
                    .and_then(Standing::from_word)
                    .unwrap_or_default();
                out.push(Member {
                    tag,
                    holds_lock: false,
                    starting: standing == Standing::Starting,
                    draining: standing == Standing::Draining,
                });
            }
        }
        out.sort_by_key(|m| m.tag);
        Ok(out)
    }
}

/// Writes a presence file's content: its gateway's standing word (nothing while serving).
fn say(f: &File, standing: Standing) -> Result<()> {
    f.set_len(0)?;
    f.write_all_at(standing.word().as_bytes(), 0)?;
    Ok(())
}

/// Creates the missing image `path` with `size` bytes, atomically: the file is sized under a
/// temporary name and linked into place, so a gateway opening it at the same moment sees it
/// whole or not at all; when another gateway created it first, its file is opened instead.
fn create_sized(path: &Path, size: u64) -> Result<File> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".creating.{}.{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let tmp = PathBuf::from(tmp);
    let made = (|| {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.set_len(size)?;
        // link(2) fails with EEXIST instead of replacing: never two images at one path.
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), size, "created the missing image file");
                Ok(f)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                OpenOptions::new().read(true).write(true).open(path)
            }
            Err(e) => Err(e),
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    made.map_err(|e| {
        BackstoreError::Io(std::io::Error::new(
            e.kind(),
            format!("creating {}: {e}", path.display()),
        ))
    })
}

/// Sets (or clears) an OFD lock on the whole of `file`; false when another holder has it.
fn ofd_lock(file: &File, kind: libc::c_short) -> std::io::Result<bool> {
    // SAFETY: flock is plain data; zeroed is a valid "whole file" range.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_OFD_SETLK with a valid flock pointer.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
    if r == 0 {
        return Ok(true);
    }
    let e = errno();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}

/// Whether another open file description holds a lock on `file`.
fn ofd_locked(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock is plain data; zeroed is a valid "whole file" range.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_OFD_GETLK with a valid flock pointer.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) } != 0 {
        return Err(errno());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.inner.size
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            discard_zeroes: true,
            allocation_status: true,
        }
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Bytes> {
        check_range(offset, len as u64, self.inner.size)?;
        // Cached data is copied here; a thread hand-off to the blocking pool costs more than
        // the copy (most of the CPU per I/O in a profile of 4 KiB reads).
        if let Some(r) = self.inner.read_nowait(offset, len) {
            return r;
        }
        self.blocking(move |i| i.read_range(offset, len)).await
    }

    fn read_extent(&self, offset: u64, len: usize) -> Option<FileExtent> {
        // Only from memory: sendfile from a file on a disk would wait for the disk on the
        // connection's thread. Only large reads: a few KiB cost less to copy than the system
        // calls of sending them apart from the responses batched around them (4 KiB reads at
        // queue depth 32 lost 11% that way).
        (self.inner.in_memory
            && len >= EXTENT_MIN
            && check_range(offset, len as u64, self.inner.size).is_ok())
        .then(|| FileExtent::new(self.inner.clone(), offset, len))
    }

    async fn write(&self, offset: u64, data: DataOutBuffer, fua: bool) -> Result<()> {
        check_range(offset, data.len() as u64, self.inner.size)?;
        if !fua {
            if let Some(r) = self.inner.write_nowait(offset, &data) {
                return r;
            }
        }
        self.blocking(move |i| {
            let _g = i.shared();
            pwritev_all(i.file.as_raw_fd(), &data, offset, 0)?;
            if fua {
                i.file.sync_data()?;
            }
            Ok(())
        })
        .await
    }

    async fn flush(&self) -> Result<()> {
        self.blocking(|i| Ok(i.file.sync_data()?)).await
    }

    async fn copy_from(
        &self,
        src: &Self,
        src_off: u64,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> Result<bool> {
        self.copy_from_file(src, src_off, offset, len, fua).await
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.inner.size)?;
        self.blocking(move |i| {
            let _g = i.shared();
            match i.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ) {
                Ok(()) => Ok(()),
                // A file system without hole punching still owes zeroes (we advertise LBPRZ).
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    Ok(i.zero_by_writing(offset, len)?)
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.inner.size)?;
        self.blocking(move |i| {
            let _g = i.shared();
            match i.fallocate(
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ) {
                Ok(()) => Ok(()),
                Err(_) => Ok(i.zero_by_writing(offset, len)?),
            }
        })
        .await
    }

    async fn compare_and_write(
        &self,
        offset: u64,
        compare: Bytes,
        data: Bytes,
    ) -> Result<Option<u64>> {
        check_range(
            offset,
            compare.len().max(data.len()) as u64,
            self.inner.size,
        )?;
        self.blocking(move |i| {
            let _g = i.write_order.write().unwrap_or_else(|e| e.into_inner());
            let current = i.read_range(offset, compare.len())?;
            if let Some(pos) = current.iter().zip(compare.iter()).position(|(a, b)| a != b) {
                return Ok(Some(pos as u64));
            }
            i.file.write_all_at(&data, offset)?;
            Ok(None)
        })
        .await
    }

    async fn allocation(&self, offset: u64, len: u64) -> Result<Extent> {
        let size = self.inner.size;
        check_range(offset, len, size)?;
        self.blocking(move |i| {
            let end = offset + len;
            let data = i.seek(offset, libc::SEEK_DATA)?.unwrap_or(size);
            if data > offset {
                // A hole from offset up to the next data.
                return Ok(Extent {
                    offset,
                    len: data.min(end) - offset,
                    mapped: false,
                });
            }
            let hole = i.seek(offset, libc::SEEK_HOLE)?.unwrap_or(size);
            Ok(Extent {
                offset,
                len: hole.min(end).max(offset + 1) - offset,
                mapped: true,
            })
        })
        .await
    }

    async fn metadata_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let key = key.to_string();
        self.blocking(move |i| i.meta.get(&key)).await
    }

    // Every gateway reads the sidecar itself: stored is seen.
    async fn metadata_set(&self, key: &str, value: Vec<u8>, _publish: Publish) -> Result<()> {
        let key = key.to_string();
        self.blocking(move |i| i.meta.set(&key, &value)).await
    }

    async fn metadata_compare_and_set(
        &self,
        key: &str,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        _publish: Publish,
    ) -> Result<bool> {
        let key = key.to_string();
        self.blocking(move |i| {
            i.meta
                .compare_and_set(&key, expected.as_deref(), &value, true)
        })
        .await
    }

    fn metadata_generation(&self) -> u64 {
        self.inner.meta.generation()
    }

    async fn try_acquire_ownership(&self) -> Result<bool> {
        self.blocking(|i| {
            let taken = i.ofd_lock(libc::F_WRLCK as libc::c_short)?;
            if taken {
                i.lock_held
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            Ok(taken)
        })
        .await
    }

    async fn release_ownership(&self) -> Result<()> {
        self.blocking(|i| {
            i.lock_held
                .store(false, std::sync::atomic::Ordering::Release);
            i.ofd_lock(libc::F_UNLCK as libc::c_short)?;
            Ok(())
        })
        .await
    }

    fn holds_ownership(&self) -> bool {
        self.inner
            .lock_held
            .load(std::sync::atomic::Ordering::Acquire)
    }

    async fn break_ownership(&self) -> Result<bool> {
        Ok(false)
    }

    async fn heartbeat(&self, tag: u16, standing: Standing) -> Result<()> {
        let joined = self
            .inner
            .presence
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|(t, _)| *t == tag);
        let said = self.inner.said.load(std::sync::atomic::Ordering::Acquire);
        if joined && said == standing as u8 {
            return Ok(());
        }
        self.blocking(move |i| i.join(tag, standing)).await
    }

    async fn members(&self) -> Result<Vec<Member>> {
        self.blocking(|i| i.members()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test's scratch directory, removed with what it holds when the test ends.
    fn tmpdir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("rbdgw-bs-")
            .tempdir()
            .unwrap()
    }

    /// Gateways starting together on a missing image: every one opens it, none sees it short
    /// (it was `File exists` for the losers, and 0 bytes for a moment).
    #[test]
    fn concurrent_creation_of_a_missing_image() {
        let d = tmpdir();
        for round in 0..20 {
            let path = d.path().join(format!("new-{round}.img"));
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let p = path.clone();
                    std::thread::spawn(move || {
                        FileDevice::open(&p, Some(1 << 20)).map(|f| f.size())
                    })
                })
                .collect();
            for t in threads {
                assert_eq!(t.join().unwrap().unwrap(), 1 << 20, "round {round}");
            }
            let left: Vec<_> = std::fs::read_dir(&d)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().contains(".creating."))
                .collect();
            assert!(left.is_empty(), "no temporary file left");
        }
    }

    async fn exercise(dev: FileDevice) {
        assert_eq!(dev.size(), 1 << 20);
        dev.write(4096, Bytes::from(vec![7u8; 8192]).into(), false)
            .await
            .unwrap();
        assert_eq!(&dev.read(4096, 8192).await.unwrap()[..], &[7u8; 8192][..]);
        // A write in many parts (more than one pwritev batch), inline and durable.
        for fua in [false, true] {
            let parts: Vec<Bytes> = (0..150u32)
                .map(|i| {
                    Bytes::from(vec![
                        (i as u8).wrapping_add(fua as u8);
                        1 + (i as usize * 7) % 97
                    ])
                })
                .collect();
            let whole = parts.concat();
            let data = DataOutBuffer::from_parts(parts);
            dev.write(200_000, data, fua).await.unwrap();
            assert_eq!(dev.read(200_000, whole.len()).await.unwrap(), whole);
        }
        assert!(matches!(
            dev.read((1 << 20) - 1, 2).await,
            Err(BackstoreError::OutOfRange { .. })
        ));
        // Compare and write: mismatch offset, then success.
        let mut cmp = vec![7u8; 512];
        cmp[100] = 1;
        let r = dev
            .compare_and_write(4096, Bytes::from(cmp), Bytes::from(vec![9u8; 512]))
            .await
            .unwrap();
        assert_eq!(r, Some(100));
        let r = dev
            .compare_and_write(
                4096,
                Bytes::from(vec![7u8; 512]),
                Bytes::from(vec![9u8; 512]),
            )
            .await
            .unwrap();
        assert_eq!(r, None);
        assert_eq!(&dev.read(4096, 512).await.unwrap()[..], &[9u8; 512][..]);
        // Discard reads back as zeroes and becomes a hole.
        dev.discard(0, 65536).await.unwrap();
        assert_eq!(&dev.read(4096, 512).await.unwrap()[..], &[0u8; 512][..]);
        let e = dev.allocation(0, 1 << 20).await.unwrap();
        assert!(!e.mapped);
        dev.write(131072, Bytes::from(vec![1u8; 4096]).into(), true)
            .await
            .unwrap();
        let e = dev.allocation(131072, 4096).await.unwrap();
        assert!(e.mapped, "{e:?}");
        dev.write_zeroes(131072, 4096).await.unwrap();
        assert_eq!(&dev.read(131072, 4096).await.unwrap()[..], &[0u8; 4096][..]);
        // Metadata round trip.
        assert_eq!(dev.metadata_get("pr").await.unwrap(), None);
        dev.metadata_set("pr", b"v1".to_vec(), Publish::SeenByAll)
            .await
            .unwrap();
        assert_eq!(dev.metadata_get("pr").await.unwrap(), Some(b"v1".to_vec()));
        dev.flush().await.unwrap();
    }

    #[tokio::test]
    async fn memory_device() {
        exercise(FileDevice::memory(1 << 20).unwrap()).await;
    }

    /// copy_file_range between two files of one file system; a memory device and a file are
    /// two file systems: nothing copied, the caller is told to read and write.
    #[tokio::test]
    async fn files_copy_inside_the_kernel() {
        let d = tmpdir();
        let a = FileDevice::open(&d.path().join("a"), Some(1 << 20)).unwrap();
        let b = FileDevice::open(&d.path().join("b"), Some(1 << 20)).unwrap();
        let data = Bytes::from(vec![0xab; 64 << 10]);
        a.write(4096, data.clone().into(), false).await.unwrap();
        assert!(b.copy_from(&a, 4096, 65536, 64 << 10, true).await.unwrap());
        assert_eq!(b.read(65536, 64 << 10).await.unwrap(), data);
        assert!(
            b.copy_from(&a, 1 << 20, 0, 512, false).await.is_err(),
            "past the end"
        );
        let m = FileDevice::memory(1 << 20).unwrap();
        assert!(!m.copy_from(&a, 4096, 0, 4096, false).await.unwrap());
    }

    #[tokio::test]
    async fn file_device_and_ownership() {
        let d = tmpdir();
        let p = d.path().join("img");
        assert!(
            FileDevice::open(&p, None).is_err(),
            "missing file without size"
        );
        let dev = FileDevice::open(&p, Some(1 << 20)).unwrap();
        exercise(dev.clone()).await;
        // A second open file description is another gateway: the lock excludes it.
        let other = FileDevice::open(&p, None).unwrap();
        assert!(dev.try_acquire_ownership().await.unwrap());
        assert!(!other.try_acquire_ownership().await.unwrap());
        dev.release_ownership().await.unwrap();
        assert!(other.try_acquire_ownership().await.unwrap());
        assert_eq!(
            other.metadata_get("pr").await.unwrap(),
            Some(b"v1".to_vec()),
            "metadata is shared"
        );
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[cfg(test)]
mod metadata_tests {
    use super::*;

    #[tokio::test]
    async fn compare_and_set_and_generation_are_shared_between_opens() {
        let d = tempfile::Builder::new()
            .prefix("rbdgw-meta-")
            .tempdir()
            .unwrap();
        let p = d.path().join("img");
        let a = FileDevice::open(&p, Some(1 << 20)).unwrap();
        let b = FileDevice::open(&p, None).unwrap();
        let g0 = b.metadata_generation();
        assert!(a
            .metadata_compare_and_set("k", None, b"1".to_vec(), Publish::SeenByAll)
            .await
            .unwrap());
        assert!(
            b.metadata_generation() > g0,
            "the other open sees the change at once"
        );
        assert!(
            !b.metadata_compare_and_set("k", None, b"2".to_vec(), Publish::SeenByAll)
                .await
                .unwrap(),
            "stale expectation"
        );
        assert!(b
            .metadata_compare_and_set("k", Some(b"1".to_vec()), b"2".to_vec(), Publish::SeenByAll)
            .await
            .unwrap());
        assert_eq!(a.metadata_get("k").await.unwrap(), Some(b"2".to_vec()));
        assert!(
            a.metadata_get("../etc").await.is_err(),
            "keys cannot leave the sidecar"
        );
        d.close().unwrap();
    }
}
