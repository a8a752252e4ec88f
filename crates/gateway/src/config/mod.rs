//! The shared configuration: lrbd's JSON document ([`lrbd`]) resolved into a typed model
//! ([`Config`]) that every gateway computes alike, and the choice of "this host".

mod entries;
pub mod lrbd;
pub mod resolve;
pub mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use thiserror::Error;

pub use resolve::{generated_iqn, parse_size};

/// A configuration error: which file, where in it, and what was expected.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{source_name}: {path}: {message}")]
pub struct ConfigError {
    pub source_name: String,
    /// JSON path (`pools[0].gateways[0].tpg[1].lun`), or `.` for the document.
    pub path: String,
    pub message: String,
}

/// How initiators authenticate to a target (lrbd's `authentication`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Anyone, no CHAP.
    None,
    /// The config has an `auth` section but no entry for this target: lrbd left such a TPG
    /// as LIO makes it, without demo mode and without ACLs, so no initiator may log in.
    Unconfigured,
    /// One CHAP credential for every initiator.
    Tpg,
    /// That credential, and only the initiators named in the image entries.
    TpgIdentified,
    /// Only named initiators, no CHAP.
    Identified,
    /// Per-initiator CHAP credentials.
    Acls,
}

impl AuthMode {
    /// Whether initiators must be named on image entries (lrbd makes node ACLs and maps each
    /// LUN to the initiators named on its entries only in these modes).
    pub fn maps_initiators(self) -> bool {
        matches!(
            self,
            AuthMode::Acls | AuthMode::TpgIdentified | AuthMode::Identified
        )
    }
}

impl AuthMode {
    pub fn name(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Unconfigured => "no entry in auth (nobody may log in)",
            AuthMode::Tpg => "tpg",
            AuthMode::TpgIdentified => "tpg+identified",
            AuthMode::Identified => "identified",
            AuthMode::Acls => "acls",
        }
    }
}

/// CHAP credentials; `mutual` is the target's own name and secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chap {
    pub user: String,
    pub secret: String,
    pub mutual: Option<(String, String)>,
}

/// A named initiator with optional CHAP and per-initiator settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    pub initiator: String,
    pub chap: Option<Chap>,
    /// `param_*` login keys (RFC 7143 names) overriding the target's defaults.
    pub params: BTreeMap<String, String>,
    /// `attrib_*` settings, as given (LIO's node ACL attributes).
    pub attribs: BTreeMap<String, String>,
}

/// LIO's defaults for the NOP-In timers of a node ACL, in seconds.
pub const DEFAULT_NOPIN_TIMEOUT: u32 = 15;
pub const DEFAULT_NOPIN_RESPONSE_TIMEOUT: u32 = 30;

impl Acl {
    /// `attrib_nopin_timeout`: seconds of silence before the target pings (0: never).
    pub fn nopin_timeout(&self) -> u32 {
        self.attrib_secs("nopin_timeout", DEFAULT_NOPIN_TIMEOUT)
    }

    /// `attrib_nopin_response_timeout`: seconds a ping may go unanswered.
    pub fn nopin_response_timeout(&self) -> u32 {
        self.attrib_secs("nopin_response_timeout", DEFAULT_NOPIN_RESPONSE_TIMEOUT)
    }

    fn attrib_secs(&self, key: &str, default: u32) -> u32 {
        self.attribs
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetAuth {
    pub mode: AuthMode,
    pub tpg_chap: Option<Chap>,
    pub acls: Vec<Acl>,
}

impl TargetAuth {
    /// The ACL entry naming `initiator` (iSCSI names compare without case).
    pub fn acl(&self, initiator: &str) -> Option<&Acl> {
        self.acls
            .iter()
            .find(|a| a.initiator.eq_ignore_ascii_case(initiator))
    }
}

impl Default for TargetAuth {
    fn default() -> Self {
        TargetAuth {
            mode: AuthMode::None,
            tpg_chap: None,
            acls: Vec::new(),
        }
    }
}

/// A target portal group: one gateway host and its portal addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tpg {
    pub tag: u16,
    pub host: String,
    pub portal_name: String,
    pub addresses: Vec<SocketAddr>,
}

/// Where a LUN's data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackstoreSpec {
    /// An RBD image; `size` creates it when missing.
    Rbd {
        pool: String,
        namespace: Option<String>,
        image: String,
        size: Option<u64>,
    },
    File {
        path: String,
        size: Option<u64>,
    },
    Memory {
        size: u64,
    },
}

impl BackstoreSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            BackstoreSpec::Rbd { .. } => "rbd",
            BackstoreSpec::File { .. } => "file",
            BackstoreSpec::Memory { .. } => "memory",
        }
    }
}

