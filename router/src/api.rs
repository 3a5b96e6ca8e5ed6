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

/// Shared health state. Ready: the pipeline is up, no sink reports a
/// permanent error, deliveries are not stalled, and every source can save
/// its checkpoints. Healthy (live): no
/// pipeline task has stopped on its own and deliveries have not been stalled
/// for so long that only a restart can help (see `watchdog.rs`).
#[derive(Debug, Default)]
pub struct Health {
    pub ready: AtomicBool,
    sinks: std::sync::Mutex<std::collections::BTreeMap<String, bool>>,
    /// Set by the topology once the pipeline winds down: tasks ending then
    /// are expected.
    pub stopping: AtomicBool,
    /// Transforms and sinks whose task panicked while running.
    stopped: std::sync::Mutex<Vec<String>>,
    /// Written by the watchdog.
    stall: std::sync::Mutex<Stall>,
    /// Sources whose checkpoint file cannot be saved (written by the
    /// watchdog). Not ready: a restart now would repeat everything
    /// delivered since the last good save, and the disk needs a look.
    checkpoints: std::sync::Mutex<Vec<CheckpointFailing>>,
}

/// A source whose checkpoint saves fail, as the watchdog last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointFailing {
    pub component: String,
    /// Since the first failed save.
    pub seconds: u64,
    /// The last failure's reason (`no_space`, `read_only`, ...).
    pub reason: &'static str,
}

/// What the watchdog last saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stall {
    /// Seconds records have waited with no acknowledgement.
    pub seconds: u64,
    pub waiting: i64,
    /// Past `api.stall_timeout`: not ready.
    pub stalled: bool,
    /// Past `api.wedged_timeout`: not healthy.
    pub wedged: bool,
}

/// Reports a pipeline task that panicked to [`Health`]: dropped while the
/// panic unwinds. (A task that returns early drops its inbox, so its
/// upstream's next send fails and the source stops the process with an
/// error; a panic is caught the same way, but only at that next send.)
pub struct TaskGuard {
    id: String,
    health: Arc<Health>,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.health.stopping.load(Ordering::Acquire) {
            tracing::error!(component = %self.id, "a pipeline component panicked; /healthz now fails");
            if let Ok(mut s) = self.health.stopped.lock() {
                s.push(std::mem::take(&mut self.id));
            }
        }
    }
}

impl Health {
    /// A guard for the task of component `id` (see [`TaskGuard`]).
    pub fn guard(self: &Arc<Self>, id: &str) -> TaskGuard {
        TaskGuard {
            id: id.to_string(),
            health: self.clone(),
        }
    }

    pub fn set_stall(&self, stall: Stall) {
        if let Ok(mut s) = self.stall.lock() {
            *s = stall;
        }
    }

    pub fn stall(&self) -> Stall {
        self.stall.lock().map(|s| *s).unwrap_or_default()
    }

    pub fn set_checkpoints(&self, failing: Vec<CheckpointFailing>) {
        if let Ok(mut c) = self.checkpoints.lock() {
            *c = failing;
        }
    }

    /// Sources whose checkpoints cannot be saved now.
    pub fn failing_checkpoints(&self) -> Vec<CheckpointFailing> {
        self.checkpoints.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Why the process should be restarted, if it should.
    pub fn unhealthy(&self) -> Option<String> {
        let stopped = self.stopped.lock().map(|s| s.clone()).unwrap_or_default();
        if !stopped.is_empty() {
            return Some(format!("component(s) panicked: {}", stopped.join(", ")));
        }
        let stall = self.stall();
        stall.wedged.then(|| {
            format!(
                "no delivery for {} s with {} record(s) waiting",
                stall.seconds, stall.waiting
            )
        })
    }

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
        self.ready.load(Ordering::Acquire)
            && self.failing_sinks().is_empty()
            && !self.stall().stalled
            && self.failing_checkpoints().is_empty()
            && self.unhealthy().is_none()
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

/// Longest line the TCP health check reads before it answers by closing.
const HEALTH_TCP_MAX: usize = 64 * 1024;

/// The FireLens health check's `tcp` input (`[api] health_tcp`). Why here and
/// not a source: its records (`{"health": "check"}`) go nowhere (ECS routes
/// them to `null`), so a source, its batches and acks would be machinery for
/// nothing; what the check needs is a port that accepts a connection and the
/// line, as Fluent Bit's `in_tcp` does. Each connection is read up to the
/// first newline, end of input, 64 KiB or 10 s, then closed, so
/// `echo '{"health": "check"}' | nc 127.0.0.1 8877` exits 0 with any `nc`.
/// Binds now (a taken port fails start-up) on the address configured.
pub async fn serve_health_tcp(addr: SocketAddr, stop: CancellationToken) -> std::io::Result<SocketAddr> {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "health tcp accept failed");
                        continue;
                    }
                },
                _ = stop.cancelled() => break,
            };
            tokio::spawn(async move {
                let read = async {
                    let mut buf = [0u8; 4096];
                    let mut total = 0usize;
                    while total < HEALTH_TCP_MAX {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                total += n;
                                if buf[..n].contains(&b'\n') {
                                    break;
                                }
                            }
                        }
                    }
                };
                let _ = tokio::time::timeout(std::time::Duration::from_secs(10), read).await;
            });
        }
    });
    Ok(local)
}

