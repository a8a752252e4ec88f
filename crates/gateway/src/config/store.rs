//! Where the shared config lives: a file, or — as lrbd kept it — an object in Ceph that every
//! gateway reads and watches (`rados://POOL/OBJECT`, default `rados://rbd/rbdgw.config`).
//! Also the migration from lrbd's own layout: xattrs of an object `lrbd.conf` in each pool.

use std::path::PathBuf;

use anyhow::{bail, Context};
use backstore::rbd::RadosPool;
use serde_json::{json, Map, Value};

use super::Config;
use crate::target::CephOptions;

pub const DEFAULT_POOL: &str = "rbd";
pub const DEFAULT_OBJECT: &str = "rbdgw.config";
/// lrbd's config object (`lrbd -c` renamed it).
pub const LRBD_OBJECT: &str = "lrbd.conf";

/// A config location as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    Rados { pool: String, object: String },
}

impl ConfigSource {
    /// `rados://`, `rados://POOL` or `rados://POOL/OBJECT`; anything else is a file path.
    pub fn parse(s: &str) -> Result<ConfigSource, String> {
        let Some(rest) = s.strip_prefix("rados://") else {
            return Ok(ConfigSource::File(PathBuf::from(s)));
        };
        let (pool, object) = match rest.split_once('/') {
            None => (rest, ""),
            Some((p, o)) => (p, o),
        };
        if object.contains('/') {
            return Err(format!("{s}: expected rados://POOL/OBJECT"));
        }
        Ok(ConfigSource::Rados {
            pool: if pool.is_empty() { DEFAULT_POOL } else { pool }.to_string(),
            object: if object.is_empty() {
                DEFAULT_OBJECT
            } else {
                object
            }
            .to_string(),
        })
    }

    pub fn name(&self) -> String {
        match self {
            ConfigSource::File(p) => p.display().to_string(),
            ConfigSource::Rados { pool, object } => format!("rados://{pool}/{object}"),
        }
    }

    /// The document's text (blocking).
    pub fn fetch(&self, ceph: &CephOptions) -> anyhow::Result<String> {
        match self {
            ConfigSource::File(p) => {
                std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))
            }
            ConfigSource::Rados { pool, object } => {
                let text = connect(ceph, pool)?
                    .read(object)
                    .with_context(|| format!("reading {}", self.name()))?;
                match text {
                    Some(t) => String::from_utf8(t)
                        .with_context(|| format!("{} is not UTF-8 text", self.name())),
                    None => bail!(
                        "{} does not exist: store a config with `rbdgw config store -f FILE`",
                        self.name()
                    ),
                }
            }
        }
    }

    /// Reads and validates the config (blocking); also the text it came from.
    pub fn load(&self, ceph: &CephOptions) -> anyhow::Result<(Config, String)> {
        let text = self.fetch(ceph)?;
        Ok((Config::parse(&self.name(), &text)?, text))
    }
}

/// Connects to `pool` with the gateway's Ceph options (blocking).
pub fn connect(ceph: &CephOptions, pool: &str) -> anyhow::Result<RadosPool> {
    RadosPool::connect(&ceph.conf, ceph.id.as_deref(), pool, None)
        .with_context(|| format!("connecting to pool {pool} (ceph.conf {})", ceph.conf))
}

/// `lrbd -f`: validates `text` as a config, then replaces the stored one (watching gateways
/// apply it). A config that would move a LUN of the stored one to another number is refused
/// (running gateways would refuse it too) unless `renumber`.
pub fn store(
    ceph: &CephOptions,
    pool: &str,
    object: &str,
    text: &str,
    renumber: bool,
) -> anyhow::Result<Config> {
    let name = format!("rados://{pool}/{object}");
    let cfg = Config::parse(&name, text)?;
    let rados = connect(ceph, pool)?;
    if !renumber {
        let current = rados
            .read(object)
            .with_context(|| format!("reading {name}"))?;
        let current = current.and_then(|t| String::from_utf8(t).ok());
        if let Some(old) = current.and_then(|t| Config::parse(&name, &t).ok()) {
            if let Some(why) = cfg.renumbers(&old) {
                bail!("not stored: {why} (or store with --renumber once no gateway serves them)");
            }
        }
    }
    rados
        .write_full(object, text.as_bytes())
        .with_context(|| format!("writing {name}"))?;
    Ok(cfg)
}

/// `lrbd -W`: removes the stored config; false when there was none.
pub fn wipe(ceph: &CephOptions, pool: &str, object: &str) -> anyhow::Result<bool> {
    connect(ceph, pool)?
        .remove(object)
        .with_context(|| format!("removing rados://{pool}/{object}"))
}

