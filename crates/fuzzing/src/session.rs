//! Whole full-feature sessions against memory LUs: the input chooses the negotiated
//! parameters, then a sequence of events (commands, Data-Out for the R2Ts received or made
//! up, task management, NOP, text, logout, raw PDUs, commands completing in any order, the
//! timer, other nexuses' aborts). Everything the state machine sends goes through the real
//! writer and is decoded back. Checked, after every event:
//! - nothing sent has a data segment beyond the initiator's MaxRecvDataSegmentLength;
//! - no command is answered twice, and nothing answers a command never sent;
//! - ExpCmdSN and MaxCmdSN never go back, and the window never opens beyond the depth;
//!   StatSN advances by one per status;
//! - no more than the depth (plus twice the depth of immediate commands) outstanding;
//! - data-out held stays within the command memory budget, per command within its bound;
//!
//! and whenever no command is running: every accepted command was answered, aborted by the
//! session's own task management, or is waiting for its Data-Out (the window's count of
//! outstanding commands is exactly those waiting).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backstore::FileDevice;
use bytes::{Bytes, BytesMut};
use gateway::admission::{Admission, Limits};
use gateway::connection::full_feature::{
    Action, Command, FullFeaturePhase, PhaseParams, SessionView, MAX_COMMAND_BUFFER,
};
use gateway::connection::writer::{Out, Window, Wire, Writer, WriterParams};
use iscsi::params::Negotiated;
use iscsi::pdu::{Bhs, Opcode, Pdu, PduDecoder, PduError, RESERVED_TAG};
use iscsi::seq::{sn_le, sn_lt};
use iscsi::text::TextPairs;
use scsi::lu::{LuConfig, ResetKind};
use scsi::{ItNexus, LogicalUnit, ScsiCommand};

use crate::input::Input;

type MemLu = Arc<LogicalUnit<FileDevice>>;

/// The session's target: LUNs 0 and 1 (1 visible or not), LUN 5 hidden from this initiator.
struct View {
    lus: HashMap<u64, MemLu>,
    visible: Vec<u64>,
    /// The target is still in the config.
    present: bool,
}

impl SessionView for View {
    type Lu = MemLu;

    fn lookup(&self, raw: u64) -> Option<MemLu> {
        let lun = scsi::decode_lun(raw)?;
        self.visible
            .contains(&lun)
            .then(|| self.lus.get(&lun).cloned())
            .flatten()
    }

    fn block_size(lu: &MemLu) -> u32 {
        lu.config().block_size
    }

    fn has_luns(&self) -> bool {
        !self.visible.is_empty()
    }

    fn refresh(&mut self) -> bool {
        self.present
    }

    fn send_targets(&self, value: &str) -> TextPairs {
        let mut t = TextPairs::new();
        if value == "All" || value.starts_with("iqn.") {
            for i in 0..3 {
                t.push("TargetName", format!("iqn.2026-12.org.rbdgw:fuzz{i}"));
                t.push("TargetAddress", format!("127.0.0.{}:3260,{}", i + 1, i + 1));
            }
        }
        t
    }
}

/// An R2T the target sent: where the initiator may send data.
#[derive(Clone, Copy)]
struct Solicited {
    itt: u32,
    ttt: u32,
    offset: u32,
    len: u32,
    /// Bytes of it sent so far.
    sent: u32,
    data_sn: u32,
}

struct Session {
    phase: FullFeaturePhase<MemLu>,
    view: View,
    writer: Writer,
    window: Arc<Window>,
    depth: u32,
    nexus: ItNexus,
    /// The initiator's MaxRecvDataSegmentLength (what we may send) and ours.
    max_xmit: u32,
    max_recv: u32,
    budget: u64,
    now: Instant,
    /// Commands running, in the order the driver got them.
    running: VecDeque<Command<MemLu>>,
    /// Commands sent and not yet answered, by ITT (a count: the fuzzer reuses ITTs).
    open: HashMap<u32, u32>,
    /// The EDTL of the last command sent under each ITT.
    edtl: HashMap<u32, u32>,
    r2ts: Vec<Solicited>,
    next_itt: u32,
    cmd_sn: u32,
    last_nopin_ttt: Option<u32>,
    text_ttt: Option<u32>,
    /// What the initiator last saw: (ExpCmdSN, MaxCmdSN, next StatSN).
    seen: Option<(u32, u32, u32)>,
    ended: bool,
    closed: bool,
}

