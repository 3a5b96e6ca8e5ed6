//! The `forward` sink through the real binary, against a small Fluent
//! forward server written here (std threads, `rmpv` decoding): PackedForward
//! and CompressedPackedForward, acks, the shared-key handshake, TLS.
//!
//! Length: over 1,000 lines because every case shares the one fake server
//! written in this file (frames, acks, handshake, TLS); split by concern when it grows.

mod common;

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rmpv::Value;
use sha2::{Digest, Sha512};

const LONG: Duration = Duration::from_secs(90);
/// Event time of record `id` (ms), as written in its `ts` field.
const T0: i64 = 1_767_225_600_000;

/// One PackedForward message as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    conn: usize,
    tag: String,
    size: Option<u64>,
    chunk: Option<String>,
    gzip: bool,
    /// (event time ms, record)
    events: Vec<(i64, serde_json::Value)>,
}

#[derive(Default)]
struct Behaviour {
    shared_key: Option<String>,
    /// HELO carries a 16-byte `auth` salt (raw bytes, as Fluent Bit sends).
    auth_salt: bool,
    /// Users (name, password) the PING's user fields must prove; with
    /// `auth_salt` and no users, they must be empty (the spec).
    users: Vec<(String, String)>,
    /// Never ack what the first connection sends.
    drop_first: bool,
    /// Acks wait until this is set (when `gate` is used).
    gate: Option<Arc<AtomicBool>>,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Hang up after each message, as a server closing idle connections.
    close_after_message: bool,
    /// The first connection is never read from (a stuck server).
    stall_first: bool,
}

struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// PING digests that did not match (handshake failures seen).
    bad_pings: Arc<AtomicUsize>,
    /// The user fields of every PING: (username, password digest).
    pings: Arc<Mutex<Vec<(String, String)>>>,
}

impl Server {
    fn start(b: Behaviour) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let bad_pings = Arc::new(AtomicUsize::new(0));
        let pings = Arc::new(Mutex::new(Vec::new()));
        let b = Arc::new(b);
        let (seen2, bad2, pings2) = (seen.clone(), bad_pings.clone(), pings.clone());
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                let (b, seen, bad, pings) = (b.clone(), seen2.clone(), bad2.clone(), pings2.clone());
                std::thread::spawn(move || {
                    let _ = match &b.tls {
                        Some(cfg) => {
                            let tls = rustls::ServerConnection::new(cfg.clone()).unwrap();
                            serve(n, rustls::StreamOwned::new(tls, stream), &b, &seen, &bad, &pings)
                        }
                        None => serve(n, stream, &b, &seen, &bad, &pings),
                    };
                });
            }
        });
        Server {
            port,
            seen,
            bad_pings,
            pings,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many distinct ids arrived (a chunk sent again repeats some).
    fn distinct_ids(&self) -> u64 {
        let ids: std::collections::BTreeSet<u64> = self.records().iter().filter_map(|r| r["id"].as_u64()).collect();
        ids.len() as u64
    }

    /// Every event received, in order.
    fn records(&self) -> Vec<serde_json::Value> {
        self.seen()
            .into_iter()
            .flat_map(|s| s.events.into_iter().map(|(_, r)| r))
            .collect()
    }
}

fn sha512_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha512::new();
    for p in parts {
        h.update(p);
    }
    hex::encode(h.finalize())
}

fn write_value(w: &mut impl Write, v: &Value) -> std::io::Result<()> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).unwrap();
    w.write_all(&out)?;
    w.flush()
}

fn get<'a>(map: &'a Value, key: &str) -> Option<&'a Value> {
    map.as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Nil => serde_json::Value::Null,
        Value::Boolean(b) => (*b).into(),
        Value::Integer(i) => match i.as_u64() {
            Some(u) => u.into(),
            None => i.as_i64().unwrap().into(),
        },
        Value::F32(f) => (*f as f64).into(),
        Value::F64(f) => (*f).into(),
        Value::String(s) => s.as_str().expect("valid UTF-8 string").into(),
        Value::Array(a) => a.iter().map(to_json).collect(),
        Value::Map(m) => m
            .iter()
            .map(|(k, v)| (k.as_str().expect("string key").to_string(), to_json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        other => panic!("unexpected msgpack value in a record: {other:?}"),
    }
}

