//! `rbdgw plan`: what a host would serve, in the spirit of `lrbd -l` and of the log lrbd
//! printed when applying (the seed's step 6).

use std::fmt::Write;

use crate::config::{BackstoreSpec, Config};

pub fn render(c: &Config, host: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "config: {}", c.source_name);
    let _ = writeln!(s, "host:   {host}");
    match c.discovery.get(host) {
        Some(d) => {
            let _ = writeln!(
                s,
                "discovery: CHAP user {}{}",
                d.user,
                if d.mutual.is_some() { " (mutual)" } else { "" }
            );
        }
        None => {
            let _ = writeln!(s, "discovery: no authentication");
        }
    }
    for t in &c.targets {
        let serves = t.tpgs.iter().any(|g| g.host == host);
        let _ = writeln!(
            s,
            "\ntarget {}{}",
            t.iqn,
            if serves {
                ""
            } else {
                "  (not served by this host)"
            }
        );
        let auth = &t.auth;
        let mut a = auth.mode.name().to_string();
        if let Some(c) = &auth.tpg_chap {
            let _ = write!(
                a,
                ", CHAP user {}{}",
                c.user,
                if c.mutual.is_some() { " (mutual)" } else { "" }
            );
        }
        if auth.mode.maps_initiators() {
            for acl in &auth.acls {
                let _ = write!(
                    a,
                    "; initiator {}{}",
                    acl.initiator,
                    acl.chap
                        .as_ref()
                        .map_or(String::new(), |c| format!(" (CHAP user {})", c.user))
                );
            }
        }
        let _ = writeln!(s, "  auth: {a}");
        let _ = writeln!(
            s,
            "  cmdsn depth {}, login timeout {}s{}",
            t.attributes.cmdsn_depth,
            t.attributes.login_timeout,
            if t.attributes.write_protect {
                ", write protected"
            } else {
                ""
            }
        );
        for g in &t.tpgs {
            let addrs: Vec<String> = g.addresses.iter().map(|a| a.to_string()).collect();
            let state = if g.host == host {
                "enabled here"
            } else {
                "disabled here"
            };
            let _ = writeln!(
                s,
                "  tpg {}: host {}, portal {} [{}]  ({state})",
                g.tag,
                g.host,
                if g.portal_name.is_empty() {
                    "-"
                } else {
                    &g.portal_name
                },
                addrs.join(", ")
            );
        }
        for l in &t.luns {
            let store = match &l.backstore {
                BackstoreSpec::Rbd {
                    pool,
                    namespace,
                    image,
                    size,
                } => format!(
                    "rbd {pool}/{}{image}{}",
                    namespace
                        .as_ref()
                        .map_or(String::new(), |n| format!("{n}/")),
                    size.map_or(String::new(), |s| format!(
                        " (created with {s} bytes if missing)"
                    ))
                ),
                BackstoreSpec::File { path, size } => format!(
                    "file {path}{}",
                    size.map_or(String::new(), |z| format!(
                        " (created with {z} bytes if missing)"
                    ))
                ),
                BackstoreSpec::Memory { size } => format!("memory {size} bytes"),
            };
            let naa: String = scsi::inquiry::naa_designator(&l.serial)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let owner_tag = t
                .tpgs
                .iter()
                .find(|g| g.host == l.owner)
                .map_or(0, |g| g.tag);
            let here = if !serves || l.served_by(host) {
                String::new()
            } else {
                format!("  (served by {} only)", l.hosts.join(", "))
            };
            let _ = writeln!(s, "  lun {}: {store}{here}", l.lun);
            let _ = writeln!(
                s,
                "    serial {}  wwid naa.{naa}  block size {}",
                l.serial, l.attributes.block_size
            );
            let _ = writeln!(
                s,
                "    owner {} (tpg {owner_tag} active/optimized)",
                l.owner
            );
            if l.attributes.vendor.is_some() || l.attributes.product.is_some() {
                let _ = writeln!(
                    s,
                    "    inquiry vendor {:?} product {:?}",
                    l.attributes.vendor.as_deref().unwrap_or("RBDGW"),
                    l.attributes
                        .product
                        .as_deref()
                        .unwrap_or("(backstore and image)")
                );
            }
            if t.auth.mode.maps_initiators() {
                let _ = writeln!(s, "    mapped to {}", l.initiators.join(", "));
            }
        }
    }
    if !c.warnings.is_empty() {
        let _ = writeln!(s, "\nnotes:");
        for w in &c.warnings {
            let _ = writeln!(s, "  {w}");
        }
    }
    s
}

/// What replacing config `old` with `new` changes on each host, as a unified diff of the two
/// plans (`render`); hosts of either config, in order, with an empty diff for a host whose
/// plan stays the same. The source names are left out: only what is served counts.
pub fn diff(old: &Config, new: &Config) -> Vec<(String, String)> {
    let mut hosts = old.hosts();
    for h in new.hosts() {
        if !hosts.contains(&h) {
            hosts.push(h);
        }
    }
    let plan = |c: &Config, h: &str| -> String {
        render(c, h)
            .lines()
            .filter(|l| !l.starts_with("config: "))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    hosts
        .into_iter()
        .map(|h| {
            let (a, b) = (plan(old, &h), plan(new, &h));
            let d = if a == b {
                String::new()
            } else {
                similar::TextDiff::from_lines(&a, &b)
                    .unified_diff()
                    .context_radius(2)
                    .header(&format!("{h} (stored)"), &format!("{h} (new)"))
                    .to_string()
            };
            (h, d)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = r#"{"auth": [{"target": "iqn.2026-11.org.rbdgw:t", "authentication": "none"}],
      "targets": [{"target": "iqn.2026-11.org.rbdgw:t",
                   "hosts": [{"host": "gw1", "portal": "p1"}, {"host": "gw2", "portal": "p2"}]}],
      "portals": [{"name": "p1", "addresses": ["127.0.0.1:3260"]},
                  {"name": "p2", "addresses": ["127.0.0.2:3260"]}],
      "pools": [{"pool": "rbd", "gateways": [{"target": "iqn.2026-11.org.rbdgw:t", "tpg": [
        {"image": "a", "lun": 0}]}]}]}"#;

    #[test]
    fn diff_names_each_host_and_what_changes_there() {
        let old = Config::parse("old", ONE).unwrap();
        assert!(diff(&old, &Config::parse("same, other name", ONE).unwrap())
            .iter()
            .all(|(_, d)| d.is_empty()));
        let two = ONE.replace(
            r#"{"image": "a", "lun": 0}"#,
            r#"{"image": "a", "lun": 0}, {"image": "b", "lun": 1}"#,
        );
        let d = diff(&old, &Config::parse("new", &two).unwrap());
        assert_eq!(
            d.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>(),
            ["gw1", "gw2"]
        );
        for (h, text) in &d {
            assert!(text.contains(&format!("--- {h} (stored)")), "{text}");
            assert!(text.contains("+  lun 1: rbd rbd/b"), "{text}");
            assert!(!text.contains("-  lun 0"), "{text}");
        }
    }
}
