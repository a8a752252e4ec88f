//! `rbdgw`: the command line. Errors are reported with their context and a non-zero exit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gateway::admission::Limits;
use gateway::config::store::{self, ConfigSource};
use gateway::config::{local_addresses, local_hostname, Config};
use gateway::server::Server;
use gateway::target::{CephOptions, Gateway};

/// jemalloc for the whole process, librbd's C++ included (Cargo.toml says why).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod config_cmd;
mod control;
mod metrics_http;
mod sd_notify;
use config_cmd::{ConfigAction, Outcome};

#[derive(Parser)]
#[command(
    name = "rbdgw",
    version,
    about = "iSCSI gateway for Ceph RBD images, with multipath high availability"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How to reach the Ceph cluster, like the `rbd` command line.
#[derive(clap::Args, Clone)]
struct CephArgs {
    /// Ceph configuration (monitors, auth, keyring).
    #[arg(long, default_value = "/etc/ceph/ceph.conf", global = true)]
    ceph_conf: String,
    /// Ceph client id (client.ID); default: admin.
    #[arg(long, global = true)]
    ceph_id: Option<String>,
}

impl CephArgs {
    fn options(&self) -> CephOptions {
        CephOptions {
            conf: self.ceph_conf.clone(),
            id: self.ceph_id.clone(),
        }
    }
}

/// What one gateway admits (each refusal is logged and counted).
#[derive(clap::Args, Clone)]
struct LimitArgs {
    /// Open connections of every kind.
    #[arg(long, default_value_t = Limits::default().connections)]
    max_connections: usize,
    /// Connections still logging in, in total.
    #[arg(long, default_value_t = Limits::default().logins)]
    max_logins: usize,
    /// Connections still logging in from one source address.
    #[arg(long, default_value_t = Limits::default().logins_per_source)]
    max_logins_per_source: usize,
    /// Discovery sessions; beyond it the oldest one is closed.
    #[arg(long, default_value_t = Limits::default().discovery_sessions)]
    max_discovery_sessions: usize,
    /// Discovery sessions from one source address; beyond it its oldest one is closed.
    #[arg(long, default_value_t = Limits::default().discovery_per_source)]
    max_discovery_per_source: usize,
    /// Normal sessions, in total; a login beyond it is refused (out of resources).
    #[arg(long, default_value_t = Limits::default().sessions)]
    max_sessions: usize,
    /// Normal sessions of one initiator name, over all targets.
    #[arg(long, default_value_t = Limits::default().sessions_per_initiator)]
    max_sessions_per_initiator: usize,
    /// MiB that all commands together may hold (data-out, data read, queued responses);
    /// beyond it commands are answered TASK SET FULL. At least 64.
    #[arg(long, default_value_t = Limits::default().command_memory >> 20,
          value_parser = clap::value_parser!(u64).range(64..))]
    command_memory_mib: u64,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            connections: self.max_connections,
            logins: self.max_logins,
            logins_per_source: self.max_logins_per_source,
            discovery_sessions: self.max_discovery_sessions,
            discovery_per_source: self.max_discovery_per_source,
            sessions: self.max_sessions,
            sessions_per_initiator: self.max_sessions_per_initiator,
            command_memory: self.command_memory_mib << 20,
            ..Limits::default()
        }
    }
}

fn parse_source(s: &str) -> Result<ConfigSource, String> {
    ConfigSource::parse(s)
}

