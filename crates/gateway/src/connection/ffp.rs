//! The full-feature phase of one connection (RFC 7143 §4.3): command dispatch, data-out
//! collection, task management, text (SendTargets), NOP, logout and shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use iscsi::dataout::{TransferParams, WriteTransfer};
use iscsi::login::{LoginResult, SessionType};
use iscsi::params::{Digest, Negotiated};
use iscsi::pdu::{Bhs, Opcode, Pdu, PduError, RejectReason, RESERVED_TAG};
use iscsi::text::TextPairs;
use scsi::{Asc, ItNexus, ScsiCommand, ScsiResponse, SenseData};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Commands moving at most this many bytes are first polled on the connection's task.
const INLINE_MAX: u32 = 64 * 1024;

use super::writer::{Acceptance, Out, Residual, ScsiDone, Window, Writer, WriterParams};
use super::{reject, PduReader};
use crate::admission::{Admission, MemoryCharge, SessionSlot};
use crate::config::{Acl, DEFAULT_NOPIN_RESPONSE_TIMEOUT, DEFAULT_NOPIN_TIMEOUT};
use crate::session::SessionKey;
use crate::target::{Gateway, Lu, TargetRuntime};

pub(super) struct Setup {
    pub gw: Arc<Gateway>,
    pub reader: PduReader,
    pub wr: OwnedWriteHalf,
    pub login: LoginResult,
    pub listen: SocketAddr,
    pub local: SocketAddr,
    pub peer: Option<SocketAddr>,
    pub shutdown: watch::Receiver<bool>,
    /// Its place among the gateway's sessions, freed when it ends.
    pub slot: SessionSlot,
}

/// The normal session's SCSI side.
struct ScsiSession {
    target: Arc<TargetRuntime>,
    nexus: ItNexus,
    luns: Vec<u64>,
    /// The gateway's config epoch `target` and `luns` come from.
    epoch: u64,
}

/// A write-direction command waiting for its data-out.
struct PendingWrite {
    lu: Option<Arc<Lu>>,
    lun_raw: u64,
    cdb: [u8; 16],
    edtl: u32,
    read: bool,
    residual: Option<Residual>,
    transfer: WriteTransfer,
    memory: Option<MemoryCharge>,
}

/// A running command: its LUN, what its response needs, and once spawned, the handle that
/// aborts it.
struct RunningTask {
    lun: u64,
    edtl: u32,
    read: bool,
    handle: Option<AbortHandle>,
}

/// Running commands by ITT.
type Tasks = Arc<Mutex<HashMap<u32, RunningTask>>>;

/// A task taken out by an abort: what its response would need.
struct EndedTask {
    itt: u32,
    edtl: u32,
    read: bool,
    r2ts: u32,
    /// It was still waiting for its Data-Out.
    waited_for_data: bool,
}

/// Largest data-out buffer one command may make us hold.
const MAX_COMMAND_BUFFER: u64 = 32 << 20;

struct Conn {
    gw: Arc<Gateway>,
    admission: Arc<Admission>,
    source: std::net::IpAddr,
    initiator: String,
    local: SocketAddr,
    params: Negotiated,
    tx: mpsc::Sender<Out>,
    window: Arc<Window>,
    scsi: Option<ScsiSession>,
    pending: HashMap<u32, PendingWrite>,
    tasks: Tasks,
    next_ttt: u32,
    /// A SendTargets answer too long for one PDU: (TTT, what is left).
    text_out: Option<(u32, Bytes)>,
    text_in: Vec<u8>,
    /// Commands failed for a broken data sequence: their late Data-Out is dropped quietly.
    failed: std::collections::HashSet<u32>,
    ping: Option<(u32, Instant)>,
    logged_out: bool,
}

fn lookup_lun(s: &ScsiSession, raw: u64) -> Option<Arc<Lu>> {
    let lun = scsi::decode_lun(raw)?;
    if !s.luns.contains(&lun) {
        return None;
    }
    s.target.luns.get(&lun).cloned()
}