/// One connection: the handshake if configured, then messages until EOF.
fn serve<S: Read + Write>(
    conn: usize,
    mut stream: S,
    b: &Behaviour,
    seen: &Mutex<Vec<Seen>>,
    bad_pings: &AtomicUsize,
    pings: &Mutex<Vec<(String, String)>>,
) -> std::io::Result<()> {
    if b.stall_first && conn == 0 {
        std::thread::sleep(Duration::from_secs(300));
        return Ok(());
    }
    if let Some(key) = &b.shared_key {
        let nonce = format!("nonce-{conn}").into_bytes();
        // Raw bytes in a str, as Fluent Bit sends them (not valid UTF-8).
        let salt: Vec<u8> = if b.auth_salt {
            (0..16u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect()
        } else {
            Vec::new()
        };
        let mut helo = Vec::new();
        rmp::encode::write_array_len(&mut helo, 2).unwrap();
        rmp::encode::write_str(&mut helo, "HELO").unwrap();
        rmp::encode::write_map_len(&mut helo, 3).unwrap();
        rmp::encode::write_str(&mut helo, "nonce").unwrap();
        rmp::encode::write_bin(&mut helo, &nonce).unwrap();
        rmp::encode::write_str(&mut helo, "auth").unwrap();
        rmp::encode::write_str_len(&mut helo, salt.len() as u32).unwrap();
        helo.extend_from_slice(&salt);
        rmp::encode::write_str(&mut helo, "keepalive").unwrap();
        rmp::encode::write_bool(&mut helo, true).unwrap();
        stream.write_all(&helo)?;
        stream.flush()?;
        let ping = rmpv::decode::read_value(&mut stream).map_err(std::io::Error::other)?;
        let p = ping.as_array().cloned().unwrap_or_default();
        if p.first().and_then(|v| v.as_str()) != Some("PING") || p.len() != 6 {
            // Data from a client without the key, or a short PING.
            bad_pings.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        }
        let text = |i: usize| p[i].as_str().unwrap_or_default().to_string();
        let (host, ping_salt, digest, user, password) = (text(1), text(2), text(3), text(4), text(5));
        pings.lock().unwrap().push((user.clone(), password.clone()));
        let key_ok = digest == sha512_hex(&[ping_salt.as_bytes(), host.as_bytes(), &nonce, key.as_bytes()]);
        let user_ok = if b.users.is_empty() {
            user.is_empty() && password.is_empty()
        } else {
            b.users
                .iter()
                .any(|(u, pw)| *u == user && password == sha512_hex(&[&salt[..], u.as_bytes(), pw.as_bytes()]))
        };
        let ok = key_ok && user_ok;
        if !ok {
            bad_pings.fetch_add(1, Ordering::SeqCst);
        }
        let reason = match (key_ok, user_ok) {
            (true, true) => "",
            (false, _) => "shared_key mismatch",
            (true, false) => "username/password mismatch",
        };
        let pong = Value::Array(vec![
            "PONG".into(),
            ok.into(),
            reason.into(),
            "test-server".into(),
            sha512_hex(&[ping_salt.as_bytes(), b"test-server", &nonce, key.as_bytes()]).into(),
        ]);
        write_value(&mut stream, &pong)?;
        if !ok {
            return Ok(());
        }
    }
    let mut reader = BufReader::new(stream);
    loop {
        let msg = match rmpv::decode::read_value(&mut reader) {
            Ok(v) => v,
            Err(_) => return Ok(()), // closed
        };
        let a = msg.as_array().expect("a forward message is an array");
        assert_eq!(a.len(), 3, "PackedForward has tag, entries, option: {a:?}");
        let tag = a[0].as_str().unwrap().to_string();
        let opt = &a[2];
        let gzip = get(opt, "compressed").and_then(|v| v.as_str()) == Some("gzip");
        let raw = match &a[1] {
            Value::Binary(b) => b.clone(),
            other => panic!("entries should be bin: {other:?}"),
        };
        let stream_bytes = if gzip {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        } else {
            raw
        };
        let mut cur = &stream_bytes[..];
        let mut events = Vec::new();
        while !cur.is_empty() {
            let e = rmpv::decode::read_value(&mut cur).unwrap();
            let e = e.as_array().unwrap();
            let Value::Ext(0, t) = &e[0] else {
                panic!("event time is not EventTime: {:?}", e[0])
            };
            let secs = u32::from_be_bytes(t[..4].try_into().unwrap()) as i64;
            let nanos = u32::from_be_bytes(t[4..].try_into().unwrap()) as i64;
            events.push((secs * 1000 + nanos / 1_000_000, to_json(&e[1])));
        }
        let chunk = get(opt, "chunk").and_then(|v| v.as_str()).map(str::to_string);
        seen.lock().unwrap().push(Seen {
            conn,
            tag,
            size: get(opt, "size").and_then(|v| v.as_u64()),
            chunk: chunk.clone(),
            gzip,
            events,
        });
        if b.close_after_message {
            return Ok(());
        }
        let Some(chunk) = chunk else { continue };
        if b.drop_first && conn == 0 {
            continue; // never acked; the sink must time out and resend
        }
        if let Some(g) = &b.gate {
            while !g.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let ack = Value::Map(vec![("ack".into(), chunk.into())]);
        write_value(reader.get_mut(), &ack)?;
    }
}

/// `logs/app.log` with ids `0..n`, event time `T0 + id` ms; `level` is
/// `info` for the first half and `warn` for the rest.
fn write_logs(env: &Env, n: u64) {
    let mut s = String::new();
    for i in 0..n {
        let level = if i < n / 2 { "info" } else { "warn" };
        s.push_str(&format!(
            "{{\"id\":{i},\"ts\":{},\"level\":\"{level}\",\"msg\":\"line {i} \\u00e9 \\\"quoted\\\"\",\"n\":{{\"f\":1.5,\"neg\":-{}}}}}\n",
            T0 + i as i64,
            i + 1
        ));
    }
    std::fs::write(env.logs().join("app.log"), s).unwrap();
}

/// file source (event time from `ts`) -> forward sink with `sink` options.
fn config(env: &Env, port: u16, sink: &str, api: Option<u16>) -> std::path::PathBuf {
    env.file_to_forward(
        api,
        "time_key = \"ts\"\ntime_format = \"epoch_ms\"",
        &format!("host = \"127.0.0.1\"\nport = {port}\n{sink}"),
    )
}

/// Every id `0..n` received at least once, each with its own fields and
/// event time; returns how many times each id arrived.
fn check_records(events: &[(i64, serde_json::Value)], n: u64) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for (t, r) in events {
        let id = r["id"].as_u64().expect("id");
        *counts.entry(id).or_insert(0) += 1;
        assert_eq!(*t, T0 + id as i64, "event time of {id}");
        assert_eq!(r["msg"], format!("line {id} é \"quoted\""));
        assert_eq!(r["n"]["f"], 1.5);
        assert_eq!(r["n"]["neg"], -(id as i64) - 1);
        assert_eq!(r["level"], if id < n / 2 { "info" } else { "warn" });
        assert!(r["@timestamp"].as_str().unwrap().starts_with("2026-01-01T00:0"), "{r}");
    }
    let missing: Vec<u64> = (0..n).filter(|i| !counts.contains_key(i)).take(10).collect();
    assert!(missing.is_empty(), "missing ids (first 10): {missing:?}");
    assert_eq!(counts.len() as u64, n, "unexpected ids");
    counts
}

fn all_events(seen: &[Seen]) -> Vec<(i64, serde_json::Value)> {
    seen.iter().flat_map(|s| s.events.iter().cloned()).collect()
}

#[test]
fn every_record_arrives_once_with_fields_time_and_acks() {
    let env = Env::new();
    let n = 5000;
    write_logs(&env, n);
    let server = Server::start(Behaviour::default());
    let cfg = config(&env, server.port, "max_chunk_size = \"64KiB\"", None);
    run_to_eof(&cfg, &[]);
    let seen = server.seen();
    let counts = check_records(&all_events(&seen), n);
    assert!(
        counts.values().all(|c| *c == 1),
        "a record arrived twice without any failure"
    );
    assert!(seen.len() > 1, "64KiB chunks: several messages");
    for s in &seen {
        assert_eq!(s.tag, "logferry");
        assert_eq!(s.size, Some(s.events.len() as u64));
        assert!(s.chunk.is_some(), "require_ack is the default");
        assert!(!s.gzip);
    }
    let ids: std::collections::HashSet<_> = seen.iter().map(|s| s.chunk.clone()).collect();
    assert_eq!(ids.len(), seen.len(), "chunk ids are unique");
    assert_eq!(server.records().len() as u64, n);
}

#[test]
fn gzip_chunks_decode_and_tag_template_splits_chunks() {
    let env = Env::new();
    let n = 2000;
    write_logs(&env, n);
    let server = Server::start(Behaviour::default());
    let cfg = config(
        &env,
        server.port,
        "compression = \"gzip\"\ntag = \"app.{level}\"\nrequire_ack = false",
        None,
    );
    run_to_eof(&cfg, &[]);
    // Without acks the router may exit before the server has read the last
    // chunk from its socket.
    wait_for("the server to read everything", LONG, || {
        server.records().len() as u64 >= n
    });
    let seen = server.seen();
    let counts = check_records(&all_events(&seen), n);
    assert!(counts.values().all(|c| *c == 1));
    for s in &seen {
        assert!(s.gzip, "CompressedPackedForward");
        assert!(s.chunk.is_none(), "no ack asked without require_ack");
        for (_, r) in &s.events {
            assert_eq!(
                s.tag,
                format!("app.{}", r["level"].as_str().unwrap()),
                "one tag per chunk"
            );
        }
    }
    assert!(seen.iter().any(|s| s.tag == "app.info") && seen.iter().any(|s| s.tag == "app.warn"));
}

fn metrics_of(port: u16) -> String {
    http_get(port, "/metrics").map(|(_, b)| b).unwrap_or_default()
}

#[test]
fn unacked_chunk_is_resent_and_holds_the_checkpoint() {
    let env = Env::new();
    let n = 3000;
    write_logs(&env, n);
    let gate = Arc::new(AtomicBool::new(false));
    let server = Server::start(Behaviour {
        drop_first: true,
        gate: Some(gate.clone()),
        ..Behaviour::default()
    });
    let api = free_port();
    let cfg = config(
        &env,
        server.port,
        "ack_timeout = \"500ms\"\nmax_chunk_size = \"64KiB\"",
        Some(api),
    );
    let router = spawn(&cfg, &[]);
    // The first connection's chunk is never acked: the sink times out,
    // reconnects and sends it again (to a server that holds acks for now).
    wait_for("the chunk sent again on a new connection", LONG, || {
        server.seen().iter().any(|s| s.conn > 0)
    });
    wait_for("an ack timeout counted", LONG, || {
        metric(&metrics_of(api), "logferry_sink_errors_total", &["reason=\"timeout\""]).unwrap_or(0.0) >= 1.0
    });
    // No ack has been sent by anyone yet: nothing may be acknowledged.
    let m = metrics_of(api);
    assert_eq!(
        metric(&m, "logferry_source_acked_events_total", &["component=\"app\""]).unwrap_or(0.0),
        0.0,
        "records acknowledged before the server acked them"
    );
    assert_eq!(
        metric(&m, "logferry_file_checkpoint_offset_bytes", &["app.log"]).unwrap_or(0.0),
        0.0
    );
    let first = server.seen()[0].clone();
    assert_eq!(first.conn, 0);
    gate.store(true, Ordering::SeqCst);
    let size = std::fs::metadata(env.logs().join("app.log")).unwrap().len() as f64;
    wait_for("every record acknowledged", LONG, || {
        metric(
            &metrics_of(api),
            "logferry_source_acked_events_total",
            &["component=\"app\""],
        ) == Some(n as f64)
    });
    wait_for("checkpoint at the end of the file", LONG, || {
        metric(&metrics_of(api), "logferry_file_checkpoint_offset_bytes", &["app.log"]) == Some(size)
    });
    let m = metrics_of(api);
    assert_eq!(
        metric(&m, "logferry_source_failed_events_total", &["component=\"app\""]),
        Some(0.0)
    );
    let seen = server.seen();
    let counts = check_records(&all_events(&seen), n);
    // The unacked chunk arrived again, with the same id.
    for (_, r) in &first.events {
        assert!(counts[&r["id"].as_u64().unwrap()] >= 2);
    }
    assert!(seen.iter().filter(|s| s.chunk == first.chunk).count() >= 2);
    router.signal(libc::SIGTERM);
    let (status, err) = router.wait(LONG);
    assert!(status.success(), "{err}");
}

#[test]
fn shared_key_handshake() {
    let env = Env::new();
    let n = 500;
    write_logs(&env, n);
    let server = Server::start(Behaviour {
        shared_key: Some("s3cret".into()),
        ..Behaviour::default()
    });
    let cfg = config(
        &env,
        server.port,
        "shared_key = \"s3cret\"\nself_hostname = \"node-a\"",
        None,
    );
    run_to_eof(&cfg, &[]);
    assert_eq!(server.bad_pings.load(Ordering::SeqCst), 0);
    let counts = check_records(&all_events(&server.seen()), n);
    assert!(counts.values().all(|c| *c == 1));
}

#[test]
fn a_salt_without_users_gets_an_empty_username_and_password() {
    // Fluent Bit 5's in_forward: a 16-byte auth salt in every HELO, no users.
    let env = Env::new();
    let n = 300;
    write_logs(&env, n);
    let server = Server::start(Behaviour {
        shared_key: Some("s3cret".into()),
        auth_salt: true,
        ..Behaviour::default()
    });
    let cfg = config(&env, server.port, "shared_key = \"s3cret\"", None);
    run_to_eof_within(&cfg, LONG);
    assert_eq!(server.bad_pings.load(Ordering::SeqCst), 0);
    let pings = server.pings.lock().unwrap().clone();
    assert!(
        !pings.is_empty() && pings.iter().all(|p| p == &(String::new(), String::new())),
        "{pings:?}"
    );
    let counts = check_records(&all_events(&server.seen()), n);
    assert!(counts.values().all(|c| *c == 1));
}

#[test]
fn username_and_password_for_a_server_with_users() {
    let env = Env::new();
    let n = 300;
    write_logs(&env, n);
    let server = Server::start(Behaviour {
        shared_key: Some("s3cret".into()),
        auth_salt: true,
        users: vec![("bob".into(), "x".into()), ("alice".into(), "pa55".into())],
        ..Behaviour::default()
    });
    let cfg = config(
        &env,
        server.port,
        "shared_key = \"s3cret\"\nusername = \"alice\"\npassword = \"${PW}\"",
        None,
    );
    let mut child = std::process::Command::new(BIN)
        .args(["run", "--exit-on-eof", "--config"])
        .arg(&cfg)
        .env("PW", "pa55")
        .env("LOGFERRY_LOG", "debug")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(child.wait().unwrap().success(), "{err}");
    assert_eq!(server.bad_pings.load(Ordering::SeqCst), 0);
    assert!(server.pings.lock().unwrap().iter().all(|(u, _)| u == "alice"));
    check_records(&all_events(&server.seen()), n);
    // The password never reaches the log, even at debug.
    assert!(!err.contains("pa55"), "{err}");
}

#[test]
fn refused_users_are_named_with_the_server_and_the_fix() {
    let env = Env::new();
    write_logs(&env, 50);
    let server = Server::start(Behaviour {
        shared_key: Some("s3cret".into()),
        auth_salt: true,
        users: vec![("alice".into(), "pa55".into())],
        ..Behaviour::default()
    });
    let api = free_port();
    for (sink, reason, says) in [
        (
            "shared_key = \"s3cret\"\nusername = \"alice\"\npassword = \"wrong\"",
            "user_refused",
            "the server refused user `alice` (\"username/password mismatch\")",
        ),
        (
            "shared_key = \"s3cret\"",
            "user_required",
            "the server wants a username and password",
        ),
        (
            "shared_key = \"other\"",
            "shared_key_mismatch",
            "the server refused our shared key (\"shared_key mismatch\")",
        ),
    ] {
        let cfg = config(&env, server.port, sink, Some(api));
        let router = spawn(&cfg, &[]);
        let failures = |m: &str| {
            metric(
                m,
                "logferry_forward_handshake_failures_total",
                &["component=\"fw\"", &format!("reason=\"{reason}\"")],
            )
            .unwrap_or(0.0)
        };
        wait_for("three refused handshakes", LONG, || failures(&metrics_of(api)) >= 3.0);
        let err = router.stderr();
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("forward handshake refused"))
            .collect();
        // One line for the streak of retries, naming the server and the cause.
        assert_eq!(lines.len(), 1, "{err}");
        assert!(
            lines[0].contains(&format!("handshake with 127.0.0.1:{}", server.port)),
            "{err}"
        );
        assert!(lines[0].contains(says), "{err}");
        assert!(!err.contains("wrong\""), "the password is never logged: {err}");
        drop(router);
    }
    assert!(server.seen().is_empty());
}

