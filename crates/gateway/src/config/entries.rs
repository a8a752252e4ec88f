//! The image entries of `pools[].gateways[]` as lrbd applied them: in the order it read them
//! back from RADOS, into the target each belongs to on its host, merged into one LUN per
//! image and target, numbered and given their serials the way lrbd and LIO did.

use std::collections::BTreeMap;

use super::lrbd::{Document, GatewayEntry, ImageEntry};
use super::resolve::{image_lun, serial, Ctx, Resolver};
use super::{ConfigError, Lun, Tpg};

/// One gateway entry in lrbd's order.
pub(super) struct Gateway<'a> {
    pub pool: &'a str,
    pub entry: &'a GatewayEntry,
    pub path: String,
}

/// lrbd stored each gateway entry as an xattr of its pool's `lrbd.conf` named by its `target`
/// or `host` (a second entry of one key in one pool replaced the first) and read them back
/// in RADOS' order, sorted by name; pools in the document's order.
pub(super) fn ordered<'a>(ctx: &mut Ctx, doc: &'a Document) -> Vec<Gateway<'a>> {
    let mut out = Vec::new();
    for (pi, pool) in doc.pools.iter().enumerate() {
        let mut by_key: BTreeMap<&str, usize> = BTreeMap::new();
        let mut keyless = Vec::new();
        for (gi, g) in pool.gateways.iter().enumerate() {
            match g.target.as_deref().or(g.host.as_deref()) {
                Some(k) if !(g.target.is_some() && g.host.is_some()) => {
                    if let Some(old) = by_key.insert(k, gi) {
                        ctx.warn(
                            &format!("pools[{pi}].gateways[{old}]"),
                            format!("{k:?} has another entry in pool {:?} after this one, which replaces it: lrbd stored one per pool and key, so its images were not served", pool.pool),
                        );
                    }
                }
                // Reported as an error when resolved.
                _ => keyless.push(gi),
            }
        }
        for gi in keyless.into_iter().chain(by_key.into_values()) {
            out.push(Gateway {
                pool: &pool.pool,
                entry: &pool.gateways[gi],
                path: format!("pools[{pi}].gateways[{gi}]"),
            });
        }
    }
    out
}

/// An image entry placed in its target.
pub(super) struct Placed<'a> {
    pub target: usize,
    pub path: String,
    pub pin: Option<u64>,
    pub lun: Lun,
    pub img: &'a ImageEntry,
    pub pool: &'a str,
}

/// Places every image entry in its target, creating the TPGs of host-keyed targets as lrbd's
/// `_add_host` did.
pub(super) fn luns<'a>(
    ctx: &mut Ctx,
    r: &mut Resolver,
    gateways: &[Gateway<'a>],
) -> Result<Vec<Placed<'a>>, ConfigError> {
    let mut out = Vec::new();
    for gw in gateways {
        let g = gw.entry;
        let (ti, host) = match (&g.target, &g.host) {
            (Some(t), None) => {
                let ti = r
                    .targets
                    .iter()
                    .position(|x| x.iqn.eq_ignore_ascii_case(t))
                    .ok_or_else(|| {
                        ctx.err(
                            format!("{}.target", gw.path),
                            format!("no target {t:?} in \"targets\""),
                        )
                    })?;
                if r.targets[ti].single_host.is_some() {
                    // lrbd fetched target-keyed entries only for the redundant targets of a
                    // host, so these were never applied anywhere.
                    ctx.warn(
                        &gw.path,
                        format!("{t:?} is a single host's target ({{host, target}}): lrbd never applied gateway entries keyed by such a target, and rbdgw does not serve them either; key them by \"host\""),
                    );
                    continue;
                }
                for tpg in &r.targets[ti].tpgs {
                    r.portal_tags
                        .entry(tpg.portal_name.clone())
                        .or_insert(tpg.tag);
                }
                (ti, None)
            }
            (None, Some(h)) => (r.host_target(h), Some(h.as_str())),
            _ => return Err(ctx.err(&gw.path, "expected either \"target\" or \"host\"")),
        };
        for (ii, img) in g.tpg.iter().enumerate() {
            let path = format!("{}.tpg[{ii}]", gw.path);
            let (mut lun, pin) = image_lun(ctx, &path, gw.pool, img)?;
            if let Some(h) = host {
                place_host_entry(ctx, r, ti, h, &path, img, &mut lun)?;
            } else if img.portal.is_some() {
                ctx.warn(
                    &format!("{path}.portal"),
                    "a redundant target's entries are served on every portal of its hosts",
                );
            }
            out.push(Placed {
                target: ti,
                path,
                pin,
                lun,
                img,
                pool: gw.pool,
            });
        }
    }
    Ok(out)
}