pub(super) async fn run(setup: Setup) -> anyhow::Result<()> {
    let Setup {
        gw,
        mut reader,
        wr,
        login,
        listen,
        local,
        peer,
        mut shutdown,
        mut slot,
    } = setup;
    let p = login.params.clone();
    reader.decoder.header_digest = p.header_digest == Digest::Crc32c;
    reader.decoder.data_digest = p.data_digest == Digest::Crc32c;
    reader.decoder.max_recv_data_segment_length = p.max_recv_data_segment_length as usize;
    let target_rt = login.target_name.as_deref().and_then(|t| gw.target(t));
    let depth = target_rt
        .as_ref()
        .map_or(16, |t| t.cfg.attributes.cmdsn_depth);
    // How long an idle connection waits before it pings the initiator, and how long the ping
    // may go unanswered: the initiator's ACL attributes nopin_timeout and
    // nopin_response_timeout, as in LIO (whose defaults apply otherwise). 0: never ping.
    let acl = target_rt
        .as_ref()
        .and_then(|t| t.cfg.auth.acl(&login.initiator_name));
    let nopin_interval = match acl.map_or(DEFAULT_NOPIN_TIMEOUT, Acl::nopin_timeout) {
        0 => Duration::from_secs(365 * 86400),
        n => Duration::from_secs(n as u64),
    };
    let nopin_response = Duration::from_secs(
        acl.map_or(DEFAULT_NOPIN_RESPONSE_TIMEOUT, Acl::nopin_response_timeout) as u64,
    );
    let window = Arc::new(Window::new(login.exp_cmd_sn, depth));
    let (tx, rx) = mpsc::channel(1024);
    let writer = Writer {
        params: WriterParams {
            header_digest: reader.decoder.header_digest,
            data_digest: reader.decoder.data_digest,
            max_xmit_data_segment_length: p.max_xmit_data_segment_length,
            max_burst_length: p.max_burst_length,
            // What a NOP-In may wait for its answer is what a peer may leave us waiting.
            send_stall: nopin_response.max(Duration::from_secs(1)),
        },
        stat_sn: login.stat_sn,
        window: window.clone(),
    };
    let writer_task = tokio::spawn(writer.run(wr, rx));

    let mut session_key = None;
    let mut handle = None;
    let scsi = if login.session_type == SessionType::Normal {
        let name = login.target_name.clone().unwrap_or_default();
        let Some(target) = gw.target(&name) else {
            anyhow::bail!("target {name} vanished")
        };
        let key = SessionKey::new(&login.initiator_name, login.isid, &target.cfg.iqn);
        handle = Some(
            gw.sessions
                .register(key.clone(), login.tsih, Duration::from_secs(10))
                .await,
        );
        session_key = Some(key);
        let relative_port = gw.tpg_for(&target, listen).unwrap_or(1);
        let nexus = ItNexus {
            initiator: login.initiator_name.as_str().into(),
            isid: login.isid,
            relative_port,
        };
        // A new I_T nexus: whatever an older one with this identity held is gone.
        for lu in target.luns.values() {
            lu.nexus_lost(&nexus).await;
        }
        let luns = target.visible_luns(&login.initiator_name);
        Some(ScsiSession {
            epoch: gw.epoch(),
            target,
            nexus,
            luns,
        })
    } else {
        None
    };
    let mut aborts = gw.aborts.subscribe();
    let mut kill = handle
        .as_ref()
        .map(|h| h.kill.clone())
        .unwrap_or_else(|| watch::channel(false).1);

    let mut c = Conn {
        gw: gw.clone(),
        admission: slot.admission().clone(),
        source: slot.source(),
        initiator: login.initiator_name.clone(),
        local,
        params: p,
        tx: tx.clone(),
        window,
        scsi,
        pending: HashMap::new(),
        tasks: Arc::new(Mutex::new(HashMap::new())),
        next_ttt: 1,
        text_out: None,
        text_in: Vec::new(),
        failed: Default::default(),
        ping: None,
        logged_out: false,
    };

    let mut asked_logout = false;
    let mut last_rx = Instant::now();
    // One timer for the connection, moved only when it fires: a fresh sleep per PDU costs a
    // timer registration and removal each time.
    let idle = tokio::time::sleep(nopin_interval);
    tokio::pin!(idle);
    let result: anyhow::Result<()> = loop {
        tokio::select! {
            r = reader.next() => {
                match r {
                    Ok(Some(Ok(pdu))) => {
                        last_rx = Instant::now();
                        match c.on_pdu(pdu).await {
                            Ok(true) => {}
                            Ok(false) => break Ok(()),
                            Err(e) => break Err(e),
                        }
                    }
                    Ok(Some(Err(e))) => {
                        if !c.on_pdu_error(e).await {
                            break Ok(());
                        }
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e.into()),
                }
            }
            _ = &mut idle => {
                let deadline = match c.ping {
                    Some((_, sent)) => sent + nopin_response,
                    None => last_rx + nopin_interval,
                };
                if Instant::now() < deadline {
                    idle.as_mut().reset(deadline);
                    continue;
                }
                if c.ping.is_some() {
                    warn!(?peer, "no answer to NOP-In within {}s: dropping the connection", nopin_response.as_secs());
                    break Ok(());
                }
                c.send_ping().await;
                idle.as_mut().reset(Instant::now() + nopin_response);
            }
            order = aborts.recv(), if c.scsi.is_some() => match order {
                Ok(a) => c.on_task_abort(&a).await,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    warn!(?peer, missed = n, "too many task abort orders at once: some were not applied here");
                }
                // (The gateway outlives its sessions.)
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
            },
            Ok(()) = kill.changed() => {
                info!(?peer, "session replaced by a reinstating login");
                break Ok(());
            }
            _ = tx.closed() => {
                // The writer gave up (the initiator stopped reading, or the socket failed).
                break Ok(());
            }
            Ok(()) = slot.evicted.changed() => {
                info!(?peer, "discovery session closed to make room for a newer one");
                break Ok(());
            }
            Ok(()) = shutdown.changed(), if !asked_logout => {
                asked_logout = true;
                c.request_logout().await;
            }
        }
    };
    if asked_logout && !c.logged_out {
        debug!(?peer, "closing after shutdown");
    }
    if let Some(s) = &c.scsi {
        // Logout or connection loss: the I_T nexus is gone (SAM-5 §6.3.4).
        for lu in s.target.luns.values() {
            lu.nexus_lost(&s.nexus).await;
        }
    }
    let _ = tx.send(Out::Close).await;
    drop(c);
    drop(tx);
    let _ = writer_task.await;
    if let (Some(key), Some(h)) = (session_key, handle) {
        gw.sessions.unregister(&key, login.tsih);
        drop(h.done);
    }
    result
}

