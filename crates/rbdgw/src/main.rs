//! `rbdgw`: the command line. Errors are reported with their context and a non-zero exit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gateway::config::{local_addresses, local_hostname, Config};
use gateway::server::Server;
use gateway::target::{CephOptions, Gateway};

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

#[derive(Subcommand)]
enum Command {
    /// Serve this host's part of the config until SIGTERM or SIGINT.
    Serve {
        /// The shared config (lrbd JSON format).
        #[arg(long)]
        config: PathBuf,
        /// The gateway host to serve (default: the host whose portal addresses are on this
        /// machine, else this machine's name).
        #[arg(long)]
        host: Option<String>,
        /// Ceph configuration for rbd images (monitors, auth, keyring).
        #[arg(long, default_value = "/etc/ceph/ceph.conf")]
        ceph_conf: String,
        /// Ceph client id (client.ID); default: admin.
        #[arg(long)]
        ceph_id: Option<String>,
    },
    /// Print what a host would serve: targets, TPGs, portals, LUNs, auth.
    Plan {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        host: Option<String>,
    },
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

fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn load(config: &Path, host: Option<&str>) -> anyhow::Result<(Config, String)> {
    let cfg = Config::load(config)?;
    let host = cfg.select_host(host, &local_addresses(), &local_hostname())?;
    Ok((cfg, host))
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn serve(config: &Path, host: Option<&str>, ceph: &CephOptions) -> anyhow::Result<()> {
    let (cfg, host) = load(config, host)?;
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let gw = Gateway::open(cfg, &host, ceph).await?;
    let server = Server::bind(gw).await?;
    tracing::info!(host = %host, "serving");
    server.run(termination(), Duration::from_secs(5)).await;
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
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("config.json");
    std::fs::write(&path, demo_config(dir, port))
        .with_context(|| format!("writing {}", path.display()))?;
    let cfg = Config::load(&path)?;
    let mut servers = Vec::new();
    for host in ["gw1", "gw2"] {
        let gw = Gateway::open(cfg.clone(), host, &CephOptions::default()).await?;
        servers.push(Server::bind(gw).await?);
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
    termination().await;
    let _ = stop_tx.send(());
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rbdgw: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve {
                config,
                host,
                ceph_conf,
                ceph_id,
            } => {
                serve(
                    &config,
                    host.as_deref(),
                    &CephOptions {
                        conf: ceph_conf,
                        id: ceph_id,
                    },
                )
                .await
            }
            Command::Plan { config, host } => {
                let (cfg, host) = load(&config, host.as_deref())?;
                print!("{}", gateway::plan::render(&cfg, &host));
                Ok(())
            }
            Command::Demo { dir, port } => demo(&dir, port).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rbdgw: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
