//! The forward source through the real binary: clients over TCP and a unix
//! socket, every mode, chunk acks after delivery, bad frames, the shared_key
//! handshake, and `--exit-on-eof`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// A msgpack value.
#[derive(Clone)]
enum V {
    Int(i64),
    S(String),
    B(Vec<u8>),
    A(Vec<V>),
    M(Vec<(V, V)>),
    /// EventTime (seconds, nanoseconds).
    T(u32, u32),
}

fn s(x: &str) -> V {
    V::S(x.to_string())
}

fn enc(v: &V, out: &mut Vec<u8>) {
    use rmp::encode as e;
    match v {
        V::Int(i) => {
            e::write_sint(out, *i).unwrap();
        }
        V::S(x) => e::write_str(out, x).unwrap(),
        V::B(b) => e::write_bin(out, b).unwrap(),
        V::A(items) => {
            e::write_array_len(out, items.len() as u32).unwrap();
            items.iter().for_each(|i| enc(i, out));
        }
        V::M(pairs) => {
            e::write_map_len(out, pairs.len() as u32).unwrap();
            for (k, v) in pairs {
                enc(k, out);
                enc(v, out);
            }
        }
        V::T(sec, ns) => {
            e::write_ext_meta(out, 8, 0).unwrap();
            out.extend_from_slice(&sec.to_be_bytes());
            out.extend_from_slice(&ns.to_be_bytes());
        }
    }
}

fn bytes(v: &V) -> Vec<u8> {
    let mut out = Vec::new();
    enc(v, &mut out);
    out
}

/// 2026-11-25T23:15:47Z
const SECS: u32 = 1_795_648_547;

fn record(i: u64, log: &str) -> V {
    V::M(vec![
        (s("id"), V::Int(i as i64)),
        (s("log"), s(log)),
        (s("container_name"), s("app")),
        (s("source"), s("stdout")),
    ])
}

fn chunk_opt(chunk: &str) -> V {
    V::M(vec![(s("chunk"), s(chunk))])
}

fn packed(ids: std::ops::Range<u64>) -> Vec<u8> {
    let mut p = Vec::new();
    for i in ids {
        enc(&V::A(vec![V::T(SECS, 5_000_000), record(i, "packed")]), &mut p);
    }
    p
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

fn tcp(port: u16) -> Box<dyn Stream> {
    let c = TcpStream::connect(("127.0.0.1", port)).expect("connect tcp");
    // Hang guards only.
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    Box::new(c)
}

fn unix(path: &Path) -> Box<dyn Stream> {
    let c = UnixStream::connect(path).expect("connect unix");
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    Box::new(c)
}

/// Reads one msgpack value's bytes (enough for the small answers a server
/// sends: acks, HELO, PONG).
fn read_reply(c: &mut dyn Stream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match c.read(&mut byte) {
            Ok(0) => return buf,
            Ok(_) => buf.push(byte[0]),
            Err(e) => panic!("no reply: {e}"),
        }
        if complete(&buf) {
            return buf;
        }
    }
}

/// Is `buf` one complete msgpack value? (Decoding with rmp's reader.)
fn complete(buf: &[u8]) -> bool {
    let mut rd = buf;
    skip(&mut rd).is_some() && rd.is_empty()
}

fn skip(rd: &mut &[u8]) -> Option<()> {
    use rmp::Marker;
    let m = rmp::decode::read_marker(rd).ok()?;
    let take = |rd: &mut &[u8], n: usize| -> Option<()> {
        if rd.len() < n {
            return None;
        }
        *rd = &rd[n..];
        Some(())
    };
    let be = |rd: &mut &[u8], n: usize| -> Option<usize> {
        let v = rd.get(..n)?.iter().fold(0usize, |a, b| (a << 8) | *b as usize);
        *rd = &rd[n..];
        Some(v)
    };
    match m {
        Marker::FixStr(n) => take(rd, n as usize),
        Marker::Str8 | Marker::Bin8 => {
            let n = be(rd, 1)?;
            take(rd, n)
        }
        Marker::Str16 | Marker::Bin16 => {
            let n = be(rd, 2)?;
            take(rd, n)
        }
        Marker::FixArray(n) => (0..n).try_for_each(|_| skip(rd)),
        Marker::FixMap(n) => (0..2 * n).try_for_each(|_| skip(rd)),
        Marker::True | Marker::False | Marker::Null | Marker::FixPos(_) => Some(()),
        _ => None,
    }
}

