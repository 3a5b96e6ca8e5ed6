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

pub mod config;
pub mod proto;

use std::collections::HashMap;
use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::ForwardSourceConfig;
use proto::{Decoder, Entries, FrameError, FrameScanner, Mode};

use super::file::{SourceContext, SourceError};
use crate::event::{Ack, AckToken, Batch, Records};
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
    let mut listeners = Vec::new();
    if let Some(addr) = cfg.tcp_address() {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        listeners.push(Listener::Tcp(tokio::net::TcpListener::from_std(l)?));
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
    Tcp(tokio::net::TcpListener),
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
    shutdown: CancellationToken,
    /// Cancelled when the source ends (force, or the drain is over).
    kill: CancellationToken,
    drain_quiet: Duration,
    drain_read_budget: Duration,
    drain_timeout: Duration,
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
        shutdown: cx.shutdown.clone(),
        kill: kill.clone(),
        drain_quiet: cx.drain_quiet,
        drain_read_budget: cx.drain_read_budget,
        drain_timeout: cx.drain_timeout,
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
        if stopping.is_none() && (cx.shutdown.is_cancelled() || idle_eof) {
            let now = Instant::now();
            let deadline = if cx.shutdown.is_cancelled() {
                now + cx.drain_timeout
            } else {
                now + ACK_DRAIN_TIMEOUT
            };
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
            Ok((reader, writer, Peer { addr: peer, host })) => {
                let id = sh.next_conn.fetch_add(1, Ordering::AcqRel);
                sh.reading.fetch_add(1, Ordering::AcqRel);
                sh.had_connection.store(true, Ordering::Release);
                tracing::debug!(conn = id, %peer, "connection accepted");
                let conn = Conn::new(
                    sh.clone(),
                    id,
                    outputs.clone(),
                    reader,
                    writer,
                    Peer { addr: peer, host },
                );
                let open = sh.m.connections.clone();
                open.inc();
                tracker.spawn(async move {
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

async fn accept(l: &Listener) -> std::io::Result<(BoxRead, BoxWrite, Peer)> {
    Ok(match l {
        Listener::Tcp(l) => {
            let (s, peer) = l.accept().await?;
            let _ = s.set_nodelay(true);
            let (r, w) = s.into_split();
            let peer = Peer {
                addr: peer.to_string(),
                host: peer.ip().to_string(),
            };
            (Box::new(r), Box::new(w), peer)
        }
        Listener::Unix(l) => {
            let (s, _) = l.accept().await?;
            let path = l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                .unwrap_or_default();
            let (r, w) = s.into_split();
            let addr = format!("unix:{path}");
            (
                Box::new(r),
                Box::new(w),
                Peer {
                    addr: addr.clone(),
                    host: addr,
                },
            )
        }
    })
}

/// A chunk waiting for its batches.
struct PendingChunk {
    chunk: Vec<u8>,
    /// Batches sent holding its records, not yet settled.
    batches: u32,
    failed: bool,
    /// All its records were decoded (no batch still to come).
    complete: bool,
}

/// Why a connection stops reading.
enum End {
    /// The client closed its side.
    Eof,
    /// The drain after a stop request is over.
    Drained,
    /// A protocol error, the socket failed, or the pipeline is gone.
    Broken,
}

struct Conn {
    sh: Arc<Shared>,
    id: u64,
    peer: Peer,
    outputs: Vec<mpsc::Sender<Batch>>,
    reader: BoxRead,
    writer: BoxWrite,
    acks: mpsc::UnboundedReceiver<Ack>,
    buf: Vec<u8>,
    scanner: FrameScanner,
    dec: Decoder,
    inflated: Vec<u8>,
    records: Records,
    tag: Option<Arc<str>>,
    /// Chunks with records in `records`.
    in_batch: Vec<u64>,
    next_seq: u64,
    next_chunk: u64,
    /// Chunks held by each batch in flight.
    batches: HashMap<u64, Vec<u64>>,
    chunks: HashMap<u64, PendingChunk>,
    still_reading: bool,
}

impl Conn {
    fn new(
        sh: Arc<Shared>,
        id: u64,
        outputs: Vec<mpsc::Sender<Batch>>,
        reader: BoxRead,
        writer: BoxWrite,
        peer: Peer,
    ) -> Self {
        let (tx, acks) = mpsc::unbounded_channel();
        if let Ok(mut r) = sh.routes.lock() {
            r.insert(id, tx);
        }
        let max_record = sh.max_record;
        Conn {
            sh,
            id,
            peer,
            outputs,
            reader,
            writer,
            acks,
            buf: Vec::with_capacity(READ_CHUNK),
            scanner: FrameScanner::new(4),
            dec: Decoder::new(max_record),
            inflated: Vec::new(),
            records: Records::default(),
            tag: None,
            in_batch: Vec::new(),
            next_seq: 0,
            next_chunk: 0,
            batches: HashMap::new(),
            chunks: HashMap::new(),
            still_reading: true,
        }
    }

    async fn serve(mut self) {
        let end = match self.handshake().await {
            Ok(()) => self.read_loop().await,
            Err(e) => {
                // A connection closed before it said anything (a TCP health
                // probe) is no failure.
                if let Some(e) = e {
                    self.refuse_handshake(&e);
                }
                End::Broken
            }
        };
        self.stop_reading();
        if !matches!(end, End::Broken) {
            // Answer what is still pending, while the client listens.
            self.wait_acks().await;
        }
        let _ = self.writer.shutdown().await;
        if let Ok(mut r) = self.sh.routes.lock() {
            r.remove(&self.id);
        }
        tracing::debug!(conn = self.id, "connection closed");
    }

    /// Counts and logs why a connection is closed.
    fn refuse(&self, reason: &'static str) {
        self.sh.m.discarded(reason, 1);
        tracing::warn!(conn = self.id, reason, "closing forward connection");
    }

    /// Counts and logs a failed handshake, naming the client and the cause.
    fn refuse_handshake(&self, e: &HandshakeError) {
        let reason = e.reason();
        self.sh.m.handshake_failure(reason);
        self.sh.m.discarded("auth_failed", 1);
        if self.sh.auth_log_due(&self.peer.host, reason) {
            tracing::warn!(source = %self.sh.m.id, conn = self.id, peer = %self.peer.addr, reason,
                "forward client {} failed the handshake: {e}; closing the connection (repeats from this host \
                 are logged at debug for {}s)", self.peer.addr, AUTH_LOG_EVERY.as_secs());
        } else {
            tracing::debug!(source = %self.sh.m.id, conn = self.id, peer = %self.peer.addr, reason,
                "forward client failed the handshake: {e}");
        }
    }

    fn stop_reading(&mut self) {
        if std::mem::take(&mut self.still_reading) {
            self.sh.reading.fetch_sub(1, Ordering::AcqRel);
        }
        // Closing our senders lets the pipeline flush once every
        // connection and listener has let go.
        self.outputs.clear();
    }

    /// With `shared_key`: HELO, the client's PING, our PONG. `Err(None)`:
    /// the client left without a word.
    async fn handshake(&mut self) -> Result<(), Option<HandshakeError>> {
        let Some(key) = self.sh.shared_key.clone() else {
            return Ok(());
        };
        let nonce = random_hex().map_err(|e| Some(HandshakeError::Nonce(e)))?;
        // A salt asks the client for a username and password; without users
        // it is empty, and a client sends none (the spec's HELO).
        let auth_salt = if self.sh.users.is_empty() {
            String::new()
        } else {
            random_hex().map_err(|e| Some(HandshakeError::Nonce(e)))?
        };
        self.writer
            .write_all(&proto::helo(&nonce, &auth_salt))
            .await
            .map_err(|_| None)?;
        let mut scanner = FrameScanner::new(6);
        let read = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            loop {
                match scanner.scan(&self.buf, 64 * 1024) {
                    Ok(Some(len)) => return Ok(len),
                    Ok(None) => {}
                    Err(_) if proto::looks_like_data(&self.buf) => return Err(Some(HandshakeError::NoPing)),
                    Err(_) => return Err(Some(HandshakeError::Invalid("not a msgpack PING"))),
                }
                self.buf.reserve(4096);
                tokio::select! {
                    r = self.reader.read_buf(&mut self.buf) => match r {
                        Ok(0) | Err(_) if self.buf.is_empty() => return Err(None),
                        Ok(0) | Err(_) if proto::looks_like_data(&self.buf) => {
                            return Err(Some(HandshakeError::NoPing));
                        }
                        Ok(0) | Err(_) => return Err(Some(HandshakeError::Closed)),
                        Ok(_) => {}
                    },
                    _ = self.sh.kill.cancelled() => return Err(None),
                }
            }
        })
        .await;
        let len = match read {
            Ok(r) => r?,
            Err(_) if proto::looks_like_data(&self.buf) => return Err(Some(HandshakeError::NoPing)),
            Err(_) if self.buf.is_empty() => return Err(Some(HandshakeError::Timeout(HANDSHAKE_TIMEOUT))),
            Err(_) => return Err(Some(HandshakeError::Invalid("incomplete PING"))),
        };
        let frame = self.buf.get(..len).unwrap_or_default();
        let verdict = check_ping(
            frame,
            &nonce,
            &auth_salt,
            key.expose(),
            &self.sh.users,
            &self.sh.self_hostname,
        );
        self.buf.drain(..len);
        let reply = match &verdict {
            Ok(digest) => proto::pong(true, "", &self.sh.self_hostname, digest),
            Err(e) => proto::pong(false, e.pong_reason(), "", ""),
        };
        let _ = self.writer.write_all(&reply).await;
        verdict.map(|_| ()).map_err(Some)
    }

    async fn read_loop(&mut self) -> End {
        let mut draining: Option<Instant> = None;
        let mut last_data = Instant::now();
        // A client with a shared key waits for a HELO that a source without
        // one never sends, and neither side says anything: after a while
        // of silence from a new connection, say what it may mean.
        let mut silent_hint = self
            .sh
            .shared_key
            .is_none()
            .then(|| tokio::time::Instant::now() + SILENT_CLIENT_HINT);
        loop {
            if let Err(e) = self.process().await {
                return e;
            }
            if let Some(started) = draining {
                let quiet = last_data.max(started).elapsed() >= self.sh.drain_quiet;
                if quiet || started.elapsed() >= self.sh.drain_read_budget {
                    return End::Drained;
                }
            }
            let wake = draining.map(|_| tokio::time::Instant::now() + TICK);
            self.buf.reserve(READ_CHUNK);
            tokio::select! {
                biased;
                _ = self.sh.kill.cancelled() => return End::Broken,
                Some(ack) = self.acks.recv() => {
                    if self.on_ack(ack).await.is_err() {
                        return End::Broken;
                    }
                }
                _ = self.sh.shutdown.cancelled(), if draining.is_none() => {
                    draining = Some(Instant::now());
                }
                _ = sleep_until(wake), if wake.is_some() => {}
                _ = sleep_until(silent_hint), if silent_hint.is_some() && draining.is_none() => {
                    silent_hint = None;
                    if self.sh.auth_log_due(&self.peer.host, "silent") {
                        tracing::info!(source = %self.sh.m.id, conn = self.id, peer = %self.peer.addr,
                            "forward client {} has sent nothing for {}s since it connected; if it is configured with a \
                             shared key it is waiting for a HELO, which this source sends only with `shared_key` set",
                            self.peer.addr, SILENT_CLIENT_HINT.as_secs());
                    }
                }
                r = self.reader.read_buf(&mut self.buf) => match r {
                    Ok(0) => {
                        if !self.buf.is_empty() {
                            self.refuse(FrameError::Malformed("truncated").reason());
                        }
                        return End::Eof;
                    }
                    Ok(n) => {
                        silent_hint = None;
                        self.sh.m.received_bytes.inc_by(n as u64);
                        last_data = Instant::now();
                    }
                    Err(e) => {
                        tracing::debug!(conn = self.id, error = %e, "read failed");
                        return End::Broken;
                    }
                },
            }
        }
    }

    /// Handles every complete frame in the buffer, then sends what was
    /// decoded.
    async fn process(&mut self) -> Result<(), End> {
        let mut consumed = 0;
        loop {
            let rest = self.buf.get(consumed..).unwrap_or_default();
            match self.scanner.scan(rest, self.sh.max_frame) {
                Ok(Some(len)) => {
                    let buf = std::mem::take(&mut self.buf);
                    let r = self.frame(buf.get(consumed..consumed + len).unwrap_or_default()).await;
                    self.buf = buf;
                    if let Err(e) = r {
                        if let Some(reason) = e {
                            self.refuse(reason.reason());
                        }
                        return Err(End::Broken);
                    }
                    consumed += len;
                }
                Ok(None) => break,
                Err(e) => {
                    self.refuse(e.reason());
                    return Err(End::Broken);
                }
            }
        }
        self.buf.drain(..consumed);
        // One large frame must not leave its buffer behind for the
        // connection's lifetime.
        if self.buf.capacity() > 4 * READ_CHUNK && self.buf.len() < READ_CHUNK {
            self.buf.shrink_to(2 * READ_CHUNK);
        }
        self.send_batch().await.map_err(|_| End::Broken)
    }

    /// One complete frame. `Err(Some)`: refused; `Err(None)`: the pipeline
    /// is gone.
    async fn frame(&mut self, frame: &[u8]) -> Result<(), Option<FrameError>> {
        let f = proto::parse_frame(frame)?;
        if f.signal != 0 {
            // Fluent Bit metrics or traces: not log records. Dropped,
            // counted, and acknowledged so the client does not resend them
            // forever.
            self.sh.m.discarded("unsupported_signal", 1);
            if let Some(r) = f.chunk.clone() {
                let reply = proto::ack_response(frame.get(r).unwrap_or_default());
                self.writer.write_all(&reply).await.map_err(|_| None)?;
            }
            return Ok(());
        }
        let inflated = std::mem::take(&mut self.inflated);
        self.frame_entries(frame, &f, inflated).await
    }

    async fn frame_entries(
        &mut self,
        frame: &[u8],
        f: &proto::Frame,
        mut inflated: Vec<u8>,
    ) -> Result<(), Option<FrameError>> {
        let (bytes, entries): (&[u8], Entries) = match f.mode {
            Mode::Message => (frame, Entries::new(f.entries.clone(), Mode::Message)),
            Mode::Forward => {
                let list = frame.get(f.entries.clone()).unwrap_or_default();
                proto::check_entries(list, Some(f.count))?;
                (frame, Entries::new(f.entries.clone(), Mode::Forward))
            }
            Mode::PackedForward => {
                let payload = frame.get(f.entries.clone()).unwrap_or_default();
                if f.gzip {
                    if let Err(e) = proto::gunzip(payload, self.sh.max_frame, &mut inflated) {
                        self.inflated = inflated;
                        return Err(Some(e));
                    }
                    if let Err(e) = proto::check_entries(&inflated, None) {
                        self.inflated = inflated;
                        return Err(Some(e));
                    }
                    let n = inflated.len();
                    let r = self
                        .decode(frame, f, &inflated, Entries::new(0..n, Mode::PackedForward))
                        .await;
                    inflated.clear();
                    self.inflated = inflated;
                    return r;
                }
                proto::check_entries(payload, None)?;
                (frame, Entries::new(f.entries.clone(), Mode::PackedForward))
            }
        };
        self.inflated = inflated;
        self.decode(frame, f, bytes, entries).await
    }

    /// Decodes the entries (in `bytes`: the frame, or its inflated
    /// payload) of frame `f` and sends them in batches.
    async fn decode(
        &mut self,
        frame: &[u8],
        f: &proto::Frame,
        bytes: &[u8],
        mut entries: Entries,
    ) -> Result<(), Option<FrameError>> {
        // A batch holds records of one tag.
        let tag = String::from_utf8_lossy(frame.get(f.tag.clone()).unwrap_or_default());
        if self.tag.as_deref() != Some(&*tag) {
            self.send_batch().await.map_err(|_| None)?;
            self.tag = Some(Arc::from(&*tag));
        }
        let chunk = f.chunk.clone().map(|r| frame.get(r).unwrap_or_default().to_vec());
        let chunk_id = chunk.map(|chunk| {
            let id = self.next_chunk;
            self.next_chunk += 1;
            self.chunks.insert(
                id,
                PendingChunk {
                    chunk,
                    batches: 0,
                    failed: false,
                    complete: false,
                },
            );
            id
        });
        let now = chrono::Utc::now().timestamp_millis();
        while !entries.done() {
            let before = self.records.len();
            let r = self
                .dec
                .decode_some(bytes, &mut entries, &mut self.records, BATCH_BYTES, now);
            if let Err(e) = r {
                self.count_issues();
                return Err(Some(e));
            }
            if self.records.len() > before
                && let Some(id) = chunk_id
                && self.in_batch.last() != Some(&id)
            {
                self.in_batch.push(id);
            }
            if self.records.buf.len() >= BATCH_BYTES {
                self.send_batch().await.map_err(|_| None)?;
            }
        }
        self.count_issues();
        if let Some(id) = chunk_id
            && let Some(c) = self.chunks.get_mut(&id)
        {
            c.complete = true;
            if c.batches == 0 && !self.in_batch.contains(&id) {
                // Nothing of it is in flight (every record was dropped and
                // counted): answered now.
                self.settle_chunk(id).await.map_err(|_| None)?;
            }
        }
        Ok(())
    }

    fn count_issues(&mut self) {
        let i = std::mem::take(&mut self.dec.issues);
        if i.invalid_utf8 > 0 {
            self.sh.invalid_utf8.inc_by(i.invalid_utf8);
        }
        if i.duplicate_key > 0 {
            self.sh.duplicate_key.inc_by(i.duplicate_key);
        }
        if i.unsupported > 0 {
            self.sh.unsupported_type.inc_by(i.unsupported);
        }
        self.sh.m.discarded("record_too_large", i.too_large);
    }

    /// Sends the records decoded so far as one batch. `Err` when the
    /// pipeline is gone (or a forced stop).
    async fn send_batch(&mut self) -> Result<(), ()> {
        if self.records.is_empty() {
            return Ok(());
        }
        let mut records = std::mem::take(&mut self.records);
        // The next batch likely looks like this one: reserve about as much.
        let len = records.buf.len();
        self.records
            .buf
            .reserve((len + len / 8).min(BATCH_BYTES + BATCH_BYTES / 4));
        // Permits cover what the batch holds, not what it could: a few
        // records from a slow client do not keep a whole batch's buffer.
        if records.buf.capacity() > records.buf.len() + records.buf.len() / 4 + 4096 {
            records.buf.shrink_to_fit();
        }
        records.meta.shrink_to_fit();
        let held = records.buf.capacity() + records.meta.capacity() * std::mem::size_of::<crate::event::RecordMeta>();
        let bytes = held.min(self.sh.memory_limit).max(1);
        let permit = tokio::select! {
            p = self.sh.memory.clone().acquire_many_owned(bytes as u32) => p.map_err(|_| ())?,
            _ = self.sh.kill.cancelled() => return Err(()),
        };
        records.permit = Some(permit);
        let count = records.len() as u64;
        let seq = self.next_seq;
        self.next_seq += 1;
        let chunks = std::mem::take(&mut self.in_batch);
        for id in &chunks {
            if let Some(c) = self.chunks.get_mut(id) {
                c.batches += 1;
            }
        }
        if !chunks.is_empty() {
            self.batches.insert(seq, chunks);
        }
        let tx = self.sh.ack_tx.lock().map(|t| t.clone()).map_err(|_| ())?;
        // From here on the token reports (once) whatever becomes of the batch.
        self.sh.outstanding.fetch_add(1, Ordering::AcqRel);
        let ack = AckToken::with_records(self.id, seq, count as u32, tx);
        let mut batch = Batch::new(records, Some(ack));
        batch.tag = self.tag.clone();
        self.sh.m.unacked_events.inc_by(count as i64);
        self.sh.m.received_events.inc_by(count);
        self.sh.m.sent_events.inc_by(count);
        for tx in &self.outputs {
            let sent = tokio::select! {
                r = tx.send(batch.clone()) => r.is_ok(),
                _ = self.sh.kill.cancelled() => false,
            };
            if !sent {
                // Never delivered: its chunks must not be answered.
                batch.fail();
                return Err(());
            }
        }
        Ok(())
    }

    /// A batch settled: answer the chunks it completes.
    async fn on_ack(&mut self, ack: Ack) -> std::io::Result<()> {
        let Some(ids) = self.batches.remove(&ack.seq) else {
            return Ok(());
        };
        for id in ids {
            let Some(c) = self.chunks.get_mut(&id) else { continue };
            c.batches = c.batches.saturating_sub(1);
            c.failed |= !ack.delivered;
            if c.batches == 0 && c.complete && !self.in_batch.contains(&id) {
                self.settle_chunk(id).await?;
            }
        }
        Ok(())
    }

    /// Answers a chunk whose records are all settled (unless one failed:
    /// then silence makes the client resend).
    async fn settle_chunk(&mut self, id: u64) -> std::io::Result<()> {
        let Some(c) = self.chunks.remove(&id) else {
            return Ok(());
        };
        if c.failed {
            tracing::debug!(
                conn = self.id,
                "a chunk was not delivered; not acknowledged, the client resends it"
            );
            return Ok(());
        }
        self.writer.write_all(&proto::ack_response(&c.chunk)).await
    }

    /// After reading stopped: answer pending chunks until they are settled,
    /// the drain deadline, or the client goes away.
    async fn wait_acks(&mut self) {
        let deadline = tokio::time::Instant::now()
            + if self.sh.shutdown.is_cancelled() {
                self.sh.drain_timeout
            } else {
                ACK_DRAIN_TIMEOUT
            };
        while !self.chunks.is_empty() {
            tokio::select! {
                _ = self.sh.kill.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => return,
                a = self.acks.recv() => match a {
                    Some(ack) => if self.on_ack(ack).await.is_err() { return },
                    None => return,
                },
            }
        }
    }
}

/// Why a client failed the handshake, worded for the operator who has to
/// change a config on one side or the other (the client is the subject).
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error(
        "sent data without the handshake this source requires (`shared_key` is set here): set the same \
         shared key on the client (Fluent Bit `Shared_Key`, Fluentd `<security> shared_key`)"
    )]
    NoPing,
    #[error("sent no PING within {0:?} of our HELO")]
    Timeout(Duration),
    #[error("closed the connection after our HELO without completing a PING")]
    Closed,
    #[error("sent an invalid PING ({0})")]
    Invalid(&'static str),
    #[error("proved a different shared key: `shared_key` differs between the client and this source")]
    KeyMismatch,
    #[error(
        "sent no username, but this source has `users`: give the client a username and password \
         (Fluent Bit `Username`/`Password`)"
    )]
    UserRequired,
    #[error("sent username {0:?}, which is not in `users`")]
    UnknownUser(String),
    #[error("sent a wrong password for user {0:?}")]
    WrongPassword(String),
    #[error("cannot make a nonce: {0}")]
    Nonce(std::io::Error),
}

