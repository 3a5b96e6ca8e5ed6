//! `type = "forward"`: events to a Fluent forward server (Fluent Bit,
//! Fluentd, or another Logferry's forward source), protocol v1.
//!
//! Why chunks: the protocol acknowledges a PackedForward message by the id
//! in its options, so the unit of delivery is a chunk of events with one tag:
//! records are transcoded into it as batches arrive, and it is closed when it
//! reaches `max_chunk_size`, when the tag changes, when its oldest event is
//! `flush_interval` old, when `memory_limit` has no room for it to grow, and
//! when the input ends. One tag per chunk is the protocol's; a tag template
//! that changes from record to record therefore makes small chunks.
//!
//! Acknowledgement: a chunk holds a clone of the `AckToken` of each batch it
//! has records of, dropped as delivered once the server acked the chunk (or,
//! without `require_ack`, once it is written and flushed), so a file's
//! checkpoint never passes records the server has not confirmed. A chunk
//! abandoned at shutdown drops its clones as failed.
//!
//! Delivery (`conn.rs`) never drops data: up to `max_in_flight` chunks are
//! unacked on the connection, and after an error they are sent again over a
//! new connection with capped, jittered backoff while the sink takes no
//! input (one more closed chunk waits, then the sources stop reading). Memory
//! held here (the open chunk, the waiting one, those in flight) is charged
//! to `memory_limit`.

mod config;
mod conn;
mod proto;
pub(crate) mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::sync::mpsc;

pub use config::{ForwardCompression, ForwardSinkConfig, LoadBalance, ServerAddr, TlsOptions};

use super::SinkContext;
use super::encoding::{Compression, Encoder};
use crate::dead_letter::DeadLetters;
use crate::event::{Batch, HeldAck};
use crate::memory::Charge;
use crate::metrics::ComponentMetrics;
use crate::template::{Renderer, Template};

/// Tag of events when neither `tag` nor the batch gives one.
pub const DEFAULT_TAG: &str = "logferry";

/// A closed chunk: one PackedForward message's event stream and what its
/// delivery settles.
pub struct Chunk {
    tag: String,
    /// The event stream, gzipped when `gzip`.
    body: Vec<u8>,
    events: u64,
    gzip: bool,
    /// The `chunk` option (base64 of 16 unique bytes): set when an ack is
    /// required.
    id: Option<String>,
    acks: Vec<HeldAck>,
    /// `body` against `memory_limit`.
    _charge: Charge,
}

impl Chunk {
    /// The server has the chunk: count it and let its batches move on.
    fn delivered(self, m: &ComponentMetrics) {
        m.sent_events.inc_by(self.events);
        m.sent_bytes.inc_by(self.body.len() as u64);
        for a in self.acks {
            a.release();
        }
    }
}

/// The chunk being filled.
struct Open {
    tag: String,
    body: Encoder<Vec<u8>>,
    /// Uncompressed bytes of the event stream.
    raw: usize,
    events: u64,
    acks: Vec<HeldAck>,
    /// `acks` already holds a clone of the current batch's token.
    tagged: bool,
    charge: Charge,
    /// When its first event arrived.
    since: Option<Instant>,
}

/// The operation was abandoned: the delivery task has stopped.
struct Abandoned;

struct ForwardSink {
    cfg: Arc<ForwardSinkConfig>,
    tag: Option<Renderer>,
    open: Open,
    chunks: mpsc::Sender<Chunk>,
    memory: Arc<tokio::sync::Semaphore>,
    m: ComponentMetrics,
    dead: Arc<DeadLetters>,
    line: Vec<u8>,
    entry: Vec<u8>,
    tag_buf: String,
}

