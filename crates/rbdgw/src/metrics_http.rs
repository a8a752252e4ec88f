//! `--metrics ADDR`: the Prometheus endpoint, `GET /metrics` in the text format (0.0.4).
//! Anyone who reaches the address may scrape it, so what a client can hold is bounded: a few
//! connections at a time, headers within 5 s, one request per connection, 10 s in all.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gateway::admission::Admission;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

/// Scrapes served at once; a connection beyond them is closed.
const CONCURRENT: usize = 8;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Listens on `addr` (an error now when it cannot), then serves in the background.
pub async fn serve(addr: SocketAddr, admission: Arc<Admission>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    tracing::info!(%addr, "metrics at http://{addr}/metrics");
    let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENT));
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // (Out of descriptors: the connection limits' business; wait a moment.)
                    tracing::warn!("metrics endpoint: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "metrics endpoint busy: connection closed");
                continue;
            };
            let admission = admission.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let service = hyper::service::service_fn(move |req| {
                    let admission = admission.clone();
                    async move { Ok::<_, Infallible>(answer(&req, &admission)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(%peer, "metrics endpoint: {e}"),
                    Err(_) => tracing::debug!(%peer, "metrics endpoint: connection too slow"),
                }
            });
        }
    });
    Ok(())
}

fn answer<B>(req: &Request<B>, admission: &Admission) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: Vec<u8>| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = content_type.parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            b"GET /metrics\n".to_vec(),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let m = gateway::metrics::metrics();
            let (connections, sessions, discovery) = admission.open();
            m.connections.set(connections as i64);
            m.sessions
                .with_label_values(&["normal"])
                .set(sessions as i64);
            m.sessions
                .with_label_values(&["discovery"])
                .set(discovery as i64);
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                m.render(),
            )
        }
        "/" => reply(
            StatusCode::OK,
            "text/plain",
            b"rbdgw: metrics at /metrics\n".to_vec(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
    }
}