/// A host-keyed entry: in the host's own target, its `portal` picks the TPG (the tag lrbd
/// first gave that portal anywhere, else 1) and adds the portal's addresses to it; without
/// `portal`, TPG 1 on targetcli's default portal. In a target the host shares with others,
/// the LUN is served by that host alone.
fn place_host_entry(
    ctx: &mut Ctx,
    r: &mut Resolver,
    ti: usize,
    host: &str,
    path: &str,
    img: &ImageEntry,
    lun: &mut Lun,
) -> Result<(), ConfigError> {
    if r.targets[ti].single_host.as_deref() != Some(host) {
        lun.hosts = vec![host.to_string()];
        if let Some(p) = &img.portal {
            if !r.targets[ti]
                .tpgs
                .iter()
                .any(|g| g.host == host && &g.portal_name == p)
            {
                ctx.warn(
                    &format!("{path}.portal"),
                    format!("{host} has no target of its own, so this image is served in {} on {host}'s portals; portal {p:?} is not one of them", r.targets[ti].iqn),
                );
            }
        }
        return Ok(());
    }
    let (tag, addrs) = match &img.portal {
        Some(p) => {
            let addrs = r.portals.get(p.as_str()).cloned().ok_or_else(|| {
                ctx.err(format!("{path}.portal"), format!("no portal named {p:?}"))
            })?;
            (*r.portal_tags.entry(p.clone()).or_insert(1), addrs)
        }
        None => {
            r.default_portal.insert((r.targets[ti].iqn.clone(), 1));
            (1, Vec::new())
        }
    };
    let t = &mut r.targets[ti];
    let tpg = match t.tpgs.iter().position(|g| g.tag == tag) {
        Some(i) => &mut t.tpgs[i],
        None => {
            t.tpgs.push(Tpg {
                tag,
                host: host.to_string(),
                portal_name: img.portal.clone().unwrap_or_default(),
                addresses: Vec::new(),
            });
            t.tpgs.last_mut().expect("just pushed")
        }
    };
    for a in addrs {
        if !tpg.addresses.contains(&a) {
            tpg.addresses.push(a);
        }
    }
    Ok(())
}

/// A target's LUN merged from its entries: the LUN, its given number, the entries (indices).
type Merged = (Lun, Option<u64>, Vec<usize>);