#[derive(Subcommand)]
enum Command {
    /// Serve this host's part of the config until SIGTERM or SIGINT.
    Serve {
        /// The shared config (lrbd JSON format): a file, or `rados://POOL/OBJECT` (default
        /// `rados://rbd/rbdgw.config`), which is watched and applied live.
        #[arg(long, value_parser = parse_source)]
        config: ConfigSource,
        /// The gateway host to serve (default: the host whose portal addresses are on this
        /// machine, else this machine's name).
        #[arg(long)]
        host: Option<String>,
        /// Serve Prometheus metrics at http://ADDR/metrics (ceph-iscsi used port 9287).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Listen for `rbdgw drain` / `undrain` on this Unix socket (the systemd unit:
        /// /run/rbdgw/<host>.sock).
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
        #[command(flatten)]
        ceph: CephArgs,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// What every gateway of the config is doing, from any host: up or down (and since
    /// when), portals, sessions, and per LUN the ALUA state each gateway reports, the write
    /// lock, the reservation and I/O rates (as the gateways last published them).
    Status {
        #[arg(long, default_value = "rados://rbd/rbdgw.config", value_parser = parse_source)]
        config: ConfigSource,
        /// The documents as published, as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ceph: CephArgs,
    },
    /// Print what a host would serve: targets, TPGs, portals, LUNs, auth.
    Plan {
        #[arg(long, value_parser = parse_source)]
        config: ConfigSource,
        #[arg(long)]
        host: Option<String>,
        /// Print the targetcli commands lrbd would have run on this host instead (to compare
        /// with lrbd's log before switching).
        #[arg(long)]
        lrbd_commands: bool,
        #[command(flatten)]
        ceph: CephArgs,
    },
    /// The shared config: stored in Ceph (what lrbd -f, -o and -W did), checked, compared.
    Config {
        /// Where it lives (`diff` also takes a file).
        #[arg(long, default_value = "rados://rbd/rbdgw.config", value_parser = parse_source, global = true)]
        at: ConfigSource,
        #[command(flatten)]
        ceph: CephArgs,
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Planned maintenance: hand this host's LUs over to the other gateways (their paths
    /// become active/optimized, this one's standby), wait until it holds none, then say that
    /// stopping it is harmless. Exit 1 if some are still held after --wait seconds.
    Drain {
        /// The gateway host (its control socket /run/rbdgw/HOST.sock).
        #[arg(long)]
        host: Option<String>,
        /// The control socket, if not the host's default.
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Back from maintenance: the gateway serves again and takes its own LUs back.
    Undrain {
        #[arg(long)]
        host: Option<String>,
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
    },
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write the manual pages (roff: rbdgw.1 and one per subcommand, rbdgw-serve.1, …) into
    /// DIR, as the Debian package ships them.
    #[command(hide = true)]
    Manpages { dir: PathBuf },
    /// The embedded default: one 1 GiB file image served by two gateways on 127.0.0.1 and
    /// 127.0.0.2.
    Demo {
        /// Where the image and the generated config live.
        #[arg(long, default_value = "/var/tmp/rbdgw-demo")]
        dir: PathBuf,
        /// TCP port of both portals.
        #[arg(long, default_value_t = 3260)]
        port: u16,
    },
}

/// Runs a blocking Ceph call off the runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colours only for a person at a terminal: journald and log files get plain text
    // (https://no-color.org for the rest).
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

/// The config, the host to serve, and the text the config was read from.
async fn load(
    config: &ConfigSource,
    host: Option<&str>,
    ceph: &CephOptions,
) -> anyhow::Result<(Config, String, String)> {
    let (src, c) = (config.clone(), ceph.clone());
    let (cfg, text) = blocking(move || src.load(&c)).await?;
    let host = cfg.select_host(host, &local_addresses(), &local_hostname())?;
    Ok((cfg, host, text))
}

/// Follows the config: on SIGHUP (any source) and, for a config kept in Ceph, on every
/// change its watch announces (and, in case a notify was missed, a re-read each minute), the
/// source is read again, validated and applied; a bad version is logged and the running one
/// kept. New portal addresses are listened on at once (the server follows the gateway).
async fn follow_config(
    gw: std::sync::Arc<Gateway>,
    src: ConfigSource,
    ceph: CephOptions,
    served_text: String,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot catch SIGHUP ({e}); config reloads need a restart");
            None
        }
    };
    let watch = match src.clone() {
        ConfigSource::Rados { pool, object } => {
            let c = ceph.clone();
            match blocking(move || {
                let p = std::sync::Arc::new(store::connect(&c, &pool)?);
                Ok(p.watch(&object)?)
            })
            .await
            {
                Ok(w) => Some(std::sync::Arc::new(w)),
                Err(e) => {
                    tracing::error!(
                        "cannot watch {}: {e:#}; config changes need SIGHUP or a restart",
                        src.name()
                    );
                    None
                }
            }
        }
        ConfigSource::File(_) => None,
    };
    if hup.is_none() && watch.is_none() {
        return;
    }
    let mut last_text = served_text;
    let mut seen = watch.as_ref().map_or(0, |w| w.generation());
    let mut last_read = tokio::time::Instant::now();
    loop {
        let hangup = tokio::select! {
            Some(()) = async { hup.as_mut()?.recv().await } => true,
            _ = tokio::time::sleep(Duration::from_millis(500)), if watch.is_some() => false,
        };
        if hangup {
            tracing::info!("SIGHUP: reading the config again from {}", src.name());
        } else if let Some(w) = &watch {
            if w.is_broken() {
                let w = w.clone();
                if let Err(e) = blocking(move || Ok(w.renew()?)).await {
                    tracing::warn!("renewing the config watch: {e:#}");
                }
            }
            let generation = w.generation();
            if generation == seen && last_read.elapsed() < Duration::from_secs(60) {
                continue;
            }
            seen = generation;
        }
        last_read = tokio::time::Instant::now();
        let (s, c) = (src.clone(), ceph.clone());
        let text = match blocking(move || s.fetch(&c)).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("re-reading the config: {e:#}");
                continue;
            }
        };
        if last_text == text {
            if hangup {
                tracing::info!("the config is unchanged");
            }
            continue;
        }
        let parsed = Config::parse(&src.name(), &text);
        last_text = text;
        let cfg = match parsed {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("the new config is invalid, keeping the running one: {e}");
                continue;
            }
        };
        for w in &cfg.warnings {
            tracing::warn!("{w}");
        }
        match gw.apply(cfg).await {
            Ok(r) => tracing::info!(
                targets_added = ?r.targets_added,
                targets_removed = ?r.targets_removed,
                luns_added = ?r.luns_added,
                luns_removed = ?r.luns_removed,
                portals_added = ?r.new_portals,
                portals_removed = ?r.removed_portals,
                "applied the new config from {}",
                src.name()
            ),
            Err(e) => {
                tracing::error!("applying the new config failed, keeping the running one: {e:#}")
            }
        }
    }
}

