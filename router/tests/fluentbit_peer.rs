//! The forward protocol against a real Fluent Bit 5.1.1, both ways: our
//! forward sink into its `in_forward` (counting what its `file` output
//! writes) and its `out_forward` into our forward source (counting what our
//! file sink writes), plain, with `Shared_Key`, with users, gzip and acks,
//! and over TLS with client certificates (made here with rcgen, checked by
//! Fluent Bit's OpenSSL and by our rustls);
//! and our http sink into its `http`, `splunk` and `elasticsearch` inputs.
//!
//! The binary comes from `../shared/peers/fluent-bit-5.1.1.xz` beside the
//! repository (or `LOGFERRY_PEERS`), unpacked once into
//! `~/.cache/logferry/` (`scripts/test.sh` does it too), or from
//! `LOGFERRY_FLUENT_BIT`. Without it every test here says why and passes: a
//! fresh clone alone has no peers.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::tls;
use common::*;

const LONG: Duration = Duration::from_secs(120);
const PEER: &str = "fluent-bit-5.1.1";

/// The Fluent Bit binary, or `None` (with a message) when the peers are not
/// there.
fn fluent_bit() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LOGFERRY_FLUENT_BIT") {
        return Some(PathBuf::from(p));
    }
    let peers = std::env::var_os("LOGFERRY_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/peers"));
    let packed = peers.join(format!("{PEER}.xz"));
    if !packed.is_file() {
        eprintln!(
            "SKIP: no Fluent Bit peer at {} (a clone without ../shared); set LOGFERRY_PEERS or LOGFERRY_FLUENT_BIT to run these tests",
            packed.display()
        );
        return None;
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME")
        .join("logferry");
    let bin = cache.join(PEER);
    if !bin.is_file() {
        // Tests run in parallel: unpack beside, then rename into place.
        std::fs::create_dir_all(&cache).unwrap();
        let tmp = cache.join(format!(".{PEER}.{}", std::process::id()));
        let out = std::fs::File::create(&tmp).unwrap();
        let st = Command::new("xz")
            .arg("-dc")
            .arg(&packed)
            .stdout(out)
            .status()
            .expect("xz is needed to unpack the Fluent Bit peer (apt-get install xz-utils)");
        assert!(st.success(), "xz -dc {} failed", packed.display());
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &bin).unwrap();
    }
    let v = Command::new(&bin).arg("--version").output().expect("run fluent-bit");
    assert!(
        v.status.success() && String::from_utf8_lossy(&v.stdout).contains("v5.1.1"),
        "{} does not run (it needs libyaml-0-2, libsqlite3-0 and libssl3): {}",
        bin.display(),
        String::from_utf8_lossy(&v.stderr)
    );
    Some(bin)
}

/// A running Fluent Bit; killed (SIGKILL: one waiting for a HELO ignores
/// SIGTERM) when dropped.
struct FluentBit {
    child: Child,
    log: PathBuf,
}

impl FluentBit {
    fn start(bin: &Path, env: &Env, conf: &str) -> FluentBit {
        let path = env.path("fluent-bit.conf");
        std::fs::write(&path, conf).unwrap();
        let log = env.path("fluent-bit.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&path)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn fluent-bit");
        FluentBit { child, log }
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    fn wait_listening(&self, port: u16) {
        wait_for("fluent-bit listening", LONG, || {
            self.log().contains(&format!("listening on 127.0.0.1:{port}"))
        });
    }
}

impl Drop for FluentBit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- fluent-bit log ---\n{}", self.log());
        }
    }
}

/// `logs/app.log`: JSON lines `{"id": i, "msg": "line i ..."}` for `0..n`.
fn write_lines(env: &Env, n: u64) {
    let mut s = String::with_capacity(n as usize * 80);
    for i in 0..n {
        s.push_str(&format!(
            "{{\"id\":{i},\"msg\":\"line {i} \\u00e9 \\\"quoted\\\"\",\"n\":{{\"f\":1.5}}}}\n"
        ));
    }
    std::fs::write(env.logs().join("app.log"), s).unwrap();
}

