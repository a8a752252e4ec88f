//! The full-feature phase of one connection, driven by tokio: reads PDUs, feeds them and the
//! connection's timer, abort orders and shutdown to the sans-I/O [`FullFeaturePhase`], and
//! carries out its [`Action`]s: PDUs to the writer task, commands run on their LUs (a small
//! one right here, in the connection's own task, a large one as a task of its own), resets
//! and the logout's clean-up.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{AbortHandle, Abortable, Aborted};
use futures_util::stream::{FuturesUnordered, StreamExt};

use iscsi::login::{LoginResult, SessionType};
use iscsi::params::Digest;
use iscsi::text::TextPairs;
use scsi::{ItNexus, ScsiCommand, ScsiResponse};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Commands moving at most this many bytes run in the connection's task.
const INLINE_MAX: u32 = 64 * 1024;
/// A logout waits at most this long for the running commands.
const LOGOUT_DRAIN: Duration = Duration::from_secs(10);

use super::full_feature::{Action, Command, FullFeaturePhase, PhaseParams, SessionView, TaskTable};
use super::writer::{Out, Window, Writer, WriterParams};
use super::PduReader;
use crate::admission::SessionSlot;
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

/// What the session sees of the gateway: its target's LUs (none in a discovery session).
struct View {
    gw: Arc<Gateway>,
    initiator: String,
    local: SocketAddr,
    scsi: Option<ScsiSession>,
}

impl SessionView for View {
    type Lu = Arc<Lu>;

    fn lookup(&self, raw: u64) -> Option<Arc<Lu>> {
        let s = self.scsi.as_ref()?;
        let lun = scsi::decode_lun(raw)?;
        if !s.luns.contains(&lun) {
            return None;
        }
        s.target.luns.get(&lun).cloned()
    }

    fn block_size(lu: &Arc<Lu>) -> u32 {
        lu.config().block_size
    }

    fn has_luns(&self) -> bool {
        self.scsi.as_ref().is_some_and(|s| !s.luns.is_empty())
    }

    fn refresh(&mut self) -> bool {
        let epoch = self.gw.epoch();
        let Some(s) = self.scsi.as_mut().filter(|s| s.epoch != epoch) else {
            return true;
        };
        let Some(target) = self.gw.target(&s.target.cfg.iqn) else {
            return false;
        };
        s.luns = target.visible_luns(&self.initiator);
        s.target = target;
        s.epoch = epoch;
        true
    }

    fn send_targets(&self, value: &str) -> TextPairs {
        let own = self.scsi.as_ref().map(|s| s.target.cfg.iqn.as_str());
        crate::discovery::send_targets(&self.gw, &self.initiator, value, own, self.local)
    }
}

impl View {
    /// The LUs the initiator may access.
    fn visible(&self) -> Vec<Arc<Lu>> {
        let Some(s) = &self.scsi else {
            return Vec::new();
        };
        s.luns
            .iter()
            .filter_map(|l| s.target.luns.get(l).cloned())
            .collect()
    }