pub async fn run(cfg: ForwardSinkConfig, mut input: mpsc::Receiver<Batch>, cx: SinkContext) {
    let SinkContext {
        id,
        m,
        health,
        stop,
        dead,
        memory,
        ..
    } = cx;
    let cfg = Arc::new(cfg);
    health.set_sink(&id, true);
    // One chunk waits while one is in flight.
    let (tx, rx) = mpsc::channel::<Chunk>(1);
    let sender = conn::Sender {
        id: id.clone(),
        servers: cfg.endpoints(),
        cfg: cfg.clone(),
        m: m.clone(),
        health,
        stop,
    };
    // Aborted with the sink's task (a forced stop), not left behind.
    let delivery = if cfg.load_balance == LoadBalance::RoundRobin {
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(tracing::Instrument::in_current_span(
            conn::run_balanced(sender, rx),
        )))
    } else {
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(tracing::Instrument::in_current_span(sender.run(rx))))
    };
    let mut sink = ForwardSink::new(cfg, tx, memory, m, dead);
    let tick_every = (sink.cfg.flush_interval / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let abandoned = loop {
        let r = tokio::select! {
            b = input.recv() => match b {
                Some(batch) => sink.write_batch(batch).await,
                None => break false,
            },
            _ = tick.tick() => sink.flush_if_due().await,
        };
        if r.is_err() {
            break true;
        }
    };
    if !abandoned {
        let _ = sink.close().await;
    }
    let ForwardSink { chunks, m, .. } = sink;
    drop(chunks);
    let _ = delivery.await;
    tracing::info!(events_sent = m.sent_events.get(), "forward sink finished");
}