#[test]
fn a_key_here_and_none_on_the_server_says_no_helo_once() {
    let env = Env::new();
    write_logs(&env, 10);
    // The server has no key: it never speaks first.
    let server = Server::start(Behaviour::default());
    let api = free_port();
    let cfg = config(&env, server.port, "shared_key = \"s3cret\"", Some(api));
    let router = spawn(&cfg, &[]);
    wait_for("two no_helo failures", LONG, || {
        metric(
            &metrics_of(api),
            "logferry_forward_handshake_failures_total",
            &["reason=\"no_helo\""],
        )
        .unwrap_or(0.0)
            >= 2.0
    });
    let err = router.stderr();
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("no HELO within")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("`shared_key` is set here but the server asks for no handshake"),
        "{err}"
    );
    assert!(lines[0].contains(&format!("127.0.0.1:{}", server.port)), "{err}");
    drop(router);
    assert!(server.seen().is_empty());
}

#[test]
fn a_server_that_wants_a_key_is_reported_even_without_acks() {
    let env = Env::new();
    write_logs(&env, 50);
    let server = Server::start(Behaviour {
        shared_key: Some("s3cret".into()),
        ..Behaviour::default()
    });
    let api = free_port();
    // Without acks the first chunk is written before the HELO is seen (and
    // lost, as `require_ack = false` allows); small chunks make a second.
    for sink in ["", "require_ack = false\nmax_chunk_size = \"1KiB\""] {
        let cfg = config(&env, server.port, sink, Some(api));
        std::fs::remove_dir_all(env.path("data")).unwrap();
        std::fs::create_dir_all(env.path("data")).unwrap();
        let router = spawn(&cfg, &[]);
        wait_for("key_required failures", LONG, || {
            metric(
                &metrics_of(api),
                "logferry_forward_handshake_failures_total",
                &["reason=\"key_required\""],
            )
            .unwrap_or(0.0)
                >= 1.0
        });
        let err = router.stderr();
        assert!(
            err.contains("the server asks for a shared-key handshake (it sent HELO): set `shared_key`"),
            "{sink}: {err}"
        );
        drop(router);
    }
}

