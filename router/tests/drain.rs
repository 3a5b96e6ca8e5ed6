//! The drain bound through the real binary: from SIGTERM (or an `exit_when`
//! condition) the router exits 0 within `drain_timeout` plus 1 s whatever
//! its sink does, and nothing is lost: the checkpoint it leaves covers only
//! lines the destination acknowledged (or a disk buffer holds), and a
//! restart with a working sink delivers every id.
//!
//! Each case fills `memory_limit = "2MiB"` against a sink that pushes back,
//! so the file source is blocked on memory permits or a full channel when
//! the drain starts. The elapsed times are printed; the bound asserted is
//! `drain_timeout` + 1 s + [`SLACK`] for a loaded 2-core machine.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rmpv::Value;

/// Hang guard only.
const LONG: Duration = Duration::from_secs(90);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// The promise: exit within `drain_timeout` plus this.
const PROMISE: Duration = Duration::from_secs(1);
/// Room for a loaded machine (scheduling, a debug build).
const SLACK: Duration = Duration::from_secs(2);
/// Lines written before the start: about 6 MB, three times `memory_limit`.
const N: u64 = 60_000;
const AWS_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// `[global]`, `[lifecycle]`, the `app` file source over `logs/app.log` and
/// the given sink section(s).
fn config(env: &Env, sink: &str, lifecycle_extra: &str) -> PathBuf {
    env.write_config(&format!(
        r#"
[global]
data_dir = "{data}"
memory_limit = "2MiB"

[lifecycle]
drain_quiet = "500ms"
drain_timeout = "{timeout}s"
check_interval = "100ms"
{lifecycle_extra}

[sources.app]
type = "file"
include = ["{logs}/app.log"]

{sink}
"#,
        data = env.path("data").display(),
        timeout = DRAIN_TIMEOUT.as_secs(),
        logs = env.logs().display(),
    ))
}

/// Signals the router and waits for it: asserts exit status 0 and the
/// drain bound, prints the time taken.
fn stop_within_the_bound(child: Router, case: &str, how: impl FnOnce(&Router)) -> String {
    how(&child);
    let started = Instant::now();
    let (status, err) = child.wait(LONG);
    let took = started.elapsed();
    eprintln!("{case}: exited {took:?} after the stop request (drain_timeout {DRAIN_TIMEOUT:?})");
    assert!(status.success(), "{case}: {status:?}\n{err}");
    assert!(
        took < DRAIN_TIMEOUT + PROMISE + SLACK,
        "{case}: exited {took:?} after the stop request, drain_timeout is {DRAIN_TIMEOUT:?}\n{err}"
    );
    err
}

fn sigterm(r: &Router) {
    r.signal(libc::SIGTERM);
}

