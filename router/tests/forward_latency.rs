//! The forward sink across a slow link: a delay proxy (tokio, a fixed delay
//! each way) between a Logferry forward sink and another Logferry's forward
//! source (into a blackhole, which acks at once). The proxy decodes what
//! passes: PackedForward messages one way, `{"ack": id}` the other, so it
//! sees how many chunks are outstanding on the wire.
//!
//! `pipelining_*` asserts what the proxy saw (several chunks outstanding
//! before the first ack, never more than `max_in_flight`, every record acked
//! once); it asserts no timing. `throughput_at_latency` (ignored; run with
//! `--run-ignored only --no-capture`) prints records/s at 1 ms and 20 ms RTT
//! for several `max_in_flight`.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy saw, over all connections.
#[derive(Default)]
struct Stats {
    /// Chunks passed to the server and not yet acked back.
    outstanding: usize,
    max_outstanding: usize,
    /// `max_outstanding` before the first ack came back.
    max_before_first_ack: usize,
    acks_seen: usize,
    /// Events of each chunk id, from its `size` option.
    sizes: HashMap<String, u64>,
    acked: HashSet<String>,
    acked_events: u64,
    first_chunk: Option<Instant>,
    last_ack: Option<Instant>,
}

/// Splits complete msgpack values off the front of `buf`.
fn take_values(buf: &mut Vec<u8>) -> Vec<rmpv::Value> {
    let mut out = Vec::new();
    loop {
        let mut cur = std::io::Cursor::new(&buf[..]);
        match rmpv::decode::read_value(&mut cur) {
            Ok(v) => {
                let used = cur.position() as usize;
                buf.drain(..used);
                out.push(v);
            }
            Err(_) => return out,
        }
    }
}

fn opt<'a>(v: &'a rmpv::Value, key: &str) -> Option<&'a rmpv::Value> {
    v.as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

/// One direction of one connection: what is read is passed on `delay`
/// later, in order; `tap` sees it when read.
async fn delay_line(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    mut tap: impl FnMut(&[u8]) + Send + 'static,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tap(&buf[..n]);
                let _ = tx.send((tokio::time::Instant::now() + delay, buf[..n].to_vec()));
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Listens on a free port and relays each connection to `upstream` with
/// `rtt / 2` added each way.
async fn proxy(upstream: u16, rtt: Duration, stats: Arc<Mutex<Stats>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let up_stats = stats.clone();
            let mut up_buf = Vec::new();
            tokio::spawn(delay_line(cr, sw, rtt / 2, move |b| {
                up_buf.extend_from_slice(b);
                for m in take_values(&mut up_buf) {
                    let Some(parts) = m.as_array() else { continue };
                    let Some(id) = parts.get(2).and_then(|o| opt(o, "chunk")).and_then(|v| v.as_str()) else {
                        continue;
                    };
                    let size = parts
                        .get(2)
                        .and_then(|o| opt(o, "size"))
                        .and_then(|v| v.as_u64())
                        .unwrap_or(0);
                    let mut s = up_stats.lock().unwrap();
                    s.first_chunk.get_or_insert_with(Instant::now);
                    s.sizes.insert(id.to_string(), size);
                    s.outstanding += 1;
                    s.max_outstanding = s.max_outstanding.max(s.outstanding);
                    if s.acks_seen == 0 {
                        s.max_before_first_ack = s.max_outstanding;
                    }
                }
            }));
            let down_stats = stats.clone();
            let mut down_buf = Vec::new();
            tokio::spawn(delay_line(sr, cw, rtt / 2, move |b| {
                down_buf.extend_from_slice(b);
                for m in take_values(&mut down_buf) {
                    let Some(id) = opt(&m, "ack").and_then(|v| v.as_str()) else {
                        continue;
                    };
                    let mut s = down_stats.lock().unwrap();
                    s.acks_seen += 1;
                    s.outstanding = s.outstanding.saturating_sub(1);
                    s.last_ack = Some(Instant::now());
                    if s.acked.insert(id.to_string()) {
                        let n = s.sizes.get(id).copied().unwrap_or(0);
                        s.acked_events += n;
                    }
                }
            }));
        }
    });
    port
}

