//! `[sinks.<id>] type = "forward"`.

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::confdiag::{Ctx, Secret, Seg};
use crate::template::Template;

/// Largest chunk we let a user configure: Fluent Bit's `in_forward` refuses
/// messages over its `Buffer_Max_Size` (6,144,000 bytes by default), and a
/// chunk is held in memory until acknowledged.
pub const MAX_CHUNK_SIZE: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardSinkConfig {
    /// Host name or address of the forward server (`${NODE_IP}` for the
    /// node's daemon). Resolved at every connect. Either this or `servers`.
    #[serde(default)]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Forward servers in order of preference (Fluent Bit's upstream
    /// nodes): the sink uses one at a time and, on an error, moves to the
    /// next, backing off once every server has failed in a row.
    #[serde(default)]
    pub servers: Vec<ServerAddr>,
    /// `failover` (default): one server at a time, the next on errors.
    /// `round_robin`: chunks go to the servers in turn, one connection
    /// each, a server's chunks failing over to the others when it fails.
    #[serde(default)]
    pub load_balance: LoadBalance,
    /// Fluent tag of the events; a template (`app.{container_name}`). Default:
    /// the tag the batch arrived with (forward source), else `logferry`.
    pub tag: Option<String>,
    /// Acknowledge a batch upstream only when the server answered
    /// `{"ack": chunk}` for every chunk holding its records.
    #[serde(default = "default_true")]
    pub require_ack: bool,
    /// How long to wait for an ack before the connection is dropped and the
    /// chunk sent again.
    #[serde(default = "default_ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
    #[serde(default)]
    pub compression: ForwardCompression,
    /// Chunks written and not yet acknowledged on one connection (with
    /// `require_ack`); acks are matched by chunk id. 1 waits for each ack
    /// before the next chunk is written.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Uncompressed bytes of events in one chunk.
    #[serde(default = "default_max_chunk_size")]
    pub max_chunk_size: ByteSize,
    /// Longest time an event waits in the sink before its chunk is sent.
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Shared key of the HELO/PING/PONG handshake; without it no handshake.
    pub shared_key: Option<Secret>,
    /// User of the handshake, for a server with user authentication (its
    /// HELO carries an `auth` salt and it has users). Without it the PING
    /// carries an empty username and password, which a server that sends a
    /// salt but has no users (Fluent Bit always does) accepts.
    pub username: Option<String>,
    /// Password of `username`; only its salted digest is sent.
    pub password: Option<Secret>,
    /// Our name in the handshake (default: the machine's host name).
    pub self_hostname: Option<String>,
    #[serde(default)]
    pub tls: TlsOptions,
}

/// One server of `servers`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerAddr {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// How chunks are spread over `servers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalance {
    #[default]
    Failover,
    RoundRobin,
}

/// How the events of a chunk are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ForwardCompression {
    /// PackedForward.
    #[default]
    None,
    /// CompressedPackedForward: the event stream gzipped.
    Gzip,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsOptions {
    #[serde(default)]
    pub enabled: bool,
    /// PEM file of the certificates to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Name the server's certificate must carry (default: `host`).
    pub server_name: Option<String>,
    /// Check the server's certificate; `false` accepts any (tests only).
    #[serde(default = "default_true")]
    pub verify: bool,
    /// PEM: our client certificate (and chain), for a server that asks for
    /// one (mutual TLS); with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM: the private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            enabled: false,
            ca_file: None,
            server_name: None,
            verify: true,
            cert_file: None,
            key_file: None,
        }
    }
}

fn default_port() -> u16 {
    24224
}

fn default_true() -> bool {
    true
}

fn default_ack_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Largest `max_in_flight`: unacked chunks are held in memory.
pub const MAX_IN_FLIGHT: usize = 256;

/// 4, the forward contract's default (issue 15): a sidecar's daemon is on
/// its own node, where a round trip is well under a millisecond and 4 keep
/// the link busy. At 20 ms RTT a sink moves about `max_in_flight` chunks per
/// round trip, so 10x the one-chunk rate needs at least 10 in flight
/// (`tests/forward_latency.rs`: 4 gave 4.1x, 16 gave 15.8x): raise it for
/// links across zones. Unacked chunks are held under `memory_limit`.
fn default_max_in_flight() -> usize {
    4
}

fn default_max_chunk_size() -> ByteSize {
    ByteSize::mib(1)
}

fn default_flush_interval() -> Duration {
    Duration::from_secs(1)
}

