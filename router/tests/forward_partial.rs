//! Docker partial messages through the real binary: a forward client sends
//! a 40 KiB JSON line as three partial messages, interleaved with another
//! container's parts and a plain record, and the file sink gets one valid
//! record per line; the forward chunks are acked only once the joined line
//! is delivered; a part held at SIGTERM is emitted (marked), not lost.
//! Both ways of asking for it: the forward source's `partial` option and a
//! `partial_message` transform after a plain forward source.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);
/// 2026-11-25T23:15:47Z
const SECS: u32 = 1_795_648_547;

/// `[tag, [[time, record]...], {"chunk": chunk}]` (Forward mode), records
/// given as JSON objects of strings.
fn frame(tag: &str, records: &[Value], chunk: &str) -> Vec<u8> {
    use rmp::encode as e;
    let mut out = Vec::new();
    e::write_array_len(&mut out, 3).unwrap();
    e::write_str(&mut out, tag).unwrap();
    e::write_array_len(&mut out, records.len() as u32).unwrap();
    for (i, r) in records.iter().enumerate() {
        e::write_array_len(&mut out, 2).unwrap();
        // EventTime: the parts of one line a millisecond apart.
        e::write_ext_meta(&mut out, 8, 0).unwrap();
        out.extend_from_slice(&SECS.to_be_bytes());
        out.extend_from_slice(&(i as u32 * 1_000_000).to_be_bytes());
        let m = r.as_object().unwrap();
        e::write_map_len(&mut out, m.len() as u32).unwrap();
        for (k, v) in m {
            e::write_str(&mut out, k).unwrap();
            e::write_str(&mut out, v.as_str().unwrap()).unwrap();
        }
    }
    e::write_map_len(&mut out, 1).unwrap();
    e::write_str(&mut out, "chunk").unwrap();
    e::write_str(&mut out, chunk).unwrap();
    out
}

/// The server's `{"ack": chunk}` bytes.
fn ack_of(chunk: &str) -> Vec<u8> {
    let mut out = Vec::new();
    rmp::encode::write_map_len(&mut out, 1).unwrap();
    rmp::encode::write_str(&mut out, "ack").unwrap();
    rmp::encode::write_str(&mut out, chunk).unwrap();
    out
}

fn part(container: &str, id: &str, ord: u32, last: bool, log: &str) -> Value {
    json!({
        "container_id": container,
        "container_name": format!("/{container}"),
        "source": "stdout",
        "log": log,
        "partial_message": "true",
        "partial_id": id,
        "partial_ordinal": ord.to_string(),
        "partial_last": if last { "true" } else { "false" },
    })
}

/// A JSON line of about `size` bytes, as an application logs it.
fn json_line(size: usize, who: &str) -> String {
    let body: String = (0..size).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    json!({"level": "info", "who": who, "msg": "big \"quoted\" é", "body": body}).to_string()
}

/// Cuts `s` into pieces of at most 16 KiB, as Docker does.
fn pieces(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let at = rest.floor_char_boundary(16 * 1024);
        out.push(&rest[..at]);
        rest = &rest[at..];
    }
    out
}

fn config(env: &Env, port: u16, api: u16, how: &str) -> std::path::PathBuf {
    let (source, transform, input) = match how {
        "source" => ("partial = { flush_timeout = \"60s\" }", "", "fw"),
        _ => (
            "",
            "[transforms.join]\ntype = \"partial_message\"\ninputs = [\"fw\"]\nflush_timeout = \"60s\"\n",
            "join",
        ),
    };
    env.write_config(&format!(
        r#"
[global]
data_dir = "{data}"

[api]
address = "127.0.0.1:{api}"

[sources.fw]
type = "forward"
address = "127.0.0.1:{port}"
{source}

{transform}

[sinks.out]
type = "file"
inputs = ["{input}"]
path = "{out}"
compression = "none"
flush_interval = "200ms"
"#,
        data = env.path("data").display(),
        out = env.path("out").display(),
    ))
}

fn connect(port: u16) -> TcpStream {
    wait_for("the listener", LONG, || TcpStream::connect(("127.0.0.1", port)).is_ok());
    let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // A hang guard only.
    c.set_read_timeout(Some(LONG)).unwrap();
    c
}

/// Reads exactly the acks of `chunks`, in any order.
fn read_acks(c: &mut TcpStream, chunks: &[&str]) {
    let mut want: Vec<Vec<u8>> = chunks.iter().map(|ch| ack_of(ch)).collect();
    while !want.is_empty() {
        let mut buf = vec![0u8; want[0].len()];
        c.read_exact(&mut buf).expect("an ack");
        let at = want
            .iter()
            .position(|w| *w == buf)
            .unwrap_or_else(|| panic!("unexpected reply {buf:?}"));
        want.remove(at);
    }
}