fn initiator_bhs(op: Opcode, immediate: bool) -> Bhs {
    let mut b = Bhs::default();
    b.0[0] = op as u8 | if immediate { 0x40 } else { 0 };
    b.set_final(true);
    b
}

impl Session {
    fn new(inp: &mut Input) -> Session {
        let depth = 1 + (inp.u8() % 32) as u32;
        let max_burst = 512 * (1 + inp.u8() as u32 % 128);
        let n = Negotiated {
            initial_r2t: inp.bit(),
            immediate_data: inp.bit(),
            max_xmit_data_segment_length: 512 * (1 + inp.u8() as u32 % 32),
            max_recv_data_segment_length: 512 * (1 + inp.u8() as u32 % 32),
            max_burst_length: max_burst,
            first_burst_length: (512 * (1 + inp.u8() as u32 % 128)).min(max_burst),
            max_outstanding_r2t: 1 + inp.u8() as u32 % 4,
            ..Negotiated::default()
        };
        let budget = 64 * 1024 * (1 + inp.u8() as u64 % 64);
        let normal = !inp.one_in(8);
        let bs = if inp.bit() { 4096 } else { 512 };
        let lu = |lun: u64| {
            let mut c = LuConfig::new(lun, format!("fuzz{lun}"), "iqn.2026-12.org.rbdgw:fuzz0");
            c.block_size = bs;
            Arc::new(LogicalUnit::new(
                c,
                FileDevice::memory(1 << 20).expect("a memfd"),
            ))
        };
        let lus: HashMap<u64, MemLu> = [0, 1, 5].into_iter().map(|l| (l, lu(l))).collect();
        let visible = if inp.bit() { vec![0, 1] } else { vec![0] };
        let window = Arc::new(Window::new(1, depth));
        let admission = Arc::new(Admission::new(Limits {
            command_memory: budget,
            ..Limits::default()
        }));
        let now = Instant::now();
        let phase = FullFeaturePhase::new(
            PhaseParams {
                negotiated: n.clone(),
                normal,
                initiator: "iqn.2026-12.org.rbdgw:fuzzer".into(),
                source: IpAddr::V4(Ipv4Addr::LOCALHOST),
                nopin_interval: Duration::from_secs(5),
                nopin_response: Duration::from_secs(5),
            },
            admission,
            window.clone(),
            now,
        );
        Session {
            phase,
            view: View {
                lus,
                visible: if normal { visible } else { Vec::new() },
                present: true,
            },
            writer: Writer {
                params: WriterParams {
                    header_digest: false,
                    data_digest: false,
                    max_xmit_data_segment_length: n.max_xmit_data_segment_length,
                    max_burst_length: n.max_burst_length,
                    send_stall: Duration::from_secs(1),
                },
                stat_sn: 1,
                window: window.clone(),
            },
            window,
            depth,
            nexus: ItNexus {
                initiator: "iqn.2026-12.org.rbdgw:fuzzer".into(),
                isid: [0x40, 0, 0, 0, 0, 1],
                relative_port: 1,
            },
            max_xmit: n.max_xmit_data_segment_length,
            max_recv: n.max_recv_data_segment_length,
            budget,
            now,
            running: VecDeque::new(),
            open: HashMap::new(),
            edtl: HashMap::new(),
            r2ts: Vec::new(),
            next_itt: 0x100,
            cmd_sn: 1,
            last_nopin_ttt: None,
            text_ttt: None,
            seen: None,
            ended: false,
            closed: false,
        }
    }