/// ITTs whose late Data-Out is dropped quietly, at most; beyond,
/// the set starts over (their Data-Out would then get a Reject, which is also correct).
const MAX_FAILED_ITTS: usize = 4096;

impl Conn {
    /// The command `itt` ended before its data: its late Data-Out is to be dropped quietly.
    fn forget_data_of(&mut self, itt: u32) {
        if self.failed.len() >= MAX_FAILED_ITTS {
            self.failed.clear();
        }
        self.failed.insert(itt);
    }

    async fn send(&self, pdu: Pdu, advances: bool) {
        let _ = self.tx.send(Out::Pdu { pdu, advances }).await;
    }

    async fn send_reject(&self, reason: RejectReason, bhs: &Bhs) {
        self.send(reject(reason, bhs), true).await;
    }

    fn ttt(&mut self) -> u32 {
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        self.next_ttt
    }

    fn transfer_params(&self) -> TransferParams {
        TransferParams {
            initial_r2t: self.params.initial_r2t,
            first_burst_length: self.params.first_burst_length,
            max_burst_length: self.params.max_burst_length,
            max_outstanding_r2t: self.params.max_outstanding_r2t,
        }
    }

    /// A framing error: recoverable ones get a Reject, the rest end the connection.
    async fn on_pdu_error(&mut self, e: PduError) -> bool {
        warn!(initiator = ?self.initiator, "bad PDU: {e}");
        match e {
            PduError::DataDigest { bhs } => {
                self.send_reject(RejectReason::DataDigestError, &bhs).await;
                true
            }
            PduError::DataSegmentTooLong { bhs, .. } => {
                self.send_reject(RejectReason::ProtocolError, &bhs).await;
                true
            }
            PduError::HeaderDigest { .. } => false,
        }
    }

    /// Handles one PDU; `Ok(false)` ends the connection.
    async fn on_pdu(&mut self, pdu: Pdu) -> anyhow::Result<bool> {
        let Some(op) = pdu.bhs.opcode() else {
            self.send_reject(RejectReason::CommandNotSupported, &pdu.bhs)
                .await;
            return Ok(true);
        };
        let discovery = self.scsi.is_none();
        match op {
            Opcode::ScsiCommand if !discovery => self.on_scsi_command(pdu).await,
            Opcode::DataOut if !discovery => self.on_data_out(pdu).await,
            Opcode::TaskMgmtRequest if !discovery => {
                self.on_task_management(pdu).await;
                Ok(true)
            }
            Opcode::NopOut => {
                self.on_nop_out(pdu).await;
                Ok(true)
            }
            Opcode::TextRequest => {
                self.on_text(pdu).await;
                Ok(true)
            }
            Opcode::LogoutRequest => self.on_logout(pdu).await,
            Opcode::SnackRequest => {
                // Error recovery level 0: no SNACK (RFC 7143 §11.16).
                self.send_reject(RejectReason::SnackReject, &pdu.bhs).await;
                Ok(true)
            }
            o if !o.is_initiator() => {
                self.send_reject(RejectReason::ProtocolError, &pdu.bhs)
                    .await;
                Ok(true)
            }
            _ => {
                // A login in full feature phase, or SCSI in a discovery session.
                self.send_reject(RejectReason::ProtocolError, &pdu.bhs)
                    .await;
                Ok(true)
            }
        }
    }

