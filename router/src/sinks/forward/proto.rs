//! The bytes of the Fluent forward protocol v1, client side, without I/O.
//!
//! Why records are transcoded rather than parsed: a record is JSON text
//! (with enrichment spliced in by `Batch::encode`), and msgpack has a value
//! for every JSON value, so `serde_transcode` streams one into the other
//! token by token. No `serde_json::Value` is built per record.
//!
//! Why the chunk is written in three pieces ([`message_head`], the event
//! stream, [`message_tail`]): the event stream is the big part and is built
//! as records arrive; the framing around it is a few bytes written at send
//! time, so the stream is never copied into a message.

use rmpv::Value;
use sha2::{Digest, Sha512};

/// msgpack extension type of `EventTime` (seconds and nanoseconds).
const EVENT_TIME_EXT: i8 = 0;

/// Largest reply from the server we accept (HELO, PONG, ack).
pub const MAX_REPLY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("record is not valid JSON: {0}")]
    Record(String),
    #[error("unexpected message from the server: {0}")]
    Unexpected(String),
    #[error("server reply longer than {MAX_REPLY} bytes")]
    TooLong,
}

/// Appends one entry `[EventTime(ts_ms), record]` to `out`; `json` is the
/// record's JSON object text. On error `out` is left as it was.
pub fn write_entry(out: &mut Vec<u8>, ts_ms: i64, json: &[u8]) -> Result<(), ProtoError> {
    let start = out.len();
    let r = write_entry_inner(out, ts_ms, json);
    if r.is_err() {
        out.truncate(start);
    }
    r
}

fn write_entry_inner(out: &mut Vec<u8>, ts_ms: i64, json: &[u8]) -> Result<(), ProtoError> {
    // Writing to a Vec cannot fail; only the transcoding can.
    let _ = rmp::encode::write_array_len(out, 2);
    let ts = ts_ms.max(0);
    let secs = u32::try_from(ts.div_euclid(1000)).unwrap_or(u32::MAX);
    let nanos = (ts.rem_euclid(1000) as u32) * 1_000_000;
    let _ = rmp::encode::write_ext_meta(out, 8, EVENT_TIME_EXT);
    out.extend_from_slice(&secs.to_be_bytes());
    out.extend_from_slice(&nanos.to_be_bytes());
    let mut de = serde_json::Deserializer::from_slice(json);
    let mut ser = rmp_serde::Serializer::new(&mut *out);
    serde_transcode::transcode(&mut de, &mut ser).map_err(|e| ProtoError::Record(e.to_string()))?;
    de.end().map_err(|e| ProtoError::Record(e.to_string()))
}

/// `[tag, bin(len)` — the start of a PackedForward message whose event
/// stream is `body_len` bytes.
pub fn message_head(tag: &str, body_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(tag.len() + 16);
    let _ = rmp::encode::write_array_len(&mut out, 3);
    let _ = rmp::encode::write_str(&mut out, tag);
    let _ = rmp::encode::write_bin_len(&mut out, u32::try_from(body_len).unwrap_or(u32::MAX));
    out
}

/// The option map ending a PackedForward message: `size` (events), `chunk`
/// (asks the server for an ack) and `compressed`.
pub fn message_tail(events: u64, chunk: Option<&str>, gzip: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    let len = 1 + u32::from(chunk.is_some()) + u32::from(gzip);
    let _ = rmp::encode::write_map_len(&mut out, len);
    let _ = rmp::encode::write_str(&mut out, "size");
    let _ = rmp::encode::write_uint(&mut out, events);
    if let Some(c) = chunk {
        let _ = rmp::encode::write_str(&mut out, "chunk");
        let _ = rmp::encode::write_str(&mut out, c);
    }
    if gzip {
        let _ = rmp::encode::write_str(&mut out, "compressed");
        let _ = rmp::encode::write_str(&mut out, "gzip");
    }
    out
}

