//! From the lrbd document to the [`Config`] model: TPG tags, LUN numbers, serials, auth, and
//! every check, each error naming its JSON path.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use serde_json::Value;

use super::lrbd::{AclEntry, Document, ImageEntry};
use super::*;

struct Ctx<'a> {
    source: &'a str,
    warnings: Vec<String>,
}

impl Ctx<'_> {
    fn err(&self, path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            source_name: self.source.into(),
            path: path.into(),
            message: message.into(),
        }
    }

    fn warn(&mut self, path: &str, msg: impl std::fmt::Display) {
        self.warnings.push(format!("{path}: {msg}"));
    }
}

/// Parses a size: bytes, or a number with K, M, G, T (powers of 1024), optional trailing B.
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    let (num, mult) = match t.char_indices().last()? {
        (i, 'K' | 'k') => (&t[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&t[..i], 1 << 20),
        (i, 'G' | 'g') => (&t[..i], 1 << 30),
        (i, 'T' | 't') => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()?
        .checked_mul(mult)
        .filter(|n| *n > 0)
}

/// Parses a portal address: `ip`, `ip port` (lrbd's form), `ip:port`, `[v6]:port` or a bare
/// IPv6 address. The port defaults to 3260 (RFC 7143 §13.x well-known port).
pub fn parse_portal_address(s: &str) -> Option<SocketAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 3260));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa);
    }
    if let Some((ip, port)) = s.split_once(' ') {
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        return Some(SocketAddr::new(ip.parse().ok()?, port.trim().parse().ok()?));
    }
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    Some(SocketAddr::new(inner.parse().ok()?, 3260))
}

fn enable_flag(ctx: &Ctx, path: &str, v: &Option<String>) -> Result<bool, ConfigError> {
    match v.as_deref() {
        None | Some("disable") => Ok(false),
        Some("enable") => Ok(true),
        Some(o) => Err(ctx.err(
            path,
            format!("expected \"enable\" or \"disable\", found {o:?}"),
        )),
    }
}

fn chap(
    ctx: &mut Ctx,
    path: &str,
    user: &Option<String>,
    pass: &Option<String>,
    mutual: &Option<String>,
    mu: &Option<String>,
    mp: &Option<String>,
) -> Result<Chap, ConfigError> {
    let (Some(user), Some(secret)) = (user, pass) else {
        return Err(ctx.err(path, "CHAP needs both \"userid\" and \"password\""));
    };
    let mutual = if enable_flag(ctx, &format!("{path}.mutual"), mutual)? {
        match (mu, mp) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            _ => {
                return Err(ctx.err(
                    path,
                    "mutual CHAP needs \"userid_mutual\" and \"password_mutual\"",
                ))
            }
        }
    } else {
        None
    };
    check_secret(
        ctx,
        &format!("{path}.userid"),
        &format!("{path}.password"),
        user,
        secret,
    )?;
    if let Some((u, p)) = &mutual {
        check_secret(
            ctx,
            &format!("{path}.userid_mutual"),
            &format!("{path}.password_mutual"),
            u,
            p,
        )?;
        // RFC 7143 §12.1.3: one secret for both directions lets an attacker answer the
        // target's challenge with the target's own response (a reflection attack).
        if p == secret {
            return Err(ctx.err(
                format!("{path}.password_mutual"),
                "the mutual secret must differ from the initiator's (RFC 7143 §12.1.3)",
            ));
        }
    }
    Ok(Chap {
        user: user.clone(),
        secret: secret.clone(),
        mutual,
    })
}