    /// An ITT: a fresh one, or (rarely) one used before.
    fn itt(&mut self, inp: &mut Input) -> u32 {
        match inp.u8() {
            0..=239 => {
                self.next_itt += 1;
                self.next_itt
            }
            240..=251 => self.next_itt.saturating_sub(inp.u8() as u32 % 8),
            _ => inp.u32(),
        }
    }

    /// A CmdSN: the next one, or one off by a little or a lot.
    fn cmd_sn(&mut self, inp: &mut Input, immediate: bool) -> u32 {
        let sn = match inp.u8() {
            0..=229 => self.cmd_sn,
            230..=249 => self
                .cmd_sn
                .wrapping_add(inp.u8() as u32 % 40)
                .wrapping_sub(8),
            _ => inp.u32(),
        };
        if !immediate && sn == self.cmd_sn {
            self.cmd_sn = self.cmd_sn.wrapping_add(1);
        }
        sn
    }

    fn data(inp: &mut Input, len: usize) -> Bytes {
        let seed = inp.u8();
        Bytes::from(
            (0..len)
                .map(|i| seed.wrapping_add(i as u8))
                .collect::<Vec<u8>>(),
        )
    }

    fn scsi_command(&mut self, inp: &mut Input) -> Pdu {
        let immediate = inp.one_in(8);
        let mut b = initiator_bhs(Opcode::ScsiCommand, immediate);
        let lun = [0u64, 0, 0, 1, 1, 5, 7, 0x3fff][inp.u8() as usize % 8];
        b.set_lun_raw(scsi::encode_lun(lun));
        let itt = self.itt(inp);
        b.set_itt(itt);
        let sn = self.cmd_sn(inp, immediate);
        b.set_cmd_sn(sn);
        let bs = if self.view.lus[&0].config().block_size == 4096 {
            4096
        } else {
            512
        };
        let blocks = 1 + inp.u8() as u32 % 64;
        let lba = inp.u16() as u32 % 300;
        let mut cdb = [0u8; 16];
        let (read, write, len) = match inp.u8() % 10 {
            0 => {
                cdb[0] = 0x28; // READ(10)
                cdb[2..6].copy_from_slice(&lba.to_be_bytes());
                cdb[7..9].copy_from_slice(&(blocks as u16).to_be_bytes());
                (true, false, blocks * bs)
            }
            1 | 2 => {
                cdb[0] = 0x2a; // WRITE(10)
                cdb[1] = if inp.bit() { 0x08 } else { 0 }; // FUA
                cdb[2..6].copy_from_slice(&lba.to_be_bytes());
                cdb[7..9].copy_from_slice(&(blocks as u16).to_be_bytes());
                (false, true, blocks * bs)
            }
            3 => {
                cdb[0] = 0x8a; // WRITE(16)
                cdb[2..10].copy_from_slice(&(lba as u64).to_be_bytes());
                cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
                (false, true, blocks * bs)
            }
            4 => (false, false, 0), // TEST UNIT READY
            5 => {
                cdb[0] = 0x12; // INQUIRY
                cdb[3..5].copy_from_slice(&255u16.to_be_bytes());
                (true, false, 255)
            }
            6 => {
                cdb[0] = 0xa0; // REPORT LUNS
                cdb[6..10].copy_from_slice(&4096u32.to_be_bytes());
                (true, false, 4096)
            }
            7 => {
                cdb[0] = 0x35; // SYNCHRONIZE CACHE(10)
                (false, false, 0)
            }
            8 => {
                cdb[0] = 0x5f; // PERSISTENT RESERVE OUT: REGISTER
                cdb[8] = 24;
                (false, true, 24)
            }
            _ => {
                cdb = inp.array();
                (inp.bit(), inp.bit(), inp.u16() as u32)
            }
        };
        b.0[32..48].copy_from_slice(&cdb);
        // EDTL: as the CDB says, or off by some.
        let edtl = match inp.u8() {
            0..=219 => len,
            220..=239 => len.saturating_sub(inp.u16() as u32 % 4096),
            _ => len + inp.u16() as u32,
        };
        b.set_ttt(edtl);
        let mut flags = 0x80u8 | if read { 0x40 } else { 0 } | if write { 0x20 } else { 0 };
        if inp.one_in(16) {
            flags ^= inp.u8() & 0x60;
        }
        // Immediate data: what the first burst allows, or (rarely) more.
        let imm = if write && inp.bit() {
            let room = edtl.min(self.max_recv);
            (inp.u16() as u32 % (room + 1)).min(room)
        } else {
            0
        };
        // F clear: unsolicited Data-Out follows.
        if write && imm < edtl && inp.one_in(4) {
            flags &= !0x80;
        }
        b.set_flags(flags);
        self.opened(itt, edtl);
        if flags & 0x80 == 0 {
            // Unsolicited data: offered as a pseudo-R2T with the reserved tag.
            self.r2ts.push(Solicited {
                itt,
                ttt: RESERVED_TAG,
                offset: imm,
                len: edtl - imm,
                sent: 0,
                data_sn: 0,
            });
        }
        Pdu::with_data(b, Self::data(inp, imm as usize))
    }

