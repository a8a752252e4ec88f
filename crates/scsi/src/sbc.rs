//! Block commands (SBC-3 §5): READ, WRITE, WRITE AND VERIFY, VERIFY, PRE-FETCH, SYNCHRONIZE
//! CACHE, WRITE SAME, UNMAP, COMPARE AND WRITE, GET LBA STATUS, READ CAPACITY.

use backstore::{BlockDevice, DataOutBuffer};
use bytes::{Bytes, BytesMut};

use crate::cdb::{be16, be24, be32, be64, get};
use crate::lu::LogicalUnit;
use crate::sense::{Asc, SenseData};
use crate::{CmdResult, ScsiResponse};

/// Address, length and flags of a block command's CDB.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockRange {
    pub lba: u64,
    pub blocks: u64,
    /// Byte 1: RDPROTECT/WRPROTECT (bits 7-5), DPO (bit 4), FUA (bit 3), BYTCHK (bits 2-1).
    pub flags: u8,
}

impl BlockRange {
    /// Decodes READ/WRITE/VERIFY/WRITE AND VERIFY/PRE-FETCH/SYNC CACHE CDBs by their size.
    pub fn parse(cdb: &[u8]) -> BlockRange {
        match get(cdb, 0) >> 5 {
            // READ(6)/WRITE(6): 21-bit LBA, a length of 0 means 256 blocks (SBC-3 §5.15).
            0 => BlockRange {
                lba: (be24(cdb, 1) & 0x1f_ffff) as u64,
                blocks: match get(cdb, 4) {
                    0 => 256,
                    n => n as u64,
                },
                flags: 0,
            },
            1 | 2 => BlockRange {
                lba: be32(cdb, 2) as u64,
                blocks: be16(cdb, 7) as u64,
                flags: get(cdb, 1),
            },
            5 => BlockRange {
                lba: be32(cdb, 2) as u64,
                blocks: be32(cdb, 6) as u64,
                flags: get(cdb, 1),
            },
            _ => BlockRange {
                lba: be64(cdb, 2),
                blocks: be32(cdb, 10) as u64,
                flags: get(cdb, 1),
            },
        }
    }

    fn protect(&self) -> u8 {
        self.flags >> 5
    }

    pub fn fua(&self) -> bool {
        self.flags & 0x08 != 0
    }
}

/// Rewrites the transfer length of a WRITE or WRITE AND VERIFY CDB to `blocks` (fewer than it
/// asked for); false for any other command. A truncation to zero blocks turns WRITE(6), whose
/// zero means 256, into TEST UNIT READY.
pub fn truncate_write(cdb: &mut [u8; 16], blocks: u32) -> bool {
    match cdb[0] {
        0x0a => {
            if blocks == 0 {
                *cdb = [0; 16];
            } else {
                cdb[4] = blocks as u8;
            }
        }
        0x2a | 0x2e => cdb[7..9].copy_from_slice(&(blocks as u16).to_be_bytes()),
        0xaa | 0xae => cdb[6..10].copy_from_slice(&blocks.to_be_bytes()),
        0x8a | 0x8e => cdb[10..14].copy_from_slice(&blocks.to_be_bytes()),
        _ => return false,
    }
    true
}

/// The data-out buffer must carry all the blocks the CDB names (SBC-3 §4.2.2); a shorter one
/// means the initiator's Expected Data Transfer Length was too small.
fn data_covers(have: usize, need: u64) -> Result<(), SenseData> {
    if (have as u64) < need {
        return Err(SenseData::illegal(Asc::INVALID_FIELD_IN_INFORMATION_UNIT));
    }
    Ok(())
}

impl<B: BlockDevice> LogicalUnit<B> {
    fn bs(&self) -> u64 {
        self.cfg.block_size as u64
    }

