//! One connection to the forward server, and the task that delivers closed
//! chunks over it.
//!
//! Why pipelining: across nodes a round trip costs milliseconds, and with one
//! chunk waiting for its ack at a time the sink moves one chunk per round
//! trip. Up to `max_in_flight` chunks are written ahead; each ack names its
//! chunk (`{"ack": id}`), so acks may come in any order and release exactly
//! their chunk (measured in `tests/forward_latency.rs`). A file's checkpoint still never passes an unacked record:
//! the source orders its acks itself. After a reconnect the unacked chunks
//! are written again in their order, before anything new, so what the
//! server sees twice is only what it had not confirmed. `max_in_flight = 1`
//! is the old behaviour: no chunk is written before the previous one's ack.
//!
//! Why any error drops the connection: after a timeout or a short write the
//! stream's state is unknown (a late ack, half a message on the wire), and a
//! fresh connection with the chunk sent again is the only state both sides
//! agree on. The server may then see a chunk twice: at least once.
//!
//! Why handshake errors carry the fix: a refused handshake is always a
//! configuration that differs between two machines, and the server often
//! says little (Fluent Bit hangs up on a wrong key). Naming the server, what
//! it said and which setting to change, once per streak of retries, is what
//! lets an operator fix it from our log alone.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rmpv::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::{ForwardSinkConfig, ServerAddr};
use super::proto::{self, ProtoError};
use super::{Chunk, tls};
use crate::api::Health;
use crate::metrics::ComponentMetrics;
use crate::sinks::aws::{RETRY_CAP, backoff};

/// Longest wait for a TCP connection, the TLS handshake or the HELO/PONG.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a delivery failed; `reason()` labels `logferry_sink_errors_total`.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("handshake with {peer} failed: {cause}")]
    Auth { peer: String, cause: AuthError },
    #[error("write failed: {0}")]
    Write(std::io::Error),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("the server closed the connection{0}")]
    Closed(&'static str),
    #[error("read failed: {0}")]
    Read(std::io::Error),
    #[error("{0}")]
    Protocol(ProtoError),
}

/// Why the HELO/PING/PONG handshake failed, worded for the operator who has
/// to change a config on one side or the other.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no HELO within {0:?}: `shared_key` is set here but the server asks for no handshake \
         (set the same key on the server, or remove `shared_key` here)"
    )]
    NoHelo(Duration),
    #[error("the server asks for a shared-key handshake (it sent HELO): set `shared_key` to the server's key")]
    KeyRequired,
    #[error("the server refused our shared key ({0:?}): `shared_key` differs between the two sides")]
    KeyRefused(String),
    #[error("the server wants a username and password ({0:?}): set `username` and `password` to a user it knows")]
    UserRequired(String),
    #[error("the server refused user `{user}` ({reason:?}): check `username` and `password`")]
    UserRefused { user: String, reason: String },
    #[error("the server refused the handshake: {0:?}")]
    Refused(String),
    #[error(
        "the server closed the connection after our PING without answering: it refused the handshake \
         (Fluent Bit does so on a shared key mismatch: is `shared_key` the same on both sides?)"
    )]
    ClosedAfterPing,
    #[error("the server's PONG proves a different key: `shared_key` differs between the two sides")]
    ServerKeyDiffers,
    #[error("{0}")]
    Protocol(ProtoError),
}

impl AuthError {
    /// Labels `logferry_forward_handshake_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::NoHelo(_) => "no_helo",
            AuthError::KeyRequired => "key_required",
            AuthError::KeyRefused(_) | AuthError::ClosedAfterPing | AuthError::ServerKeyDiffers => {
                "shared_key_mismatch"
            }
            AuthError::UserRequired(_) => "user_required",
            AuthError::UserRefused { .. } => "user_refused",
            AuthError::Refused(_) => "refused",
            AuthError::Protocol(_) => "invalid",
        }
    }
}

/// Sorts a PONG's refusal by its reason. The spec leaves the text free;
/// Fluentd, Fluent Bit and Logferry's own source say "shared_key mismatch"
/// and "username/password mismatch".
fn refusal(reason: String, user: Option<&str>) -> AuthError {
    let lower = reason.to_ascii_lowercase();
    if lower.contains("user") || lower.contains("password") {
        match user {
            Some(u) => AuthError::UserRefused {
                user: u.to_string(),
                reason,
            },
            None => AuthError::UserRequired(reason),
        }
    } else if lower.contains("key") {
        AuthError::KeyRefused(reason)
    } else {
        AuthError::Refused(reason)
    }
}