#[test]
fn wrong_shared_key_delivers_nothing_and_fails_readiness() {
    let env = Env::new();
    write_logs(&env, 100);
    let server = Server::start(Behaviour {
        shared_key: Some("s3cret".into()),
        ..Behaviour::default()
    });
    let api = free_port();
    let cfg = config(&env, server.port, "shared_key = \"wrong\"", Some(api));
    let router = spawn(&cfg, &[]);
    wait_for("auth errors counted", LONG, || {
        metric(&metrics_of(api), "logferry_sink_errors_total", &["reason=\"auth\""]).unwrap_or(0.0) >= 2.0
    });
    assert!(server.bad_pings.load(Ordering::SeqCst) >= 2);
    wait_for("/readyz names the failing sink", LONG, || {
        http_get(api, "/readyz").is_some_and(|(s, b)| s == 503 && b.contains("fw"))
    });
    assert!(server.seen().is_empty());
    let m = metrics_of(api);
    assert_eq!(
        metric(&m, "logferry_source_acked_events_total", &["component=\"app\""]).unwrap_or(0.0),
        0.0
    );
    drop(router);
}

fn tls_server_config(dir: &Path) -> (Arc<rustls::ServerConfig>, std::path::PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["fluent.test".to_string()]).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    (Arc::new(cfg), ca)
}

