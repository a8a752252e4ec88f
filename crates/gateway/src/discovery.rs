//! SendTargets (RFC 7143 §11.10.2, Appendix C): on any gateway, each target the initiator may
//! access is listed with the portals of every gateway, each with its own TPG tag — lrbd's
//! `tpg_enabled_sendtargets`, the detail the seed design hinges on.

use std::net::SocketAddr;

use iscsi::text::TextPairs;

use crate::config::Target;
use crate::target::Gateway;

/// `ip:port,tag`, IPv6 in brackets; a wildcard address is replaced by the address the
/// initiator reached us on.
fn target_address(addr: SocketAddr, tag: u16, local: SocketAddr) -> String {
    let shown = if addr.ip().is_unspecified() {
        SocketAddr::new(local.ip(), addr.port())
    } else {
        addr
    };
    format!("{shown},{tag}")
}

fn describe(out: &mut TextPairs, t: &Target, local: SocketAddr) {
    out.push("TargetName", t.iqn.clone());
    for g in &t.tpgs {
        for a in &g.addresses {
            out.push("TargetAddress", target_address(*a, g.tag, local));
        }
    }
}

/// Answers `SendTargets=<request>`. `session_target` is the target of a normal session (which
/// may only learn about itself, RFC 7143 Appendix C).
pub fn send_targets(
    gw: &Gateway,
    initiator: &str,
    request: &str,
    session_target: Option<&str>,
    local: SocketAddr,
) -> TextPairs {
    let mut out = TextPairs::new();
    let visible = gw.discoverable(initiator);
    for t in &visible {
        let wanted = match (session_target, request) {
            (Some(own), _) => {
                t.iqn.eq_ignore_ascii_case(own)
                    && (request.is_empty() || request == "All" || request.eq_ignore_ascii_case(own))
            }
            (None, "All") => true,
            (None, name) => t.iqn.eq_ignore_ascii_case(name),
        };
        if wanted {
            describe(&mut out, t, local);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_format() {
        let local: SocketAddr = "127.0.0.1:3260".parse().unwrap();
        assert_eq!(
            target_address("192.168.0.27:3260".parse().unwrap(), 1, local),
            "192.168.0.27:3260,1"
        );
        assert_eq!(
            target_address("[::1]:3261".parse().unwrap(), 2, local),
            "[::1]:3261,2"
        );
        assert_eq!(
            target_address("0.0.0.0:3260".parse().unwrap(), 1, local),
            "127.0.0.1:3260,1"
        );
    }
}
