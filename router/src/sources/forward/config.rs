//! `[sources.<id>] type = "forward"`.
//!
//! Why both `address` and `path`: the Docker `fluentd` log driver and
//! FireLens talk TCP, while a sidecar sharing a volume with the app can use a
//! unix socket and avoid the network stack; one source may listen on both.
//! Why loopback by default: anything that can connect can write logs under
//! any tag, so listening on other interfaces must be asked for.

use std::net::SocketAddr;
use std::path::PathBuf;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::confdiag::{Ctx, Secret, Seg};

/// The TCP address used when neither `address` nor `path` is set.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:24224";

/// Longest unix socket path the kernel takes (`sun_path` less its NUL).
const MAX_UNIX_PATH: usize = 107;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardSourceConfig {
    /// TCP listen address (`ip:port`); default `127.0.0.1:24224` when `path`
    /// is not set.
    pub address: Option<String>,
    /// Unix socket path; a stale socket file there is removed at start.
    pub path: Option<PathBuf>,
    /// Permissions of the unix socket file, octal.
    #[serde(default = "default_unix_perm")]
    pub unix_perm: String,
    /// Enables the HELO/PING/PONG handshake: clients must prove this key.
    pub shared_key: Option<Secret>,
    /// With users, the handshake also asks for a username and password
    /// (HELO carries an `auth` salt, PING the salted password digest), as
    /// Fluentd's `<user>` and Fluent Bit's `security.users` do.
    #[serde(default)]
    pub users: Vec<ForwardUser>,
    /// The name this server gives in PONG (default: the host name).
    pub self_hostname: Option<String>,
    /// Largest message (one msgpack array) a client may send; larger ones
    /// close the connection.
    #[serde(default = "default_max_frame_size")]
    pub max_frame_size: ByteSize,
    /// Largest record, as JSON; larger ones are dropped and counted.
    #[serde(default = "default_max_record_size")]
    pub max_record_size: ByteSize,
    /// Connections served at once; more wait in the listen backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Joins Docker partial messages (`partial_message`, `partial_id`,
    /// ...) into one record before they leave the source: `true` for the
    /// defaults, or a table with the `partial_message` transform's keys.
    #[serde(default, deserialize_with = "crate::transforms::partial_message::deserialize_option")]
    pub partial: Option<crate::transforms::partial_message::PartialMessageConfig>,
    /// TLS on the TCP listener (not the unix socket): certificate, key and,
    /// for mutual TLS, the CA of the clients.
    pub tls: Option<super::tls::SourceTls>,
}

/// One `users` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardUser {
    pub username: String,
    pub password: Secret,
}

fn default_unix_perm() -> String {
    "0666".to_string()
}

fn default_max_frame_size() -> ByteSize {
    ByteSize::mib(16)
}

fn default_max_record_size() -> ByteSize {
    ByteSize::mib(1)
}

fn default_max_connections() -> usize {
    256
}

impl ForwardSourceConfig {
    /// The TCP address to listen on, if any (the default applies only when
    /// no unix socket is configured). `None` also for an invalid address,
    /// which `validate` rejects.
    pub fn tcp_address(&self) -> Option<SocketAddr> {
        match (&self.address, &self.path) {
            (Some(a), _) => a.parse().ok(),
            (None, None) => DEFAULT_ADDRESS.parse().ok(),
            (None, Some(_)) => None,
        }
    }

    /// `unix_perm` as a mode; `validate` rejects what does not parse.
    pub fn unix_mode(&self) -> u32 {
        u32::from_str_radix(&self.unix_perm, 8).unwrap_or(0o666)
    }