/// `logferry check`: connect (TLS and handshake included) and hang up.
pub async fn check(cfg: &ForwardSinkConfig) -> Result<(), String> {
    let tls = if cfg.tls.enabled {
        Some(tls::connector(&cfg.tls)?)
    } else {
        None
    };
    // Every server must answer: a standby that cannot is found now, not
    // at the failover.
    let mut errors = Vec::new();
    for server in cfg.endpoints() {
        if let Err(e) = conn::Conn::open(cfg, &server, tls.as_ref()).await {
            errors.push(e.to_string());
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

impl Open {
    fn new(cfg: &ForwardSinkConfig, memory: &Arc<tokio::sync::Semaphore>) -> Self {
        let c = match cfg.compression {
            ForwardCompression::None => Compression::None,
            ForwardCompression::Gzip => Compression::Gzip,
        };
        let body = Encoder::new(c, None, Vec::new()).expect("creating an encoder over a Vec cannot fail");
        Open {
            tag: String::new(),
            body,
            raw: 0,
            events: 0,
            acks: Vec::new(),
            tagged: false,
            charge: Charge::new(memory.clone()),
            since: None,
        }
    }
}

impl ForwardSink {
    fn new(
        cfg: Arc<ForwardSinkConfig>,
        chunks: mpsc::Sender<Chunk>,
        memory: Arc<tokio::sync::Semaphore>,
        m: ComponentMetrics,
        dead: Arc<DeadLetters>,
    ) -> Self {
        // Validated with the config: a template that does not parse is
        // never here.
        let tag = cfg
            .tag
            .as_deref()
            .and_then(|t| Template::parse(t).ok())
            .map(Renderer::new);
        ForwardSink {
            open: Open::new(&cfg, &memory),
            cfg,
            tag,
            chunks,
            memory,
            m,
            dead,
            line: Vec::with_capacity(4096),
            entry: Vec::with_capacity(4096),
            tag_buf: String::new(),
        }
    }

    async fn write_batch(&mut self, batch: Batch) -> Result<(), Abandoned> {
        let n = batch.len();
        self.m.received_events.inc_by(n as u64);
        if let Some(r) = &mut self.tag {
            r.begin_batch();
        }
        let token = batch.ack.clone().map(|a| HeldAck(Some(a)));
        self.open.tagged = false;
        let mut result = Ok(());
        for i in 0..n {
            self.line.clear();
            batch.encode(i, &mut self.line);
            self.m.received_bytes.inc_by(self.line.len() as u64 + 1);
            match &mut self.tag {
                Some(r) => r.render(&batch, i, &mut self.tag_buf),
                None => {
                    self.tag_buf.clear();
                    self.tag_buf.push_str(batch.tag.as_deref().unwrap_or(DEFAULT_TAG));
                }
            }
            if self.open.events > 0
                && self.open.tag != self.tag_buf
                && let Err(a) = self.close().await
            {
                result = Err(a);
                break;
            }
            self.entry.clear();
            if let Err(e) = proto::write_entry(&mut self.entry, batch.ts_ms(i), &self.line) {
                tracing::debug!(error = %e, "record cannot be encoded for forward");
                self.dead.send("unencodable", [&self.line[..]]);
                continue;
            }
            if self.open.events == 0 {
                self.open.tag.clone_from(&self.tag_buf);
                self.open.since = Some(Instant::now());
            }
            // Writing into a Vec (through gzip) cannot fail.
            let _ = self.open.body.write_all(&self.entry);
            self.open.raw += self.entry.len();
            self.open.events += 1;
            if !self.open.tagged {
                if let Some(HeldAck(Some(t))) = &token {
                    self.open.acks.push(HeldAck(Some(t.clone())));
                }
                self.open.tagged = true;
            }
            let full = self.open.raw >= self.cfg.max_chunk_size.as_u64() as usize;
            // Without room in memory_limit for the chunk to grow, send it now.
            let held = self.open.body.get_ref().len();
            if (full || !self.open.charge.resize(held))
                && let Err(a) = self.close().await
            {
                result = Err(a);
                break;
            }
        }
        match token {
            Some(t) if result.is_ok() => t.release(),
            // Not all of its records were taken: the batch fails.
            _ => {}
        }
        result
    }

    async fn flush_if_due(&mut self) -> Result<(), Abandoned> {
        match self.open.since {
            Some(t) if t.elapsed() >= self.cfg.flush_interval => self.close().await,
            _ => Ok(()),
        }
    }

    /// Closes the open chunk (if it has events) and hands it to delivery;
    /// waits while one chunk is already waiting.
    async fn close(&mut self) -> Result<(), Abandoned> {
        if self.open.events == 0 {
            return Ok(());
        }
        let open = std::mem::replace(&mut self.open, Open::new(&self.cfg, &self.memory));
        let gzip = self.cfg.compression == ForwardCompression::Gzip;
        // Finishing a gzip stream into a Vec cannot fail.
        let body = open.body.finish().unwrap_or_default();
        let mut charge = open.charge;
        // Growing can fail when memory is short; the chunk is sent anyway.
        let _ = charge.resize(body.len());
        let id = self
            .cfg
            .require_ack
            .then(|| base64::engine::general_purpose::STANDARD.encode(uuid::Uuid::now_v7().as_bytes()));
        let chunk = Chunk {
            tag: open.tag,
            body,
            events: open.events,
            gzip,
            id,
            acks: open.acks,
            _charge: charge,
        };
        // When delivery has stopped, the chunk comes back and drops: its acks fail.
        self.chunks.send(chunk).await.map_err(|_| Abandoned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::AckToken;
    use crate::event::{Ack, batch_of};
    use crate::metrics::Metrics;

    fn sink(extra: &str, memory: usize) -> (ForwardSink, mpsc::Receiver<Chunk>) {
        let cfg: ForwardSinkConfig = toml::from_str(&format!("host = \"h\"\n{extra}")).unwrap();
        let m = Metrics::new().component("fw", "forward");
        let dead = Arc::new(DeadLetters::new(None, "fw", m.clone()));
        let (tx, rx) = mpsc::channel(64);
        let sem = Arc::new(tokio::sync::Semaphore::new(memory));
        (ForwardSink::new(Arc::new(cfg), tx, sem, m, dead), rx)
    }

    fn with_ack(mut b: Batch, seq: u64) -> (Batch, std::sync::mpsc::Receiver<Ack>) {
        let (tx, rx) = std::sync::mpsc::channel();
        b.ack = Some(AckToken::new(1, seq, tx));
        (b, rx)
    }

    /// The records of a chunk's event stream, as JSON.
    fn records(c: &Chunk) -> Vec<serde_json::Value> {
        let stream = if c.gzip { proto::gunzip(&c.body) } else { c.body.clone() };
        let mut cur = &stream[..];
        let mut out = Vec::new();
        while !cur.is_empty() {
            let e = rmpv::decode::read_value(&mut cur).unwrap();
            let rec = &e.as_array().unwrap()[1];
            let mut json = Vec::new();
            rmpv::encode::write_value(&mut json, rec).unwrap();
            out.push(rmp_serde::from_slice(&json).unwrap());
        }
        out
    }

    #[tokio::test]
    async fn tags_split_chunks_and_acks_wait_for_delivery() {
        let (mut s, mut rx) = sink("compression = \"gzip\"", usize::MAX >> 4);
        let (mut b1, acks1) = with_ack(batch_of(&[r#"{"a":1}"#, r#"{"a":2}"#]), 1);
        b1.tag = Some(Arc::from("one"));
        let (mut b2, acks2) = with_ack(batch_of(&[r#"{"a":3}"#]), 2);
        b2.tag = Some(Arc::from("two"));
        let (b3, acks3) = with_ack(batch_of(&[r#"{"a":4}"#]), 3);
        s.write_batch(b1).await.ok().unwrap();
        s.write_batch(b2).await.ok().unwrap();
        s.write_batch(b3).await.ok().unwrap();
        s.close().await.ok().unwrap();
        let chunks: Vec<Chunk> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        let tags: Vec<&str> = chunks.iter().map(|c| c.tag.as_str()).collect();
        assert_eq!(tags, ["one", "two", DEFAULT_TAG]);
        assert_eq!(
            records(&chunks[0]),
            vec![serde_json::json!({"a":1}), serde_json::json!({"a":2})]
        );
        assert_eq!(chunks[0].events, 2);
        assert!(chunks.iter().all(|c| c.id.is_some() && c.gzip));
        // Nothing is acknowledged before delivery.
        assert!(acks1.try_recv().is_err() && acks2.try_recv().is_err());
        let mut it = chunks.into_iter();
        it.next().unwrap().delivered(&s.m);
        assert!(acks1.try_recv().unwrap().delivered);
        // A chunk dropped undelivered fails its batch.
        drop(it.next());
        assert!(!acks2.try_recv().unwrap().delivered);
        it.next().unwrap().delivered(&s.m);
        assert!(acks3.try_recv().unwrap().delivered);
        assert_eq!(s.m.sent_events.get(), 3);
    }

    #[tokio::test]
    async fn a_full_memory_limit_sends_chunks_early() {
        // Room for about one record: every chunk closes after one event.
        let (mut s, mut rx) = sink("", 40);
        let (b, acks) = with_ack(batch_of(&[r#"{"msg":"0123456789abcdef"}"#; 5]), 1);
        s.write_batch(b).await.ok().unwrap();
        s.close().await.ok().unwrap();
        let chunks: Vec<Chunk> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(chunks.iter().map(|c| c.events).sum::<u64>(), 5);
        assert!(chunks.len() >= 4, "{} chunks", chunks.len());
        for c in chunks {
            assert!(acks.try_recv().is_err(), "acked before the last chunk");
            c.delivered(&s.m);
        }
        assert!(acks.try_recv().unwrap().delivered);
    }

    #[tokio::test]
    async fn chunks_close_at_max_chunk_size_keeping_order() {
        let (mut s, mut rx) = sink("max_chunk_size = \"1KiB\"\ntag = \"t.{k}\"", usize::MAX >> 4);
        let lines: Vec<String> = (0..100).map(|i| format!(r#"{{"k":"x","i":{i}}}"#)).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        s.write_batch(batch_of(&refs)).await.ok().unwrap();
        s.close().await.ok().unwrap();
        let chunks: Vec<Chunk> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert!(chunks.len() > 1);
        let mut all = Vec::new();
        for c in &chunks {
            assert_eq!(c.tag, "t.x");
            assert!(c.body.len() < 1024 + 64, "{}", c.body.len());
            all.extend(records(c).into_iter().map(|r| r["i"].as_u64().unwrap()));
        }
        assert_eq!(all, (0..100).collect::<Vec<_>>());
    }
}