impl HandshakeError {
    /// Labels `logferry_forward_handshake_failures_total`.
    fn reason(&self) -> &'static str {
        match self {
            HandshakeError::NoPing | HandshakeError::Timeout(_) | HandshakeError::Closed => "no_ping",
            HandshakeError::Invalid(_) => "invalid",
            HandshakeError::KeyMismatch => "shared_key_mismatch",
            HandshakeError::UserRequired => "user_required",
            HandshakeError::UnknownUser(_) | HandshakeError::WrongPassword(_) => "user_refused",
            HandshakeError::Nonce(_) => "internal",
        }
    }

    /// The reason PONG gives the client: Fluentd's wording, and never
    /// which of username or password was wrong.
    fn pong_reason(&self) -> &'static str {
        match self {
            HandshakeError::KeyMismatch => "shared_key mismatch",
            HandshakeError::UserRequired | HandshakeError::UnknownUser(_) | HandshakeError::WrongPassword(_) => {
                "username/password mismatch"
            }
            _ => "invalid PING",
        }
    }
}

/// Checks a PING against the key and, with users, the password digest
/// (`sha512_hex(auth_salt + username + password)`); returns the digest our
/// PONG proves the key with.
fn check_ping(
    frame: &[u8],
    nonce: &str,
    auth_salt: &str,
    key: &str,
    users: &[config::ForwardUser],
    self_hostname: &str,
) -> Result<String, HandshakeError> {
    use subtle::ConstantTimeEq as _;
    let ping = match proto::parse_ping(frame) {
        Ok(p) => p,
        Err(_) if proto::looks_like_data(frame) => return Err(HandshakeError::NoPing),
        Err(FrameError::Malformed(what)) => return Err(HandshakeError::Invalid(what)),
        Err(FrameError::TooLarge) => return Err(HandshakeError::Invalid("too large")),
    };
    let want = proto::shared_key_digest(ping.salt, ping.hostname, nonce.as_bytes(), key.as_bytes());
    if !bool::from(want.as_bytes().ct_eq(ping.digest)) {
        return Err(HandshakeError::KeyMismatch);
    }
    if !users.is_empty() {
        if ping.username.is_empty() {
            return Err(HandshakeError::UserRequired);
        }
        let shown = || {
            let mut s = String::from_utf8_lossy(ping.username).into_owned();
            if s.len() > 64 {
                let mut cut = 64;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.truncate(cut);
            }
            s
        };
        let Some(user) = users.iter().find(|u| u.username.as_bytes() == ping.username) else {
            return Err(HandshakeError::UnknownUser(shown()));
        };
        let want = proto::password_digest(
            auth_salt.as_bytes(),
            user.username.as_bytes(),
            user.password.expose().as_bytes(),
        );
        if !bool::from(want.as_bytes().ct_eq(ping.password)) {
            return Err(HandshakeError::WrongPassword(shown()));
        }
    }
    Ok(proto::shared_key_digest(
        ping.salt,
        self_hostname.as_bytes(),
        nonce.as_bytes(),
        key.as_bytes(),
    ))
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
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

/// A nonce for HELO: 16 random bytes, hex.
fn random_hex() -> std::io::Result<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}
