//! `rbdgw status`: every gateway publishes what it is doing — sessions, and per LUN the ALUA
//! state of every port group as it reports them, whether it holds the write lock, the
//! reservation, I/O rates — every [`PUBLISH_EVERY`] next to the shared state: an object
//! `rbdgw.status.<host>` in the pool of its first RBD LUN, and `status.<host>.json` in the
//! sidecar directory of its first file LUN. Any host reads them, so status works from anywhere,
//! and a gateway that is down shows as such: its last document grows old.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{BackstoreSpec, Config};
use crate::session::SessionInfo;
use crate::target::{CephOptions, Gateway};

/// How often a gateway publishes its state.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(2);
/// A document older than this means its gateway is down (or cannot reach the shared state).
pub const DOWN_AFTER: Duration = Duration::from_secs(8);

/// What one gateway published.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayStatus {
    pub host: String,
    pub version: String,
    pub pid: u32,
    /// Seconds since the Unix epoch.
    pub published_at: f64,
    pub started_at: u64,
    pub draining: bool,
    pub portals: Vec<String>,
    pub sessions: Vec<SessionInfo>,
    pub luns: Vec<LunStatus>,
}

/// One LUN as its gateway sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LunStatus {
    pub target: String,
    pub lun: u64,
    pub image: String,
    /// The access state this gateway reports for each TPG (by tag).
    pub alua: BTreeMap<u16, String>,
    pub write_lock: bool,
    /// The reservation's type and holder, and how many keys are registered.
    pub reservation: Option<(String, String)>,
    pub registered_keys: usize,
    /// Per second over the last interval: read and write commands, bytes read and written.
    pub rates: [f64; 4],
}

/// Where a host's document lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Rados { pool: String },
    Dir(PathBuf),
}

impl Location {
    pub fn name(&self, host: &str) -> String {
        match self {
            Location::Rados { pool } => format!("rados://{pool}/{}", object(host)),
            Location::Dir(d) => d.join(file(host)).display().to_string(),
        }
    }
}

fn object(host: &str) -> String {
    format!("rbdgw.status.{host}")
}

fn file(host: &str) -> String {
    format!("status.{host}.json")
}

/// Where `host` publishes: the pool of its first RBD LUN, the sidecar of its first file LUN
/// (memory LUNs have no shared place).
pub fn locations(cfg: &Config, host: &str) -> Vec<Location> {
    let (mut rados, mut dir) = (None, None);
    for t in &cfg.targets {
        for l in t.luns.iter().filter(|l| l.served_by(host)) {
            match &l.backstore {
                BackstoreSpec::Rbd { pool, .. } if rados.is_none() => {
                    rados = Some(Location::Rados { pool: pool.clone() })
                }
                BackstoreSpec::File { path, .. } if dir.is_none() => {
                    dir = Some(Location::Dir(PathBuf::from(format!("{path}.rbdgw"))))
                }
                _ => {}
            }
        }
    }
    rados.into_iter().chain(dir).collect()
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn state_name(s: scsi::alua::AccessState) -> &'static str {
    use scsi::alua::AccessState::*;
    match s {
        ActiveOptimized => "active/optimized",
        ActiveNonOptimized => "active/non-optimized",
        Standby => "standby",
        Unavailable => "unavailable",
        Transitioning => "transitioning",
    }
}

/// Builds this gateway's document; `last` holds the I/O totals of the previous one.
fn snapshot(
    gw: &Gateway,
    started_at: u64,
    last: &mut HashMap<(String, u64), ([u64; 4], f64)>,
) -> GatewayStatus {
    let served = gw.served();
    let now = now_secs();
    let mut luns = Vec::new();
    for t in &served.targets {
        for l in &t.cfg.luns {
            let n = &l.lun;
            let Some(lu) = t.luns.get(n) else {
                continue;
            };
            let alua = t
                .cfg
                .tpgs
                .iter()
                .map(|g| (g.tag, state_name(lu.access_state(g.tag)).to_string()))
                .collect();
            let totals = t.io.get(n).map(|io| io.totals()).unwrap_or_default();
            let key = (t.cfg.iqn.clone(), *n);
            let rates = match last.insert(key, (totals, now)) {
                Some((was, at)) if now > at => {
                    let dt = now - at;
                    std::array::from_fn(|i| totals[i].saturating_sub(was[i]) as f64 / dt)
                }
                _ => [0.0; 4],
            };
            let (reservation, registered_keys) = lu.reservation_summary();
            luns.push(LunStatus {
                target: t.cfg.iqn.clone(),
                lun: *n,
                image: match &l.backstore {
                    BackstoreSpec::Rbd { pool, image, .. } => format!("rbd {pool}/{image}"),
                    BackstoreSpec::File { path, .. } => format!("file {path}"),
                    BackstoreSpec::Memory { .. } => "memory".to_string(),
                },
                alua,
                write_lock: t.owners.get(n).is_some_and(|o| o.is_owner()),
                reservation: reservation.map(|(k, h)| (k.to_string(), h)),
                registered_keys,
                rates,
            });
        }
    }
    let mut sessions = gw.sessions.list();
    sessions.sort_by(|a, b| {
        (&a.target, &a.initiator, &a.isid).cmp(&(&b.target, &b.initiator, &b.isid))
    });
    GatewayStatus {
        host: gw.host.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        published_at: now,
        started_at,
        draining: gw.is_draining(),
        portals: gw
            .listen_addresses()
            .iter()
            .map(|a| a.to_string())
            .collect(),
        sessions,
        luns,
    }
}

