//! One iSCSI connection, driven by tokio: the login phase, then the full-feature phase in which
//! this task reads PDUs and dispatches them, SCSI commands run as their own tasks, and the
//! [`writer::Writer`] task sends everything back.

mod ffp;
pub mod full_feature;
pub mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use iscsi::login::{Login, LoginResult, LoginStatus, LoginStep, PortalInfo, SessionType};
use iscsi::pdu::{Bhs, Opcode, Pdu, PduDecoder, PduError, RejectReason, RESERVED_TAG};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::admission::{Admission, LoginSlot, SessionSlot};
use crate::session::SessionKey;
use crate::target::{Gateway, LoginDirectory};

/// Receive buffers are this large unless a PDU needs more.
const READ_CHUNK: usize = 64 * 1024;
/// Room for at least this much is made before each read.
const MIN_READ: usize = 16 * 1024;

/// Reads whole PDUs off the socket.
pub(crate) struct PduReader {
    rd: OwnedReadHalf,
    buf: BytesMut,
    pub decoder: PduDecoder,
    /// Bytes still to discard: the rest of a PDU refused from its header.
    skip: usize,
}

impl PduReader {
    pub fn new(rd: OwnedReadHalf) -> Self {
        PduReader {
            rd,
            buf: BytesMut::with_capacity(READ_CHUNK),
            decoder: PduDecoder::default(),
            skip: 0,
        }
    }

    /// The next PDU; `Ok(None)` at end of stream. Cancel-safe: partial input stays buffered.
    pub async fn next(&mut self) -> std::io::Result<Option<Result<Pdu, PduError>>> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.buf.len());
                let _ = self.buf.split_to(n);
                self.skip -= n;
            }
            if self.skip == 0 {
                match self.decoder.decode(&mut self.buf) {
                    Ok(Some(p)) => return Ok(Some(Ok(p))),
                    Ok(None) => {}
                    Err(e) => {
                        if let PduError::DataSegmentTooLong { skip, .. } = e {
                            self.skip = skip;
                        }
                        return Ok(Some(Err(e)));
                    }
                }
            }
            // Room for all of the PDU being received (its header says how long it is), or for
            // a chunk of small ones. A fresh buffer rather than `BytesMut::reserve`: PDUs taken
            // off this one are still in use (a write's data waits in its command), and reserve
            // would then reallocate, copying the consumed front of the buffer along (it showed
            // in the profile of 1 MiB writes); a fresh one copies just the partial PDU, and a
            // large data segment is then received where it stays.
            let want = self
                .decoder
                .needed(&self.buf)
                .unwrap_or(0)
                .max(self.buf.len() + MIN_READ);
            if self.buf.capacity() < want {
                let mut fresh = BytesMut::with_capacity(want.max(READ_CHUNK));
                fresh.extend_from_slice(&self.buf);
                self.buf = fresh;
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }
}

/// A Reject PDU quoting the offending header (RFC 7143 §11.17).
pub(crate) fn reject(reason: RejectReason, bad: &Bhs) -> Pdu {
    let mut bhs = Bhs::new(Opcode::Reject);
    bhs.0[2] = reason as u8;
    bhs.set_itt(RESERVED_TAG);
    bhs.set_data_sn(RESERVED_TAG);
    Pdu::with_data(bhs, Bytes::copy_from_slice(&bad.0))
}

/// Trades a completed login's slot for a session's; None when the session is beyond a
/// bound (the login slot stays in `slot`).
fn admit(gw: &Gateway, slot: &mut Option<LoginSlot>, res: &LoginResult) -> Option<SessionSlot> {
    let s = slot.take()?;
    match res.session_type {
        SessionType::Discovery => Some(s.discovery()),
        SessionType::Normal => {
            let reinstating = res.target_name.as_deref().is_some_and(|t| {
                gw.sessions
                    .contains(&SessionKey::new(&res.initiator_name, res.isid, t))
            });
            match s.session(&res.initiator_name, reinstating) {
                Ok(s) => Some(s),
                Err((_, s)) => {
                    *slot = Some(s);
                    None
                }
            }
        }
    }
}

