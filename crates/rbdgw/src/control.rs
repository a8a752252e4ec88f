//! The local control socket of a running gateway (`serve --control PATH`; the systemd unit
//! uses /run/rbdgw/<host>.sock): what `rbdgw drain` and `undrain` talk to. One request line
//! per connection — `drain`, `undrain`, `progress` — answered with one line of JSON. Only
//! root reaches it (mode 0600); what a connection can hold is bounded anyway (a short line, 5 s,
//! four at a time).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use gateway::target::Gateway;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

const REQUEST_MAX: u64 = 64;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONCURRENT: usize = 4;

/// The default socket of host `host`.
pub fn default_path(host: &str) -> PathBuf {
    Path::new("/run/rbdgw").join(format!("{host}.sock"))
}

/// Listens on `path` (replacing a stale socket, refusing to take a live one's place), then
/// serves in the background until the process ends.
pub fn serve(path: &Path, gw: Arc<Gateway>) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "control socket {} is in use: another gateway of this host runs here",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot listen on control socket {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(path = %path.display(), "control socket (rbdgw drain / undrain)");
    let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENT));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let gw = gw.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &gw)).await;
            });
        }
    });
    Ok(())
}

async fn answer(stream: UnixStream, gw: &Gateway) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    BufReader::new(rd.take(REQUEST_MAX))
        .read_line(&mut line)
        .await?;
    let reply = match line.trim() {
        "drain" => {
            gw.set_draining(true);
            json!({"ok": true})
        }
        "undrain" => {
            gw.set_draining(false);
            json!({"ok": true})
        }
        "progress" => {
            let held: Vec<_> = gw
                .still_held()
                .into_iter()
                .map(|(target, lun, lock, owner)| {
                    json!({"target": target, "lun": lun, "write_lock": lock, "alua_owner": owner})
                })
                .collect();
            json!({"ok": true, "host": gw.host, "draining": gw.is_draining(), "held": held})
        }
        other => json!({"ok": false, "error": format!("unknown request {other:?}")}),
    };
    wr.write_all(format!("{reply}\n").as_bytes()).await
}

/// Sends one request to the socket at `path` and returns the reply.
async fn request(path: &Path, what: &str) -> anyhow::Result<serde_json::Value> {
    let mut s = UnixStream::connect(path).await.with_context(|| {
        format!(
            "connecting to {} (is the gateway running, with --control?)",
            path.display()
        )
    })?;
    s.write_all(format!("{what}\n").as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).await?;
    let v: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("a bad reply: {line:?}"))?;
    if v["ok"] != true {
        bail!("the gateway refused {what}: {}", v["error"]);
    }
    Ok(v)
}

/// `rbdgw drain`: asks the gateway to hand its LUs over, then waits (up to `wait`) until it
/// holds none; false when some are still held then (the gateway stays drained).
pub async fn drain(path: &Path, wait: Duration) -> anyhow::Result<bool> {
    request(path, "drain").await?;
    let t0 = tokio::time::Instant::now();
    let mut last = usize::MAX;
    loop {
        let p = request(path, "progress").await?;
        let held = p["held"].as_array().cloned().unwrap_or_default();
        if held.is_empty() {
            println!(
                "{}: drained in {:.1} s: every LU is owned and written by another gateway; \
                 stopping it is harmless now",
                p["host"].as_str().unwrap_or("?"),
                t0.elapsed().as_secs_f64()
            );
            return Ok(true);
        }
        if held.len() != last {
            println!("{} LUs still held here…", held.len());
            last = held.len();
        }
        if t0.elapsed() >= wait {
            println!(
                "not drained after {} s; still held (no other live gateway to take them?):",
                wait.as_secs()
            );
            for h in held {
                println!(
                    "  {} LUN {}: write lock {}, ALUA owner {}",
                    h["target"].as_str().unwrap_or("?"),
                    h["lun"],
                    h["write_lock"],
                    h["alua_owner"]
                );
            }
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `rbdgw undrain`.
pub async fn undrain(path: &Path) -> anyhow::Result<()> {
    request(path, "undrain").await?;
    println!("undrained: the gateway serves again and takes its own LUs back");
    Ok(())
}
