//! `type = "http"`: records POSTed (or PUT) to an HTTP endpoint, for the
//! log backends FireLens users ship to (Datadog, Splunk HEC, New Relic,
//! Grafana Loki push, OpenSearch `_bulk`).
//!
//! Why one request in flight: a request is answered before the next is sent,
//! so a failure never leaves a gap behind a later success and what must be
//! sent again is exactly one body. The sink encodes the next body meanwhile
//! (one closed body waits), so the network wait and the encoding overlap;
//! past that the sink takes no input and the sources stop reading.
//!
//! Bodies: records are framed (`framing`) and written into the open body
//! (NDJSON or a JSON array, gzipped as they arrive when `compression =
//! "gzip"`), which closes at `batch.max_bytes` uncompressed bytes,
//! `batch.max_events` records, when its first record is `flush_interval`
//! old, when `memory_limit` has no room for it to grow, and when the input
//! ends. A record that alone is over `batch.max_bytes` can never be sent:
//! it goes to the dead letters (`over_size_limit`). Each body keeps where
//! each record starts, so a rejected body's records go to the dead letters
//! one by one, without the framing.
//!
//! Acknowledgement: a body holds a clone of the `AckToken` of every batch it
//! has records of, released only after a 2xx (or after its records were
//! written to the dead letters on a permanent 4xx). Retries (`client.rs`
//! decides which answers are retried) wait `Retry-After` when the server
//! sent one (capped by `max_retry_after`), else a capped, jittered backoff.
//! A body abandoned at shutdown drops its clones as failed, so no checkpoint
//! passes records the server has not taken.
//!
//! Memory held here (the open body, the waiting one, the one in flight, the
//! record offsets, the gzip state) is charged to `memory_limit`.

mod bulk;
mod client;
mod config;
mod deliver;
mod frame;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

pub use client::{Verdict, retry_after, verdict};
pub use config::{
    BatchOptions, Framing, HttpAuth, HttpCompression, HttpEncoding, HttpMethod, HttpSinkConfig, HttpTls,
    MAX_BATCH_BYTES,
};

use super::SinkContext;
use super::encoding::{Compression, Encoder, MissingKey, RecordFormat};
use crate::dead_letter::DeadLetters;
use crate::event::{Batch, HeldAck};
use crate::memory::Charge;
use crate::metrics::ComponentMetrics;
use crate::template::{Renderer, Template};
use deliver::Sender;
use frame::{Place, closing, frame, unframed};

/// A closed body and what its delivery settles.
pub struct Body {
    /// What goes on the wire (gzipped when `gzip`).
    wire: Bytes,
    gzip: bool,
    framing: Framing,
    /// (start, length) of each record in the uncompressed body.
    spans: Vec<(usize, usize)>,
    acks: Vec<HeldAck>,
    _charge: Charge,
}

impl Body {
    fn events(&self) -> u64 {
        self.spans.len() as u64
    }

    /// The server has the records: count them and let their batches move on.
    fn delivered(self, m: &ComponentMetrics) {
        m.sent_events.inc_by(self.events());
        m.sent_bytes.inc_by(self.wire.len() as u64);
        for a in self.acks {
            a.release();
        }
    }

