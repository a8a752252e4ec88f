//! The sending half of a connection: one task owns the socket's write half, stamps StatSN,
//! ExpCmdSN and MaxCmdSN in send order, segments read data into Data-In PDUs (with status
//! phase collapse, RFC 7143 §11.7.4) and batches whatever is queued into one write.

use std::io::IoSlice;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstore::FileExtent;
use bytes::{Buf, Bytes, BytesMut};
use iscsi::pdu::{pad_segment, Bhs, Opcode, Pdu, RESERVED_TAG};
use scsi::{ScsiResponse, ScsiStatus};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Data segments at least this long are written from their own buffer (vectored), not copied
/// into the batch.
const ZERO_COPY_MIN: usize = 8 * 1024;

/// One piece of what goes on the wire.
enum Part {
    Mem(Bytes),
    /// Sent by the kernel from the file (sendfile).
    File(FileExtent),
}

impl Part {
    fn len(&self) -> usize {
        match self {
            Part::Mem(b) => b.len(),
            Part::File(f) => f.len,
        }
    }
}

/// Encoded PDUs waiting for one vectored write: headers and small segments gathered in
/// `head`, large data segments (read data) kept as the buffers or file extents they are.
#[derive(Default)]
pub struct Wire {
    head: BytesMut,
    parts: Vec<Part>,
    parts_len: usize,
}

impl Wire {
    fn put(&mut self, pdu: &Pdu, header_digest: bool, data_digest: bool) {
        if pdu.data.len() >= ZERO_COPY_MIN {
            pdu.encode_head(&mut self.head, header_digest);
            self.push(Part::Mem(pdu.data.clone()));
            pdu.encode_tail(&mut self.head, data_digest);
        } else {
            pdu.encode(&mut self.head, header_digest, data_digest);
        }
    }

    /// A PDU whose data segment the kernel sends from a file (no data digest: it would have
    /// to read the data).
    fn put_file(&mut self, pdu: &Pdu, data: FileExtent, header_digest: bool) {
        let len = data.len;
        pdu.encode_head_for(&mut self.head, header_digest, len);
        self.push(Part::File(data));
        pad_segment(&mut self.head, len);
    }

    /// Appends a part after what `head` gathered so far.
    fn push(&mut self, part: Part) {
        self.seal();
        self.parts_len += part.len();
        self.parts.push(part);
    }

    /// Moves what `head` gathered into the part list.
    fn seal(&mut self) {
        if !self.head.is_empty() {
            let b = self.head.split().freeze();
            self.parts_len += b.len();
            self.parts.push(Part::Mem(b));
        }
    }