    /// After a config change, takes the session's target and LUN map from the new version;
    /// false when the target is no longer served here (the connection then ends).
    fn follow_config(&mut self) -> bool {
        let epoch = self.gw.epoch();
        let Some(s) = self.scsi.as_mut().filter(|s| s.epoch != epoch) else {
            return true;
        };
        let Some(target) = self.gw.target(&s.target.cfg.iqn) else {
            info!(
                target = %s.target.cfg.iqn,
                initiator = ?self.initiator,
                "the target was removed from the config: ending its session"
            );
            return false;
        };
        s.luns = target.visible_luns(&self.initiator);
        s.target = target;
        s.epoch = epoch;
        true
    }

    /// CmdSN check for a non-immediate request; false when it must be ignored.
    fn accept_cmd_sn(&self, bhs: &Bhs, counts: bool) -> bool {
        if bhs.immediate() {
            return true;
        }
        match self.window.accept(bhs.cmd_sn(), counts) {
            Acceptance::Accepted => true,
            Acceptance::Ignore => {
                debug!(
                    cmd_sn = bhs.cmd_sn(),
                    "CmdSN outside the window: ignored (RFC 7143 §4.2.2.1)"
                );
                false
            }
        }
    }

    async fn on_scsi_command(&mut self, pdu: Pdu) -> anyhow::Result<bool> {
        let bhs = pdu.bhs;
        if !self.accept_cmd_sn(&bhs, true) {
            return Ok(true);
        }
        let itt = bhs.itt();
        let flags = bhs.flags();
        let (read, write) = (flags & 0x40 != 0, flags & 0x20 != 0);
        let edtl = bhs.expected_data_transfer_length();
        // Immediate commands also hold a response slot until they finish, within a bound;
        // every command holds the memory its data may take, within the gateway's budget.
        let memory = if bhs.immediate() && !self.window.hold() {
            self.admission.immediate_refused(self.source);
            Err(crate::admission::Refusal::ImmediateCommands)
        } else {
            self.admission
                .charge(self.source, (edtl as u64).min(MAX_COMMAND_BUFFER))
        };
        let Ok(memory) = memory else {
            debug!(initiator = ?self.initiator, itt, outstanding = self.window.outstanding(),
                "TASK SET FULL");
            // (Its Data-Out, if any, is dropped quietly.)
            self.forget_data_of(itt);
            let resp = ScsiResponse::status(scsi::ScsiStatus::TaskSetFull);
            self.finish(ScsiDone::before_data(itt, resp, edtl, read))
                .await;
            return Ok(true);
        };
        self.failed.remove(&itt);
        let lun_raw = bhs.lun_raw();
        let mut cdb = [0u8; 16];
        cdb.copy_from_slice(bhs.cdb());
        if !self.follow_config() {
            return Ok(false);
        }
        let Some(s) = &self.scsi else { return Ok(true) };
        if !pdu.ahs.is_empty() || (read && write) {
            // Extended CDBs and bidirectional commands: none of our commands use them.
            let resp = ScsiResponse::check(SenseData::invalid_opcode());
            self.finish(ScsiDone::before_data(itt, resp, edtl, read))
                .await;
            return Ok(true);
        }
        let lu = lookup_lun(s, lun_raw);
        let bs = lu.as_ref().map_or(512, |l| l.config().block_size);
        let mut spdtl = scsi::data_out_length(&cdb, bs);
        let residual = if spdtl > edtl as u64 {
            let residual = Some(Residual::Overflow(
                (spdtl - edtl as u64).min(u32::MAX as u64) as u32,
            ));
            // FCP-4 §9.4.2 a): a WRITE whose EDTL is shorter than its transfer length writes
            // the whole blocks EDTL covers and reports the overflow; b) any other command
            // finds its data-out short and refuses.
            if scsi::sbc::truncate_write(&mut cdb, edtl / bs) {
                spdtl = scsi::data_out_length(&cdb, bs);
            }
            residual
        } else if write && (edtl as u64) > spdtl {
            Some(Residual::Underflow((edtl as u64 - spdtl) as u32))
        } else {
            None
        };
        // Commands without data-out complete their (empty) transfer at once.
        let transfer = if write && edtl > 0 {
            let keep = spdtl.min(edtl as u64).min(MAX_COMMAND_BUFFER) as u32;
            let tp = self.transfer_params();
            let mut transfer =
                WriteTransfer::new(edtl, keep, pdu.data.clone(), bhs.final_bit(), &tp);
            let mut next = self.next_ttt;
            let r2ts = transfer.next_r2ts(&tp, &mut || {
                next = next.wrapping_add(1);
                next
            });
            self.next_ttt = next;
            for r in &r2ts {
                self.send_r2t(itt, lun_raw, r).await;
            }
            transfer
        } else {
            WriteTransfer::new(0, 0, bytes::Bytes::new(), true, &self.transfer_params())
        };
        let pw = PendingWrite {
            lu,
            lun_raw,
            cdb,
            edtl,
            read,
            residual,
            transfer,
            memory,
        };
        if pw.transfer.is_complete() {
            self.dispatch(itt, pw).await;
        } else {
            self.pending.insert(itt, pw);
        }
        Ok(true)
    }