impl SendError {
    pub fn reason(&self) -> &'static str {
        match self {
            SendError::Connect { .. } => "connect",
            SendError::Tls(_) => "tls",
            SendError::Auth { .. } => "auth",
            SendError::Write(_) => "write",
            SendError::Timeout(_) => "timeout",
            SendError::Closed(_) | SendError::Read(_) => "closed",
            SendError::Protocol(_) => "protocol",
        }
    }

    /// Errors an operator must fix (key, credentials, certificates, a server
    /// that wants a handshake we are not configured for): `/readyz` fails
    /// meanwhile.
    fn needs_operator(&self) -> bool {
        matches!(
            self,
            SendError::Tls(_) | SendError::Auth { .. } | SendError::Protocol(_)
        )
    }
}

/// A failed handshake: refused, or the connection itself failed.
enum Handshake {
    Auth(AuthError),
    Io(SendError),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open, authenticated connection.
pub struct Conn {
    io: Box<dyn Io>,
    /// `host:port`, and the address it resolved to when that differs: what
    /// errors name.
    peer: String,
    /// Bytes read but not yet decoded.
    rbuf: Vec<u8>,
}

impl Conn {
    /// TCP (resolving `host` now), TLS if enabled, and the handshake if a
    /// shared key is set.
    pub async fn open(
        cfg: &ForwardSinkConfig,
        server: &ServerAddr,
        tls: Option<&tokio_rustls::TlsConnector>,
    ) -> Result<Conn, SendError> {
        let addr = server.to_string();
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((server.host.as_str(), server.port)))
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(SendError::Connect { addr, source }),
            Err(_) => {
                return Err(SendError::Connect {
                    addr,
                    source: std::io::ErrorKind::TimedOut.into(),
                });
            }
        };
        let _ = tcp.set_nodelay(true);
        let peer = match tcp.peer_addr() {
            Ok(a) if a.to_string() != addr => format!("{addr} ({a})"),
            _ => addr,
        };
        let io: Box<dyn Io> = match tls {
            None => Box::new(tcp),
            Some(connector) => {
                let want = cfg.tls.server_name.as_deref().unwrap_or(&server.host);
                let name = rustls::pki_types::ServerName::try_from(want.to_string())
                    .map_err(|e| SendError::Tls(format!("invalid server name `{want}`: {e}")))?;
                match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp)).await {
                    Ok(Ok(s)) => Box::new(s),
                    Ok(Err(e)) => return Err(SendError::Tls(e.to_string())),
                    Err(_) => return Err(SendError::Timeout(CONNECT_TIMEOUT)),
                }
            }
        };
        let mut conn = Conn {
            io,
            peer,
            rbuf: Vec::with_capacity(256),
        };
        if let Some(key) = &cfg.shared_key {
            let host = cfg.self_hostname.clone().unwrap_or_else(hostname);
            let user = match (&cfg.username, &cfg.password) {
                (Some(username), Some(password)) => Some(proto::Credentials {
                    username,
                    password: password.expose(),
                }),
                _ => None,
            };
            if let Err(cause) = conn.handshake(key.expose(), &host, user.as_ref()).await {
                return Err(match cause {
                    // Not the handshake's fault: the connection broke.
                    Handshake::Io(e) => e,
                    Handshake::Auth(cause) => SendError::Auth { peer: conn.peer, cause },
                });
            }
        }
        Ok(conn)
    }

    async fn handshake(
        &mut self,
        key: &str,
        self_hostname: &str,
        user: Option<&proto::Credentials<'_>>,
    ) -> Result<(), Handshake> {
        let helo = match self.read_msg(CONNECT_TIMEOUT).await {
            Ok(v) => v,
            // A server without a key waits for data and says nothing.
            Err(SendError::Timeout(t)) => return Err(Handshake::Auth(AuthError::NoHelo(t))),
            Err(e) => return Err(Handshake::Io(e)),
        };
        let helo = proto::parse_helo(&helo).map_err(|e| Handshake::Auth(AuthError::Protocol(e)))?;
        if helo.auth.is_empty() && user.is_some() {
            tracing::debug!(peer = %self.peer, "the server asks for no user authentication; sending no username");
        }
        let salt = proto::new_salt();
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.write_parts(&[&proto::ping(self_hostname, &salt, &helo, key, user)]),
        )
        .await
        .map_err(|_| Handshake::Io(SendError::Timeout(CONNECT_TIMEOUT)))?
        .map_err(Handshake::Io)?;
        let pong = match self.read_msg(CONNECT_TIMEOUT).await {
            Ok(v) => v,
            Err(SendError::Closed(_) | SendError::Read(_)) => return Err(Handshake::Auth(AuthError::ClosedAfterPing)),
            Err(e) => return Err(Handshake::Io(e)),
        };
        let sent_user = user.filter(|_| !helo.auth.is_empty()).map(|u| u.username);
        match proto::check_pong(&pong, &salt, &helo, key) {
            Ok(proto::Pong::Accepted) => Ok(()),
            Ok(proto::Pong::Refused(reason)) => Err(Handshake::Auth(refusal(reason, sent_user))),
            Ok(proto::Pong::ServerKeyDiffers) => Err(Handshake::Auth(AuthError::ServerKeyDiffers)),
            Err(e) => Err(Handshake::Auth(AuthError::Protocol(e))),
        }
    }

    async fn write_parts(&mut self, parts: &[&[u8]]) -> Result<(), SendError> {
        for p in parts {
            self.io.write_all(p).await.map_err(SendError::Write)?;
        }
        self.io.flush().await.map_err(SendError::Write)
    }

    /// Reads one msgpack message, waiting at most `timeout` in all.
    async fn read_msg(&mut self, timeout: Duration) -> Result<Value, SendError> {
        let read = async {
            loop {
                if let Some((v, used)) = proto::try_decode(&self.rbuf).map_err(SendError::Protocol)? {
                    self.rbuf.drain(..used);
                    return Ok(v);
                }
                self.fill().await?;
            }
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| SendError::Timeout(timeout))?
    }

    /// Has the server closed this idle connection? Servers close idle
    /// connections, and a write into one may still succeed locally and be
    /// lost; checking first turns that into a reconnect.
    async fn closed_by_peer(&mut self) -> bool {
        let mut buf = [0u8; 512];
        // A zero timeout still polls the read once: only data or EOF already
        // there are seen, nothing is waited for.
        match tokio::time::timeout(Duration::ZERO, self.io.read(&mut buf)).await {
            Err(_) => false,
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => {
                // A late reply (an ack of a chunk sent again): keep it.
                self.rbuf.extend_from_slice(&buf[..n]);
                self.rbuf.len() > proto::MAX_REPLY
            }
        }
    }

    /// Whether the bytes read but not consumed are a HELO.
    fn holds_helo(&self) -> bool {
        !self.rbuf.is_empty()
            && matches!(proto::try_decode(&self.rbuf), Ok(Some((v, _))) if proto::parse_helo(&v).is_ok())
    }

    /// Writes one chunk (head, event stream, options) and flushes it.
    pub async fn write_chunk(&mut self, chunk: &Chunk, timeout: Duration) -> Result<(), SendError> {
        let head = proto::message_head(&chunk.tag, chunk.body.len());
        let tail = proto::message_tail(chunk.events, chunk.id.as_deref(), chunk.gzip);
        // A server that stops reading (or a path that went dark without a
        // reset) must not hold the chunk forever either; one that reads
        // slowly is not an error, so the timeout is on progress (each write
        // call), not on the whole chunk.
        for part in [&head[..], &chunk.body[..], &tail[..]] {
            let mut rest = part;
            while !rest.is_empty() {
                let n = tokio::time::timeout(timeout, self.io.write(rest))
                    .await
                    .map_err(|_| SendError::Timeout(timeout))?
                    .map_err(SendError::Write)?;
                if n == 0 {
                    return Err(SendError::Write(std::io::ErrorKind::WriteZero.into()));
                }
                rest = &rest[n..];
            }
        }
        tokio::time::timeout(timeout, self.io.flush())
            .await
            .map_err(|_| SendError::Timeout(timeout))?
            .map_err(SendError::Write)
    }

    /// The chunk ids of the acks the server sent: those already read, else
    /// those of one read (possibly none, when a reply is still partial).
    /// Cancel-safe: bytes read are kept in `rbuf` before any other await.
    pub async fn read_acks(&mut self) -> Result<Vec<String>, SendError> {
        let mut ids = self.decode_acks()?;
        if ids.is_empty() {
            self.fill().await?;
            ids = self.decode_acks()?;
        }
        Ok(ids)
    }

    /// One read into `rbuf` (kept there before any other await, so callers
    /// stay cancel-safe); a closed connection is an error that says whether
    /// it cut a reply.
    async fn fill(&mut self) -> Result<(), SendError> {
        let mut buf = [0u8; 4096];
        let n = self.io.read(&mut buf).await.map_err(SendError::Read)?;
        if n == 0 {
            return Err(SendError::Closed(if self.rbuf.is_empty() {
                ""
            } else {
                " in the middle of a reply"
            }));
        }
        self.rbuf.extend_from_slice(&buf[..n]);
        Ok(())
    }

    /// Takes every complete reply out of `rbuf` as an acked chunk id.
    fn decode_acks(&mut self) -> Result<Vec<String>, SendError> {
        let mut ids = Vec::new();
        while let Some((v, used)) = proto::try_decode(&self.rbuf).map_err(SendError::Protocol)? {
            self.rbuf.drain(..used);
            let acked = proto::ack_of(&v).map_err(|e| match e {
                // A server that speaks first wants a handshake.
                ProtoError::Unexpected(m) if m.contains("HELO") => SendError::Auth {
                    peer: self.peer.clone(),
                    cause: AuthError::KeyRequired,
                },
                e => SendError::Protocol(e),
            })?;
            ids.push(acked.to_string());
        }
        Ok(ids)
    }
}

