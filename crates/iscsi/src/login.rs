//! The target side of the login phase (RFC 7143 §6): stages, key negotiation, authentication.
//!
//! [`Login`] is a state machine fed with Login Request PDUs; each step yields the Login Response
//! to send and whether the login goes on, completed or failed. Which targets exist and how an
//! initiator must authenticate is asked of a [`Directory`] (the gateway's config).

use bytes::Bytes;

use crate::chap::{self, ChapAlgorithm};
use crate::params::{Answer, Negotiated, TargetLimits};
use crate::pdu::{Bhs, Opcode, Pdu};
use crate::text::TextPairs;

/// Login Response Status-Class and Status-Detail (RFC 7143 §11.13.5), as one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginStatus(pub u16);

impl LoginStatus {
    pub const SUCCESS: LoginStatus = LoginStatus(0x0000);
    pub const INITIATOR_ERROR: LoginStatus = LoginStatus(0x0200);
    pub const AUTHENTICATION_FAILURE: LoginStatus = LoginStatus(0x0201);
    pub const AUTHORIZATION_FAILURE: LoginStatus = LoginStatus(0x0202);
    pub const NOT_FOUND: LoginStatus = LoginStatus(0x0203);
    pub const TARGET_REMOVED: LoginStatus = LoginStatus(0x0204);
    pub const UNSUPPORTED_VERSION: LoginStatus = LoginStatus(0x0205);
    pub const TOO_MANY_CONNECTIONS: LoginStatus = LoginStatus(0x0206);
    pub const MISSING_PARAMETER: LoginStatus = LoginStatus(0x0207);
    pub const CANT_INCLUDE_IN_SESSION: LoginStatus = LoginStatus(0x0208);
    pub const SESSION_TYPE_NOT_SUPPORTED: LoginStatus = LoginStatus(0x0209);
    pub const SESSION_DOES_NOT_EXIST: LoginStatus = LoginStatus(0x020a);
    pub const INVALID_DURING_LOGIN: LoginStatus = LoginStatus(0x020b);
    pub const TARGET_ERROR: LoginStatus = LoginStatus(0x0300);
    pub const SERVICE_UNAVAILABLE: LoginStatus = LoginStatus(0x0301);
    pub const OUT_OF_RESOURCES: LoginStatus = LoginStatus(0x0302);
}

/// Login stages (RFC 7143 §6.3): the CSG/NSG field values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Security = 0,
    Operational = 1,
    FullFeature = 3,
}