    /// A command sent under `itt`.
    fn opened(&mut self, itt: u32, edtl: u32) {
        // Under an ITT still open (in use, or sent outside the window and ignored) the R2Ts
        // that follow may be any of the commands': each must fit the largest EDTL.
        let open = self.open.entry(itt).or_default();
        let largest = self.edtl.entry(itt).or_default();
        *largest = if *open == 0 {
            edtl
        } else {
            (*largest).max(edtl)
        };
        *open += 1;
    }

    fn data_out(&mut self, inp: &mut Input) -> Pdu {
        let mut b = initiator_bhs(Opcode::DataOut, false);
        if self.r2ts.is_empty() || inp.one_in(16) {
            // Made up: any ITT, TTT, offset.
            b.set_itt(self.next_itt.wrapping_sub(inp.u8() as u32 % 4));
            b.set_ttt(if inp.bit() {
                RESERVED_TAG
            } else {
                inp.u8() as u32
            });
            b.set_data_sn(inp.u8() as u32 % 4);
            b.set_buffer_offset(inp.u16() as u32 * 16);
            b.set_final(inp.bit());
            let n = (inp.u16() as u32 % (self.max_recv + 1)) as usize;
            return Pdu::with_data(b, Self::data(inp, n));
        }
        let i = inp.u8() as usize % self.r2ts.len();
        let s = &mut self.r2ts[i];
        let left = s.len - s.sent;
        let n = match inp.u8() {
            0..=199 => left.min(self.max_recv),
            _ => (inp.u16() as u32 % (left + 1)).min(self.max_recv),
        };
        b.set_itt(s.itt);
        b.set_ttt(s.ttt);
        b.set_data_sn(s.data_sn);
        b.set_buffer_offset(s.offset + s.sent);
        let last = s.sent + n >= s.len;
        b.set_final(last);
        s.sent += n;
        s.data_sn += 1;
        if last {
            self.r2ts.swap_remove(i);
        }
        Pdu::with_data(b, Self::data(inp, n as usize))
    }

    fn task_management(&mut self, inp: &mut Input) -> Pdu {
        let immediate = inp.bit();
        let mut b = initiator_bhs(Opcode::TaskMgmtRequest, immediate);
        b.set_flags(0x80 | (inp.u8() % 10));
        b.set_lun_raw(scsi::encode_lun([0u64, 1, 5, 9][inp.u8() as usize % 4]));
        b.set_itt(self.itt(inp));
        let sn = self.cmd_sn(inp, immediate);
        b.set_cmd_sn(sn);
        // Referenced task: a recent ITT; RefCmdSN near the current one.
        b.set_ttt(self.next_itt.wrapping_sub(inp.u8() as u32 % 8));
        b.set_max_cmd_sn(self.cmd_sn.wrapping_sub(inp.u8() as u32 % 4));
        Pdu::new(b)
    }