/// LIO backstore attributes that mean something here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunAttributes {
    pub block_size: u32,
    pub write_cache: bool,
    pub thin_provisioning: bool,
    pub max_unmap_lba_count: Option<u32>,
    pub max_unmap_block_desc_count: Option<u32>,
    pub max_write_same_len: Option<u32>,
    pub unmap_granularity: Option<u32>,
    pub unmap_granularity_alignment: Option<u32>,
    /// INQUIRY vendor and product identification (rbdgw's `vendor`, `product`): what LIO
    /// reported, for initiators whose multipath or MPIO claims match on them.
    pub vendor: Option<String>,
    pub product: Option<String>,
}

impl Default for LunAttributes {
    fn default() -> Self {
        LunAttributes {
            block_size: 512,
            write_cache: true,
            thin_provisioning: true,
            max_unmap_lba_count: None,
            max_unmap_block_desc_count: None,
            max_write_same_len: None,
            unmap_granularity: None,
            unmap_granularity_alignment: None,
            vendor: None,
            product: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lun {
    pub lun: u64,
    pub pool: String,
    pub image: String,
    pub backstore: BackstoreSpec,
    /// VPD 0x80 unit serial number.
    pub serial: String,
    /// Host that owns the LU (ALUA Active/Optimized), from `owner` or the default rule.
    pub owner: String,
    /// Initiators named on the image's entries (`initiator`): in the modes that map
    /// initiators ([`AuthMode::maps_initiators`]) only they see the LUN.
    pub initiators: Vec<String>,
    /// The hosts that serve this LUN; empty: every host of the target. A host-keyed gateway
    /// entry whose host has no target of its own puts its images into the first target the
    /// host serves, on that host alone (lrbd's `iqns[0]`).
    pub hosts: Vec<String>,
    /// lrbd's LIO backstore name: `pool-image`, or `image` with `rbd_name: "simple"`. lrbd
    /// numbers LUNs without `lun` in the order of these names.
    pub backstore_name: String,
    /// The number was given (`lun`), not chosen.
    pub pinned: bool,
    pub attributes: LunAttributes,
}

impl Lun {
    /// What makes two entries one LUN of a target, and a LUN the same one in another version
    /// of the config: the same image (lrbd: the same backstore).
    pub fn identity(&self) -> String {
        match &self.backstore {
            BackstoreSpec::Rbd {
                pool,
                namespace,
                image,
                ..
            } => format!("rbd {pool}/{}/{image}", namespace.as_deref().unwrap_or("")),
            BackstoreSpec::File { path, .. } => format!("file {path}"),
            BackstoreSpec::Memory { .. } => format!("memory {}/{}", self.pool, self.image),
        }
    }

    /// Whether `host` serves this LUN (given that it serves the target).
    pub fn served_by(&self, host: &str) -> bool {
        self.hosts.is_empty() || self.hosts.iter().any(|h| h == host)
    }
}

/// TPG attributes (`tpg_*`) that mean something here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetAttributes {
    /// The CmdSN window (`tpg_default_cmdsn_depth`).
    pub cmdsn_depth: u32,
    /// `tpg_login_timeout`, seconds.
    pub login_timeout: u32,
    /// `tpg_prod_mode_write_protect`: every LUN read-only.
    pub write_protect: bool,
}

impl Default for TargetAttributes {
    fn default() -> Self {
        TargetAttributes {
            cmdsn_depth: 128,
            login_timeout: 15,
            write_protect: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub iqn: String,
    /// The one host of a `{host, target}` entry (or of a target named for a host because the
    /// config has none): lrbd configured such a target on that host alone.
    pub single_host: Option<String>,
    pub tpgs: Vec<Tpg>,
    pub luns: Vec<Lun>,
    pub auth: TargetAuth,
    pub attributes: TargetAttributes,
}

impl Target {
    /// The TPGs that `host` serves.
    pub fn tpgs_of<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a Tpg> + 'a {
        self.tpgs.iter().filter(move |t| t.host == host)
    }
}

/// The whole resolved configuration, identical on every gateway.
#[derive(Debug, Clone)]
pub struct Config {
    pub source_name: String,
    pub targets: Vec<Target>,
    /// Discovery CHAP per host: lrbd set LIO's (host-wide) discovery auth from the first auth
    /// entry it read on that host; hosts absent here ask none.
    pub discovery: BTreeMap<String, Chap>,
    /// Notes about keys that are accepted but have no effect here (LIO-only knobs).
    pub warnings: Vec<String>,
}

impl Config {
    /// Parses and validates a document. `#` comments are dropped first, as lrbd did (its
    /// `lrbd -e` template starts with them).
    pub fn parse(source_name: &str, text: &str) -> Result<Config, ConfigError> {
        let text = strip_comments(text);
        let de = &mut serde_json::Deserializer::from_str(&text);
        let doc: lrbd::Document = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = match e.path().to_string() {
                p if p.is_empty() || p == "?" => ".".to_string(),
                p => p,
            };
            ConfigError {
                source_name: source_name.into(),
                path,
                message: e.into_inner().to_string(),
            }
        })?;
        resolve::resolve(source_name, &doc)
    }

    /// Whether this config gives an image that `old` serves another LUN number. lrbd numbered
    /// the LUNs without `lun` by backstore name, so adding an image can move others; applied
    /// to running gateways, initiators would find another image behind a LUN number they have
    /// open. Says which, and what to do.
    pub fn renumbers(&self, old: &Config) -> Option<String> {
        for t in &self.targets {
            let Some(o) = old
                .targets
                .iter()
                .find(|o| o.iqn.eq_ignore_ascii_case(&t.iqn))
            else {
                continue;
            };
            for l in &t.luns {
                if let Some(x) = o
                    .luns
                    .iter()
                    .find(|x| x.identity() == l.identity() && x.lun != l.lun)
                {
                    return Some(format!(
                        "it moves {} of {} from LUN {} to LUN {} (LUNs without \"lun\" are numbered by backstore name, as lrbd did): give the served images their current \"lun\" first",
                        l.image, t.iqn, x.lun, l.lun
                    ));
                }
            }
        }
        None
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: name.clone(),
            path: ".".into(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&name, &text)
    }

    /// Every host named by the config.
    pub fn hosts(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for t in &self.targets {
            for g in &t.tpgs {
                if !v.contains(&g.host) {
                    v.push(g.host.clone());
                }
            }
        }
        v
    }

    /// Chooses the host to serve, as lrbd did: the one named, else the one whose portal
    /// addresses are configured on this machine, else the one named like this machine
    /// (short name or FQDN).
    pub fn select_host(
        &self,
        requested: Option<&str>,
        local_addrs: &[std::net::IpAddr],
        hostname: &str,
    ) -> Result<String, ConfigError> {
        let hosts = self.hosts();
        let err = |message: String| ConfigError {
            source_name: self.source_name.clone(),
            path: "targets".into(),
            message,
        };
        if let Some(h) = requested {
            return hosts
                .iter()
                .find(|x| x.as_str() == h)
                .cloned()
                .ok_or_else(|| {
                    err(format!(
                        "host {h:?} is not a gateway of any target (hosts: {})",
                        hosts.join(", ")
                    ))
                });
        }
        for t in &self.targets {
            for g in &t.tpgs {
                if g.addresses.iter().any(|a| local_addrs.contains(&a.ip())) {
                    return Ok(g.host.clone());
                }
            }
        }
        let short = hostname.split('.').next().unwrap_or(hostname);
        hosts
            .iter()
            .find(|h| h.as_str() == hostname || h.as_str() == short || h.split('.').next() == Some(short))
            .cloned()
            .ok_or_else(|| {
                err(format!(
                    "this machine ({hostname}) is none of the gateways ({}) and has none of their portal addresses: use --host",
                    hosts.join(", ")
                ))
            })
    }
}

/// Drops every `#` to the end of its line, as lrbd's `strip_comments` did, except inside a
/// JSON string (lrbd cut there too, breaking a CHAP secret with a `#` in it).
pub fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped, mut comment) = (false, false, false);
    for c in text.chars() {
        if comment {
            if c == '\n' {
                comment = false;
                out.push(c);
            }
            continue;
        }
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if c == '#' {
            comment = true;
            continue;
        }
        out.push(c);
    }
    out
}

/// This machine's host name (gethostname(2)).
pub fn local_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if r != 0 {
        return String::new();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The IP addresses configured on this machine's interfaces (getifaddrs(3)).
pub fn local_addresses() -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a linked list that we walk and then free exactly once.
    unsafe {
        if libc::getifaddrs(&mut ifap) != 0 {
            return out;
        }
        let mut cur = ifap;
        while !cur.is_null() {
            let a = (*cur).ifa_addr;
            if !a.is_null() {
                match (*a).sa_family as i32 {
                    libc::AF_INET => {
                        let sin = &*(a as *const libc::sockaddr_in);
                        out.push(std::net::IpAddr::V4(std::net::Ipv4Addr::from(
                            u32::from_be(sin.sin_addr.s_addr),
                        )));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(a as *const libc::sockaddr_in6);
                        out.push(std::net::IpAddr::V6(std::net::Ipv6Addr::from(
                            sin6.sin6_addr.s6_addr,
                        )));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(ifap);
    }
    out
}

#[cfg(test)]
mod tests;
