//! One connection to the forward server, and the task that delivers closed
//! chunks over it one at a time.
//!
//! Why one chunk in flight: a chunk is acknowledged (or, without
//! `require_ack`, written and flushed) before the next is written, so a
//! failure never leaves a gap behind a later success, and what must be sent
//! again after a reconnect is exactly one chunk. The sink keeps encoding the
//! next chunk meanwhile, so the network wait and the encoding overlap.
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

use std::sync::Arc;
use std::time::Duration;

use rmpv::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::ForwardSinkConfig;
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
    pub async fn open(cfg: &ForwardSinkConfig, tls: Option<&tokio_rustls::TlsConnector>) -> Result<Conn, SendError> {
        let addr = format!("{}:{}", cfg.host, cfg.port);
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((cfg.host.as_str(), cfg.port))).await {
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
                let name = rustls::pki_types::ServerName::try_from(cfg.server_name().to_string())
                    .map_err(|e| SendError::Tls(format!("invalid server name `{}`: {e}", cfg.server_name())))?;
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

    /// Writes one chunk and, when it asked for one, waits for its ack.
    pub async fn send(&mut self, chunk: &Chunk, ack_timeout: Duration) -> Result<(), SendError> {
        let head = proto::message_head(&chunk.tag, chunk.body.len());
        let tail = proto::message_tail(chunk.events, chunk.id.as_deref(), chunk.gzip);
        // A server that stops reading (or a path that went dark without a
        // reset) must not hold the chunk forever either; one that reads
        // slowly is not an error, so the timeout is on progress (each write
        // call), not on the whole chunk.
        for part in [&head[..], &chunk.body[..], &tail[..]] {
            let mut rest = part;
            while !rest.is_empty() {
                let n = tokio::time::timeout(ack_timeout, self.io.write(rest))
                    .await
                    .map_err(|_| SendError::Timeout(ack_timeout))?
                    .map_err(SendError::Write)?;
                if n == 0 {
                    return Err(SendError::Write(std::io::ErrorKind::WriteZero.into()));
                }
                rest = &rest[n..];
            }
        }
        tokio::time::timeout(ack_timeout, self.io.flush())
            .await
            .map_err(|_| SendError::Timeout(ack_timeout))?
            .map_err(SendError::Write)?;
        let Some(id) = &chunk.id else {
            return Ok(());
        };
        loop {
            let reply = self.read_msg(ack_timeout).await?;
            let acked = proto::ack_of(&reply).map_err(|e| match e {
                // A server that speaks first wants a handshake.
                ProtoError::Unexpected(m) if m.contains("HELO") => SendError::Auth {
                    peer: self.peer.clone(),
                    cause: AuthError::KeyRequired,
                },
                e => SendError::Protocol(e),
            })?;
            // An ack of an earlier, resent chunk can still arrive: skip it.
            if acked == id {
                return Ok(());
            }
            tracing::debug!(ack = acked, "ack of another chunk ignored");
        }
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
}

impl Sender {
    /// Delivers chunks in order until the input closes or the sink is told to
    /// stop. A chunk is retried, over new connections, until it is delivered;
    /// when abandoned, its acks drop as failed (see `HeldAck`).
    pub async fn run(self, mut chunks: mpsc::Receiver<Chunk>) {
        let mut conn: Option<Conn> = None;
        let mut tls: Option<tokio_rustls::TlsConnector> = None;
        // What the last warning said: one line per streak of failures, and
        // one more whenever the cause changes, never one per retry.
        let mut logged: Option<String> = None;
        while let Some(chunk) = chunks.recv().await {
            let mut attempt = 0u32;
            loop {
                let r = tokio::select! {
                    r = self.deliver(&mut conn, &mut tls, &chunk) => r,
                    _ = self.stop.cancelled() => return,
                };
                match r {
                    Ok(()) => {
                        if logged.take().is_some() {
                            tracing::info!(sink = %self.id, "forward server accepts chunks again");
                        }
                        self.health.set_sink(&self.id, true);
                        chunk.delivered(&self.m);
                        break;
                    }
                    Err(e) => {
                        conn = None;
                        attempt += 1;
                        self.m.sink_error(e.reason());
                        self.m.retries.inc();
                        if let SendError::Auth { cause, .. } = &e {
                            self.m.handshake_failure(cause.reason());
                        }
                        if e.needs_operator() {
                            self.health.set_sink(&self.id, false);
                        }
                        let text = e.to_string();
                        if logged.as_deref() == Some(text.as_str()) {
                            tracing::debug!(sink = %self.id, error = %text, attempt, "forward delivery failed again");
                        } else if let SendError::Auth { cause, .. } = &e {
                            tracing::error!(sink = %self.id, error = %text, reason = cause.reason(),
                                "forward handshake refused; retrying with backoff until the configuration is fixed, records are kept");
                        } else {
                            tracing::warn!(sink = %self.id, error = %text, host = %self.cfg.host, port = self.cfg.port,
                                "forward delivery failed; reconnecting and sending the chunk again with backoff, records are kept");
                        }
                        logged = Some(text);
                        tokio::select! {
                            _ = tokio::time::sleep(backoff(attempt, RETRY_CAP)) => {}
                            _ = self.stop.cancelled() => return,
                        }
                    }
                }
            }
        }
    }

    async fn deliver(
        &self,
        conn: &mut Option<Conn>,
        tls: &mut Option<tokio_rustls::TlsConnector>,
        chunk: &Chunk,
    ) -> Result<(), SendError> {
        if self.cfg.tls.enabled && tls.is_none() {
            *tls = Some(tls::connector(&self.cfg.tls).map_err(SendError::Tls)?);
        }
        if let Some(c) = conn.as_mut() {
            let closed = c.closed_by_peer().await;
            // Without `shared_key` (else the HELO was read in `open`), a
            // server that wants a handshake greets us with an unasked HELO
            // and drops what we send; without acks that is the only sign.
            if c.holds_helo() {
                let peer = c.peer.clone();
                *conn = None;
                return Err(SendError::Auth {
                    peer,
                    cause: AuthError::KeyRequired,
                });
            }
            if closed {
                tracing::debug!(sink = %self.id, "the server closed the idle connection; reconnecting");
                *conn = None;
            }
        }
        if conn.is_none() {
            *conn = Some(Conn::open(&self.cfg, tls.as_ref()).await?);
        }
        let c = conn.as_mut().expect("connected just above");
        c.send(chunk, self.cfg.ack_timeout).await
    }
}