    fn other(&mut self, inp: &mut Input, op: u8) -> Pdu {
        match op {
            0 => {
                // NOP-Out: the answer to our ping, or a ping of the initiator's.
                let mut b = initiator_bhs(Opcode::NopOut, true);
                if let Some(ttt) = self.last_nopin_ttt.filter(|_| inp.bit()) {
                    b.set_itt(RESERVED_TAG).set_ttt(ttt);
                } else {
                    b.set_itt(self.itt(inp)).set_ttt(RESERVED_TAG);
                    let sn = self.cmd_sn(inp, true);
                    b.set_cmd_sn(sn);
                }
                let n = inp.u8() as usize;
                Pdu::with_data(b, Self::data(inp, n))
            }
            1 => {
                let immediate = inp.bit();
                let mut b = initiator_bhs(Opcode::TextRequest, immediate);
                b.set_itt(self.itt(inp));
                let sn = self.cmd_sn(inp, immediate);
                b.set_cmd_sn(sn);
                let continuing = inp.bit();
                b.set_ttt(match self.text_ttt {
                    Some(t) if continuing => t,
                    _ => RESERVED_TAG,
                });
                if inp.one_in(4) {
                    b.set_flags(0x40); // C: more of the request follows
                }
                let text: &[u8] = match inp.u8() % 4 {
                    0 => b"SendTargets=All\0",
                    1 => b"SendTargets=iqn.2026-12.org.rbdgw:fuzz1\0X-Vendor=1\0",
                    2 => b"SendTargets=All",
                    _ => inp.bytes(64),
                };
                Pdu::with_data(b, Bytes::copy_from_slice(text))
            }
            2 => {
                let immediate = inp.bit();
                let mut b = initiator_bhs(Opcode::LogoutRequest, immediate);
                b.set_flags(0x80 | (inp.u8() % 4));
                b.set_itt(self.itt(inp));
                let sn = self.cmd_sn(inp, immediate);
                b.set_cmd_sn(sn);
                Pdu::new(b)
            }
            _ => {
                // Any header at all.
                let mut b = Bhs(inp.array());
                let n = (inp.u8() as u32).min(self.max_recv) as usize;
                b.set_data_segment_len(n);
                if b.opcode() == Some(Opcode::ScsiCommand) {
                    // A command all the same: it may be answered.
                    self.opened(b.itt(), b.expected_data_transfer_length());
                }
                Pdu::with_data(b, Self::data(inp, n))
            }
        }
    }

    /// Runs the oldest, newest or some command to completion, as a task of the driver would.
    fn complete(&mut self, which: u8) {
        if self.running.is_empty() {
            return;
        }
        let i = match which % 3 {
            0 => 0,
            1 => self.running.len() - 1,
            _ => which as usize % self.running.len(),
        };
        let Some(mut cmd) = self.running.remove(i) else {
            return;
        };
        let data_out = std::mem::take(&mut cmd.data_out);
        let resp = if cmd.cdb[0] == 0xa0 {
            scsi::reports::report_luns(&cmd.cdb, &self.view.visible)
        } else if let Some(lu) = &cmd.lu {
            let c = ScsiCommand {
                cdb: &cmd.cdb,
                nexus: &self.nexus,
                data_out,
                transfer_length: cmd.edtl,
            };
            crate::runtime().block_on(lu.execute(&c))
        } else {
            scsi::no_such_lun(&cmd.cdb)
        };
        if self.phase.tasks().finish(cmd.itt) {
            self.emit(Out::Scsi(Box::new(cmd.done(resp))));
        }
    }

