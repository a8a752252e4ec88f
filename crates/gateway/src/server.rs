//! Listening on this host's portals; graceful shutdown (mini-redis' `server.rs` +
//! `shutdown.rs`): a watch channel tells every connection, which asks its initiator to log out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::target::Gateway;

/// Upper bound on concurrent connections per gateway.
const MAX_CONNECTIONS: usize = 1024;

/// Bound listeners, ready to serve.
pub struct Server {
    gateway: Arc<Gateway>,
    listeners: Vec<(SocketAddr, TcpListener)>,
}

impl Server {
    /// Binds every portal address; any failure is reported before anything is served.
    pub async fn bind(gateway: Gateway) -> anyhow::Result<Server> {
        let mut listeners = Vec::new();
        for addr in gateway.listen_addresses() {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on portal {addr}"))?;
            listeners.push((addr, l));
        }
        Ok(Server {
            gateway: Arc::new(gateway),
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

    /// Serves until `stop` resolves; then asks initiators to log out and waits up to `grace`.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>, grace: Duration) {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut accept_tasks = JoinSet::new();
        let connections = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
        for (addr, listener) in self.listeners {
            info!(portal = %addr, host = %self.gateway.host, "listening");
            let gw = self.gateway.clone();
            let rx = shutdown_rx.clone();
            let limit = limit.clone();
            let conns = connections.clone();
            accept_tasks.spawn(async move {
                loop {
                    let (stream, peer) = match listener.accept().await {
                        Ok(x) => x,
                        Err(e) => {
                            warn!("accept on {addr} failed: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        warn!(%peer, "too many connections; refusing");
                        continue;
                    };
                    let gw = gw.clone();
                    let rx = rx.clone();
                    conns.lock().await.spawn(async move {
                        crate::connection::serve(stream, gw, addr, rx).await;
                        drop(permit);
                    });
                }
            });
        }
        stop.await;
        info!("shutting down: asking initiators to log out");
        accept_tasks.abort_all();
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
        info!("stopped");
    }
}