impl Stage {
    fn from_bits(b: u8) -> Option<Stage> {
        match b & 3 {
            0 => Some(Stage::Security),
            1 => Some(Stage::Operational),
            3 => Some(Stage::FullFeature),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    Discovery,
    Normal,
}

/// CHAP secrets for one initiator of one target (lrbd's `tpg` or `acls` credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChapSecrets {
    pub user: String,
    pub secret: String,
    /// The target's own name and secret, for mutual CHAP.
    pub mutual: Option<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthPolicy {
    None,
    Chap(ChapSecrets),
}

/// What the directory grants an initiator that asks for a session.
#[derive(Debug, Clone)]
pub struct Grant {
    pub auth: AuthPolicy,
    pub limits: TargetLimits,
    pub alias: Option<String>,
}

/// The target's knowledge of targets and initiators, as login needs it.
pub trait Directory {
    /// May `initiator` open a session of this type (to `target`, for a normal session) through
    /// this portal, and how must it authenticate?
    fn grant(
        &self,
        session_type: SessionType,
        target: Option<&str>,
        initiator: &str,
    ) -> Result<Grant, LoginStatus>;
}

/// Per-portal facts the login needs.
#[derive(Debug, Clone)]
pub struct PortalInfo {
    pub tpg_tag: u16,
    /// The TSIH to give the session if the login succeeds (non-zero, RFC 7143 §11.12.4).
    pub tsih: u16,
    /// Our first StatSN on this connection.
    pub initial_stat_sn: u32,
    /// The CmdSN window depth we grant.
    pub cmd_window: u32,
}

/// What a successful login established.
#[derive(Debug, Clone)]
pub struct LoginResult {
    pub session_type: SessionType,
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    pub target_name: Option<String>,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub cid: u16,
    /// ExpCmdSN for the full-feature phase: the login's CmdSN.
    pub exp_cmd_sn: u32,
    /// The StatSN of the next response.
    pub stat_sn: u32,
    pub params: Negotiated,
}

/// One step of the login.
#[derive(Debug)]
pub enum LoginStep {
    /// Send the response and wait for the next Login Request.
    Continue(Pdu),
    /// Send the response; the connection enters the full-feature phase.
    Complete(Pdu, Box<LoginResult>),
    /// Send the response (a failure status) and close the connection.
    Fail(Pdu, LoginStatus),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AuthState {
    /// No AuthMethod agreed yet.
    Start,
    /// AuthMethod=CHAP agreed; waiting for CHAP_A.
    ChapWaitAlgorithm,
    /// Challenge sent; waiting for CHAP_N/CHAP_R.
    ChapWaitResponse {
        alg: ChapAlgorithm,
        id: u8,
        challenge: Vec<u8>,
    },
    /// Authenticated (or no authentication required).
    Done,
}

/// The login state machine of one connection.
#[derive(Debug)]
pub struct Login {
    portal: PortalInfo,
    stage: Stage,
    started: bool,
    isid: [u8; 6],
    tsih: u16,
    cid: u16,
    itt: u32,
    cmd_sn: u32,
    stat_sn: u32,
    pending_text: Vec<u8>,
    session_type: SessionType,
    initiator_name: String,
    initiator_alias: Option<String>,
    target_name: Option<String>,
    grant: Option<Grant>,
    auth: AuthState,
    params: Negotiated,
    declared: bool,
    tpgt_sent: bool,
    /// A response too long for one PDU: what is left to send, one PDU per empty request.
    out: Option<Deferred>,
}

/// The rest of a long login response (RFC 7143 §11.13.3: the target sends it in PDUs with
/// C=1 and T=0, each answered by an empty Login Request, the last with the real T bit).
#[derive(Debug)]
struct Deferred {
    rest: Bytes,
    transit: bool,
    next: Stage,
    result: Option<LoginResult>,
}

/// Login PDUs carry at most this much data (RFC 7143 §6.1: 8192 bytes until the
/// full-feature phase).
pub const LOGIN_SEGMENT_MAX: usize = 8192;
/// RFC 7143 §4.2.7.1: iSCSI names are at most 223 bytes.
pub const MAX_NAME_LEN: usize = 223;
/// RFC 7143 §6.1: a simple value is at most 255 bytes unless a key says otherwise.
pub const MAX_VALUE_LEN: usize = 255;
/// RFC 7143 §12.1.3: CHAP_C and CHAP_R are at most 1024 bytes (binary).
pub const MAX_CHAP_BINARY: usize = 1024;

/// Largest text a login may accumulate over continued PDUs: generous for any real initiator,
/// small enough that a hostile one cannot grow us without bound.
const MAX_LOGIN_TEXT: usize = 64 * 1024;

impl Login {
    pub fn new(portal: PortalInfo) -> Self {
        let stat_sn = portal.initial_stat_sn;
        Login {
            portal,
            stage: Stage::Security,
            started: false,
            isid: [0; 6],
            tsih: 0,
            cid: 0,
            itt: 0,
            cmd_sn: 0,
            stat_sn,
            pending_text: Vec::new(),
            session_type: SessionType::Normal,
            initiator_name: String::new(),
            initiator_alias: None,
            target_name: None,
            grant: None,
            auth: AuthState::Start,
            params: Negotiated::default(),
            declared: false,
            tpgt_sent: false,
            out: None,
        }
    }

    /// Sets the TPG tag returned to a normal session (known once the target is named).
    pub fn set_tpg_tag(&mut self, tag: u16) {
        self.portal.tpg_tag = tag;
    }

    /// The ISID and TSIH the initiator sent (known after the first PDU).
    pub fn isid_tsih(&self) -> ([u8; 6], u16) {
        (self.isid, self.tsih)
    }

    fn response(
        &mut self,
        transit: bool,
        next: Stage,
        status: LoginStatus,
        text: &TextPairs,
    ) -> Pdu {
        let mut bhs = Bhs::new(Opcode::LoginResponse);
        let mut flags = (self.stage as u8) << 2;
        if transit {
            flags |= 0x80 | next as u8;
        }
        bhs.set_flags(flags);
        bhs.0[2] = 0; // Version-max
        bhs.0[3] = 0; // Version-active
        bhs.0[8..14].copy_from_slice(&self.isid);
        let tsih = if transit && next == Stage::FullFeature {
            self.portal.tsih
        } else {
            self.tsih
        };
        bhs.set_u16_at(14, tsih);
        bhs.set_itt(self.itt);
        bhs.set_stat_sn(self.stat_sn);
        self.stat_sn = self.stat_sn.wrapping_add(1);
        bhs.set_exp_cmd_sn(self.cmd_sn);
        bhs.set_max_cmd_sn(self.cmd_sn.wrapping_add(self.portal.cmd_window.max(1) - 1));
        bhs.0[36] = (status.0 >> 8) as u8;
        bhs.0[37] = status.0 as u8;
        Pdu::with_data(bhs, Bytes::from(text.encode()))
    }

    /// A failure response with `status` in place of the one a completed login produced:
    /// the caller found it cannot take the session after all (out of resources).
    pub fn refuse(&mut self, status: LoginStatus) -> Pdu {
        match self.fail(status) {
            LoginStep::Fail(pdu, _) => pdu,
            _ => unreachable!("fail() always fails"),
        }
    }

    fn fail(&mut self, status: LoginStatus) -> LoginStep {
        let pdu = self.response(false, self.stage, status, &TextPairs::new());
        LoginStep::Fail(pdu, status)
    }

    /// Feeds one PDU received during login.
    pub fn on_pdu(&mut self, pdu: &Pdu, dir: &dyn Directory) -> LoginStep {
        let bhs = &pdu.bhs;
        if bhs.opcode() != Some(Opcode::LoginRequest) {
            // RFC 7143 §6.1: only Login Requests are allowed until the login completes.
            return self.fail(LoginStatus::INVALID_DURING_LOGIN);
        }
        let flags = bhs.flags();
        let transit = flags & 0x80 != 0;
        let cont = flags & 0x40 != 0;
        let (Some(csg), Some(nsg)) = (Stage::from_bits(flags >> 2), Stage::from_bits(flags)) else {
            return self.fail(LoginStatus::INITIATOR_ERROR);
        };
        if !self.started {
            self.started = true;
            self.isid.copy_from_slice(&bhs.0[8..14]);
            self.tsih = bhs.u16_at(14);
            self.cid = bhs.u16_at(20);
            self.cmd_sn = bhs.cmd_sn();
            self.stage = csg;
            // Version-min above the one version there is (RFC 7143 §11.12.4).
            if bhs.0[3] > 0 {
                return self.fail(LoginStatus::UNSUPPORTED_VERSION);
            }
        } else if bhs.0[8..14] != self.isid || csg != self.stage {
            return self.fail(LoginStatus::INITIATOR_ERROR);
        }
        self.itt = bhs.itt();
        if let Some(d) = self.out.take() {
            // Only an empty request may ask for the rest of a long response.
            if cont || transit || !pdu.data.is_empty() {
                return self.fail(LoginStatus::INITIATOR_ERROR);
            }
            return self.send_part(d);
        }
        if csg == Stage::FullFeature || (transit && (cont || nsg <= csg)) {
            return self.fail(LoginStatus::INITIATOR_ERROR);
        }
        if self.pending_text.len() + pdu.data.len() > MAX_LOGIN_TEXT {
            return self.fail(LoginStatus::OUT_OF_RESOURCES);
        }
        self.pending_text.extend_from_slice(&pdu.data);
        if cont {
            // RFC 7143 §11.12.3: answer each continued PDU with an empty response.
            let r = self.response(false, self.stage, LoginStatus::SUCCESS, &TextPairs::new());
            return LoginStep::Continue(r);
        }
        let text = std::mem::take(&mut self.pending_text);
        let keys = match TextPairs::parse(&text) {
            Ok(k) if within_bounds(&k) => k,
            _ => return self.fail(LoginStatus::INITIATOR_ERROR),
        };
        let mut answer = TextPairs::new();
        if let Err(status) = self.declarations(&keys, dir) {
            return self.fail(status);
        }
        let Some(grant) = self.grant.clone() else {
            return self.fail(LoginStatus::MISSING_PARAMETER);
        };
        if self.tsih != 0 {
            // Adding a connection to an existing session (MC/S): we grant MaxConnections=1.
            return self.fail(LoginStatus::SESSION_DOES_NOT_EXIST);
        }
        if csg == Stage::Security {
            if let Err(status) = self.security(&keys, &grant, &mut answer) {
                return self.fail(status);
            }
        } else if self.auth != AuthState::Done {
            // Skipping the security stage is allowed only when no authentication is required.
            if grant.auth != AuthPolicy::None {
                return self.fail(LoginStatus::AUTHENTICATION_FAILURE);
            }
            self.auth = AuthState::Done;
        }
        let discovery = self.session_type == SessionType::Discovery;
        for (k, v) in &keys.0 {
            if is_declarative(k) || k.starts_with("CHAP_") || k == "AuthMethod" {
                continue;
            }
            match self.params.answer(&grant.limits, k, v, discovery) {
                Answer::Value(a) => answer.push(k.clone(), a),
                Answer::None => {}
            }
        }
        if csg == Stage::Operational && !self.declared {
            self.declared = true;
            self.params.max_recv_data_segment_length = grant.limits.max_recv_data_segment_length;
            answer.push(
                "MaxRecvDataSegmentLength",
                grant.limits.max_recv_data_segment_length.to_string(),
            );
        }
        if self.session_type == SessionType::Normal && !self.tpgt_sent {
            // RFC 7143 §13.9: returned in the first Login Response of a normal session.
            self.tpgt_sent = true;
            answer.push("TargetPortalGroupTag", self.portal.tpg_tag.to_string());
            if let Some(alias) = &grant.alias {
                answer.push("TargetAlias", alias.clone());
            }
        }
        let agree = transit && (csg != Stage::Security || self.auth == AuthState::Done);
        if !agree {
            return self.reply(false, nsg, &answer, None);
        }
        if nsg == Stage::FullFeature && csg == Stage::Security && !self.declared {
            // Straight from security to full feature: declare our receive limit anyway.
            self.declared = true;
            self.params.max_recv_data_segment_length = grant.limits.max_recv_data_segment_length;
            answer.push(
                "MaxRecvDataSegmentLength",
                grant.limits.max_recv_data_segment_length.to_string(),
            );
        }
        if nsg == Stage::FullFeature {
            let result = LoginResult {
                session_type: self.session_type,
                initiator_name: self.initiator_name.clone(),
                initiator_alias: self.initiator_alias.clone(),
                target_name: self.target_name.clone(),
                isid: self.isid,
                tsih: self.portal.tsih,
                cid: self.cid,
                exp_cmd_sn: self.cmd_sn,
                stat_sn: self.stat_sn,
                params: self.params.clone(),
            };
            return self.reply(true, nsg, &answer, Some(result));
        }
        self.reply(true, nsg, &answer, None)
    }

    /// Answers with `answer`, in several PDUs when it is longer than one may carry.
    fn reply(
        &mut self,
        transit: bool,
        next: Stage,
        answer: &TextPairs,
        result: Option<LoginResult>,
    ) -> LoginStep {
        self.send_part(Deferred {
            rest: Bytes::from(answer.encode()),
            transit,
            next,
            result,
        })
    }

    /// The next PDU of a response: C=1 and T=0 while more follows; the last one carries the
    /// transit and completes the stage (or the login).
    fn send_part(&mut self, mut d: Deferred) -> LoginStep {
        if d.rest.len() > LOGIN_SEGMENT_MAX {
            let part = d.rest.split_to(LOGIN_SEGMENT_MAX);
            let pdu = self.response(false, self.stage, LoginStatus::SUCCESS, &TextPairs::new());
            let mut bhs = pdu.bhs;
            bhs.set_flags(bhs.flags() | 0x40);
            self.out = Some(d);
            return LoginStep::Continue(Pdu::with_data(bhs, part));
        }
        let head = self.response(d.transit, d.next, LoginStatus::SUCCESS, &TextPairs::new());
        let pdu = Pdu::with_data(head.bhs, d.rest);
        match d.result {
            Some(mut result) => {
                // The next StatSN is the one after this last response.
                result.stat_sn = self.stat_sn;
                LoginStep::Complete(pdu, Box::new(result))
            }
            None => {
                if d.transit {
                    self.stage = d.next;
                }
                LoginStep::Continue(pdu)
            }
        }
    }

    /// Declarative keys: who is logging in to what. The first PDU must name the initiator
    /// (RFC 7143 §13.5) and, for a normal session, the target (§13.4).
    fn declarations(&mut self, keys: &TextPairs, dir: &dyn Directory) -> Result<(), LoginStatus> {
        if self.grant.is_some() {
            // RFC 7143 §13.4/§13.5: these may not change once declared.
            for k in ["InitiatorName", "TargetName", "SessionType"] {
                if keys.get(k).is_some() && k != "SessionType" {
                    let same = match k {
                        "InitiatorName" => keys.get(k) == Some(self.initiator_name.as_str()),
                        _ => keys.get(k) == self.target_name.as_deref(),
                    };
                    if !same {
                        return Err(LoginStatus::INITIATOR_ERROR);
                    }
                }
            }
            return Ok(());
        }
        let initiator = keys
            .get("InitiatorName")
            .ok_or(LoginStatus::MISSING_PARAMETER)?;
        if initiator.is_empty() {
            return Err(LoginStatus::MISSING_PARAMETER);
        }
        self.session_type = match keys.get("SessionType").unwrap_or("Normal") {
            "Normal" => SessionType::Normal,
            "Discovery" => SessionType::Discovery,
            _ => return Err(LoginStatus::SESSION_TYPE_NOT_SUPPORTED),
        };
        self.initiator_name = initiator.to_string();
        self.initiator_alias = keys.get("InitiatorAlias").map(str::to_string);
        let target = keys.get("TargetName").map(str::to_string);
        if self.session_type == SessionType::Normal && target.as_deref().is_none_or(str::is_empty) {
            return Err(LoginStatus::MISSING_PARAMETER);
        }
        let grant = dir.grant(self.session_type, target.as_deref(), initiator)?;
        self.target_name = target.filter(|_| self.session_type == SessionType::Normal);
        if grant.auth == AuthPolicy::None
            && self.auth == AuthState::Start
            && keys.get("AuthMethod").is_none()
        {
            // Nothing to authenticate: transit may happen whenever the initiator asks.
            self.auth = AuthState::Done;
        }
        self.grant = Some(grant);
        Ok(())
    }

    /// Security stage keys (RFC 7143 §12.1, §6.3.1).
    fn security(
        &mut self,
        keys: &TextPairs,
        grant: &Grant,
        answer: &mut TextPairs,
    ) -> Result<(), LoginStatus> {
        if let Some(offer) = keys.get("AuthMethod") {
            let methods: Vec<&str> = offer.split(',').collect();
            match &grant.auth {
                AuthPolicy::None if methods.contains(&"None") => {
                    answer.push("AuthMethod", "None");
                    self.auth = AuthState::Done;
                }
                AuthPolicy::Chap(_) if methods.contains(&"CHAP") => {
                    answer.push("AuthMethod", "CHAP");
                    self.auth = AuthState::ChapWaitAlgorithm;
                }
                _ => return Err(LoginStatus::AUTHENTICATION_FAILURE),
            }
        }
        let secrets = match &grant.auth {
            AuthPolicy::Chap(s) => s,
            AuthPolicy::None => return Ok(()),
        };
        match self.auth.clone() {
            AuthState::ChapWaitAlgorithm => {
                if let Some(offer) = keys.get("CHAP_A") {
                    let alg =
                        ChapAlgorithm::choose(offer).ok_or(LoginStatus::AUTHENTICATION_FAILURE)?;
                    let id = chap::random_bytes(1)[0];
                    let challenge = chap::random_bytes(16);
                    answer.push("CHAP_A", (alg as u8).to_string());
                    answer.push("CHAP_I", id.to_string());
                    answer.push("CHAP_C", chap::encode_hex(&challenge));
                    self.auth = AuthState::ChapWaitResponse { alg, id, challenge };
                }
            }
            AuthState::ChapWaitResponse { alg, id, challenge } => {
                let (Some(name), Some(resp)) = (keys.get("CHAP_N"), keys.get("CHAP_R")) else {
                    return Err(LoginStatus::AUTHENTICATION_FAILURE);
                };
                let resp = chap::decode_binary(resp).ok_or(LoginStatus::AUTHENTICATION_FAILURE)?;
                let expected = alg.response(id, secrets.secret.as_bytes(), &challenge);
                if name != secrets.user || !chap::ct_eq(&resp, &expected) {
                    return Err(LoginStatus::AUTHENTICATION_FAILURE);
                }
                match (keys.get("CHAP_I"), keys.get("CHAP_C"), &secrets.mutual) {
                    (Some(i), Some(c), Some((tuser, tsecret))) => {
                        let i: u8 = i.parse().map_err(|_| LoginStatus::AUTHENTICATION_FAILURE)?;
                        let c =
                            chap::decode_binary(c).ok_or(LoginStatus::AUTHENTICATION_FAILURE)?;
                        // RFC 7143 §12.1.3: a reflected challenge is an attack.
                        if c == challenge {
                            return Err(LoginStatus::AUTHENTICATION_FAILURE);
                        }
                        answer.push("CHAP_N", tuser.clone());
                        answer.push(
                            "CHAP_R",
                            chap::encode_hex(&alg.response(i, tsecret.as_bytes(), &c)),
                        );
                    }
                    // The initiator asked us to authenticate but we have no secret, or we are
                    // configured for mutual CHAP and it did not ask: refuse either way.
                    (Some(_), _, None) | (_, Some(_), None) | (None, None, Some(_)) => {
                        return Err(LoginStatus::AUTHENTICATION_FAILURE);
                    }
                    (None, None, None) => {}
                    _ => return Err(LoginStatus::AUTHENTICATION_FAILURE),
                }
                self.auth = AuthState::Done;
            }
            AuthState::Start if keys.0.iter().any(|(k, _)| k.starts_with("CHAP_")) => {
                return Err(LoginStatus::AUTHENTICATION_FAILURE);
            }
            _ => {}
        }
        Ok(())
    }
}

/// Values within RFC 7143's bounds: iSCSI names within §4.2.7.1 (at most 223 bytes, no
/// spaces or control characters), CHAP binaries within §12.1.3 (1024 bytes, in hex or
/// base64 with its prefix), every other value within §6.1's 255 bytes, and no control
/// characters anywhere (they would only serve to forge log lines).
fn within_bounds(keys: &TextPairs) -> bool {
    keys.0.iter().all(|(k, v)| {
        let printable = !v.chars().any(char::is_control);
        let max = match k.as_str() {
            "InitiatorName" | "TargetName" => {
                if v.chars().any(char::is_whitespace) {
                    return false;
                }
                MAX_NAME_LEN
            }
            // 0x + two hex digits per byte; 0b + base64.
            "CHAP_C" | "CHAP_R" => 2 + 2 * MAX_CHAP_BINARY,
            _ => MAX_VALUE_LEN,
        };
        printable && v.len() <= max
    })
}

fn is_declarative(k: &str) -> bool {
    matches!(
        k,
        "InitiatorName"
            | "TargetName"
            | "SessionType"
            | "InitiatorAlias"
            | "TargetAlias"
            | "TargetAddress"
            | "TargetPortalGroupTag"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(AuthPolicy);
    impl Directory for Dir {
        fn grant(
            &self,
            st: SessionType,
            target: Option<&str>,
            _i: &str,
        ) -> Result<Grant, LoginStatus> {
            if st == SessionType::Normal && target != Some("iqn.t") {
                return Err(LoginStatus::NOT_FOUND);
            }
            Ok(Grant {
                auth: self.0.clone(),
                limits: TargetLimits::default(),
                alias: None,
            })
        }
    }

    fn portal() -> PortalInfo {
        PortalInfo {
            tpg_tag: 2,
            tsih: 9,
            initial_stat_sn: 100,
            cmd_window: 128,
        }
    }

    fn req(csg: u8, nsg: Option<u8>, text: &str) -> Pdu {
        let mut bhs = Bhs::new(Opcode::LoginRequest);
        bhs.0[0] |= 0x40;
        let mut f = csg << 2;
        if let Some(n) = nsg {
            f |= 0x80 | n;
        }
        bhs.set_flags(f);
        bhs.0[8..14].copy_from_slice(&[0x40, 0, 1, 2, 3, 4]);
        bhs.set_itt(1).set_cmd_sn(5);
        Pdu::with_data(bhs, Bytes::from(text.replace('|', "\0")))
    }

    fn text(p: &Pdu) -> TextPairs {
        TextPairs::parse(&p.data).unwrap()
    }

    #[test]
    fn no_auth_straight_to_full_feature() {
        let dir = Dir(AuthPolicy::None);
        let mut l = Login::new(portal());
        let step = l.on_pdu(
            &req(
                1,
                Some(3),
                "InitiatorName=iqn.i|TargetName=iqn.t|HeaderDigest=None|MaxBurstLength=262144|",
            ),
            &dir,
        );
        let LoginStep::Complete(r, res) = step else {
            panic!("{step:?}")
        };
        assert_eq!(r.bhs.flags(), 0x80 | 1 << 2 | 3);
        assert_eq!(r.bhs.u16_at(14), 9, "TSIH assigned");
        assert_eq!(r.bhs.stat_sn(), 100);
        assert_eq!(r.bhs.exp_cmd_sn(), 5);
        assert_eq!(r.bhs.max_cmd_sn(), 5 + 127);
        let t = text(&r);
        assert_eq!(t.get("TargetPortalGroupTag"), Some("2"));
        assert_eq!(t.get("MaxBurstLength"), Some("262144"));
        assert!(t.get("MaxRecvDataSegmentLength").is_some());
        assert_eq!(res.stat_sn, 101);
        assert_eq!(res.target_name.as_deref(), Some("iqn.t"));
    }

    #[test]
    fn long_responses_go_out_in_several_pdus() {
        let dir = Dir(AuthPolicy::None);
        let mut l = Login::new(portal());
        let mut t = String::from("InitiatorName=iqn.i|TargetName=iqn.t|");
        for i in 0..2000 {
            t.push_str(&format!("X-k{i}=v|"));
        }
        let mut step = l.on_pdu(&req(1, Some(3), &t), &dir);
        let mut got = Vec::new();
        let mut parts = 0;
        let res = loop {
            parts += 1;
            match step {
                LoginStep::Continue(r) => {
                    assert_eq!(r.bhs.flags() & 0xc0, 0x40, "C=1, T=0 while more follows");
                    assert!(r.data.len() <= LOGIN_SEGMENT_MAX);
                    got.extend_from_slice(&r.data);
                    let mut ack = req(1, None, "");
                    ack.bhs.set_data_segment_len(0);
                    step = l.on_pdu(&ack, &dir);
                }
                LoginStep::Complete(r, res) => {
                    assert_eq!(r.bhs.flags() & 0xc0, 0x80, "the last one transits");
                    got.extend_from_slice(&r.data);
                    break res;
                }
                LoginStep::Fail(..) => panic!("{step:?}"),
            }
        };
        assert!(parts > 4, "{parts} PDUs");
        let t = TextPairs::parse(&got).unwrap();
        assert_eq!(t.get("X-k1999"), Some("NotUnderstood"));
        assert_eq!(t.get("TargetPortalGroupTag"), Some("2"));
        assert_eq!(res.stat_sn, 100 + parts);
        // Anything but an empty request in the middle of a long response is an error.
        let mut l = Login::new(portal());
        let LoginStep::Continue(_) = l.on_pdu(&req(1, Some(3), &t_keys(2000)), &dir) else {
            panic!()
        };
        let step = l.on_pdu(&req(1, Some(3), "HeaderDigest=None|"), &dir);
        assert!(matches!(
            step,
            LoginStep::Fail(_, LoginStatus::INITIATOR_ERROR)
        ));
    }

    fn t_keys(n: usize) -> String {
        let mut t = String::from("InitiatorName=iqn.i|TargetName=iqn.t|");
        for i in 0..n {
            t.push_str(&format!("X-k{i}=v|"));
        }
        t
    }

    #[test]
    fn values_beyond_the_rfc_are_refused() {
        let dir = Dir(AuthPolicy::None);
        let long_name = format!("iqn.{}", "a".repeat(MAX_NAME_LEN));
        let cases = [
            format!("InitiatorName={long_name}|TargetName=iqn.t|"),
            "InitiatorName=iqn.i\nlogin complete|TargetName=iqn.t|".to_string(),
            "InitiatorName=iqn.i\u{1b}[31m|TargetName=iqn.t|".to_string(),
            "InitiatorName=iqn.i x|TargetName=iqn.t|".to_string(),
            format!(
                "InitiatorName=iqn.i|InitiatorAlias={}|TargetName=iqn.t|",
                "a".repeat(4000)
            ),
            format!(
                "InitiatorName=iqn.i|TargetName=iqn.t|CHAP_C=0x{}|",
                "ab".repeat(1025)
            ),
        ];
        for c in &cases {
            let step = Login::new(portal()).on_pdu(&req(1, Some(3), c), &dir);
            assert!(
                matches!(step, LoginStep::Fail(_, LoginStatus::INITIATOR_ERROR)),
                "{:?}: {step:?}",
                &c[..c.len().min(60)]
            );
        }
        let name = format!("iqn.{}", "a".repeat(MAX_NAME_LEN - 4));
        let ok = format!("InitiatorName={name}|TargetName=iqn.t|");
        let step = Login::new(portal()).on_pdu(&req(1, Some(3), &ok), &dir);
        assert!(matches!(step, LoginStep::Complete(..)), "{step:?}");
    }

    #[test]
    fn unknown_target_and_missing_names() {
        let dir = Dir(AuthPolicy::None);
        let s = Login::new(portal()).on_pdu(
            &req(1, Some(3), "InitiatorName=iqn.i|TargetName=iqn.x|"),
            &dir,
        );
        assert!(matches!(s, LoginStep::Fail(_, LoginStatus::NOT_FOUND)));
        let s = Login::new(portal()).on_pdu(&req(1, Some(3), "TargetName=iqn.t|"), &dir);
        assert!(matches!(
            s,
            LoginStep::Fail(_, LoginStatus::MISSING_PARAMETER)
        ));
        let s = Login::new(portal()).on_pdu(&req(1, Some(3), "InitiatorName=iqn.i|"), &dir);
        assert!(
            matches!(s, LoginStep::Fail(ref p, LoginStatus::MISSING_PARAMETER) if p.bhs.0[36] == 2 && p.bhs.0[37] == 7)
        );
        let s = Login::new(portal()).on_pdu(
            &req(1, Some(3), "InitiatorName=iqn.i|SessionType=Discovery|"),
            &dir,
        );
        assert!(matches!(s, LoginStep::Complete(..)));
        let s = Login::new(portal()).on_pdu(&req(1, Some(3), "garbage|"), &dir);
        assert!(matches!(
            s,
            LoginStep::Fail(_, LoginStatus::INITIATOR_ERROR)
        ));
    }

    #[test]
    fn wrong_phase_pdu_fails_login() {
        let dir = Dir(AuthPolicy::None);
        let mut bhs = Bhs::new(Opcode::ScsiCommand);
        bhs.set_itt(3);
        let s = Login::new(portal()).on_pdu(&Pdu::new(bhs), &dir);
        assert!(matches!(
            s,
            LoginStep::Fail(_, LoginStatus::INVALID_DURING_LOGIN)
        ));
        // T bit going backwards.
        let s = Login::new(portal()).on_pdu(
            &req(1, Some(0), "InitiatorName=iqn.i|TargetName=iqn.t|"),
            &dir,
        );
        assert!(matches!(
            s,
            LoginStep::Fail(_, LoginStatus::INITIATOR_ERROR)
        ));
    }

    fn chap_login(
        secrets: ChapSecrets,
        user: &str,
        secret: &str,
        mutual: Option<&[u8]>,
    ) -> LoginStep {
        let dir = Dir(AuthPolicy::Chap(secrets));
        let mut l = Login::new(portal());
        let LoginStep::Continue(r) = l.on_pdu(
            &req(
                0,
                None,
                "InitiatorName=iqn.i|TargetName=iqn.t|AuthMethod=CHAP,None|",
            ),
            &dir,
        ) else {
            panic!()
        };
        assert_eq!(text(&r).get("AuthMethod"), Some("CHAP"));
        let LoginStep::Continue(r) = l.on_pdu(&req(0, None, "CHAP_A=7,5|"), &dir) else {
            panic!()
        };
        let t = text(&r);
        let alg = ChapAlgorithm::choose(t.get("CHAP_A").unwrap()).unwrap();
        assert_eq!(alg, ChapAlgorithm::Sha256);
        let id: u8 = t.get("CHAP_I").unwrap().parse().unwrap();
        let c = chap::decode_binary(t.get("CHAP_C").unwrap()).unwrap();
        let resp = chap::encode_hex(&alg.response(id, secret.as_bytes(), &c));
        let mut msg = format!("CHAP_N={user}|CHAP_R={resp}|");
        if let Some(mc) = mutual {
            msg += &format!("CHAP_I=7|CHAP_C={}|", chap::encode_hex(mc));
        }
        l.on_pdu(&req(0, Some(1), &msg), &dir)
    }

    #[test]
    fn chap_one_way_and_mutual() {
        let s = ChapSecrets {
            user: "u".into(),
            secret: "s3cret-12byte".into(),
            mutual: None,
        };
        let step = chap_login(s.clone(), "u", "s3cret-12byte", None);
        let LoginStep::Continue(r) = step else {
            panic!("{step:?}")
        };
        assert_eq!(r.bhs.flags() & 0x83, 0x81, "transit to operational");
        assert!(matches!(
            chap_login(s.clone(), "u", "wrong", None),
            LoginStep::Fail(_, LoginStatus::AUTHENTICATION_FAILURE)
        ));
        assert!(matches!(
            chap_login(s.clone(), "other", "s3cret-12byte", None),
            LoginStep::Fail(..)
        ));
        // Mutual asked without a target secret.
        assert!(matches!(
            chap_login(s, "u", "s3cret-12byte", Some(b"0123456789abcdef")),
            LoginStep::Fail(..)
        ));
        let m = ChapSecrets {
            user: "u".into(),
            secret: "s".into(),
            mutual: Some(("tu".into(), "ts".into())),
        };
        let LoginStep::Continue(r) = chap_login(m.clone(), "u", "s", Some(b"0123456789abcdef"))
        else {
            panic!()
        };
        let t = text(&r);
        assert_eq!(t.get("CHAP_N"), Some("tu"));
        let want = ChapAlgorithm::Sha256.response(7, b"ts", b"0123456789abcdef");
        assert_eq!(chap::decode_binary(t.get("CHAP_R").unwrap()).unwrap(), want);
        // Target configured for mutual but the initiator did not ask.
        assert!(matches!(chap_login(m, "u", "s", None), LoginStep::Fail(..)));
    }

    #[test]
    fn chap_required_cannot_be_skipped() {
        let dir = Dir(AuthPolicy::Chap(ChapSecrets {
            user: "u".into(),
            secret: "s".into(),
            mutual: None,
        }));
        let s = Login::new(portal()).on_pdu(
            &req(1, Some(3), "InitiatorName=iqn.i|TargetName=iqn.t|"),
            &dir,
        );
        assert!(matches!(
            s,
            LoginStep::Fail(_, LoginStatus::AUTHENTICATION_FAILURE)
        ));
        let s = Login::new(portal()).on_pdu(
            &req(
                0,
                Some(1),
                "InitiatorName=iqn.i|TargetName=iqn.t|AuthMethod=None|",
            ),
            &dir,
        );
        assert!(matches!(
            s,
            LoginStep::Fail(_, LoginStatus::AUTHENTICATION_FAILURE)
        ));
    }

    #[test]
    fn continued_text_is_reassembled() {
        let dir = Dir(AuthPolicy::None);
        let mut l = Login::new(portal());
        let mut first = req(1, None, "InitiatorName=iqn.i|TargetNa");
        first.bhs.0[1] |= 0x40;
        let LoginStep::Continue(r) = l.on_pdu(&first, &dir) else {
            panic!()
        };
        assert!(r.data.is_empty());
        assert!(matches!(
            l.on_pdu(&req(1, Some(3), "me=iqn.t|"), &dir),
            LoginStep::Complete(..)
        ));
    }
}