/// The strings and booleans of a flat reply, in order (maps flattened).
fn flat(reply: &[u8]) -> Vec<String> {
    let mut rd = reply;
    let mut out = Vec::new();
    fn walk(rd: &mut &[u8], out: &mut Vec<String>) {
        use rmp::Marker;
        let Ok(m) = rmp::decode::read_marker(rd) else { return };
        let mut str_of = |n: usize, rd: &mut &[u8]| {
            out.push(String::from_utf8_lossy(&rd[..n]).to_string());
            *rd = &rd[n..];
        };
        match m {
            Marker::FixStr(n) => str_of(n as usize, rd),
            Marker::Str8 => {
                let n = rd[0] as usize;
                *rd = &rd[1..];
                str_of(n, rd)
            }
            Marker::FixArray(n) => (0..n).for_each(|_| walk(rd, out)),
            Marker::FixMap(n) => (0..2 * n).for_each(|_| walk(rd, out)),
            Marker::True => out.push("true".into()),
            Marker::False => out.push("false".into()),
            _ => out.push("?".into()),
        }
    }
    walk(&mut rd, &mut out);
    out
}

/// Sends a frame with `chunk` and waits for `{"ack": chunk}`.
fn send_acked(c: &mut dyn Stream, frame: &V, chunk: &str) {
    c.write_all(&bytes(frame)).unwrap();
    let reply = read_reply(c);
    assert_eq!(
        flat(&reply),
        vec!["ack".to_string(), chunk.to_string()],
        "ack of {chunk}"
    );
}

/// Has the connection been closed by the server?
fn closed(c: &mut dyn Stream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match c.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e) => panic!("connection still open: {e}"),
        }
    }
}

fn config(env: &Env, source: &str, api_port: u16) -> std::path::PathBuf {
    env.write_config(&format!(
        r#"
[global]
data_dir = "{data}"

[api]
address = "127.0.0.1:{api_port}"

[sources.fw]
type = "forward"
{source}

[sinks.out]
type = "file"
inputs = ["fw"]
path = "{out}"
key_prefix = "{{tag}}/"
compression = "none"
flush_interval = "300ms"
"#,
        data = env.path("data").display(),
        out = env.path("out").display(),
    ))
}

fn ids_with(records: &[Value], log: &str) -> Vec<u64> {
    let mut ids: Vec<u64> = records
        .iter()
        .filter(|r| r["log"] == log)
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    ids.sort();
    ids
}

