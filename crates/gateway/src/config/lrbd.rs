//! The lrbd JSON document, as lrbd itself reads it (SUSE lrbd, `lrbd -f`), plus rbdgw's
//! extensions. Keys lrbd passed through to LIO by prefix (`tpg_*`, `backstore_*`,
//! `attrib_*`, `param_*`) are collected in `extra` and checked by the validator.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    #[serde(default)]
    pub auth: Vec<AuthEntry>,
    #[serde(default)]
    pub targets: Vec<TargetEntry>,
    #[serde(default)]
    pub portals: Vec<PortalEntry>,
    #[serde(default)]
    pub pools: Vec<PoolEntry>,
}

/// `auth[]`: how initiators authenticate to one target (or to a host's target).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthEntry {
    pub target: Option<String>,
    pub host: Option<String>,
    pub authentication: String,
    pub tpg: Option<ChapEntry>,
    #[serde(default)]
    pub acls: Vec<AclEntry>,
    #[serde(default)]
    pub identified: Vec<AclEntry>,
    pub discovery: Option<DiscoveryEntry>,
}

/// CHAP credentials (`tpg`): lrbd writes `mutual` as "enable"/"disable".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChapEntry {
    pub userid: String,
    pub password: String,
    pub mutual: Option<String>,
    pub userid_mutual: Option<String>,
    pub password_mutual: Option<String>,
}

/// An initiator entry of `acls` or `identified`; `attrib_*`/`param_*` are per-initiator
/// settings. The man page calls the name key `iqn`, the code `initiator`: both work.
#[derive(Debug, Clone, Deserialize)]
pub struct AclEntry {
    pub initiator: Option<String>,
    pub iqn: Option<String>,
    pub userid: Option<String>,
    pub password: Option<String>,
    pub mutual: Option<String>,
    pub userid_mutual: Option<String>,
    pub password_mutual: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryEntry {
    pub auth: Option<String>,
    pub userid: Option<String>,
    pub password: Option<String>,
    pub mutual: Option<String>,
    pub userid_mutual: Option<String>,
    pub password_mutual: Option<String>,
}

/// `targets[]`: `{target, hosts: [{host, portal}]}` (redundant) or `{host, target}`.
#[derive(Debug, Clone, Deserialize)]
pub struct TargetEntry {
    pub target: String,
    pub host: Option<String>,
    pub hosts: Option<Vec<HostPortal>>,
    pub wwn_generate: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostPortal {
    pub host: String,
    pub portal: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalEntry {
    pub name: String,
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolEntry {
    pub pool: String,
    #[serde(default)]
    pub gateways: Vec<GatewayEntry>,
}

/// `pools[].gateways[]`: keyed by `target` (every host of it serves the images) or `host`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayEntry {
    pub target: Option<String>,
    pub host: Option<String>,
    #[serde(default)]
    pub tpg: Vec<ImageEntry>,
}

/// One exported image (a LUN).
#[derive(Debug, Clone, Deserialize)]
pub struct ImageEntry {
    pub image: String,
    /// lrbd writes and reads it as a string (`"2"`); a number is accepted too.
    pub lun: Option<Value>,
    pub uuid: Option<String>,
    pub initiator: Option<String>,
    pub portal: Option<String>,
    pub rbd_name: Option<String>,
    pub retries: Option<Value>,
    pub sleep: Option<Value>,
    pub retry_errors: Option<Value>,
    // rbdgw extensions.
    pub backstore: Option<String>,
    pub path: Option<String>,
    pub size: Option<Value>,
    pub namespace: Option<String>,
    pub owner: Option<String>,
    pub vendor: Option<String>,
    pub product: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}