/// Decodes one message from the front of `buf`: `Ok(None)` when more bytes
/// are needed, else the value and how many bytes it took.
pub fn try_decode(buf: &[u8]) -> Result<Option<(Value, usize)>, ProtoError> {
    let mut cur = std::io::Cursor::new(buf);
    match rmpv::decode::read_value(&mut cur) {
        Ok(v) => Ok(Some((v, cur.position() as usize))),
        Err(e) if is_eof(&e) => {
            if buf.len() >= MAX_REPLY {
                Err(ProtoError::TooLong)
            } else {
                Ok(None)
            }
        }
        Err(e) => Err(ProtoError::Unexpected(e.to_string())),
    }
}

fn is_eof(e: &rmpv::decode::Error) -> bool {
    match e {
        rmpv::decode::Error::InvalidMarkerRead(io) | rmpv::decode::Error::InvalidDataRead(io) => {
            io.kind() == std::io::ErrorKind::UnexpectedEof
        }
        _ => false,
    }
}

/// The chunk id of an ack reply `{"ack": "<chunk>"}`.
pub fn ack_of(v: &Value) -> Result<&str, ProtoError> {
    let found = v.as_map().and_then(|m| {
        m.iter()
            .find(|(k, _)| k.as_str() == Some("ack"))
            .and_then(|(_, v)| v.as_str())
    });
    found.ok_or_else(|| ProtoError::Unexpected(describe(v)))
}

/// What the server's HELO asks of us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Helo {
    pub nonce: Vec<u8>,
    /// Salt of user authentication; empty when the server wants none.
    pub auth: Vec<u8>,
}

/// `["HELO", {"nonce": ..., "auth": ..., "keepalive": ...}]`.
pub fn parse_helo(v: &Value) -> Result<Helo, ProtoError> {
    let arr = v.as_array().filter(|a| a.len() == 2 && a[0].as_str() == Some("HELO"));
    let Some(opts) = arr.and_then(|a| a[1].as_map()) else {
        return Err(ProtoError::Unexpected(format!("expected HELO, got {}", describe(v))));
    };
    let field = |name: &str| {
        opts.iter()
            .find(|(k, _)| k.as_str() == Some(name))
            .and_then(|(_, v)| bytes_of(v))
    };
    let nonce = field("nonce").ok_or_else(|| ProtoError::Unexpected("HELO without a nonce".into()))?;
    Ok(Helo {
        nonce,
        auth: field("auth").unwrap_or_default(),
    })
}

fn bytes_of(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::Binary(b) => Some(b.clone()),
        Value::String(s) => Some(s.as_bytes().to_vec()),
        _ => None,
    }
}

/// `sha512_hex(salt + hostname + nonce + shared_key)`: the proof both sides
/// give of knowing the key.
pub fn shared_key_digest(salt: &[u8], hostname: &str, nonce: &[u8], key: &str) -> String {
    let mut h = Sha512::new();
    h.update(salt);
    h.update(hostname.as_bytes());
    h.update(nonce);
    h.update(key.as_bytes());
    hex::encode(h.finalize())
}

/// `sha512_hex(auth_salt + username + password)`: the proof of a password
/// when the server's HELO carries an `auth` salt.
pub fn password_digest(auth_salt: &[u8], username: &str, password: &str) -> String {
    let mut h = Sha512::new();
    h.update(auth_salt);
    h.update(username.as_bytes());
    h.update(password.as_bytes());
    hex::encode(h.finalize())
}

/// The user fields of PING.
pub struct Credentials<'a> {
    pub username: &'a str,
    pub password: &'a str,
}