    /// Checks what serde cannot; returns false after reporting problems.
    pub fn validate(&self, ctx: &mut Ctx<'_>, base: &[Seg]) -> bool {
        let at = |k: &str| crate::confdiag::key(base, k);
        let mut ok = true;
        if let Some(a) = &self.address
            && a.parse::<SocketAddr>().is_err()
        {
            ctx.error(
                &at("address"),
                format!("`{a}` is not an `ip:port` address (e.g. \"127.0.0.1:24224\", \"[::1]:24224\")"),
            );
            ok = false;
        }
        if let Some(p) = &self.path {
            let len = p.as_os_str().len();
            if len == 0 {
                ctx.error(&at("path"), "must not be empty");
                ok = false;
            } else if len > MAX_UNIX_PATH {
                ctx.error(
                    &at("path"),
                    format!("unix socket paths are limited to {MAX_UNIX_PATH} bytes, this one has {len}"),
                );
                ok = false;
            }
        } else if self.unix_perm != default_unix_perm() {
            ctx.error(&at("unix_perm"), "only used with `path`");
            ok = false;
        }
        match u32::from_str_radix(&self.unix_perm, 8) {
            Ok(m) if m <= 0o777 => {}
            _ => {
                ctx.error(&at("unix_perm"), "must be an octal mode such as \"0660\"");
                ok = false;
            }
        }
        if self.shared_key.as_ref().is_some_and(Secret::is_empty) {
            ctx.error(
                &at("shared_key"),
                "must not be empty (omit it to accept clients without a handshake)",
            );
            ok = false;
        }
        if self.self_hostname.is_some() && self.shared_key.is_none() {
            ctx.error(&at("self_hostname"), "only used with `shared_key`");
            ok = false;
        }
        if !self.users.is_empty() && self.shared_key.is_none() {
            ctx.error(
                &at("users"),
                "user authentication is part of the shared-key handshake: set `shared_key` too",
            );
            ok = false;
        }
        for (i, u) in self.users.iter().enumerate() {
            let mut p = at("users");
            p.push(Seg::Index(i));
            if u.username.is_empty() {
                p.push(Seg::Key("username".into()));
                ctx.error(&p, "must not be empty");
                ok = false;
            } else if u.password.is_empty() {
                p.push(Seg::Key("password".into()));
                ctx.error(&p, "must not be empty");
                ok = false;
            } else if self.users.iter().take(i).any(|o| o.username == u.username) {
                p.push(Seg::Key("username".into()));
                ctx.error(&p, format!("`{}` is listed twice", u.username));
                ok = false;
            }
        }
        let frame = self.max_frame_size.as_u64();
        if !(1024..=256 * 1024 * 1024).contains(&frame) {
            ctx.error(&at("max_frame_size"), "must be between 1KiB and 256MiB");
            ok = false;
        }
        let record = self.max_record_size.as_u64();
        if !(64..=64 * 1024 * 1024).contains(&record) {
            ctx.error(&at("max_record_size"), "must be between 64B and 64MiB");
            ok = false;
        }
        if !(1..=65536).contains(&self.max_connections) {
            ctx.error(&at("max_connections"), "must be between 1 and 65536");
            ok = false;
        }
        if let Some(p) = &self.partial {
            ok &= p.validate(ctx, &at("partial"));
        }
        if let Some(t) = &self.tls {
            if t.verify_client && t.ca_file.is_none() {
                ctx.error(
                    &at("tls"),
                    "`verify_client = true` needs `ca_file`: the CA client certificates must be signed by",
                );
                ok = false;
            } else if t.ca_file.is_some() && !t.verify_client {
                ctx.error(&at("tls"), "`ca_file` is only used with `verify_client = true`");
                ok = false;
            }
            if self.tcp_address().is_none() {
                ctx.error(&at("tls"), "TLS is for the TCP listener: set `address`");
                ok = false;
            }
        }
        ok
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(a) = self
            .address
            .as_deref()
            .or(self.path.is_none().then_some(DEFAULT_ADDRESS))
        {
            parts.push(format!("tcp {a}"));
        }
        if let Some(p) = &self.path {
            parts.push(format!("unix {} (mode {})", p.display(), self.unix_perm));
        }
        let auth = match (&self.shared_key, self.users.len()) {
            (None, _) => "no handshake".to_string(),
            (Some(_), 0) => "shared_key handshake".to_string(),
            (Some(_), n) => format!("shared_key handshake with {n} user(s)"),
        };
        let auth = match &self.tls {
            Some(t) if t.verify_client => format!("TLS with client certificates, {auth}"),
            Some(_) => format!("TLS, {auth}"),
            None => auth,
        };
        let partial = match &self.partial {
            Some(p) => format!(", then {}", p.describe()),
            None => String::new(),
        };
        format!(
            "forward: {}, {auth}, max_frame_size {}, max_record_size {}, max_connections {}{partial}",
            parts.join(" + "),
            self.max_frame_size,
            self.max_record_size,
            self.max_connections
        )
    }
}