#[test]
fn tls_with_ca_file_and_handshake() {
    let env = Env::new();
    let n = 1000;
    write_logs(&env, n);
    let (tls, ca) = tls_server_config(env.dir.path());
    let server = Server::start(Behaviour {
        tls: Some(tls),
        shared_key: Some("k".into()),
        ..Behaviour::default()
    });
    let sink = format!(
        "shared_key = \"k\"\ncompression = \"gzip\"\ntls = {{ enabled = true, ca_file = \"{}\", server_name = \"fluent.test\" }}",
        ca.display()
    );
    let cfg = config(&env, server.port, &sink, None);
    run_to_eof(&cfg, &[]);
    let counts = check_records(&all_events(&server.seen()), n);
    assert!(counts.values().all(|c| *c == 1));
}

#[test]
fn tls_refuses_a_certificate_for_another_name() {
    let env = Env::new();
    write_logs(&env, 10);
    let (tls, ca) = tls_server_config(env.dir.path());
    let server = Server::start(Behaviour {
        tls: Some(tls),
        ..Behaviour::default()
    });
    let api = free_port();
    let sink = format!(
        "tls = {{ enabled = true, ca_file = \"{}\", server_name = \"other.test\" }}",
        ca.display()
    );
    let cfg = config(&env, server.port, &sink, Some(api));
    let router = spawn(&cfg, &[]);
    wait_for("TLS errors counted", LONG, || {
        metric(&metrics_of(api), "logferry_sink_errors_total", &["reason=\"tls\""]).unwrap_or(0.0) >= 1.0
    });
    assert!(server.seen().is_empty());
    drop(router);
}

