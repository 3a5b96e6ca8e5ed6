//! The handshake of a source with a shared key or users: the server's
//! HELO, the client's PING and the server's PONG, and the SHA-512 digests
//! that prove the key and the password.

use super::scan::{Cur, Head};
use super::{FrameError, bad};

#[derive(Debug, PartialEq, Eq)]
pub struct Ping<'a> {
    pub hostname: &'a [u8],
    pub salt: &'a [u8],
    pub digest: &'a [u8],
    /// Empty when the client sends none (or an old client sends 4 fields).
    pub username: &'a [u8],
    /// `sha512_hex(auth_salt + username + password)`, or empty.
    pub password: &'a [u8],
}

pub fn parse_ping(frame: &[u8]) -> Result<Ping<'_>, FrameError> {
    let mut c = Cur { buf: frame, pos: 0 };
    let n = match c.head()? {
        Head::Array(n) if (4..=6).contains(&n) => n,
        _ => return Err(bad("expected PING")),
    };
    if c.raw_str()? != Some(b"PING".as_slice()) {
        return Err(bad("expected PING"));
    }
    let mut field = || c.raw_str().and_then(|s| s.ok_or(bad("PING field is not a string")));
    let (hostname, salt, digest) = (field()?, field()?, field()?);
    let username = if n > 4 { field()? } else { &[] };
    let password = if n > 5 { field()? } else { &[] };
    Ok(Ping {
        hostname,
        salt,
        digest,
        username,
        password,
    })
}

/// Whether what a client sent instead of a PING starts like an event
/// message (`[tag, ...]` with a tag other than "PING"): a client without a
/// shared key sends its data at once. Works on a partial frame.
pub fn looks_like_data(buf: &[u8]) -> bool {
    let mut c = Cur { buf, pos: 0 };
    matches!(c.head(), Ok(Head::Array(2..=4))) && matches!(c.raw_str(), Ok(Some(s)) if s != b"PING")
}

/// `sha512_hex(auth_salt + username + password)`, the password proof of
/// user authentication.
pub fn password_digest(auth_salt: &[u8], username: &[u8], password: &[u8]) -> String {
    use sha2::{Digest, Sha512};
    let mut h = Sha512::new();
    h.update(auth_salt);
    h.update(username);
    h.update(password);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha512_hex(salt + hostname + nonce + shared_key)`, as both sides prove
/// the key.
pub fn shared_key_digest(salt: &[u8], hostname: &[u8], nonce: &[u8], key: &[u8]) -> String {
    use sha2::{Digest, Sha512};
    let mut h = Sha512::new();
    h.update(salt);
    h.update(hostname);
    h.update(nonce);
    h.update(key);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// `["HELO", {"nonce": nonce, "auth": auth_salt, "keepalive": true}]`;
/// `auth_salt` is empty when no user authentication is asked for.
pub fn helo(nonce: &str, auth_salt: &str) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = rmp::encode::write_array_len(&mut out, 2);
    let _ = rmp::encode::write_str(&mut out, "HELO");
    let _ = rmp::encode::write_map_len(&mut out, 3);
    let _ = rmp::encode::write_str(&mut out, "nonce");
    let _ = rmp::encode::write_str(&mut out, nonce);
    let _ = rmp::encode::write_str(&mut out, "auth");
    let _ = rmp::encode::write_str(&mut out, auth_salt);
    let _ = rmp::encode::write_str(&mut out, "keepalive");
    let _ = rmp::encode::write_bool(&mut out, true);
    out
}

/// `["PONG", ok, reason, hostname, digest]`.
pub fn pong(ok: bool, reason: &str, hostname: &str, digest: &str) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = rmp::encode::write_array_len(&mut out, 5);
    let _ = rmp::encode::write_str(&mut out, "PONG");
    let _ = rmp::encode::write_bool(&mut out, ok);
    let _ = rmp::encode::write_str(&mut out, reason);
    let _ = rmp::encode::write_str(&mut out, hostname);
    let _ = rmp::encode::write_str(&mut out, digest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::forward::proto::ack_response;
    use crate::sources::forward::proto::tests::*;

    #[test]
    fn handshake_messages() {
        let nonce = "00ff";
        let h = helo(nonce, "");
        assert_eq!(
            h,
            bytes(&V::A(vec![
                V::S("HELO"),
                V::M(vec![
                    (V::S("nonce"), V::S("00ff")),
                    (V::S("auth"), V::S("")),
                    (V::S("keepalive"), V::Nil)
                ])
            ]))[..h.len() - 1]
                .iter()
                .chain(&[0xc3])
                .copied()
                .collect::<Vec<u8>>()
        );
        let d = shared_key_digest(b"salt", b"client", nonce.as_bytes(), b"secret");
        assert_eq!(d.len(), 128);
        let ping = bytes(&V::A(vec![
            V::S("PING"),
            V::S("client"),
            V::S("salt"),
            V::Raw(d.clone().into_bytes()),
            V::S(""),
            V::S(""),
        ]));
        let p = parse_ping(&ping).unwrap();
        assert_eq!(
            (p.hostname, p.salt, p.digest, p.username, p.password),
            (&b"client"[..], &b"salt"[..], d.as_bytes(), &b""[..], &b""[..])
        );
        let pw = password_digest(b"auth-salt", b"alice", b"pa55");
        let ping = bytes(&V::A(vec![
            V::S("PING"),
            V::S("client"),
            V::S("salt"),
            V::Raw(d.clone().into_bytes()),
            V::S("alice"),
            V::Raw(pw.clone().into_bytes()),
        ]));
        let p = parse_ping(&ping).unwrap();
        assert_eq!((p.username, p.password), (&b"alice"[..], pw.as_bytes()));
        assert!(!looks_like_data(&ping));
        let data = bytes(&V::A(vec![V::S("app"), V::Int(1), V::M(vec![])]));
        assert!(looks_like_data(&data));
        assert!(looks_like_data(&data[..5]), "a partial frame is enough");
        assert!(!looks_like_data(&[]));
        // An old client's four fields: no user.
        let ping = bytes(&V::A(vec![V::S("PING"), V::S("c"), V::S("s"), V::S("d")]));
        assert_eq!(parse_ping(&ping).unwrap().username, b"");
        // HELO with an auth salt.
        let h = helo(nonce, "5a17");
        assert!(h.windows(8).any(|w| w == b"\xa4auth\xa45a"), "{h:?}");
        assert!(parse_ping(&bytes(&V::A(vec![V::S("PONG"), V::S("a"), V::S("b"), V::S("c")]))).is_err());
        assert_eq!(ack_response(b"c1"), bytes(&V::M(vec![(V::S("ack"), V::S("c1"))])));
    }
}
