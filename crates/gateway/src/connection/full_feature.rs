//! The full-feature phase of one connection (RFC 7143 §4.3) as a state machine without I/O:
//! PDUs, timer ticks and abort orders go in, [`Action`]s come out (PDUs to send, commands to
//! run, LU resets to apply, the end of the connection), in the order they must happen. The
//! tokio driver (`ffp.rs`) carries them out; the fuzzer and the unit tests drive it directly.
//!
//! Shared with what runs the commands: the [`Window`] (the writer stamps it and counts
//! responses) and the [`TaskTable`] (a running command takes its answer out of it, an abort
//! takes the command out first).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::AbortHandle;
use iscsi::dataout::{DataOutError, TransferParams, WriteTransfer};
use iscsi::params::Negotiated;
use iscsi::pdu::{Bhs, Opcode, Pdu, PduError, RejectReason, RESERVED_TAG};
use iscsi::text::TextPairs;
use scsi::lu::ResetKind;
use scsi::{Asc, ScsiResponse, ScsiStatus, SenseData, SenseKey};
use tracing::{debug, info, warn};

use super::reject;
use super::writer::{Acceptance, Residual, ScsiDone, Window};
use crate::admission::{Admission, MemoryCharge, Refusal};

/// Largest data-out buffer one command may make us hold.
pub const MAX_COMMAND_BUFFER: u64 = 32 << 20;

/// ITTs whose late Data-Out is dropped quietly, at most; beyond, the set starts over (their
/// Data-Out would then get a Reject, which is also correct).
const MAX_FAILED_ITTS: usize = 4096;

/// A text request is collected up to this many bytes (RFC 7143 §6.1 leaves the bound to us).
const MAX_TEXT_REQUEST: usize = 64 * 1024;

/// What the state machine needs of the session's target: which LUs this initiator may reach,
/// and the gateway's answer to SendTargets.
pub trait SessionView {
    /// A logical unit as the driver runs commands on it.
    type Lu: Clone;
    /// The LU a LUN field addresses, if this initiator may access it.
    fn lookup(&self, lun_raw: u64) -> Option<Self::Lu>;
    /// Its logical block size.
    fn block_size(lu: &Self::Lu) -> u32;
    /// Whether the initiator may access any LU of the target.
    fn has_luns(&self) -> bool;
    /// Takes the target and LUN map from a newer config; false when the target is no longer
    /// served here (the session then ends).
    fn refresh(&mut self) -> bool;
    /// The answer to `SendTargets=value`.
    fn send_targets(&self, value: &str) -> TextPairs;
}

/// A command whose data-out (if any) has arrived, to be run by the driver. It is in the
/// [`TaskTable`] already: it answers only if [`TaskTable::finish`] says it still may.
#[derive(Debug)]
pub struct Command<L> {
    pub itt: u32,
    pub lun_raw: u64,
    /// The LU, when the initiator may access it (else the command gets "no such LUN").
    pub lu: Option<L>,
    pub cdb: [u8; 16],
    pub edtl: u32,
    pub read: bool,
    pub residual: Option<Residual>,
    pub r2ts: u32,
    pub data_out: backstore::DataOutBuffer,
    pub memory: Option<MemoryCharge>,
}

impl<L> Command<L> {
    /// What the writer sends once the command produced `resp`.
    pub fn done(self, resp: ScsiResponse) -> ScsiDone {
        ScsiDone {
            itt: self.itt,
            resp,
            edtl: self.edtl,
            read: self.read,
            write_residual: self.residual,
            r2ts: self.r2ts,
            memory: self.memory,
        }
    }
}