/// The machine's host name, for the handshake when `self_hostname` is unset.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// What the delivery task reports to.
pub struct Sender {
    pub id: String,
    pub cfg: Arc<ForwardSinkConfig>,
    pub m: ComponentMetrics,
    pub health: Arc<Health>,
    pub stop: CancellationToken,
    /// `cfg.endpoints()`: tried in order, the next one after an error.
    pub servers: Vec<ServerAddr>,
}

/// `load_balance = "round_robin"`: one delivery task per server, each
/// preferring its own server and failing over to the others in turn, and
/// chunks handed to them in turn (to the next with room when one is
/// busy). Order holds per server, not across them.
pub async fn run_balanced(template: Sender, mut chunks: mpsc::Receiver<Chunk>) {
    let n = template.servers.len();
    let mut txs = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let mut servers = template.servers.clone();
        servers.rotate_left(i);
        let s = Sender {
            id: template.id.clone(),
            cfg: template.cfg.clone(),
            m: template.m.clone(),
            health: template.health.clone(),
            stop: template.stop.clone(),
            servers,
        };
        let (tx, rx) = mpsc::channel::<Chunk>(1);
        txs.push(tx);
        tasks.push(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            tracing::Instrument::in_current_span(s.run(rx)),
        )));
    }
    let mut next = 0usize;
    'chunks: while let Some(mut chunk) = chunks.recv().await {
        // The next server in turn, or the first after it with room.
        for k in 0..n {
            match txs[(next + k) % n].try_send(chunk) {
                Ok(()) => {
                    next = (next + k + 1) % n;
                    continue 'chunks;
                }
                Err(mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c)) => chunk = c,
            }
        }
        // All busy: wait for the one in turn.
        if txs[next].send(chunk).await.is_err() {
            return;
        }
        next = (next + 1) % n;
    }
    drop(txs);
    for t in tasks {
        let _ = t.await;
    }
}