/// `["PING", self_hostname, salt, digest, username, password_digest]`.
///
/// The user fields are empty unless the server asked for user
/// authentication (a non-empty `auth` salt in HELO) and `user` is given: the
/// spec's answer for a server that sends a salt but has no users (Fluent Bit
/// always sends one) is an empty username and password.
pub fn ping(self_hostname: &str, salt: &str, helo: &Helo, key: &str, user: Option<&Credentials<'_>>) -> Vec<u8> {
    let digest = shared_key_digest(salt.as_bytes(), self_hostname, &helo.nonce, key);
    let (username, password) = match user {
        Some(u) if !helo.auth.is_empty() => (u.username, password_digest(&helo.auth, u.username, u.password)),
        _ => ("", String::new()),
    };
    let mut out = Vec::with_capacity(384);
    let _ = rmp::encode::write_array_len(&mut out, 6);
    for s in ["PING", self_hostname, salt, &digest, username, &password] {
        let _ = rmp::encode::write_str(&mut out, s);
    }
    out
}

/// What a PONG said.
#[derive(Debug, PartialEq, Eq)]
pub enum Pong {
    /// Accepted, and the server proved it knows the key.
    Accepted,
    /// `["PONG", false, reason, ...]`.
    Refused(String),
    /// Accepted, but the server's digest is not of our key.
    ServerKeyDiffers,
}

/// Reads `["PONG", ok, reason, server_hostname, digest]`.
pub fn check_pong(v: &Value, salt: &str, helo: &Helo, key: &str) -> Result<Pong, ProtoError> {
    let a = match v.as_array() {
        Some(a) if a.first().and_then(Value::as_str) == Some("PONG") => a,
        _ => return Err(ProtoError::Unexpected(format!("expected PONG, got {}", describe(v)))),
    };
    let field = |i: usize| a.get(i).and_then(Value::as_str);
    if a.get(1).and_then(Value::as_bool) != Some(true) {
        let reason = field(2).filter(|r| !r.is_empty()).unwrap_or("no reason given");
        // The server's words go into our log: bounded.
        let mut cut = reason.len().min(200);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        return Ok(Pong::Refused(reason.get(..cut).unwrap_or(reason).to_string()));
    }
    let want = shared_key_digest(salt.as_bytes(), field(3).unwrap_or_default(), &helo.nonce, key);
    if field(4) != Some(want.as_str()) {
        return Ok(Pong::ServerKeyDiffers);
    }
    Ok(Pong::Accepted)
}

