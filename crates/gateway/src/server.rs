//! Listening on this host's portals; graceful shutdown (mini-redis' `server.rs` +
//! `shutdown.rs`): a watch channel tells every connection, which asks its initiator to log out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};
use tracing::{error, info, warn};

use crate::admission::{Admission, Limits};
use crate::target::Gateway;

/// Bound listeners, ready to serve.
pub struct Server {
    gateway: Arc<Gateway>,
    admission: Arc<Admission>,
    listeners: Vec<(SocketAddr, TcpListener)>,
}

impl Server {
    /// Binds every portal address; any failure is reported before anything is served.
    pub async fn bind(gateway: Gateway, limits: Limits) -> anyhow::Result<Server> {
        let mut listeners = Vec::new();
        for addr in gateway.listen_addresses() {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on portal {addr}"))?;
            listeners.push((addr, l));
        }
        Ok(Server {
            gateway: Arc::new(gateway),
            admission: Arc::new(Admission::new(limits)),
            listeners,
        })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(_, l)| l.local_addr().ok())
            .collect()
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// Serves until `stop` resolves; then asks initiators to log out and waits up to `grace`.
    /// A config change that adds portal addresses here starts listening on them; one that
    /// drops addresses stops listening there (connections made through them go on).
    pub async fn run(self, stop: impl std::future::Future<Output = ()>, grace: Duration) {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let accept = Accept {
            gateway: self.gateway.clone(),
            shutdown: shutdown_rx,
            admission: self.admission.clone(),
            connections: Arc::new(tokio::sync::Mutex::new(JoinSet::new())),
        };
        let connections = accept.connections.clone();
        let mut listening: HashMap<SocketAddr, AbortHandle> = HashMap::new();
        for (addr, listener) in self.listeners {
            listening.insert(addr, accept.spawn(addr, listener));
        }
        let mut changes = self.gateway.subscribe();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                Ok(()) = changes.changed() => {
                    accept.reconcile(&mut listening).await;
                }
            }
        }
        info!("shutting down: asking initiators to log out");
        for (_, h) in listening {
            h.abort();
        }
        let _ = shutdown_tx.send(true);
        let mut conns = connections.lock().await;
        let drained =
            tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!(
                "{} connection(s) still open after {}s; closing them",
                conns.len(),
                grace.as_secs()
            );
            conns.abort_all();
        }
        // Bounded: without its cluster a release never completes; the images' close (with
        // its own patience) comes next either way.
        match tokio::time::timeout(RELEASE_PATIENCE, self.gateway.release_locks_at_stop()).await {
            Ok(released) => info!(write_locks_released = released, "stopped"),
            Err(_) => warn!(
                "stopped; the write locks were not all released within {} s (cluster out of \
                 reach?)",
                RELEASE_PATIENCE.as_secs()
            ),
        }
    }
}

/// How long a stopping gateway waits for its write locks to be released.
const RELEASE_PATIENCE: Duration = Duration::from_secs(5);

/// What every accept loop shares.
struct Accept {
    gateway: Arc<Gateway>,
    shutdown: watch::Receiver<bool>,
    admission: Arc<Admission>,
    connections: Arc<tokio::sync::Mutex<JoinSet<()>>>,
}

impl Accept {
    /// Accepts connections on `listener` until aborted.
    fn spawn(&self, addr: SocketAddr, listener: TcpListener) -> AbortHandle {
        info!(portal = %addr, host = %self.gateway.host, "listening");
        let gw = self.gateway.clone();
        let rx = self.shutdown.clone();
        let admission = self.admission.clone();
        let conns = self.connections.clone();
        tokio::spawn(async move {
            let mut said: Option<tokio::time::Instant> = None;
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors, the connection waits in the backlog; said once
                        // every 10 s, with what to do about it.
                        if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                            said = Some(tokio::time::Instant::now());
                            let out_of_fds =
                                matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                            if out_of_fds {
                                warn!(
                                    "accept on {addr} failed: {e}: out of file descriptors; \
                                     raise the limit (systemd: LimitNOFILE=) or lower \
                                     --max-connections"
                                );
                            } else {
                                warn!("accept on {addr} failed: {e}");
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // (Refusals are logged and counted there.)
                let Some(slot) = admission.connect(peer.ip()) else {
                    continue;
                };
                let gw = gw.clone();
                let rx = rx.clone();
                let admission = admission.clone();
                let mut set = conns.lock().await;
                // Finished connections' entries go now, not at shutdown: a long-lived
                // gateway accepts without end.
                while set.try_join_next().is_some() {}
                set.spawn(async move {
                    crate::connection::serve(stream, gw, addr, rx, admission, slot).await;
                });
            }
        })
        .abort_handle()
    }

    /// Listens on exactly the portal addresses the current config gives this host. An
    /// address that cannot be bound is logged and tried again at the next change.
    async fn reconcile(&self, listening: &mut HashMap<SocketAddr, AbortHandle>) {
        let want = self.gateway.listen_addresses();
        listening.retain(|addr, h| {
            let keep = want.contains(addr);
            if !keep {
                info!(portal = %addr, "no longer a portal of this host: not listening there");
                h.abort();
            }
            keep
        });
        for addr in want {
            if listening.contains_key(&addr) {
                continue;
            }
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    listening.insert(addr, self.spawn(addr, l));
                }
                Err(e) => error!(portal = %addr, "cannot listen on the new portal: {e}"),
            }
        }
    }
}
