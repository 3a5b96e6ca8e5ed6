//! The Fluent forward source: a server for the forward protocol v1 that the
//! Docker `fluentd`/`awsfirelens` log drivers, Fluent Bit and Fluentd speak.
//!
//! Design constraints:
//! - **The client is the queue.** A frame's `chunk` is answered with
//!   `{"ack": chunk}` only once every batch holding its records was made
//!   durable by every sink (the batches' `AckToken`s settled, none failed).
//!   A failed or unanswered chunk is resent by the client: at least once,
//!   with nothing kept on our side. Without `chunk` the client asked for no
//!   guarantee and gets none beyond "read".
//! - **Bounded memory by not reading.** A batch takes `memory_limit` permits
//!   before it is sent; while none are free the connection's task waits and
//!   stops reading its socket, so the kernel's window pushes back on the
//!   client. Outside the limit: one read buffer per connection (at most a
//!   frame, `max_frame_size`) and an inflated CompressedPackedForward payload
//!   (also at most `max_frame_size`).
//! - **One task per connection, one thread for the source.** Connections are
//!   tokio tasks (sockets block where files do not); the source's thread,
//!   which the topology joins like a file source's, routes the acks that
//!   `AckToken`s send on a std channel to their connection, keeps the
//!   end-to-end metrics, and runs the stop sequence.
//! - **A bad client costs its own connection only.** Oversized or malformed
//!   frames and failed handshakes close that connection with a counted
//!   reason; a frame is checked whole before any of its records leave, so a
//!   rejected frame delivered nothing.
//! - **Partial messages joined before they leave (`partial`)**: every
//!   connection's batches go through one `partial_message` join task (see
//!   `transforms/partial_message.rs`), which holds a part's `AckToken` until
//!   its line is delivered, so a chunk is never acked before its line; the
//!   task is tracked like a connection and emits what it holds once the
//!   connections and listeners let go of it.
//! - **`--exit-on-eof`**: the source ends once it has had a connection and
//!   every connection reached end of input (a backfill pipes frames in and
//!   closes); without a connection it runs until stopped.
//!
//! Where: this file holds the listeners, the source thread (ack routing,
//! metrics, the stop); `conn.rs` a connection's task (handshake, frames,
//! batches, chunk acks); `auth.rs` the PING checks and the errors naming
//! the cause; `proto/` the wire format, with no I/O.

mod auth;
pub mod config;
mod conn;
pub mod proto;
pub mod tls;

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::ForwardSourceConfig;
use conn::Conn;

use super::file::{SourceContext, SourceError};
use crate::event::{Ack, Batch};
use crate::metrics::ComponentMetrics;

/// A batch is sent once its records reach this many bytes.
const BATCH_BYTES: usize = 256 * 1024;
/// Read size per call.
const READ_CHUNK: usize = 64 * 1024;
/// With `--exit-on-eof`, how long to wait for the last acks.
const ACK_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// A client that connects to a shared_key server must finish the handshake
/// within this (a guard against idle sockets holding a connection slot).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// A new connection silent this long (without `shared_key`) gets a log line
/// about a client that may be waiting for a HELO.
const SILENT_CLIENT_HINT: Duration = Duration::from_secs(10);
/// How often the source's thread looks at its stop conditions.
const TICK: Duration = Duration::from_millis(50);

/// Starts the source: binds its listeners now (so a taken port fails
/// start-up) and serves them from the runtime.
pub fn spawn(
    cfg: ForwardSourceConfig,
    cx: SourceContext,
) -> std::io::Result<std::thread::JoinHandle<Result<(), SourceError>>> {
    let _rt = cx.rt.enter();
    // Certificate problems fail start-up, naming the file.
    let tls = match cfg.tls.clone().map(tls::Reloading::new).transpose() {
        Ok(t) => t.map(Arc::new),
        Err(e) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("tls: {e}"),
            ));
        }
    };
    let mut listeners = Vec::new();
    if let Some(addr) = cfg.tcp_address() {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        listeners.push(Listener::Tcp(tokio::net::TcpListener::from_std(l)?, tls));
    }
    let mut socket_file = None;
    if let Some(path) = &cfg.path {
        match std::fs::symlink_metadata(path) {
            // A socket nobody listens on is left from a previous run; one
            // that answers belongs to a live process.
            Ok(md) if md.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        format!("{} is in use by another process", path.display()),
                    ));
                }
                std::fs::remove_file(path)?
            }
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            Err(_) => {}
        }
        let l = std::os::unix::net::UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(cfg.unix_mode()))?;
        l.set_nonblocking(true)?;
        listeners.push(Listener::Unix(tokio::net::UnixListener::from_std(l)?));
        socket_file = Some(path.clone());
    }
    std::thread::Builder::new()
        .name(format!("source-{}", cx.id))
        .spawn(move || {
            let span = tracing::info_span!("source", id = %cx.id, kind = "forward");
            let _g = span.enter();
            run(cfg, cx, listeners, socket_file)
        })
}

