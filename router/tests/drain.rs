//! The drain bound, with the real binary: from SIGTERM the router exits
//! within `drain_timeout` plus 1 s whatever its sinks do (a dead or silent
//! forward server, an S3 endpoint that never answers while a tiny
//! `memory_limit` blocks the source, CloudWatch throttling every request,
//! a full disk buffer), exits 0, and loses nothing: a second run with a
//! working sink delivers every line exactly once (nothing was acknowledged
//! by the stuck sink, so no checkpoint may have moved).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

const LINES: u64 = 200_000;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// What the contract allows past `drain_timeout`...
const CONTRACT: Duration = Duration::from_secs(1);
/// ...and room for a loaded 2-core test machine (signal delivery, exit).
const SLACK: Duration = Duration::from_secs(2);
const LONG: Duration = Duration::from_secs(120);

/// A port where something listens, accepts, and never reads or answers.
struct Silent {
    port: u16,
    _conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

fn silent() -> Silent {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = conns.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            keep.lock().unwrap().push(s);
        }
    });
    Silent { port, _conns: conns }
}

/// An HTTP server that answers every request as AWS does when throttling.
fn throttling() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let body = r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;
                    let resp = format!(
                        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/x-amz-json-1.1\r\nx-amzn-requestid: 1\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn config(env: &Env, memory_limit: &str, sink: &str) -> PathBuf {
    env.write_config(&format!(
        r#"
[global]
data_dir = "{data}"
memory_limit = "{memory_limit}"

[sources.app]
type = "file"
include = ["{logs}/*.log"]

[lifecycle]
drain_quiet = "500ms"
drain_timeout = "{drain}s"

[sinks.stuck]
inputs = ["app"]
{sink}
"#,
        data = env.path("data").display(),
        logs = env.logs().display(),
        drain = DRAIN_TIMEOUT.as_secs(),
    ))
}

/// Runs the router against a stuck sink, stops it, checks the bound, then
/// delivers everything with a working sink.
fn drains_in_time(memory_limit: &str, sink: &str) {
    drains_in_time_then(memory_limit, sink, true);
}

fn drains_in_time_then(memory_limit: &str, sink: &str, replay: bool) {
    let env = Env::new();
    append_ids(&env.logs().join("app.log"), 0..LINES);
    let cfg = config(&env, memory_limit, sink);
    let router = spawn(
        &cfg,
        &[
            ("AWS_ACCESS_KEY_ID", "x"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    // Let it read, send and get stuck.
    std::thread::sleep(Duration::from_secs(2));
    router.signal(libc::SIGTERM);
    let signalled = Instant::now();
    let (status, err) = router.wait(LONG);
    let took = signalled.elapsed();
    eprintln!("exit {took:?} after SIGTERM (drain_timeout {DRAIN_TIMEOUT:?})");
    assert!(status.success(), "{status:?}\n{err}");
    assert!(
        took < DRAIN_TIMEOUT + CONTRACT + SLACK,
        "exit {took:?} after SIGTERM\n{err}"
    );
    if !replay {
        return;
    }
    // Nothing was delivered: the next run with a working sink delivers every
    // line, each once.
    let good = env.config("*.log", "", "");
    let out = run_to_eof(&good, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_each_once(&env.records(), LINES);
}

#[test]
fn forward_sink_to_a_closed_port() {
    drains_in_time(
        "64MiB",
        &format!("type = \"forward\"\nhost = \"127.0.0.1\"\nport = {}", free_port()),
    );
}

#[test]
fn forward_sink_to_a_server_that_never_reads() {
    let s = silent();
    drains_in_time(
        "64MiB",
        &format!("type = \"forward\"\nhost = \"127.0.0.1\"\nport = {}", s.port),
    );
}

#[test]
fn s3_sink_to_an_endpoint_that_never_answers_with_a_tiny_memory_limit() {
    let s = silent();
    drains_in_time(
        "2MiB",
        &format!(
            "type = \"s3\"\nbucket = \"drain-test\"\nregion = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:{}\"\nforce_path_style = true\nflush_interval = \"1s\"",
            s.port
        ),
    );
}

#[test]
fn cloudwatch_logs_throttling_every_request() {
    let port = throttling();
    drains_in_time(
        "8MiB",
        &format!(
            "type = \"cloudwatch_logs\"\nlog_group = \"g\"\nlog_stream = \"s\"\nregion = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:{port}\""
        ),
    );
}

/// A disk buffer acknowledges what it holds (the records are durable in it,
/// for the same sink), so only the bound is checked here; the buffer's own
/// tests cover its replay.
#[test]
fn full_disk_buffer_in_front_of_a_dead_sink() {
    drains_in_time_then(
        "8MiB",
        &format!(
            "type = \"forward\"\nhost = \"127.0.0.1\"\nport = {}\nbuffer = {{ type = \"disk\", max_size = \"1MiB\" }}",
            free_port()
        ),
        false,
    );
}