#[test]
fn a_connection_the_server_closed_while_idle_is_not_written_into() {
    // Without acks nothing would tell the sink that a chunk written into a
    // connection the server already closed was lost.
    let env = Env::new();
    let server = Server::start(Behaviour {
        close_after_message: true,
        ..Behaviour::default()
    });
    let api = free_port();
    let cfg = config(&env, server.port, "require_ack = false", Some(api));
    let log = env.logs().join("app.log");
    let line = |i: u64| format!("{{\"id\":{i},\"ts\":{}}}\n", T0 + i as i64);
    std::fs::write(&log, line(0)).unwrap();
    let router = spawn(&cfg, &[]);
    for i in 1..4 {
        wait_for("the previous record", LONG, || server.records().len() as u64 == i);
        // The server hung up after it; the next record goes over a new connection.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(line(i).as_bytes())
            .unwrap();
    }
    wait_for("every record", LONG, || server.records().len() == 4);
    let conns: std::collections::HashSet<usize> = server.seen().iter().map(|s| s.conn).collect();
    assert_eq!(conns.len(), 4, "one connection per message");
    // Seen before writing: a reconnect, not a failed write and a retry.
    let m = metrics_of(api);
    assert_eq!(
        metric(&m, "logferry_sink_errors_total", &["component=\"fw\""]),
        None,
        "{m}"
    );
    drop(router);
}