enum Listener {
    Tcp(tokio::net::TcpListener, Option<Arc<tls::Reloading>>),
    Unix(tokio::net::UnixListener),
}

/// What every connection of the source shares.
struct Shared {
    m: ComponentMetrics,
    invalid_utf8: Counter,
    duplicate_key: Counter,
    unsupported_type: Counter,
    memory: Arc<Semaphore>,
    memory_limit: usize,
    drain: crate::drain::Drain,
    /// Cancelled when the source ends (force, or the drain is over).
    kill: CancellationToken,
    drain_quiet: Duration,
    drain_read_budget: Duration,
    ack_tx: Mutex<std_mpsc::Sender<Ack>>,
    /// Where each connection's acks go, by connection id.
    routes: Mutex<HashMap<u64, mpsc::UnboundedSender<Ack>>>,
    /// Connections still reading (for `--exit-on-eof`), and whether there
    /// ever was one.
    reading: AtomicUsize,
    had_connection: AtomicBool,
    /// Batches sent and not yet settled.
    outstanding: AtomicU64,
    next_conn: AtomicU64,
    max_frame: usize,
    max_record: usize,
    shared_key: Option<crate::confdiag::Secret>,
    users: Vec<config::ForwardUser>,
    self_hostname: String,
    /// When a handshake failure was last logged at warn, per client host
    /// and reason: a client retrying with a wrong key gets one line a
    /// minute, not one per attempt.
    auth_logged: Mutex<HashMap<(String, &'static str), Instant>>,
}

/// Repeats of one client's handshake failure within this are logged at
/// debug only (they are all counted).
const AUTH_LOG_EVERY: Duration = Duration::from_secs(60);

impl Shared {
    /// Whether a failure of `who` for `reason` should be logged at warn now.
    fn auth_log_due(&self, who: &str, reason: &'static str) -> bool {
        let Ok(mut seen) = self.auth_logged.lock() else {
            return true;
        };
        let now = Instant::now();
        if seen.len() >= 4096 {
            seen.retain(|_, at| now.duration_since(*at) < AUTH_LOG_EVERY);
        }
        match seen.get(&(who.to_string(), reason)) {
            Some(at) if now.duration_since(*at) < AUTH_LOG_EVERY => false,
            _ => {
                seen.insert((who.to_string(), reason), now);
                true
            }
        }
    }
}

fn run(
    cfg: ForwardSourceConfig,
    mut cx: SourceContext,
    listeners: Vec<Listener>,
    socket_file: Option<PathBuf>,
) -> Result<(), SourceError> {
    let m = cx.metrics.component(&cx.id, "forward");
    let (ack_tx, ack_rx) = std_mpsc::channel();
    let kill = cx.force.child_token();
    let sh = Arc::new(Shared {
        invalid_utf8: m.line_issue("invalid_utf8"),
        duplicate_key: m.line_issue("duplicate_key"),
        unsupported_type: m.line_issue("unsupported_type"),
        m,
        memory: cx.memory.clone(),
        memory_limit: cx.memory_limit,
        drain: cx.drain.clone(),
        kill: kill.clone(),
        drain_quiet: cx.drain_quiet,
        drain_read_budget: cx.drain_read_budget,
        ack_tx: Mutex::new(ack_tx),
        routes: Mutex::new(HashMap::new()),
        reading: AtomicUsize::new(0),
        had_connection: AtomicBool::new(false),
        outstanding: AtomicU64::new(0),
        next_conn: AtomicU64::new(0),
        max_frame: cfg.max_frame_size.as_u64() as usize,
        max_record: cfg.max_record_size.as_u64() as usize,
        self_hostname: cfg.self_hostname.clone().unwrap_or_else(hostname),
        shared_key: cfg.shared_key.clone(),
        users: cfg.users.clone(),
        auth_logged: Mutex::new(HashMap::new()),
    });
    let stop_accept = CancellationToken::new();
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let mut outputs = std::mem::take(&mut cx.outputs);
    if let Some(p) = cfg.partial.clone() {
        // Every connection's batches go through one joiner (parts of a line
        // may even come on different connections); it ends, emitting what
        // it holds, once the connections and listeners let go of it.
        let (tx, rx) = mpsc::channel(4);
        let out = crate::topology::Fanout::new(std::mem::replace(&mut outputs, vec![tx]));
        let join = crate::transforms::partial_message::join(p, rx, out, sh.m.clone(), false, cx.memory.clone());
        tracker.spawn_on(join, &cx.rt);
    }
    for l in listeners {
        let (sh, stop, slots, outputs, t) = (
            sh.clone(),
            stop_accept.clone(),
            slots.clone(),
            outputs.clone(),
            tracker.clone(),
        );
        tracker.spawn_on(accept_loop(l, sh, stop, slots, outputs, t), &cx.rt);
    }
    drop(outputs);
    tracing::info!(listen = %cfg.describe(), "forward source listening");

    let mut stopping: Option<(Instant, Instant)> = None;
    loop {
        match ack_rx.recv_timeout(TICK) {
            Ok(ack) => {
                settle(&sh, ack);
                while let Ok(ack) = ack_rx.try_recv() {
                    settle(&sh, ack);
                }
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            // The source holds a sender itself: never disconnected.
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {}
        }
        if cx.force.is_cancelled() {
            let outstanding = sh.outstanding.load(Ordering::Acquire);
            if outstanding > 0 {
                tracing::warn!(
                    batches = outstanding,
                    "stopping at once with batches not yet delivered; their chunks were not acknowledged, so clients resend them"
                );
            }
            break;
        }
        let idle_eof =
            cx.exit_on_eof && sh.had_connection.load(Ordering::Acquire) && sh.reading.load(Ordering::Acquire) == 0;
        if stopping.is_none() && (cx.drain.is_started() || idle_eof) {
            let now = Instant::now();
            let deadline = cx.drain.deadline().unwrap_or(now + ACK_DRAIN_TIMEOUT);
            tracing::debug!("forward source stopping: no new connections");
            stop_accept.cancel();
            tracker.close();
            stopping = Some((now, deadline));
        }
        if let Some((_, deadline)) = stopping {
            let outstanding = sh.outstanding.load(Ordering::Acquire);
            if tracker.is_empty() && outstanding == 0 {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    batches = outstanding,
                    "stopping with batches not yet delivered; their chunks were not acknowledged, so clients resend them"
                );
                break;
            }
        }
    }
    kill.cancel();
    stop_accept.cancel();
    if let Some(path) = socket_file {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Metrics of a settled batch, then the ack to its connection (if open).
fn settle(sh: &Shared, ack: Ack) {
    sh.outstanding.fetch_sub(1, Ordering::AcqRel);
    sh.m.unacked_events.dec_by(i64::from(ack.records));
    if ack.delivered {
        sh.m.acked_events.inc_by(u64::from(ack.records));
    } else {
        sh.m.failed_events.inc_by(u64::from(ack.records));
    }
    let route = sh.routes.lock().ok().and_then(|r| r.get(&ack.stream).cloned());
    if let Some(tx) = route {
        let _ = tx.send(ack);
    }
}

async fn accept_loop(
    l: Listener,
    sh: Arc<Shared>,
    stop: CancellationToken,
    slots: Arc<Semaphore>,
    outputs: Vec<mpsc::Sender<Batch>>,
    tracker: TaskTracker,
) {
    loop {
        // A free slot first: beyond max_connections clients wait in the backlog.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.cancelled() => return,
        };
        let accepted = tokio::select! {
            r = accept(&l) => r,
            _ = stop.cancelled() => return,
        };
        match accepted {
            Ok((raw, peer)) => {
                // Counted as reading from the accept on (`--exit-on-eof`
                // must not end between the accept and the task).
                sh.reading.fetch_add(1, Ordering::AcqRel);
                sh.had_connection.store(true, Ordering::Release);
                let (sh, outputs) = (sh.clone(), outputs.clone());
                tracker.spawn(async move {
                    let Some((reader, writer)) = open_stream(&sh, raw, &peer).await else {
                        sh.reading.fetch_sub(1, Ordering::AcqRel);
                        drop(permit);
                        return;
                    };
                    let id = sh.next_conn.fetch_add(1, Ordering::AcqRel);
                    tracing::debug!(conn = id, peer = %peer.addr, "connection accepted");
                    let conn = Conn::new(sh.clone(), id, outputs, reader, writer, peer);
                    let open = sh.m.connections.clone();
                    open.inc();
                    conn.serve().await;
                    open.dec();
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: try again shortly.
                tracing::warn!(error = %e, "accept failed");
                drop(permit);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// Who is on the other end, for log lines.
struct Peer {
    /// `ip:port`, or `unix:<path>`.
    addr: String,
    /// The client's host (the IP, or the socket path): what repeated
    /// failures are grouped by.
    host: String,
}

/// An accepted connection before TLS and the split.
enum Raw {
    Tcp(tokio::net::TcpStream, Option<Arc<tls::Reloading>>),
    Unix(tokio::net::UnixStream),
}

async fn accept(l: &Listener) -> std::io::Result<(Raw, Peer)> {
    Ok(match l {
        Listener::Tcp(l, tls) => {
            let (s, peer) = l.accept().await?;
            let _ = s.set_nodelay(true);
            let peer = Peer {
                addr: peer.to_string(),
                host: peer.ip().to_string(),
            };
            (Raw::Tcp(s, tls.clone()), peer)
        }
        Listener::Unix(l) => {
            let (s, _) = l.accept().await?;
            let path = l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                .unwrap_or_default();
            let addr = format!("unix:{path}");
            (
                Raw::Unix(s),
                Peer {
                    addr: addr.clone(),
                    host: addr,
                },
            )
        }
    })
}

/// The connection's halves, after the TLS handshake when the listener has
/// TLS (in the connection's task: a slow client does not hold up accepts).
/// A failed handshake is counted (`reason="tls"`), logged once a minute per
/// client host, and closes the connection: nothing was read from it.
async fn open_stream(sh: &Shared, raw: Raw, peer: &Peer) -> Option<(BoxRead, BoxWrite)> {
    match raw {
        Raw::Unix(s) => {
            let (r, w) = s.into_split();
            Some((Box::new(r), Box::new(w)))
        }
        Raw::Tcp(s, None) => {
            let (r, w) = s.into_split();
            Some((Box::new(r), Box::new(w)))
        }
        Raw::Tcp(s, Some(tls)) => {
            // A connection closed before its first byte is a port probe (a
            // load balancer's or Kubernetes' TCP check), not a failure.
            let mut first = [0u8; 1];
            let peeked = tokio::select! {
                r = tokio::time::timeout(HANDSHAKE_TIMEOUT, s.peek(&mut first)) => r,
                _ = sh.kill.cancelled() => return None,
            };
            if matches!(peeked, Ok(Ok(0)) | Ok(Err(_))) {
                tracing::debug!(peer = %peer.addr, "connection closed before the TLS handshake");
                return None;
            }
            let accepted = tokio::select! {
                r = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(s)) => r,
                _ = sh.kill.cancelled() => return None,
            };
            let err = match accepted {
                Ok(Ok(stream)) => {
                    let (r, w) = tokio::io::split(stream);
                    return Some((Box::new(r), Box::new(w)));
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
            };
            sh.m.handshake_failure("tls");
            if sh.auth_log_due(&peer.host, "tls") {
                tracing::warn!(peer = %peer.addr, error = %err, "forward client failed the TLS handshake; connection closed");
            } else {
                tracing::debug!(peer = %peer.addr, error = %err, "forward client failed the TLS handshake");
            }
            None
        }
    }
}

/// The host name PONG carries by default.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "logferry".to_string())
}
