//! Offloaded data transfer (ODX, SBC-3): POPULATE TOKEN, WRITE USING TOKEN and RECEIVE ROD
//! TOKEN INFORMATION, over the token formats of [`crate::rod_token`].
//!
//! POPULATE TOKEN records the token in the LU's shared metadata before it completes, so that
//! WRITE USING TOKEN through any gateway serving the LU finds it (Windows may send it down
//! another path). A write to a range a valid token stands for revokes the token first.

use backstore::{BlockDevice, Publish};

use crate::cdb::be32;
use crate::copy_manager::{copy_conflicts, ready_for_copy, ListKey};
use crate::lu::LogicalUnit;
use crate::rod_token::{
    self, now_secs, random_u64, PresentedToken, TokenRecord, TokenRegistry, TokenState,
};
use crate::sense::{Asc, SenseData, SenseKey};
use crate::xcopy::{Designator, ListId};
use crate::{ItNexus, ScsiCommand, ScsiResponse};

/// A POPULATE TOKEN or WRITE USING TOKEN command's list (its four-byte LIST IDENTIFIER) and
/// parameter list, cut to its PARAMETER LIST LENGTH.
fn lid4_list(cmd: &ScsiCommand<'_>) -> (ListKey, bytes::Bytes) {
    let key = (cmd.nexus.clone(), ListId::Lid4(be32(cmd.cdb, 6)));
    let data = cmd.data_out.to_bytes();
    let declared = (be32(cmd.cdb, 10) as usize).min(data.len());
    (key, data.slice(..declared))
}

impl<B: BlockDevice> LogicalUnit<B> {
    /// Reads the token record afresh (WRITE USING TOKEN: a token may have been made through
    /// another gateway a moment ago).
    async fn read_tokens(&self) -> Result<TokenRegistry, SenseData> {
        let v = self
            .dev
            .metadata_get(rod_token::METADATA_KEY)
            .await
            .map_err(|e| self.metadata_error(e))?;
        Ok(v.as_deref().map(TokenRegistry::decode).unwrap_or_default())
    }

    /// Changes the token record atomically against every gateway, and waits until they all
    /// saw it.
    async fn update_tokens<T>(
        &self,
        f: impl Fn(&mut TokenRegistry) -> Result<T, SenseData>,
    ) -> Result<T, SenseData> {
        for _ in 0..32 {
            let old = self
                .dev
                .metadata_get(rod_token::METADATA_KEY)
                .await
                .map_err(|e| self.metadata_error(e))?;
            let mut reg = old
                .as_deref()
                .map(TokenRegistry::decode)
                .unwrap_or_default();
            let out = f(&mut reg)?;
            reg.version += 1;
            let stored = self
                .dev
                .metadata_compare_and_set(
                    rod_token::METADATA_KEY,
                    old,
                    reg.encode(),
                    Publish::SeenByAll,
                )
                .await
                .map_err(|e| self.metadata_error(e))?;
            if stored {
                self.install_tokens(reg);
                return Ok(out);
            }
        }
        Err(SenseData::new(
            SenseKey::AbortedCommand,
            Asc::INTERNAL_TARGET_FAILURE,
        ))
    }

    /// Reloads the token record (after the shared metadata changed).
    pub(crate) async fn reload_tokens(&self) {
        match self.read_tokens().await {
            Ok(reg) => self.install_tokens(reg),
            Err(_) => tracing::warn!(lun = self.cfg.lun, "cannot reload the ROD token record"),
        }
    }

    /// Keeps `reg` unless the record held is newer: a write's revocation must not be undone
    /// here by a read that started before it (the next write to the range would not revoke
    /// the token again).
    fn install_tokens(&self, reg: TokenRegistry) {
        let mut st = self.state();
        if reg.version >= st.tokens.version {
            st.tokens = reg;
        }
    }

    /// Before `blocks` blocks from `lba` are written: revokes the tokens standing for any of
    /// them (they are change vulnerable, SPC-4 ROD types). Costs a look at an empty list
    /// while no token is out.
    pub(crate) async fn before_write(&self, lba: u64, blocks: u64) -> Result<(), SenseData> {
        {
            let st = self.state();
            if st.tokens.tokens.is_empty() || !st.tokens.covers(lba, blocks, now_secs()) {
                return Ok(());
            }
        }
        let revoked = self
            .update_tokens(|reg| Ok(reg.revoke(lba, blocks)))
            .await?;
        if revoked {
            tracing::info!(
                lun = self.cfg.lun,
                lba,
                blocks,
                "a write to data a ROD token stands for revoked the token"
            );
        }
        Ok(())
    }