#[test]
fn every_mode_over_tcp_and_unix_is_delivered_before_its_chunk_is_acked() {
    let env = Env::new();
    let (port, api) = (free_port(), free_port());
    let sock = env.path("fluent.sock");
    let cfg = config(
        &env,
        &format!("address = \"127.0.0.1:{port}\"\npath = \"{}\"", sock.display()),
        api,
    );
    // A stale socket file from an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let router = spawn(&cfg, &[]);
    wait_listening(port);
    // ...but a live one is not taken over: a second router fails to start.
    let other = env.path("other.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&format!("127.0.0.1:{port}"), "127.0.0.1:0");
    let text = text.replace(&format!("127.0.0.1:{api}"), "127.0.0.1:0");
    // Its own data_dir: only the socket is shared.
    let text = text.replace(
        &env.path("data").display().to_string(),
        &env.path("data2").display().to_string(),
    );
    std::fs::write(&other, text).unwrap();
    let (status, stderr) = spawn(&other, &[]).wait(Duration::from_secs(60));
    assert!(!status.success() && stderr.contains("in use"), "{stderr}");
    let mode = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o666
    );

    // Message over TCP, EventTime with nanoseconds.
    let mut t = tcp(port);
    send_acked(
        &mut *t,
        &V::A(vec![
            s("app.one"),
            V::T(SECS, 123_000_000),
            record(0, "message"),
            chunk_opt("c-msg"),
        ]),
        "c-msg",
    );
    // Acked means durable in the sink: the record is already in the output.
    assert_eq!(ids_with(&env.records(), "message"), vec![0]);

    // Forward over the unix socket, integer time.
    let mut u = unix(&sock);
    let entries = (1..4)
        .map(|i| V::A(vec![V::Int(i64::from(SECS)), record(i, "forward")]))
        .collect();
    send_acked(
        &mut *u,
        &V::A(vec![s("app.two"), V::A(entries), chunk_opt("c-fwd")]),
        "c-fwd",
    );
    assert_eq!(ids_with(&env.records(), "forward"), vec![1, 2, 3]);

    // PackedForward over TCP.
    send_acked(
        &mut *t,
        &V::A(vec![s("app.one"), V::B(packed(10..110)), chunk_opt("c-packed")]),
        "c-packed",
    );
    assert_eq!(ids_with(&env.records(), "packed"), (10..110).collect::<Vec<_>>());

    // CompressedPackedForward over the unix socket, two gzip members.
    let raw = packed(200..1200);
    let mut payload = gzip(&raw[..raw.len() / 3]);
    payload.extend(gzip(&raw[raw.len() / 3..]));
    let opt = V::M(vec![
        (s("chunk"), s("c-gz")),
        (s("compressed"), s("gzip")),
        (s("size"), V::Int(1000)),
    ]);
    send_acked(&mut *u, &V::A(vec![s("app.two"), V::B(payload), opt]), "c-gz");
    assert_eq!(
        ids_with(&env.records(), "packed"),
        (10..110).chain(200..1200).collect::<Vec<_>>()
    );

    // Fields kept as sent; @timestamp from the event time; the tag only in
    // the key (templates), not in the record.
    let records = env.records();
    let first = records.iter().find(|r| r["id"] == 0).unwrap();
    assert_eq!(
        *first,
        json!({"@timestamp": "2026-11-25T23:15:47.123Z", "id": 0, "log": "message",
               "container_name": "app", "source": "stdout"})
    );
    let gz = records.iter().find(|r| r["id"] == 500).unwrap();
    assert_eq!(gz["@timestamp"], "2026-11-25T23:15:47.005Z");
    let objects: Vec<String> = logferry::sinks::file::list_objects(&env.path("out"))
        .iter()
        .map(|p| p.strip_prefix(env.path("out")).unwrap().display().to_string())
        .collect();
    assert!(
        objects
            .iter()
            .all(|o| o.starts_with("app.one/") || o.starts_with("app.two/")),
        "{objects:?}"
    );
    assert!(objects.iter().any(|o| o.starts_with("app.one/")) && objects.iter().any(|o| o.starts_with("app.two/")));
    let m = http_get(api, "/metrics").unwrap().1;
    let want = ["component=\"fw\""];
    assert_eq!(
        metric(&m, "logferry_component_received_events_total", &want),
        Some(1104.0)
    );
    assert_eq!(metric(&m, "logferry_source_acked_events_total", &want), Some(1104.0));
    assert_eq!(metric(&m, "logferry_source_connections", &want), Some(2.0));

    drop((t, u));
    wait_for("the connections to close", Duration::from_secs(30), || {
        let m = http_get(api, "/metrics").unwrap().1;
        metric(&m, "logferry_source_connections", &want) == Some(0.0)
    });
    router.signal(libc::SIGTERM);
    let (status, stderr) = router.wait(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    assert!(!sock.exists(), "socket file left behind");
    assert_eq!(env.records().len(), 1104);
}

#[test]
fn bad_frames_close_only_their_connection() {
    let env = Env::new();
    let (port, api) = (free_port(), free_port());
    let cfg = config(
        &env,
        &format!("address = \"127.0.0.1:{port}\"\nmax_frame_size = \"4KiB\""),
        api,
    );
    let _router = spawn(&cfg, &[]);
    wait_listening(port);

    // Not a forward message: a map at the top.
    let mut a = tcp(port);
    a.write_all(&bytes(&V::M(vec![(s("a"), V::Int(1))]))).unwrap();
    assert!(closed(&mut *a));
    // A record that is not a map.
    let mut b = tcp(port);
    b.write_all(&bytes(&V::A(vec![s("t"), V::Int(1), s("text")]))).unwrap();
    assert!(closed(&mut *b));
    // Larger than max_frame_size: refused from its header.
    let mut c = tcp(port);
    let big = bytes(&V::A(vec![s("t"), V::B(vec![0x90; 8192])]));
    let _ = c.write_all(&big);
    assert!(closed(&mut *c));
    // Truncated gzip payload.
    let mut d = tcp(port);
    let mut z = gzip(&packed(0..10));
    z.truncate(z.len() / 2);
    let opt = V::M(vec![(s("compressed"), s("gzip"))]);
    d.write_all(&bytes(&V::A(vec![s("t"), V::B(z), opt]))).unwrap();
    assert!(closed(&mut *d));

    // The server still serves.
    let mut ok = tcp(port);
    send_acked(
        &mut *ok,
        &V::A(vec![s("t"), V::Int(1), record(7, "after"), chunk_opt("c1")]),
        "c1",
    );
    assert_eq!(ids_with(&env.records(), "after"), vec![7]);
    // Fluent Bit metrics (fluent_signal = 1) are no records: acked, counted, dropped.
    let opt = V::M(vec![(s("fluent_signal"), V::Int(1)), (s("chunk"), s("sig"))]);
    send_acked(&mut *ok, &V::A(vec![s("metrics"), V::B(vec![1, 2, 3]), opt]), "sig");
    let m = http_get(api, "/metrics").unwrap().1;
    let reason = |r: &str| {
        metric(
            &m,
            "logferry_component_discarded_events_total",
            &[&format!("reason=\"{r}\"")],
        )
    };
    assert_eq!(reason("malformed_frame"), Some(3.0), "{m}");
    assert_eq!(reason("frame_too_large"), Some(1.0), "{m}");
    assert_eq!(reason("unsupported_signal"), Some(1.0), "{m}");
    // Nothing of the refused frames was delivered.
    assert_eq!(env.records().len(), 1);
}

fn sha512_hex(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha512};
    let mut h = Sha512::new();
    parts.iter().for_each(|p| h.update(p));
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads HELO, sends PING with `key`, returns the PONG's fields and the nonce.
fn handshake(c: &mut dyn Stream, key: &str) -> (Vec<String>, String) {
    let helo = flat(&read_reply(c));
    assert_eq!(helo[0], "HELO");
    let nonce = helo[helo.iter().position(|x| x == "nonce").unwrap() + 1].clone();
    let digest = sha512_hex(&[b"salt1", b"client-host", nonce.as_bytes(), key.as_bytes()]);
    let ping = V::A(vec![s("PING"), s("client-host"), s("salt1"), s(&digest), s(""), s("")]);
    c.write_all(&bytes(&ping)).unwrap();
    (flat(&read_reply(c)), nonce)
}

#[test]
fn shared_key_handshake_admits_the_right_key_only() {
    let env = Env::new();
    let (port, api) = (free_port(), free_port());
    let source = format!("address = \"127.0.0.1:{port}\"\nshared_key = \"s3cret\"\nself_hostname = \"router-1\"");
    let cfg = config(&env, &source, api);
    let _router = spawn(&cfg, &[]);
    wait_listening(port);

    let mut good = tcp(port);
    let (pong, nonce) = handshake(&mut *good, "s3cret");
    let server_digest = sha512_hex(&[b"salt1", b"router-1", nonce.as_bytes(), b"s3cret"]);
    assert_eq!(pong, vec!["PONG", "true", "", "router-1", &server_digest]);
    send_acked(
        &mut *good,
        &V::A(vec![s("t"), V::Int(1), record(1, "authed"), chunk_opt("k1")]),
        "k1",
    );
    assert_eq!(ids_with(&env.records(), "authed"), vec![1]);

    let mut bad = tcp(port);
    let (pong, _) = handshake(&mut *bad, "wrong");
    assert_eq!(&pong[..2], ["PONG", "false"]);
    assert!(closed(&mut *bad));
    let m = http_get(api, "/metrics").unwrap().1;
    assert_eq!(
        metric(
            &m,
            "logferry_component_discarded_events_total",
            &["reason=\"auth_failed\""]
        ),
        Some(1.0)
    );
    assert_eq!(ids_with(&env.records(), "authed"), vec![1]);
}

/// Reads HELO, sends a PING with `key` and the given user fields (the
/// password digest is computed from the HELO's auth salt); returns the
/// PONG's fields and the salt.
fn handshake_as(c: &mut dyn Stream, key: &str, user: &str, password: &str) -> (Vec<String>, String) {
    let helo = flat(&read_reply(c));
    assert_eq!(helo[0], "HELO");
    let field = |name: &str| helo[helo.iter().position(|x| x == name).unwrap() + 1].clone();
    let (nonce, auth) = (field("nonce"), field("auth"));
    let digest = sha512_hex(&[b"salt1", b"client-host", nonce.as_bytes(), key.as_bytes()]);
    let pw = if user.is_empty() {
        String::new()
    } else {
        sha512_hex(&[auth.as_bytes(), user.as_bytes(), password.as_bytes()])
    };
    let ping = V::A(vec![
        s("PING"),
        s("client-host"),
        s("salt1"),
        s(&digest),
        s(user),
        s(&pw),
    ]);
    c.write_all(&bytes(&ping)).unwrap();
    (flat(&read_reply(c)), auth)
}

#[test]
fn users_are_checked_by_their_salted_password_digest() {
    let env = Env::new();
    let (port, api) = (free_port(), free_port());
    let source = format!(
        "address = \"127.0.0.1:{port}\"\nshared_key = \"s3cret\"\nusers = [{{ username = \"bob\", password = \"b0b\" }}, {{ username = \"alice\", password = \"pa55\" }}]"
    );
    let cfg = config(&env, &source, api);
    // At debug, so the second `user_refused` (warned once a minute per
    // host) shows too.
    let router = spawn(&cfg, &[("LOGFERRY_LOG", "debug")]);
    wait_listening(port);

    let mut good = tcp(port);
    let (pong, salt) = handshake_as(&mut *good, "s3cret", "alice", "pa55");
    // A salt asks for a user: fresh per connection, never empty.
    assert_eq!(salt.len(), 32, "{salt}");
    assert_eq!(&pong[..3], ["PONG", "true", ""]);
    send_acked(
        &mut *good,
        &V::A(vec![s("t"), V::Int(1), record(1, "alice"), chunk_opt("k1")]),
        "k1",
    );
    assert_eq!(ids_with(&env.records(), "alice"), vec![1]);

    // Wrong password, unknown user, no user, wrong key: refused with the
    // spec's PONG, counted by reason, logged naming the client.
    for (key, user, pw, reason) in [
        ("s3cret", "alice", "nope", "user_refused"),
        ("s3cret", "mallory", "pa55", "user_refused"),
        ("s3cret", "", "", "user_required"),
        ("other", "alice", "pa55", "shared_key_mismatch"),
    ] {
        let mut bad = tcp(port);
        let (pong, _) = handshake_as(&mut *bad, key, user, pw);
        let want = if reason == "shared_key_mismatch" {
            "shared_key mismatch"
        } else {
            "username/password mismatch"
        };
        assert_eq!(&pong[..3], ["PONG", "false", want], "{user}/{pw}");
        assert!(closed(&mut *bad));
    }
    let m = http_get(api, "/metrics").unwrap().1;
    let failures = |r: &str| {
        metric(
            &m,
            "logferry_forward_handshake_failures_total",
            &["component=\"fw\"", &format!("reason=\"{r}\"")],
        )
    };
    assert_eq!(failures("user_refused"), Some(2.0), "{m}");
    assert_eq!(failures("user_required"), Some(1.0), "{m}");
    assert_eq!(failures("shared_key_mismatch"), Some(1.0), "{m}");
    let err = router.stderr();
    for says in [
        "sent a wrong password for user \"alice\"",
        "sent username \"mallory\", which is not in `users`",
        "sent no username, but this source has `users`",
        "proved a different shared key",
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(says))
            .unwrap_or_else(|| panic!("no `{says}` in {err}"));
        assert!(line.contains("peer=127.0.0.1:") && line.contains("source=fw"), "{line}");
    }
    assert!(!err.contains("pa55") && !err.contains("nope"), "{err}");
    assert_eq!(ids_with(&env.records(), "alice"), vec![1]);
}