/// Nothing the server sent is waiting to be read.
fn no_reply_yet(c: &mut TcpStream) -> bool {
    c.set_nonblocking(true).unwrap();
    let mut b = [0u8; 64];
    let r = c.read(&mut b);
    c.set_nonblocking(false).unwrap();
    matches!(r, Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

fn joins_a_40kib_line_and_acks_after_it(how: &str) {
    let env = Env::new();
    let (port, api) = (free_port(), free_port());
    let router = spawn(&config(&env, port, api, how), &[]);
    let mut c = connect(port);
    let big = json_line(40 * 1024, "a");
    let a = pieces(&big);
    assert_eq!(a.len(), 3);
    let small = json_line(20 * 1024, "b");
    let b = pieces(&small);
    assert_eq!(b.len(), 2);
    // Chunk 1: the first part of each line; chunk 2: b's last part, then
    // a's middle one; chunk 3: a plain record and a's last part.
    c.write_all(&frame(
        "app",
        &[part("ca", "pa", 1, false, a[0]), part("cb", "pb", 1, false, b[0])],
        "k1",
    ))
    .unwrap();
    c.write_all(&frame(
        "app",
        &[part("cb", "pb", 2, true, b[1]), part("ca", "pa", 2, false, a[1])],
        "k2",
    ))
    .unwrap();
    // b is complete and delivered...
    wait_for("b's joined record", LONG, || env.records().len() == 1);
    let got = env.records();
    assert_eq!(got[0]["log"].as_str(), Some(small.as_str()));
    // ...but chunks 1 and 2 also hold parts of a, still open: no ack.
    assert!(
        no_reply_yet(&mut c),
        "a chunk was acked before all its records were delivered"
    );
    c.write_all(&frame(
        "app",
        &[
            json!({"log": "plain", "container_id": "cc"}),
            part("ca", "pa", 3, true, a[2]),
        ],
        "k3",
    ))
    .unwrap();
    read_acks(&mut c, &["k1", "k2", "k3"]);
    // Acked means delivered: everything is in the output now.
    let got = env.records();
    assert_eq!(got.len(), 3, "{got:?}");
    let whole = got.iter().find(|r| r["container_id"] == "ca").unwrap();
    let line = whole["log"].as_str().unwrap();
    assert_eq!(line, big);
    let parsed: Value = serde_json::from_str(line).expect("the joined line is valid JSON");
    assert_eq!(parsed["body"].as_str().unwrap().len(), 40 * 1024);
    // The first part's fields and time; the partial keys are gone.
    assert_eq!(whole["container_name"], "/ca");
    assert_eq!(whole["@timestamp"], "2026-11-25T23:15:47.000Z");
    for r in &got {
        let keys: Vec<&String> = r.as_object().unwrap().keys().collect();
        assert!(
            keys.iter()
                .all(|k| !k.starts_with("partial_") && *k != "logferry_partial"),
            "{keys:?}"
        );
    }
    assert!(got.iter().any(|r| r["log"] == "plain"));
    router.signal(libc::SIGTERM);
    drop(c);
    let (status, stderr) = router.wait(LONG);
    assert!(status.success(), "{stderr}");
    assert_eq!(env.records().len(), 3);
}

#[test]
fn forward_source_partial_joins_a_40kib_line_and_acks_after_it() {
    joins_a_40kib_line_and_acks_after_it("source");
}

#[test]
fn partial_message_transform_joins_a_40kib_line_and_acks_after_it() {
    joins_a_40kib_line_and_acks_after_it("transform");
}

#[test]
fn a_part_held_at_sigterm_is_emitted_marked_and_its_chunk_acked() {
    for how in ["source", "transform"] {
        let env = Env::new();
        let (port, api) = (free_port(), free_port());
        let cfg = config(&env, port, api, how);
        // The drain ends as soon as the client is quiet.
        let text = std::fs::read_to_string(&cfg).unwrap() + "\n[lifecycle]\ndrain_quiet = \"200ms\"\n";
        std::fs::write(&cfg, text).unwrap();
        let router = spawn(&cfg, &[]);
        let mut c = connect(port);
        c.write_all(&frame("app", &[part("ca", "held", 1, false, "the first half")], "h1"))
            .unwrap();
        let want = ["component=\"fw\""];
        wait_for("the part read", LONG, || {
            let m = http_get(api, "/metrics").map(|r| r.1).unwrap_or_default();
            metric(&m, "logferry_component_received_events_total", &want) == Some(1.0)
        });
        assert!(env.records().is_empty(), "{how}: held, not shipped");
        router.signal(libc::SIGTERM);
        // Drained: the held part goes out, and then its chunk is answered.
        read_acks(&mut c, &["h1"]);
        let (status, stderr) = router.wait(LONG);
        assert!(status.success(), "{how}: {stderr}");
        let got = env.records();
        assert_eq!(got.len(), 1, "{how}: {got:?}");
        assert_eq!(got[0]["log"], "the first half");
        assert_eq!(got[0]["logferry_partial"], "shutdown");
        assert_eq!(got[0]["partial_id"], "held");
        assert!(got[0].get("partial_message").is_none());
    }
}