    /// POPULATE TOKEN (SBC-3): a token standing for the ranges given, as they are now.
    pub(crate) async fn populate_token(
        &self,
        cmd: &ScsiCommand<'_>,
    ) -> Result<ScsiResponse, SenseData> {
        let (key, list) = lid4_list(cmd);
        let p = rod_token::parse_populate_token(&list, self.block_count())?;
        let hold = self.hold_list(key.clone(), 0x10, true)?;
        let now = now_secs();
        let mut secret = [0u8; 16];
        secret[..8].copy_from_slice(&random_u64().to_be_bytes());
        secret[8..].copy_from_slice(&random_u64().to_be_bytes());
        let record = TokenRecord {
            id: random_u64(),
            secret,
            ranges: p.ranges,
            block_size: self.cfg.block_size,
            last_used: now,
            timeout: match p.inactivity_timeout {
                0 => rod_token::DEFAULT_INACTIVITY,
                t => t,
            },
            state: TokenState::Valid,
        };
        let made = self
            .update_tokens(|reg| {
                reg.prune(now);
                let ranges: usize = reg.tokens.iter().map(|t| t.ranges.len()).sum();
                if reg.tokens.len() >= rod_token::MAX_TOKENS
                    || ranges + record.ranges.len() > rod_token::MAX_RECORDED_RANGES
                {
                    return Err(SenseData::illegal(
                        Asc::INSUFFICIENT_RESOURCES_TO_CREATE_ROD_TOKEN,
                    ));
                }
                reg.tokens.push(record.clone());
                Ok(())
            })
            .await;
        let token = made.is_ok().then(|| {
            rod_token::build_token(&record, &crate::inquiry::naa_designator(&self.cfg.serial))
        });
        let outcome = made.map_err(ScsiResponse::from);
        self.note_copied(Some(&key), record.bytes());
        hold.finish(&outcome, token);
        outcome.map(|()| ScsiResponse::good()).or_else(Ok)
    }

    /// WRITE USING TOKEN (SBC-3): the data a token stands for, or zeroes for the block device
    /// zero ROD token, written over this LU's ranges.
    pub(crate) async fn write_using_token(
        &self,
        cmd: &ScsiCommand<'_>,
    ) -> Result<ScsiResponse, SenseData> {
        let (key, list) = lid4_list(cmd);
        let w = rod_token::parse_write_using_token(&list, self.block_count())?;
        if self.cfg.read_only {
            return Err(SenseData::new(SenseKey::DataProtect, Asc::WRITE_PROTECTED));
        }
        let presented = rod_token::read_token(&w.token)?;
        let hold = self.hold_list(key.clone(), 0x11, true)?;
        let outcome = self
            .run_write_using_token(&w, presented, cmd.nexus, &key)
            .await;
        hold.finish(&outcome, None);
        Ok(outcome.map(|()| ScsiResponse::good()).unwrap_or_else(|r| r))
    }