fn route<B>(req: Request<B>, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match req.uri().path() {
        "/healthz" => match health.unhealthy() {
            None => (StatusCode::OK, "text/plain", "ok\n".to_string()),
            Some(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("unhealthy: {why}\n"),
            ),
        },
        "/readyz" => {
            if health.is_ready() {
                (StatusCode::OK, "text/plain", "ready\n".to_string())
            } else {
                let mut why = Vec::new();
                let failing = health.failing_sinks();
                if !failing.is_empty() {
                    why.push(format!("failing sinks: {}", failing.join(", ")));
                }
                let stall = health.stall();
                if stall.stalled {
                    why.push(format!(
                        "no delivery for {} s with {} record(s) waiting",
                        stall.seconds, stall.waiting
                    ));
                }
                for c in health.failing_checkpoints() {
                    why.push(format!(
                        "checkpoints of source {} not saved for {} s ({})",
                        c.component, c.seconds, c.reason
                    ));
                }
                if let Some(u) = health.unhealthy() {
                    why.push(u);
                }
                let body = if why.is_empty() {
                    "not ready\n".to_string()
                } else {
                    format!("not ready: {}\n", why.join("; "))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle client does not hold up the next one; a client that sends a
    /// line is closed; so is one that sends more than the bound, no newline.
    #[tokio::test]
    async fn the_health_tcp_port_takes_a_line_and_closes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let stop = CancellationToken::new();
        let addr = serve_health_tcp("127.0.0.1:0".parse().unwrap(), stop.clone())
            .await
            .unwrap();
        let _idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let guard = std::time::Duration::from_secs(60);
        for payload in [b"{\"health\": \"check\"}\n".to_vec(), vec![b'x'; 3 * HEALTH_TCP_MAX]] {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            // The server may close before the whole 192 KiB is written.
            let _ = c.write_all(&payload).await;
            let mut rest = Vec::new();
            let n = tokio::time::timeout(guard, c.read_to_end(&mut rest))
                .await
                .expect("closed by the server")
                .unwrap_or(0);
            assert_eq!(n, 0, "nothing is answered");
        }
        stop.cancel();
    }

    fn get(path: &str, health: &Health) -> (StatusCode, String) {
        let req = Request::builder().uri(path).body(()).unwrap();
        let resp = route(req, &Metrics::new(), health);
        let status = resp.status();
        let body = body_text(resp);
        (status, body)
    }

    fn body_text(resp: Response<Full<Bytes>>) -> String {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let bytes = rt.block_on(resp.into_body().collect()).unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn a_stall_fails_readyz_and_a_wedge_fails_healthz() {
        let health = Health::default();
        health.ready.store(true, Ordering::Release);
        assert_eq!(get("/readyz", &health).0, StatusCode::OK);
        health.set_stall(Stall {
            seconds: 75,
            waiting: 1234,
            stalled: true,
            wedged: false,
        });
        let (status, body) = get("/readyz", &health);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: no delivery for 75 s with 1234 record(s) waiting\n");
        assert_eq!(get("/healthz", &health), (StatusCode::OK, "ok\n".to_string()));
        health.set_stall(Stall {
            seconds: 700,
            waiting: 9,
            stalled: true,
            wedged: true,
        });
        let (status, body) = get("/healthz", &health);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "unhealthy: no delivery for 700 s with 9 record(s) waiting\n");
        health.set_stall(Stall::default());
        assert_eq!(get("/healthz", &health).0, StatusCode::OK);
    }

    #[test]
    fn checkpoints_that_cannot_be_saved_fail_readyz_with_the_source_and_reason() {
        let health = Health::default();
        health.ready.store(true, Ordering::Release);
        health.set_checkpoints(vec![CheckpointFailing {
            component: "app".into(),
            seconds: 12,
            reason: "no_space",
        }]);
        let (status, body) = get("/readyz", &health);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            "not ready: checkpoints of source app not saved for 12 s (no_space)\n"
        );
        // Live all the same: a restart would not give the disk room.
        assert_eq!(get("/healthz", &health).0, StatusCode::OK);
        health.set_checkpoints(Vec::new());
        assert_eq!(get("/readyz", &health), (StatusCode::OK, "ready\n".to_string()));
    }

    #[test]
    fn a_panicked_task_fails_healthz_but_a_finished_one_does_not() {
        let health = Arc::new(Health::default());
        drop(health.guard("done"));
        assert_eq!(get("/healthz", &health).0, StatusCode::OK);
        let h = health.clone();
        let joined = std::thread::spawn(move || {
            let _g = h.guard("cw");
            panic!("boom");
        })
        .join();
        assert!(joined.is_err());
        let (status, body) = get("/healthz", &health);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "unhealthy: component(s) panicked: cw\n");
        // Once the pipeline winds down, ends are expected.
        let health = Arc::new(Health::default());
        health.stopping.store(true, Ordering::Release);
        let h = health.clone();
        let _ = std::thread::spawn(move || {
            let _g = h.guard("cw");
            panic!("boom");
        })
        .join();
        assert_eq!(get("/healthz", &health).0, StatusCode::OK);
    }
}