    /// The body as framed, uncompressed.
    fn plain(&self) -> Bytes {
        if self.gzip {
            let mut out = Vec::new();
            let r = std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&self.wire[..]), &mut out);
            // A body we compressed ourselves always decodes.
            debug_assert!(r.is_ok());
            Bytes::from(out)
        } else {
            self.wire.clone()
        }
    }

    /// The server refused the body for good: its records go to the dead
    /// letters (synced before the acks are released).
    fn rejected(self, reason: &'static str, dead: &DeadLetters) {
        let plain = self.plain();
        let recs: Vec<_> = self
            .spans
            .iter()
            .map(|&(start, len)| unframed(self.framing, plain.get(start..start + len).unwrap_or_default()))
            .collect();
        dead.send(reason, recs.iter().map(|r| &r[..]));
        for a in self.acks {
            a.release();
        }
    }

    /// A bulk answer settled the body record by record (`items[i]` is
    /// record `i`): taken ones are counted, refused ones go to the dead
    /// letters, and those to send again make a new body, which keeps the
    /// acks. `None` when nothing is left to send (the acks are released).
    fn settle(
        self,
        items: &[bulk::Item],
        cfg: &HttpSinkConfig,
        m: &ComponentMetrics,
        dead: &DeadLetters,
    ) -> Option<Body> {
        let plain = self.plain();
        let rec = |&(start, len): &(usize, usize)| plain.get(start..start + len).unwrap_or_default();
        let mut again = Encoder::new(compression(cfg), None, Vec::new()).expect("an encoder over a Vec");
        let (mut spans, mut raw, mut entry) = (Vec::new(), 0usize, Vec::new());
        for (span, item) in self.spans.iter().zip(items) {
            match item {
                bulk::Item::Taken => {
                    m.sent_events.inc();
                    m.sent_bytes.inc_by(span.1 as u64);
                }
                bulk::Item::Reject(s) => dead.send(bulk::reason(*s), [rec(span)]),
                bulk::Item::Retry(_) => {
                    entry.clear();
                    let place = Place {
                        first: spans.is_empty(),
                        labels: b"",
                        same_stream: false,
                    };
                    let at = frame(cfg.framing, cfg.encoding, place, rec(span), 0, &mut entry);
                    // Writing into a Vec (through gzip) cannot fail.
                    let _ = again.write_all(&entry);
                    spans.push((raw + at, span.1));
                    raw += entry.len();
                }
            }
        }
        if spans.is_empty() {
            for a in self.acks {
                a.release();
            }
            return None;
        }
        let _ = again.write_all(closing(cfg));
        let wire = again.finish().unwrap_or_default();
        let mut charge = self._charge;
        let _ = charge.resize(wire.len() + spans.len() * std::mem::size_of::<(usize, usize)>());
        Some(Body {
            wire: Bytes::from(wire),
            gzip: self.gzip,
            framing: self.framing,
            spans,
            acks: self.acks,
            _charge: charge,
        })
    }
}

/// The body being filled.
struct Open {
    body: Encoder<Vec<u8>>,
    /// Uncompressed bytes written.
    raw: usize,
    spans: Vec<(usize, usize)>,
    acks: Vec<HeldAck>,
    /// `acks` already holds a clone of the current batch's token.
    tagged: bool,
    /// Loki: the labels of the last record written (its stream).
    labels: Vec<u8>,
    charge: Charge,
    /// When its first record arrived.
    since: Option<Instant>,
}

/// The delivery task has stopped.
struct Abandoned;

struct HttpSink {
    cfg: Arc<HttpSinkConfig>,
    open: Open,
    bodies: mpsc::Sender<Body>,
    memory: Arc<tokio::sync::Semaphore>,
    m: ComponentMetrics,
    dead: Arc<DeadLetters>,
    line: Vec<u8>,
    entry: Vec<u8>,
    /// Loki: a renderer per label, and the labels of the current record as
    /// a JSON object.
    labels: Vec<(String, Renderer)>,
    label_json: Vec<u8>,
    value: String,
    /// `log_key` / `timestamp_key`, and the records dropped for want of the key.
    format: RecordFormat,
    missing: MissingKey,
}