    /// The I_T nexus ends (logout or connection loss, SAM-5 §6.3.4): whatever it held on
    /// every LU of the target is released.
    async fn end_nexus(&self) {
        if let Some(s) = &self.scsi {
            for lu in s.target.luns.values() {
                lu.nexus_lost(&s.nexus).await;
            }
        }
    }
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
        let info = crate::session::SessionInfo {
            initiator: login.initiator_name.clone(),
            isid: login.isid.iter().map(|b| format!("{b:02x}")).collect(),
            target: target.cfg.iqn.clone(),
            portal: listen.to_string(),
            peer: peer.map_or_else(String::new, |p| p.to_string()),
            since: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            header_digest: reader.decoder.header_digest,
            data_digest: reader.decoder.data_digest,
        };
        handle = Some(
            gw.sessions
                .register(key.clone(), login.tsih, info, Duration::from_secs(10))
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

    let mut view = View {
        gw: gw.clone(),
        initiator: login.initiator_name.clone(),
        local,
        scsi,
    };
    let normal = view.scsi.is_some();
    let mut phase = FullFeaturePhase::new(
        PhaseParams {
            negotiated: p,
            normal,
            initiator: login.initiator_name.clone(),
            source: slot.source(),
            nopin_interval,
            nopin_response,
        },
        slot.admission().clone(),
        window,
        std::time::Instant::now(),
    );
    let mut driver = Driver {
        tx: tx.clone(),
        tasks: phase.tasks().clone(),
        waiting: FuturesUnordered::new(),
    };

    let mut asked_logout = false;
    let mut actions = Vec::new();
    // One timer for the connection, moved only when it fires: a fresh sleep per PDU costs a
    // timer registration and removal each time.
    let idle = tokio::time::sleep_until(Instant::from_std(phase.deadline()));
    tokio::pin!(idle);
    loop {
        tokio::select! {
            r = reader.next() => match r {
                Ok(Some(Ok(pdu))) => phase.on_pdu(&mut view, pdu, std::time::Instant::now(), &mut actions),
                Ok(Some(Err(e))) => phase.on_pdu_error(e, &mut actions),
                Ok(None) => break,
                Err(e) => {
                    debug!(?peer, "receive failed: {e}");
                    break;
                }
            },
            Some(_) = driver.waiting.next(), if !driver.waiting.is_empty() => {}
            _ = &mut idle => {
                phase.on_timer(std::time::Instant::now(), &mut actions);
                idle.as_mut().reset(Instant::from_std(phase.deadline()));
            }
            order = aborts.recv(), if normal => match order {
                Ok(a) => {
                    if view.scsi.as_ref().is_some_and(|s| {
                        s.target.cfg.iqn.eq_ignore_ascii_case(&a.target)
                            && s.luns.contains(&a.lun)
                            && a.applies_to(&s.nexus)
                    }) {
                        phase.on_task_abort(a.lun, &mut actions);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    warn!(?peer, missed = n, "too many task abort orders at once: some were not applied here");
                }
                // (The gateway outlives its sessions.)
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
            },
            Ok(()) = kill.changed() => {
                info!(?peer, "session replaced by a reinstating login");
                break;
            }
            _ = tx.closed() => {
                // The writer gave up (the initiator stopped reading, or the socket failed).
                break;
            }
            Ok(()) = slot.evicted.changed() => {
                info!(?peer, "discovery session closed to make room for a newer one");
                break;
            }
            Ok(()) = shutdown.changed(), if !asked_logout => {
                asked_logout = true;
                phase.request_logout(&mut actions);
            }
        }
        if !driver.carry_out(&view, &mut actions).await {
            break;
        }
    }
    if asked_logout && !phase.logged_out() {
        debug!(?peer, "closing after shutdown");
    }
    // Commands still waiting here run on to their end, as spawned ones do (what they wrote is
    // written; their answers go nowhere).
    let waiting = std::mem::take(&mut driver.waiting);
    if !waiting.is_empty() {
        tokio::spawn(waiting.count());
    }
    // Logout or connection loss: the I_T nexus is gone (SAM-5 §6.3.4).
    view.end_nexus().await;
    let _ = tx.send(Out::Close).await;
    drop(driver);
    drop(phase);
    drop(tx);
    let _ = writer_task.await;
    if let (Some(key), Some(h)) = (session_key, handle) {
        gw.sessions.unregister(&key, login.tsih);
        drop(h.done);
    }
    Ok(())
}

/// A command that waits (on librbd, on the LU's ownership), run by the connection's task.
type Waiting = Pin<Box<dyn Future<Output = Result<(), Aborted>> + Send>>;

/// Carries out the state machine's actions.
struct Driver {
    tx: mpsc::Sender<Out>,
    tasks: TaskTable,
    /// Small commands that waited at their first poll, polled by the connection's task beside
    /// its reader: the completions that wake them wake one task, which answers them all and
    /// reads the next commands, instead of a task (and often another worker thread) each.
    waiting: FuturesUnordered<Waiting>,
}

/// Polls `waiting` while `f` runs: what the driver awaits (a reset, a logout's drain) may wait
/// for those very commands.
async fn alongside<F: Future>(waiting: &mut FuturesUnordered<Waiting>, f: F) -> F::Output {
    tokio::pin!(f);
    loop {
        tokio::select! {
            biased;
            out = &mut f => return out,
            Some(_) = waiting.next(), if !waiting.is_empty() => {}
        }
    }
}

impl Driver {
    /// Carries out `actions` in order (emptying it); false when the connection ends. The
    /// commands waiting in this task run on meanwhile.
    async fn carry_out(&mut self, view: &View, actions: &mut Vec<Action<Arc<Lu>>>) -> bool {
        let mut open = true;
        for a in actions.drain(..) {
            if !open {
                // (Whatever followed the end: the responses of a logout already sent.)
                continue;
            }
            let tx = &self.tx;
            let tasks = &self.tasks;
            match a {
                Action::Execute(cmd) => self.execute(view, *cmd).await,
                Action::End => open = false,
                a => {
                    let work = async move {
                        match a {
                            Action::Send { pdu, advances } => {
                                let _ = tx.send(Out::Pdu { pdu, advances }).await;
                            }
                            Action::Respond(done) => {
                                let _ = tx.send(Out::Scsi(done)).await;
                            }
                            Action::ClearTaskSet(lu) => {
                                if let Some(s) = &view.scsi {
                                    lu.clear_task_set(&s.nexus).await;
                                }
                            }
                            Action::ResetLogicalUnit(lu) => {
                                let nexus = view.scsi.as_ref().map(|s| &s.nexus);
                                lu.reset(scsi::lu::ResetKind::LogicalUnit, nexus).await;
                            }
                            Action::ResetTarget(kind) => {
                                let nexus = view.scsi.as_ref().map(|s| &s.nexus);
                                for lu in view.visible() {
                                    lu.reset(kind, nexus).await;
                                }
                            }
                            Action::DrainForLogout { end_nexus } => {
                                let deadline = Instant::now() + LOGOUT_DRAIN;
                                while !tasks.is_empty() && Instant::now() < deadline {
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                }
                                if end_nexus {
                                    view.end_nexus().await;
                                }
                            }
                            Action::Close => {
                                let _ = tx.send(Out::Close).await;
                            }
                            Action::Execute(_) | Action::End => {}
                        }
                    };
                    alongside(&mut self.waiting, work).await;
                }
            }
        }
        open
    }

    /// Runs a command whose data-out (if any) is complete: a small one right here (first as
    /// far as it goes without waiting, then among the connection's waiting commands), a large
    /// one as a task of its own.
    async fn execute(&mut self, view: &View, cmd: Command<Arc<Lu>>) {
        let Some(s) = &view.scsi else { return };
        let tx = self.tx.clone();
        let nexus = s.nexus.clone();
        let luns = s.luns.clone();
        let tasks = self.tasks.clone();
        let itt = cmd.itt;
        let edtl = cmd.edtl;
        let lun = scsi::decode_lun(cmd.lun_raw).unwrap_or(u64::MAX);
        let owner = s
            .target
            .owners
            .get(&lun)
            .filter(|_| crate::ownership::needs_ownership(cmd.cdb[0]))
            .cloned();
        let io = s.target.io.get(&lun).cloned();
        let arrived = std::time::Instant::now();
        let (abort, registration) = AbortHandle::new_pair();
        // Aborting it (ABORT TASK, a reset, another nexus's PREEMPT AND ABORT) drops it
        // wherever it waits: a write waiting for the LU's ownership then writes nothing.
        let mut task: Waiting = Box::pin(Abortable::new(
            async move {
                let mut cmd = cmd;
                let data_out = std::mem::take(&mut cmd.data_out);
                let cdb = cmd.cdb;
                let resp = if cdb[0] == 0xa0 {
                    scsi::reports::report_luns(&cdb, &luns)
                } else if let Some(lu) = &cmd.lu {
                    // Only the owner writes: a write elsewhere takes the ownership over first.
                    // A write that will conflict with a reservation does not move the lock.
                    let probe = ScsiCommand {
                        cdb: &cdb,
                        nexus: &nexus,
                        data_out: Default::default(),
                        transfer_length: edtl,
                    };
                    let guard = match &owner {
                        // (Checked only off the owner: on it the guard costs two atomics.)
                        Some(o) if o.is_owner() || !lu.conflicts(&probe).await => {
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
                if let Some(op) = io.as_deref().and_then(|io| io.of(cdb[0])) {
                    let moved = (resp.status == scsi::ScsiStatus::Good).then_some(edtl as u64);
                    op.done(arrived.elapsed(), moved);
                }
                if tasks.finish(itt) {
                    let _ = tx.send(Out::Scsi(Box::new(cmd.done(resp)))).await;
                }
            },
            registration,
        ));
        // A small command on an in-memory engine completes in its first poll. Polled here it
        // costs no task and no wake-up of another worker thread (thread switches were the
        // top item, 15%, of the profile of 4 KiB writes at queue depth 32). One that waits
        // stays in this task: its completion wakes the task that reads the next command. A
        // large one runs apart, so that this reader receives the next command's data
        // meanwhile (and its buffers are copied on another worker).
        if edtl <= INLINE_MAX {
            let done = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(task.as_mut().poll(cx).is_ready())
            })
            .await;
            if !done {
                self.waiting.push(task);
                self.tasks.set_handle(itt, abort);
            }
            return;
        }
        tokio::spawn(task);
        // Gone already when it finished (and answered) meanwhile, or an abort took it before
        // it was spawned (it then runs on but never answers).
        self.tasks.set_handle(itt, abort);
    }
}