/// Serves one accepted TCP connection until it ends.
pub async fn serve(
    stream: TcpStream,
    gw: Arc<Gateway>,
    listen: SocketAddr,
    shutdown: watch::Receiver<bool>,
    admission: Arc<Admission>,
    slot: LoginSlot,
) {
    let peer = stream.peer_addr().ok();
    let local = stream.local_addr().unwrap_or(listen);
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let mut reader = PduReader::new(rd);
    let served = gw.served();
    let login_timeout = served
        .targets
        .iter()
        .map(|t| t.cfg.attributes.login_timeout)
        .max()
        .unwrap_or(15);
    let tsih = gw.allocate_tsih();
    let initial_stat_sn = u32::from_be_bytes(
        iscsi::chap::random_bytes(4)
            .try_into()
            .unwrap_or([0, 0, 0, 1]),
    );
    // The login response's MaxCmdSN is a promise the initiator keeps (it never takes one
    // back): the smallest depth of any target, since the target is not known yet; the
    // session's own window opens to its target's depth with its first responses.
    let cmd_window = served
        .targets
        .iter()
        .map(|t| t.cfg.attributes.cmdsn_depth)
        .min()
        .unwrap_or(128);
    let mut login = Login::new(PortalInfo {
        tpg_tag: 0,
        tsih,
        initial_stat_sn,
        cmd_window,
    });
    let dir = LoginDirectory {
        gateway: &gw,
        listen,
    };

    let source = slot.source();
    let mut closed = slot.closed.clone();
    let mut slot = Some(slot);
    let mut session_slot = None;
    let login_phase = async {
        loop {
            let pdu = match reader.next().await {
                Ok(Some(Ok(p))) => p,
                Ok(Some(Err(e))) => {
                    debug!(?peer, "bad PDU during login: {e}");
                    return None;
                }
                Ok(None) | Err(_) => return None,
            };
            // The TPG tag depends on the target named in the first PDU.
            if let Some(name) = iscsi::text::TextPairs::parse(&pdu.data)
                .ok()
                .and_then(|t| t.get("TargetName").map(str::to_string))
            {
                if let Some(t) = gw.target(&name) {
                    login.set_tpg_tag(gw.tpg_for(&t, listen).unwrap_or(0));
                }
            }
            let step = login.on_pdu(&pdu, &dir);
            let (mut resp, mut done) = match step {
                LoginStep::Continue(r) => (r, None),
                LoginStep::Complete(r, res) => (r, Some(Ok(res))),
                LoginStep::Fail(r, status) => (r, Some(Err(status))),
            };
            if let Some(Ok(res)) = &done {
                // The session needs a slot of its own before the initiator is told yes.
                match admit(&gw, &mut slot, res) {
                    Some(s) => session_slot = Some(s),
                    None => {
                        let status = LoginStatus::OUT_OF_RESOURCES;
                        resp = login.refuse(status);
                        done = Some(Err(status));
                    }
                }
            }
            if matches!(done, Some(Err(_))) {
                // Guessing is slowed down, for this source only.
                let delay = admission.login_failed(source);
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            }
            if wr.write_all(&resp.to_bytes(false, false)).await.is_err() {
                return None;
            }
            match done {
                None => continue,
                Some(Ok(res)) => {
                    crate::metrics::metrics().login(true, "");
                    return Some(res);
                }
                Some(Err(status)) => {
                    crate::metrics::metrics().login(false, crate::metrics::login_refusal(status));
                    info!(
                        ?peer,
                        status = format_args!("{:#06x}", status.0),
                        "login refused"
                    );
                    return None;
                }
            }
        }
    };
    let mut stopping = shutdown.clone();
    let result = tokio::time::timeout(Duration::from_secs(login_timeout as u64), async {
        tokio::select! {
            r = login_phase => r,
            _ = closed.wait_for(|c| *c) => {
                debug!(?peer, "login closed to make room for newer connections");
                None
            }
            // Nothing to log out yet: a stopping gateway closes a login at once instead of
            // waiting out its logout grace for it.
            _ = stopping.wait_for(|s| *s) => {
                debug!(?peer, "login closed: the gateway is stopping");
                None
            }
        }
    })
    .await;
    let (res, session_slot) = match (result, session_slot) {
        (Ok(Some(res)), Some(s)) => (res, s),
        (Ok(_), _) => return,
        (Err(_), _) => {
            info!(?peer, "login timed out after {login_timeout}s");
            return;
        }
    };
    info!(
        ?peer,
        initiator = ?res.initiator_name,
        target = ?res.target_name.as_deref().unwrap_or("-"),
        session = if res.session_type == SessionType::Discovery { "discovery" } else { "normal" },
        tsih = res.tsih,
        "login complete"
    );
    debug!(?peer, params = ?res.params, "negotiated");
    if let Err(e) = ffp::run(ffp::Setup {
        gw: gw.clone(),
        reader,
        wr,
        login: *res,
        listen,
        local,
        peer,
        shutdown,
        slot: session_slot,
    })
    .await
    {
        warn!(?peer, "connection ended: {e}");
    }
}