/// The saved offset of `logs/app.log` (0 when it has none).
fn checkpoint(env: &Env) -> u64 {
    let path = env.path("data/checkpoints/app.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let log = env.logs().join("app.log").display().to_string();
    doc["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == log.as_str())
        .map_or(0, |f| f["offset"].as_u64().unwrap())
}

/// The checkpoint is a line boundary, and every line before it was
/// delivered: nothing the restart skips was lost.
fn assert_checkpoint_covers_only(env: &Env, delivered: &BTreeSet<u64>) -> u64 {
    let offset = checkpoint(env);
    let text = std::fs::read(env.logs().join("app.log")).unwrap();
    let mut end = 0u64;
    for line in text.split_inclusive(|b| *b == b'\n') {
        if end == offset {
            break;
        }
        end += line.len() as u64;
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        let id = v["id"].as_u64().unwrap();
        assert!(
            delivered.contains(&id),
            "the checkpoint ({offset}) passes id {id}, which was never delivered"
        );
    }
    assert_eq!(end, offset, "the checkpoint is not at a line boundary");
    offset
}

/// Runs the same source to its end into a working `file` sink of the same
/// id (`buffer` repeats the sink's buffer option, so a disk buffer is
/// replayed) and asserts every id is in its output or in `delivered`.
fn restart_delivers_everything(env: &Env, buffer: &str, delivered: &BTreeSet<u64>) {
    let sink = format!(
        r#"
[sinks.out]
type = "file"
inputs = ["app"]
path = "{out}"
compression = "none"
flush_interval = "200ms"
{buffer}
"#,
        out = env.path("out").display()
    );
    let cfg = config(env, &sink, "");
    run_to_eof(&cfg, &[]);
    let mut ids: BTreeSet<u64> = id_counts(&env.records()).into_keys().collect();
    let restarted = ids.len();
    ids.extend(delivered);
    let missing: Vec<u64> = (0..N).filter(|i| !ids.contains(i)).take(10).collect();
    assert!(missing.is_empty(), "ids lost (first 10): {missing:?}");
    eprintln!(
        "restart: {restarted} ids from the restart, {} delivered before the stop, {N} in all",
        delivered.len()
    );
}

fn start(env: &Env, sink: &str, envs: &[(&str, &str)]) -> Router {
    append_ids(&env.logs().join("app.log"), 0..N);
    let cfg = config(env, sink, "");
    spawn(&cfg, envs)
}

#[test]
fn forward_sink_to_a_port_that_refuses_connections() {
    let env = Env::new();
    let sink = format!(
        "[sinks.out]\ntype = \"forward\"\ninputs = [\"app\"]\nhost = \"127.0.0.1\"\nport = {}\n",
        free_port()
    );
    let child = start(&env, &sink, &[]);
    wait_for("the sink to fail", LONG, || {
        child.stderr().contains("forward delivery failed")
    });
    let err = stop_within_the_bound(child, "forward, connection refused", sigterm);
    assert!(err.contains("drain_timeout reached"), "{err}");
    assert!(err.contains("stopped with records not delivered"), "{err}");
    assert_eq!(assert_checkpoint_covers_only(&env, &BTreeSet::new()), 0);
    restart_delivers_everything(&env, "", &BTreeSet::new());
}

/// A forward server that acknowledges its first `acked` messages, then
/// reads everything and never answers again. Records the ids it acked.
struct SilentForward {
    port: u16,
    delivered: Arc<Mutex<BTreeSet<u64>>>,
    /// Messages received, answered or not.
    messages: Arc<AtomicUsize>,
}

impl SilentForward {
    fn start(acked: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let delivered = Arc::new(Mutex::new(BTreeSet::new()));
        let messages = Arc::new(AtomicUsize::new(0));
        let (d, m) = (delivered.clone(), messages.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (d, messages) = (d.clone(), m.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream);
                    while let Ok(msg) = rmpv::decode::read_value(&mut reader) {
                        if messages.fetch_add(1, Ordering::SeqCst) >= acked {
                            continue; // read, never answered
                        }
                        let ids = forward_ids(&msg);
                        let Some(chunk) = msg[2]["chunk"].as_str().map(str::to_string) else {
                            continue;
                        };
                        d.lock().unwrap().extend(ids);
                        let ack = Value::Map(vec![("ack".into(), chunk.into())]);
                        let mut out = Vec::new();
                        rmpv::encode::write_value(&mut out, &ack).unwrap();
                        if reader.get_mut().write_all(&out).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        SilentForward {
            port,
            delivered,
            messages,
        }
    }
}

/// The `id` of every event of a PackedForward message (no compression).
fn forward_ids(msg: &Value) -> Vec<u64> {
    let Value::Binary(entries) = &msg[1] else {
        panic!("entries should be bin: {msg:?}")
    };
    let mut cur = &entries[..];
    let mut ids = Vec::new();
    while !cur.is_empty() {
        let e = rmpv::decode::read_value(&mut cur).unwrap();
        let id = e[1]["id"].as_u64().expect("an id in every record");
        ids.push(id);
    }
    ids
}

#[test]
fn forward_sink_to_a_server_that_accepts_and_never_answers() {
    let env = Env::new();
    // 64 KiB chunks: twelve of them complete the first batches of 256 KiB.
    let server = SilentForward::start(12);
    let sink = format!(
        "[sinks.out]\ntype = \"forward\"\ninputs = [\"app\"]\nhost = \"127.0.0.1\"\nport = {}\nmax_chunk_size = \"64KiB\"\n",
        server.port
    );
    let child = start(&env, &sink, &[]);
    // The thirteenth chunk waits for an ack that never comes (ack_timeout 30 s).
    wait_for("a chunk left unanswered", LONG, || {
        server.messages.load(Ordering::SeqCst) > 12
    });
    stop_within_the_bound(child, "forward, server never answers", sigterm);
    let delivered = server.delivered.lock().unwrap().clone();
    let offset = assert_checkpoint_covers_only(&env, &delivered);
    eprintln!("checkpoint {offset} with {} ids acknowledged", delivered.len());
    assert!(offset > 0, "the acknowledged chunks completed no batch");
    restart_delivers_everything(&env, "", &delivered);
}

fn s3_sink(endpoint_port: u16) -> String {
    format!(
        r#"
[sinks.out]
type = "s3"
inputs = ["app"]
bucket = "logferry-test"
region = "us-east-1"
endpoint_url = "http://127.0.0.1:{endpoint_port}"
force_path_style = true
flush_interval = "200ms"
"#
    )
}

#[test]
fn s3_sink_to_an_endpoint_that_refuses_connections() {
    let env = Env::new();
    let child = start(&env, &s3_sink(free_port()), AWS_ENV);
    wait_for("the sink to fail", LONG, || {
        child.stderr().contains("S3 request failed")
    });
    stop_within_the_bound(child, "s3, connection refused", sigterm);
    assert_eq!(assert_checkpoint_covers_only(&env, &BTreeSet::new()), 0);
    restart_delivers_everything(&env, "", &BTreeSet::new());
}

/// A sink whose endpoint accepts connections (the kernel's backlog) and
/// never reads them, so each request waits for the client's own timeout:
/// no error comes first, so the test waits for the backpressure (batches
/// queued in front of the stuck sink hold memory), then stops the router.
fn stuck_endpoint_drains(case: &str, sink: impl Fn(u16) -> String, envs: &[(&str, &str)]) {
    let env = Env::new();
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let api = free_port();
    let sink = format!("[api]\naddress = \"127.0.0.1:{api}\"\n{}", sink(port));
    let child = start(&env, &sink, envs);
    wait_for("batches to hold memory_limit", LONG, || {
        metric_value(api, "logferry_memory_used_bytes") >= 512.0 * 1024.0
    });
    stop_within_the_bound(child, case, sigterm);
    assert_eq!(assert_checkpoint_covers_only(&env, &BTreeSet::new()), 0);
    drop(silent);
    restart_delivers_everything(&env, "", &BTreeSet::new());
}

#[test]
fn s3_sink_to_an_endpoint_that_never_answers() {
    // Each request waits for the SDK's attempt timeout (60 s).
    stuck_endpoint_drains("s3, endpoint never answers", s3_sink, AWS_ENV);
}

/// CloudWatch Logs answering every request as throttled, the way the AWS
/// JSON protocol does: 400 with `x-amzn-ErrorType: ThrottlingException`.
/// Counts the requests.
fn throttling_server() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let r = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let r = r.clone();
            std::thread::spawn(move || {
                let _ = throttle_connection(stream, &r);
            });
        }
    });
    (port, requests)
}