/// SIGTERM and SIGINT, caught from the moment this is made: a signal that arrives before
/// anyone waits is held by the streams, not left to its default action (a SIGTERM sent just
/// after READY=1 used to kill the gateway before its handler existed).
struct Termination {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Termination {
    fn catch() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let catch = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot catch {name}, it will stop the gateway abruptly: {e}");
                None
            }
        };
        Termination {
            term: catch(SignalKind::terminate(), "SIGTERM"),
            int: catch(SignalKind::interrupt(), "SIGINT"),
        }
    }

    /// Resolves when SIGTERM or SIGINT arrives (or has arrived).
    async fn arrived(mut self) {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = recv(&mut self.term) => {}
            _ = recv(&mut self.int) => {}
        }
    }
}

async fn serve(
    config: &ConfigSource,
    host: Option<&str>,
    ceph: &CephOptions,
    limits: Limits,
    metrics: Option<std::net::SocketAddr>,
    control: Option<&Path>,
) -> anyhow::Result<()> {
    let termination = Termination::catch();
    let (cfg, host, text) = load(config, host, ceph).await?;
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let gw = Gateway::open(cfg, &host, ceph).await?;
    let server = Server::bind(gw, limits).await?;
    if let Some(addr) = metrics {
        metrics_http::serve(addr, server.admission().clone()).await?;
    }
    if let Some(path) = control {
        control::serve(path, server.gateway().clone())?;
    }
    gateway::status::spawn_publisher(server.gateway().clone(), ceph.clone());
    tracing::info!(host = %host, config = %config.name(), "serving");
    // Every portal listens (connections queue from here on): ready for systemd (Type=notify).
    sd_notify::notify(&format!(
        "READY=1\nSTATUS=serving {host} on {} portal addresses",
        server.gateway().listen_addresses().len()
    ));
    tokio::spawn(follow_config(
        server.gateway().clone(),
        config.clone(),
        ceph.clone(),
        text,
    ));
    let stop = async {
        termination.arrived().await;
        sd_notify::notify("STOPPING=1\nSTATUS=logging initiators out, closing images");
    };
    server.run(stop, Duration::from_secs(5)).await;
    Ok(())
}

