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

static NEXT_ISID: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
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