fn throttle_connection(stream: TcpStream, requests: &AtomicUsize) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        requests.fetch_add(1, Ordering::SeqCst);
        let reply = r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;
        write!(
            out,
            "HTTP/1.1 400 Bad Request\r\nx-amzn-RequestId: 00000000-0000-0000-0000-000000000000\r\nx-amzn-ErrorType: ThrottlingException\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        )?;
        out.flush()?;
    }
}

#[test]
fn cloudwatch_logs_throttled() {
    let env = Env::new();
    let (port, requests) = throttling_server();
    let sink = format!(
        r#"
[sinks.out]
type = "cloudwatch_logs"
inputs = ["app"]
log_group = "/logferry/test"
log_stream = "drain"
create_missing = false
flush_interval = "200ms"
region = "us-east-1"
endpoint_url = "http://127.0.0.1:{port}"
"#
    );
    let child = start(&env, &sink, AWS_ENV);
    wait_for("the sink to be throttled", LONG, || {
        child.stderr().contains("CloudWatch Logs request failed")
    });
    let err = stop_within_the_bound(child, "cloudwatch_logs, throttled", sigterm);
    assert!(err.contains("ThrottlingException"), "{err}");
    assert!(requests.load(Ordering::SeqCst) > 0);
    assert_eq!(assert_checkpoint_covers_only(&env, &BTreeSet::new()), 0);
    restart_delivers_everything(&env, "", &BTreeSet::new());
}

