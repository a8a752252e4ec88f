//! `rbdgw plan --lrbd-commands`: the commands lrbd would have run on a host for a config, as
//! its log showed them (the seed's step 6), for an administrator to compare before switching.

use std::collections::BTreeSet;

use crate::config::{AuthMode, BackstoreSpec, Chap, Config, Target};

/// What lrbd would have run on `host` for this config, in the order and form of its log (the
/// seed's step 6), so an administrator can compare it with lrbd's own log before switching.
/// The settings lrbd wrote to configfs directly (serials, attributes, initiator settings) are
/// shown as the targetcli commands that set them; a LUN lrbd left to targetcli to number
/// carries the number it gets as a comment.
pub fn commands(c: &Config, host: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    // lrbd's order of targets: the host's own first (each put at the front), then the others.
    let mut targets: Vec<&Target> = Vec::new();
    for t in c
        .targets
        .iter()
        .filter(|t| t.tpgs_of(host).next().is_some())
    {
        if t.single_host.is_some() {
            targets.insert(0, t);
        } else {
            targets.push(t);
        }
    }

    let mut maps: Vec<String> = Vec::new();
    // lrbd ran its backstore commands sorted.
    let mut stores: BTreeSet<String> = BTreeSet::new();
    for t in &targets {
        for l in luns_of(t, host) {
            let dev = match &l.backstore {
                BackstoreSpec::Rbd { pool, image, .. } => {
                    let map = format!("rbd -p {pool} --name client.admin map {image}");
                    if !maps.contains(&map) {
                        maps.push(map);
                    }
                    format!("/dev/rbd/{pool}/{image}")
                }
                BackstoreSpec::File { path, .. } => path.clone(),
                BackstoreSpec::Memory { .. } => String::new(),
            };
            stores.insert(format!(
                "targetcli /backstores/{} create name={} dev={dev}",
                lio_kind(&l.backstore),
                l.backstore_name
            ));
        }
    }
    out.extend(maps);
    out.extend(stores);
    for t in &targets {
        for l in luns_of(t, host) {
            let store = store_path(l);
            out.push(format!(
                "targetcli {store} set wwn vpd_unit_serial={}",
                l.serial
            ));
            let a = &l.attributes;
            let mut attrs = Vec::new();
            if a.block_size != 512 {
                attrs.push(format!("block_size={}", a.block_size));
            }
            if a.write_cache {
                attrs.push("emulate_write_cache=1".to_string());
            }
            if a.thin_provisioning {
                attrs.push("emulate_tpu=1 emulate_tpws=1".to_string());
            }
            for (name, v) in [
                ("max_unmap_lba_count", a.max_unmap_lba_count),
                ("max_unmap_block_desc_count", a.max_unmap_block_desc_count),
                ("max_write_same_len", a.max_write_same_len),
                ("unmap_granularity", a.unmap_granularity),
                ("unmap_granularity_alignment", a.unmap_granularity_alignment),
            ] {
                if let Some(n) = v {
                    attrs.push(format!("{name}={n}"));
                }
            }
            if !attrs.is_empty() {
                out.push(format!(
                    "targetcli {store} set attribute {}",
                    attrs.join(" ")
                ));
            }
        }
    }
    for t in &targets {
        out.push(format!("targetcli /iscsi create {}", t.iqn));
    }
    for t in &targets {
        for g in t.tpgs.iter().filter(|g| g.tag != 1) {
            out.push(format!("targetcli /iscsi/{} create {}", t.iqn, g.tag));
        }
    }
    let tpg = |t: &Target, tag: u16| format!("/iscsi/{}/tpg{tag}", t.iqn);
    for t in &targets {
        for g in &t.tpgs {
            out.push(format!(
                "targetcli {} set attribute tpg_enabled_sendtargets=0",
                tpg(t, g.tag)
            ));
            out.push(format!("targetcli {} disable", tpg(t, g.tag)));
        }
    }
    for t in &targets {
        let a = &t.attributes;
        let d = crate::config::TargetAttributes::default();
        let mut attrs = Vec::new();
        if a.cmdsn_depth != d.cmdsn_depth {
            attrs.push(format!("default_cmdsn_depth={}", a.cmdsn_depth));
        }
        if a.login_timeout != d.login_timeout {
            attrs.push(format!("login_timeout={}", a.login_timeout));
        }
        if a.write_protect {
            attrs.push("prod_mode_write_protect=1".to_string());
        }
        if !attrs.is_empty() {
            for g in &t.tpgs {
                out.push(format!(
                    "targetcli {} set attribute {}",
                    tpg(t, g.tag),
                    attrs.join(" ")
                ));
            }
        }
    }
    // LUNs, in the order of their commands (lrbd put those with a `lun` first).
    let mut free = Vec::new();
    for t in &targets {
        for g in &t.tpgs {
            for l in luns_of(t, host) {
                let cmd = format!("targetcli {}/luns create {}", tpg(t, g.tag), store_path(l));
                free.push((!l.pinned, cmd, l.lun));
            }
        }
    }
    free.sort();
    out.extend(free.into_iter().map(|(free, cmd, lun)| {
        if free {
            format!("{cmd}  # LUN {lun}")
        } else {
            format!("{cmd} {lun}")
        }
    }));
    let mut portals: Vec<String> = Vec::new();
    for t in &targets {
        for g in &t.tpgs {
            for a in &g.addresses {
                let addr = if a.ip().is_unspecified() {
                    String::new()
                } else if a.port() == 3260 {
                    format!(" {}", a.ip())
                } else {
                    format!(" {} {}", a.ip(), a.port())
                };
                portals.push(format!("targetcli {}/portals create{addr}", tpg(t, g.tag)));
            }
        }
    }
    portals.sort();
    portals.dedup();
    out.extend(portals);
    let initiators = |t: &Target| -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for l in luns_of(t, host) {
            for i in &l.initiators {
                if !v.contains(i) {
                    v.push(i.clone());
                }
            }
        }
        v
    };
    let mut acls = Vec::new();
    for t in targets.iter().filter(|t| t.auth.mode.maps_initiators()) {
        for g in &t.tpgs {
            for i in initiators(t) {
                acls.push(format!("targetcli {}/acls create {i}", tpg(t, g.tag)));
            }
        }
    }
    acls.sort();
    out.extend(acls);
    for t in targets.iter().filter(|t| t.auth.mode.maps_initiators()) {
        for g in &t.tpgs {
            for i in initiators(t) {
                let Some(acl) = t.auth.acl(&i) else { continue };
                let settings: Vec<String> = acl
                    .attribs
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                if !settings.is_empty() {
                    out.push(format!(
                        "targetcli {}/acls/{i} set attribute {}",
                        tpg(t, g.tag),
                        settings.join(" ")
                    ));
                }
                let params: Vec<String> =
                    acl.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                if !params.is_empty() {
                    out.push(format!(
                        "targetcli {}/acls/{i} set parameter {}",
                        tpg(t, g.tag),
                        params.join(" ")
                    ));
                }
            }
        }
    }
    for t in targets.iter().filter(|t| t.auth.mode.maps_initiators()) {
        for g in &t.tpgs {
            for l in luns_of(t, host) {
                for i in &l.initiators {
                    out.push(format!(
                        "targetcli {}/acls/{i} create {} {}",
                        tpg(t, g.tag),
                        l.lun,
                        l.lun
                    ));
                }
            }
        }
    }
    for t in &targets {
        let a = &t.auth;
        for g in &t.tpgs {
            let p = tpg(t, g.tag);
            match a.mode {
                AuthMode::Unconfigured => {}
                AuthMode::None => out.push(format!("targetcli {p} set attribute authentication=0 demo_mode_write_protect=0 generate_node_acls=1")),
                AuthMode::Tpg => {
                    if let Some(c) = &a.tpg_chap {
                        out.push(format!("targetcli {p} set auth {}", chap_args(c, "userid_mutual", "password_mutual")));
                    }
                    out.push(format!("targetcli {p} set attribute authentication=1 demo_mode_write_protect=0 generate_node_acls=1"));
                }
                AuthMode::Identified => out.push(format!("targetcli {p} set attribute authentication=0 demo_mode_write_protect=0 generate_node_acls=0")),
                AuthMode::TpgIdentified | AuthMode::Acls => {
                    for i in initiators(t) {
                        let c = if a.mode == AuthMode::Acls {
                            a.acl(&i).and_then(|x| x.chap.as_ref())
                        } else {
                            a.tpg_chap.as_ref()
                        };
                        if let Some(c) = c {
                            out.push(format!("targetcli {p}/acls/{i} set auth {}", chap_args(c, "userid_mutual", "password_mutual")));
                        }
                    }
                    out.push(format!("targetcli {p} set attribute authentication=1 demo_mode_write_protect=0 generate_node_acls=0"));
                }
            }
        }
    }
    match c.discovery.get(host) {
        Some(d) => out.push(format!(
            "targetcli /iscsi set discovery_auth enable=1 {}",
            chap_args(d, "mutual_userid", "mutual_password")
        )),
        None => out.push("targetcli /iscsi set discovery_auth enable=0".to_string()),
    }
    for t in &targets {
        for g in t.tpgs.iter().filter(|g| g.host == host) {
            out.push(format!(
                "targetcli {} set attribute tpg_enabled_sendtargets=1",
                tpg(t, g.tag)
            ));
            out.push(format!("targetcli {} enable", tpg(t, g.tag)));
        }
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

fn luns_of<'a>(t: &'a Target, host: &str) -> Vec<&'a crate::config::Lun> {
    t.luns.iter().filter(|l| l.served_by(host)).collect()
}

/// LIO's backstore type for the one rbdgw uses.
fn lio_kind(b: &BackstoreSpec) -> &'static str {
    match b {
        BackstoreSpec::Rbd { .. } => "rbd",
        BackstoreSpec::File { .. } => "fileio",
        BackstoreSpec::Memory { .. } => "ramdisk",
    }
}

fn store_path(l: &crate::config::Lun) -> String {
    format!(
        "/backstores/{}/{}",
        lio_kind(&l.backstore),
        l.backstore_name
    )
}

fn chap_args(c: &Chap, mu: &str, mp: &str) -> String {
    let mut s = format!("userid={} password={}", c.user, c.secret);
    if let Some((u, p)) = &c.mutual {
        s.push_str(&format!(" {mu}={u} {mp}={p}"));
    }
    s
}
