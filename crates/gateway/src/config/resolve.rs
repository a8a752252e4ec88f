//! From the lrbd document to the [`Config`] model: TPG tags, LUN numbers, serials, auth, and
//! every check, each error naming its JSON path.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use serde_json::Value;

use super::entries;
use super::lrbd::{AclEntry, Document, ImageEntry, TargetEntry};
use super::*;

pub(super) struct Ctx<'a> {
    pub(super) source: &'a str,
    pub(super) warnings: Vec<String>,
}

impl Ctx<'_> {
    pub(super) fn err(&self, path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            source_name: self.source.into(),
            path: path.into(),
            message: message.into(),
        }
    }

    pub(super) fn warn(&mut self, path: &str, msg: impl std::fmt::Display) {
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

/// The login keys among [`PARAMS`] that take Yes or No (RFC 7143 §13).
const BOOLEAN_PARAMS: &[&str] = &[
    "ImmediateData",
    "InitialR2T",
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
            let mut value = scalar(v);
            if BOOLEAN_PARAMS.contains(&p) {
                // LIO's configfs takes Yes/No; lrbd samples write "1" and "0" as well.
                value = match value.to_ascii_lowercase().as_str() {
                    "yes" | "1" | "true" => "Yes".into(),
                    "no" | "0" | "false" => "No".into(),
                    _ => {
                        return Err(ctx.err(
                            format!("{path}.{k}"),
                            format!("expected Yes or No (or 1 or 0), found {v}"),
                        ))
                    }
                };
            }
            params.insert(p.to_string(), value);
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

/// `tpg_*` keys of a target entry: the ones that mean something here, LIO's others noted.
fn target_attributes(
    ctx: &mut Ctx,
    path: &str,
    t: &TargetEntry,
    attributes: &mut TargetAttributes,
) -> Result<(), ConfigError> {
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
                    return Err(ctx.err(kp, "T10 protection information is not supported; use 0"));
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
    Ok(())
}

/// The target name for a host that the config gives none (lrbd let targetcli generate one,
/// at random on every start): targetcli's form, `iqn.2003-01.org.linux-iscsi.<host>.x8664:
/// sn.<12 hex>`, with the digits derived from the host name, so it is stable across restarts
/// and every gateway computes the same one. One name per host, not one for all: the targets
/// of two such hosts hold different LUNs, and one target name is one SCSI target device.
pub fn generated_iqn(host: &str) -> String {
    let label: String = host
        .split('.')
        .next()
        .unwrap_or(host)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let id = uuid::Uuid::new_v3(
        &uuid::Uuid::NAMESPACE_DNS,
        format!("rbdgw.generated-target.{host}").as_bytes(),
    );
    let hex = id.simple().to_string();
    format!(
        "iqn.2003-01.org.linux-iscsi.{label}.x8664:sn.{}",
        &hex[hex.len() - 12..]
    )
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

    // Targets and the TPGs of redundant ones (a single host's TPGs come from its entries).
    let mut targets: Vec<Target> = Vec::new();
    let mut wwn_original: BTreeSet<String> = BTreeSet::new();
    // lrbd's TPGattributes kept one dict for every target, so a `tpg_*` set on one target
    // applies to the targets after it too.
    let mut attributes = TargetAttributes::default();
    for (i, t) in doc.targets.iter().enumerate() {
        let path = format!("targets[{i}]");
        if !valid_iscsi_name(&t.target) {
            return Err(ctx.err(format!("{path}.target"), format!("expected an iSCSI name (iqn.YYYY-MM.reverse.domain[:id] or eui.<16 hex>), found {:?}", t.target)));
        }
        target_attributes(&mut ctx, &path, t, &mut attributes)?;
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
        if targets
            .iter()
            .any(|x| x.iqn.eq_ignore_ascii_case(&t.target))
        {
            return Err(ctx.err(
                format!("{path}.target"),
                format!("target {:?} is listed twice", t.target),
            ));
        }
        let mut target = Target {
            iqn: t.target.clone(),
            single_host: None,
            tpgs: Vec::new(),
            luns: Vec::new(),
            auth: TargetAuth::default(),
            attributes: attributes.clone(),
        };
        match (&t.hosts, &t.host) {
            (Some(hosts), None) => {
                if hosts.is_empty() {
                    return Err(
                        ctx.err(format!("{path}.hosts"), "a target needs at least one host")
                    );
                }
                // TPG n is the n-th distinct portal in the hosts order (lrbd's _add_target).
                let mut order: Vec<&str> = Vec::new();
                for (j, hp) in hosts.iter().enumerate() {
                    let addrs = portals.get(hp.portal.as_str()).ok_or_else(|| {
                        ctx.err(
                            format!("{path}.hosts[{j}].portal"),
                            format!("no portal named {:?} in \"portals\"", hp.portal),
                        )
                    })?;
                    if order.contains(&hp.portal.as_str()) {
                        continue;
                    }
                    order.push(&hp.portal);
                    target.tpgs.push(Tpg {
                        tag: order.len() as u16,
                        host: hp.host.clone(),
                        portal_name: hp.portal.clone(),
                        addresses: addrs.clone(),
                    });
                }
            }
            (None, Some(host)) => target.single_host = Some(host.clone()),
            _ => {
                return Err(ctx.err(
                    path,
                    "expected either \"hosts\": [{host, portal}] or \"host\"",
                ))
            }
        }
        targets.push(target);
    }

    let mut r = Resolver {
        targets,
        wwn_original,
        portals,
        default_portal: BTreeSet::new(),
        portal_tags: BTreeMap::new(),
    };
    let entries = entries::ordered(&mut ctx, doc);
    let luns = entries::luns(&mut ctx, &mut r, &entries)?;
    let order = auth_order(&mut ctx, doc);
    auth(&mut ctx, &mut r, doc, &order)?;
    let discovery = discovery(&mut ctx, &r, doc, &order)?;
    entries::place(&mut ctx, &mut r, luns)?;

    for t in &mut r.targets {
        if t.single_host.is_some() && t.tpgs.is_empty() {
            // lrbd's `/iscsi create` made TPG 1; with no entry it has no portal and no LUN.
            t.tpgs.push(Tpg {
                tag: 1,
                host: t.single_host.clone().unwrap_or_default(),
                portal_name: String::new(),
                addresses: Vec::new(),
            });
        }
        for g in &mut t.tpgs {
            if g.addresses.is_empty() && r.default_portal.contains(&(t.iqn.clone(), g.tag)) {
                // An entry without a portal: targetcli's default portal, every address.
                g.addresses.push(SocketAddr::new(
                    IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                    3260,
                ));
            }
        }
        t.tpgs.sort_by_key(|g| g.tag);
    }
    // (A credential checked once per host warns once.)
    let mut seen = BTreeSet::new();
    ctx.warnings.retain(|w| seen.insert(w.clone()));
    Ok(Config {
        source_name: source.into(),
        targets: r.targets,
        discovery,
        warnings: ctx.warnings,
    })
}

/// What resolving has built so far, shared by the entry, auth and placement steps.
pub(super) struct Resolver<'a> {
    pub targets: Vec<Target>,
    pub wwn_original: BTreeSet<String>,
    pub portals: BTreeMap<&'a str, Vec<SocketAddr>>,
    /// (target, tag) of TPGs that an entry without `portal` put on targetcli's default portal.
    pub default_portal: BTreeSet<(String, u16)>,
    /// The TPG tag lrbd first gave each portal name (its PortalIndex.find).
    pub portal_tags: BTreeMap<String, u16>,
}

impl Resolver<'_> {
    /// lrbd's `iqns[0]` on `host`, the target its host-keyed entries and auth go to: its last
    /// `{host, target}` entry (lrbd put each at the front of its list), else the first target
    /// it serves, else one named for it ([`generated_iqn`]).
    pub fn host_target(&mut self, host: &str) -> usize {
        if let Some(i) = self
            .targets
            .iter()
            .rposition(|t| t.single_host.as_deref() == Some(host))
        {
            return i;
        }
        if let Some(i) = self
            .targets
            .iter()
            .position(|t| t.tpgs.iter().any(|g| g.host == host))
        {
            return i;
        }
        self.targets.push(Target {
            iqn: generated_iqn(host),
            single_host: Some(host.to_string()),
            tpgs: Vec::new(),
            luns: Vec::new(),
            auth: TargetAuth::default(),
            attributes: TargetAttributes::default(),
        });
        self.targets.len() - 1
    }

    /// The hosts that serve target `ti`.
    pub fn hosts_of(&self, ti: usize) -> Vec<&str> {
        let t = &self.targets[ti];
        let mut v: Vec<&str> = t.single_host.iter().map(|h| h.as_str()).collect();
        for g in &t.tpgs {
            if !v.contains(&g.host.as_str()) {
                v.push(&g.host);
            }
        }
        v
    }
}