    /// The writer encodes `out`; what it sends is decoded and checked.
    fn emit(&mut self, out: Out) {
        if self.closed {
            return;
        }
        let mut wire = Wire::default();
        if !self.writer.encode(out, &mut wire) {
            self.closed = true;
            return;
        }
        let mut bytes: BytesMut = wire.to_bytes();
        let dec = PduDecoder {
            max_recv_data_segment_length: self.max_xmit as usize,
            ..PduDecoder::default()
        };
        loop {
            let pdu = match dec.decode(&mut bytes) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(PduError::DataSegmentTooLong { len, max, .. }) => {
                    panic!(
                        "sent a data segment of {len} bytes, beyond MaxRecvDataSegmentLength {max}"
                    )
                }
                Err(e) => panic!("sent a PDU that does not decode: {e}"),
            };
            self.check_sent(&pdu);
        }
        assert!(bytes.is_empty(), "a partial PDU on the wire");
    }

    fn check_sent(&mut self, pdu: &Pdu) {
        let b = &pdu.bhs;
        let op = b.opcode().expect("a known opcode");
        assert!(
            !op.is_initiator(),
            "the target sent an initiator opcode {op:?}"
        );
        let (exp, max, stat) = (b.exp_cmd_sn(), b.max_cmd_sn(), b.stat_sn());
        if let Some((e0, m0, s0)) = self.seen {
            assert!(sn_le(e0, exp), "ExpCmdSN went back: {e0} then {exp}");
            assert!(sn_le(m0, max), "MaxCmdSN went back: {m0} then {max}");
            assert_eq!(stat, s0, "StatSN {stat} where {s0} was next");
        }
        // The window never opens beyond the depth (closed: MaxCmdSN = ExpCmdSN - 1).
        assert!(
            sn_lt(max, exp.wrapping_add(self.depth)),
            "window [{exp}, {max}] beyond depth {}",
            self.depth
        );
        let status = match op {
            Opcode::ScsiResponse => true,
            Opcode::DataIn => b.flags() & 0x01 != 0,
            Opcode::ReadyToTransfer => false,
            // (Our ping takes no StatSN.)
            Opcode::NopIn => b.itt() != RESERVED_TAG,
            _ => true,
        };
        self.seen = Some((exp, max, if status { stat.wrapping_add(1) } else { stat }));
        match op {
            Opcode::ScsiResponse | Opcode::DataIn | Opcode::ReadyToTransfer => {
                let itt = b.itt();
                let open = self.open.get(&itt).copied().unwrap_or(0);
                assert!(
                    open > 0,
                    "{op:?} for ITT {itt:#x}, which has no command open"
                );
                if status {
                    *self.open.get_mut(&itt).expect("open") -= 1;
                    self.r2ts.retain(|s| s.itt != itt);
                }
                if op == Opcode::ReadyToTransfer {
                    let edtl = self.edtl.get(&itt).copied().unwrap_or(0);
                    let (off, len) = (b.buffer_offset(), b.residual_count());
                    assert!(len > 0, "an R2T for nothing");
                    assert!(
                        off as u64 + len as u64 <= edtl as u64,
                        "an R2T for [{off}, +{len}) beyond EDTL {edtl}"
                    );
                    self.r2ts.push(Solicited {
                        itt,
                        ttt: b.ttt(),
                        offset: off,
                        len,
                        sent: 0,
                        data_sn: 0,
                    });
                }
            }
            Opcode::NopIn if b.itt() == RESERVED_TAG => self.last_nopin_ttt = Some(b.ttt()),
            Opcode::TextResponse if b.flags() & 0x40 != 0 => self.text_ttt = Some(b.ttt()),
            _ => {}
        }
    }

    fn carry_out(&mut self, actions: Vec<Action<MemLu>>) {
        for a in actions {
            if self.ended {
                break;
            }
            match a {
                Action::Send { pdu, advances } => self.emit(Out::Pdu { pdu, advances }),
                Action::Respond(done) => self.emit(Out::Scsi(done)),
                Action::Execute(cmd) => {
                    assert!(
                        cmd.data_out.len() as u64 <= MAX_COMMAND_BUFFER,
                        "a command holding {} bytes of data-out",
                        cmd.data_out.len()
                    );
                    self.running.push_back(*cmd);
                }
                Action::ClearTaskSet(lu) => {
                    crate::runtime().block_on(lu.clear_task_set(&self.nexus));
                }
                Action::ResetLogicalUnit(lu) => {
                    crate::runtime().block_on(lu.reset(ResetKind::LogicalUnit, Some(&self.nexus)))
                }
                Action::ResetTarget(kind) => {
                    for lun in self.view.visible.clone() {
                        let lu = self.view.lus[&lun].clone();
                        crate::runtime().block_on(lu.reset(kind, Some(&self.nexus)));
                    }
                }
                Action::DrainForLogout { .. } => {
                    while !self.running.is_empty() {
                        self.complete(0);
                    }
                }
                Action::Close => self.emit(Out::Close),
                Action::End => self.ended = true,
            }
        }
    }

    fn check(&self) {
        let outstanding = self.window.outstanding();
        assert!(
            outstanding <= self.depth * 3,
            "{outstanding} commands outstanding with depth {}",
            self.depth
        );
        let held = self.phase.buffered();
        assert!(
            held <= self.budget,
            "{held} bytes of data-out held, budget {}",
            self.budget
        );
        assert!(self.phase.remembered_failures() <= 4096);
        if self.running.is_empty() && !self.ended && !self.closed {
            assert_eq!(
                self.phase.tasks().len(),
                0,
                "tasks registered but not running"
            );
            assert_eq!(
                outstanding as usize,
                self.phase.waiting_for_data(),
                "commands outstanding that neither wait for data nor run: unanswered or answered twice"
            );
        }
    }
}

