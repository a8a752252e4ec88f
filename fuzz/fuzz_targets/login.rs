//! The login state machine fed arbitrary Login Request PDUs: never a panic, and it ends in a
//! decision (complete or fail) or asks for more.
#![no_main]

use bytes::Bytes;
use iscsi::login::{
    AuthPolicy, ChapSecrets, Directory, Grant, Login, LoginStatus, LoginStep, PortalInfo,
    SessionType,
};
use iscsi::params::TargetLimits;
use iscsi::pdu::{Bhs, Pdu};
use libfuzzer_sys::fuzz_target;

struct Dir(bool);

impl Directory for Dir {
    fn grant(&self, _: SessionType, _: Option<&str>, _: &str) -> Result<Grant, LoginStatus> {
        let auth = if self.0 {
            AuthPolicy::Chap(ChapSecrets {
                user: "u".into(),
                secret: "secret".into(),
                mutual: Some(("t".into(), "ts".into())),
            })
        } else {
            AuthPolicy::None
        };
        Ok(Grant {
            auth,
            limits: TargetLimits::default(),
            alias: None,
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let dir = Dir(mode & 1 != 0);
    let mut login = Login::new(PortalInfo {
        tpg_tag: 1,
        tsih: 1,
        initial_stat_sn: 1,
        cmd_window: 8,
    });
    // Each PDU: 48 header bytes, 1 length byte, then that much text.
    while rest.len() >= 49 {
        let mut bhs = Bhs([0; 48]);
        bhs.0.copy_from_slice(&rest[..48]);
        let n = (rest[48] as usize).min(rest.len() - 49);
        let pdu = Pdu::with_data(bhs, Bytes::copy_from_slice(&rest[49..49 + n]));
        rest = &rest[49 + n..];
        match login.on_pdu(&pdu, &dir) {
            LoginStep::Continue(_) => continue,
            LoginStep::Complete(..) | LoginStep::Fail(..) => break,
        }
    }
});