/// Each id `0..n` exactly once, each with the fields `write_lines` gave it.
fn assert_exactly(records: &[serde_json::Value], n: u64) {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for r in records {
        let id = r["id"].as_u64().unwrap_or_else(|| panic!("record without id: {r}"));
        *counts.entry(id).or_default() += 1;
        assert_eq!(r["msg"], format!("line {id} é \"quoted\""), "{r}");
        assert_eq!(r["n"]["f"], 1.5, "{r}");
    }
    let missing: Vec<u64> = (0..n).filter(|i| !counts.contains_key(i)).take(10).collect();
    let repeated: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).take(10).collect();
    assert!(missing.is_empty(), "missing ids (first 10): {missing:?}");
    assert!(repeated.is_empty(), "repeated ids (first 10): {repeated:?}");
    assert_eq!(records.len() as u64, n);
}

/// JSON lines Fluent Bit's `file` output wrote (`Format plain`: the record).
fn fluent_bit_records(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // The last line may still be being written.
    let complete = text.rsplit_once('\n').map(|(done, _)| done).unwrap_or_default();
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

// ---- Logferry's forward sink -> Fluent Bit's in_forward ----------------------

/// Fluent Bit: `in_forward` with `input_extra` -> `file` output.
fn fb_server_conf(env: &Env, port: u16, input_extra: &str) -> String {
    format!(
        "[SERVICE]\n    Flush 0.2\n    Grace 1\n    Log_Level info\n\
         [INPUT]\n    Name forward\n    Listen 127.0.0.1\n    Port {port}\n{input_extra}\n\
         [OUTPUT]\n    Name file\n    Match *\n    Path {out}\n    File fb.out\n    Format plain\n",
        out = env.path("out").display()
    )
}

/// Logferry: the file source over `logs/` -> forward sink with `sink_extra`.
fn sink_config(env: &Env, port: u16, sink_extra: &str) -> PathBuf {
    env.file_to_forward(None, "", &format!("host = \"127.0.0.1\"\nport = {port}\n{sink_extra}"))
}

/// Runs the sink to the end of its input (it exits once Fluent Bit acked
/// every chunk), then waits for Fluent Bit's output to hold `n` records.
fn deliver_to_fluent_bit(fb: &Path, n: u64, input_extra: &str, sink_extra: &str) {
    let env = Env::new();
    write_lines(&env, n);
    let port = free_port();
    let server = FluentBit::start(fb, &env, &fb_server_conf(&env, port, input_extra));
    server.wait_listening(port);
    let cfg = sink_config(&env, port, sink_extra);
    let mut child = Command::new(BIN)
        .args(["run", "--exit-on-eof", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(env.path("logferry.stderr")).unwrap())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > LONG {
            let _ = child.kill();
            panic!(
                "the sink did not finish (Fluent Bit never acked?):\n{}",
                std::fs::read_to_string(env.path("logferry.stderr")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(env.path("logferry.stderr")).unwrap_or_default();
    assert!(status.success(), "{err}");
    assert!(
        !err.contains("forward delivery failed") && !err.contains("handshake refused"),
        "{err}"
    );
    let out = env.path("out/fb.out");
    wait_for("Fluent Bit's file output to hold every record", LONG, || {
        fluent_bit_records(&out).len() as u64 >= n
    });
    assert_exactly(&fluent_bit_records(&out), n);
}

#[test]
fn sink_to_fluent_bit_plain_with_acks() {
    let Some(fb) = fluent_bit() else { return };
    deliver_to_fluent_bit(&fb, 2000, "", "require_ack = true");
}

#[test]
fn sink_to_fluent_bit_with_shared_key_gzip_50000_records() {
    // The issue's bar: 50,000 of 50,000 into an in_forward with Shared_Key
    // (whose HELO always carries an auth salt).
    let Some(fb) = fluent_bit() else { return };
    deliver_to_fluent_bit(
        &fb,
        50_000,
        "    Shared_Key s3cret\n    Self_Hostname fb-server",
        "shared_key = \"s3cret\"\ncompression = \"gzip\"\nmax_chunk_size = \"256KiB\"",
    );
}

#[test]
fn sink_to_fluent_bit_pipelined_small_chunks() {
    // 1 KiB chunks, 16 unacked on the connection: Fluent Bit's acks are
    // matched by chunk id, every record arrives exactly once.
    let Some(fb) = fluent_bit() else { return };
    deliver_to_fluent_bit(
        &fb,
        5_000,
        "",
        "require_ack = true\nmax_in_flight = 16\nmax_chunk_size = \"1KiB\"",
    );
}

#[test]
fn sink_to_fluent_bit_with_security_users() {
    let Some(fb) = fluent_bit() else { return };
    deliver_to_fluent_bit(
        &fb,
        2000,
        "    Shared_Key s3cret\n    security.users alice pa55",
        "shared_key = \"s3cret\"\nusername = \"alice\"\npassword = \"pa55\"",
    );
}

#[test]
fn sink_to_fluent_bit_refused_says_why() {
    let Some(fb) = fluent_bit() else { return };
    let env = Env::new();
    write_lines(&env, 10);
    let port = free_port();
    let server = FluentBit::start(
        &fb,
        &env,
        &fb_server_conf(&env, port, "    Shared_Key s3cret\n    security.users alice pa55"),
    );
    server.wait_listening(port);
    for (sink, says) in [
        (
            "shared_key = \"wrong\"",
            "the server closed the connection after our PING without answering: it refused the handshake \
             (Fluent Bit does so on a shared key mismatch",
        ),
        (
            "shared_key = \"s3cret\"",
            "the server wants a username and password (\"username/password mismatch\")",
        ),
        (
            "shared_key = \"s3cret\"\nusername = \"alice\"\npassword = \"nope\"",
            "the server refused user `alice` (\"username/password mismatch\")",
        ),
    ] {
        let router = spawn(&sink_config(&env, port, sink), &[]);
        wait_for("the refusal logged", LONG, || router.stderr().contains(says));
        let err = router.stderr();
        let line = err.lines().find(|l| l.contains(says)).unwrap_or_default();
        assert!(
            line.contains(&format!("handshake with 127.0.0.1:{port} failed")),
            "{line}"
        );
        drop(router);
    }
    assert!(fluent_bit_records(&env.path("out/fb.out")).is_empty());
}

// ---- Fluent Bit's out_forward -> Logferry's forward source -------------------

/// Fluent Bit: `tail` over `logs/app.log` (each line a `log` string) ->
/// `out_forward` with `output_extra`.
fn fb_client_conf(env: &Env, port: u16, output_extra: &str) -> String {
    format!(
        "[SERVICE]\n    Flush 0.2\n    Grace 1\n    Log_Level info\n\
         [INPUT]\n    Name tail\n    Path {logs}/app.log\n    Read_from_Head true\n    Tag app.lines\n\
         [OUTPUT]\n    Name forward\n    Match *\n    Host 127.0.0.1\n    Port {port}\n    Retry_Limit no_limits\n{output_extra}\n",
        logs = env.logs().display()
    )
}

/// Logferry: forward source with `source_extra` -> file sink (by tag).
fn source_config(env: &Env, port: u16, api: u16, source_extra: &str) -> PathBuf {
    env.forward_to(
        Some(api),
        &format!("address = \"127.0.0.1:{port}\"\n{source_extra}"),
        ForwardInto::Files,
    )
}

/// The records our file sink wrote, each `log` line parsed back.
fn received_lines(env: &Env) -> Vec<serde_json::Value> {
    env.records()
        .iter()
        .map(|r| {
            let line = r["log"].as_str().unwrap_or_else(|| panic!("no log field: {r}"));
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
        })
        .collect()
}

fn receive_from_fluent_bit(fb: &Path, n: u64, output_extra: &str, source_extra: &str) {
    let env = Env::new();
    write_lines(&env, n);
    let (port, api) = (free_port(), free_port());
    let router = spawn(&source_config(&env, port, api, source_extra), &[]);
    wait_for("the source listening", LONG, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let client = FluentBit::start(fb, &env, &fb_client_conf(&env, port, output_extra));
    wait_for("every record in our file sink", LONG, || {
        env.records().len() as u64 >= n
    });
    drop(client);
    router.signal(libc::SIGTERM);
    let (status, err) = router.wait(LONG);
    assert!(status.success(), "{err}");
    assert!(!err.contains("failed the handshake"), "{err}");
    let lines = received_lines(&env);
    assert_exactly(&lines, n);
    // The tag travelled: the sink's key prefix is `{tag}/`.
    assert!(env.path("out/app.lines").is_dir());
}

#[test]
fn fluent_bit_to_source_plain_with_acks() {
    let Some(fb) = fluent_bit() else { return };
    receive_from_fluent_bit(&fb, 2000, "    Require_ack_response true", "");
}

#[test]
fn fluent_bit_to_source_with_shared_key_gzip_and_acks() {
    let Some(fb) = fluent_bit() else { return };
    receive_from_fluent_bit(
        &fb,
        5000,
        "    Shared_Key s3cret\n    Compress gzip\n    Require_ack_response true",
        "shared_key = \"s3cret\"",
    );
}

#[test]
fn fluent_bit_to_source_with_username_and_password() {
    let Some(fb) = fluent_bit() else { return };
    receive_from_fluent_bit(
        &fb,
        2000,
        "    Shared_Key s3cret\n    Username alice\n    Password pa55\n    Require_ack_response true",
        "shared_key = \"s3cret\"\nusers = [{ username = \"bob\", password = \"b0b\" }, { username = \"alice\", password = \"pa55\" }]",
    );
}

#[test]
fn fluent_bit_refused_by_the_source_is_named_with_the_cause() {
    let Some(fb) = fluent_bit() else { return };
    let users = "users = [{ username = \"alice\", password = \"pa55\" }]";
    for (output_extra, source_extra, reason, says) in [
        (
            "    Shared_Key wrong".to_string(),
            "shared_key = \"s3cret\"".to_string(),
            "shared_key_mismatch",
            "proved a different shared key",
        ),
        (
            String::new(),
            "shared_key = \"s3cret\"".to_string(),
            "no_ping",
            "sent data without the handshake this source requires",
        ),
        (
            "    Shared_Key s3cret\n    Username alice\n    Password nope".to_string(),
            format!("shared_key = \"s3cret\"\n{users}"),
            "user_refused",
            "sent a wrong password for user \"alice\"",
        ),
        (
            "    Shared_Key s3cret".to_string(),
            format!("shared_key = \"s3cret\"\n{users}"),
            "user_required",
            "sent no username, but this source has `users`",
        ),
    ] {
        let env = Env::new();
        write_lines(&env, 10);
        let (port, api) = (free_port(), free_port());
        let router = spawn(&source_config(&env, port, api, &source_extra), &[]);
        wait_for("the source listening", LONG, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let client = FluentBit::start(&fb, &env, &fb_client_conf(&env, port, &output_extra));
        wait_for("the refusal counted", LONG, || {
            http_get(api, "/metrics").is_some_and(|(_, m)| {
                metric(
                    &m,
                    "logferry_forward_handshake_failures_total",
                    &[&format!("reason=\"{reason}\"")],
                )
                .unwrap_or(0.0)
                    >= 1.0
            })
        });
        let err = router.stderr();
        let line = err
            .lines()
            .find(|l| l.contains(says))
            .unwrap_or_else(|| panic!("no `{says}` in {err}"));
        assert!(line.contains("forward client 127.0.0.1:"), "{line}");
        drop(client);
        drop(router);
        assert!(env.records().is_empty(), "{reason}: records arrived");
    }
}

#[test]
fn fluent_bit_with_a_key_the_source_lacks_gets_a_hint() {
    // Fluent Bit waits for a HELO that a source without `shared_key` never
    // sends, and neither side would say anything.
    let Some(fb) = fluent_bit() else { return };
    let env = Env::new();
    write_lines(&env, 10);
    let (port, api) = (free_port(), free_port());
    let router = spawn(&source_config(&env, port, api, ""), &[]);
    wait_for("the source listening", LONG, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let client = FluentBit::start(&fb, &env, &fb_client_conf(&env, port, "    Shared_Key s3cret"));
    wait_for("the hint", LONG, || router.stderr().contains("is waiting for a HELO"));
    let err = router.stderr();
    assert!(
        err.contains("has sent nothing for 10s since it connected; if it is configured with a shared key"),
        "{err}"
    );
    drop(client);
    drop(router);
    assert!(env.records().is_empty());
}

#[test]
fn fluent_bit_partial_messages_are_joined_by_the_source() {
    // Docker's fluentd driver output as Fluent Bit forwards it: a 40 KiB
    // JSON line in three partial messages, interleaved with another
    // container's two, read by `tail` with a json parser and sent by
    // `out_forward` with acks into our source with `partial` on.
    let Some(fb) = fluent_bit() else { return };
    let env = Env::new();
    let body: String = (0..40 * 1024).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let big = serde_json::json!({"level": "info", "msg": "big \"quoted\" é", "body": body}).to_string();
    let small = serde_json::json!({"level": "warn", "msg": "second", "body": &body[..20 * 1024]}).to_string();
    let cut = |s: &str| -> Vec<String> {
        s.as_bytes()
            .chunks(16 * 1024)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect()
    };
    // ASCII but for the é near the start: byte chunks stay valid UTF-8 as
    // long as no chunk boundary falls inside it.
    let (a, b) = (cut(&big), cut(&small));
    assert_eq!((a.len(), b.len()), (3, 2));
    let part = |c: &str, id: &str, ord: usize, last: bool, log: &str| {
        serde_json::json!({"container_id": c, "source": "stdout", "log": log, "partial_message": "true",
            "partial_id": id, "partial_ordinal": ord.to_string(), "partial_last": last.to_string()})
        .to_string()
    };
    let lines = [
        part("ca", "pa", 1, false, &a[0]),
        part("cb", "pb", 1, false, &b[0]),
        part("ca", "pa", 2, false, &a[1]),
        part("cb", "pb", 2, true, &b[1]),
        part("ca", "pa", 3, true, &a[2]),
    ];
    std::fs::write(env.logs().join("app.log"), lines.join("\n") + "\n").unwrap();
    std::fs::write(env.path("parsers.conf"), "[PARSER]\n    Name json\n    Format json\n").unwrap();
    let (port, api) = (free_port(), free_port());
    let router = spawn(
        &source_config(&env, port, api, "partial = { flush_timeout = \"60s\" }"),
        &[],
    );
    wait_for("the source listening", LONG, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let conf = format!(
        "[SERVICE]\n    Flush 0.2\n    Grace 1\n    Log_Level info\n    Parsers_File {parsers}\n\
         [INPUT]\n    Name tail\n    Path {logs}/app.log\n    Read_from_Head true\n    Tag app.lines\n    Parser json\n\
         \x20   Buffer_Chunk_Size 64k\n    Buffer_Max_Size 256k\n\
         [OUTPUT]\n    Name forward\n    Match *\n    Host 127.0.0.1\n    Port {port}\n    Retry_Limit no_limits\n\
         \x20   Require_ack_response true\n",
        parsers = env.path("parsers.conf").display(),
        logs = env.logs().display()
    );
    let client = FluentBit::start(&fb, &env, &conf);
    wait_for("both joined lines in our file sink", LONG, || env.records().len() >= 2);
    let want = ["component=\"in\""];
    wait_for("every part acknowledged", LONG, || {
        let m = http_get(api, "/metrics").map(|r| r.1).unwrap_or_default();
        metric(&m, "logferry_source_acked_events_total", &want) == Some(5.0)
    });
    drop(client);
    router.signal(libc::SIGTERM);
    let (status, err) = router.wait(LONG);
    assert!(status.success(), "{err}");
    let got = env.records();
    assert_eq!(got.len(), 2, "{got:?}");
    let whole = got.iter().find(|r| r["container_id"] == "ca").unwrap();
    assert_eq!(whole["log"].as_str(), Some(big.as_str()));
    let parsed: serde_json::Value = serde_json::from_str(whole["log"].as_str().unwrap()).unwrap();
    assert_eq!(parsed["body"].as_str().map(str::len), Some(40 * 1024));
    let other = got.iter().find(|r| r["container_id"] == "cb").unwrap();
    assert_eq!(other["log"].as_str(), Some(small.as_str()));
    for r in &got {
        let o = r.as_object().unwrap();
        assert!(
            o.keys().all(|k| !k.starts_with("partial_") && k != "logferry_partial"),
            "{o:?}"
        );
    }
}

// ---- Logferry's http sink -> Fluent Bit's http, splunk and elasticsearch inputs ----

/// Fluent Bit's HTTP intakes are real peers for three of the http sink's
/// bodies: `in_http` takes a JSON array or concatenated JSON records (not
/// `application/x-ndjson`), `in_splunk` a HEC event stream, and
/// `in_elasticsearch` a `_bulk` body, answering with per-item statuses.
/// Each run sends `n` records through gzip and checks the set Fluent Bit's
/// `file` output writes.
fn http_into_fluent_bit(fb: &Path, n: u64, input: &str, path: &str, sink_extra: &str) -> Vec<serde_json::Value> {
    let env = Env::new();
    write_lines(&env, n);
    let port = free_port();
    let conf = format!(
        "[SERVICE]\n    Flush 0.2\n    Grace 1\n    Log_Level info\n\
         [INPUT]\n    Name {input}\n    Listen 127.0.0.1\n    Port {port}\n\
         [OUTPUT]\n    Name file\n    Match *\n    Path {out}\n    File fb.out\n    Format plain\n",
        out = env.path("out").display()
    );
    let server = FluentBit::start(fb, &env, &conf);
    server.wait_listening(port);
    let cfg = env.write_config(&format!(
        r#"
[global]
data_dir = "{data}"

[sources.app]
type = "file"
include = ["{logs}/*.log"]
glob_interval = "100ms"

[sinks.web]
type = "http"
inputs = ["app"]
uri = "http://127.0.0.1:{port}{path}"
flush_interval = "100ms"
compression = "gzip"
batch = {{ max_events = 400 }}
timestamp_key = ""
{sink_extra}
"#,
        data = env.path("data").display(),
        logs = env.logs().display(),
    ));
    let out = Command::new(BIN)
        .args(["run", "--exit-on-eof", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        !err.contains("WARN") && !err.contains("ERROR"),
        "no request failed: {err}"
    );
    let path = env.path("out/fb.out");
    wait_for("Fluent Bit's file output to hold every record", LONG, || {
        fluent_bit_records(&path).len() as u64 >= n
    });
    fluent_bit_records(&path)
}

#[test]
fn http_sink_json_array_and_concatenated_json_into_fluent_bit_in_http() {
    let Some(fb) = fluent_bit() else { return };
    let recs = http_into_fluent_bit(&fb, 3000, "http", "/app", "encoding = \"json_array\"");
    assert_exactly(&recs, 3000);
    let recs = http_into_fluent_bit(
        &fb,
        3000,
        "http",
        "/app",
        "headers = { \"Content-Type\" = \"application/json\" }",
    );
    assert_exactly(&recs, 3000);
}

#[test]
fn http_sink_splunk_hec_into_fluent_bit_in_splunk() {
    let Some(fb) = fluent_bit() else { return };
    let recs = http_into_fluent_bit(
        &fb,
        3000,
        "splunk",
        "/services/collector/event",
        "framing = \"splunk_hec\"",
    );
    // in_splunk keeps the HEC envelope: the record is its `event`.
    let events: Vec<serde_json::Value> = recs
        .iter()
        .map(|r| {
            assert!(
                r["time"].as_f64().is_some_and(|t| t > 1.6e9),
                "HEC time in epoch seconds: {r}"
            );
            r["event"].clone()
        })
        .collect();
    assert_exactly(&events, 3000);
}

#[test]
fn http_sink_opensearch_bulk_into_fluent_bit_in_elasticsearch() {
    let Some(fb) = fluent_bit() else { return };
    let recs = http_into_fluent_bit(&fb, 3000, "elasticsearch", "/_bulk", "framing = \"opensearch_bulk\"");
    // in_elasticsearch adds the action line as `@meta`.
    let docs: Vec<serde_json::Value> = recs
        .into_iter()
        .map(|mut r| {
            assert_eq!(r["@meta"], serde_json::json!({"index": {}}), "{r}");
            r.as_object_mut().unwrap().remove("@meta");
            r
        })
        .collect();
    assert_exactly(&docs, 3000);
}

// -- TLS, with client certificates, against Fluent Bit's OpenSSL ----------

/// The name in the server certificates (and 127.0.0.1 as an IP SAN).
const TLS_NAME: &str = "fwd.test";

/// A CA in `env`, a server certificate for [`TLS_NAME`] and a client one.
struct Pki {
    ca_pem: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn pki(env: &Env) -> Pki {
    let dir = env.path("pki");
    std::fs::create_dir_all(&dir).unwrap();
    let ca = tls::Ca::new("logferry test ca");
    let ca_pem = ca.write(&dir.join("ca.pem"));
    let server = ca.issue(&dir, "server", &[TLS_NAME, "127.0.0.1"]);
    let client = ca.issue(&dir, "client", &["fluent-bit.node-a"]);
    Pki { ca_pem, server, client }
}

/// Fluent Bit `out_forward` options for TLS to our source, presenting
/// `client` and checking the server against `ca`.
fn fb_tls_output(ca: &Path, client: &(PathBuf, PathBuf)) -> String {
    format!(
        "    tls on\n    tls.verify on\n    tls.vhost {TLS_NAME}\n    tls.ca_file {}\n    tls.crt_file {}\n    tls.key_file {}\n",
        ca.display(),
        client.0.display(),
        client.1.display()
    )
}

fn source_tls(p: &Pki) -> String {
    format!(
        "tls = {{ cert_file = \"{}\", key_file = \"{}\", ca_file = \"{}\", verify_client = true }}",
        p.server.0.display(),
        p.server.1.display(),
        p.ca_pem.display()
    )
}

#[test]
fn fluent_bit_to_source_over_mutual_tls_with_shared_key_and_acks() {
    let Some(fb) = fluent_bit() else { return };
    let env = Env::new();
    let p = pki(&env);
    let n = 5000;
    write_lines(&env, n);
    let (port, api) = (free_port(), free_port());
    let router = spawn(
        &source_config(&env, port, api, &format!("shared_key = \"s3cret\"\n{}", source_tls(&p))),
        &[],
    );
    wait_for("the source listening", LONG, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let output = format!(
        "{}    Shared_Key s3cret\n    Compress gzip\n    Require_ack_response true",
        fb_tls_output(&p.ca_pem, &p.client)
    );
    let client = FluentBit::start(&fb, &env, &fb_client_conf(&env, port, &output));
    wait_for("every record in our file sink", LONG, || {
        env.records().len() as u64 >= n
    });
    drop(client);
    router.signal(libc::SIGTERM);
    let (status, err) = router.wait(LONG);
    assert!(status.success(), "{err}");
    assert_exactly(&received_lines(&env), n);
    let (_, m) = http_get(api, "/metrics").unwrap_or_default();
    assert_eq!(
        metric(&m, "logferry_forward_handshake_failures_total", &["reason=\"tls\""]).unwrap_or(0.0),
        0.0
    );
}

#[test]
fn fluent_bit_with_a_certificate_of_another_ca_is_refused_by_the_tls_source() {
    let Some(fb) = fluent_bit() else { return };
    let env = Env::new();
    let p = pki(&env);
    write_lines(&env, 100);
    let other = tls::Ca::new("another ca");
    let stranger = other.issue(&env.path("pki"), "stranger", &["fluent-bit.node-x"]);
    let (port, api) = (free_port(), free_port());
    let router = spawn(&source_config(&env, port, api, &source_tls(&p)), &[]);
    wait_for("the source listening", LONG, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let output = format!("{}    Require_ack_response true", fb_tls_output(&p.ca_pem, &stranger));
    let client = FluentBit::start(&fb, &env, &fb_client_conf(&env, port, &output));
    let tls_failures = || {
        http_get(api, "/metrics")
            .and_then(|(_, m)| metric(&m, "logferry_forward_handshake_failures_total", &["reason=\"tls\""]))
            .unwrap_or(0.0)
    };
    // Fluent Bit retries (Retry_Limit no_limits): every attempt refused.
    wait_for("two refused attempts", LONG, || tls_failures() >= 2.0);
    drop(client);
    drop(router);
    assert!(env.records().is_empty(), "records arrived: {:?}", env.records());
}

#[test]
fn sink_to_fluent_bit_over_tls() {
    // Fluent Bit's in_forward with a server certificate; our sink checks it
    // against the CA (and the name) and presents a client certificate, which
    // Fluent Bit's input does not ask for.
    let Some(fb) = fluent_bit() else { return };
    let env = Env::new();
    let p = pki(&env);
    let input = format!(
        "    tls on\n    tls.verify off\n    tls.crt_file {}\n    tls.key_file {}\n",
        p.server.0.display(),
        p.server.1.display()
    );
    let sink = format!(
        "require_ack = true\ntls = {{ enabled = true, ca_file = \"{}\", server_name = \"{TLS_NAME}\", cert_file = \"{}\", key_file = \"{}\" }}",
        p.ca_pem.display(),
        p.client.0.display(),
        p.client.1.display()
    );
    deliver_to_fluent_bit(&fb, 3000, &input, &sink);
}