    async fn send_r2t(&self, itt: u32, lun_raw: u64, r: &iscsi::dataout::R2t) {
        let mut bhs = Bhs::new(Opcode::ReadyToTransfer);
        bhs.set_lun_raw(lun_raw)
            .set_itt(itt)
            .set_ttt(r.ttt)
            .set_data_sn(r.r2t_sn)
            .set_buffer_offset(r.offset)
            .set_residual_count(r.len);
        self.send(Pdu::new(bhs), false).await;
    }

    async fn on_data_out(&mut self, pdu: Pdu) -> anyhow::Result<bool> {
        let bhs = pdu.bhs;
        let itt = bhs.itt();
        let tp = self.transfer_params();
        let Some(pw) = self.pending.get_mut(&itt) else {
            if self.failed.contains(&itt) {
                return Ok(true);
            }
            // Data for a command we do not know (finished, aborted or never accepted).
            self.send_reject(RejectReason::InvalidPduField, &bhs).await;
            return Ok(true);
        };
        if let Err(e) = pw.transfer.on_data_out(
            bhs.ttt(),
            bhs.data_sn(),
            bhs.buffer_offset(),
            pdu.data,
            bhs.final_bit(),
        ) {
            // At error recovery level 0 the target cannot ask for the data again (RFC 7143
            // §7.1.4.1): the command ends with a data phase error and writes nothing; its
            // further Data-Out PDUs are dropped.
            warn!(initiator = ?self.initiator, itt, "Data-Out sequence error: {e}; failing the command");
            let asc = match e {
                iscsi::dataout::DataOutError::UnknownTtt(_) => Asc(0x4b, 0x01),
                iscsi::dataout::DataOutError::Offset { .. } => Asc(0x4b, 0x05),
                _ => Asc(0x4b, 0x00),
            };
            if let Some(pw) = self.pending.remove(&itt) {
                let resp = ScsiResponse::check(SenseData::new(scsi::SenseKey::AbortedCommand, asc));
                let r2ts = pw.transfer.r2t_count();
                self.forget_data_of(itt);
                self.finish(ScsiDone {
                    itt,
                    resp,
                    edtl: pw.edtl,
                    read: pw.read,
                    write_residual: None,
                    r2ts,
                    memory: None,
                })
                .await;
            }
            return Ok(true);
        }
        let mut next = self.next_ttt;
        let r2ts = pw.transfer.next_r2ts(&tp, &mut || {
            next = next.wrapping_add(1);
            next
        });
        self.next_ttt = next;
        let lun_raw = pw.lun_raw;
        for r in &r2ts {
            self.send_r2t(itt, lun_raw, r).await;
        }
        if self
            .pending
            .get(&itt)
            .is_some_and(|p| p.transfer.is_complete())
        {
            if let Some(pw) = self.pending.remove(&itt) {
                self.dispatch(itt, pw).await;
            }
        }
        Ok(true)
    }

    /// Queues a finished command's response.
    async fn finish(&self, done: ScsiDone) {
        let _ = self.tx.send(Out::Scsi(Box::new(done))).await;
    }

