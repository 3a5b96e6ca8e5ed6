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
            ids = self.decode_acks()?;
        }
        Ok(ids)
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
mod tests {
    use super::*;
    use crate::event::{Ack, AckToken, HeldAck};
    use crate::memory::Charge;
    use crate::metrics::Metrics;
    use tokio::net::TcpListener;

    /// The server side of one connection: reads PackedForward messages and
    /// answers acks when told to.
    struct Peer {
        io: TcpStream,
        buf: Vec<u8>,
    }

    impl Peer {
        /// The chunk id of the next message; None at EOF.
        async fn next_chunk(&mut self) -> Option<String> {
            loop {
                let mut cur = std::io::Cursor::new(&self.buf[..]);
                if let Ok(v) = rmpv::decode::read_value(&mut cur) {
                    let used = cur.position() as usize;
                    self.buf.drain(..used);
                    let opts = v.as_array().expect("a message is an array")[2]
                        .as_map()
                        .unwrap()
                        .clone();
                    let id = opts
                        .iter()
                        .find(|(k, _)| k.as_str() == Some("chunk"))
                        .unwrap()
                        .1
                        .clone();
                    return Some(id.as_str().unwrap().to_string());
                }
                let mut b = [0u8; 4096];
                let n = self.io.read(&mut b).await.ok()?;
                if n == 0 {
                    return None;
                }
                self.buf.extend_from_slice(&b[..n]);
            }
        }

        async fn ack(&mut self, id: &str) {
            let v = Value::Map(vec![(Value::from("ack"), Value::from(id))]);
            let mut out = Vec::new();
            rmpv::encode::write_value(&mut out, &v).unwrap();
            // The client may be gone (a test stopping it): nothing to do.
            let _ = self.io.write_all(&out).await;
        }
    }

    struct Rig {
        listeners: Vec<TcpListener>,
        chunks: mpsc::Sender<Chunk>,
        acks: std::sync::mpsc::Receiver<Ack>,
        ack_tx: std::sync::mpsc::Sender<Ack>,
        m: ComponentMetrics,
        memory: Arc<tokio::sync::Semaphore>,
        task: tokio::task::JoinHandle<()>,
        stop: CancellationToken,
    }

    async fn rig(max_in_flight: usize) -> Rig {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        rig_with(
            vec![listener],
            &format!("host = \"127.0.0.1\"\nport = {port}\nmax_in_flight = {max_in_flight}"),
        )
        .await
    }

