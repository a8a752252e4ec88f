//! The copy manager (SPC-4 §6.4): EXTENDED COPY (LID1) from and to any logical unit this
//! gateway serves, in any of its targets, and RECEIVE COPY RESULTS (§6.18). The data moves
//! inside the gateway, a chunk at a time, and never crosses the initiator's network.
//!
//! A copy obeys what a WRITE would: the destination's reservations (checked for the nexus that
//! sent the copy), its write protection, its ALUA state and the gateway's write lock (asked of
//! [`CopyTargets`]). It runs inside its command's task: an ABORT TASK or a reset ends it.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;

use backstore::{BlockDevice, DataOutBuffer};

use crate::alua::AccessState;
use crate::cdb::be32;
use crate::lu::LogicalUnit;
use crate::sense::{Asc, SenseData, SenseKey};
use crate::xcopy::{self, CopyList, CopyProgress, Designator, ListId, ListIdUsage, Segment};
use crate::{ItNexus, ScsiCommand, ScsiResponse};

/// A list as its nexus names it.
pub(crate) type ListKey = (ItNexus, ListId);

/// Lists a nexus may hold (RECEIVE COPY RESULTS, RECEIVE ROD TOKEN INFORMATION); the oldest
/// finished one goes when a new one would pass this.
const HELD_LISTS_PER_NEXUS: usize = 64;

/// A list held for its nexus while its command runs, and after when `keep`. Dropped
/// unfinished (its command aborted: ABORT TASK, a reset, the connection gone), it is marked
/// failed, so that its identifier is free for the next command.
pub(crate) struct ListHold<'a, B: BlockDevice> {
    lu: &'a LogicalUnit<B>,
    key: ListKey,
    keep: bool,
    finished: bool,
}

impl<B: BlockDevice> ListHold<'_, B> {
    /// Records how the command ended (and the token it made).
    pub(crate) fn finish(mut self, outcome: &Result<(), ScsiResponse>, token: Option<Vec<u8>>) {
        self.finished = true;
        self.end(outcome.as_ref().err().map(|r| r.sense), token);
    }

    fn end(&self, failure: Option<Option<SenseData>>, token: Option<Vec<u8>>) {
        let mut st = self.lu.state();
        if !self.keep {
            st.copies.remove(&self.key);
        } else if let Some(p) = st.copies.get_mut(&self.key) {
            // (Gone when the nexus was lost or the LU reset meanwhile: nothing to hold.)
            p.done = true;
            p.failed = failure.is_some();
            p.sense = failure.flatten();
            p.token = token;
        }
    }
}

impl<B: BlockDevice> Drop for ListHold<'_, B> {
    fn drop(&mut self) {
        if !self.finished {
            let aborted = SenseData::new(SenseKey::AbortedCommand, Asc::NO_ADDITIONAL);
            self.end(Some(Some(aborted)), None);
        }
    }
}

/// A boxed future, for the object-safe [`CopyTargets`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something held for as long as a copy needs it (a write admission, copy memory).
pub type Held = Box<dyn Send>;

/// What the copy manager needs of the gateway around its logical units.
pub trait CopyTargets<B: BlockDevice>: Send + Sync {
    /// The logical unit served here that has designator `d` (VPD 0x83, association: LU).
    fn find(&self, d: &Designator) -> Option<Arc<LogicalUnit<B>>>;

    /// Admits writes to `lu` as a WRITE command is admitted (the write lock of a LU shared by
    /// several gateways); the copy holds what it returns while it writes there.
    fn admit_write(&self, lu: Arc<LogicalUnit<B>>) -> BoxFuture<'static, Result<Held, SenseData>>;

    /// Reserves `bytes` of the gateway's copy memory, waiting while all of it is in use.
    fn reserve_memory(&self, bytes: usize) -> BoxFuture<'static, Held>;
}

/// One stretch of a copy: `len` bytes of `src` from `src_off` to `dst` at `dst_off`.
struct Stretch<'a, B: BlockDevice> {
    src: &'a LogicalUnit<B>,
    dst: &'a LogicalUnit<B>,
    src_off: u64,
    dst_off: u64,
    len: u64,
    fua: bool,
    key: Option<&'a ListKey>,
}