/// A CHAP name and secret: neither empty (an empty secret authenticates nobody, RFC 7143
/// §12.1.3 wants secrets hard to guess); a secret outside 12 to 16 characters is allowed
/// but Microsoft's initiator refuses it, which an administrator should hear of now.
fn check_secret(
    ctx: &mut Ctx,
    user_path: &str,
    path: &str,
    user: &str,
    secret: &str,
) -> Result<(), ConfigError> {
    if user.is_empty() {
        return Err(ctx.err(user_path, "the CHAP user name is empty"));
    }
    if secret.is_empty() {
        return Err(ctx.err(path, "the CHAP secret is empty"));
    }
    let n = secret.chars().count();
    if !(12..=16).contains(&n) {
        ctx.warn(
            path,
            format!("a CHAP secret of {n} characters: Windows initiators accept only 12 to 16"),
        );
    }
    Ok(())
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The login keys an ACL's `param_*` may set, by their RFC 7143 names.
const PARAMS: &[&str] = &[
    "MaxBurstLength",
    "FirstBurstLength",
    "ImmediateData",
    "InitialR2T",
    "MaxRecvDataSegmentLength",
    "MaxXmitDataSegmentLength",
    "MaxOutstandingR2T",
    "HeaderDigest",
    "DataDigest",
    "DefaultTime2Wait",
    "DefaultTime2Retain",
    "MaxConnections",
    "ErrorRecoveryLevel",
    "DataPDUInOrder",
    "DataSequenceInOrder",
    "OFMarker",
    "IFMarker",
];

fn acl(ctx: &mut Ctx, path: &str, e: &AclEntry, with_chap: bool) -> Result<Acl, ConfigError> {
    let initiator = e
        .initiator
        .clone()
        .or_else(|| e.iqn.clone())
        .ok_or_else(|| ctx.err(path, "expected \"initiator\" (or \"iqn\")"))?;
    let chap = if with_chap {
        Some(chap(
            ctx,
            path,
            &e.userid,
            &e.password,
            &e.mutual,
            &e.userid_mutual,
            &e.password_mutual,
        )?)
    } else {
        None
    };
    let (mut params, mut attribs) = (BTreeMap::new(), BTreeMap::new());
    for (k, v) in &e.extra {
        if let Some(p) = k.strip_prefix("param_") {
            if !PARAMS.contains(&p) {
                return Err(ctx.err(
                    format!("{path}.{k}"),
                    format!(
                        "unknown login parameter {p:?}; expected one of {}",
                        PARAMS.join(", ")
                    ),
                ));
            }
            params.insert(p.to_string(), scalar(v));
        } else if let Some(a) = k.strip_prefix("attrib_") {
            let kp = format!("{path}.{k}");
            match a {
                // Honoured: the NOP-In timers of the initiator's sessions.
                "nopin_timeout" | "nopin_response_timeout" => {
                    let secs = scalar(v);
                    if !matches!(secs.parse::<u32>(), Ok(0..=3600)) {
                        return Err(ctx.err(kp, format!("expected seconds (0-3600), found {v}")));
                    }
                    if a == "nopin_response_timeout" && secs == "0" {
                        return Err(ctx.err(kp, "a ping needs at least 1 second to be answered"));
                    }
                }
                "dataout_timeout"
                | "dataout_timeout_retries"
                | "default_erl"
                | "random_datain_pdu_offsets"
                | "random_datain_seq_offsets"
                | "random_r2t_offsets" => ctx.warn(&kp, "LIO setting with no effect on rbdgw"),
                _ => {
                    return Err(ctx.err(
                        kp,
                        format!("unknown initiator attribute {a:?}; expected nopin_timeout, nopin_response_timeout or another of LIO's node ACL attributes"),
                    ))
                }
            }
            attribs.insert(a.to_string(), scalar(v));
        } else {
            return Err(ctx.err(format!("{path}.{k}"), "unknown key; expected initiator, userid, password, mutual, userid_mutual, password_mutual, attrib_* or param_*"));
        }
    }
    Ok(Acl {
        initiator,
        chap,
        params,
        attribs,
    })
}

pub(super) fn resolve(source: &str, doc: &Document) -> Result<Config, ConfigError> {
    let mut ctx = Ctx {
        source,
        warnings: Vec::new(),
    };

    // Portals by name.
    let mut portals: BTreeMap<&str, Vec<SocketAddr>> = BTreeMap::new();
    for (i, p) in doc.portals.iter().enumerate() {
        let path = format!("portals[{i}]");
        if portals.contains_key(p.name.as_str()) {
            return Err(ctx.err(
                format!("{path}.name"),
                format!("portal {:?} is defined twice", p.name),
            ));
        }
        let mut addrs = Vec::new();
        for (j, a) in p.addresses.iter().enumerate() {
            let sa = parse_portal_address(a).ok_or_else(|| {
                ctx.err(format!("{path}.addresses[{j}]"), format!("expected an IP address, \"ip port\" or \"ip:port\" (IPv6 in brackets), found {a:?}"))
            })?;
            addrs.push(sa);
        }
        if addrs.is_empty() {
            return Err(ctx.err(
                format!("{path}.addresses"),
                "a portal needs at least one address",
            ));
        }
        portals.insert(&p.name, addrs);
    }

    // Targets and their TPGs.
    let mut targets: Vec<Target> = Vec::new();
    let mut wwn_original: BTreeSet<String> = BTreeSet::new();
    for (i, t) in doc.targets.iter().enumerate() {
        let path = format!("targets[{i}]");
        if !valid_iscsi_name(&t.target) {
            return Err(ctx.err(format!("{path}.target"), format!("expected an iSCSI name (iqn.YYYY-MM.reverse.domain[:id] or eui.<16 hex>), found {:?}", t.target)));
        }
        let mut attributes = TargetAttributes::default();
        for (k, v) in &t.extra {
            let kp = format!("{path}.{k}");
            let Some(attr) = k.strip_prefix("tpg_") else {
                return Err(ctx.err(
                    kp,
                    "unknown key; expected target, hosts, host, wwn_generate or tpg_*",
                ));
            };
            let num = || {
                scalar(v)
                    .parse::<u32>()
                    .map_err(|_| ctx.err(&kp, format!("expected a number, found {v}")))
            };
            match attr {
                "default_cmdsn_depth" => attributes.cmdsn_depth = num()?.clamp(1, 65535),
                "login_timeout" => attributes.login_timeout = num()?.max(1),
                "prod_mode_write_protect" | "demo_mode_write_protect" => {
                    attributes.write_protect = num()? != 0
                }
                "default_erl" => {
                    if num()? > 0 {
                        ctx.warn(
                            &kp,
                            "error recovery level above 0 is not implemented; sessions negotiate 0",
                        );
                    }
                }
                "t10_pi" => {
                    if num()? != 0 {
                        return Err(
                            ctx.err(kp, "T10 protection information is not supported; use 0")
                        );
                    }
                }
                "netif_timeout"
                | "cache_dynamic_acls"
                | "generate_node_acls"
                | "authentication"
                | "demo_mode_discovery" => {
                    ctx.warn(&kp, "LIO setting with no effect on rbdgw");
                }
                _ => return Err(ctx.err(kp, format!("unknown TPG attribute {attr:?}"))),
            }
        }
        match t.wwn_generate.as_deref() {
            None => {}
            Some("original") => {
                wwn_original.insert(t.target.clone());
            }
            Some(o) => {
                return Err(ctx.err(
                    format!("{path}.wwn_generate"),
                    format!("expected \"original\", found {o:?}"),
                ))
            }
        }
        let entry = targets.iter().position(|x| x.iqn == t.target);
        let idx = match entry {
            Some(i) => i,
            None => {
                targets.push(Target {
                    iqn: t.target.clone(),
                    tpgs: Vec::new(),
                    luns: Vec::new(),
                    auth: TargetAuth::default(),
                    attributes: attributes.clone(),
                });
                targets.len() - 1
            }
        };
        let target = &mut targets[idx];
        target.attributes = attributes;
        match (&t.hosts, &t.host) {
            (Some(hosts), None) => {
                // TPG n is the n-th distinct portal in the hosts order (lrbd).
                let mut order: Vec<&str> = Vec::new();
                for (j, hp) in hosts.iter().enumerate() {
                    let addrs = portals.get(hp.portal.as_str()).ok_or_else(|| {
                        ctx.err(
                            format!("{path}.hosts[{j}].portal"),
                            format!("no portal named {:?} in \"portals\"", hp.portal),
                        )
                    })?;
                    if !order.contains(&hp.portal.as_str()) {
                        order.push(&hp.portal);
                    }
                    let tag = order.iter().position(|p| *p == hp.portal).unwrap_or(0) as u16 + 1;
                    target.tpgs.push(Tpg {
                        tag,
                        host: hp.host.clone(),
                        portal_name: hp.portal.clone(),
                        addresses: addrs.clone(),
                    });
                }
                if hosts.is_empty() {
                    return Err(
                        ctx.err(format!("{path}.hosts"), "a target needs at least one host")
                    );
                }
            }
            (None, Some(host)) => {
                target.tpgs.push(Tpg {
                    tag: 1,
                    host: host.clone(),
                    portal_name: String::new(),
                    addresses: Vec::new(),
                });
            }
            _ => {
                return Err(ctx.err(
                    path,
                    "expected either \"hosts\": [{host, portal}] or \"host\"",
                ))
            }
        }
    }

    // Auth per target.
    for (i, a) in doc.auth.iter().enumerate() {
        let path = format!("auth[{i}]");
        let iqn = match (&a.target, &a.host) {
            (Some(t), _) => t.clone(),
            (None, Some(h)) => targets
                .iter()
                .find(|t| t.tpgs.iter().any(|g| &g.host == h))
                .map(|t| t.iqn.clone())
                .ok_or_else(|| {
                    ctx.err(
                        format!("{path}.host"),
                        format!("no target is served by host {h:?}"),
                    )
                })?,
            (None, None) => return Err(ctx.err(&path, "expected \"target\" or \"host\"")),
        };
        let Some(ti) = targets.iter().position(|t| t.iqn == iqn) else {
            return Err(ctx.err(
                format!("{path}.target"),
                format!("no target {iqn:?} in \"targets\""),
            ));
        };
        let mode = match a.authentication.as_str() {
            "none" => AuthMode::None,
            "tpg" => AuthMode::Tpg,
            "tpg+identified" => AuthMode::TpgIdentified,
            "identified" => AuthMode::Identified,
            "acls" => AuthMode::Acls,
            o => {
                return Err(ctx.err(
                    format!("{path}.authentication"),
                    format!("expected none, tpg, tpg+identified, identified or acls, found {o:?}"),
                ))
            }
        };
        let tpg_chap = match (&a.tpg, mode) {
            (Some(c), _) => Some(chap(
                &mut ctx,
                &format!("{path}.tpg"),
                &Some(c.userid.clone()),
                &Some(c.password.clone()),
                &c.mutual,
                &c.userid_mutual,
                &c.password_mutual,
            )?),
            (None, AuthMode::Tpg | AuthMode::TpgIdentified) => {
                return Err(ctx.err(
                    &path,
                    format!(
                        "authentication {:?} needs \"tpg\": {{userid, password}}",
                        mode.name()
                    ),
                ));
            }
            (None, _) => None,
        };
        let mut acls = Vec::new();
        for (j, e) in a.acls.iter().enumerate() {
            acls.push(acl(&mut ctx, &format!("{path}.acls[{j}]"), e, true)?);
        }
        for (j, e) in a.identified.iter().enumerate() {
            acls.push(acl(&mut ctx, &format!("{path}.identified[{j}]"), e, false)?);
        }
        if mode == AuthMode::Acls && acls.is_empty() {
            return Err(ctx.err(
                &path,
                "authentication \"acls\" needs \"acls\": [{initiator, userid, password}]",
            ));
        }
        let discovery = match &a.discovery {
            Some(d) if enable_flag(&ctx, &format!("{path}.discovery.auth"), &d.auth)? => {
                Some(chap(
                    &mut ctx,
                    &format!("{path}.discovery"),
                    &d.userid,
                    &d.password,
                    &d.mutual,
                    &d.userid_mutual,
                    &d.password_mutual,
                )?)
            }
            _ => None,
        };
        targets[ti].auth = TargetAuth {
            mode,
            tpg_chap,
            acls,
            discovery,
        };
    }

    // Images.
    for (pi, pool) in doc.pools.iter().enumerate() {
        for (gi, gw) in pool.gateways.iter().enumerate() {
            let gpath = format!("pools[{pi}].gateways[{gi}]");
            let ti = match (&gw.target, &gw.host) {
                (Some(t), None) => targets.iter().position(|x| &x.iqn == t).ok_or_else(|| {
                    ctx.err(
                        format!("{gpath}.target"),
                        format!("no target {t:?} in \"targets\""),
                    )
                })?,
                (None, Some(h)) => targets
                    .iter()
                    .position(|x| x.tpgs.iter().any(|g| &g.host == h))
                    .ok_or_else(|| {
                        ctx.err(
                            format!("{gpath}.host"),
                            format!("no target is served by host {h:?}"),
                        )
                    })?,
                _ => return Err(ctx.err(gpath, "expected either \"target\" or \"host\"")),
            };
            for (ii, img) in gw.tpg.iter().enumerate() {
                let path = format!("{gpath}.tpg[{ii}]");
                let lun = image_lun(
                    &mut ctx,
                    &path,
                    &pool.pool,
                    &targets[ti],
                    img,
                    wwn_original.contains(&targets[ti].iqn),
                )?;
                // Single-host portals named on image entries become that host's addresses.
                if let (Some(host), Some(portal)) = (&gw.host, &img.portal) {
                    let addrs = portals.get(portal.as_str()).ok_or_else(|| {
                        ctx.err(
                            format!("{path}.portal"),
                            format!("no portal named {portal:?}"),
                        )
                    })?;
                    for g in targets[ti]
                        .tpgs
                        .iter_mut()
                        .filter(|g| &g.host == host && g.addresses.is_empty())
                    {
                        g.portal_name = portal.clone();
                        g.addresses = addrs.clone();
                    }
                }
                targets[ti].luns.push(lun);
            }
        }
    }

    // LUN numbers: explicit ones stay; the rest take the lowest free numbers in order.
    for t in &mut targets {
        let mut used: BTreeSet<u64> = BTreeSet::new();
        for l in t.luns.iter().filter(|l| l.lun != u64::MAX) {
            if !used.insert(l.lun) {
                return Err(ConfigError {
                    source_name: source.into(),
                    path: "pools".into(),
                    message: format!("target {}: LUN {} is assigned twice", t.iqn, l.lun),
                });
            }
        }
        let mut next = 0;
        for l in t.luns.iter_mut().filter(|l| l.lun == u64::MAX) {
            while used.contains(&next) {
                next += 1;
            }
            l.lun = next;
            used.insert(next);
        }
        t.luns.sort_by_key(|l| l.lun);
        // The default owner: LUN n is owned by the (n mod #TPG)-th TPG's host, so LUNs spread
        // over the gateways and every gateway computes the same answer.
        let hosts: Vec<String> = t.tpgs.iter().map(|g| g.host.clone()).collect();
        for l in &mut t.luns {
            if l.owner.is_empty() && !hosts.is_empty() {
                l.owner = hosts[(l.lun as usize) % hosts.len()].clone();
            } else if !l.owner.is_empty() && !hosts.contains(&l.owner) {
                return Err(ConfigError {
                    source_name: source.into(),
                    path: "pools".into(),
                    message: format!(
                        "LUN {} of {}: owner {:?} is not a host of the target",
                        l.lun, t.iqn, l.owner
                    ),
                });
            }
        }
        for g in &mut t.tpgs {
            if g.addresses.is_empty() {
                // lrbd's host-only target without a portal listens on every address.
                g.addresses.push(SocketAddr::new(
                    IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                    3260,
                ));
            }
        }
    }
    Ok(Config {
        source_name: source.into(),
        targets,
        warnings: ctx.warnings,
    })
}

fn image_lun(
    ctx: &mut Ctx,
    path: &str,
    pool: &str,
    target: &Target,
    img: &ImageEntry,
    wwn_original: bool,
) -> Result<Lun, ConfigError> {
    if img.image.is_empty() {
        return Err(ctx.err(format!("{path}.image"), "expected an image name"));
    }
    let size = match &img.size {
        None => None,
        Some(v) => Some(parse_size(&scalar(v)).ok_or_else(|| {
            ctx.err(
                format!("{path}.size"),
                format!("expected a size like \"1G\" or \"512M\", found {v}"),
            )
        })?),
    };
    let backstore = match img.backstore.as_deref().unwrap_or("rbd") {
        "rbd" => BackstoreSpec::Rbd {
            pool: pool.into(),
            namespace: img.namespace.clone().filter(|n| !n.is_empty()),
            image: img.rbd_name.clone().unwrap_or_else(|| img.image.clone()),
            size,
        },
        "file" => {
            let p = img
                .path
                .clone()
                .ok_or_else(|| ctx.err(path, "backstore \"file\" needs \"path\""))?;
            BackstoreSpec::File { path: p, size }
        }
        "memory" => BackstoreSpec::Memory {
            size: size.ok_or_else(|| ctx.err(path, "backstore \"memory\" needs \"size\""))?,
        },
        o => {
            return Err(ctx.err(
                format!("{path}.backstore"),
                format!("expected \"rbd\", \"file\" or \"memory\", found {o:?}"),
            ))
        }
    };
    if img.path.is_some() && backstore.kind() != "file" {
        return Err(ctx.err(
            format!("{path}.path"),
            "\"path\" applies to backstore \"file\" only",
        ));
    }
    if img.lun.is_some_and(|l| l >= 16384) {
        return Err(ctx.err(format!("{path}.lun"), "expected a LUN number below 16384"));
    }
    for (k, v) in [
        ("retries", &img.retries),
        ("sleep", &img.sleep),
        ("retry_errors", &img.retry_errors),
    ] {
        if v.is_some() {
            ctx.warn(
                &format!("{path}.{k}"),
                "lrbd's rbd map retry setting: librbd retries on its own",
            );
        }
    }
    let mut attributes = LunAttributes::default();
    for (k, v) in &img.extra {
        let kp = format!("{path}.{k}");
        let Some(attr) = k.strip_prefix("backstore_") else {
            return Err(ctx.err(kp, "unknown key; expected image, lun, uuid, initiator, portal, rbd_name, retries, sleep, retry_errors, backstore, path, size, owner or backstore_*"));
        };
        let num = || {
            scalar(v)
                .parse::<u32>()
                .map_err(|_| ctx.err(&kp, format!("expected a number, found {v}")))
        };
        match attr {
            "block_size" => {
                let bs = num()?;
                if bs != 512 && bs != 4096 {
                    return Err(ctx.err(kp, format!("expected 512 or 4096, found {bs}")));
                }
                attributes.block_size = bs;
            }
            "emulate_write_cache" => attributes.write_cache = num()? != 0,
            "emulate_tpu" | "emulate_tpws" => {
                if num()? == 0 {
                    attributes.thin_provisioning = false;
                }
            }
            "max_unmap_lba_count" => attributes.max_unmap_lba_count = Some(num()?),
            "max_unmap_block_desc_count" => attributes.max_unmap_block_desc_count = Some(num()?),
            "max_write_same_len" => attributes.max_write_same_len = Some(num()?),
            "unmap_granularity" => attributes.unmap_granularity = Some(num()?.max(1)),
            "emulate_caw"
            | "emulate_3pc"
            | "emulate_dpo"
            | "emulate_fua_read"
            | "emulate_fua_write"
            | "emulate_model_alias"
            | "emulate_rest_reord"
            | "emulate_tas"
            | "emulate_ua_intlck_ctrl"
            | "enforce_pr_isids"
            | "force_pr_aptpl"
            | "is_nonrot"
            | "optimal_sectors"
            | "queue_depth"
            | "unmap_granularity_alignment"
            | "hw_block_size"
            | "hw_max_sectors"
            | "hw_queue_depth"
            | "max_unmap_lba"
            | "pi_prot_type"
            | "unmap_zeroes_data"
            | "fabric_max_sectors" => {
                ctx.warn(&kp, "LIO backstore attribute with no effect on rbdgw");
            }
            _ => return Err(ctx.err(kp, format!("unknown backstore attribute {attr:?}"))),
        }
    }
    let serial = match &img.uuid {
        Some(u) => u.clone(),
        None => {
            // lrbd: uuid3(NAMESPACE_DNS, pool + target + image); wwn_generate "original"
            // (lrbd 1.0) used target + image.
            let name = if wwn_original {
                format!("{}{}", target.iqn, img.image)
            } else {
                format!("{pool}{}{}", target.iqn, img.image)
            };
            uuid::Uuid::new_v3(&uuid::Uuid::NAMESPACE_DNS, name.as_bytes()).to_string()
        }
    };
    Ok(Lun {
        lun: img.lun.unwrap_or(u64::MAX),
        pool: pool.into(),
        image: img.image.clone(),
        backstore,
        serial,
        owner: img.owner.clone().unwrap_or_default(),
        initiators: img.initiator.iter().cloned().collect(),
        attributes,
    })
}

/// RFC 7143 §4.2.7.2: `iqn.` or `eui.` or `naa.` names.
fn valid_iscsi_name(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    (lower.starts_with("iqn.") && lower.len() > 12 && lower.as_bytes()[8] == b'-')
        || (lower.starts_with("eui.")
            && lower.len() == 20
            && lower[4..].chars().all(|c| c.is_ascii_hexdigit()))
        || (lower.starts_with("naa.")
            && lower[4..].chars().all(|c| c.is_ascii_hexdigit())
            && matches!(lower.len() - 4, 16 | 32))
}