fn mode_of(ctx: &Ctx, path: &str, name: &str) -> Result<AuthMode, ConfigError> {
    Ok(match name {
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
    })
}

/// The auth entries in the order lrbd read them: one xattr `_<host or target>` each (a key
/// given twice keeps its last entry), which RADOS returns sorted by name.
fn auth_order(ctx: &mut Ctx, doc: &Document) -> Vec<(usize, String)> {
    let mut by_key: BTreeMap<String, usize> = BTreeMap::new();
    for (i, a) in doc.auth.iter().enumerate() {
        let Some(key) = a.target.clone().or_else(|| a.host.clone()) else {
            continue;
        };
        if let Some(old) = by_key.insert(format!("_{key}"), i) {
            ctx.warn(
                &format!("auth[{old}]"),
                format!("{key:?} has another auth entry after this one, which replaces it (lrbd stored one per key)"),
            );
        }
    }
    by_key.into_iter().map(|(k, i)| (i, k)).collect()
}

/// Authentication per target: each target takes the last auth entry (in lrbd's order) that
/// names it, or names a host whose target it is; with an `auth` section but none for it, no
/// initiator may log in (LIO's TPG without demo mode or ACLs); with no `auth` at all, anyone.
fn auth(
    ctx: &mut Ctx,
    r: &mut Resolver,
    doc: &Document,
    order: &[(usize, String)],
) -> Result<(), ConfigError> {
    if !doc.auth.is_empty() {
        for t in &mut r.targets {
            t.auth.mode = AuthMode::Unconfigured;
        }
    }
    for &(i, _) in order {
        let a = &doc.auth[i];
        let path = format!("auth[{i}]");
        let ti = match (&a.target, &a.host) {
            (Some(t), _) => r
                .targets
                .iter()
                .position(|x| x.iqn.eq_ignore_ascii_case(t))
                .ok_or_else(|| {
                    ctx.err(
                        format!("{path}.target"),
                        format!("no target {t:?} in \"targets\""),
                    )
                })?,
            (None, Some(h)) => r.host_target(h),
            (None, None) => return Err(ctx.err(&path, "expected \"target\" or \"host\"")),
        };
        let mode = mode_of(ctx, &path, &a.authentication)?;
        let tpg_chap = match (&a.tpg, mode) {
            (Some(c), _) => Some(chap(
                ctx,
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
        // lrbd reads per-initiator settings from `acls` in mode acls and from `identified` in
        // the identified modes (its InitiatorSettings); credentials only from `acls`.
        let mut acls = Vec::new();
        match mode {
            AuthMode::Acls => {
                for (j, e) in a.acls.iter().enumerate() {
                    acls.push(acl(ctx, &format!("{path}.acls[{j}]"), e, true)?);
                }
                if acls.is_empty() {
                    return Err(ctx.err(
                        &path,
                        "authentication \"acls\" needs \"acls\": [{initiator, userid, password}]",
                    ));
                }
            }
            AuthMode::Identified | AuthMode::TpgIdentified => {
                for (j, e) in a.identified.iter().enumerate() {
                    acls.push(acl(ctx, &format!("{path}.identified[{j}]"), e, false)?);
                }
            }
            _ => {}
        }
        for (list, name) in [(&a.acls, "acls"), (&a.identified, "identified")] {
            let used = match mode {
                AuthMode::Acls => name == "acls",
                AuthMode::Identified | AuthMode::TpgIdentified => name == "identified",
                _ => false,
            };
            if !list.is_empty() && !used {
                ctx.warn(
                    &format!("{path}.{name}"),
                    format!("not used with authentication {:?}", mode.name()),
                );
            }
        }
        r.targets[ti].auth = TargetAuth {
            mode,
            tpg_chap,
            acls,
        };
    }
    Ok(())
}

/// Discovery CHAP per host: lrbd took the `discovery` of the first auth entry it read on a
/// host (every target's, and the host's own) and set LIO's discovery auth from it alone.
fn discovery(
    ctx: &mut Ctx,
    r: &Resolver,
    doc: &Document,
    order: &[(usize, String)],
) -> Result<BTreeMap<String, Chap>, ConfigError> {
    let mut hosts: Vec<&str> = Vec::new();
    for ti in 0..r.targets.len() {
        for h in r.hosts_of(ti) {
            if !hosts.contains(&h) {
                hosts.push(h);
            }
        }
    }
    let mut out = BTreeMap::new();
    for host in hosts {
        let first = order.iter().find(|(i, _)| {
            let a = &doc.auth[*i];
            a.target.is_some() || a.host.as_deref() == Some(host)
        });
        let Some((i, _)) = first else { continue };
        let path = format!("auth[{i}].discovery");
        if let Some(d) = &doc.auth[*i].discovery {
            if enable_flag(ctx, &format!("{path}.auth"), &d.auth)? {
                let c = chap(
                    ctx,
                    &path,
                    &d.userid,
                    &d.password,
                    &d.mutual,
                    &d.userid_mutual,
                    &d.password_mutual,
                )?;
                out.insert(host.to_string(), c);
            }
        }
    }
    Ok(out)
}

/// One image entry as a LUN of its target (its number, hosts and serial are settled later).
pub(super) fn image_lun(
    ctx: &mut Ctx,
    path: &str,
    pool: &str,
    img: &ImageEntry,
) -> Result<(Lun, Option<u64>), ConfigError> {
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
    // `rbd_name` names LIO's backstore only (lrbd's Runtime.backstore): the image is always
    // `image`.
    let backstore_name = match img.rbd_name.as_deref() {
        Some("simple") => img.image.clone(),
        Some(o) => {
            ctx.warn(
                &format!("{path}.rbd_name"),
                format!(
                    "lrbd knows only \"simple\"; {o:?} names the backstore {pool}-{}",
                    img.image
                ),
            );
            format!("{pool}-{}", img.image)
        }
        None => format!("{pool}-{}", img.image),
    };
    let backstore = match img.backstore.as_deref().unwrap_or("rbd") {
        "rbd" => BackstoreSpec::Rbd {
            pool: pool.into(),
            namespace: img.namespace.clone().filter(|n| !n.is_empty()),
            image: img.image.clone(),
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
    let lun = match &img.lun {
        None => None,
        Some(v) => {
            let n = scalar(v).trim().parse::<u64>().ok().filter(|n| *n < 16384);
            Some(n.ok_or_else(|| {
                ctx.err(
                    format!("{path}.lun"),
                    format!("expected a LUN number below 16384 (\"2\" or 2), found {v}"),
                )
            })?)
        }
    };
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
    let mut attributes = lun_attributes(ctx, path, img)?;
    for (key, value, len) in [("vendor", &img.vendor, 8), ("product", &img.product, 16)] {
        let Some(v) = value else { continue };
        // SPC-4 §6.6.2: left-aligned printable ASCII, padded with spaces.
        if v.is_empty() || v.len() > len || !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(ctx.err(
                format!("{path}.{key}"),
                format!("expected 1 to {len} printable ASCII characters, found {v:?}"),
            ));
        }
    }
    attributes.vendor = img.vendor.clone();
    attributes.product = img.product.clone();
    Ok((
        Lun {
            lun: u64::MAX,
            pool: pool.into(),
            image: img.image.clone(),
            backstore,
            serial: String::new(),
            owner: img.owner.clone().unwrap_or_default(),
            initiators: img.initiator.iter().cloned().collect(),
            hosts: Vec::new(),
            backstore_name,
            pinned: lun.is_some(),
            attributes,
        },
        lun,
    ))
}

/// `backstore_*` keys: LIO's backstore attributes.
fn lun_attributes(
    ctx: &mut Ctx,
    path: &str,
    img: &ImageEntry,
) -> Result<LunAttributes, ConfigError> {
    let mut attributes = LunAttributes::default();
    for (k, v) in &img.extra {
        let kp = format!("{path}.{k}");
        let Some(attr) = k.strip_prefix("backstore_") else {
            return Err(ctx.err(kp, "unknown key; expected image, lun, uuid, initiator, portal, rbd_name, retries, sleep, retry_errors, backstore, path, size, namespace, owner, vendor, product or backstore_*"));
        };
        let num = || {
            scalar(v)
                .parse::<u32>()
                .map_err(|_| ctx.err(&kp, format!("expected a number, found {v}")))
        };
        match attr {
            "block_size" => {
                // LIO's choices (se_dev_set_block_size).
                let bs = num()?;
                if ![512, 1024, 2048, 4096].contains(&bs) {
                    return Err(
                        ctx.err(kp, format!("expected 512, 1024, 2048 or 4096, found {bs}"))
                    );
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
            "unmap_granularity_alignment" => {
                attributes.unmap_granularity_alignment = Some(num()?).filter(|a| *a != 0)
            }
            // T10 PI: LIO refuses a protection type the backstore cannot store, and neither
            // RBD nor rbdgw stores protection information.
            "pi_prot_type" | "hw_pi_prot_type" | "pi_prot_format" => {
                if num()? != 0 {
                    return Err(ctx.err(
                        kp,
                        "T10 protection information is not supported (LIO's rbd backstore has none either); use 0",
                    ));
                }
                ctx.warn(&kp, "no protection information, as asked");
            }
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
            | "hw_block_size"
            | "hw_max_sectors"
            | "hw_queue_depth"
            | "max_unmap_lba"
            | "unmap_zeroes_data"
            | "fabric_max_sectors" => {
                ctx.warn(&kp, "LIO backstore attribute with no effect on rbdgw");
            }
            _ => return Err(ctx.err(kp, format!("unknown backstore attribute {attr:?}"))),
        }
    }
    Ok(attributes)
}

/// lrbd's unit serial for an entry of `target`: `uuid` if given, else uuid3(NAMESPACE_DNS,
/// pool + target + image), or target + image under `wwn_generate: "original"` (lrbd 1.0).
pub(super) fn serial(img: &ImageEntry, pool: &str, target: &str, original: bool) -> String {
    match &img.uuid {
        Some(u) => u.clone(),
        None => {
            let name = if original {
                format!("{target}{}", img.image)
            } else {
                format!("{pool}{target}{}", img.image)
            };
            uuid::Uuid::new_v3(&uuid::Uuid::NAMESPACE_DNS, name.as_bytes()).to_string()
        }
    }
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