#[test]
fn a_client_without_the_key_is_told_apart_and_logged_once_a_minute() {
    let env = Env::new();
    let (port, api) = (free_port(), free_port());
    let source = format!("address = \"127.0.0.1:{port}\"\nshared_key = \"s3cret\"");
    let cfg = config(&env, &source, api);
    let router = spawn(&cfg, &[]);
    wait_listening(port);
    // A client with no key sends its data at once.
    for i in 0..3 {
        let mut c = tcp(port);
        let helo = flat(&read_reply(&mut *c));
        assert_eq!(helo[0], "HELO");
        // No users: the auth salt is empty.
        assert_eq!(helo[helo.iter().position(|x| x == "auth").unwrap() + 1], "");
        c.write_all(&bytes(&V::A(vec![
            s("t"),
            V::Int(1),
            record(i, "nokey"),
            chunk_opt("c"),
        ])))
        .unwrap();
        let _ = read_reply(&mut *c); // PONG false, then closed
        assert!(closed(&mut *c));
    }
    let m = http_get(api, "/metrics").unwrap().1;
    assert_eq!(
        metric(&m, "logferry_forward_handshake_failures_total", &["reason=\"no_ping\""]),
        Some(3.0),
        "{m}"
    );
    let err = router.stderr();
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("failed the handshake")).collect();
    assert_eq!(
        lines.len(),
        1,
        "repeats from one host within a minute are not warned again: {err}"
    );
    assert!(
        lines[0].contains("sent data without the handshake this source requires"),
        "{err}"
    );
    assert!(ids_with(&env.records(), "nokey").is_empty());
}