    /// A port nothing listens on.
    async fn dead_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    }

    /// `servers = [...]` of these ports.
    fn servers(ports: &[u16]) -> String {
        let list: Vec<String> = ports
            .iter()
            .map(|p| format!("{{ host = \"127.0.0.1\", port = {p} }}"))
            .collect();
        format!("servers = [{}]", list.join(", "))
    }

    async fn rig_with(listeners: Vec<TcpListener>, cfg: &str) -> Rig {
        let cfg: ForwardSinkConfig = toml::from_str(&format!("{cfg}\nack_timeout = \"60s\"")).unwrap();
        let m = Metrics::new().component("fw", "forward");
        let stop = CancellationToken::new();
        let sender = Sender {
            id: "fw".into(),
            servers: cfg.endpoints(),
            cfg: Arc::new(cfg),
            m: m.clone(),
            health: Arc::new(Health::default()),
            stop: stop.clone(),
        };
        let (tx, rx) = mpsc::channel(1);
        let task = if sender.cfg.load_balance == super::super::LoadBalance::RoundRobin {
            tokio::spawn(run_balanced(sender, rx))
        } else {
            tokio::spawn(sender.run(rx))
        };
        let (ack_tx, acks) = std::sync::mpsc::channel();
        Rig {
            listeners,
            chunks: tx,
            acks,
            ack_tx,
            m,
            memory: Arc::new(tokio::sync::Semaphore::new(1 << 20)),
            task,
            stop,
        }
    }

    impl Rig {
        /// Chunk `seq`, its own ack token numbered `seq`, 100 bytes charged.
        fn chunk(&self, seq: u64) -> Chunk {
            let mut charge = Charge::new(self.memory.clone());
            assert!(charge.resize(100));
            Chunk {
                tag: "t".into(),
                body: vec![0xc0; 100],
                events: 1,
                gzip: false,
                id: Some(format!("chunk-{seq}")),
                acks: vec![HeldAck(Some(AckToken::new(1, seq, self.ack_tx.clone())))],
                _charge: charge,
            }
        }

        async fn peer(&self) -> Peer {
            self.peer_at(0).await
        }

        async fn peer_at(&self, i: usize) -> Peer {
            let (io, _) = tokio::time::timeout(Duration::from_secs(30), self.listeners[i].accept())
                .await
                .expect("the sink connects")
                .unwrap();
            Peer { io, buf: Vec::new() }
        }

        /// The next batch ack, waiting generously.
        async fn next_ack(&self) -> Ack {
            for _ in 0..3000 {
                if let Ok(a) = self.acks.try_recv() {
                    return a;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("no ack within 30s");
        }

        fn charged(&self) -> usize {
            (1 << 20) - self.memory.available_permits()
        }
    }

    #[tokio::test]
    async fn acks_out_of_order_release_exactly_their_chunks() {
        let r = rig(4).await;
        for seq in 0..4 {
            r.chunks.send(r.chunk(seq)).await.unwrap();
        }
        let mut p = r.peer().await;
        // All four are written before any ack: pipelined.
        let mut ids = Vec::new();
        for _ in 0..4 {
            ids.push(p.next_chunk().await.unwrap());
        }
        assert_eq!(ids, ["chunk-0", "chunk-1", "chunk-2", "chunk-3"]);
        assert_eq!(r.charged(), 400, "unacked chunks stay charged");
        // Acked 2, 3, 0, 1 (and one unknown id, ignored): each releases its own.
        p.ack("chunk-2").await;
        let a = r.next_ack().await;
        assert_eq!((a.seq, a.delivered), (2, true));
        assert!(r.acks.try_recv().is_err(), "only chunk 2 was acked");
        p.ack("nobody").await;
        p.ack("chunk-3").await;
        assert_eq!(r.next_ack().await.seq, 3);
        p.ack("chunk-0").await;
        assert_eq!(r.next_ack().await.seq, 0);
        assert!(r.acks.try_recv().is_err(), "chunk 1 is still unacked");
        assert_eq!(r.charged(), 100);
        p.ack("chunk-1").await;
        let a = r.next_ack().await;
        assert_eq!((a.seq, a.delivered), (1, true));
        assert_eq!(r.m.sent_events.get(), 4);
        assert_eq!(r.charged(), 0);
        drop(r.chunks);
        tokio::time::timeout(Duration::from_secs(30), r.task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.m.retries.get(), 0);
    }

    #[tokio::test]
    async fn a_dropped_connection_resends_the_unacked_chunks_in_order() {
        let r = rig(4).await;
        for seq in 0..4 {
            r.chunks.send(r.chunk(seq)).await.unwrap();
        }
        let mut p = r.peer().await;
        for _ in 0..4 {
            p.next_chunk().await.unwrap();
        }
        p.ack("chunk-1").await;
        assert_eq!(r.next_ack().await.seq, 1);
        // Hang up with 0, 2 and 3 in flight; more chunks queue meanwhile.
        drop(p);
        let feeder = {
            let more: Vec<Chunk> = (4..8).map(|s| r.chunk(s)).collect();
            let tx = r.chunks.clone();
            tokio::spawn(async move {
                for c in more {
                    tx.send(c).await.unwrap();
                }
            })
        };
        let mut p = r.peer().await;
        let mut ids = Vec::new();
        while ids.len() < 7 {
            let id = p.next_chunk().await.unwrap();
            ids.push(id.clone());
            p.ack(&id).await;
        }
        // The unacked ones first, in their order, then the new ones.
        assert_eq!(
            ids,
            [
                "chunk-0", "chunk-2", "chunk-3", "chunk-4", "chunk-5", "chunk-6", "chunk-7"
            ]
        );
        let mut seqs: Vec<u64> = Vec::new();
        for _ in 0..7 {
            let a = r.next_ack().await;
            assert!(a.delivered);
            seqs.push(a.seq);
        }
        seqs.sort();
        assert_eq!(seqs, [0, 2, 3, 4, 5, 6, 7]);
        assert_eq!(r.m.sent_events.get(), 8);
        assert!(r.m.retries.get() >= 1);
        feeder.await.unwrap();
        drop(r.chunks);
        tokio::time::timeout(Duration::from_secs(30), r.task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn max_in_flight_one_writes_each_chunk_after_the_last_ack() {
        let r = rig(1).await;
        let feeder = {
            let all: Vec<Chunk> = (0..5).map(|s| r.chunk(s)).collect();
            let tx = r.chunks.clone();
            tokio::spawn(async move {
                for c in all {
                    tx.send(c).await.unwrap();
                }
            })
        };
        let mut p = r.peer().await;
        for seq in 0..5u64 {
            let id = p.next_chunk().await.unwrap();
            assert_eq!(id, format!("chunk-{seq}"));
            // Give a sink that does not wait every chance to write ahead.
            tokio::time::sleep(Duration::from_millis(30)).await;
            let mut b = [0u8; 1];
            let early = tokio::time::timeout(Duration::ZERO, p.io.peek(&mut b)).await;
            assert!(
                !matches!(early, Ok(Ok(n)) if n > 0) && p.buf.is_empty(),
                "chunk {} written before chunk {seq} was acked",
                seq + 1
            );
            p.ack(&id).await;
            assert_eq!(r.next_ack().await.seq, seq);
        }
        feeder.await.unwrap();
        drop(r.chunks);
        tokio::time::timeout(Duration::from_secs(30), r.task)
            .await
            .unwrap()
            .unwrap();
        r.stop.cancel();
    }

    #[tokio::test]
    async fn a_dead_first_server_sends_everything_to_the_second() {
        let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_port = live.local_addr().unwrap().port();
        let dead = dead_port().await;
        let r = rig_with(
            vec![live],
            &format!("{}\nmax_in_flight = 4", servers(&[dead, live_port])),
        )
        .await;
        let feeder = {
            let all: Vec<Chunk> = (0..10).map(|s| r.chunk(s)).collect();
            let tx = r.chunks.clone();
            tokio::spawn(async move {
                for c in all {
                    tx.send(c).await.unwrap();
                }
            })
        };
        let mut p = r.peer_at(0).await;
        let mut ids = Vec::new();
        while ids.len() < 10 {
            let id = p.next_chunk().await.unwrap();
            p.ack(&id).await;
            ids.push(id);
        }
        let want: Vec<String> = (0..10).map(|s| format!("chunk-{s}")).collect();
        assert_eq!(ids, want);
        let mut seqs: Vec<u64> = Vec::new();
        for _ in 0..10 {
            let a = r.next_ack().await;
            assert!(a.delivered);
            seqs.push(a.seq);
        }
        seqs.sort();
        assert_eq!(seqs, (0..10).collect::<Vec<_>>());
        // One refused connect to the dead server, no more: the sink stays on
        // the live one.
        assert_eq!(r.m.retries.get(), 1);
        feeder.await.unwrap();
        drop(r.chunks);
        tokio::time::timeout(Duration::from_secs(30), r.task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_server_dying_mid_stream_loses_nothing() {
        let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ports = [a.local_addr().unwrap().port(), b.local_addr().unwrap().port()];
        let mut r = rig_with(vec![a, b], &format!("{}\nmax_in_flight = 4", servers(&ports))).await;
        let feeder = {
            let all: Vec<Chunk> = (0..12).map(|s| r.chunk(s)).collect();
            let tx = r.chunks.clone();
            tokio::spawn(async move {
                for c in all {
                    tx.send(c).await.unwrap();
                }
            })
        };
        // A takes four, acks 0 and 2, and dies (its listener too).
        let mut p = r.peer_at(0).await;
        for _ in 0..4 {
            p.next_chunk().await.unwrap();
        }
        p.ack("chunk-0").await;
        p.ack("chunk-2").await;
        let mut early = vec![r.next_ack().await.seq, r.next_ack().await.seq];
        early.sort();
        assert_eq!(early, [0, 2]);
        drop(p);
        drop(r.listeners.remove(0));
        // B gets the unacked 1 and 3 first, in order, then the rest.
        let mut p = r.peer_at(0).await;
        let mut ids = Vec::new();
        while ids.len() < 10 {
            let id = p.next_chunk().await.unwrap();
            p.ack(&id).await;
            ids.push(id);
        }
        let want: Vec<String> = [1, 3, 4, 5, 6, 7, 8, 9, 10, 11]
            .iter()
            .map(|s| format!("chunk-{s}"))
            .collect();
        assert_eq!(ids, want);
        let mut seqs: Vec<u64> = Vec::new();
        for _ in 0..10 {
            let a = r.next_ack().await;
            assert!(a.delivered, "chunk {} failed", a.seq);
            seqs.push(a.seq);
        }
        seqs.sort();
        assert_eq!(seqs, [1, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(r.m.sent_events.get(), 12);
        feeder.await.unwrap();
        drop(r.chunks);
        tokio::time::timeout(Duration::from_secs(30), r.task)
            .await
            .unwrap()
            .unwrap();
    }

    /// Accepts one connection on `l`, acks every chunk until EOF; the ids.
    async fn serve_all(l: &TcpListener) -> Vec<String> {
        let (io, _) = tokio::time::timeout(Duration::from_secs(30), l.accept())
            .await
            .expect("the sink connects")
            .unwrap();
        let mut p = Peer { io, buf: Vec::new() };
        let mut ids = Vec::new();
        while let Some(id) = p.next_chunk().await {
            p.ack(&id).await;
            ids.push(id);
        }
        ids
    }

    fn seq_of(id: &str) -> u64 {
        id.trim_start_matches("chunk-").parse().unwrap()
    }

    #[tokio::test]
    async fn round_robin_spreads_chunks_over_the_servers_and_delivers_all() {
        let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ports = [a.local_addr().unwrap().port(), b.local_addr().unwrap().port()];
        let r = rig_with(
            vec![a, b],
            &format!("{}\nload_balance = \"round_robin\"\nmax_in_flight = 2", servers(&ports)),
        )
        .await;
        let feeder = {
            let all: Vec<Chunk> = (0..20).map(|s| r.chunk(s)).collect();
            let tx = r.chunks.clone();
            tokio::spawn(async move {
                for c in all {
                    tx.send(c).await.unwrap();
                }
            })
        };
        let acks = async {
            let mut seqs = Vec::new();
            for _ in 0..20 {
                let a = r.next_ack().await;
                assert!(a.delivered);
                seqs.push(a.seq);
            }
            // Everything acked: stop, so the servers see EOF.
            r.stop.cancel();
            seqs
        };
        let (on_a, on_b, mut seqs) = tokio::join!(serve_all(&r.listeners[0]), serve_all(&r.listeners[1]), acks);
        seqs.sort();
        assert_eq!(seqs, (0..20).collect::<Vec<_>>());
        assert!(!on_a.is_empty() && !on_b.is_empty(), "a: {on_a:?}, b: {on_b:?}");
        let mut all: Vec<u64> = on_a.iter().chain(&on_b).map(|i| seq_of(i)).collect();
        all.sort();
        assert_eq!(all, (0..20).collect::<Vec<_>>(), "each chunk to one server, once");
        for side in [&on_a, &on_b] {
            let s: Vec<u64> = side.iter().map(|i| seq_of(i)).collect();
            assert!(s.windows(2).all(|w| w[0] < w[1]), "order per server: {s:?}");
        }
        assert_eq!(r.m.sent_events.get(), 20);
        feeder.await.unwrap();
    }

    #[tokio::test]
    async fn round_robin_with_a_dead_server_delivers_everything_to_the_other() {
        let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ports = [dead_port().await, live.local_addr().unwrap().port()];
        let r = rig_with(
            vec![live],
            &format!("{}\nload_balance = \"round_robin\"", servers(&ports)),
        )
        .await;
        let feeder = {
            let all: Vec<Chunk> = (0..10).map(|s| r.chunk(s)).collect();
            let tx = r.chunks.clone();
            tokio::spawn(async move {
                for c in all {
                    tx.send(c).await.unwrap();
                }
            })
        };
        // The dead server's task fails over to the live one: two connections there.
        let serve_two = async {
            let (x, y) = tokio::join!(serve_all(&r.listeners[0]), serve_all(&r.listeners[0]));
            [x, y].concat()
        };
        let acks = async {
            let mut seqs = Vec::new();
            for _ in 0..10 {
                let a = r.next_ack().await;
                assert!(a.delivered);
                seqs.push(a.seq);
            }
            r.stop.cancel();
            seqs
        };
        let (ids, mut seqs) = tokio::join!(serve_two, acks);
        seqs.sort();
        assert_eq!(seqs, (0..10).collect::<Vec<_>>());
        let mut got: Vec<u64> = ids.iter().map(|i| seq_of(i)).collect();
        got.sort();
        got.dedup();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        feeder.await.unwrap();
    }
}