/// Rebuilds one lrbd JSON document from lrbd's per-pool xattrs (DESIGN.md §1): `targets` and
/// `portals` (the same copy in each pool), `_<host or target>` auth entries, and one
/// `<host or target>` gateway entry per key. Pools without the object are skipped.
pub fn assemble_lrbd(pools: &[(String, backstore::rbd::Xattrs)]) -> anyhow::Result<Value> {
    let mut auth: Vec<Value> = Vec::new();
    let (mut targets, mut portals) = (None, None);
    let mut out_pools = Vec::new();
    for (pool, attrs) in pools {
        let mut gateways = Vec::new();
        for (key, raw) in attrs {
            let v: Value = serde_json::from_slice(raw).with_context(|| {
                format!("pool {pool}: xattr {key} of {LRBD_OBJECT} is not JSON")
            })?;
            match key.as_str() {
                "targets" => {
                    targets.get_or_insert(v);
                }
                "portals" => {
                    portals.get_or_insert(v);
                }
                k if k.starts_with('_') => {
                    if !auth.contains(&v) {
                        auth.push(v);
                    }
                }
                _ => gateways.push(v),
            }
        }
        if !gateways.is_empty() {
            out_pools.push(json!({"pool": pool, "gateways": gateways}));
        }
    }
    if out_pools.is_empty() {
        bail!("no lrbd config found (no pool has an {LRBD_OBJECT} object with gateway entries)");
    }
    let mut doc = Map::new();
    if !auth.is_empty() {
        doc.insert("auth".into(), Value::Array(auth));
    }
    if let Some(t) = targets {
        doc.insert("targets".into(), t);
    }
    if let Some(p) = portals {
        doc.insert("portals".into(), p);
    }
    doc.insert("pools".into(), Value::Array(out_pools));
    Ok(Value::Object(doc))
}

/// Reads lrbd's stored config from `pools` (default: every pool) (blocking).
pub fn import_lrbd(ceph: &CephOptions, pools: &[String]) -> anyhow::Result<Value> {
    let pools = if pools.is_empty() {
        backstore::rbd::list_pools(&ceph.conf, ceph.id.as_deref()).context("listing pools")?
    } else {
        pools.to_vec()
    };
    let mut found = Vec::new();
    for pool in pools {
        if let Some(attrs) = connect(ceph, &pool)?
            .xattrs(LRBD_OBJECT)
            .with_context(|| format!("reading {pool}/{LRBD_OBJECT}"))?
        {
            found.push((pool, attrs));
        }
    }
    assemble_lrbd(&found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!(
            ConfigSource::parse("rados://").unwrap(),
            ConfigSource::Rados {
                pool: "rbd".into(),
                object: "rbdgw.config".into()
            }
        );
        assert_eq!(
            ConfigSource::parse("rados://iscsi/gw.json").unwrap().name(),
            "rados://iscsi/gw.json"
        );
        assert_eq!(
            ConfigSource::parse("rados://iscsi").unwrap().name(),
            "rados://iscsi/rbdgw.config"
        );
        assert!(ConfigSource::parse("rados://a/b/c").is_err());
        assert_eq!(
            ConfigSource::parse("/etc/rbdgw.json").unwrap(),
            ConfigSource::File("/etc/rbdgw.json".into())
        );
    }

    /// The seed's config split the way lrbd stored it, reassembled, loads and resolves to the
    /// same model as the original.
    #[test]
    fn lrbd_layout_round_trip() {
        let seed: Value =
            serde_json::from_str(include_str!("../../../../examples/seed-config.json")).unwrap();
        let mut attrs = Vec::new();
        for key in ["targets", "portals"] {
            attrs.push((key.to_string(), seed[key].to_string().into_bytes()));
        }
        for a in seed["auth"].as_array().unwrap() {
            let who = a.get("target").or(a.get("host")).unwrap().as_str().unwrap();
            attrs.push((format!("_{who}"), a.to_string().into_bytes()));
        }
        let pool = &seed["pools"][0];
        for g in pool["gateways"].as_array().unwrap() {
            let who = g.get("target").or(g.get("host")).unwrap().as_str().unwrap();
            attrs.push((who.to_string(), g.to_string().into_bytes()));
        }
        let doc = assemble_lrbd(&[(pool["pool"].as_str().unwrap().to_string(), attrs)]).unwrap();
        let a = Config::parse("seed", &seed.to_string()).unwrap();
        let b = Config::parse("imported", &doc.to_string()).unwrap();
        assert_eq!(a.targets, b.targets);
        assert!(assemble_lrbd(&[]).is_err());
    }
}
