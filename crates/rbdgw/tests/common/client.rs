//! A small, deliberately naive iSCSI initiator for the tests: it sends whatever PDUs a test
//! builds, well-formed or not, and reads PDUs back with a timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use iscsi::pdu::{Bhs, Opcode, Pdu, PduDecoder};
use iscsi::text::TextPairs;

pub struct Client {
    pub stream: TcpStream,
    buf: BytesMut,
    pub decoder: PduDecoder,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub itt: u32,
    pub header_digest: bool,
    pub data_digest: bool,
    /// Each client is its own initiator port (distinct ISID), so none reinstates another.
    pub isid: [u8; 6],
    /// The target's declared MaxRecvDataSegmentLength.
    pub target_max_recv: usize,
}

/// A TCP connection to `addr` from `source` (bound before connecting).
pub fn tcp_from(addr: SocketAddr, source: std::net::IpAddr) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(source, 0).into())?;
    sock.connect_timeout(&addr.into(), Duration::from_secs(2))?;
    Ok(sock.into())
}

static NEXT_ISID: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Self::over(TcpStream::connect(addr).expect("connect"))
    }

    /// A client whose connection comes from `source` (another loopback address).
    pub fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> Client {
        Self::over(tcp_from(addr, source).expect("connect"))
    }

    fn over(stream: TcpStream) -> Client {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Client {
            stream,
            buf: BytesMut::new(),
            decoder: PduDecoder {
                max_recv_data_segment_length: 1 << 24,
                ..Default::default()
            },
            cmd_sn: 1,
            exp_stat_sn: 0,
            itt: 1,
            header_digest: false,
            data_digest: false,
            isid: {
                let n = NEXT_ISID
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    .to_be_bytes();
                [0x80, 0x12, 0x34, 0x56, n[0], n[1]]
            },
            target_max_recv: 8192,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn send(&mut self, pdu: &Pdu) {
        let b = pdu.to_bytes(self.header_digest, self.data_digest);
        let _ = self.stream.write_all(&b);
    }

    /// The next PDU, or None on timeout or end of stream.
    pub fn recv_timeout(&mut self, t: Duration) -> Option<Pdu> {
        self.stream.set_read_timeout(Some(t)).unwrap();
        loop {
            if let Ok(Some(p)) = self.decoder.decode(&mut self.buf) {
                self.exp_stat_sn = self.exp_stat_sn.max(p.bhs.stat_sn().wrapping_add(1));
                return Some(p);
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub fn recv(&mut self) -> Option<Pdu> {
        self.recv_timeout(Duration::from_secs(5))
    }

    /// Whether the target closed the connection (reads end of stream).
    pub fn closed(&mut self) -> bool {
        self.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 4096];
        loop {
            match self.stream.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    }

    pub fn login_pdu(&mut self, csg: u8, nsg: Option<u8>, text: &str) -> Pdu {
        let mut bhs = Bhs::new(Opcode::LoginRequest);
        bhs.0[0] |= 0x40;
        let mut f = csg << 2;
        if let Some(n) = nsg {
            f |= 0x80 | n;
        }
        bhs.set_flags(f);
        bhs.0[8..14].copy_from_slice(&self.isid);
        bhs.set_itt(self.itt)
            .set_cmd_sn(self.cmd_sn)
            .set_exp_stat_sn(self.exp_stat_sn);
        Pdu::with_data(bhs, Bytes::from(text.replace('|', "\0")))
    }

    /// A one-PDU login straight to full feature phase; returns the response's text.
    pub fn login(&mut self, initiator: &str, target: Option<&str>, extra: &str) -> TextPairs {
        let mut text = format!("InitiatorName={initiator}|");
        match target {
            Some(t) => text += &format!("TargetName={t}|SessionType=Normal|"),
            None => text += "SessionType=Discovery|",
        }
        text += extra;
        let pdu = self.login_pdu(1, Some(3), &text);
        self.send(&pdu);
        let r = self.recv().expect("login response");
        assert_eq!(r.bhs.opcode(), Some(Opcode::LoginResponse));
        assert_eq!((r.bhs.0[36], r.bhs.0[37]), (0, 0), "login status");
        self.cmd_sn = r.bhs.exp_cmd_sn();
        let t = TextPairs::parse(&r.data).unwrap();
        self.header_digest = t.get("HeaderDigest") == Some("CRC32C");
        self.data_digest = t.get("DataDigest") == Some("CRC32C");
        self.decoder.header_digest = self.header_digest;
        self.decoder.data_digest = self.data_digest;
        if let Some(n) = t
            .get("MaxRecvDataSegmentLength")
            .and_then(|v| v.parse().ok())
        {
            self.target_max_recv = n;
        }
        t
    }

    pub fn next_itt(&mut self) -> u32 {
        self.itt += 1;
        self.itt
    }

    /// A NOP-Out ping that expects its NOP-In back: proves the connection still serves.
    pub fn ping(&mut self) -> bool {
        let itt = self.next_itt();
        let mut bhs = Bhs::new(Opcode::NopOut);
        bhs.0[0] |= 0x40;
        bhs.set_itt(itt)
            .set_ttt(0xffff_ffff)
            .set_cmd_sn(self.cmd_sn)
            .set_exp_stat_sn(self.exp_stat_sn);
        self.send(&Pdu::with_data(bhs, Bytes::from_static(b"ping")));
        while let Some(p) = self.recv() {
            if p.bhs.opcode() == Some(Opcode::NopIn) && p.bhs.itt() == itt {
                return &p.data[..] == b"ping";
            }
        }
        false
    }

    /// A SCSI command PDU (non-immediate, CmdSN taken and advanced).
    pub fn scsi_command(
        &mut self,
        lun: u64,
        cdb: &[u8],
        read: bool,
        write: bool,
        edtl: u32,
        data: Bytes,
    ) -> Pdu {
        let itt = self.next_itt();
        let mut bhs = Bhs::new(Opcode::ScsiCommand);
        let mut f = 0x80;
        if read {
            f |= 0x40;
        }
        if write {
            f |= 0x20;
        }
        bhs.set_flags(f | 0x01); // SIMPLE task attribute
        bhs.set_lun_raw(lun << 48)
            .set_itt(itt)
            .set_ttt(edtl)
            .set_cmd_sn(self.cmd_sn)
            .set_exp_stat_sn(self.exp_stat_sn);
        bhs.0[32..32 + cdb.len()].copy_from_slice(cdb);
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        Pdu::with_data(bhs, data)
    }
}

/// The outcome of one SCSI command as the test client sees it.
#[derive(Debug)]
pub struct Outcome {
    pub status: u8,
    pub data: Vec<u8>,
    /// (sense key, ASC, ASCQ) for CHECK CONDITION.
    pub sense: Option<(u8, u8, u8)>,
}

impl Client {
    /// Runs one SCSI command to completion: data-out through R2Ts, data-in gathered.
    pub fn scsi(&mut self, lun: u64, cdb: &[u8], data_out: &[u8], data_in_len: u32) -> Outcome {
        let write = !data_out.is_empty();
        let edtl = if write {
            data_out.len() as u32
        } else {
            data_in_len
        };
        let cmd = self.scsi_command(lun, cdb, data_in_len > 0, write, edtl, Bytes::new());
        let itt = cmd.bhs.itt();
        self.send(&cmd);
        let mut data = vec![0u8; data_in_len as usize];
        let mut got = 0usize;
        loop {
            let p = self
                .recv_timeout(Duration::from_secs(20))
                .expect("a response to the SCSI command");
            match p.bhs.opcode() {
                Some(Opcode::ReadyToTransfer) if p.bhs.itt() == itt => {
                    let (off, len) = (
                        p.bhs.buffer_offset() as usize,
                        p.bhs.residual_count() as usize,
                    );
                    let mut bhs = Bhs::new(Opcode::DataOut);
                    bhs.set_lun_raw(lun << 48)
                        .set_itt(itt)
                        .set_ttt(p.bhs.ttt())
                        .set_exp_stat_sn(self.exp_stat_sn);
                    bhs.set_data_sn(0).set_buffer_offset(off as u32);
                    let chunk = Bytes::copy_from_slice(&data_out[off..off + len]);
                    self.send(&Pdu::with_data(bhs, chunk));
                }
                Some(Opcode::DataIn) if p.bhs.itt() == itt => {
                    let off = p.bhs.buffer_offset() as usize;
                    data[off..off + p.data.len()].copy_from_slice(&p.data);
                    got = got.max(off + p.data.len());
                    if p.bhs.flags() & 0x01 != 0 {
                        data.truncate(got);
                        return Outcome {
                            status: p.bhs.0[3],
                            data,
                            sense: None,
                        };
                    }
                }
                Some(Opcode::ScsiResponse) if p.bhs.itt() == itt => {
                    data.truncate(got);
                    let sense =
                        (p.data.len() >= 16).then(|| (p.data[4] & 0x0f, p.data[14], p.data[15]));
                    return Outcome {
                        status: p.bhs.0[3],
                        data,
                        sense,
                    };
                }
                _ => {}
            }
        }
    }

    /// The NAA designator of LUN `lun` (VPD 0x83), as copy commands name it.
    pub fn naa(&mut self, lun: u64) -> Vec<u8> {
        let o = self.scsi_ready(lun, &[0x12, 1, 0x83, 0x10, 0, 0], &[], 4096);
        let mut off = 4;
        while off + 4 <= o.data.len() {
            let len = o.data[off + 3] as usize;
            if o.data[off + 1] & 0x0f == 3 {
                return o.data[off + 4..off + 4 + len].to_vec();
            }
            off += 4 + len;
        }
        panic!("no NAA designator on LUN {lun}");
    }

    /// Like [`Client::scsi`], but swallows pending unit attentions first (as initiators do).
    pub fn scsi_ready(
        &mut self,
        lun: u64,
        cdb: &[u8],
        data_out: &[u8],
        data_in_len: u32,
    ) -> Outcome {
        for _ in 0..8 {
            let o = self.scsi(lun, cdb, data_out, data_in_len);
            if o.sense.map(|s| s.0) != Some(0x06) {
                return o;
            }
        }
        panic!("unit attentions do not stop");
    }

    /// SendTargets=All over this (discovery or normal) session.
    pub fn send_targets(&mut self) -> TextPairs {
        let itt = self.next_itt();
        let mut bhs = Bhs::new(Opcode::TextRequest);
        bhs.0[0] |= 0x40;
        bhs.set_itt(itt)
            .set_ttt(0xffff_ffff)
            .set_cmd_sn(self.cmd_sn)
            .set_exp_stat_sn(self.exp_stat_sn);
        self.send(&Pdu::with_data(
            bhs,
            Bytes::from_static(b"SendTargets=All\0"),
        ));
        loop {
            let p = self.recv().expect("text response");
            if p.bhs.opcode() == Some(Opcode::TextResponse) && p.bhs.itt() == itt {
                return TextPairs::parse_list(&p.data).expect("text");
            }
        }
    }
}
