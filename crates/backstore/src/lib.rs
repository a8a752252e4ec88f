//! The seam between SCSI logical units and storage: [`BlockDevice`].
//!
//! A backstore offers byte-addressed asynchronous I/O plus the optional capabilities SBC-3
//! commands map onto (discard for UNMAP, write_zeroes for WRITE SAME, compare_and_write for
//! COMPARE AND WRITE, allocation status for GET LBA STATUS), small persistent metadata (the
//! persistent reservation state lives there) and an ownership lock (the hook for the exclusive
//! lock that makes failover safe). librbd's aio calls map one-to-one onto this trait.
//!
//! Engines: [`file::FileDevice`] (a sparse file; `memory` is the same engine over a memfd),
//! [`rbd::RbdDevice`], [`Unopened`] (stands for a device still opening), and the enum
//! [`Device`] that the gateway holds, so dispatch costs no allocation per I/O.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;

mod data_out;
pub mod file;
mod metadata;
pub mod rbd;
mod unopened;

pub use data_out::{DataOutBuffer, FileExtent};
pub use file::FileDevice;
pub use unopened::Unopened;

#[derive(Debug, Error)]
pub enum BackstoreError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("range {offset}+{len} is beyond the end of the device ({size} bytes)")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// This node no longer owns the device (its lock was taken over, or it was fenced):
    /// it must not write.
    #[error("this gateway does not hold the device's ownership lock")]
    NotOwner,
    /// A system or Ceph call failed with `errno`.
    #[error("{what}: {}", std::io::Error::from_raw_os_error(*errno))]
    Os { what: String, errno: i32 },
    /// The device has not opened yet (see [`Unopened`]).
    #[error("the backstore is not open yet")]
    NotOpen,
    #[error("{0}")]
    Other(String),
}

impl BackstoreError {
    /// The errno behind the error, when there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            BackstoreError::Io(e) => e.raw_os_error(),
            BackstoreError::Os { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, BackstoreError>;

/// Allocation state of a range (SBC-3 §5.5 GET LBA STATUS provisioning status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub mapped: bool,
}

/// What a device does natively. The SCSI layer advertises thin provisioning from this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// `discard` frees space and later reads return zeroes (SBC-3 LBPME with LBPRZ).
    pub discard_zeroes: bool,
    /// `allocation` reports real holes.
    pub allocation_status: bool,
}

/// A gateway present on a device (see [`BlockDevice::members`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Its target portal group tag.
    pub tag: u16,
    /// It holds the device's ownership lock (as far as the engine can tell: a file image
    /// reports it for this gateway only).
    pub holds_lock: bool,
    /// It is still starting the LU (it has not yet decided whether the LU lost power): it
    /// is no witness that the LU kept running.
    pub starting: bool,
    /// It is being drained for maintenance: it serves no I/O and owns nothing.
    pub draining: bool,
}

/// What a gateway says of itself on a device it serves ([`BlockDevice::heartbeat`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Standing {
    /// Still starting the LU.
    Starting,
    #[default]
    Serving,
    /// Drained for maintenance (`rbdgw drain`): the others take its LUs over.
    Draining,
}

impl Standing {
    /// The word a gateway adds to its presence (an earlier version says nothing: serving).
    pub fn word(self) -> &'static str {
        match self {
            Standing::Starting => "starting",
            Standing::Serving => "",
            Standing::Draining => "draining",
        }
    }

    pub fn from_word(w: &str) -> Option<Standing> {
        match w {
            "starting" => Some(Standing::Starting),
            "" => Some(Standing::Serving),
            "draining" => Some(Standing::Draining),
            _ => None,
        }
    }
}

/// What a metadata change waits for before it returns, besides being stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// Every other gateway sharing the device has seen the change (or a bounded time
    /// passed): a reservation change is in force on every path when the command that made it
    /// completes (SPC-4 §5.9.1: reservations apply through every I_T nexus).
    SeenByAll,
    /// Nothing more: the others hear of it moments later. For records they follow on their
    /// own (the ALUA owner, a handover request): a takeover must not wait out a dead
    /// gateway's watch, which acknowledges nothing until the cluster drops it.
    Stored,
}

/// How often a device that cannot wait for changes of its metadata is looked at.
pub const METADATA_POLL: Duration = Duration::from_millis(200);