impl<B: BlockDevice> Stretch<'_, B> {
    /// The rest of the stretch after its first `n` bytes.
    fn skip(self, n: u64) -> Self {
        Stretch {
            src_off: self.src_off + n,
            dst_off: self.dst_off + n,
            len: self.len - n,
            ..self
        }
    }
}

/// The unit a copy reads and writes at once; a copy holds two (one written while the next is
/// read).
pub const COPY_CHUNK: usize = 1 << 20;

/// A party to a copy: the LU that received it, or another one the gateway found.
pub(crate) enum Party<'a, B: BlockDevice> {
    This(&'a LogicalUnit<B>),
    Other(Arc<LogicalUnit<B>>),
}

impl<B: BlockDevice> std::ops::Deref for Party<'_, B> {
    type Target = LogicalUnit<B>;
    fn deref(&self) -> &LogicalUnit<B> {
        match self {
            Party::This(l) => l,
            Party::Other(l) => l,
        }
    }
}

/// Polls two futures together until both are done (a copy writes one chunk while it reads
/// the next).
async fn join2<A: Future, C: Future>(a: A, c: C) -> (A::Output, C::Output) {
    let (mut a, mut c) = (pin!(a), pin!(c));
    let (mut ra, mut rc) = (None, None);
    std::future::poll_fn(|cx| {
        if ra.is_none() {
            if let Poll::Ready(v) = a.as_mut().poll(cx) {
                ra = Some(v);
            }
        }
        if rc.is_none() {
            if let Poll::Ready(v) = c.as_mut().poll(cx) {
                rc = Some(v);
            }
        }
        match (ra.take(), rc.take()) {
            (Some(x), Some(y)) => Poll::Ready((x, y)),
            (x, y) => {
                (ra, rc) = (x, y);
                Poll::Pending
            }
        }
    })
    .await
}