/// A place a document is written to or read from (blocking calls).
enum Sink {
    Rados(backstore::rbd::RadosPool),
    Dir(PathBuf),
}

impl Sink {
    fn open(loc: &Location, ceph: &CephOptions) -> anyhow::Result<Sink> {
        Ok(match loc {
            Location::Rados { pool } => Sink::Rados(crate::config::store::connect(ceph, pool)?),
            Location::Dir(d) => Sink::Dir(d.clone()),
        })
    }

    fn write(&self, host: &str, doc: &[u8]) -> anyhow::Result<()> {
        match self {
            Sink::Rados(p) => Ok(p.write_full(&object(host), doc)?),
            Sink::Dir(d) => {
                // Replaced whole: a reader never sees half a document.
                let tmp = d.join(format!(".{}.tmp", file(host)));
                std::fs::write(&tmp, doc)?;
                std::fs::rename(&tmp, d.join(file(host)))?;
                Ok(())
            }
        }
    }

    fn read(&self, host: &str) -> anyhow::Result<Option<Vec<u8>>> {
        match self {
            Sink::Rados(p) => Ok(p.read(&object(host))?),
            Sink::Dir(d) => match std::fs::read(d.join(file(host))) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }
}

/// Publishes `gw`'s state every [`PUBLISH_EVERY`] for as long as the gateway lives. A failed
/// write is logged once until one succeeds again (the cluster may be out of reach: status
/// then shows this gateway's document growing old).
pub fn spawn_publisher(gw: Arc<Gateway>, ceph: CephOptions) {
    let started_at = now_secs() as u64;
    let weak = Arc::downgrade(&gw);
    drop(gw);
    tokio::spawn(async move {
        let mut sinks: Vec<(Location, Option<Arc<Sink>>)> = Vec::new();
        let mut last = HashMap::new();
        let mut failing = false;
        loop {
            tokio::time::sleep(PUBLISH_EVERY).await;
            let Some(gw) = weak.upgrade() else { return };
            let want = locations(&gw.served().config, &gw.host);
            if want.iter().ne(sinks.iter().map(|(l, _)| l)) {
                sinks = want.into_iter().map(|l| (l, None)).collect();
            }
            let doc = match serde_json::to_vec(&snapshot(&gw, started_at, &mut last)) {
                Ok(d) => d,
                Err(_) => continue,
            };
            let host = gw.host.clone();
            drop(gw);
            for (loc, sink) in sinks.iter_mut() {
                let (l, c, h, d, have) = (
                    loc.clone(),
                    ceph.clone(),
                    host.clone(),
                    doc.clone(),
                    sink.clone(),
                );
                let done = tokio::task::spawn_blocking(move || -> anyhow::Result<Arc<Sink>> {
                    let s = match have {
                        Some(s) => s,
                        None => Arc::new(Sink::open(&l, &c)?),
                    };
                    s.write(&h, &d)?;
                    Ok(s)
                })
                .await;
                match done {
                    Ok(Ok(s)) => {
                        *sink = Some(s);
                        if failing {
                            tracing::info!("publishing the status works again");
                            failing = false;
                        }
                    }
                    Ok(Err(e)) => {
                        if !failing {
                            tracing::warn!(
                                "cannot publish this gateway's status to {}: {e:#}",
                                loc.name(&host)
                            );
                            failing = true;
                        }
                    }
                    Err(_) => {}
                }
            }
        }
    });
}

/// What `rbdgw status` found of each host of the config: its document, or why there is none.
pub fn collect(cfg: &Config, ceph: &CephOptions) -> Vec<(String, Result<GatewayStatus, String>)> {
    let mut out = Vec::new();
    for host in cfg.hosts() {
        let locs = locations(cfg, &host);
        let mut found = Err(if locs.is_empty() {
            "no shared place to publish to (memory LUNs only)".to_string()
        } else {
            "never published (not started since it was configured?)".to_string()
        });
        for loc in &locs {
            let got = Sink::open(loc, ceph).and_then(|s| s.read(&host));
            match got {
                Ok(Some(b)) => match serde_json::from_slice::<GatewayStatus>(&b) {
                    Ok(s) => {
                        found = Ok(s);
                        break;
                    }
                    Err(e) => found = Err(format!("{}: unreadable: {e}", loc.name(&host))),
                },
                Ok(None) => {}
                Err(e) => found = Err(format!("{}: {e:#}", loc.name(&host))),
            }
        }
        out.push((host, found));
    }
    out
}

/// Whether a document this old says its gateway is up.
pub fn is_up(s: &GatewayStatus) -> bool {
    now_secs() - s.published_at <= DOWN_AFTER.as_secs_f64()
}

/// The human-readable report.
pub fn render(cfg: &Config, found: &[(String, Result<GatewayStatus, String>)]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let now = now_secs();
    let ago = |t: f64| {
        let d = (now - t).max(0.0);
        if d < 120.0 {
            format!("{d:.0} s")
        } else if d < 7200.0 {
            format!("{:.0} min", d / 60.0)
        } else {
            format!("{:.1} h", d / 3600.0)
        }
    };
    let mut tag_host: BTreeMap<(String, u16), String> = BTreeMap::new();
    for t in &cfg.targets {
        for g in &t.tpgs {
            tag_host.insert((t.iqn.clone(), g.tag), g.host.clone());
        }
    }
    for (host, st) in found {
        match st {
            Ok(g) if is_up(g) => {
                let _ = writeln!(
                    s,
                    "gateway {host}: up{} (pid {}, version {}, running {}), portals {}",
                    if g.draining { ", DRAINED" } else { "" },
                    g.pid,
                    g.version,
                    ago(g.started_at as f64),
                    g.portals.join(" ")
                );
                for x in &g.sessions {
                    let _ = writeln!(
                        s,
                        "  session {} isid {} → {} via {} from {}, {} ago, digests header {} data {}",
                        x.initiator.escape_debug(),
                        x.isid,
                        x.target,
                        x.portal,
                        x.peer,
                        ago(x.since as f64),
                        if x.header_digest { "CRC32C" } else { "none" },
                        if x.data_digest { "CRC32C" } else { "none" },
                    );
                }
                if g.sessions.is_empty() {
                    let _ = writeln!(s, "  no sessions");
                }
            }
            Ok(g) => {
                let _ = writeln!(
                    s,
                    "gateway {host}: DOWN, last seen {} ago (pid {})",
                    ago(g.published_at),
                    g.pid
                );
            }
            Err(why) => {
                let _ = writeln!(s, "gateway {host}: unknown: {why}");
            }
        }
    }
    // Per LUN: every live gateway's view.
    let mut by_lun: BTreeMap<(String, u64), Vec<(&str, &LunStatus)>> = BTreeMap::new();
    for (host, st) in found {
        if let Some(g) = st.as_ref().ok().filter(|g| is_up(g)) {
            for l in &g.luns {
                by_lun
                    .entry((l.target.clone(), l.lun))
                    .or_default()
                    .push((host.as_str(), l));
            }
        }
    }
    for ((target, lun), views) in &by_lun {
        let first = views[0].1;
        let _ = writeln!(s, "\nLUN {lun} of {target}: {}", first.image);
        let lock: Vec<&str> = views
            .iter()
            .filter(|(_, l)| l.write_lock)
            .map(|(h, _)| *h)
            .collect();
        let _ = writeln!(
            s,
            "  write lock: {}",
            if lock.is_empty() {
                "none held".to_string()
            } else {
                lock.join(", ")
            }
        );
        for (host, l) in views {
            let states: Vec<String> = l
                .alua
                .iter()
                .map(|(tag, st)| {
                    let h = tag_host
                        .get(&(target.clone(), *tag))
                        .map_or("?", String::as_str);
                    format!("tpg {tag} ({h}) {st}")
                })
                .collect();
            let _ = writeln!(s, "  ALUA as {host} reports it: {}", states.join(", "));
        }
        match &first.reservation {
            Some((kind, holder)) => {
                let _ = writeln!(
                    s,
                    "  reservation: {kind}, held by {}; {} keys registered",
                    holder.escape_debug(),
                    first.registered_keys
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "  reservation: none; {} keys registered",
                    first.registered_keys
                );
            }
        }
        for (host, l) in views {
            let [r, w, rb, wb] = l.rates;
            if r + w > 0.0 {
                let _ = writeln!(
                    s,
                    "  I/O through {host}: {r:.0} reads/s {:.2} MiB/s, {w:.0} writes/s {:.2} MiB/s",
                    rb / 1048576.0,
                    wb / 1048576.0
                );
            }
        }
    }
    s
}