#[test]
fn exit_on_eof_ends_after_the_last_connection_with_everything_delivered() {
    let env = Env::new();
    let sock = env.path("f.sock");
    let cfg = config(&env, &format!("path = \"{}\"", sock.display()), free_port());
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["run", "--exit-on-eof", "--config"]).arg(&cfg);
    let child = cmd.spawn().unwrap();
    // No probe connection: the first connection to end would end the run.
    wait_for("the socket", Duration::from_secs(60), || sock.exists());
    let mut c = UnixStream::connect(&sock).unwrap();
    c.write_all(&bytes(&V::A(vec![s("bulk"), V::B(packed(0..5000))])))
        .unwrap();
    drop(c);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_each_once(&env.records(), 5000);
    assert!(!sock.exists());
}

#[test]
fn a_chunk_whose_batch_failed_is_never_acked() {
    let env = Env::new();
    let (port, api) = (free_port(), free_port());
    // The sink's root is a regular file: every object fails, every batch
    // is settled as failed.
    let cfg = config(&env, &format!("address = \"127.0.0.1:{port}\""), api);
    std::fs::remove_dir(env.path("out")).unwrap();
    std::fs::write(env.path("out"), b"not a directory").unwrap();
    let router = spawn(&cfg, &[]);
    wait_listening(port);
    let mut c = tcp(port);
    c.write_all(&bytes(&V::A(vec![
        s("t"),
        V::Int(1),
        record(1, "lost?"),
        chunk_opt("never"),
    ])))
    .unwrap();
    let want = ["component=\"fw\""];
    wait_for("the batch to fail", Duration::from_secs(60), || {
        let m = http_get(api, "/metrics").map(|r| r.1).unwrap_or_default();
        metric(&m, "logferry_source_failed_events_total", &want) == Some(1.0)
    });
    // Everything the server will ever write on this connection arrives
    // before it closes it at shutdown: no ack among it.
    router.signal(libc::SIGTERM);
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "unexpected reply {rest:?}");
    let (status, stderr) = router.wait(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
}