pub async fn run(cfg: HttpSinkConfig, mut input: mpsc::Receiver<Batch>, cx: SinkContext) {
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
    let sender = match Sender::new(id.clone(), cfg.clone(), m.clone(), health.clone(), stop, dead.clone()) {
        Ok(s) => Some(s),
        Err(e) => {
            // The TLS setup failed (a ca_file that cannot be read, no system
            // roots): nothing can be sent until it is fixed. Records stay
            // unacknowledged (read again after a restart).
            m.sink_error("tls");
            tracing::error!(sink = %id, error = %e, "http sink cannot set up TLS; records are not acknowledged");
            health.set_sink(&id, false);
            None
        }
    };
    let Some(sender) = sender else {
        while let Some(b) = input.recv().await {
            b.fail();
        }
        return;
    };
    // One body waits while one is in flight.
    let (tx, rx) = mpsc::channel::<Body>(1);
    let delivery =
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(tracing::Instrument::in_current_span(sender.run(rx))));
    let mut sink = HttpSink::new(cfg, tx, memory, m, dead);
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
    let HttpSink { bodies, m, .. } = sink;
    drop(bodies);
    let _ = delivery.await;
    tracing::info!(events_sent = m.sent_events.get(), "http sink finished");
}

/// `logferry check`: with `healthcheck_uri`, a GET that must answer 2xx;
/// without, a HEAD of `uri` (with the configured headers and auth) that must
/// connect and not be refused for credentials (401, 403, 407) or fail on
/// the server (5xx). Any other answer (405 for a HEAD is common on intake
/// APIs) proves the endpoint is reachable over TLS with the given trust.
pub async fn check(cfg: &HttpSinkConfig) -> Result<String, String> {
    let c = client::build(cfg)?;
    let p = client::Prepared::new(cfg)?;
    let (method, uri) = match &cfg.healthcheck_uri {
        Some(u) => (hyper::Method::GET, u.parse::<hyper::Uri>().map_err(|e| e.to_string())?),
        None => (hyper::Method::HEAD, p.uri.clone()),
    };
    let shown = client::redact_uri(&uri.to_string());
    let a = client::send(
        &c,
        &p,
        method.clone(),
        &uri,
        Bytes::new(),
        cfg.request_timeout,
        client::MAX_ANSWER,
    )
    .await
    .map_err(|e| e.to_string())?;
    let s = a.status.as_u16();
    let ok = match (&cfg.healthcheck_uri, verdict(s)) {
        (Some(_), v) => v == Verdict::Delivered,
        (None, _) => !matches!(s, 401 | 403 | 407 | 500..=599),
    };
    let said = format!("{method} {shown} answered {}", a.status);
    if ok {
        Ok(said)
    } else if matches!(s, 401 | 403 | 407) {
        Err(format!("{said}: credentials refused (check `auth` and `headers`)"))
    } else {
        Err(said)
    }
}

/// `uri` as logs and reports show it (no user info, no query).
pub fn shown_uri(cfg: &HttpSinkConfig) -> String {
    client::redact_uri(&cfg.uri)
}

impl Open {
    fn new(cfg: &HttpSinkConfig, memory: &Arc<tokio::sync::Semaphore>) -> Self {
        let body =
            Encoder::new(compression(cfg), None, Vec::new()).expect("creating an encoder over a Vec cannot fail");
        Open {
            body,
            raw: 0,
            spans: Vec::new(),
            acks: Vec::new(),
            tagged: false,
            labels: Vec::new(),
            charge: Charge::new(memory.clone()),
            since: None,
        }
    }

    /// What the open body holds in memory: output, offsets, gzip state.
    fn held(&self, cfg: &HttpSinkConfig) -> usize {
        self.body.get_ref().len()
            + self.spans.len() * std::mem::size_of::<(usize, usize)>()
            + compression(cfg).stream_state(None, self.raw as u64)
    }
}

fn compression(cfg: &HttpSinkConfig) -> Compression {
    match cfg.compression {
        HttpCompression::None => Compression::None,
        HttpCompression::Gzip => Compression::Gzip,
    }
}

impl HttpSink {
    fn new(
        cfg: Arc<HttpSinkConfig>,
        bodies: mpsc::Sender<Body>,
        memory: Arc<tokio::sync::Semaphore>,
        m: ComponentMetrics,
        dead: Arc<DeadLetters>,
    ) -> Self {
        HttpSink {
            open: Open::new(&cfg, &memory),
            labels: cfg
                .labels
                .iter()
                .filter_map(|(k, t)| Some((k.clone(), Renderer::new(Template::parse(t).ok()?))))
                .collect(),
            format: cfg.record_format(),
            cfg,
            bodies,
            memory,
            m,
            dead,
            line: Vec::with_capacity(4096),
            entry: Vec::with_capacity(4096),
            label_json: Vec::new(),
            value: String::new(),
            missing: MissingKey::default(),
        }
    }