/// Runs one session; panics when an invariant breaks.
pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let mut s = Session::new(&mut inp);
    while !inp.is_empty() && !s.ended && !s.closed {
        let mut actions = Vec::new();
        match inp.u8() % 16 {
            0..=3 => {
                let pdu = s.scsi_command(&mut inp);
                s.phase.on_pdu(&mut s.view, pdu, s.now, &mut actions);
            }
            4..=6 => {
                let pdu = s.data_out(&mut inp);
                s.phase.on_pdu(&mut s.view, pdu, s.now, &mut actions);
            }
            7 => {
                let pdu = s.task_management(&mut inp);
                s.phase.on_pdu(&mut s.view, pdu, s.now, &mut actions);
            }
            8 => {
                let op = inp.u8() % 4;
                let pdu = s.other(&mut inp, op);
                s.phase.on_pdu(&mut s.view, pdu, s.now, &mut actions);
            }
            9..=11 => {
                let which = inp.u8();
                s.complete(which);
            }
            12 => {
                s.now += Duration::from_millis(inp.u16() as u64 * 10);
                s.phase.on_timer(s.now, &mut actions);
            }
            13 => {
                let lun = [0u64, 1, 5][inp.u8() as usize % 3];
                if s.view.visible.contains(&lun) {
                    s.phase.on_task_abort(lun, &mut actions);
                }
            }
            14 => {
                let mut b = Bhs::default();
                b.0[0] = Opcode::DataOut as u8;
                b.set_itt(s.next_itt);
                let e = match inp.u8() % 3 {
                    0 => PduError::DataDigest { bhs: b },
                    1 => PduError::DataSegmentTooLong {
                        bhs: b,
                        len: 1 << 20,
                        max: 8192,
                        skip: 0,
                    },
                    _ => PduError::HeaderDigest {
                        received: 0,
                        computed: 1,
                    },
                };
                s.phase.on_pdu_error(e, &mut actions);
            }
            _ => match inp.u8() % 4 {
                0 => s.phase.request_logout(&mut actions),
                1 => s.view.present = inp.bit(),
                _ => {
                    let lun = 1;
                    if let Some(p) = s.view.visible.iter().position(|&l| l == lun) {
                        s.view.visible.remove(p);
                    } else {
                        s.view.visible.push(lun);
                    }
                }
            },
        }
        s.carry_out(actions);
        s.check();
    }
    // The initiator waits for what runs: every command it has open finishes.
    while !s.running.is_empty() && !s.ended && !s.closed {
        s.complete(0);
        s.check();
    }
}