impl ForwardSinkConfig {
    pub fn validate(&self, ctx: &mut Ctx<'_>, base: &[Seg]) -> bool {
        let at = |k: &str| crate::confdiag::key(base, k);
        let mut ok = true;
        if self.servers.is_empty() && self.host.trim().is_empty() {
            ctx.error(&at("host"), "must not be empty (set `host`, or a list of `servers`)");
            ok = false;
        }
        if !self.servers.is_empty() && !self.host.is_empty() {
            ctx.error(&at("servers"), "set either `host` (and `port`) or `servers`, not both");
            ok = false;
        }
        if self.load_balance == LoadBalance::RoundRobin && self.servers.len() < 2 {
            ctx.error(&at("load_balance"), "`round_robin` needs at least two `servers`");
            ok = false;
        }
        for (i, srv) in self.servers.iter().enumerate() {
            let mut p = at("servers");
            p.push(Seg::Index(i));
            if srv.host.trim().is_empty() {
                p.push(Seg::Key("host".into()));
                ctx.error(&p, "must not be empty");
                ok = false;
            } else if srv.port == 0 {
                p.push(Seg::Key("port".into()));
                ctx.error(&p, "must be between 1 and 65535");
                ok = false;
            }
        }
        if self.port == 0 {
            ctx.error(&at("port"), "must be between 1 and 65535");
            ok = false;
        }
        if let Some(tag) = &self.tag {
            if tag.is_empty() {
                ctx.error(&at("tag"), "must not be empty");
                ok = false;
            } else if let Err(e) = Template::parse(tag) {
                ctx.error(&at("tag"), e.to_string());
                ok = false;
            }
        }
        if self.ack_timeout < Duration::from_millis(100) {
            ctx.error(&at("ack_timeout"), "must be at least 100ms");
            ok = false;
        }
        if !(1..=MAX_IN_FLIGHT).contains(&self.max_in_flight) {
            ctx.error(&at("max_in_flight"), format!("must be between 1 and {MAX_IN_FLIGHT}"));
            ok = false;
        }
        if !(1024..=MAX_CHUNK_SIZE).contains(&self.max_chunk_size.as_u64()) {
            ctx.error(&at("max_chunk_size"), "must be between 1KiB and 16MiB");
            ok = false;
        }
        if self.flush_interval < Duration::from_millis(10) {
            ctx.error(&at("flush_interval"), "must be at least 10ms");
            ok = false;
        }
        if self.shared_key.as_ref().is_some_and(Secret::is_empty) {
            ctx.error(&at("shared_key"), "must not be empty (omit it for no handshake)");
            ok = false;
        }
        if self.self_hostname.is_some() && self.shared_key.is_none() {
            ctx.error(&at("self_hostname"), "only used in the handshake: set `shared_key` too");
            ok = false;
        }
        match (&self.username, &self.password) {
            (Some(_), None) => {
                ctx.error(&at("username"), "set `password` too");
                ok = false;
            }
            (None, Some(_)) => {
                ctx.error(&at("password"), "set `username` too");
                ok = false;
            }
            (Some(u), Some(_)) if u.is_empty() => {
                ctx.error(
                    &at("username"),
                    "must not be empty (omit both for no user authentication)",
                );
                ok = false;
            }
            (Some(_), Some(_)) if self.shared_key.is_none() => {
                ctx.error(
                    &at("username"),
                    "user authentication is part of the shared-key handshake: set `shared_key` too",
                );
                ok = false;
            }
            _ => {}
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            ctx.error(
                &at("tls"),
                "set both `cert_file` and `key_file` (a client certificate and its key)",
            );
            ok = false;
        }
        let tls_set = self.tls.ca_file.is_some()
            || self.tls.server_name.is_some()
            || !self.tls.verify
            || self.tls.cert_file.is_some()
            || self.tls.key_file.is_some();
        if tls_set && !self.tls.enabled {
            ctx.error(&at("tls"), "TLS options given but `enabled` is not true");
            ok = false;
        }
        ok
    }

    /// The name TLS checks the server's certificate against.
    pub fn server_name(&self) -> &str {
        self.tls.server_name.as_deref().unwrap_or(&self.host)
    }

    /// The servers to deliver to, in order: `servers`, else `host`/`port`.
    pub fn endpoints(&self) -> Vec<ServerAddr> {
        if self.servers.is_empty() {
            vec![ServerAddr {
                host: self.host.clone(),
                port: self.port,
            }]
        } else {
            self.servers.clone()
        }
    }
}