/// What the driver does, in order; each completes before the next starts.
#[derive(Debug)]
pub enum Action<L> {
    /// A PDU; `advances` when it carries a status and takes the next StatSN.
    Send {
        pdu: Pdu,
        advances: bool,
    },
    /// A SCSI command answered without running.
    Respond(Box<ScsiDone>),
    Execute(Box<Command<L>>),
    /// CLEAR TASK SET on the LU: every nexus's tasks there (SAM-5 §7.4).
    ClearTaskSet(L),
    ResetLogicalUnit(L),
    /// A target reset of every LU the initiator may access.
    ResetTarget(ResetKind),
    /// Logout: wait (bounded) for the running commands, then end the I_T nexus when
    /// `end_nexus`, before the logout response goes (SPC-4 §5.9.2: the initiator's next login
    /// finds what it held released).
    DrainForLogout {
        end_nexus: bool,
    },
    /// Flush what was sent and close the connection (after a cold reset's response).
    Close,
    /// The connection ends here.
    End,
}

/// A running command: its LUN, what its response needs, and once it waits, the handle that
/// aborts it.
struct RunningTask {
    lun: u64,
    edtl: u32,
    read: bool,
    handle: Option<AbortHandle>,
}

/// The connection's running commands by ITT, shared with the tasks that run them.
#[derive(Default, Clone)]
pub struct TaskTable(Arc<Mutex<HashMap<u32, RunningTask>>>);