    /// Loki: renders record `i`'s labels into `label_json`.
    fn render_labels(&mut self, batch: &Batch, i: usize) {
        self.label_json.clear();
        self.label_json.push(b'{');
        for (k, (name, r)) in self.labels.iter_mut().enumerate() {
            if k > 0 {
                self.label_json.push(b',');
            }
            let _ = serde_json::to_writer(&mut self.label_json, name);
            self.label_json.push(b':');
            r.render(batch, i, &mut self.value);
            let _ = serde_json::to_writer(&mut self.label_json, &self.value);
        }
        self.label_json.push(b'}');
    }

    /// Bytes a body needs besides its records: the closing `]` (or `]}]}`).
    fn closing(&self) -> usize {
        closing(&self.cfg).len()
    }

    /// Frames record `line` into `entry` as it goes into the open body (or
    /// as the first of a new one); returns where the record starts.
    fn frame_entry(&mut self, ts: i64, as_first: bool) -> usize {
        self.entry.clear();
        let first = as_first || self.open.spans.is_empty();
        let place = Place {
            first,
            labels: &self.label_json,
            same_stream: !first && self.open.labels == self.label_json,
        };
        frame(
            self.cfg.framing,
            self.cfg.encoding,
            place,
            &self.line,
            ts,
            &mut self.entry,
        )
    }