/// `logferry run --config C --exit-on-eof` with a hang guard.
fn run_to_eof_within(config: &Path, limit: Duration) {
    let mut child = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .arg("--exit-on-eof")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            assert!(status.success(), "{status:?}\n{err}");
            return;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("logferry --exit-on-eof did not finish within {limit:?}: acks not flowing?");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn round_trip_through_a_logferry_forward_source() {
    // Logferry A: file -> forward sink; Logferry B: forward source -> file sink.
    let a = Env::new();
    let b = Env::new();
    let n = 4000;
    write_logs(&a, n);
    let port = free_port();
    let b_cfg = b.write_config(&format!(
        r#"
[global]
data_dir = "{data}"

[sources.in]
type = "forward"
address = "127.0.0.1:{port}"
shared_key = "round"

[sinks.out]
type = "file"
inputs = ["in"]
path = "{out}"
key_prefix = "{{tag}}/"
compression = "none"
flush_interval = "200ms"
"#,
        data = b.path("data").display(),
        out = b.path("out").display(),
    ));
    let b_router = spawn(&b_cfg, &[]);
    wait_for("B listening", LONG, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let a_cfg = config(
        &a,
        port,
        "shared_key = \"round\"\ncompression = \"gzip\"\ntag = \"app.{level}\"\nmax_chunk_size = \"32KiB\"",
        None,
    );
    // A ends only once B acknowledged everything (B acks after its file
    // sink made the records durable).
    run_to_eof_within(&a_cfg, LONG);
    let records = b.records();
    let events: Vec<(i64, serde_json::Value)> = records
        .iter()
        .map(|r| (r["id"].as_u64().unwrap() as i64 + T0, r.clone()))
        .collect();
    let counts = check_records(&events, n);
    assert!(counts.values().all(|c| *c == 1), "a record arrived twice");
    // The tag travelled with the batches: B's key prefix is `{tag}/`.
    let dirs: std::collections::BTreeSet<String> = std::fs::read_dir(b.path("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|d| !d.starts_with('.'))
        .collect();
    assert_eq!(dirs, ["app.info".to_string(), "app.warn".to_string()].into());
    // A's checkpoint reached the end: a second run sends nothing again (what
    // it sent, it would wait for B to make durable before exiting).
    run_to_eof_within(&a_cfg, LONG);
    assert_eq!(b.records().len() as u64, n);
    b_router.signal(libc::SIGTERM);
    let (status, err) = b_router.wait(LONG);
    assert!(status.success(), "{err}");
}

#[test]
fn users_both_ways_between_two_logferries() {
    // B: forward source with a key and users -> file; A: file -> forward
    // sink as `alice`.
    let (a, b) = (Env::new(), Env::new());
    let n = 1000;
    write_logs(&a, n);
    let (port, b_api, a_api) = (free_port(), free_port(), free_port());
    let b_cfg = b.write_config(&format!(
        r#"
[global]
data_dir = "{data}"

[api]
address = "127.0.0.1:{b_api}"

[sources.in]
type = "forward"
address = "127.0.0.1:{port}"
shared_key = "k3y"
users = [{{ username = "alice", password = "pa55" }}, {{ username = "bob", password = "b0b" }}]

[sinks.out]
type = "file"
inputs = ["in"]
path = "{out}"
compression = "none"
flush_interval = "200ms"
"#,
        data = b.path("data").display(),
        out = b.path("out").display(),
    ));
    let b_router = spawn(&b_cfg, &[]);
    wait_for("B listening", LONG, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let a_cfg = config(
        &a,
        port,
        "shared_key = \"k3y\"\nusername = \"alice\"\npassword = \"pa55\"",
        None,
    );
    run_to_eof_within(&a_cfg, LONG);
    let events: Vec<(i64, serde_json::Value)> = b
        .records()
        .iter()
        .map(|r| (r["id"].as_u64().unwrap() as i64 + T0, r.clone()))
        .collect();
    let counts = check_records(&events, n);
    assert!(counts.values().all(|c| *c == 1), "a record arrived twice");

    // The wrong password: refused, both sides say so, nothing more arrives.
    let a2 = Env::new();
    write_logs(&a2, 10);
    let a2_cfg = config(
        &a2,
        port,
        "shared_key = \"k3y\"\nusername = \"alice\"\npassword = \"pa56\"",
        Some(a_api),
    );
    let a2_router = spawn(&a2_cfg, &[]);
    wait_for("B counts the refusals", LONG, || {
        metric(
            &metrics_of(b_api),
            "logferry_forward_handshake_failures_total",
            &["component=\"in\"", "reason=\"user_refused\""],
        )
        .unwrap_or(0.0)
            >= 2.0
    });
    wait_for("A counts them", LONG, || {
        metric(
            &metrics_of(a_api),
            "logferry_forward_handshake_failures_total",
            &["component=\"fw\"", "reason=\"user_refused\""],
        )
        .unwrap_or(0.0)
            >= 2.0
    });
    let a_err = a2_router.stderr();
    assert!(
        a_err.contains(&format!(
            "handshake with 127.0.0.1:{port} failed: the server refused user `alice`"
        )),
        "{a_err}"
    );
    drop(a2_router);
    b_router.signal(libc::SIGTERM);
    let (status, b_err) = b_router.wait(LONG);
    assert!(status.success(), "{b_err}");
    assert!(b_err.contains("sent a wrong password for user \"alice\""), "{b_err}");
    assert!(
        !b_err.contains("pa55") && !a_err.contains("pa56"),
        "passwords are never logged"
    );
    assert_eq!(b.records().len() as u64, n);
}

#[test]
fn check_connects_with_the_handshake_and_reports_an_unreachable_server() {
    let env = Env::new();
    write_logs(&env, 1);
    let server = Server::start(Behaviour {
        shared_key: Some("k".into()),
        ..Behaviour::default()
    });
    let check = |cfg: &Path| {
        std::process::Command::new(BIN)
            .args(["check", "--config"])
            .arg(cfg)
            .output()
            .unwrap()
    };
    let out = check(&config(&env, server.port, "shared_key = \"k\"", None));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("forward 127.0.0.1:"), "{text}");
    assert_eq!(server.bad_pings.load(Ordering::SeqCst), 0);
    let out = check(&config(&env, server.port, "shared_key = \"wrong\"", None));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL"));
    let out = check(&config(&env, free_port(), "", None));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("FAIL") && text.contains("cannot connect"), "{text}");
    // A failover list: every server is checked, the unreachable one named.
    let dead = free_port();
    let list = format!(
        r#"
[sources.app]
type = "file"
include = ["{}/*.log"]

[sinks.fw]
type = "forward"
inputs = ["app"]
shared_key = "k"
servers = [{{ host = "127.0.0.1", port = {} }}, {{ host = "127.0.0.1", port = {dead} }}]
"#,
        env.logs().display(),
        server.port
    );
    let out = check(&env.write_config(&list));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{}", server.port))
            && text.contains(&format!("cannot connect to 127.0.0.1:{dead}")),
        "{text}"
    );
}

#[test]
fn a_server_that_stops_reading_times_out_the_write() {
    // One chunk much larger than what the sockets can buffer: the write
    // makes no progress for `ack_timeout`, then the chunk goes over a new
    // connection.
    let env = Env::new();
    let n = 150_000;
    write_logs(&env, n);
    let server = Server::start(Behaviour {
        stall_first: true,
        ..Behaviour::default()
    });
    let api = free_port();
    let cfg = config(
        &env,
        server.port,
        // The write stalls against the first connection; the second one's
        // server (a debug build) needs a few seconds to decode 150,000
        // events before it acks: the timeout must cover that.
        "ack_timeout = \"5s\"\nmax_chunk_size = \"16MiB\"\nflush_interval = \"10s\"",
        Some(api),
    );
    let router = spawn(&cfg, &[]);
    wait_for("every record", LONG, || server.distinct_ids() >= n);
    let m = metrics_of(api);
    assert!(
        metric(&m, "logferry_sink_errors_total", &["reason=\"timeout\""]).unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    check_records(&all_events(&server.seen()), n);
    drop(router);
}