/// An asynchronous block device. Offsets and lengths are in bytes.
pub trait BlockDevice: Send + Sync + 'static {
    /// Current size in bytes.
    fn size(&self) -> u64;

    fn capabilities(&self) -> Capabilities;

    fn read(&self, offset: u64, len: usize) -> impl Future<Output = Result<Bytes>> + Send;

    /// Where `len` bytes at `offset` can be sent from by the kernel without a copy through
    /// user memory, if this engine's data lives in memory the kernel can send from (the
    /// page cache of an in-memory file). `None`: use [`BlockDevice::read`].
    fn read_extent(&self, _offset: u64, _len: usize) -> Option<FileExtent> {
        None
    }

    /// Writes `data` at `offset`; with `fua` the data is durable when this returns.
    fn write(
        &self,
        offset: u64,
        data: DataOutBuffer,
        fua: bool,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Makes every completed write durable.
    fn flush(&self) -> impl Future<Output = Result<()>> + Send;

    /// Copies `len` bytes of `src` from `src_off` here at `offset` without the data passing
    /// through the gateway's memory, if both engines can (files: copy_file_range(2));
    /// `Ok(false)`, nothing copied, when they cannot: the caller reads and writes.
    fn copy_from(
        &self,
        _src: &Self,
        _src_off: u64,
        _offset: u64,
        _len: u64,
        _fua: bool,
    ) -> impl Future<Output = Result<bool>> + Send {
        std::future::ready(Ok(false))
    }

    /// Deallocates a range; reads of it return zeroes afterwards when
    /// [`Capabilities::discard_zeroes`] is set.
    fn discard(&self, offset: u64, len: u64) -> impl Future<Output = Result<()>> + Send;

    /// Writes zeroes over a range.
    fn write_zeroes(&self, offset: u64, len: u64) -> impl Future<Output = Result<()>> + Send;

    /// Atomically, against every other write to the device: if the range holds `compare`,
    /// write `data` there and return `None`; else write nothing and return the offset (from
    /// `offset`) of the first differing byte.
    fn compare_and_write(
        &self,
        offset: u64,
        compare: Bytes,
        data: Bytes,
    ) -> impl Future<Output = Result<Option<u64>>> + Send;

    /// The allocation state from `offset`: the first extent (mapped or not) that starts there,
    /// at most `len` long.
    fn allocation(&self, offset: u64, len: u64) -> impl Future<Output = Result<Extent>> + Send;

    /// Reads a small persistent metadata value (e.g. the persistent reservation state).
    fn metadata_get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;

    /// Replaces a small persistent metadata value, atomically.
    fn metadata_set(
        &self,
        key: &str,
        value: Vec<u8>,
        publish: Publish,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Replaces a metadata value only if it still holds `expected` (`None`: absent), atomically
    /// against every gateway sharing the device; `Ok(false)` when it did not.
    fn metadata_compare_and_set(
        &self,
        key: &str,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        publish: Publish,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// A counter that changes whenever any gateway changes the metadata; reading it must be
    /// cheap (it is read before every command to notice reservation changes).
    fn metadata_generation(&self) -> u64;

    /// Resolves once [`metadata_generation`](BlockDevice::metadata_generation) may have moved
    /// on from `seen`, or after `at_most`. A device told of changes (RBD: a notify) wakes its
    /// waiters at once; one that must look for them (a file's sidecar) is looked at again
    /// after [`METADATA_POLL`] at the latest. An idle gateway's control loop sleeps here: a
    /// thousand LUs polled five times a second were most of its idle CPU.
    fn metadata_changed(&self, _seen: u64, at_most: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(at_most.min(METADATA_POLL))
    }

    /// Takes the ownership lock (exclusive between gateways) if it is free; `Ok(false)` when
    /// another holder has it.
    fn try_acquire_ownership(&self) -> impl Future<Output = Result<bool>> + Send;

    /// Gives the ownership lock up.
    fn release_ownership(&self) -> impl Future<Output = Result<()>> + Send;

    /// Whether this opener holds the ownership lock now (false once it was fenced).
    fn holds_ownership(&self) -> bool;

    /// False while the device cannot be reached at all (RBD: fenced by another gateway and
    /// not reconnected yet); its LUs then answer as transitioning.
    fn available(&self) -> bool {
        true
    }

    /// False while the device has not opened yet ([`Unopened`]; also not
    /// [`available`](BlockDevice::available)): its LUs then answer as unavailable, for as long
    /// as the opening takes, where a fenced one answers as transitioning for a moment.
    fn opened(&self) -> bool {
        true
    }

    /// Fences the current holder of the ownership lock, which stopped answering, and breaks
    /// its lock; `Ok(false)` when there was no holder or this engine cannot fence (a local
    /// file: the kernel frees the lock of a dead process, and nothing can fence a live one).
    fn break_ownership(&self) -> impl Future<Output = Result<bool>> + Send;

    /// Declares this gateway, TPG `tag`, present on the device, and its standing (starting
    /// the LU, serving, draining). A live gateway calls it at least every second: one that
    /// stops (a stalled control loop) is soon taken for absent.
    fn heartbeat(&self, tag: u16, standing: Standing) -> impl Future<Output = Result<()>> + Send;

    /// The gateways present on the device now, this one included once it beat. An error
    /// means this gateway cannot tell now (RBD: cut off from the OSDs); nobody may be taken
    /// for dead on it.
    fn members(&self) -> impl Future<Output = Result<Vec<Member>>> + Send;
}

/// Checks `offset + len <= size`.
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BackstoreError::OutOfRange { offset, len, size }),
    }
}