impl TaskTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, RunningTask>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, itt: u32, lun: u64, edtl: u32, read: bool) {
        self.lock().insert(
            itt,
            RunningTask {
                lun,
                edtl,
                read,
                handle: None,
            },
        );
    }

    /// The future running `itt` (waiting, after it was registered): an abort stops it.
    pub fn set_handle(&self, itt: u32, handle: AbortHandle) {
        if let Some(t) = self.lock().get_mut(&itt) {
            t.handle = Some(handle);
        }
    }

    /// The command `itt` finished: true when it still owns its answer (no abort took it).
    pub fn finish(&self, itt: u32) -> bool {
        self.lock().remove(&itt).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A task taken out by an abort: what its response would need.
struct EndedTask {
    itt: u32,
    edtl: u32,
    read: bool,
    r2ts: u32,
    /// It was still waiting for its Data-Out.
    waited_for_data: bool,
}

/// A write-direction command waiting for its data-out.
struct PendingWrite<L> {
    lu: Option<L>,
    lun_raw: u64,
    cdb: [u8; 16],
    edtl: u32,
    read: bool,
    residual: Option<Residual>,
    transfer: WriteTransfer,
    memory: Option<MemoryCharge>,
}

/// Fixed for the connection's life.
pub struct PhaseParams {
    pub negotiated: Negotiated,
    /// A normal session (SCSI allowed) rather than a discovery one.
    pub normal: bool,
    /// Who the log lines name.
    pub initiator: String,
    /// The initiator's address, which command memory is charged to.
    pub source: IpAddr,
    /// An idle connection pings the initiator after this long (NOP-In), and ends when the
    /// ping goes unanswered for `nopin_response`.
    pub nopin_interval: Duration,
    pub nopin_response: Duration,
}

pub struct FullFeaturePhase<L> {
    p: PhaseParams,
    admission: Arc<Admission>,
    window: Arc<Window>,
    tasks: TaskTable,
    pending: HashMap<u32, PendingWrite<L>>,
    next_ttt: u32,
    /// A SendTargets answer too long for one PDU: (TTT, what is left).
    text_out: Option<(u32, Bytes)>,
    text_in: Vec<u8>,
    /// Commands failed for a broken data sequence: their late Data-Out is dropped quietly.
    failed: HashSet<u32>,
    /// Our NOP-In ping waiting for its answer: (TTT, when sent).
    ping: Option<(u32, Instant)>,
    last_rx: Instant,
    logged_out: bool,
}

impl<L: Clone> FullFeaturePhase<L> {
    pub fn new(
        p: PhaseParams,
        admission: Arc<Admission>,
        window: Arc<Window>,
        now: Instant,
    ) -> Self {
        FullFeaturePhase {
            p,
            admission,
            window,
            tasks: TaskTable::default(),
            pending: HashMap::new(),
            next_ttt: 1,
            text_out: None,
            text_in: Vec::new(),
            failed: HashSet::new(),
            ping: None,
            last_rx: now,
            logged_out: false,
        }
    }

    pub fn tasks(&self) -> &TaskTable {
        &self.tasks
    }

    pub fn window(&self) -> &Arc<Window> {
        &self.window
    }

    /// Commands waiting for their Data-Out.
    pub fn waiting_for_data(&self) -> usize {
        self.pending.len()
    }

    /// Data-out bytes held for commands waiting for the rest of theirs.
    pub fn buffered(&self) -> u64 {
        self.pending.values().map(|p| p.transfer.buffered()).sum()
    }

    /// ITTs whose late Data-Out is remembered.
    pub fn remembered_failures(&self) -> usize {
        self.failed.len()
    }

    /// The connection ended in a logout the initiator asked for.
    pub fn logged_out(&self) -> bool {
        self.logged_out
    }

    /// When [`Self::on_timer`] next has something to do.
    pub fn deadline(&self) -> Instant {
        match self.ping {
            Some((_, sent)) => sent + self.p.nopin_response,
            None => self.last_rx + self.p.nopin_interval,
        }
    }

    /// The connection timer: pings an idle initiator (RFC 7143 §11.19), ends the connection
    /// when the ping went unanswered.
    pub fn on_timer(&mut self, now: Instant, out: &mut Vec<Action<L>>) {
        if now < self.deadline() {
            return;
        }
        if self.ping.is_some() {
            warn!(initiator = ?self.p.initiator,
                "no answer to NOP-In within {}s: dropping the connection",
                self.p.nopin_response.as_secs());
            out.push(Action::End);
            return;
        }
        let ttt = self.ttt();
        let mut r = Bhs::new(Opcode::NopIn);
        r.set_itt(RESERVED_TAG).set_ttt(ttt);
        self.ping = Some((ttt, now));
        send(out, Pdu::new(r), false);
    }

    /// Answers a command that writes nothing: its Data-Out, if any, still to come or late, is
    /// dropped quietly. (The command memory it was charged, if any, is freed here: it will
    /// hold no data.)
    fn answer_before_data(&mut self, out: &mut Vec<Action<L>>, done: ScsiDone) {
        self.forget_data_of(done.itt);
        respond(out, done);
    }

    /// The command `itt` ended before its data: its late Data-Out is to be dropped quietly.
    fn forget_data_of(&mut self, itt: u32) {
        if self.failed.len() >= MAX_FAILED_ITTS {
            self.failed.clear();
        }
        self.failed.insert(itt);
    }

    fn ttt(&mut self) -> u32 {
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        self.next_ttt
    }

    fn transfer_params(&self) -> TransferParams {
        let n = &self.p.negotiated;
        TransferParams {
            initial_r2t: n.initial_r2t,
            first_burst_length: n.first_burst_length,
            max_burst_length: n.max_burst_length,
            max_outstanding_r2t: n.max_outstanding_r2t,
        }
    }

    /// A framing error: recoverable ones get a Reject, the rest end the connection.
    pub fn on_pdu_error(&mut self, e: PduError, out: &mut Vec<Action<L>>) {
        warn!(initiator = ?self.p.initiator, "bad PDU: {e}");
        match e {
            PduError::DataDigest { bhs } => send_reject(out, RejectReason::DataDigestError, &bhs),
            PduError::DataSegmentTooLong { bhs, .. } => {
                send_reject(out, RejectReason::ProtocolError, &bhs)
            }
            PduError::HeaderDigest { .. } => out.push(Action::End),
        }
    }

    /// One PDU from the initiator.
    pub fn on_pdu<V>(&mut self, view: &mut V, pdu: Pdu, now: Instant, out: &mut Vec<Action<L>>)
    where
        V: SessionView<Lu = L>,
    {
        self.last_rx = now;
        let Some(op) = pdu.bhs.opcode() else {
            send_reject(out, RejectReason::CommandNotSupported, &pdu.bhs);
            return;
        };
        let normal = self.p.normal;
        match op {
            Opcode::ScsiCommand if normal => self.on_scsi_command(view, pdu, out),
            Opcode::DataOut if normal => self.on_data_out(pdu, out),
            Opcode::TaskMgmtRequest if normal => self.on_task_management(view, pdu, out),
            Opcode::NopOut => self.on_nop_out(pdu, out),
            Opcode::TextRequest => self.on_text(view, pdu, out),
            Opcode::LogoutRequest => self.on_logout(pdu, out),
            // Error recovery level 0: no SNACK (RFC 7143 §11.16).
            Opcode::SnackRequest => send_reject(out, RejectReason::SnackReject, &pdu.bhs),
            // A target opcode, a login in full feature phase, or SCSI in a discovery session.
            _ => send_reject(out, RejectReason::ProtocolError, &pdu.bhs),
        }
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

    fn on_scsi_command<V>(&mut self, view: &mut V, pdu: Pdu, out: &mut Vec<Action<L>>)
    where
        V: SessionView<Lu = L>,
    {
        let bhs = pdu.bhs;
        if !self.accept_cmd_sn(&bhs, true) {
            return;
        }
        let itt = bhs.itt();
        let flags = bhs.flags();
        let (read, write) = (flags & 0x40 != 0, flags & 0x20 != 0);
        let edtl = bhs.expected_data_transfer_length();
        // Immediate commands also hold a response slot until they finish, within a bound;
        // every command holds the memory its data may take, within the gateway's budget.
        let memory = if bhs.immediate() && !self.window.hold() {
            self.admission.immediate_refused(self.p.source);
            Err(Refusal::ImmediateCommands)
        } else {
            self.admission
                .charge(self.p.source, (edtl as u64).min(MAX_COMMAND_BUFFER))
        };
        let Ok(memory) = memory else {
            debug!(initiator = ?self.p.initiator, itt, outstanding = self.window.outstanding(),
                "TASK SET FULL");
            let resp = ScsiResponse::status(ScsiStatus::TaskSetFull);
            self.answer_before_data(out, ScsiDone::before_data(itt, resp, edtl, read));
            return;
        };
        self.failed.remove(&itt);
        if self.pending.contains_key(&itt) || self.tasks.lock().contains_key(&itt) {
            // An ITT is unique within the session (RFC 7143 §11.2.1.8): a second command
            // under one still in use is an overlapped command. SAM-5 §5.9.3: the tasks of the
            // I_T nexus are aborted (without responses) and the command gets CHECK CONDITION,
            // OVERLAPPED COMMANDS ATTEMPTED.
            let aborted = self.abort_where(|_, _| true);
            warn!(initiator = ?self.p.initiator, itt, aborted,
                "overlapped command (ITT in use): the session's tasks are aborted");
            self.answer_before_data(out, ScsiDone::before_data(itt, overlapped(), edtl, read));
            return;
        }
        if !view.refresh() {
            info!(initiator = ?self.p.initiator,
                "the target was removed from the config: ending its session");
            out.push(Action::End);
            return;
        }
        let mut cdb = [0u8; 16];
        cdb.copy_from_slice(bhs.cdb());
        if !pdu.ahs.is_empty() || (read && write) {
            // Extended CDBs and bidirectional commands: none of our commands use them.
            let resp = ScsiResponse::check(SenseData::invalid_opcode());
            self.answer_before_data(out, ScsiDone::before_data(itt, resp, edtl, read));
            return;
        }
        let lun_raw = bhs.lun_raw();
        let lu = view.lookup(lun_raw);
        let bs = lu.as_ref().map_or(512, V::block_size);
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
        let tp = self.transfer_params();
        // Commands without data-out complete their (empty) transfer at once.
        let transfer = if write && edtl > 0 {
            let keep = spdtl.min(edtl as u64).min(MAX_COMMAND_BUFFER) as u32;
            let mut transfer = WriteTransfer::new(edtl, keep, pdu.data, bhs.final_bit(), &tp);
            self.solicit(&mut transfer, itt, lun_raw, out);
            transfer
        } else {
            WriteTransfer::new(0, 0, Bytes::new(), true, &tp)
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
            self.execute(itt, pw, out);
        } else {
            self.pending.insert(itt, pw);
        }
    }

    /// Sends the R2Ts the transfer may have outstanding now.
    fn solicit(
        &mut self,
        transfer: &mut WriteTransfer,
        itt: u32,
        lun_raw: u64,
        out: &mut Vec<Action<L>>,
    ) {
        let tp = self.transfer_params();
        let mut next = self.next_ttt;
        let r2ts = transfer.next_r2ts(&tp, &mut || {
            next = next.wrapping_add(1);
            if next == RESERVED_TAG {
                next = 1;
            }
            next
        });
        self.next_ttt = next;
        for r in &r2ts {
            let mut bhs = Bhs::new(Opcode::ReadyToTransfer);
            bhs.set_lun_raw(lun_raw)
                .set_itt(itt)
                .set_ttt(r.ttt)
                .set_data_sn(r.r2t_sn)
                .set_buffer_offset(r.offset)
                .set_residual_count(r.len);
            send(out, Pdu::new(bhs), false);
        }
    }

    fn on_data_out(&mut self, pdu: Pdu, out: &mut Vec<Action<L>>) {
        let bhs = pdu.bhs;
        let itt = bhs.itt();
        let Some(mut pw) = self.pending.remove(&itt) else {
            if !self.failed.contains(&itt) {
                // Data for a command we do not know (finished, aborted or never accepted).
                send_reject(out, RejectReason::InvalidPduField, &bhs);
            }
            return;
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
            warn!(initiator = ?self.p.initiator, itt, "Data-Out sequence error: {e}; failing the command");
            let asc = match e {
                DataOutError::UnknownTtt(_) => Asc(0x4b, 0x01),
                DataOutError::Offset { .. } => Asc(0x4b, 0x05),
                _ => Asc(0x4b, 0x00),
            };
            let resp = ScsiResponse::check(SenseData::new(SenseKey::AbortedCommand, asc));
            let done = ScsiDone {
                r2ts: pw.transfer.r2t_count(),
                ..ScsiDone::before_data(itt, resp, pw.edtl, pw.read)
            };
            self.answer_before_data(out, done);
            return;
        }
        self.solicit(&mut pw.transfer, itt, pw.lun_raw, out);
        if pw.transfer.is_complete() {
            self.execute(itt, pw, out);
        } else {
            self.pending.insert(itt, pw);
        }
    }

    /// A command whose data-out (if any) is complete goes to the driver, registered first so
    /// that an abort always finds it.
    fn execute(&mut self, itt: u32, pw: PendingWrite<L>, out: &mut Vec<Action<L>>) {
        let lun = scsi::decode_lun(pw.lun_raw).unwrap_or(u64::MAX);
        self.tasks.register(itt, lun, pw.edtl, pw.read);
        let r2ts = pw.transfer.r2t_count();
        out.push(Action::Execute(Box::new(Command {
            itt,
            lun_raw: pw.lun_raw,
            lu: pw.lu,
            cdb: pw.cdb,
            edtl: pw.edtl,
            read: pw.read,
            residual: pw.residual,
            r2ts,
            data_out: backstore::DataOutBuffer::from_parts(pw.transfer.into_data()),
            memory: pw.memory,
        })));
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
        let mut tasks = self.tasks.lock();
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
        drop(tasks);
        for t in &ended {
            if t.waited_for_data {
                self.forget_data_of(t.itt);
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

    /// Another nexus's PREEMPT AND ABORT, CLEAR TASK SET or LOGICAL UNIT RESET, through this
    /// gateway or another, ends this nexus's tasks on LU `lun` (the driver checked that the
    /// order applies to this nexus): each is answered TASK ABORTED (the control mode page has
    /// TAS=1, SAM-5 §5.3.1); a write waiting for its data writes nothing and its late Data-Out
    /// is dropped.
    pub fn on_task_abort(&mut self, lun: u64, out: &mut Vec<Action<L>>) {
        let ended = self.take_tasks_where(|_, l| l == lun);
        if ended.is_empty() {
            return;
        }
        info!(
            initiator = ?self.p.initiator,
            lun,
            tasks = ended.len(),
            "tasks aborted by another nexus: answered TASK ABORTED"
        );
        for t in ended {
            let resp = ScsiResponse::status(ScsiStatus::TaskAborted);
            respond(
                out,
                ScsiDone {
                    r2ts: t.r2ts,
                    ..ScsiDone::before_data(t.itt, resp, t.edtl, t.read)
                },
            );
        }
    }

    /// Task management (RFC 7143 §11.5, SAM-5 §7).
    fn on_task_management<V>(&mut self, view: &mut V, pdu: Pdu, out: &mut Vec<Action<L>>)
    where
        V: SessionView<Lu = L>,
    {
        let bhs = pdu.bhs;
        if !self.accept_cmd_sn(&bhs, false) {
            return;
        }
        let function = bhs.flags() & 0x7f;
        let lun_raw = bhs.lun_raw();
        let lu = view.lookup(lun_raw);
        let lun = scsi::decode_lun(lun_raw).unwrap_or(u64::MAX);
        // Responses (RFC 7143 §11.6.1): 0 complete, 1 no such task, 2 no such LUN,
        // 4 reassignment unsupported, 5 function unsupported, 6 authorization failed. The
        // LU functions reach only LUNs this initiator may access (others: no such LUN).
        let response: u8 = match (function, lu) {
            (1 | 2 | 4 | 5, None) => 2,
            (1, Some(_)) => {
                let reference = bhs.ttt();
                if self.abort_where(|itt, _| itt == reference) > 0 {
                    0
                } else {
                    // RFC 7143 §11.5.1: a task never received but within the window counts
                    // as received and aborted.
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
            (2, Some(_)) => {
                self.abort_where(|_, l| l == lun);
                0
            }
            // CLEAR TASK SET: the one task set of the LU, every nexus's tasks (SAM-5 §7.4).
            (4, Some(lu)) => {
                self.abort_where(|_, l| l == lun);
                out.push(Action::ClearTaskSet(lu));
                0
            }
            (5, Some(lu)) => {
                self.abort_where(|_, l| l == lun);
                out.push(Action::ResetLogicalUnit(lu));
                info!(initiator = ?self.p.initiator, lun, "LOGICAL UNIT RESET");
                0
            }
            // RFC 7143 §11.5.1: a target reset acts on the logical units known to the issuing
            // initiator, which are those it may access: another initiator's LUNs (and their
            // reservations) are not its to reset. With none: function authorization failed.
            (6 | 7, _) if view.has_luns() => {
                let kind = if function == 6 {
                    ResetKind::TargetWarm
                } else {
                    ResetKind::TargetCold
                };
                self.abort_where(|_, _| true);
                out.push(Action::ResetTarget(kind));
                info!(initiator = ?self.p.initiator, "TARGET {} RESET",
                    if function == 6 { "WARM" } else { "COLD" });
                0
            }
            (6 | 7, _) => {
                warn!(initiator = ?self.p.initiator, function,
                    "target reset from an initiator without LUNs here: function authorization failed");
                6
            }
            (8, _) => 4,
            _ => 5,
        };
        let mut r = Bhs::new(Opcode::TaskMgmtResponse);
        r.0[2] = response;
        r.set_itt(bhs.itt());
        send(out, Pdu::new(r), true);
        if function == 7 && response == 0 {
            // SAM-5 §7.11: a cold reset ends the I_T nexus; RFC 7143 §11.5.1: the target
            // drops the connections after responding.
            out.push(Action::Close);
        }
    }

    fn on_nop_out(&mut self, pdu: Pdu, out: &mut Vec<Action<L>>) {
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
        send(out, Pdu::with_data(r, pdu.data), true);
    }

    /// Text requests: SendTargets, with long answers continued (RFC 7143 §11.10).
    fn on_text<V>(&mut self, view: &V, pdu: Pdu, out: &mut Vec<Action<L>>)
    where
        V: SessionView<Lu = L>,
    {
        let bhs = pdu.bhs;
        if !self.accept_cmd_sn(&bhs, false) {
            return;
        }
        let max = self.p.negotiated.max_xmit_data_segment_length.max(512) as usize;
        let itt = bhs.itt();
        let body: Bytes = match self.text_out.take() {
            Some((ttt, rest)) if bhs.ttt() == ttt => rest,
            _ => {
                self.text_in.extend_from_slice(&pdu.data);
                if bhs.flags() & 0x40 != 0 && self.text_in.len() < MAX_TEXT_REQUEST {
                    // More of the request follows.
                    let mut r = Bhs::new(Opcode::TextResponse);
                    r.set_flags(0).set_itt(itt).set_ttt(RESERVED_TAG);
                    send(out, Pdu::new(r), true);
                    return;
                }
                let text = std::mem::take(&mut self.text_in);
                let mut answer = TextPairs::new();
                match TextPairs::parse(&text) {
                    Ok(keys) => {
                        for (k, v) in &keys.0 {
                            if k == "SendTargets" {
                                answer.0.extend(view.send_targets(v).0);
                            } else {
                                answer.push(k.clone(), "NotUnderstood");
                            }
                        }
                    }
                    Err(e) => {
                        debug!("bad text request: {e}");
                        send_reject(out, RejectReason::ProtocolError, &bhs);
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
        send(out, Pdu::with_data(r, data), true);
    }

    fn on_logout(&mut self, pdu: Pdu, out: &mut Vec<Action<L>>) {
        let bhs = pdu.bhs;
        if !self.accept_cmd_sn(&bhs, false) {
            return;
        }
        let reason = bhs.flags() & 0x7f;
        // 0: closed successfully; 2: connection recovery is not supported (ERL 0).
        let response = if reason == 2 { 2 } else { 0 };
        if response == 0 {
            // Running commands finish first (RFC 7143 §11.14: the logout cleans up).
            out.push(Action::DrainForLogout { end_nexus: true });
        }
        let mut r = Bhs::new(Opcode::LogoutResponse);
        r.set_itt(bhs.itt());
        r.0[2] = response;
        r.set_u16_at(40, self.p.negotiated.default_time2wait as u16);
        r.set_u16_at(42, self.p.negotiated.default_time2retain as u16);
        send(out, Pdu::new(r), true);
        if response == 0 {
            self.logged_out = true;
            info!(initiator = ?self.p.initiator, "logout");
            out.push(Action::End);
        }
    }

    /// Asks the initiator to log out (Async Message, AsyncEvent 1, RFC 7143 §11.9.1).
    pub fn request_logout(&mut self, out: &mut Vec<Action<L>>) {
        let mut r = Bhs::new(Opcode::AsyncMessage);
        r.set_itt(RESERVED_TAG);
        r.0[36] = 1;
        r.0[37] = 0;
        r.set_u16_at(42, 5); // Parameter3: seconds to log out in
        send(out, Pdu::new(r), true);
    }
}

/// A command under an ITT still in use: OVERLAPPED COMMANDS ATTEMPTED (SAM-5 §5.3.3).
fn overlapped() -> ScsiResponse {
    ScsiResponse::check(SenseData::new(SenseKey::AbortedCommand, Asc(0x4e, 0x00)))
}

fn send<L>(out: &mut Vec<Action<L>>, pdu: Pdu, advances: bool) {
    out.push(Action::Send { pdu, advances });
}

fn send_reject<L>(out: &mut Vec<Action<L>>, reason: RejectReason, bhs: &Bhs) {
    send(out, reject(reason, bhs), true);
}

fn respond<L>(out: &mut Vec<Action<L>>, done: ScsiDone) {
    out.push(Action::Respond(Box::new(done)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::Limits;
    use std::net::Ipv4Addr;

    /// A target with one LU (LUN 0, 512-byte blocks) that the driver would run.
    struct OneLu;

    impl SessionView for OneLu {
        type Lu = ();
        fn lookup(&self, raw: u64) -> Option<()> {
            (scsi::decode_lun(raw) == Some(0)).then_some(())
        }
        fn block_size(_: &()) -> u32 {
            512
        }
        fn has_luns(&self) -> bool {
            true
        }
        fn refresh(&mut self) -> bool {
            true
        }
        fn send_targets(&self, _: &str) -> TextPairs {
            TextPairs::new()
        }
    }

    fn phase(depth: u32) -> FullFeaturePhase<()> {
        FullFeaturePhase::new(
            PhaseParams {
                negotiated: Negotiated::default(),
                normal: true,
                initiator: "iqn.2026-12.org.rbdgw:test".into(),
                source: IpAddr::V4(Ipv4Addr::LOCALHOST),
                nopin_interval: Duration::from_secs(5),
                nopin_response: Duration::from_secs(5),
            },
            Arc::new(Admission::new(Limits::default())),
            Arc::new(Window::new(1, depth)),
            Instant::now(),
        )
    }

    fn write10(itt: u32, cmd_sn: u32, blocks: u16) -> Pdu {
        let mut b = Bhs::default();
        b.0[0] = Opcode::ScsiCommand as u8;
        b.set_flags(0x80 | 0x20);
        b.set_itt(itt)
            .set_cmd_sn(cmd_sn)
            .set_ttt(blocks as u32 * 512);
        b.0[32] = 0x2a;
        b.0[39..41].copy_from_slice(&blocks.to_be_bytes());
        Pdu::new(b)
    }

    fn feed(p: &mut FullFeaturePhase<()>, pdu: Pdu) -> Vec<Action<()>> {
        let mut out = Vec::new();
        p.on_pdu(&mut OneLu, pdu, Instant::now(), &mut out);
        out
    }

    #[test]
    fn an_itt_in_use_is_an_overlapped_command() {
        let mut p = phase(8);
        let first = feed(&mut p, write10(7, 1, 8));
        assert!(
            matches!(&first[..], [Action::Send { .. }]),
            "an R2T: {first:?}"
        );
        assert_eq!(p.waiting_for_data(), 1);
        let second = feed(&mut p, write10(7, 2, 8));
        let [Action::Respond(done)] = &second[..] else {
            panic!("one answer: {second:?}")
        };
        let sense = done.resp.sense.expect("sense");
        assert_eq!(
            (sense.key, sense.asc),
            (SenseKey::AbortedCommand, Asc(0x4e, 0))
        );
        // SAM-5 §5.9.3: the first one is aborted too; its late Data-Out is dropped quietly.
        assert_eq!(p.waiting_for_data(), 0);
        let mut d = Bhs::default();
        d.0[0] = Opcode::DataOut as u8;
        d.set_itt(7).set_final(true);
        assert!(feed(&mut p, Pdu::with_data(d, Bytes::from(vec![0; 4096]))).is_empty());
    }

    #[test]
    fn commands_beyond_the_window_are_ignored() {
        let mut p = phase(2);
        assert_eq!(feed(&mut p, write10(1, 1, 1)).len(), 1);
        assert_eq!(feed(&mut p, write10(2, 2, 1)).len(), 1);
        assert!(
            feed(&mut p, write10(3, 3, 1)).is_empty(),
            "CmdSN 3 beyond MaxCmdSN 2"
        );
        assert_eq!(p.window().outstanding(), 2);
    }
}
