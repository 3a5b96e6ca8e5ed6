//! The server side of the handshake: checking a client's PING against the
//! shared key and `users`, and the error that names the cause for the
//! operator (wire messages are in `proto/handshake.rs`).

use std::io::Read as _;
use std::time::Duration;

use super::config;
use super::proto::{self, FrameError};

/// Why a client failed the handshake, worded for the operator who has to
/// change a config on one side or the other (the client is the subject).
#[derive(Debug, thiserror::Error)]
pub(super) enum HandshakeError {
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
    pub(super) fn reason(&self) -> &'static str {
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
    pub(super) fn pong_reason(&self) -> &'static str {
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
pub(super) fn check_ping(
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

/// A nonce for HELO: 16 random bytes, hex.
pub(super) fn random_hex() -> std::io::Result<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}