fn demo_config(dir: &Path, port: u16) -> String {
    let image = dir.join("demo.img");
    let doc = serde_json::json!({
        "auth": [{"target": "iqn.2026-11.org.rbdgw:demo", "authentication": "none"}],
        "targets": [{"target": "iqn.2026-11.org.rbdgw:demo",
                     "hosts": [{"host": "gw1", "portal": "portal1"}, {"host": "gw2", "portal": "portal2"}]}],
        "portals": [{"name": "portal1", "addresses": [format!("127.0.0.1:{port}")]},
                    {"name": "portal2", "addresses": [format!("127.0.0.2:{port}")]}],
        "pools": [{"pool": "rbd", "gateways": [{"target": "iqn.2026-11.org.rbdgw:demo", "tpg": [
            {"image": "demo", "backstore": "file", "path": image.display().to_string(), "size": "1G"}]}]}]
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

async fn demo(dir: &Path, port: u16) -> anyhow::Result<()> {
    let termination = Termination::catch();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("config.json");
    std::fs::write(&path, demo_config(dir, port))
        .with_context(|| format!("writing {}", path.display()))?;
    let cfg = Config::load(&path)?;
    let mut servers = Vec::new();
    for host in ["gw1", "gw2"] {
        let gw = Gateway::open(cfg.clone(), host, &CephOptions::default()).await?;
        servers.push(Server::bind(gw, Limits::default()).await?);
    }
    println!(
        "rbdgw demo: target iqn.2026-11.org.rbdgw:demo, LUN 0 = {} (1 GiB, sparse)\n\
         gateway gw1 on 127.0.0.1:{port} (TPG 1), gateway gw2 on 127.0.0.2:{port} (TPG 2); config {}\n\n\
         From this machine (open-iscsi):\n  \
         iscsiadm -m discovery -t sendtargets -p 127.0.0.1:{port}\n  \
         iscsiadm -m node -T iqn.2026-11.org.rbdgw:demo -l\n  \
         multipath -ll        # one device, two paths\n\n\
         Or with libiscsi: iscsi-inq iscsi://127.0.0.1:{port}/iqn.2026-11.org.rbdgw:demo/0\n\
         Stop with Ctrl-C.",
        dir.join("demo.img").display(),
        path.display()
    );
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut tasks = Vec::new();
    for s in servers {
        let mut rx = stop_tx.subscribe();
        tasks.push(tokio::spawn(s.run(
            async move {
                let _ = rx.recv().await;
            },
            Duration::from_secs(5),
        )));
    }
    termination.arrived().await;
    let _ = stop_tx.send(());
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// The control socket named, or the host's default, or the only one in /run/rbdgw.
fn control_path(host: Option<&str>, control: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = control {
        return Ok(p);
    }
    if let Some(h) = host {
        return Ok(control::default_path(h));
    }
    let socks: Vec<PathBuf> = std::fs::read_dir("/run/rbdgw")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect()
        })
        .unwrap_or_default();
    match socks.as_slice() {
        [one] => Ok(one.clone()),
        [] => anyhow::bail!("no gateway control socket in /run/rbdgw: use --host or --control"),
        many => anyhow::bail!(
            "several gateways run here ({}): use --host",
            many.iter()
                .filter_map(|p| p.file_stem()?.to_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Writes `name.1` for `cmd`, then `name-SUB.1` for each of its visible subcommands, down the
/// tree (the pages clap_mangen's SEE ALSO-style list of subcommands refers to).
fn write_manpages(cmd: &clap::Command, name: &str, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let page = cmd.clone().name(name.to_string());
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        write_manpages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard one; returns the soft limit before and
/// after.
/// Every connection, image and RADOS client takes descriptors, and the 1,024 soft limit a
/// service gets by default ran out at about 84 RBD LUNs (librados then threw a C++ exception
/// through the FFI boundary and the process aborted); the hard limit is what the
/// administrator allows (systemd: `LimitNOFILE=`).
fn raise_open_file_limit() -> std::io::Result<(u64, u64)> {
    let was;
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        was = l.rlim_cur;
        if l.rlim_cur < l.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: l.rlim_max,
                rlim_max: l.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            l = raised;
        }
    }
    Ok((was, l.rlim_cur))
}

/// Says how many descriptors the gateway may open, and warns when the connection limit
/// alone could take most of them (then logins fail with "too many open files" before the
/// limit refuses them).
fn report_open_file_limit(limits: &Limits) {
    match raise_open_file_limit() {
        Ok((was, soft)) => {
            if was < soft {
                tracing::info!("open files: limit raised from {was} to {soft}");
            } else {
                tracing::info!("open files: limit {soft}");
            }
            if limits.connections as u64 + 256 > soft {
                tracing::warn!(
                    "--max-connections {} leaves little of the open-file limit {soft} for \
                     images and cluster connections: raise the limit (systemd: LimitNOFILE=) \
                     or lower --max-connections",
                    limits.connections
                );
            }
        }
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
}

/// How long an exit waits for the RBD images to close (their locks released).
const CLOSE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking threads (opening images, up to 32 at once; file I/O) end after
        // 2 s idle instead of 10: a gateway that has opened a thousand images is back to its
        // steady thread count right after. (Their number is not capped: a pool whose opens
        // hang must not hold back other LUNs' file I/O and metadata.)
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rbdgw: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // A command's "no" (an invalid file to `config check`, changes to `config diff`), and the
    // status of a failure.
    let mut negative = false;
    let mut failure_status = 1u8;
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve {
                config,
                host,
                metrics,
                control,
                ceph,
                limits,
            } => {
                let limits = limits.limits();
                report_open_file_limit(&limits);
                let c = ceph.options();
                serve(
                    &config,
                    host.as_deref(),
                    &c,
                    limits,
                    metrics,
                    control.as_deref(),
                )
                .await
            }
            Command::Status { config, json, ceph } => {
                let c = ceph.options();
                let (src, c2) = (config.clone(), c.clone());
                let (cfg, _) = blocking(move || src.load(&c2)).await?;
                let cfg2 = cfg.clone();
                let found = blocking(move || Ok(gateway::status::collect(&cfg2, &c))).await?;
                if json {
                    let doc: serde_json::Map<String, serde_json::Value> = found
                        .iter()
                        .map(|(h, st)| {
                            let v = match st {
                                Ok(g) => serde_json::json!({
                                    "up": gateway::status::is_up(g), "published": g}),
                                Err(why) => serde_json::json!({"up": false, "error": why}),
                            };
                            (h.clone(), v)
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&doc)?);
                } else {
                    print!("{}", gateway::status::render(&cfg, &found));
                }
                if found
                    .iter()
                    .any(|(_, st)| !st.as_ref().is_ok_and(gateway::status::is_up))
                {
                    // Some gateway is down or unknown: scripts and monitoring can tell.
                    negative = true;
                }
                Ok(())
            }
            Command::Drain {
                host,
                control,
                wait,
            } => {
                let path = control_path(host.as_deref(), control)?;
                if !control::drain(&path, Duration::from_secs(wait)).await? {
                    negative = true;
                }
                Ok(())
            }
            Command::Undrain { host, control } => {
                control::undrain(&control_path(host.as_deref(), control)?).await
            }
            Command::Plan {
                config,
                host,
                lrbd_commands,
                ceph,
            } => {
                let (cfg, host, _) = load(&config, host.as_deref(), &ceph.options()).await?;
                if lrbd_commands {
                    print!("{}", gateway::lrbd_log::commands(&cfg, &host));
                } else {
                    print!("{}", gateway::plan::render(&cfg, &host));
                }
                Ok(())
            }
            Command::Config { at, ceph, action } => {
                // diff(1)'s statuses for `diff`: 1 when the files differ, 2 on trouble.
                failure_status = if matches!(action, ConfigAction::Diff { .. }) {
                    2
                } else {
                    1
                };
                match config_cmd::run(at, ceph.options(), action).await? {
                    Outcome::Done => Ok(()),
                    Outcome::Negative => {
                        negative = true;
                        Ok(())
                    }
                }
            }
            Command::Completions { shell } => {
                use clap::CommandFactory;
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "rbdgw",
                    &mut std::io::stdout(),
                );
                Ok(())
            }
            Command::Manpages { dir } => {
                use clap::CommandFactory;
                write_manpages(&Cli::command(), "rbdgw", &dir)
            }
            Command::Demo { dir, port } => {
                report_open_file_limit(&Limits::default());
                demo(&dir, port).await
            }
        }
    });
    // What the runtime still held (LUs of tasks that had not finished) is let go of here;
    // their images close on closing threads, which the exit waits for: a released lock lets
    // another gateway take it at once, where one left behind must be broken (fenced).
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    let open = backstore::rbd::wait_for_closes(CLOSE_PATIENCE);
    if open > 0 {
        tracing::warn!(
            "{open} RBD images did not close within {} s (cluster out of reach?): exiting \
             anyway; another gateway breaks their locks (fencing this client) to take them",
            CLOSE_PATIENCE.as_secs()
        );
    }
    let status = match result {
        Ok(()) if negative => 1,
        Ok(()) => 0,
        Err(e) => {
            eprintln!("rbdgw: {e:#}");
            failure_status
        }
    };
    leave(status)
}

/// Ends the process without running C++ static destructors. librados and librbd tear down
/// their globals at exit; a thread of theirs still running then (a close or an open waiting
/// for a cluster out of reach, past the patience above) met them destroyed and aborted the
/// process (`terminate called after throwing an instance of 'boost::bad_get'`, seen at the
/// exit of a test process that had passed): a gateway that stopped as asked would dump core.
/// Nothing of ours needs an exit handler: the log goes to unbuffered stderr, and stdout is
/// flushed here.
fn leave(status: u8) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process at once; nothing runs after it.
    unsafe { libc::_exit(i32::from(status)) }
}