    pub fn len(&self) -> usize {
        self.parts_len + self.head.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Everything, in one buffer (for tests and the fuzzer).
    pub fn to_bytes(&mut self) -> BytesMut {
        self.seal();
        let mut b = BytesMut::with_capacity(self.parts_len);
        for p in self.parts.drain(..) {
            match p {
                Part::Mem(m) => b.extend_from_slice(&m),
                Part::File(f) => b.extend_from_slice(&f.read().expect("read the extent")),
            }
        }
        self.parts_len = 0;
        b
    }

    /// Writes everything with as few system calls as the socket allows: runs of buffers with
    /// one sendmsg, file extents with sendfile.
    /// Writes everything; fails when the peer takes no byte for `stall`.
    async fn write_to(&mut self, sock: &TcpStream, stall: Duration) -> std::io::Result<()> {
        self.seal();
        let fd = sock.as_raw_fd();
        let mut first = 0;
        while first < self.parts.len() {
            if let Part::File(f) = &mut self.parts[first] {
                let mut off = f.offset as libc::off_t;
                let (src, len) = (f.fd(), f.len);
                // SAFETY: plain syscall on descriptors we hold open.
                let n = send_io(sock, stall, || unsafe {
                    libc::sendfile(fd, src, &mut off, len)
                })
                .await?;
                if n == 0 {
                    // The file ended before the extent did (cut short meanwhile).
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                *f = f.slice(n, len - n);
                if f.len == 0 {
                    first += 1;
                }
                continue;
            }
            let mut iov = [IoSlice::new(&[]); 64];
            let mut n_iov = 0;
            let mut more = false;
            for part in &self.parts[first..] {
                match part {
                    Part::Mem(b) if n_iov < iov.len() => {
                        iov[n_iov] = IoSlice::new(b);
                        n_iov += 1;
                    }
                    // Headers before a file extent: tell TCP the data follows.
                    Part::File(_) => {
                        more = true;
                        break;
                    }
                    Part::Mem(_) => break,
                }
            }
            let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
            let mut n = send_io(sock, stall, || {
                // SAFETY: IoSlice is ABI-compatible with iovec; the buffers outlive the call.
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
                msg.msg_iovlen = n_iov as _;
                // SAFETY: as above.
                unsafe { libc::sendmsg(fd, &msg, flags) }
            })
            .await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            while n > 0 {
                let Part::Mem(part) = &mut self.parts[first] else {
                    unreachable!("sendmsg sent only buffers")
                };
                if n >= part.len() {
                    n -= part.len();
                    first += 1;
                } else {
                    part.advance(n);
                    n = 0;
                }
            }
        }
        self.parts.clear();
        self.parts_len = 0;
        Ok(())
    }
}

/// Runs a non-blocking send until the socket takes some bytes; how many. A peer that takes
/// nothing for `stall` (it stopped reading) fails the connection: its queue would only grow.
async fn send_io(
    sock: &TcpStream,
    stall: Duration,
    mut f: impl FnMut() -> isize,
) -> std::io::Result<usize> {
    loop {
        tokio::time::timeout(stall, sock.writable())
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the initiator read nothing for {}s", stall.as_secs()),
                )
            })??;
        let r = sock.try_io(Interest::WRITABLE, || match f() {
            n if n >= 0 => Ok(n as usize),
            _ => Err(std::io::Error::last_os_error()),
        });
        match r {
            Ok(n) => return Ok(n),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

/// A residual (RFC 7143 §11.4.5): more data was asked for than EDTL allowed (overflow), or
/// less was moved than EDTL announced (underflow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residual {
    Overflow(u32),
    Underflow(u32),
}

/// A finished SCSI command.
#[derive(Debug)]
pub struct ScsiDone {
    pub itt: u32,
    pub resp: ScsiResponse,
    pub edtl: u32,
    /// The R bit: data-in goes to the initiator (up to EDTL).
    pub read: bool,
    /// For write-direction commands: the residual decided when the data-out was collected.
    pub write_residual: Option<Residual>,
    /// R2Ts sent for the command (ExpDataSN of the response counts them).
    pub r2ts: u32,
    /// The command memory it held, given back once its response is encoded.
    pub memory: Option<crate::admission::MemoryCharge>,
}

impl ScsiDone {
    /// A command answered before any data moved (no R2T sent, no residual decided, no
    /// memory held).
    pub fn before_data(itt: u32, resp: ScsiResponse, edtl: u32, read: bool) -> Self {
        ScsiDone {
            itt,
            resp,
            edtl,
            read,
            write_residual: None,
            r2ts: 0,
            memory: None,
        }
    }
}

/// What the connection sends.
#[derive(Debug)]
pub enum Out {
    /// A PDU; `advances` when it carries a status and takes the next StatSN.
    Pdu {
        pdu: Pdu,
        advances: bool,
    },
    Scsi(Box<ScsiDone>),
    /// Flush and close the connection.
    Close,
}

/// The session's command window (RFC 7143 §4.2.2.1): MaxCmdSN moves on as commands complete,
/// so no more than `depth` commands are ever outstanding.
#[derive(Debug)]
pub struct Window {
    inner: Mutex<WindowState>,
}

#[derive(Debug)]
struct WindowState {
    exp_cmd_sn: u32,
    depth: u32,
    inflight: u32,
    /// The highest MaxCmdSN sent. Initiators never take a MaxCmdSN back (RFC 7143 §4.2.2.1
    /// updates it only forward), so commands up to it stay acceptable even after immediate
    /// commands took slots since.
    promised: u32,
}

impl WindowState {
    fn max_cmd_sn(&self) -> u32 {
        let room = self.depth.saturating_sub(self.inflight);
        let now = self.exp_cmd_sn.wrapping_add(room).wrapping_sub(1);
        if iscsi::seq::sn_lt(self.promised, now) {
            now
        } else {
            self.promised
        }
    }
}

impl Window {
    pub fn new(exp_cmd_sn: u32, depth: u32) -> Self {
        Window {
            inner: Mutex::new(WindowState {
                exp_cmd_sn,
                depth: depth.max(1),
                inflight: 0,
                // What the login response gave (iscsi::login: ExpCmdSN + depth - 1).
                promised: exp_cmd_sn.wrapping_add(depth.max(1)).wrapping_sub(1),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WindowState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (ExpCmdSN, MaxCmdSN) to stamp on a PDU now. With `depth` commands outstanding the
    /// window is closed: MaxCmdSN = ExpCmdSN - 1 (RFC 7143 §4.2.2.1). MaxCmdSN never goes
    /// back: a command taken advances ExpCmdSN and fills a slot, a response frees one, and
    /// an immediate command's slot only holds MaxCmdSN where it was.
    pub fn stamp(&self) -> (u32, u32) {
        let mut w = self.lock();
        let max = w.max_cmd_sn();
        w.promised = max;
        (w.exp_cmd_sn, max)
    }

    /// Checks a non-immediate command's CmdSN and accepts it when it is within the window;
    /// `counts` when the command stays outstanding until its response. Beyond MaxCmdSN (the
    /// window closed included) it is ignored, as RFC 7143 §4.2.2.1 says.
    pub fn accept(&self, cmd_sn: u32, counts: bool) -> Acceptance {
        let mut w = self.lock();
        let max = w.max_cmd_sn();
        if !iscsi::seq::sn_le(cmd_sn, max) || !iscsi::seq::sn_le(w.exp_cmd_sn, cmd_sn) {
            return Acceptance::Ignore;
        }
        if cmd_sn == w.exp_cmd_sn {
            w.exp_cmd_sn = w.exp_cmd_sn.wrapping_add(1);
        } else if iscsi::seq::sn_lt(w.exp_cmd_sn, cmd_sn) && iscsi::seq::sn_le(cmd_sn, max) {
            // A gap can only come from a misbehaving initiator (one connection per session):
            // resynchronise rather than stall.
            tracing::warn!(
                expected = w.exp_cmd_sn,
                got = cmd_sn,
                "CmdSN gap; resynchronising"
            );
            w.exp_cmd_sn = cmd_sn.wrapping_add(1);
        } else {
            return Acceptance::Ignore;
        }
        if counts {
            w.inflight += 1;
        }
        Acceptance::Accepted
    }

    /// An immediate command holds a response slot too, without a CmdSN of its own. Immediate
    /// commands may come whatever the window, but not without bound: beyond twice the depth
    /// outstanding one is to be refused (false: answer TASK SET FULL at once, SAM-5 §5.3.1;
    /// its slot is freed when that answer goes).
    pub fn hold(&self) -> bool {
        let mut w = self.lock();
        w.inflight += 1;
        w.inflight <= w.depth.saturating_mul(2)
    }

    /// Commands outstanding now.
    pub fn outstanding(&self) -> u32 {
        self.lock().inflight
    }

    /// An outstanding command completed (its response is being sent, or it was aborted).
    pub fn complete(&self) {
        let mut w = self.lock();
        w.inflight = w.inflight.saturating_sub(1);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceptance {
    Accepted,
    /// Outside the window: RFC 7143 §4.2.2.1 says ignore it silently.
    Ignore,
}

/// Per-connection sending parameters.
#[derive(Debug, Clone, Copy)]
pub struct WriterParams {
    pub header_digest: bool,
    pub data_digest: bool,
    pub max_xmit_data_segment_length: u32,
    pub max_burst_length: u32,
    /// How long the peer may take no data before the connection is dropped.
    pub send_stall: Duration,
}

pub struct Writer {
    pub params: WriterParams,
    pub stat_sn: u32,
    pub window: Arc<Window>,
}

impl Writer {
    fn stamp(&mut self, bhs: &mut Bhs, advances: bool) {
        let (exp, max) = self.window.stamp();
        bhs.set_stat_sn(self.stat_sn);
        if advances {
            self.stat_sn = self.stat_sn.wrapping_add(1);
        }
        bhs.set_exp_cmd_sn(exp).set_max_cmd_sn(max);
    }

    fn put(&mut self, out: &mut Wire, mut pdu: Pdu, advances: bool) {
        self.stamp(&mut pdu.bhs, advances);
        out.put(&pdu, self.params.header_digest, self.params.data_digest);
    }

    /// Encodes one message; returns false on Close.
    pub fn encode(&mut self, msg: Out, out: &mut Wire) -> bool {
        match msg {
            Out::Pdu { pdu, advances } => self.put(out, pdu, advances),
            Out::Scsi(done) => {
                self.window.complete();
                self.scsi(*done, out);
            }
            Out::Close => return false,
        }
        true
    }

    fn scsi(&mut self, mut d: ScsiDone, out: &mut Wire) {
        let mut file = d.resp.data_file.take();
        if let Some(f) = file.take_if(|_| self.params.data_digest) {
            // A data digest must see the data.
            match f.read() {
                Ok(b) => d.resp.data = b,
                Err(e) => {
                    tracing::error!("read data lost from its file: {e}");
                    d.resp = ScsiResponse::check(scsi::SenseData::new(
                        scsi::SenseKey::MediumError,
                        scsi::Asc::UNRECOVERED_READ_ERROR,
                    ));
                }
            }
        }
        let mut data = d.resp.data.clone();
        let mut len = file.as_ref().map_or(data.len(), |f| f.len);
        let residual = if d.read {
            let produced = len as u64;
            let edtl = d.edtl as u64;
            if produced > edtl {
                data.truncate(d.edtl as usize);
                len = d.edtl as usize;
                Some(Residual::Overflow((produced - edtl) as u32))
            } else if produced < edtl {
                Some(Residual::Underflow((edtl - produced) as u32))
            } else {
                None
            }
        } else {
            // Data-in for a command without the R bit: none of it can be sent.
            data.clear();
            len = 0;
            d.write_residual
        };
        let residual_bits = |bhs: &mut Bhs| match residual {
            Some(Residual::Overflow(n)) => {
                bhs.0[1] |= 0x04;
                bhs.set_residual_count(n);
            }
            Some(Residual::Underflow(n)) => {
                bhs.0[1] |= 0x02;
                bhs.set_residual_count(n);
            }
            None => {}
        };
        let collapse = d.resp.status == ScsiStatus::Good && d.resp.sense.is_none() && len > 0;
        let p = self.params;
        let seg = p.max_xmit_data_segment_length.max(512) as usize;
        let burst = p.max_burst_length.max(512) as usize;
        let mut data_sn = 0u32;
        let mut offset = 0usize;
        let mut in_burst = 0usize;
        while offset < len {
            let n = seg.min(len - offset).min(burst - in_burst);
            let last = offset + n == len;
            in_burst += n;
            let mut bhs = Bhs::new(Opcode::DataIn);
            let mut flags = 0u8;
            if last || in_burst == burst {
                flags |= 0x80;
                in_burst = 0;
            }
            if last && collapse {
                flags |= 0x01;
            }
            bhs.set_flags(flags);
            bhs.set_itt(d.itt)
                .set_ttt(RESERVED_TAG)
                .set_data_sn(data_sn)
                .set_buffer_offset(offset as u32);
            let status = last && collapse;
            if status {
                bhs.0[3] = d.resp.status as u8;
                residual_bits(&mut bhs);
            }
            match &file {
                Some(f) => {
                    self.stamp(&mut bhs, status);
                    out.put_file(
                        &Pdu::new(bhs),
                        f.slice(offset, n),
                        self.params.header_digest,
                    );
                }
                None => self.put(
                    out,
                    Pdu::with_data(bhs, data.slice(offset..offset + n)),
                    status,
                ),
            }
            data_sn += 1;
            offset += n;
        }
        if collapse {
            return;
        }
        let mut bhs = Bhs::new(Opcode::ScsiResponse);
        bhs.set_itt(d.itt);
        bhs.0[2] = 0x00; // Response: command completed at target
        bhs.0[3] = d.resp.status as u8;
        bhs.set_data_sn(data_sn + d.r2ts); // ExpDataSN
        residual_bits(&mut bhs);
        let sense = match d.resp.sense {
            Some(s) => {
                // RFC 7143 §11.4.7: SenseLength, then the sense data.
                let f = s.to_fixed();
                let mut v = Vec::with_capacity(2 + f.len());
                v.extend_from_slice(&(f.len() as u16).to_be_bytes());
                v.extend_from_slice(&f);
                bytes::Bytes::from(v)
            }
            None => bytes::Bytes::new(),
        };
        self.put(out, Pdu::with_data(bhs, sense), true);
    }

    /// Runs until Close or until the channel closes, writing batches.
    pub async fn run(mut self, mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Out>) {
        let mut out = Wire::default();
        'outer: while let Some(first) = rx.recv().await {
            let mut open = self.encode(first, &mut out);
            while open && out.len() < 1 << 20 {
                match rx.try_recv() {
                    Ok(m) => open = self.encode(m, &mut out),
                    Err(_) => break,
                }
            }
            if !out.is_empty() {
                if let Err(e) = out.write_to(wr.as_ref(), self.params.send_stall).await {
                    if e.kind() == std::io::ErrorKind::TimedOut {
                        tracing::warn!("dropping the connection: {e}");
                    } else {
                        tracing::debug!("connection write failed: {e}");
                    }
                    break 'outer;
                }
            }
            if !open {
                break;
            }
        }
        let _ = wr.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use iscsi::pdu::PduDecoder;

    fn writer(seg: u32, burst: u32) -> Writer {
        Writer {
            params: WriterParams {
                header_digest: false,
                data_digest: false,
                max_xmit_data_segment_length: seg,
                max_burst_length: burst,
                send_stall: Duration::from_secs(5),
            },
            stat_sn: 10,
            window: Arc::new(Window::new(1, 8)),
        }
    }

    fn decode_all(mut b: BytesMut) -> Vec<Pdu> {
        let dec = PduDecoder {
            max_recv_data_segment_length: 1 << 20,
            ..Default::default()
        };
        let mut v = Vec::new();
        while let Some(p) = dec.decode(&mut b).unwrap() {
            v.push(p);
        }
        v
    }

    #[test]
    fn data_in_segmentation_with_phase_collapse() {
        let mut w = writer(1024, 2048);
        let mut out = Wire::default();
        let done = ScsiDone {
            itt: 5,
            resp: ScsiResponse::data(Bytes::from(vec![1u8; 3000])),
            edtl: 3000,
            read: true,
            write_residual: None,
            r2ts: 0,
            memory: None,
        };
        w.encode(Out::Scsi(Box::new(done)), &mut out);
        let pdus = decode_all(out.to_bytes());
        assert_eq!(pdus.len(), 3);
        let f: Vec<u8> = pdus.iter().map(|p| p.bhs.flags()).collect();
        assert_eq!(
            f,
            vec![0x00, 0x80, 0x81],
            "F at the burst end and the last PDU, S on the last"
        );
        assert_eq!(pdus[2].bhs.stat_sn(), 10);
        assert_eq!(w.stat_sn, 11);
        assert_eq!(pdus[2].bhs.buffer_offset(), 2048);
        assert_eq!(pdus[2].bhs.data_sn(), 2);
    }

    /// Large read data leaves through its own buffer; with both digests on, what goes on the
    /// wire decodes and verifies the same as a copied encoding.
    #[test]
    fn large_data_in_is_sent_from_its_buffer_with_digests() {
        let mut w = writer(16384, 1 << 20);
        w.params.header_digest = true;
        w.params.data_digest = true;
        let mut out = Wire::default();
        let data: Vec<u8> = (0..40_001u32).map(|i| (i % 251) as u8).collect();
        let done = ScsiDone {
            itt: 9,
            resp: ScsiResponse::data(Bytes::from(data.clone())),
            edtl: 40_001,
            read: true,
            write_residual: None,
            r2ts: 0,
            memory: None,
        };
        w.encode(Out::Scsi(Box::new(done)), &mut out);
        assert!(out.parts.len() >= 3, "data segments kept apart");
        let dec = PduDecoder {
            max_recv_data_segment_length: 1 << 20,
            header_digest: true,
            data_digest: true,
        };
        let mut b = out.to_bytes();
        let mut got = Vec::new();
        while let Some(p) = dec.decode(&mut b).unwrap() {
            got.extend_from_slice(&p.data);
        }
        assert_eq!(got, data);
    }

    /// A large read from an in-memory file leaves by sendfile, framed by the same Data-In
    /// PDUs as from memory, over a real socket; with a data digest it is read and digested.
    #[tokio::test]
    async fn data_in_from_a_file_over_a_socket() {
        use backstore::{BlockDevice, FileDevice};
        let dev = FileDevice::memory(1 << 20).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        dev.write(4096, Bytes::from(data.clone()).into(), false)
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut c, &mut got)
                .await
                .unwrap();
            got
        });
        let (server, _) = listener.accept().await.unwrap();
        let mut w = writer(65536, 1 << 20);
        let mut out = Wire::default();
        // (header digest, data digest): the file path with and without a header digest, and
        // the read-first path a data digest takes.
        let modes = [(false, false), (true, false), (true, true)];
        for (hd, dd) in modes {
            w.params.header_digest = hd;
            w.params.data_digest = dd;
            let extent = dev
                .read_extent(4096, data.len())
                .expect("memfd sends from the file");
            let done = ScsiDone {
                itt: 3,
                resp: ScsiResponse::file(extent),
                edtl: 299_999, // one byte short: overflow of 1
                read: true,
                write_residual: None,
                r2ts: 0,
                memory: None,
            };
            w.encode(Out::Scsi(Box::new(done)), &mut out);
            assert_eq!(
                out.parts.iter().any(|p| matches!(p, Part::File(_))),
                !dd,
                "sent from the file unless a data digest must see the data"
            );
            out.write_to(&server, Duration::from_secs(5)).await.unwrap();
        }
        drop(server);
        let mut wire = BytesMut::from(&client.await.unwrap()[..]);
        for (hd, dd) in modes {
            let dec = PduDecoder {
                max_recv_data_segment_length: 1 << 20,
                header_digest: hd,
                data_digest: dd,
            };
            let mut got = Vec::new();
            let mut last = None;
            while got.len() < 299_999 {
                let p = dec.decode(&mut wire).unwrap().expect("a whole PDU");
                assert_eq!(p.bhs.buffer_offset() as usize, got.len());
                got.extend_from_slice(&p.data);
                last = Some(p.bhs);
            }
            assert_eq!(got, data[..299_999]);
            let last = last.unwrap();
            assert_eq!(last.flags() & 0x81, 0x81, "final, with status");
            assert_eq!(last.residual_count(), 1);
        }
        assert!(wire.is_empty());
    }

    #[test]
    fn residuals_and_sense() {
        let mut w = writer(8192, 1 << 20);
        let mut out = Wire::default();
        // Read of 512 bytes with EDTL 200: overflow, 200 bytes sent.
        let done = ScsiDone {
            itt: 1,
            resp: ScsiResponse::data(Bytes::from(vec![0u8; 512])),
            edtl: 200,
            read: true,
            write_residual: None,
            r2ts: 0,
            memory: None,
        };
        w.encode(Out::Scsi(Box::new(done)), &mut out);
        let p = decode_all(out.to_bytes());
        assert_eq!(p[0].data.len(), 200);
        assert_eq!(p[0].bhs.flags() & 0x06, 0x04);
        assert_eq!(p[0].bhs.residual_count(), 312);
        // Check condition: separate response with sense.
        let sense = scsi::SenseData::lba_out_of_range();
        let done = ScsiDone {
            itt: 2,
            resp: ScsiResponse::check(sense),
            edtl: 512,
            read: true,
            write_residual: None,
            r2ts: 0,
            memory: None,
        };
        w.encode(Out::Scsi(Box::new(done)), &mut out);
        let p = decode_all(out.to_bytes());
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].bhs.opcode(), Some(Opcode::ScsiResponse));
        assert_eq!(p[0].bhs.0[3], 2);
        assert_eq!(p[0].bhs.flags() & 0x06, 0x02, "underflow of the whole EDTL");
        assert_eq!(&p[0].data[..2], &[0, 18]);
    }

    #[test]
    fn window_bounds_outstanding_commands() {
        let w = Window::new(1, 2);
        assert_eq!(w.stamp(), (1, 2));
        assert_eq!(w.accept(1, true), Acceptance::Accepted);
        assert_eq!(w.stamp(), (2, 2), "one outstanding: MaxCmdSN holds");
        assert_eq!(w.accept(3, true), Acceptance::Ignore);
        w.complete();
        assert_eq!(w.stamp(), (2, 3));
        assert_eq!(w.accept(1, false), Acceptance::Ignore, "duplicate");
        // Full: the window closes (MaxCmdSN = ExpCmdSN - 1) and even CmdSN = ExpCmdSN waits.
        assert_eq!(w.accept(2, true), Acceptance::Accepted);
        assert_eq!(w.accept(3, true), Acceptance::Accepted);
        assert_eq!(w.stamp(), (4, 3));
        assert_eq!(w.accept(4, true), Acceptance::Ignore, "window closed");
        assert_eq!(w.outstanding(), 2);
        // Immediate commands beyond twice the depth are refused.
        assert!(w.hold() && w.hold());
        assert!(!w.hold());
        w.complete(); // (its TASK SET FULL went out)
        assert_eq!(w.outstanding(), 4);
        for _ in 0..4 {
            w.complete();
        }
        assert_eq!(w.stamp(), (4, 5));
        assert_eq!(w.accept(4, true), Acceptance::Accepted);
        // An immediate command taking a slot never takes back a MaxCmdSN already sent.
        assert_eq!(w.stamp(), (5, 5));
        assert!(w.hold());
        assert_eq!(w.stamp(), (5, 5), "MaxCmdSN holds");
        assert_eq!(
            w.accept(5, true),
            Acceptance::Accepted,
            "within what was promised"
        );
        assert_eq!(w.stamp(), (6, 5));
    }
}