/// `logs/app.log` with `n` JSON lines of ~200 bytes, ids `0..n`.
fn write_lines(env: &Env, n: u64) {
    let pad = "x".repeat(160);
    let mut s = String::with_capacity(n as usize * 200);
    for i in 0..n {
        s.push_str(&format!("{{\"id\":{i},\"msg\":\"{pad}\"}}\n"));
    }
    std::fs::write(env.logs().join("app.log"), s).unwrap();
}

/// A Logferry forward source on `port` into a blackhole.
fn server(env: &Env, port: u16) -> Router {
    let r = spawn(
        &env.forward_to(None, &format!("address = \"127.0.0.1:{port}\""), ForwardInto::Blackhole),
        &[],
    );
    wait_listening(port);
    r
}

/// file -> forward sink to `port`, with `max_in_flight` and 16 KiB chunks.
fn sink_config(env: &Env, port: u16, max_in_flight: usize, chunk: &str) -> PathBuf {
    env.file_to_forward(
        None,
        "",
        &format!("host = \"127.0.0.1\"\nport = {port}\nmax_in_flight = {max_in_flight}\nmax_chunk_size = \"{chunk}\""),
    )
}

/// Sends `n` records through a proxy with `rtt`; returns what it saw.
fn measure(
    rt: &tokio::runtime::Runtime,
    upstream: u16,
    rtt: Duration,
    max_in_flight: usize,
    chunk: &str,
    n: u64,
) -> Stats {
    let stats = Arc::new(Mutex::new(Stats::default()));
    let port = rt.block_on(proxy(upstream, rtt, stats.clone()));
    let env = Env::new();
    write_lines(&env, n);
    run_to_eof(&sink_config(&env, port, max_in_flight, chunk), &[]);
    std::mem::take(&mut *stats.lock().unwrap())
}

fn rate(s: &Stats) -> f64 {
    let t = s.last_ack.unwrap().duration_since(s.first_chunk.unwrap());
    s.acked_events as f64 / t.as_secs_f64()
}

#[test]
fn pipelining_keeps_several_chunks_outstanding_through_a_delay_proxy() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let b = Env::new();
    let upstream = free_port();
    let _server = server(&b, upstream);
    let n = 20_000;
    // 20 ms RTT, 4 in flight: the sink writes ahead of the acks.
    let s = measure(&rt, upstream, Duration::from_millis(20), 4, "16KiB", n);
    assert!(
        s.max_before_first_ack > 1,
        "only {} chunk(s) outstanding before the first ack",
        s.max_before_first_ack
    );
    assert!(s.max_outstanding <= 4, "{} chunks outstanding", s.max_outstanding);
    assert!(s.sizes.len() > 100, "{} chunks", s.sizes.len());
    assert_eq!(s.acked_events, n, "every record in exactly one acked chunk");
    // max_in_flight = 1: stop-and-wait, never two outstanding.
    let s = measure(&rt, upstream, Duration::from_millis(2), 1, "16KiB", 5_000);
    assert_eq!(s.max_outstanding, 1);
    assert_eq!(s.acked_events, 5_000);
}

#[test]
#[ignore = "measurement: run with --run-ignored only --no-capture (a release build gives the real figures)"]
fn throughput_at_latency() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let b = Env::new();
    let upstream = free_port();
    let _server = server(&b, upstream);
    let chunk = std::env::var("CHUNK").unwrap_or_else(|_| "16KiB".into());
    let n: u64 = std::env::var("RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40_000);
    println!("records {n}, max_chunk_size {chunk}");
    for rtt in [1u64, 20] {
        let mut base = 0.0;
        for mif in [1usize, 4, 16, 32] {
            let s = measure(&rt, upstream, Duration::from_millis(rtt), mif, &chunk, n);
            assert_eq!(s.acked_events, n);
            let r = rate(&s);
            if mif == 1 {
                base = r;
            }
            println!(
                "rtt {rtt:>2} ms  max_in_flight {mif:>2}: {r:>9.0} records/s ({:.1}x), {} chunks, max outstanding {}",
                r / base,
                s.sizes.len(),
                s.max_outstanding
            );
        }
    }
}