    async fn write_batch(&mut self, batch: Batch) -> Result<(), Abandoned> {
        let n = batch.len();
        self.m.received_events.inc_by(n as u64);
        let token = batch.ack.clone().map(|a| HeldAck(Some(a)));
        self.open.tagged = false;
        let max = self.cfg.batch.max_bytes.as_u64() as usize;
        let loki = self.cfg.framing == Framing::Loki;
        for (_, r) in &mut self.labels {
            r.begin_batch();
        }
        let mut result = Ok(());
        for i in 0..n {
            self.line.clear();
            if !self.format.encode(&batch, i, &mut self.line) {
                self.missing.record();
                continue;
            }
            self.m.received_bytes.inc_by(self.line.len() as u64 + 1);
            let ts = batch.ts_ms(i);
            if loki {
                self.render_labels(&batch, i);
            }
            // As the first record of a body: the longest it can be framed.
            self.frame_entry(ts, true);
            if self.entry.len() + self.closing() > max {
                tracing::debug!(bytes = self.line.len(), "record over batch.max_bytes");
                self.dead.send("over_size_limit", [&self.line[..]]);
                continue;
            }
            let mut at = self.frame_entry(ts, false);
            if !self.open.spans.is_empty() && self.open.raw + self.entry.len() + self.closing() > max {
                if let Err(a) = self.close().await {
                    result = Err(a);
                    break;
                }
                at = self.frame_entry(ts, true);
            }
            let first = self.open.spans.is_empty();
            // Loki holds the record as a JSON string: the span covers that.
            let len = if loki {
                self.entry.len() - 1 - at
            } else {
                self.line.len()
            };
            if first {
                self.open.since = Some(Instant::now());
            }
            // Writing into a Vec (through gzip) cannot fail.
            let _ = self.open.body.write_all(&self.entry);
            self.open.spans.push((self.open.raw + at, len));
            self.open.raw += self.entry.len();
            if loki && !self.open.labels.eq(&self.label_json) {
                self.open.labels.clear();
                self.open.labels.extend_from_slice(&self.label_json);
            }
            if !self.open.tagged {
                if let Some(HeldAck(Some(t))) = &token {
                    self.open.acks.push(HeldAck(Some(t.clone())));
                }
                self.open.tagged = true;
            }
            let full = self.open.spans.len() >= self.cfg.batch.max_events;
            // Without room in memory_limit for the body to grow, send it now.
            let held = self.open.held(&self.cfg);
            if (full || !self.open.charge.resize(held))
                && let Err(a) = self.close().await
            {
                result = Err(a);
                break;
            }
        }
        self.missing.flush(&self.m, &self.format);
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

    /// Closes the open body (if it has records) and hands it to delivery;
    /// waits while one body is already waiting.
    async fn close(&mut self) -> Result<(), Abandoned> {
        if self.open.spans.is_empty() {
            return Ok(());
        }
        let mut open = std::mem::replace(&mut self.open, Open::new(&self.cfg, &self.memory));
        let _ = open.body.write_all(closing(&self.cfg));
        // Finishing a gzip stream into a Vec cannot fail.
        let wire = open.body.finish().unwrap_or_default();
        let mut charge = open.charge;
        // Growing can fail when memory is short; the body is sent anyway.
        let _ = charge.resize(wire.len() + open.spans.len() * std::mem::size_of::<(usize, usize)>());
        let body = Body {
            wire: Bytes::from(wire),
            gzip: self.cfg.compression == HttpCompression::Gzip,
            framing: self.cfg.framing,
            spans: open.spans,
            acks: open.acks,
            _charge: charge,
        };
        // When delivery has stopped, the body comes back and drops: its acks fail.
        self.bodies.send(body).await.map_err(|_| Abandoned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Ack, AckToken, batch_of};
    use crate::metrics::Metrics;

    fn sink(extra: &str, memory: usize) -> (HttpSink, mpsc::Receiver<Body>) {
        let cfg: HttpSinkConfig = toml::from_str(&format!("uri = \"http://h/\"\n{extra}")).unwrap();
        let m = Metrics::new().component("h", "http");
        let dead = Arc::new(DeadLetters::new(None, "h", m.clone()));
        let (tx, rx) = mpsc::channel(1024);
        let sem = Arc::new(tokio::sync::Semaphore::new(memory));
        (HttpSink::new(Arc::new(cfg), tx, sem, m, dead), rx)
    }

    fn with_ack(mut b: Batch, seq: u64) -> (Batch, std::sync::mpsc::Receiver<Ack>) {
        let (tx, rx) = std::sync::mpsc::channel();
        b.ack = Some(AckToken::new(1, seq, tx));
        (b, rx)
    }

    fn plain(b: &Body) -> Vec<u8> {
        if b.gzip {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&b.wire[..]), &mut out).unwrap();
            out
        } else {
            b.wire.to_vec()
        }
    }

    /// The records of a body, through its spans.
    fn records(b: &Body) -> Vec<serde_json::Value> {
        let p = plain(b);
        b.spans
            .iter()
            .map(|&(s, l)| serde_json::from_slice(&unframed(b.framing, &p[s..s + l])).unwrap())
            .collect()
    }

    /// A Loki push body as Loki reads it: (labels, ns, record) per value;
    /// checks that neighbouring streams differ.
    fn loki(p: &[u8]) -> Vec<(serde_json::Value, u128, serde_json::Value)> {
        let v: serde_json::Value = serde_json::from_slice(p).expect("a Loki push body is one JSON object");
        let streams = v["streams"].as_array().expect("streams");
        assert!(!streams.is_empty());
        for w in streams.windows(2) {
            assert_ne!(
                w[0]["stream"], w[1]["stream"],
                "neighbouring records of one stream share it"
            );
        }
        let mut out = Vec::new();
        for st in streams {
            assert!(st["stream"].is_object());
            for val in st["values"].as_array().expect("values") {
                let pair = val.as_array().unwrap();
                assert_eq!(pair.len(), 2);
                let ns: u128 = pair[0].as_str().expect("ns as a string").parse().unwrap();
                let rec = serde_json::from_str(pair[1].as_str().expect("the line is a string")).unwrap();
                out.push((st["stream"].clone(), ns, rec));
            }
        }
        out
    }

