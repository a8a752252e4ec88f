//! Small persistent metadata kept beside an image (persistent reservations, the ALUA owner),
//! shared by every gateway that opens the image.
//!
//! For a file image it is a sidecar directory `<image>.rbdgw/`: one file per key, replaced by
//! write-sync-rename; read-compare-write under `flock` on `lock`; and `generation`, an 8-byte
//! counter mapped shared into every gateway's memory, bumped on each change, so a gateway
//! notices another's change with one memory read per command. For a memfd image (memory
//! backstore, private to one gateway) the same lives in process memory.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::Result;

/// The counter page, mapped `MAP_SHARED`.
pub(crate) struct SharedCounter {
    ptr: NonNull<AtomicU64>,
    _file: File,
}

// SAFETY: the mapping is only accessed through AtomicU64 operations, valid while `self` lives.
unsafe impl Send for SharedCounter {}
// SAFETY: as above; atomics make concurrent access sound.
unsafe impl Sync for SharedCounter {}

impl SharedCounter {
    fn open(path: &Path) -> std::io::Result<SharedCounter> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if file.metadata()?.len() < 8 {
            file.set_len(8)?;
        }
        // SAFETY: mapping 8 bytes of a file we hold open, shared, read-write; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // Page-aligned, so aligned for AtomicU64.
        let ptr = NonNull::new(p as *mut AtomicU64)
            .ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(SharedCounter { ptr, _file: file })
    }

    fn get(&self) -> &AtomicU64 {
        // SAFETY: ptr is a live, aligned mapping of at least 8 bytes (see open).
        unsafe { self.ptr.as_ref() }
    }
}

impl Drop for SharedCounter {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what open mapped.
        unsafe { libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, 8) };
    }
}

pub(crate) enum Metadata {
    Dir {
        dir: PathBuf,
        generation: SharedCounter,
    },
    Memory {
        values: Mutex<HashMap<String, Vec<u8>>>,
        generation: AtomicU64,
    },
}

/// Keys are ours (short identifiers); refuse anything that could leave the directory.
fn check_key(key: &str) -> Result<()> {
    if key.is_empty()
        || !key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
    {
        return Err(crate::BackstoreError::Other(format!(
            "invalid metadata key {key:?}"
        )));
    }
    Ok(())
}

impl Metadata {
    pub fn sidecar(image: &Path) -> Result<Metadata> {
        let mut dir = image.as_os_str().to_owned();
        dir.push(".rbdgw");
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir)?;
        let generation = SharedCounter::open(&dir.join("generation"))?;
        Ok(Metadata::Dir { dir, generation })
    }

    pub fn memory() -> Metadata {
        Metadata::Memory {
            values: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    /// The sidecar directory, when there is one.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            Metadata::Dir { dir, .. } => Some(dir),
            Metadata::Memory { .. } => None,
        }
    }

    pub fn generation(&self) -> u64 {
        match self {
            Metadata::Dir { generation, .. } => generation.get().load(Ordering::Acquire),
            Metadata::Memory { generation, .. } => generation.load(Ordering::Acquire),
        }
    }

    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        match self {
            Metadata::Memory { values, .. } => Ok(values
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(key)
                .cloned()),
            Metadata::Dir { dir, .. } => match std::fs::read(dir.join(key)) {
                Ok(v) => Ok(Some(v)),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.compare_and_set(key, None, value, false).map(|_| ())
    }

    /// With `compare`, writes only if the value is `expected`.
    pub fn compare_and_set(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        compare: bool,
    ) -> Result<bool> {
        check_key(key)?;
        match self {
            Metadata::Memory { values, generation } => {
                let mut m = values.lock().unwrap_or_else(|e| e.into_inner());
                if compare && m.get(key).map(Vec::as_slice) != expected {
                    return Ok(false);
                }
                m.insert(key.to_string(), value.to_vec());
                generation.fetch_add(1, Ordering::AcqRel);
                Ok(true)
            }
            Metadata::Dir { dir, generation } => {
                let lock = File::create(dir.join("lock"))?;
                // SAFETY: flock on a descriptor we own; released when `lock` is closed.
                if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
                    return Err(std::io::Error::last_os_error().into());
                }
                if compare {
                    let current = self.get(key)?;
                    if current.as_deref() != expected {
                        return Ok(false);
                    }
                }
                // Write, sync, rename: a crash leaves the old value or the new one.
                let tmp = dir.join(format!(".{key}.tmp.{}", std::process::id()));
                let mut f = File::create(&tmp)?;
                f.write_all(value)?;
                f.sync_all()?;
                std::fs::rename(&tmp, dir.join(key))?;
                File::open(dir)?.sync_all()?;
                generation.get().fetch_add(1, Ordering::AcqRel);
                Ok(true)
            }
        }
    }
}