/// Merges each target's entries into LUNs, gives serials, numbers and owners, and checks the
/// initiators the target's authentication needs.
pub(super) fn place(
    ctx: &mut Ctx,
    r: &mut Resolver,
    placed: Vec<Placed>,
) -> Result<(), ConfigError> {
    // The hosts that serve each entry's LUN.
    let hosts_of = |r: &Resolver, p: &Placed| -> Vec<String> {
        if p.lun.hosts.is_empty() {
            r.hosts_of(p.target).iter().map(|h| h.to_string()).collect()
        } else {
            p.lun.hosts.clone()
        }
    };
    let served: Vec<Vec<String>> = placed.iter().map(|p| hosts_of(r, p)).collect();
    let ids: Vec<String> = placed.iter().map(|p| p.lun.identity()).collect();

    let mut merged: Vec<Vec<Merged>> = vec![Vec::new(); r.targets.len()];
    for (i, p) in placed.iter().enumerate() {
        let t = &r.targets[p.target];
        if t.auth.mode.maps_initiators() && p.lun.initiators.is_empty() {
            // lrbd stopped here ("missing initiator for specified authentication").
            return Err(ctx.err(
                format!("{}.initiator", p.path),
                format!(
                    "authentication {:?} of {} maps each LUN to the initiators named on its entries: name one",
                    t.auth.mode.name(),
                    t.iqn
                ),
            ));
        }
        if !t.auth.mode.maps_initiators() && !p.lun.initiators.is_empty() {
            ctx.warn(
                &format!("{}.initiator", p.path),
                format!(
                    "with authentication {:?} every initiator sees every LUN of {} (as with lrbd)",
                    t.auth.mode.name(),
                    t.iqn
                ),
            );
        }
        let list = &mut merged[p.target];
        match list.iter_mut().find(|(l, _, _)| l.identity() == ids[i]) {
            None => list.push((p.lun.clone(), p.pin, vec![i])),
            Some((l, pin, from)) => {
                // lrbd: one backstore, one LUN, mapped to every initiator named.
                match (*pin, p.pin) {
                    (Some(a), Some(b)) if a != b => {
                        return Err(ctx.err(
                            format!("{}.lun", p.path),
                            format!("image {} is already LUN {a} of {}", p.lun.image, t.iqn),
                        ))
                    }
                    (None, b) => *pin = b,
                    _ => {}
                }
                for ini in &p.lun.initiators {
                    if !l.initiators.iter().any(|x| x.eq_ignore_ascii_case(ini)) {
                        l.initiators.push(ini.clone());
                    }
                }
                let hosts = if l.hosts.is_empty() || p.lun.hosts.is_empty() {
                    Vec::new()
                } else {
                    let mut h = l.hosts.clone();
                    h.extend(p.lun.hosts.iter().filter(|x| !l.hosts.contains(x)).cloned());
                    h
                };
                let (initiators, owner) = (l.initiators.clone(), l.owner.clone());
                *l = p.lun.clone();
                l.initiators = initiators;
                l.hosts = hosts;
                if l.owner.is_empty() {
                    l.owner = owner;
                }
                from.push(i);
            }
        }
    }

    for (ti, list) in merged.into_iter().enumerate() {
        let iqn = r.targets[ti].iqn.clone();
        let err = |message: String| ConfigError {
            source_name: ctx.source.into(),
            path: "pools".into(),
            message,
        };
        let mut luns = Vec::new();
        let mut used: BTreeMap<u64, String> = BTreeMap::new();
        for (mut l, pin, from) in list {
            // One backstore per image on a host: its serial is the one the last entry of the
            // image wrote (in lrbd's order) among the targets sharing a host with this LUN.
            let mine: Vec<String> = if l.hosts.is_empty() {
                r.hosts_of(ti).iter().map(|h| h.to_string()).collect()
            } else {
                l.hosts.clone()
            };
            let last = (0..placed.len())
                .rev()
                .find(|&j| ids[j] == ids[from[0]] && served[j].iter().any(|h| mine.contains(h)))
                .unwrap_or(from[0]);
            let p = &placed[last];
            let t = &r.targets[p.target];
            l.serial = serial(p.img, p.pool, &t.iqn, r.wwn_original.contains(&t.iqn));
            if let Some(n) = pin {
                if let Some(other) = used.insert(n, l.image.clone()) {
                    return Err(err(format!(
                        "target {iqn}: LUN {n} is assigned to both {other} and {}",
                        l.image
                    )));
                }
                l.lun = n;
                l.pinned = true;
            }
            luns.push(l);
        }
        // lrbd created the LUNs without `lun` after the others, sorted by backstore name, and
        // targetcli gave each the lowest free number.
        let mut order: Vec<usize> = (0..luns.len())
            .filter(|&i| luns[i].lun == u64::MAX)
            .collect();
        order.sort_by(|&a, &b| luns[a].backstore_name.cmp(&luns[b].backstore_name));
        let mut next = 0;
        for i in order {
            while used.contains_key(&next) {
                next += 1;
            }
            luns[i].lun = next;
            used.insert(next, luns[i].image.clone());
        }
        luns.sort_by_key(|l| l.lun);
        // The default owner: LUN n is owned by the (n mod #TPG)-th TPG's host, so LUNs spread
        // over the gateways and every gateway computes the same answer.
        let t = &r.targets[ti];
        let tpg_hosts: Vec<String> = t.tpgs.iter().map(|g| g.host.clone()).collect();
        for l in &mut luns {
            let hosts = if l.hosts.is_empty() {
                &tpg_hosts
            } else {
                &l.hosts
            };
            if l.owner.is_empty() {
                if let Some(h) = hosts.get((l.lun as usize) % hosts.len().max(1)) {
                    l.owner = h.clone();
                } else if let Some(h) = &t.single_host {
                    l.owner = h.clone();
                }
            } else if !hosts.contains(&l.owner) {
                return Err(err(format!(
                    "LUN {} of {iqn}: owner {:?} is not a host that serves it",
                    l.lun, l.owner
                )));
            }
        }
        if t.auth.mode == super::AuthMode::Acls {
            for l in &luns {
                for ini in &l.initiators {
                    if t.auth.acl(ini).and_then(|a| a.chap.as_ref()).is_none() {
                        ctx.warn(
                            "auth",
                            format!("{ini} is mapped to LUN {} of {iqn} but has no credentials in its \"acls\": it cannot log in", l.lun),
                        );
                    }
                }
            }
        }
        r.targets[ti].luns = luns;
    }
    Ok(())
}