    /// Runs a command whose data-out (if any) is complete: a small one first right here, as
    /// far as it goes without waiting, then (if it must wait) as a task of its own.
    async fn dispatch(&mut self, itt: u32, pw: PendingWrite) {
        let Some(s) = &self.scsi else { return };
        let PendingWrite {
            lu,
            lun_raw,
            cdb,
            edtl,
            read,
            residual,
            transfer,
            memory,
        } = pw;
        let r2ts = transfer.r2t_count();
        let data_out = backstore::DataOutBuffer::from_parts(transfer.into_data());
        let tx = self.tx.clone();
        let nexus = s.nexus.clone();
        let luns = s.luns.clone();
        let tasks = self.tasks.clone();
        let lun = scsi::decode_lun(lun_raw).unwrap_or(u64::MAX);
        let owner = s
            .target
            .owners
            .get(&lun)
            .filter(|_| crate::ownership::needs_ownership(cdb[0]))
            .cloned();
        let fut = async move {
            let resp = if cdb[0] == 0xa0 {
                scsi::reports::report_luns(&cdb, &luns)
            } else if let Some(lu) = &lu {
                // Only the owner writes: a write elsewhere takes the ownership over first.
                // A write that will conflict with a reservation does not move the lock.
                let cmd = ScsiCommand {
                    cdb: &cdb,
                    nexus: &nexus,
                    data_out: Default::default(),
                    transfer_length: edtl,
                };
                let guard = match &owner {
                    // (Checked only off the owner: on it the guard costs two atomics.)
                    Some(o) if o.is_owner() || !lu.conflicts(&cmd).await => {
                        o.write_guard().await.map(Some)
                    }
                    _ => Ok(None),
                };
                match guard {
                    Ok(_guard) => {
                        lu.execute(&ScsiCommand {
                            cdb: &cdb,
                            nexus: &nexus,
                            data_out,
                            transfer_length: edtl,
                        })
                        .await
                    }
                    Err(sense) => ScsiResponse::check(sense),
                }
            } else {
                scsi::no_such_lun(&cdb)
            };
            (resp, read, edtl, residual, r2ts, memory)
        };
        // Registered before it runs, so an abort always finds it; the lock is not held across
        // the spawn, where a task that finishes at once would wait for it.
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).insert(
            itt,
            RunningTask {
                lun,
                edtl,
                read,
                handle: None,
            },
        );
        let mut task = Box::pin(async move {
            let (resp, read, edtl, residual, r2ts, memory) = fut.await;
            let owned = tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&itt)
                .is_some();
            if owned {
                let done = ScsiDone {
                    itt,
                    resp,
                    edtl,
                    read,
                    write_residual: residual,
                    r2ts,
                    memory,
                };
                let _ = tx.send(Out::Scsi(Box::new(done))).await;
            }
        });
        // A small command on an in-memory engine completes in its first poll. Polled here it
        // costs no task and no wake-up of another worker thread (thread switches were the
        // top item, 15%, of the profile of 4 KiB writes at queue depth 32). A large one runs
        // apart, so that this reader receives the next command's data meanwhile. What waits
        // is spawned; its first poll there registers the task's own waker.
        if edtl <= INLINE_MAX {
            let done = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(std::future::Future::poll(task.as_mut(), cx).is_ready())
            })
            .await;
            if done {
                return;
            }
        }
        let task = tokio::spawn(task);
        // Gone already: it finished (and answered), or an abort took it before it was
        // spawned (it then runs on but never answers).
        if let Some(entry) = self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&itt)
        {
            entry.handle = Some(task.abort_handle());
        }
    }

    /// Takes matching tasks out (waiting for data-out or running; a running one's task is
    /// aborted): what their responses would need, and whether they waited for data.
    fn take_tasks_where(&mut self, pred: impl Fn(u32, u64) -> bool) -> Vec<EndedTask> {
        let on = |itt: u32, raw: u64| pred(itt, scsi::decode_lun(raw).unwrap_or(u64::MAX));
        let waiting: Vec<u32> = self
            .pending
            .iter()
            .filter(|(itt, pw)| on(**itt, pw.lun_raw))
            .map(|(itt, _)| *itt)
            .collect();
        let mut ended: Vec<EndedTask> = waiting
            .into_iter()
            .filter_map(|itt| self.pending.remove(&itt).map(|pw| (itt, pw)))
            .map(|(itt, pw)| EndedTask {
                itt,
                edtl: pw.edtl,
                read: pw.read,
                r2ts: pw.transfer.r2t_count(),
                waited_for_data: true,
            })
            .collect();
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let running: Vec<u32> = tasks
            .iter()
            .filter(|(itt, t)| pred(**itt, t.lun))
            .map(|(itt, _)| *itt)
            .collect();
        for itt in running {
            if let Some(t) = tasks.remove(&itt) {
                if let Some(h) = t.handle {
                    h.abort();
                }
                ended.push(EndedTask {
                    itt,
                    edtl: t.edtl,
                    read: t.read,
                    r2ts: 0,
                    waited_for_data: false,
                });
            }
        }
        ended
    }

    /// Aborts matching tasks of this nexus's own task management: they end without a
    /// response (SAM-5); returns how many.
    fn abort_where(&mut self, pred: impl Fn(u32, u64) -> bool) -> usize {
        let ended = self.take_tasks_where(pred);
        for _ in &ended {
            self.window.complete();
        }
        ended.len()
    }

    /// Another nexus's PREEMPT AND ABORT, CLEAR TASK SET or LOGICAL UNIT RESET, through
    /// this gateway or another, ends this nexus's tasks on one LU: each is answered TASK
    /// ABORTED (the control mode page has TAS=1, SAM-5 §5.3.1), a write waiting for its
    /// data writes nothing and its late Data-Out is dropped.
    async fn on_task_abort(&mut self, a: &scsi::TaskAbort) {
        let Some(s) = &self.scsi else { return };
        if !s.target.cfg.iqn.eq_ignore_ascii_case(&a.target)
            || !s.luns.contains(&a.lun)
            || !a.applies_to(&s.nexus)
        {
            return;
        }
        let ended = self.take_tasks_where(|_, lun| lun == a.lun);
        if ended.is_empty() {
            return;
        }
        info!(
            initiator = ?self.initiator,
            lun = a.lun,
            tasks = ended.len(),
            "tasks aborted by another nexus: answered TASK ABORTED"
        );
        for t in ended {
            if t.waited_for_data {
                self.forget_data_of(t.itt);
            }
            self.finish(ScsiDone {
                itt: t.itt,
                resp: ScsiResponse::status(scsi::ScsiStatus::TaskAborted),
                edtl: t.edtl,
                read: t.read,
                write_residual: None,
                r2ts: t.r2ts,
                memory: None,
            })
            .await;
        }
    }

    /// Task management (RFC 7143 §11.5, SAM-5 §7).
    async fn on_task_management(&mut self, pdu: Pdu) {
        let bhs = pdu.bhs;
        if !self.accept_cmd_sn(&bhs, false) {
            return;
        }
        let function = bhs.flags() & 0x7f;
        let lun_raw = bhs.lun_raw();
        let lu = self.scsi.as_ref().and_then(|s| lookup_lun(s, lun_raw));
        let lun = scsi::decode_lun(lun_raw).unwrap_or(u64::MAX);
        // Responses (RFC 7143 §11.6.1): 0 complete, 1 no such task, 2 no such LUN,
        // 4 reassignment unsupported, 5 function unsupported, 6 authorization failed. The
        // LU functions reach only LUNs this initiator may access (others: no such LUN).
        let response: u8 = match function {
            1 => {
                let reference = bhs.ttt();
                if lu.is_none() {
                    2
                } else if self.abort_where(|itt, _| itt == reference) > 0 {
                    0
                } else {
                    // RFC 7143 §11.5.1: a task never received but within the window counts as
                    // received and aborted.
                    let ref_cmd_sn = bhs.max_cmd_sn();
                    let (exp, _) = self.window.stamp();
                    if iscsi::seq::sn_lt(ref_cmd_sn, bhs.cmd_sn())
                        && !iscsi::seq::sn_lt(ref_cmd_sn, exp)
                    {
                        0
                    } else {
                        1
                    }
                }
            }
            2 => match lu {
                None => 2,
                Some(_) => {
                    self.abort_where(|_, l| l == lun);
                    0
                }
            },
            // CLEAR TASK SET: the one task set of the LU, every nexus's tasks (SAM-5 §7.4).
            4 => match lu {
                None => 2,
                Some(lu) => {
                    self.abort_where(|_, l| l == lun);
                    if let Some(s) = &self.scsi {
                        lu.clear_task_set(&s.nexus).await;
                    }
                    0
                }
            },
            5 => match lu {
                None => 2,
                Some(lu) => {
                    self.abort_where(|_, l| l == lun);
                    lu.reset(
                        scsi::lu::ResetKind::LogicalUnit,
                        self.scsi.as_ref().map(|s| &s.nexus),
                    )
                    .await;
                    info!(initiator = ?self.initiator, lun, "LOGICAL UNIT RESET");
                    0
                }
            },
            // RFC 7143 §11.5.1: a target reset acts on the logical units known to the
            // issuing initiator, which are those it may access: another initiator's LUNs
            // (and their reservations) are not its to reset. With none: 6, function
            // authorization failed.
            6 | 7 => match &self.scsi {
                Some(s) if !s.luns.is_empty() => {
                    let kind = if function == 6 {
                        scsi::lu::ResetKind::TargetWarm
                    } else {
                        scsi::lu::ResetKind::TargetCold
                    };
                    let luns: Vec<Arc<Lu>> = s
                        .luns
                        .iter()
                        .filter_map(|l| s.target.luns.get(l).cloned())
                        .collect();
                    let nexus = s.nexus.clone();
                    self.abort_where(|_, _| true);
                    for lu in luns {
                        lu.reset(kind, Some(&nexus)).await;
                    }
                    info!(initiator = ?self.initiator, "TARGET {} RESET", if function == 6 { "WARM" } else { "COLD" });
                    0
                }
                _ => {
                    warn!(initiator = ?self.initiator, function, "target reset from an initiator without LUNs here: function authorization failed");
                    6
                }
            },
            8 => 4,
            _ => 5,
        };
        let mut r = Bhs::new(Opcode::TaskMgmtResponse);
        r.0[2] = response;
        r.set_itt(bhs.itt());
        self.send(Pdu::new(r), true).await;
        if function == 7 && response == 0 {
            // SAM-5 §7.11: a cold reset ends the I_T nexus; RFC 7143 §11.5.1: the target
            // drops the connections after responding.
            let _ = self.tx.send(Out::Close).await;
        }
    }

    async fn on_nop_out(&mut self, pdu: Pdu) {
        let bhs = pdu.bhs;
        if bhs.itt() == RESERVED_TAG {
            // The answer to our NOP-In ping (RFC 7143 §11.18).
            if self.ping.is_some_and(|(ttt, _)| ttt == bhs.ttt()) {
                self.ping = None;
            }
            return;
        }
        if !self.accept_cmd_sn(&bhs, false) {
            return;
        }
        let mut r = Bhs::new(Opcode::NopIn);
        r.set_lun_raw(bhs.lun_raw())
            .set_itt(bhs.itt())
            .set_ttt(RESERVED_TAG);
        self.send(Pdu::with_data(r, pdu.data.clone()), true).await;
    }

    async fn send_ping(&mut self) {
        let ttt = self.ttt();
        let mut r = Bhs::new(Opcode::NopIn);
        r.set_itt(RESERVED_TAG).set_ttt(ttt);
        self.ping = Some((ttt, Instant::now()));
        self.send(Pdu::new(r), false).await;
    }

    /// Text requests: SendTargets, with long answers continued (RFC 7143 §11.10).
    async fn on_text(&mut self, pdu: Pdu) {
        let bhs = pdu.bhs;
        if !self.accept_cmd_sn(&bhs, false) {
            return;
        }
        let max = self.params.max_xmit_data_segment_length.max(512) as usize;
        let itt = bhs.itt();
        let body: Bytes = match self.text_out.take() {
            Some((ttt, rest)) if bhs.ttt() == ttt => rest,
            _ => {
                self.text_in.extend_from_slice(&pdu.data);
                if bhs.flags() & 0x40 != 0 && self.text_in.len() < 64 * 1024 {
                    // More of the request follows.
                    let mut r = Bhs::new(Opcode::TextResponse);
                    r.set_flags(0).set_itt(itt).set_ttt(RESERVED_TAG);
                    self.send(Pdu::new(r), true).await;
                    return;
                }
                let text = std::mem::take(&mut self.text_in);
                let mut answer = TextPairs::new();
                match TextPairs::parse(&text) {
                    Ok(keys) => {
                        for (k, v) in &keys.0 {
                            if k == "SendTargets" {
                                let own = self.scsi.as_ref().map(|s| s.target.cfg.iqn.clone());
                                let st = crate::discovery::send_targets(
                                    &self.gw,
                                    &self.initiator,
                                    v,
                                    own.as_deref(),
                                    self.local,
                                );
                                answer.0.extend(st.0);
                            } else {
                                answer.push(k.clone(), "NotUnderstood");
                            }
                        }
                    }
                    Err(e) => {
                        debug!("bad text request: {e}");
                        self.send_reject(RejectReason::ProtocolError, &bhs).await;
                        return;
                    }
                }
                Bytes::from(answer.encode())
            }
        };
        let mut r = Bhs::new(Opcode::TextResponse);
        r.set_itt(itt);
        let data = if body.len() > max {
            let ttt = self.ttt();
            self.text_out = Some((ttt, body.slice(max..)));
            r.set_flags(0x40).set_ttt(ttt);
            body.slice(..max)
        } else {
            r.set_flags(0x80).set_ttt(RESERVED_TAG);
            body
        };
        self.send(Pdu::with_data(r, data), true).await;
    }

    async fn on_logout(&mut self, pdu: Pdu) -> anyhow::Result<bool> {
        let bhs = pdu.bhs;
        if !self.accept_cmd_sn(&bhs, false) {
            return Ok(true);
        }
        let reason = bhs.flags() & 0x7f;
        // Let running commands finish first (RFC 7143 §11.14: the logout cleans up).
        let deadline = Instant::now() + Duration::from_secs(10);
        while (!self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty())
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if reason != 2 {
            // The I_T nexus ends with the logout: release what it held before answering, so
            // the initiator's next login finds it released (SPC-4 §5.9.2).
            if let Some(sess) = &self.scsi {
                for lu in sess.target.luns.values() {
                    lu.nexus_lost(&sess.nexus).await;
                }
            }
        }
        let mut r = Bhs::new(Opcode::LogoutResponse);
        r.set_itt(bhs.itt());
        // 0: closed successfully; 2: connection recovery is not supported (ERL 0).
        let response = if reason == 2 { 2 } else { 0 };
        r.0[2] = response;
        r.set_u16_at(40, self.params.default_time2wait as u16);
        r.set_u16_at(42, self.params.default_time2retain as u16);
        self.send(Pdu::new(r), true).await;
        if response != 0 {
            return Ok(true);
        }
        self.logged_out = true;
        info!(initiator = ?self.initiator, "logout");
        Ok(false)
    }

    /// Asks the initiator to log out (Async Message, AsyncEvent 1, RFC 7143 §11.9.1).
    async fn request_logout(&mut self) {
        let mut r = Bhs::new(Opcode::AsyncMessage);
        r.set_itt(RESERVED_TAG);
        r.0[36] = 1;
        r.0[37] = 0;
        r.set_u16_at(42, 5); // Parameter3: seconds to log out in
        self.send(Pdu::new(r), true).await;
    }
}