    fn drain(rx: &mut mpsc::Receiver<Body>) -> Vec<Body> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    fn lines(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!(r#"{{"i":{i},"msg":"{}"}}"#, "x".repeat(i % 37)))
            .collect()
    }

    #[tokio::test]
    async fn every_encoding_and_framing_decodes_to_the_records() {
        let src = lines(80);
        let refs: Vec<&str> = src.iter().map(String::as_str).collect();
        let want: Vec<serde_json::Value> = src.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        for (opts, parse) in [
            ("", "ndjson"),
            ("compression = \"gzip\"", "ndjson"),
            ("encoding = \"json_array\"", "array"),
            ("encoding = \"json_array\"\ncompression = \"gzip\"", "array"),
            ("framing = \"splunk_hec\"", "hec"),
            ("framing = \"opensearch_bulk\"\ncompression = \"gzip\"", "bulk"),
            ("framing = \"loki\"\nlabels = { job = \"t\", n = \"{msg}\" }", "loki"),
            (
                "framing = \"loki\"\nlabels = { job = \"t\" }\ncompression = \"gzip\"",
                "loki",
            ),
        ] {
            let (mut s, mut rx) = sink(&format!("{opts}\nbatch = {{ max_bytes = \"1KiB\" }}"), usize::MAX >> 4);
            s.write_batch(batch_of(&refs)).await.ok().unwrap();
            s.close().await.ok().unwrap();
            let bodies = drain(&mut rx);
            assert!(bodies.len() > 1, "{opts}: 1 KiB bodies");
            let mut got = Vec::new();
            for b in &bodies {
                let p = plain(b);
                assert!(p.len() <= 1024, "{opts}: {} bytes", p.len());
                // The body as the server parses it.
                let from_wire: Vec<serde_json::Value> = match parse {
                    "ndjson" => p
                        .split(|c| *c == b'\n')
                        .filter(|l| !l.is_empty())
                        .map(|l| serde_json::from_slice(l).unwrap())
                        .collect(),
                    "array" => serde_json::from_slice(&p).unwrap(),
                    "loki" => loki(&p)
                        .into_iter()
                        .map(|(labels, ns, rec)| {
                            assert_eq!(labels["job"], "t");
                            if opts.contains("{msg}") {
                                let m = rec["msg"].as_str().unwrap();
                                assert_eq!(labels["n"], if m.is_empty() { "_" } else { m }, "{rec}");
                            }
                            assert_eq!(ns % 1_000_000, 0, "ns from the ms time");
                            rec
                        })
                        .collect(),
                    "hec" => serde_json::Deserializer::from_slice(&p)
                        .into_iter::<serde_json::Value>()
                        .map(|v| {
                            let v = v.unwrap();
                            assert!(v["time"].is_number(), "{v}");
                            v["event"].clone()
                        })
                        .collect(),
                    _ => {
                        let ls: Vec<&[u8]> = p.split(|c| *c == b'\n').filter(|l| !l.is_empty()).collect();
                        assert_eq!(ls.len() % 2, 0);
                        ls.chunks(2)
                            .map(|pair| {
                                assert_eq!(pair[0], b"{\"index\":{}}");
                                serde_json::from_slice(pair[1]).unwrap()
                            })
                            .collect()
                    }
                };
                assert_eq!(from_wire, records(b), "{opts}: spans point at the records");
                got.extend(from_wire);
            }
            assert_eq!(got, want, "{opts}");
        }
    }

    #[tokio::test]
    async fn max_events_oversize_records_and_acks_wait_for_delivery() {
        let (mut s, mut rx) = sink("batch = { max_events = 3, max_bytes = \"1KiB\" }", usize::MAX >> 4);
        let big = format!(r#"{{"big":"{}"}}"#, "y".repeat(2000));
        let (b1, acks1) = with_ack(batch_of(&[r#"{"a":1}"#, &big, r#"{"a":2}"#, r#"{"a":3}"#]), 1);
        let (b2, acks2) = with_ack(batch_of(&[r#"{"a":4}"#]), 2);
        s.write_batch(b1).await.ok().unwrap();
        s.write_batch(b2).await.ok().unwrap();
        s.close().await.ok().unwrap();
        let bodies = drain(&mut rx);
        let got: Vec<Vec<serde_json::Value>> = bodies.iter().map(records).collect();
        assert_eq!(
            got,
            vec![
                vec![
                    serde_json::json!({"a":1}),
                    serde_json::json!({"a":2}),
                    serde_json::json!({"a":3})
                ],
                vec![serde_json::json!({"a":4})]
            ]
        );
        assert_eq!(s.m.discarded_total.get(), 1, "the oversize record is counted");
        assert!(
            acks1.try_recv().is_err() && acks2.try_recv().is_err(),
            "nothing acked before delivery"
        );
        let mut it = bodies.into_iter();
        it.next().unwrap().delivered(&s.m);
        assert!(acks1.try_recv().unwrap().delivered);
        // A body dropped undelivered fails its batch.
        drop(it.next());
        assert!(!acks2.try_recv().unwrap().delivered);
    }

    #[tokio::test]
    async fn a_full_memory_limit_sends_bodies_early() {
        let (mut s, mut rx) = sink("", 40);
        let (b, acks) = with_ack(batch_of(&[r#"{"msg":"0123456789abcdef"}"#; 5]), 1);
        s.write_batch(b).await.ok().unwrap();
        s.close().await.ok().unwrap();
        let bodies = drain(&mut rx);
        assert_eq!(bodies.iter().map(Body::events).sum::<u64>(), 5);
        assert!(bodies.len() >= 4, "{} bodies", bodies.len());
        for b in bodies {
            assert!(acks.try_recv().is_err(), "acked before the last body");
            b.delivered(&s.m);
        }
        assert!(acks.try_recv().unwrap().delivered);
    }

    #[tokio::test]
    async fn a_rejected_body_goes_to_the_dead_letters_record_by_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, mut rx) = sink("encoding = \"json_array\"\ncompression = \"gzip\"", usize::MAX >> 4);
        let dead = DeadLetters::new(Some(dir.path()), "h", s.m.clone());
        let (b, acks) = with_ack(batch_of(&[r#"{"a":1}"#, r#"{"b":[1,2]}"#]), 1);
        s.write_batch(b).await.ok().unwrap();
        s.close().await.ok().unwrap();
        let body = drain(&mut rx).pop().unwrap();
        body.rejected("http_400", &dead);
        assert!(
            acks.try_recv().unwrap().delivered,
            "handled: the checkpoint may pass it"
        );
        let mut recs = Vec::new();
        for f in std::fs::read_dir(dir.path().join("h")).unwrap() {
            for l in std::fs::read_to_string(f.unwrap().path()).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert_eq!(v["reason"], "http_400");
                recs.push(v["record"].clone());
            }
        }
        assert_eq!(recs, vec![serde_json::json!({"a":1}), serde_json::json!({"b":[1,2]})]);
    }

    #[tokio::test]
    async fn a_bulk_answer_settles_record_by_record_and_keeps_the_acks_until_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, mut rx) = sink("framing = \"opensearch_bulk\"\ncompression = \"gzip\"", usize::MAX >> 4);
        let dead = DeadLetters::new(Some(dir.path()), "h", s.m.clone());
        let recs: Vec<String> = (0..6).map(|i| format!(r#"{{"i":{i}}}"#)).collect();
        let refs: Vec<&str> = recs.iter().map(String::as_str).collect();
        let (b, acks) = with_ack(batch_of(&refs), 1);
        s.write_batch(b).await.ok().unwrap();
        s.close().await.ok().unwrap();
        let body = drain(&mut rx).pop().unwrap();
        use bulk::Item::*;
        let items = [Taken, Retry(429), Reject(400), Retry(503), Taken, Reject(409)];
        let rest = body.settle(&items, &s.cfg, &s.m, &dead).expect("two to send again");
        assert_eq!(s.m.sent_events.get(), 2);
        assert!(
            acks.try_recv().is_err(),
            "not acked while records wait to be sent again"
        );
        // The new body is a well-formed bulk body of exactly those records.
        let p = plain(&rest);
        let ls: Vec<&[u8]> = p.split(|c| *c == b'\n').filter(|l| !l.is_empty()).collect();
        assert_eq!(
            ls,
            [&b"{\"index\":{}}"[..], br#"{"i":1}"#, b"{\"index\":{}}", br#"{"i":3}"#]
        );
        assert_eq!(
            records(&rest),
            vec![serde_json::json!({"i":1}), serde_json::json!({"i":3})]
        );
        // Second answer: one taken, one refused for good.
        assert!(rest.settle(&[Taken, Reject(400)], &s.cfg, &s.m, &dead).is_none());
        assert!(
            acks.try_recv().unwrap().delivered,
            "settled: the checkpoint may pass it"
        );
        assert_eq!(s.m.sent_events.get(), 3);
        let mut got = Vec::new();
        for f in std::fs::read_dir(dir.path().join("h")).unwrap() {
            for l in std::fs::read_to_string(f.unwrap().path()).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                got.push((
                    v["reason"].as_str().unwrap().to_string(),
                    v["record"]["i"].as_u64().unwrap(),
                ));
            }
        }
        got.sort();
        assert_eq!(
            got,
            [
                ("bulk_400".to_string(), 2),
                ("bulk_400".to_string(), 3),
                ("bulk_409".to_string(), 5)
            ]
        );
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]
            /// Whatever the record sizes, limits and options: every record
            /// is in exactly one body, in order, and no body's uncompressed
            /// bytes or record count pass the limits.
            #[test]
            fn bodies_respect_limits_and_keep_every_record(
                sizes in proptest::collection::vec(0usize..1500, 1..60),
                max_bytes in 1024usize..4096,
                max_events in 1usize..20,
                enc in 0u8..5,
            ) {
                let opts = match enc {
                    0 => "",
                    1 => "encoding = \"json_array\"\ncompression = \"gzip\"",
                    2 => "framing = \"splunk_hec\"",
                    3 => "framing = \"opensearch_bulk\"",
                    _ => "framing = \"loki\"\nlabels = { g = \"{g}\" }\ncompression = \"gzip\"",
                };
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let src: Vec<String> = sizes.iter().enumerate()
                    .map(|(i, n)| format!(r#"{{"i":{i},"g":{},"p":"{}"}}"#, i / 4 % 3, "z".repeat(*n)))
                    .collect();
                let refs: Vec<&str> = src.iter().map(String::as_str).collect();
                let (bodies, dropped) = rt.block_on(async {
                    let (mut s, mut rx) = sink(
                        &format!("{opts}\nbatch = {{ max_bytes = {max_bytes}, max_events = {max_events} }}"),
                        usize::MAX >> 4,
                    );
                    s.write_batch(batch_of(&refs)).await.ok().unwrap();
                    s.close().await.ok().unwrap();
                    (drain(&mut rx), s.m.discarded_total.get())
                });
                let mut seen = Vec::new();
                for b in &bodies {
                    prop_assert!(plain(b).len() <= max_bytes);
                    prop_assert!(b.spans.len() <= max_events && !b.spans.is_empty());
                    if enc == 4 {
                        let from_wire: Vec<_> = loki(&plain(b)).into_iter().map(|(l, _, r)| {
                            assert_eq!(l["g"], r["g"].to_string());
                            r
                        }).collect();
                        prop_assert_eq!(&from_wire, &records(b));
                    }
                    seen.extend(records(b).into_iter().map(|r| r["i"].as_u64().unwrap()));
                }
                prop_assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order, once");
                prop_assert_eq!(seen.len() as u64 + dropped, src.len() as u64);
            }
        }
    }
}