/// What the delivery task is waiting for next.
enum Event {
    Chunk(Option<Chunk>),
    Acks(Result<Vec<String>, SendError>),
    AckTimeout,
    Stop,
}

impl Sender {
    /// Delivers chunks in order until the input closes or the sink is told to
    /// stop. Up to `max_in_flight` chunks are written ahead of their acks;
    /// an ack releases the chunk of its id, whatever the order. After any
    /// error the connection is dropped and, over a new one, the unacked
    /// chunks are written again in their order, before any new chunk. A
    /// chunk is retried until it is delivered; when abandoned (stop), its
    /// acks drop as failed (see `HeldAck`).
    pub async fn run(self, mut chunks: mpsc::Receiver<Chunk>) {
        let mut conn: Option<Conn> = None;
        let mut tls: Option<tokio_rustls::TlsConnector> = None;
        // Written, waiting for their ack, oldest first.
        let mut in_flight: VecDeque<Chunk> = VecDeque::new();
        // Taken from the channel, not yet written.
        let mut next: Option<Chunk> = None;
        let mut input_open = true;
        // When the oldest unacked chunk times out: `ack_timeout` after it was
        // written or after the last ack, whichever is later.
        let mut deadline = tokio::time::Instant::now();
        let mut failures = Failures::default();
        // The server connections go to; the next one after any error.
        let mut current = 0usize;
        let max = self.cfg.max_in_flight.max(1);
        loop {
            if conn.is_none() && (next.is_some() || !in_flight.is_empty()) {
                let r = tokio::select! {
                    r = self.connect(&mut tls, current) => r,
                    _ = self.stop.cancelled() => return,
                };
                let r = match r {
                    Ok(mut c) => {
                        // The unacked chunks again, in their order.
                        let mut r = Ok(());
                        for ch in &in_flight {
                            let w = tokio::select! {
                                w = c.write_chunk(ch, self.cfg.ack_timeout) => w,
                                _ = self.stop.cancelled() => return,
                            };
                            if let Err(e) = w {
                                r = Err(e);
                                break;
                            }
                        }
                        if r.is_ok() {
                            conn = Some(c);
                            deadline = tokio::time::Instant::now() + self.cfg.ack_timeout;
                        }
                        r
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = r
                    && !self.failed(&mut failures, &mut current, e, &mut conn).await
                {
                    return;
                }
                continue;
            }
            if let Some(ch) = next.take() {
                if in_flight.is_empty()
                    && let Some(c) = conn.as_mut()
                    && let Err(e) = self.check_idle(c).await
                {
                    next = Some(ch);
                    if matches!(e, SendError::Closed(_)) {
                        conn = None;
                    } else if !self.failed(&mut failures, &mut current, e, &mut conn).await {
                        return;
                    }
                    continue;
                }
                let Some(c) = conn.as_mut() else {
                    next = Some(ch);
                    continue;
                };
                let w = tokio::select! {
                    w = c.write_chunk(&ch, self.cfg.ack_timeout) => w,
                    _ = self.stop.cancelled() => return,
                };
                match w {
                    Err(e) => {
                        next = Some(ch);
                        if !self.failed(&mut failures, &mut current, e, &mut conn).await {
                            return;
                        }
                    }
                    // Without an ack asked for, written and flushed is delivered.
                    Ok(()) if ch.id.is_none() => self.delivered(&mut failures, ch),
                    Ok(()) => {
                        if in_flight.is_empty() {
                            deadline = tokio::time::Instant::now() + self.cfg.ack_timeout;
                        }
                        in_flight.push_back(ch);
                    }
                }
                continue;
            }
            if !input_open && in_flight.is_empty() {
                return;
            }
            let take = input_open && in_flight.len() < max;
            let ev = tokio::select! {
                c = chunks.recv(), if take => Event::Chunk(c),
                r = async { conn.as_mut().expect("connected while chunks are in flight").read_acks().await },
                    if !in_flight.is_empty() => Event::Acks(r),
                _ = tokio::time::sleep_until(deadline), if !in_flight.is_empty() => Event::AckTimeout,
                _ = self.stop.cancelled() => Event::Stop,
            };
            match ev {
                Event::Chunk(Some(c)) => next = Some(c),
                Event::Chunk(None) => input_open = false,
                Event::Acks(Ok(ids)) => {
                    for id in ids {
                        match in_flight.iter().position(|c| c.id.as_deref() == Some(id.as_str())) {
                            Some(i) => {
                                let ch = in_flight.remove(i).expect("position is in range");
                                self.delivered(&mut failures, ch);
                                deadline = tokio::time::Instant::now() + self.cfg.ack_timeout;
                            }
                            // An ack of a chunk sent twice, already released.
                            None => tracing::debug!(ack = %id, "ack of no chunk in flight ignored"),
                        }
                    }
                }
                Event::Acks(Err(e)) => {
                    if !self.failed(&mut failures, &mut current, e, &mut conn).await {
                        return;
                    }
                }
                Event::AckTimeout => {
                    if !self
                        .failed(
                            &mut failures,
                            &mut current,
                            SendError::Timeout(self.cfg.ack_timeout),
                            &mut conn,
                        )
                        .await
                    {
                        return;
                    }
                }
                Event::Stop => return,
            }
        }
    }

    async fn connect(&self, tls: &mut Option<tokio_rustls::TlsConnector>, current: usize) -> Result<Conn, SendError> {
        if self.cfg.tls.enabled && tls.is_none() {
            *tls = Some(tls::connector(&self.cfg.tls).map_err(SendError::Tls)?);
        }
        let c = Conn::open(&self.cfg, &self.servers[current], tls.as_ref()).await?;
        if self.servers.len() > 1 {
            tracing::debug!(sink = %self.id, server = %self.servers[current], "connected to forward server");
        }
        Ok(c)
    }

    /// Before writing into a connection with nothing in flight: has the
    /// server closed it (`Closed`), or greeted us with an unasked HELO?
    async fn check_idle(&self, c: &mut Conn) -> Result<(), SendError> {
        let closed = c.closed_by_peer().await;
        // Without `shared_key` (else the HELO was read in `open`), a
        // server that wants a handshake greets us with an unasked HELO
        // and drops what we send; without acks that is the only sign.
        if c.holds_helo() {
            return Err(SendError::Auth {
                peer: c.peer.clone(),
                cause: AuthError::KeyRequired,
            });
        }
        if closed {
            tracing::debug!(sink = %self.id, "the server closed the idle connection; reconnecting");
            return Err(SendError::Closed(""));
        }
        Ok(())
    }

    fn delivered(&self, failures: &mut Failures, chunk: Chunk) {
        failures.attempt = 0;
        if failures.logged.take().is_some() {
            tracing::info!(sink = %self.id, "forward server accepts chunks again");
        }
        self.health.set_sink(&self.id, true);
        chunk.delivered(&self.m);
    }

    /// Counts and reports a failure, drops the connection and waits the
    /// backoff; false when told to stop meanwhile.
    async fn failed(
        &self,
        failures: &mut Failures,
        current: &mut usize,
        e: SendError,
        conn: &mut Option<Conn>,
    ) -> bool {
        *conn = None;
        failures.attempt += 1;
        let attempt = failures.attempt;
        let server = self.servers[*current].clone();
        // Fail over: the next connection goes to the next server.
        let n = self.servers.len() as u32;
        *current = (*current + 1) % self.servers.len();
        self.m.sink_error(e.reason());
        self.m.retries.inc();
        if let SendError::Auth { cause, .. } = &e {
            self.m.handshake_failure(cause.reason());
        }
        if e.needs_operator() {
            self.health.set_sink(&self.id, false);
        }
        let text = e.to_string();
        if failures.logged.as_deref() == Some(text.as_str()) {
            tracing::debug!(sink = %self.id, error = %text, attempt, "forward delivery failed again");
        } else if let SendError::Auth { cause, .. } = &e {
            tracing::error!(sink = %self.id, error = %text, reason = cause.reason(),
                "forward handshake refused; retrying with backoff until the configuration is fixed, records are kept");
        } else {
            tracing::warn!(sink = %self.id, error = %text, %server, next = %self.servers[*current],
                "forward delivery failed; reconnecting and sending the unacked chunks again with backoff, records are kept");
        }
        failures.logged = Some(text);
        // The next server is tried at once; a backoff once each has failed.
        if !attempt.is_multiple_of(n) {
            return !self.stop.is_cancelled();
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff(attempt / n, RETRY_CAP)) => true,
            _ = self.stop.cancelled() => false,
        }
    }
}

/// The current streak of failures: its length (for the backoff) and what
/// the last warning said (one line per streak, and one more whenever the
/// cause changes, never one per retry).
#[derive(Default)]
struct Failures {
    attempt: u32,
    logged: Option<String>,
}

#[cfg(test)]
mod tests;