    /// SBC-3 §4.5: the range must lie within the medium.
    pub(crate) fn check_lba(&self, lba: u64, blocks: u64) -> Result<(), SenseData> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.block_count() => Ok(()),
            _ => Err(SenseData::lba_out_of_range()),
        }
    }

    /// Common checks of READ/WRITE-like commands: no protection information here (so
    /// RDPROTECT/WRPROTECT must be 0), the transfer within MAXIMUM TRANSFER LENGTH, the
    /// range on the medium.
    fn check_rw(&self, r: &BlockRange) -> Result<(), SenseData> {
        if r.protect() != 0 {
            return Err(SenseData::invalid_cdb(1, Some(7)));
        }
        if r.blocks > self.cfg.max_transfer_blocks as u64 {
            return Err(SenseData::invalid_cdb(
                if matches!(r.flags, 0) { 4 } else { 7 },
                None,
            ));
        }
        self.check_lba(r.lba, r.blocks)
    }

    fn check_writable(&self) -> Result<(), SenseData> {
        if self.cfg.read_only {
            return Err(SenseData::new(
                crate::sense::SenseKey::DataProtect,
                Asc::WRITE_PROTECTED,
            ));
        }
        Ok(())
    }

    /// The first `len` bytes of the data-out buffer (see [`data_covers`]).
    fn data_for(&self, data: &Bytes, len: u64) -> Result<Bytes, SenseData> {
        data_covers(data.len(), len)?;
        Ok(data.slice(..len as usize))
    }

    /// What every writing command checks first (range, protection, write protect) and the
    /// data it carries; `None` for a transfer length of zero, which is a no-op.
    fn write_prologue(
        &self,
        cdb: &[u8],
        data: &DataOutBuffer,
    ) -> Result<Option<(BlockRange, DataOutBuffer)>, SenseData> {
        let r = BlockRange::parse(cdb);
        self.check_rw(&r)?;
        self.check_writable()?;
        if r.blocks == 0 {
            return Ok(None);
        }
        let len = r.blocks * self.bs();
        data_covers(data.len(), len)?;
        Ok(Some((r, data.prefix(len as usize))))
    }

    pub(crate) async fn read(&self, cdb: &[u8]) -> CmdResult {
        let r = BlockRange::parse(cdb);
        self.check_rw(&r)?;
        if r.blocks == 0 {
            return Ok(ScsiResponse::good());
        }
        let bs = self.bs();
        if let Some(extent) = self.dev.read_extent(r.lba * bs, (r.blocks * bs) as usize) {
            return Ok(ScsiResponse::file(extent));
        }
        let data = self
            .dev
            .read(r.lba * bs, (r.blocks * bs) as usize)
            .await
            .map_err(|e| self.io_error(e, false))?;
        Ok(ScsiResponse::data(data))
    }

    /// WRITE (6/10/12/16), and WRITE AND VERIFY (SBC-3 §5.40), whose write is made durable
    /// before GOOD, which is what verification of the medium amounts to here.
    pub(crate) async fn write(&self, cdb: &[u8], data: &DataOutBuffer) -> CmdResult {
        let Some((r, payload)) = self.write_prologue(cdb, data)? else {
            return Ok(ScsiResponse::good());
        };
        let and_verify = matches!(cdb[0], 0x2e | 0xae | 0x8e);
        let fua = and_verify || r.fua() || !self.state().wce;
        self.dev
            .write(r.lba * self.bs(), payload, fua)
            .await
            .map_err(|e| self.io_error(e, true))?;
        Ok(ScsiResponse::good())
    }

    /// VERIFY (SBC-3 §5.35): BYTCHK 00b checks the medium can be read, 01b compares the
    /// data-out buffer, 11b compares one block against every block of the range.
    pub(crate) async fn verify(&self, cdb: &[u8], data: &Bytes) -> CmdResult {
        let r = BlockRange::parse(cdb);
        self.check_rw(&r)?;
        let bytchk = (r.flags >> 1) & 3;
        if bytchk == 2 {
            return Err(SenseData::invalid_cdb(1, Some(2)));
        }
        if r.blocks == 0 {
            return Ok(ScsiResponse::good());
        }
        let bs = self.bs();
        let medium = self
            .dev
            .read(r.lba * bs, (r.blocks * bs) as usize)
            .await
            .map_err(|e| self.io_error(e, false))?;
        let expected: Bytes = match bytchk {
            0 => return Ok(ScsiResponse::good()),
            1 => self.data_for(data, r.blocks * bs)?,
            _ => {
                let one = self.data_for(data, bs)?;
                let mut v = BytesMut::with_capacity(medium.len());
                for _ in 0..r.blocks {
                    v.extend_from_slice(&one);
                }
                v.freeze()
            }
        };
        match medium.iter().zip(expected.iter()).position(|(a, b)| a != b) {
            Some(pos) => Err(SenseData::miscompare(pos as u64)),
            None => Ok(ScsiResponse::good()),
        }
    }

    /// PRE-FETCH (SBC-3 §5.8, §5.9): there is no cache to fill; GOOD says so.
    pub(crate) fn pre_fetch(&self, cdb: &[u8]) -> CmdResult {
        let r = BlockRange::parse(cdb);
        self.check_lba(r.lba, r.blocks)?;
        Ok(ScsiResponse::good())
    }

    /// SYNCHRONIZE CACHE (SBC-3 §5.22, §5.23).
    pub(crate) async fn synchronize_cache(&self, cdb: &[u8]) -> CmdResult {
        let r = BlockRange::parse(cdb);
        self.check_lba(r.lba, r.blocks)?;
        self.dev.flush().await.map_err(|e| self.io_error(e, true))?;
        Ok(ScsiResponse::good())
    }

    /// WRITE SAME (10)/(16) (SBC-3 §5.42, §5.43), with UNMAP and NDOB. WSNZ is 0 in our block
    /// limits, so NUMBER OF LOGICAL BLOCKS 0 means "to the end of the medium".
    pub(crate) async fn write_same(
        &self,
        cdb: &[u8],
        data: &Bytes,
        transfer_length: u32,
    ) -> CmdResult {
        let (lba, mut blocks) = if cdb[0] == 0x41 {
            (be32(cdb, 2) as u64, be16(cdb, 7) as u64)
        } else {
            (be64(cdb, 2), be32(cdb, 10) as u64)
        };
        let flags = cdb[1];
        if flags >> 5 != 0 {
            return Err(SenseData::invalid_cdb(1, Some(7)));
        }
        if flags & 0x10 != 0 {
            // ANCHOR: anchored LBAs are not supported (ANC_SUP=0 in VPD 0xB2).
            return Err(SenseData::invalid_cdb(1, Some(4)));
        }
        let ndob = cdb[0] == 0x93 && flags & 0x01 != 0;
        let unmap = flags & 0x08 != 0;
        if lba > self.block_count() {
            return Err(SenseData::lba_out_of_range());
        }
        if blocks == 0 {
            blocks = self.block_count() - lba;
        }
        if blocks > self.cfg.max_write_same_blocks as u64 {
            return Err(SenseData::invalid_cdb(
                if cdb[0] == 0x41 { 7 } else { 10 },
                None,
            ));
        }
        self.check_lba(lba, blocks)?;
        self.check_writable()?;
        let bs = self.bs();
        let block = if ndob {
            Bytes::from(vec![0u8; bs as usize])
        } else {
            if data.len() as u64 != bs || transfer_length as u64 != bs {
                return Err(SenseData::invalid_cdb(0, None));
            }
            data.clone()
        };
        if blocks == 0 {
            return Ok(ScsiResponse::good());
        }
        let (off, len) = (lba * bs, blocks * bs);
        let zero = block.iter().all(|b| *b == 0);
        // With UNMAP set the blocks are deallocated whatever the data block holds (as LIO
        // does; SBC-3 §5.43 lets the device server unmap); LBPRZ makes them read as zeroes.
        let res = if unmap && self.dev.capabilities().discard_zeroes {
            self.dev.discard(off, len).await
        } else if zero {
            self.dev.write_zeroes(off, len).await
        } else {
            self.write_repeated(off, len, &block).await
        };
        res.map_err(|e| self.io_error(e, true))?;
        Ok(ScsiResponse::good())
    }

    async fn write_repeated(&self, off: u64, len: u64, block: &[u8]) -> backstore::Result<()> {
        const CHUNK: u64 = 1 << 20;
        let per = (CHUNK / block.len() as u64).max(1) * block.len() as u64;
        let mut buf = BytesMut::with_capacity(per.min(len) as usize);
        while (buf.len() as u64) < per.min(len) {
            buf.extend_from_slice(block);
        }
        let buf = buf.freeze();
        let mut done = 0;
        while done < len {
            let n = per.min(len - done);
            self.dev
                .write(off + done, buf.slice(..n as usize).into(), false)
                .await?;
            done += n;
        }
        if !self.state().wce {
            self.dev.flush().await?;
        }
        Ok(())
    }

    /// UNMAP (SBC-3 §5.28).
    pub(crate) async fn unmap(&self, cdb: &[u8], data: &Bytes) -> CmdResult {
        if cdb[1] & 0x01 != 0 {
            return Err(SenseData::invalid_cdb(1, Some(0)));
        }
        let param_len = be16(cdb, 7) as usize;
        if param_len == 0 {
            return Ok(ScsiResponse::good());
        }
        if param_len < 8 || data.len() < 8 {
            return Err(SenseData::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        self.check_writable()?;
        let data = &data[..param_len.min(data.len())];
        let desc_len = (be16(data, 2) as usize).min(data.len() - 8) & !15;
        let count = desc_len / 16;
        if count > self.cfg.max_unmap_descriptors as usize {
            return Err(SenseData::invalid_param(2, None));
        }
        let mut ranges = Vec::with_capacity(count);
        let mut total = 0u64;
        for i in 0..count {
            let d = &data[8 + i * 16..8 + i * 16 + 16];
            let (lba, n) = (be64(d, 0), be32(d, 8) as u64);
            self.check_lba(lba, n)?;
            total += n;
            ranges.push((lba, n));
        }
        if total > self.cfg.max_unmap_lba_count as u64 {
            return Err(SenseData::invalid_param(8, None));
        }
        let bs = self.bs();
        for (lba, n) in ranges {
            if n > 0 {
                self.before_write(lba, n).await?;
                self.dev
                    .discard(lba * bs, n * bs)
                    .await
                    .map_err(|e| self.io_error(e, true))?;
            }
        }
        Ok(ScsiResponse::good())
    }

    /// COMPARE AND WRITE (SBC-3 §5.2): atomic through the backstore.
    pub(crate) async fn compare_and_write(
        &self,
        cdb: &[u8],
        data: &Bytes,
        transfer_length: u32,
    ) -> CmdResult {
        let lba = be64(cdb, 2);
        let blocks = cdb[13] as u64;
        if cdb[1] >> 5 != 0 {
            return Err(SenseData::invalid_cdb(1, Some(7)));
        }
        // A NUMBER OF LOGICAL BLOCKS of 0 with data on the way cannot be what the initiator
        // meant (a count of 256 does not fit the byte): refuse rather than ignore the data.
        if blocks > self.cfg.max_compare_and_write_blocks as u64
            || (blocks == 0 && transfer_length > 0)
        {
            return Err(SenseData::invalid_cdb(13, None));
        }
        self.check_lba(lba, blocks)?;
        self.check_writable()?;
        if blocks == 0 {
            return Ok(ScsiResponse::good());
        }
        let len = (blocks * self.bs()) as usize;
        // The data-out must hold exactly the compare and the write blocks.
        if data.len() != 2 * len || transfer_length as usize != 2 * len {
            return Err(SenseData::invalid_cdb(13, None));
        }
        let (cmp, new) = (data.slice(..len), data.slice(len..));
        let r = self
            .dev
            .compare_and_write(lba * self.bs(), cmp, new)
            .await
            .map_err(|e| self.io_error(e, true))?;
        match r {
            Some(pos) => Err(SenseData::miscompare(pos)),
            None => {
                if cdb[1] & 0x08 != 0 || !self.state().wce {
                    self.dev.flush().await.map_err(|e| self.io_error(e, true))?;
                }
                Ok(ScsiResponse::good())
            }
        }
    }

    /// ORWRITE (16) (SBC-3 §5.7): the data is ORed into the blocks, atomically against other
    /// writes: read, OR, then compare-and-write the result, again if a write came between.
    pub(crate) async fn or_write(&self, cdb: &[u8], data: &DataOutBuffer) -> CmdResult {
        let Some((r, mask)) = self.write_prologue(cdb, data)? else {
            return Ok(ScsiResponse::good());
        };
        let mask = mask.to_bytes();
        // One block at a time: compare-and-write engines (librbd) take at most a block, and
        // ORing is per byte, so per-block atomicity is all the command needs.
        let bs = self.bs() as usize;
        for (i, m) in mask.chunks(bs).enumerate() {
            let off = r.lba * self.bs() + (i * bs) as u64;
            loop {
                let old = self
                    .dev
                    .read(off, bs)
                    .await
                    .map_err(|e| self.io_error(e, false))?;
                let new: Vec<u8> = old.iter().zip(m.iter()).map(|(a, b)| a | b).collect();
                let res = self
                    .dev
                    .compare_and_write(off, old, Bytes::from(new))
                    .await
                    .map_err(|e| self.io_error(e, true))?;
                if res.is_none() {
                    break;
                }
            }
        }
        if r.fua() || !self.state().wce {
            self.dev.flush().await.map_err(|e| self.io_error(e, true))?;
        }
        Ok(ScsiResponse::good())
    }

    /// GET LBA STATUS (SBC-3 §5.5): mapped and deallocated extents from the given LBA.
    pub(crate) async fn get_lba_status(&self, cdb: &[u8]) -> CmdResult {
        let lba = be64(cdb, 2);
        let alloc = be32(cdb, 10) as usize;
        let count = self.block_count();
        if lba >= count {
            return Err(SenseData::lba_out_of_range());
        }
        let bs = self.bs();
        let max_desc = (alloc.saturating_sub(8) / 16).clamp(1, 64);
        let mut descs = Vec::new();
        let mut cur = lba;
        while cur < count && descs.len() < max_desc {
            let remaining = (count - cur).min(u32::MAX as u64);
            let e = self
                .dev
                .allocation(cur * bs, remaining * bs)
                .await
                .map_err(|e| self.io_error(e, false))?;
            let n = e.len.div_ceil(bs).clamp(1, remaining);
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&cur.to_be_bytes());
            d[8..12].copy_from_slice(&(n as u32).to_be_bytes());
            d[12] = if e.mapped { 0 } else { 1 };
            descs.extend_from_slice(&d);
            cur += n;
        }
        let mut out = Vec::with_capacity(8 + descs.len());
        out.extend_from_slice(&((descs.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&descs);
        Ok(ScsiResponse::data_alloc(out, alloc))
    }

    /// READ CAPACITY (10) (SBC-3 §5.16).
    pub(crate) fn read_capacity10(&self, cdb: &[u8]) -> CmdResult {
        if cdb[8] & 0x01 == 0 && be32(cdb, 2) != 0 {
            return Err(SenseData::invalid_cdb(2, None));
        }
        let last = self.block_count().saturating_sub(1).min(0xffff_ffff) as u32;
        let mut d = Vec::with_capacity(8);
        d.extend_from_slice(&last.to_be_bytes());
        d.extend_from_slice(&self.cfg.block_size.to_be_bytes());
        Ok(ScsiResponse::data(d))
    }

    /// READ CAPACITY (16) (SBC-3 §5.17): LBPME and LBPRZ advertise thin provisioning.
    pub(crate) fn read_capacity16(&self, cdb: &[u8]) -> CmdResult {
        let alloc = be32(cdb, 10) as usize;
        let mut d = vec![0u8; 32];
        d[..8].copy_from_slice(&self.block_count().saturating_sub(1).to_be_bytes());
        d[8..12].copy_from_slice(&self.cfg.block_size.to_be_bytes());
        // LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT stays 0: see the README (libiscsi 1.19's
        // GetLBAStatus.UnmapSingle cannot pass with more than one logical block per physical).
        if self.dev.capabilities().discard_zeroes {
            d[14] = 0x80 | 0x40;
        }
        Ok(ScsiResponse::data_alloc(d, alloc))
    }
}