/// A short description of a reply for errors (no record data is ever here).
fn describe(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 120 {
        let mut cut = 120;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// A fresh salt for the handshake.
pub fn new_salt() -> String {
    let mut b = [0u8; 16];
    fastrand::fill(&mut b);
    hex::encode(b)
}

/// Decompresses a CompressedPackedForward event stream (tests).
#[cfg(test)]
pub fn gunzip(data: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out).unwrap();
    out
}

/// Writes the whole message into one buffer (tests).
#[cfg(test)]
pub fn whole_message(tag: &str, body: &[u8], events: u64, chunk: Option<&str>, gzip: bool) -> Vec<u8> {
    let mut out = message_head(tag, body.len());
    out.extend_from_slice(body);
    out.extend_from_slice(&message_tail(events, chunk, gzip));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(mut b: &[u8]) -> Vec<Value> {
        let mut out = Vec::new();
        while !b.is_empty() {
            out.push(rmpv::decode::read_value(&mut b).unwrap());
        }
        out
    }

    #[test]
    fn entries_carry_event_time_and_the_record_as_a_map() {
        let mut body = Vec::new();
        write_entry(
            &mut body,
            1_700_000_000_123,
            br#"{"msg":"h\u00e9llo \"q\"","n":-3,"f":1.5,"big":18446744073709551615,"o":{"a":[1,null,true]}}"#,
        )
        .unwrap();
        write_entry(&mut body, 5, br#"{}"#).unwrap();
        let entries = decode_all(&body);
        assert_eq!(entries.len(), 2);
        let e = entries[0].as_array().unwrap();
        let Value::Ext(0, t) = &e[0] else {
            panic!("not EventTime: {:?}", e[0])
        };
        assert_eq!(&t[..4], &1_700_000_000u32.to_be_bytes());
        assert_eq!(&t[4..], &123_000_000u32.to_be_bytes());
        let rec = e[1].as_map().unwrap();
        let get = |k: &str| rec.iter().find(|(kk, _)| kk.as_str() == Some(k)).unwrap().1.clone();
        assert_eq!(get("msg").as_str(), Some("héllo \"q\""));
        assert_eq!(get("n").as_i64(), Some(-3));
        assert_eq!(get("f").as_f64(), Some(1.5));
        assert_eq!(get("big").as_u64(), Some(u64::MAX));
        let o = get("o");
        let a = o.as_map().unwrap()[0].1.as_array().unwrap();
        assert_eq!(a, &vec![Value::from(1), Value::Nil, Value::from(true)]);
        let Value::Ext(0, t) = &entries[1].as_array().unwrap()[0] else {
            panic!()
        };
        assert_eq!(&t[4..], &5_000_000u32.to_be_bytes());
    }

    #[test]
    fn a_bad_record_leaves_the_stream_as_it_was() {
        let mut body = Vec::new();
        write_entry(&mut body, 0, br#"{"a":1}"#).unwrap();
        let before = body.clone();
        assert!(write_entry(&mut body, 0, br#"{"a":"#).is_err());
        assert!(write_entry(&mut body, 0, br#"{"a":1} x"#).is_err());
        assert_eq!(body, before);
    }

    #[test]
    fn packed_forward_message_layout() {
        let mut body = Vec::new();
        write_entry(&mut body, 1000, br#"{"a":1}"#).unwrap();
        let msg = whole_message("app.web", &body, 1, Some("Y2h1bms="), false);
        let v = decode_all(&msg);
        assert_eq!(v.len(), 1, "one message");
        let a = v[0].as_array().unwrap();
        assert_eq!(a[0].as_str(), Some("app.web"));
        assert_eq!(a[1], Value::Binary(body.clone()));
        assert_eq!(
            a[2],
            Value::Map(vec![
                (Value::from("size"), Value::from(1)),
                (Value::from("chunk"), Value::from("Y2h1bms=")),
            ])
        );
        let t = message_tail(3, None, true);
        assert_eq!(
            decode_all(&t)[0],
            Value::Map(vec![
                (Value::from("size"), Value::from(3)),
                (Value::from("compressed"), Value::from("gzip")),
            ])
        );
    }

    #[test]
    fn replies_are_decoded_only_when_complete() {
        let mut msg = Vec::new();
        rmpv::encode::write_value(&mut msg, &Value::Map(vec![(Value::from("ack"), Value::from("abc"))])).unwrap();
        msg.push(0xc0); // the start of a next message
        for cut in 0..msg.len() - 1 {
            assert!(try_decode(&msg[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        let (v, used) = try_decode(&msg).unwrap().unwrap();
        assert_eq!(used, msg.len() - 1);
        assert_eq!(ack_of(&v).unwrap(), "abc");
        assert!(ack_of(&Value::from("HELO")).is_err());
        let (nil, _) = try_decode(&[0xc0]).unwrap().unwrap();
        assert!(ack_of(&nil).is_err());
        // A reply announcing 4 GiB is cut off at MAX_REPLY bytes.
        let mut huge = vec![0xdb, 0xff, 0xff, 0xff, 0xff];
        huge.resize(MAX_REPLY, b'a');
        assert!(matches!(try_decode(&huge), Err(ProtoError::TooLong)));
    }

    fn helo(auth: &[u8]) -> Helo {
        let v = Value::Array(vec![
            Value::from("HELO"),
            Value::Map(vec![
                (Value::from("nonce"), Value::Binary(b"n0nce".to_vec())),
                (Value::from("auth"), Value::Binary(auth.to_vec())),
                (Value::from("keepalive"), Value::from(true)),
            ]),
        ]);
        parse_helo(&v).unwrap()
    }

    fn sha512_hex(s: &[u8]) -> String {
        hex::encode(Sha512::digest(s))
    }

    #[test]
    fn handshake_digests_match_both_ways() {
        let helo = helo(b"");
        assert_eq!(helo.nonce, b"n0nce");
        let salt = new_salt();
        assert_eq!(salt.len(), 32);
        let ping = decode_all(&ping("client-1", &salt, &helo, "k3y", None));
        let p = ping[0].as_array().unwrap();
        assert_eq!(p.len(), 6);
        assert_eq!(p[0].as_str(), Some("PING"));
        assert_eq!(p[1].as_str(), Some("client-1"));
        // What a server computes from the PING.
        assert_eq!(
            p[3].as_str(),
            Some(sha512_hex(format!("{salt}client-1n0ncek3y").as_bytes()).as_str())
        );
        assert_eq!((p[4].as_str(), p[5].as_str()), (Some(""), Some("")));
        let pong = |ok: bool, key: &str| {
            Value::Array(vec![
                Value::from("PONG"),
                Value::from(ok),
                Value::from(if ok { "" } else { "shared_key mismatch" }),
                Value::from("server-1"),
                Value::from(shared_key_digest(salt.as_bytes(), "server-1", b"n0nce", key)),
            ])
        };
        assert_eq!(
            check_pong(&pong(true, "k3y"), &salt, &helo, "k3y").unwrap(),
            Pong::Accepted
        );
        assert_eq!(
            check_pong(&pong(false, "k3y"), &salt, &helo, "k3y").unwrap(),
            Pong::Refused("shared_key mismatch".into())
        );
        assert_eq!(
            check_pong(&pong(true, "other"), &salt, &helo, "k3y").unwrap(),
            Pong::ServerKeyDiffers
        );
        // A refusal without a reason, short PONGs and other messages.
        let bare = Value::Array(vec![Value::from("PONG"), Value::from(false)]);
        assert_eq!(
            check_pong(&bare, &salt, &helo, "k3y").unwrap(),
            Pong::Refused("no reason given".into())
        );
        assert!(check_pong(&Value::Array(vec![]), &salt, &helo, "k3y").is_err());
        assert!(check_pong(&Value::from("PONG"), &salt, &helo, "k3y").is_err());
        assert!(parse_helo(&Value::from("PONG")).is_err());
    }

    #[test]
    fn a_salt_without_credentials_gets_empty_user_fields() {
        // Fluent Bit's HELO: 16 raw bytes of salt even when it has no users.
        let salted = helo(&[0xff, 0, 7, 200, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(salted.auth.len(), 16);
        let p = decode_all(&ping("c", "s", &salted, "k", None));
        let p = p[0].as_array().unwrap();
        assert_eq!((p[4].as_str(), p[5].as_str()), (Some(""), Some("")));
    }

    #[test]
    fn credentials_are_sent_as_the_salted_digest_only_when_asked_for() {
        let salt = [0xff, 0, 7, 200, b'a', b'b'];
        let user = Credentials {
            username: "alice",
            password: "s3cret",
        };
        let p = decode_all(&ping("c", "s", &helo(&salt), "k", Some(&user)));
        let p = p[0].as_array().unwrap();
        assert_eq!(p[4].as_str(), Some("alice"));
        let mut raw = salt.to_vec();
        raw.extend_from_slice(b"alices3cret");
        assert_eq!(p[5].as_str(), Some(sha512_hex(&raw).as_str()));
        assert_eq!(p[5].as_str(), Some(password_digest(&salt, "alice", "s3cret").as_str()));
        // No salt: the server wants no user, none is sent.
        let p = decode_all(&ping("c", "s", &helo(b""), "k", Some(&user)));
        let p = p[0].as_array().unwrap();
        assert_eq!((p[4].as_str(), p[5].as_str()), (Some(""), Some("")));
    }
}
