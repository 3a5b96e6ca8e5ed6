//! The HTTP API: `/healthz`, `/readyz`, `/metrics`.
//!
//! It binds loopback by default (`[api] address`), serves no record data, and
//! runs on the same runtime as the pipeline but never waits on it: a probe is
//! answered even when every sink is blocked.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Shared readiness state: the pipeline is up and no sink reports a
/// permanent error.
#[derive(Debug, Default)]
pub struct Health {
    pub ready: AtomicBool,
    sinks: std::sync::Mutex<std::collections::BTreeMap<String, bool>>,
}

impl Health {
    pub fn set_sink(&self, id: &str, ok: bool) {
        if let Ok(mut m) = self.sinks.lock() {
            m.insert(id.to_string(), ok);
        }
    }

    /// Sinks that report a problem.
    pub fn failing_sinks(&self) -> Vec<String> {
        self.sinks
            .lock()
            .map(|m| m.iter().filter(|(_, ok)| !**ok).map(|(k, _)| k.clone()).collect())
            .unwrap_or_default()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.failing_sinks().is_empty()
    }
}

/// Binds now (so a bad address fails start-up) and serves in the background.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "api accept failed");
                        continue;
                    }
                },
                _ = stop.cancelled() => break,
            };
            let metrics = metrics.clone();
            let health = health.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let metrics = metrics.clone();
                    let health = health.clone();
                    async move { Ok::<_, Infallible>(route(req, &metrics, &health)) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    Ok(local)
}

fn route<B>(req: Request<B>, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" => {
            if health.is_ready() {
                (StatusCode::OK, "text/plain", "ready\n".to_string())
            } else {
                let failing = health.failing_sinks();
                let body = if failing.is_empty() {
                    "not ready\n".to_string()
                } else {
                    format!("not ready: failing sinks: {}\n", failing.join(", "))
                };
                (StatusCode::SERVICE_UNAVAILABLE, "text/plain", body)
            }
        }
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".to_string()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}