/// Whether a READ of `src` or a WRITE of `dst` sent by `nexus` would meet a reservation
/// conflict: a copy is refused where either would be.
pub(crate) async fn copy_conflicts<B: BlockDevice>(
    src: &LogicalUnit<B>,
    dst: &LogicalUnit<B>,
    nexus: &ItNexus,
) -> bool {
    let probe = |cdb: &'static [u8; 10]| ScsiCommand {
        cdb,
        nexus,
        data_out: Default::default(),
        transfer_length: 0,
    };
    src.conflicts(&probe(&[0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
        .await
        || dst
            .conflicts(&probe(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
            .await
}

impl<B: BlockDevice> LogicalUnit<B> {
    /// Starts holding a list for its nexus; OPERATION IN PROGRESS if a command of the same
    /// list identifier still runs there (SPC-4 §6.4.3).
    pub(crate) fn hold_list(
        &self,
        key: ListKey,
        service_action: u8,
        keep: bool,
    ) -> Result<ListHold<'_, B>, SenseData> {
        let mut st = self.state();
        if st.copies.get(&key).is_some_and(|p| !p.done) {
            return Err(SenseData::illegal(Asc::OPERATION_IN_PROGRESS));
        }
        st.copies.remove(&key);
        let done: Vec<ListKey> = st
            .copies
            .iter()
            .filter(|((n, _), p)| n == &key.0 && p.done)
            .map(|(k, _)| k.clone())
            .collect();
        if done.len() >= HELD_LISTS_PER_NEXUS {
            // (Which one goes matters little: initiators ask right after each command.)
            st.copies.remove(&done[0]);
        }
        st.copies.insert(
            key.clone(),
            CopyProgress {
                service_action,
                ..Default::default()
            },
        );
        Ok(ListHold {
            lu: self,
            key,
            keep,
            finished: false,
        })
    }

    /// Sets where this LU finds the other LUs a copy names and asks for write admission.
    /// Without it a copy stays within this LU, admitted freely. Set once.
    pub fn set_copy_targets(&self, targets: Arc<dyn CopyTargets<B>>) {
        let _ = self.copy_targets.set(targets);
    }

    /// Whether `d` is one of this LU's designators (VPD 0x83): its NAA or T10 vendor ID.
    pub fn has_designator(&self, d: &Designator) -> bool {
        match d.kind {
            3 => d.value == crate::inquiry::naa_designator(&self.cfg.serial),
            1 => d.value == self.t10_vendor_designator(),
            _ => false,
        }
    }

    /// Admits the copy's writes to `dst` as the gateway admits a WRITE there.
    pub(crate) async fn admit_write(&self, dst: &Party<'_, B>) -> Result<Option<Held>, SenseData> {
        match (self.copy_targets.get(), dst) {
            (Some(t), Party::Other(lu)) => Ok(Some(t.admit_write(lu.clone()).await?)),
            _ => Ok(None),
        }
    }

    /// This LU's NAA designator, as copies name it.
    fn own_designator(&self) -> Designator {
        Designator {
            kind: 3,
            value: crate::inquiry::naa_designator(&self.cfg.serial).to_vec(),
        }
    }

    /// This LU as a party to a copy (found through the gateway, which admits writes to it).
    pub(crate) fn this_party(&self) -> Party<'_, B> {
        self.resolve(&self.own_designator())
            .unwrap_or(Party::This(self))
    }

    pub(crate) fn resolve(&self, d: &Designator) -> Option<Party<'_, B>> {
        match self.copy_targets.get() {
            Some(t) => t.find(d).map(Party::Other),
            None => self.has_designator(d).then_some(Party::This(self)),
        }
    }

    /// The LU a CSCD descriptor index names in `list` (FFFFh: this LU), for segment `n`.
    fn party(&self, list: &CopyList, index: u16, n: usize) -> Result<Party<'_, B>, SenseData> {
        let unreachable = || xcopy::copy_aborted(Asc::UNREACHABLE_COPY_TARGET, n);
        let (designator, block_length) = if index == xcopy::CSCD_ID_THIS_LU {
            (self.own_designator(), self.cfg.block_size)
        } else {
            let c = list.cscds.get(index as usize).ok_or_else(unreachable)?;
            if c.device_type != 0 {
                return Err(xcopy::copy_aborted(
                    Asc::INCORRECT_COPY_TARGET_DEVICE_TYPE,
                    n,
                ));
            }
            (c.designator.clone(), c.block_length)
        };
        let lu = self.resolve(&designator).ok_or_else(unreachable)?;
        if block_length != lu.cfg.block_size {
            return Err(xcopy::copy_aborted(
                Asc::INCORRECT_COPY_TARGET_DEVICE_TYPE,
                n,
            ));
        }
        Ok(lu)
    }

    /// EXTENDED COPY (LID1) (SPC-4 §6.4).
    pub(crate) async fn extended_copy(
        &self,
        cmd: &ScsiCommand<'_>,
    ) -> Result<ScsiResponse, SenseData> {
        let declared = be32(cmd.cdb, 10) as usize;
        let data = cmd.data_out.to_bytes();
        let Some(list) = xcopy::parse(&data[..declared.min(data.len())])? else {
            return Ok(ScsiResponse::good());
        };
        let key = (list.usage != ListIdUsage::None)
            .then(|| (cmd.nexus.clone(), ListId::Lid1(list.list_id)));
        let hold = match &key {
            Some(k) => Some(self.hold_list(k.clone(), 0x00, list.usage == ListIdUsage::Hold)?),
            None => None,
        };
        let outcome = self.run_copy(&list, cmd.nexus, key.as_ref()).await;
        if let Some(h) = hold {
            h.finish(&outcome, None);
        }
        match outcome {
            Ok(()) => Ok(ScsiResponse::good()),
            Err(r) => Ok(r),
        }
    }

    async fn run_copy(
        &self,
        list: &CopyList,
        nexus: &ItNexus,
        key: Option<&ListKey>,
    ) -> Result<(), ScsiResponse> {
        for (n, seg) in list.segments.iter().enumerate() {
            self.copy_segment(list, n, seg, nexus, key).await?;
            if let Some(k) = key {
                if let Some(p) = self.state().copies.get_mut(k) {
                    p.segments = (n + 1) as u16;
                }
            }
        }
        Ok(())
    }

    /// One block device to block device segment (SPC-4 §6.4.6.5).
    async fn copy_segment(
        &self,
        list: &CopyList,
        n: usize,
        seg: &Segment,
        nexus: &ItNexus,
        key: Option<&ListKey>,
    ) -> Result<(), ScsiResponse> {
        let src = self.party(list, seg.source, n)?;
        let dst = self.party(list, seg.destination, n)?;
        let (sbs, dbs) = (src.cfg.block_size as u64, dst.cfg.block_size as u64);
        let bytes = seg.blocks as u64 * if seg.destination_count { dbs } else { sbs };
        if !bytes.is_multiple_of(sbs) || !bytes.is_multiple_of(dbs) {
            return Err(xcopy::copy_aborted(Asc::UNEXPECTED_INEXACT_SEGMENT, n).into());
        }
        if bytes == 0 {
            return Ok(());
        }
        // A range past either end: the copy target would refuse the I/O, so the copy stops
        // before it starts (COPY ABORTED: an error met processing a segment, SPC-4 §6.4).
        let within = |lba: u64, bs: u64, lu: &LogicalUnit<B>| {
            lba.checked_mul(bs)
                .and_then(|o| o.checked_add(bytes))
                .is_some_and(|end| end <= lu.dev.size())
        };
        if !within(seg.source_lba, sbs, &src) || !within(seg.destination_lba, dbs, &dst) {
            return Err(xcopy::copy_aborted(Asc::NO_ADDITIONAL, n).into());
        }
        if dst.cfg.read_only {
            return Err(SenseData::new(SenseKey::DataProtect, Asc::WRITE_PROTECTED).into());
        }
        ready_for_copy(&*src)?;
        ready_for_copy(&*dst)?;
        // Reservations as for a READ of the source and a WRITE of the destination sent by
        // the nexus that sent the copy.
        if copy_conflicts(&src, &dst, nexus).await {
            return Err(ScsiResponse::conflict());
        }
        let _admitted = self.admit_write(&dst).await?;
        let (src_off, dst_off) = (seg.source_lba * sbs, seg.destination_lba * dbs);
        self.copy_bytes(&src, &dst, src_off, dst_off, bytes, key)
            .await?;
        Ok(())
    }

    /// Copies `bytes` from `src` to `dst`, both whole blocks of either: holes of the source
    /// become zeroes at the destination without being read, the rest moves a chunk at a time.
    /// Tokens standing for the destination range are revoked first.
    pub(crate) async fn copy_bytes(
        &self,
        src: &LogicalUnit<B>,
        dst: &LogicalUnit<B>,
        src_off: u64,
        dst_off: u64,
        bytes: u64,
        key: Option<&ListKey>,
    ) -> Result<(), SenseData> {
        let dbs = dst.cfg.block_size as u64;
        dst.before_write(dst_off / dbs, bytes / dbs).await?;
        let _memory = match self.copy_targets.get() {
            Some(t) => Some(t.reserve_memory(2 * COPY_CHUNK).await),
            None => None,
        };
        let fua = !dst.state().wce;
        let sparse = src.dev.capabilities().allocation_status;
        let mut done = 0u64;
        while done < bytes {
            let left = bytes - done;
            // Holes of the source become zeroes at the destination without reading them.
            let (mapped, len) = if sparse {
                let e = src
                    .dev
                    .allocation(src_off + done, left)
                    .await
                    .map_err(|e| src.io_error(e, false))?;
                if e.len == 0 {
                    (true, left)
                } else {
                    (e.mapped, e.len.min(left))
                }
            } else {
                (true, left)
            };
            if mapped {
                self.copy_mapped(Stretch {
                    src,
                    dst,
                    src_off: src_off + done,
                    dst_off: dst_off + done,
                    len,
                    fua,
                    key,
                })
                .await?;
            } else {
                dst.dev
                    .write_zeroes(dst_off + done, len)
                    .await
                    .map_err(|e| dst.io_error(e, true))?;
                self.note_copied(key, len);
            }
            done += len;
        }
        Ok(())
    }

    /// Copies a mapped stretch: inside the kernel where both engines can (files), a few
    /// chunks per call so that an abort stops it soon; else read and written here.
    async fn copy_mapped(&self, s: Stretch<'_, B>) -> Result<(), SenseData> {
        const IN_KERNEL: u64 = 8 * COPY_CHUNK as u64;
        let mut done = 0u64;
        while done < s.len {
            let n = (s.len - done).min(IN_KERNEL);
            let copied = s
                .dst
                .dev
                .copy_from(&s.src.dev, s.src_off + done, s.dst_off + done, n, s.fua)
                .await
                .map_err(|e| s.dst.io_error(e, true))?;
            if !copied {
                return self.copy_range(s.skip(done)).await;
            }
            self.note_copied(s.key, n);
            done += n;
        }
        Ok(())
    }

    /// Copies a mapped stretch through this gateway's memory, reading each chunk while the
    /// previous one is written.
    async fn copy_range(&self, s: Stretch<'_, B>) -> Result<(), SenseData> {
        let Stretch {
            src,
            dst,
            src_off,
            dst_off,
            len,
            fua,
            key,
        } = s;
        let piece = |at: u64| (len - at).min(COPY_CHUNK as u64) as usize;
        let read_err = |e| src.io_error(e, false);
        let mut at = 0u64;
        let mut data = src.dev.read(src_off, piece(0)).await.map_err(read_err)?;
        loop {
            let n = data.len() as u64;
            let write = dst
                .dev
                .write(dst_off + at, DataOutBuffer::from_parts([data]), fua);
            let next = at + n;
            if next >= len {
                write.await.map_err(|e| dst.io_error(e, true))?;
                self.note_copied(key, n);
                return Ok(());
            }
            let read = src.dev.read(src_off + next, piece(next));
            let (w, r) = join2(write, read).await;
            w.map_err(|e| dst.io_error(e, true))?;
            self.note_copied(key, n);
            data = r.map_err(read_err)?;
            at = next;
        }
    }

    pub(crate) fn note_copied(&self, key: Option<&ListKey>, bytes: u64) {
        if let Some(k) = key {
            if let Some(p) = self.state().copies.get_mut(k) {
                p.bytes += bytes;
            }
        }
    }

    /// RECEIVE COPY RESULTS (SPC-4 §6.18): the LID1 service actions.
    pub(crate) fn receive_copy_results(
        &self,
        cmd: &ScsiCommand<'_>,
    ) -> Result<ScsiResponse, SenseData> {
        let cdb = cmd.cdb;
        let alloc = be32(cdb, 10) as usize;
        let list_id = cdb[2];
        let held = || {
            self.state()
                .copies
                .get(&(cmd.nexus.clone(), ListId::Lid1(list_id)))
                .cloned()
                .ok_or_else(|| SenseData::invalid_cdb(2, None))
        };
        let data = match cdb[1] & 0x1f {
            0x00 => xcopy::copy_status(&held()?),
            // RECEIVE DATA: no segment type served here holds data.
            0x01 => {
                held()?;
                vec![0u8; 4]
            }
            0x03 => xcopy::operating_parameters(self.cfg.block_size),
            _ => return Err(SenseData::invalid_cdb(1, Some(4))),
        };
        Ok(ScsiResponse::data_alloc(data, alloc))
    }
}

/// A copy reads and writes through this gateway's port: in the states where that port turns
/// I/O away, so does the copy (SPC-4 §5.16.2.4).
pub(crate) fn ready_for_copy<B: BlockDevice>(lu: &LogicalUnit<B>) -> Result<(), SenseData> {
    lu.device_reachable()?;
    if lu.access_state(lu.cfg.local_tpg) == AccessState::Standby {
        return Err(SenseData::new(
            SenseKey::NotReady,
            Asc::LU_NOT_ACCESSIBLE_STANDBY,
        ));
    }
    Ok(())
}