    async fn run_write_using_token(
        &self,
        w: &rod_token::WriteUsingToken,
        presented: PresentedToken,
        nexus: &ItNexus,
        key: &ListKey,
    ) -> Result<(), ScsiResponse> {
        ready_for_copy(self)?;
        let dst = self.this_party();
        let _admitted = self.admit_write(&dst).await?;
        let dbs = self.cfg.block_size as u64;
        let (naa, id, secret) = match presented {
            PresentedToken::Zero => {
                for r in w.ranges.iter().filter(|r| r.blocks > 0) {
                    self.before_write(r.lba, r.blocks as u64).await?;
                    self.dev
                        .write_zeroes(r.lba * dbs, r.blocks as u64 * dbs)
                        .await
                        .map_err(|e| self.io_error(e, true))?;
                    self.note_copied(Some(key), r.blocks as u64 * dbs);
                }
                return Ok(());
            }
            PresentedToken::Ours { naa, id, secret } => (naa, id, secret),
        };
        let src = self
            .resolve(&Designator {
                kind: 3,
                value: naa,
            })
            .ok_or_else(|| SenseData::illegal(Asc::REMOTE_TOKEN_USAGE_NOT_SUPPORTED))?;
        let now = now_secs();
        let reg = src.read_tokens().await?;
        // An unknown identifier and a wrong secret look alike: a guess learns nothing.
        let rec = reg
            .tokens
            .iter()
            .find(|t| t.id == id && rod_token::same_secret(&t.secret, &secret))
            .cloned()
            .ok_or_else(|| SenseData::illegal(Asc::TOKEN_UNKNOWN))?;
        match rec.state {
            TokenState::Revoked => return Err(SenseData::illegal(Asc::TOKEN_REVOKED).into()),
            TokenState::Deleted => return Err(SenseData::illegal(Asc::TOKEN_DELETED).into()),
            TokenState::Valid if rec.expired(now) => {
                return Err(SenseData::illegal(Asc::TOKEN_EXPIRED).into())
            }
            TokenState::Valid => {}
        }
        if copy_conflicts(&src, self, nexus).await {
            return Err(ScsiResponse::conflict());
        }
        ready_for_copy(&*src)?;
        // The token's data as one stream of source bytes, from OFFSET INTO ROD (in the
        // token's blocks), poured into this LU's ranges in order.
        let sbs = rec.block_size as u64;
        let mut source: Vec<(u64, u64)> = Vec::new();
        let mut skip = w.offset_into_rod.saturating_mul(sbs);
        for r in &rec.ranges {
            let len = r.blocks as u64 * sbs;
            if skip >= len {
                skip -= len;
                continue;
            }
            source.push((r.lba * sbs + skip, len - skip));
            skip = 0;
        }
        let mut source = source.into_iter();
        let mut current = source.next();
        for r in w.ranges.iter().filter(|r| r.blocks > 0) {
            let (mut at, end) = (r.lba * dbs, (r.lba + r.blocks as u64) * dbs);
            while at < end {
                let Some((s_off, s_len)) = current else {
                    // The token stands for less than the ranges ask (FreeBSD's CTL answers
                    // alike): what it had is written.
                    return Err(SenseData::invalid_param(8, None).into());
                };
                let n = s_len.min(end - at);
                if n % dbs != 0 || n % sbs != 0 {
                    return Err(SenseData::invalid_param(8, None).into());
                }
                self.copy_bytes(&src, self, s_off, at, n, Some(key)).await?;
                at += n;
                current = if n == s_len {
                    source.next()
                } else {
                    Some((s_off + n, s_len - n))
                };
            }
        }
        // Used: its inactivity timer starts again; DEL_TKN ends it.
        let delete = w.delete_token;
        src.update_tokens(|reg| {
            if let Some(t) = reg.tokens.iter_mut().find(|t| t.id == id) {
                t.last_used = now_secs();
                if delete && t.state == TokenState::Valid {
                    t.state = TokenState::Deleted;
                }
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// RECEIVE ROD TOKEN INFORMATION (SPC-4, third-party copy in, 07h): the status of a
    /// POPULATE TOKEN or WRITE USING TOKEN list of this nexus, and the token it made.
    pub(crate) fn receive_rod_token_information(
        &self,
        cmd: &ScsiCommand<'_>,
    ) -> Result<ScsiResponse, SenseData> {
        let key = (cmd.nexus.clone(), ListId::Lid4(be32(cmd.cdb, 2)));
        let alloc = be32(cmd.cdb, 10) as usize;
        let p = self
            .state()
            .copies
            .get(&key)
            .cloned()
            .ok_or_else(|| SenseData::invalid_cdb(2, None))?;
        let sense = p.sense.map(|s| s.to_fixed().to_vec()).unwrap_or_default();
        let mut d = vec![0u8; 32];
        d[4] = p.service_action;
        d[5] = match (p.done, p.failed) {
            (false, _) => 0x11, // in progress, foreground
            (true, false) => 0x01,
            (true, true) => 0x02,
        };
        d[8..12].copy_from_slice(&u32::MAX.to_be_bytes()); // no estimate
        d[13] = sense.len() as u8;
        d[14] = sense.len() as u8;
        d[15] = 0xf1; // TRANSFER COUNT UNITS: logical blocks
        d[16..24].copy_from_slice(&(p.bytes / self.cfg.block_size as u64).to_be_bytes());
        d.extend_from_slice(&sense);
        match &p.token {
            Some(t) => {
                d.extend_from_slice(&((t.len() + 2) as u32).to_be_bytes());
                d.extend_from_slice(&[0, 0]);
                d.extend_from_slice(t);
            }
            None => d.extend_from_slice(&0u32.to_be_bytes()),
        }
        let len = (d.len() - 4) as u32;
        d[0..4].copy_from_slice(&len.to_be_bytes());
        if p.done {
            // Reported once finished: the list is forgotten (as FreeBSD's CTL does).
            self.state().copies.remove(&key);
        }
        Ok(ScsiResponse::data_alloc(d, alloc))
    }
}