#[test]
fn a_stop_closes_the_listener_and_drains_open_connections() {
    let env = Env::new();
    let (port, api) = (free_port(), free_port());
    let cfg = config(&env, &format!("address = \"127.0.0.1:{port}\""), api);
    // A long quiet period: the open connection is still read after the stop.
    let text =
        std::fs::read_to_string(&cfg).unwrap() + "\n[lifecycle]\ndrain_quiet = \"30s\"\ndrain_timeout = \"60s\"\n";
    std::fs::write(&cfg, text).unwrap();
    let router = spawn(&cfg, &[]);
    wait_listening(port);
    let mut open = tcp(port);
    send_acked(
        &mut *open,
        &V::A(vec![s("t"), V::Int(1), record(1, "before"), chunk_opt("b")]),
        "b",
    );
    router.signal(libc::SIGTERM);
    wait_for("the listener to close", Duration::from_secs(60), || {
        TcpStream::connect(("127.0.0.1", port)).is_err()
    });
    // Still served: a chunk sent during the drain is delivered and acked.
    send_acked(
        &mut *open,
        &V::A(vec![s("t"), V::Int(1), record(2, "during"), chunk_opt("d")]),
        "d",
    );
    assert_eq!(ids_with(&env.records(), "during"), vec![2]);
    // The client leaving ends the drain early.
    drop(open);
    let (status, stderr) = router.wait(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    assert_eq!(env.records().len(), 2);
}