/// The devices a gateway can serve, dispatched without boxing.
pub enum Device {
    File(FileDevice),
    Rbd(rbd::RbdDevice),
    Unopened(Unopened),
}

macro_rules! dispatch {
    ($self:ident, $d:ident => $e:expr) => {
        match $self {
            Device::File($d) => $e,
            Device::Rbd($d) => $e,
            Device::Unopened($d) => $e,
        }
    };
}

impl BlockDevice for Device {
    fn size(&self) -> u64 {
        dispatch!(self, d => d.size())
    }
    fn capabilities(&self) -> Capabilities {
        dispatch!(self, d => d.capabilities())
    }
    async fn read(&self, offset: u64, len: usize) -> Result<Bytes> {
        dispatch!(self, d => d.read(offset, len).await)
    }
    fn read_extent(&self, offset: u64, len: usize) -> Option<FileExtent> {
        dispatch!(self, d => d.read_extent(offset, len))
    }
    async fn write(&self, offset: u64, data: DataOutBuffer, fua: bool) -> Result<()> {
        dispatch!(self, d => d.write(offset, data, fua).await)
    }
    async fn flush(&self) -> Result<()> {
        dispatch!(self, d => d.flush().await)
    }
    async fn copy_from(
        &self,
        src: &Self,
        src_off: u64,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> Result<bool> {
        match (self, src) {
            (Device::File(d), Device::File(s)) => {
                d.copy_from_file(s, src_off, offset, len, fua).await
            }
            _ => Ok(false),
        }
    }
    async fn discard(&self, offset: u64, len: u64) -> Result<()> {
        dispatch!(self, d => d.discard(offset, len).await)
    }
    async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        dispatch!(self, d => d.write_zeroes(offset, len).await)
    }
    async fn compare_and_write(
        &self,
        offset: u64,
        compare: Bytes,
        data: Bytes,
    ) -> Result<Option<u64>> {
        dispatch!(self, d => d.compare_and_write(offset, compare, data).await)
    }
    async fn allocation(&self, offset: u64, len: u64) -> Result<Extent> {
        dispatch!(self, d => d.allocation(offset, len).await)
    }
    async fn metadata_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        dispatch!(self, d => d.metadata_get(key).await)
    }
    async fn metadata_set(&self, key: &str, value: Vec<u8>, publish: Publish) -> Result<()> {
        dispatch!(self, d => d.metadata_set(key, value, publish).await)
    }
    async fn metadata_compare_and_set(
        &self,
        key: &str,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        publish: Publish,
    ) -> Result<bool> {
        dispatch!(self, d => d.metadata_compare_and_set(key, expected, value, publish).await)
    }
    fn metadata_generation(&self) -> u64 {
        dispatch!(self, d => d.metadata_generation())
    }
    async fn metadata_changed(&self, seen: u64, at_most: Duration) {
        dispatch!(self, d => d.metadata_changed(seen, at_most).await)
    }
    async fn try_acquire_ownership(&self) -> Result<bool> {
        dispatch!(self, d => d.try_acquire_ownership().await)
    }
    async fn release_ownership(&self) -> Result<()> {
        dispatch!(self, d => d.release_ownership().await)
    }

    fn holds_ownership(&self) -> bool {
        dispatch!(self, d => d.holds_ownership())
    }

    fn available(&self) -> bool {
        dispatch!(self, d => d.available())
    }

    fn opened(&self) -> bool {
        dispatch!(self, d => d.opened())
    }

    async fn break_ownership(&self) -> Result<bool> {
        dispatch!(self, d => d.break_ownership().await)
    }

    async fn heartbeat(&self, tag: u16, standing: Standing) -> Result<()> {
        dispatch!(self, d => d.heartbeat(tag, standing).await)
    }

    async fn members(&self) -> Result<Vec<Member>> {
        dispatch!(self, d => d.members().await)
    }
}