/// Value of `name` in `/metrics`, 0 when absent or unreachable.
fn metric_value(api: u16, name: &str) -> f64 {
    http_get(api, "/metrics")
        .and_then(|(_, body)| metric(&body, name, &[]))
        .unwrap_or(0.0)
}

#[test]
fn full_disk_buffer_in_front_of_a_dead_sink_and_exit_when() {
    let env = Env::new();
    let api = free_port();
    let marker = env.path("app.done");
    let buffer = r#"buffer = { type = "disk", max_size = "1MiB" }"#;
    let sink = format!(
        "[api]\naddress = \"127.0.0.1:{api}\"\n\n[sinks.out]\ntype = \"forward\"\ninputs = [\"app\"]\nhost = \"127.0.0.1\"\nport = {}\n{buffer}\n",
        free_port()
    );
    append_ids(&env.logs().join("app.log"), 0..N);
    let extra = format!("[lifecycle.exit_when]\nfile_exists = \"{}\"\n", marker.display());
    let cfg = config(&env, &sink, &extra);
    let child = spawn(&cfg, &[]);
    wait_for("the disk buffer to fill", LONG, || {
        metric_value(api, "logferry_buffer_bytes") >= 768.0 * 1024.0
    });
    let err = stop_within_the_bound(child, "disk buffer full, sink dead, exit_when", |_| {
        std::fs::write(&marker, b"").unwrap()
    });
    assert!(err.contains("marker file exists"), "{err}");
    assert!(err.contains("stopped with records in the disk buffer"), "{err}");
    // The buffer acknowledged what it holds: the checkpoint passed it, and
    // the restart must replay it from disk.
    assert!(checkpoint(&env) > 0, "nothing reached the disk buffer");
    restart_delivers_everything(&env, buffer, &BTreeSet::new());
}

fn http_sink(port: u16, extra: &str) -> String {
    format!(
        r#"
[sinks.out]
type = "http"
inputs = ["app"]
uri = "http://127.0.0.1:{port}/logs"
flush_interval = "200ms"
{extra}
"#
    )
}

#[test]
fn http_sink_to_an_endpoint_that_never_answers() {
    stuck_endpoint_drains(
        "http, endpoint never answers",
        |port| http_sink(port, "request_timeout = \"120s\""),
        &[],
    );
}

/// A server answering every request `429 Retry-After: 3600`: the sink waits
/// (up to `max_retry_after`) between attempts, and the drain must not wait
/// with it.
#[test]
fn http_sink_told_to_retry_after_an_hour() {
    let env = Env::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let r = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let r = r.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    // Headers, then the body by Content-Length.
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    let _ = stream
                        .write_all(b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 3600\r\ncontent-length: 0\r\n\r\n");
                }
            });
        }
    });
    let child = start(&env, &http_sink(port, "max_retry_after = \"60s\""), &[]);
    wait_for("the server to have throttled a request", LONG, || {
        requests.load(Ordering::SeqCst) >= 1
    });
    stop_within_the_bound(child, "http, 429 retry after an hour", sigterm);
    assert_eq!(assert_checkpoint_covers_only(&env, &BTreeSet::new()), 0);
    restart_delivers_everything(&env, "", &BTreeSet::new());
}

#[test]
fn kinesis_sink_to_an_endpoint_that_never_answers() {
    let sink = |port| {
        format!(
            r#"
[sinks.out]
type = "kinesis_streams"
inputs = ["app"]
stream = "s"
region = "us-east-1"
endpoint_url = "http://127.0.0.1:{port}"
flush_interval = "200ms"
"#
        )
    };
    stuck_endpoint_drains("kinesis, endpoint never answers", sink, AWS_ENV);
}
