//! Authentication enforced at login against a real initiator (libiscsi): CHAP with the `tpg`
//! credential (one-way and mutual), per-initiator `acls`, and CHAP on discovery sessions.

mod common;

use std::process::{Command, Output};

use common::{free_port, require, Gateway, Scratch};

const TPG_TARGET: &str = "iqn.2026-11.org.rbdgw:chap";
const ACL_TARGET: &str = "iqn.2026-11.org.rbdgw:acls";
const ALLOWED: &str = "iqn.2026-11.org.rbdgw:allowed";
const OTHER: &str = "iqn.2026-11.org.rbdgw:other";

fn inq(url: &str, initiator: &str, target_secret: Option<(&str, &str)>) -> Output {
    let mut c = Command::new("iscsi-inq");
    c.args(["-i", initiator, url]);
    if let Some((u, p)) = target_secret {
        c.env("LIBISCSI_CHAP_TARGET_USERNAME", u)
            .env("LIBISCSI_CHAP_TARGET_PASSWORD", p);
    }
    c.output().expect("run iscsi-inq")
}

fn ok(o: &Output) -> bool {
    o.status.success() && String::from_utf8_lossy(&o.stdout).contains("Vendor:RBDGW")
}

#[test]
fn chap_acls_and_discovery_auth() {
    require("iscsi-inq", "libiscsi-bin");
    let dir = Scratch::new("auth");
    let addr = format!("127.0.0.1:{}", free_port());
    let config = serde_json::json!({
        "auth": [
            {"target": TPG_TARGET, "authentication": "tpg",
             "tpg": {"userid": "alice", "password": "alice-secret-1", "mutual": "enable",
                     "userid_mutual": "gateway", "password_mutual": "gateway-secret-1"},
             "discovery": {"auth": "enable", "userid": "disco", "password": "disco-secret-1"}},
            {"target": ACL_TARGET, "authentication": "acls",
             "acls": [{"initiator": ALLOWED, "userid": "bob", "password": "bob-secret-12"}],
             // lrbd set discovery auth from the first auth entry by name, which is this one.
             "discovery": {"auth": "enable", "userid": "disco", "password": "disco-secret-1"}}
        ],
        "targets": [
            {"target": TPG_TARGET, "hosts": [{"host": "gw1", "portal": "p1"}]},
            {"target": ACL_TARGET, "hosts": [{"host": "gw1", "portal": "p1"}]}
        ],
        "portals": [{"name": "p1", "addresses": [addr]}],
        "pools": [{"pool": "rbd", "gateways": [
            {"target": TPG_TARGET, "tpg": [{"image": "a", "backstore": "memory", "size": "8M"}]},
            {"target": ACL_TARGET, "tpg": [{"image": "b", "backstore": "memory", "size": "8M", "initiator": ALLOWED}]}]}]
    });
    let gw = Gateway::start(&dir.0, &config.to_string(), "gw1", addr.parse().unwrap());
    let mutual = Some(("gateway", "gateway-secret-1"));

    // tpg: the right credential with mutual CHAP logs in.
    let good = format!("iscsi://alice%alice-secret-1@{addr}/{TPG_TARGET}/0");
    assert!(
        ok(&inq(&good, OTHER, mutual)),
        "CHAP with mutual authentication"
    );
    // Wrong secret, no credential, or skipping the mutual half: refused.
    let bad = format!("iscsi://alice%wrong-secret@{addr}/{TPG_TARGET}/0");
    assert!(
        !ok(&inq(&bad, OTHER, mutual)),
        "a wrong CHAP secret must fail"
    );
    assert!(
        !ok(&inq(&format!("iscsi://{addr}/{TPG_TARGET}/0"), OTHER, None)),
        "no CHAP must fail"
    );
    assert!(
        !ok(&inq(&good, OTHER, None)),
        "the target requires mutual CHAP"
    );
    // The initiator checks the target's answer: a wrong target secret fails on its side.
    assert!(
        !ok(&inq(&good, OTHER, Some(("gateway", "not-the-secret")))),
        "mutual CHAP verifies the target"
    );

    // acls: only the named initiator, with its own credential.
    let bob = format!("iscsi://bob%bob-secret-12@{addr}/{ACL_TARGET}/0");
    assert!(ok(&inq(&bob, ALLOWED, None)), "the ACL's initiator logs in");
    assert!(
        !ok(&inq(&bob, OTHER, None)),
        "an initiator without an ACL is refused"
    );

    // Discovery sessions need the discovery credential.
    let ls = |url: &str| {
        Command::new("iscsi-ls")
            .args(["-i", ALLOWED, url])
            .output()
            .expect("iscsi-ls")
    };
    let listed = ls(&format!("iscsi://disco%disco-secret-1@{addr}"));
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success() && text.contains(TPG_TARGET),
        "discovery with CHAP: {text}"
    );
    assert!(
        text.contains(ACL_TARGET),
        "the ACL target is discoverable by its initiator: {text}"
    );
    let refused = ls(&format!("iscsi://{addr}"));
    assert!(
        !String::from_utf8_lossy(&refused.stdout).contains(TPG_TARGET),
        "discovery without CHAP must fail"
    );
    assert!(!gw.log_text().contains("panicked"));
}
