//! `type = "kinesis_streams"`: log records into an Amazon Kinesis data
//! stream with `PutRecords`.
//!
//! Each log record (encoded JSON and `\n`, as Fluent Bit's
//! `kinesis_streams` writes it) is one Kinesis record, or, with
//! `aggregation = true`, part of a KPL aggregated record (`aggregate.rs`).
//! The partition key comes from the `partition_key` template per log record;
//! unset, or when a record lacks one of the template's fields, it is a
//! random 16-hex-digit key, so records spread over the shards instead of
//! piling onto one (Fluent Bit does the same).
//!
//! Limits (the PutRecords API reference): a record holds at most 1 MiB of
//! data and partition key together, a call at most 500 records and 5 MiB.
//! A log record that cannot fit a Kinesis record alone goes to the dead
//! letters (`over_size_limit`). Records queue until they fill a call or the
//! oldest waiting log record is `flush_interval` old.
//!
//! Acknowledgement, retries and the data-keeping rules are Firehose's (see
//! `firehose/mod.rs`) and shared with it in `records.rs`: each Kinesis
//! record holds an ack clone of every batch it has log records of, only
//! the records a call rejected (`ProvisionedThroughputExceededException`,
//! `InternalFailure`) are sent again, with capped jittered backoff, and a
//! record rejected past `max_record_retries` goes to the dead letters
//! (`retries_exhausted`). Whole-call failures (throttling with
//! `LimitExceededException`, network, no such stream) are retried until
//! the sink is told to stop.

mod aggregate;
mod config;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use aggregate::deaggregate;
pub use config::KinesisSinkConfig;

use super::SinkContext;
use super::aws::{self, Abandoned};
use super::encoding::{MissingKey, RecordFormat};
use super::records::{self, Answer, CallLimits, Caller, Settled};
use crate::api::Health;
use crate::dead_letter::DeadLetters;
use crate::event::{Batch, HeldAck};
use crate::memory::Charge;
use crate::metrics::ComponentMetrics;
use crate::template::{Renderer, Template};
use aggregate::Aggregate;

/// PutRecords limits: records per call, bytes per call (data and partition
/// keys), bytes per record (data and partition key).
pub const MAX_CALL_RECORDS: usize = 500;
pub const MAX_CALL_BYTES: usize = 5 * 1024 * 1024;
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// A partition key is 1 to 256 Unicode characters.
pub const MAX_KEY_CHARS: usize = 256;

const LIMITS: CallLimits = CallLimits {
    records: MAX_CALL_RECORDS,
    bytes: MAX_CALL_BYTES,
};

/// One Kinesis record: its key and data, how many log records it holds,
/// and the tags (ack clones) of the batches they came from, one per batch.
#[derive(Debug)]
struct KRec<T> {
    key: String,
    data: Vec<u8>,
    lines: u64,
    tags: Vec<T>,
}

impl<T> KRec<T> {
    /// Size as PutRecords counts it.
    fn size(&self) -> usize {
        self.key.len() + self.data.len()
    }
}

/// What [`Builder::push`] did with a log record.
#[derive(Debug)]
enum Pushed<T> {
    /// Added to the open aggregate.
    Added,
    /// A Kinesis record is ready (the log record itself, or the aggregate
    /// it did not fit in; then it starts the next).
    Closed(KRec<T>),
    /// Larger than a Kinesis record may be: not taken.
    Oversize,
}

/// Turns log records into Kinesis records, in order. No I/O; the tag type
/// is generic so tests can follow batches.
#[derive(Debug)]
struct Builder<T> {
    /// `None`: one Kinesis record per log record.
    open: Option<Aggregate>,
    open_tags: Vec<T>,
    /// Tag of the batch being built.
    tag: Option<T>,
    /// `open` already holds a clone of `tag`.
    tagged: bool,
}

impl<T: Clone> Builder<T> {
    fn new(aggregation: bool) -> Self {
        Builder {
            open: aggregation.then(Aggregate::default),
            open_tags: Vec::new(),
            tag: None,
            tagged: false,
        }
    }

    fn begin(&mut self, tag: Option<T>) {
        self.tag = tag;
        self.tagged = false;
    }

    fn end(&mut self) -> Option<T> {
        self.tagged = false;
        self.tag.take()
    }

    fn push(&mut self, key: &str, line: &[u8]) -> Pushed<T> {
        let Some(open) = &mut self.open else {
            if key.len() + line.len() > MAX_RECORD_BYTES {
                return Pushed::Oversize;
            }
            return Pushed::Closed(KRec {
                key: key.to_string(),
                data: line.to_vec(),
                lines: 1,
                tags: self.tag.iter().cloned().collect(),
            });
        };
        if Aggregate::default().size_with(key, line) > MAX_RECORD_BYTES {
            return Pushed::Oversize;
        }
        let full = !open.is_empty() && open.size_with(key, line) > MAX_RECORD_BYTES;
        let closed = if full { self.take_open() } else { None };
        if let Some(open) = &mut self.open {
            open.push(key, line);
        }
        if !self.tagged {
            if let Some(t) = &self.tag {
                self.open_tags.push(t.clone());
            }
            self.tagged = true;
        }
        match closed {
            Some(r) => Pushed::Closed(r),
            None => Pushed::Added,
        }
    }

    /// Closes the open aggregate, if it has anything.
    fn take_open(&mut self) -> Option<KRec<T>> {
        let open = self.open.as_mut().filter(|a| !a.is_empty())?;
        let lines = open.len() as u64;
        let (key, data) = open.finish();
        self.tagged = false;
        Some(KRec {
            key,
            data,
            lines,
            tags: std::mem::take(&mut self.open_tags),
        })
    }

    /// Bytes held in the open aggregate.
    fn open_size(&self) -> usize {
        self.open.as_ref().map_or(0, Aggregate::size)
    }
}

/// Renders partition keys: the template's, else a random one.
struct Keys {
    renderer: Option<Renderer>,
}

impl Keys {
    fn render(&mut self, batch: &Batch, i: usize, out: &mut String) {
        out.clear();
        if let Some(r) = &mut self.renderer {
            let missing = std::cell::Cell::new(false);
            r.render_with(
                batch.ts_ms(i),
                |path| {
                    let v = batch.lookup(i, path).map(|v| v.into_owned());
                    missing.set(missing.get() || v.is_none());
                    v
                },
                out,
            );
            if !missing.get() && !out.is_empty() {
                if let Some((cut, _)) = out.char_indices().nth(MAX_KEY_CHARS) {
                    out.truncate(cut);
                }
                return;
            }
            out.clear();
        }
        use std::fmt::Write as _;
        let _ = write!(out, "{:016x}", fastrand::u64(..));
    }
}

struct KinesisSink {
    id: String,
    cfg: KinesisSinkConfig,
    client: aws_sdk_kinesis::Client,
    builder: Builder<HeldAck>,
    keys: Keys,
    /// Closed records waiting for a call, and their bytes.
    queue: VecDeque<KRec<HeldAck>>,
    queued_bytes: usize,
    /// When the oldest log record not yet sent arrived.
    oldest: Option<Instant>,
    m: ComponentMetrics,
    records_sent: Counter,
    health: Arc<Health>,
    stop: CancellationToken,
    line: Vec<u8>,
    /// `log_key` / `timestamp_key`, and the records dropped for want of the key.
    format: RecordFormat,
    missing: MissingKey,
    key: String,
    failing: bool,
    dead: Arc<DeadLetters>,
    /// Queued and aggregated bytes, against `memory_limit`.
    charge: Charge,
}

pub async fn run(cfg: KinesisSinkConfig, input: mpsc::Receiver<Batch>, cx: SinkContext) {
    let sdk = aws::sdk_config(cfg.region.as_deref(), cfg.endpoint_url.as_deref()).await;
    if sdk.region().is_none() {
        tracing::warn!("no AWS region configured (sink `region`, AWS_REGION, profile or instance metadata)");
    }
    let client = aws_sdk_kinesis::Client::new(&sdk);
    run_with_client(cfg, client, input, cx).await;
}

/// [`run`] with a ready client (tests point it at a local server).
async fn run_with_client(
    cfg: KinesisSinkConfig,
    client: aws_sdk_kinesis::Client,
    mut input: mpsc::Receiver<Batch>,
    cx: SinkContext,
) {
    let SinkContext {
        id,
        m,
        health,
        stop,
        dead,
        memory,
        ..
    } = cx;
    let tick_every = (cfg.flush_interval / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    // Validated: a template that parses, or none.
    let renderer = cfg
        .partition_key
        .as_deref()
        .and_then(|k| Template::parse(k).ok())
        .map(Renderer::new);
    let mut sink = KinesisSink {
        client,
        builder: Builder::new(cfg.aggregation),
        keys: Keys { renderer },
        queue: VecDeque::new(),
        queued_bytes: 0,
        oldest: None,
        records_sent: m.kinesis_records_sent(),
        m,
        health,
        stop,
        line: Vec::with_capacity(4096),
        format: cfg.record_format(),
        missing: MissingKey::default(),
        key: String::with_capacity(64),
        failing: false,
        dead,
        charge: Charge::new(memory),
        id,
        cfg,
    };
    sink.health.set_sink(&sink.id, true);
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
        // Without room in memory_limit for what waits here, send it now.
        let r = match r {
            Ok(()) if !sink.charge.resize(sink.queued_bytes + sink.builder.open_size()) => sink.flush_all().await,
            r => r,
        };
        if r.is_err() {
            break true;
        }
    };
    // Abandoned: the records still held drop as failed (see `HeldAck`).
    if !abandoned {
        let _ = sink.flush_all().await;
    }
    tracing::info!(
        records_sent = sink.records_sent.get(),
        events_sent = sink.m.sent_events.get(),
        "kinesis sink finished"
    );
}

impl KinesisSink {
    /// Turns a batch into records; sends every call that became full.
    async fn write_batch(&mut self, batch: Batch) -> Result<(), Abandoned> {
        let n = batch.len();
        self.m.received_events.inc_by(n as u64);
        self.builder.begin(batch.ack.clone().map(|a| HeldAck(Some(a))));
        let mut result = Ok(());
        for i in 0..n {
            self.line.clear();
            if !self.format.encode(&batch, i, &mut self.line) {
                self.missing.record();
                continue;
            }
            self.line.push(b'\n');
            self.m.received_bytes.inc_by(self.line.len() as u64);
            self.keys.render(&batch, i, &mut self.key);
            match self.builder.push(&self.key, &self.line) {
                Pushed::Oversize => {
                    self.dead.send("over_size_limit", [&self.line[..]]);
                    continue;
                }
                Pushed::Added => {}
                Pushed::Closed(rec) => {
                    self.queued_bytes += rec.size();
                    self.queue.push_back(rec);
                    if let Err(a) = self.send_ready().await {
                        result = Err(a);
                        break;
                    }
                }
            }
            self.oldest.get_or_insert_with(Instant::now);
        }
        self.missing.flush(&self.m, &self.format);
        if let Some(tag) = self.builder.end() {
            tag.release();
        }
        if result.is_err() {
            // Not all of its records were taken.
            batch.fail();
        }
        result
    }

    /// Sends full calls while the queue has them.
    async fn send_ready(&mut self) -> Result<(), Abandoned> {
        while records::call_ready(self.queue.len(), self.queued_bytes, MAX_RECORD_BYTES, LIMITS) {
            self.send_next().await?;
        }
        Ok(())
    }

    async fn flush_if_due(&mut self) -> Result<(), Abandoned> {
        match self.oldest {
            Some(t) if t.elapsed() >= self.cfg.flush_interval => self.flush_all().await,
            _ => Ok(()),
        }
    }

    /// Closes the open aggregate and sends everything.
    async fn flush_all(&mut self) -> Result<(), Abandoned> {
        if let Some(rec) = self.builder.take_open() {
            self.queued_bytes += rec.size();
            self.queue.push_back(rec);
        }
        while !self.queue.is_empty() {
            self.send_next().await?;
        }
        self.oldest = None;
        Ok(())
    }

    async fn send_next(&mut self) -> Result<(), Abandoned> {
        let n = records::next_call(self.queue.iter().map(KRec::size), LIMITS);
        let recs: Vec<KRec<HeldAck>> = self.queue.drain(..n).collect();
        self.queued_bytes -= recs.iter().map(KRec::size).sum::<usize>();
        self.put(recs).await
    }

    /// One PutRecords call, until every record is accepted or exhausted.
    async fn put(&mut self, recs: Vec<KRec<HeldAck>>) -> Result<(), Abandoned> {
        let mut held = Vec::with_capacity(recs.len());
        let mut entries = Vec::with_capacity(recs.len());
        for r in recs {
            let bytes = r.data.len();
            // Both required fields are set: building cannot fail. Should it,
            // the record is dropped here and its acks fail.
            match PutRecordsRequestEntry::builder()
                .data(Blob::new(r.data))
                .partition_key(r.key)
                .build()
            {
                Ok(e) => {
                    entries.push(e);
                    held.push((r.lines, bytes, r.tags));
                }
                Err(e) => tracing::error!(error = %e, "cannot build a Kinesis record"),
            }
        }
        let (client, stream) = (self.client.clone(), self.cfg.stream.clone());
        let send = |entries: Vec<PutRecordsRequestEntry>| {
            let call = client.put_records().stream_name(&stream).set_records(Some(entries));
            async move {
                call.send().await.map(|out| Answer {
                    failed_count: out.failed_record_count().unwrap_or(0),
                    codes: out
                        .records()
                        .iter()
                        .map(|e| e.error_code().map(str::to_string))
                        .collect(),
                })
            }
        };
        let caller = Caller {
            id: &self.id,
            service: "Kinesis",
            what: "PutRecords",
            m: &self.m,
            health: &self.health,
            stop: &self.stop,
            failing: &mut self.failing,
            max_record_retries: self.cfg.max_record_retries,
        };
        let aggregated = self.cfg.aggregation;
        let (m, records_sent, dead) = (&self.m, &self.records_sent, &self.dead);
        records::put_all(caller, entries, held, send, |settled, entry, (lines, bytes, tags)| {
            match settled {
                Settled::Accepted => {
                    m.sent_events.inc_by(lines);
                    m.sent_bytes.inc_by(bytes as u64);
                    records_sent.inc();
                }
                Settled::Exhausted => {
                    let data = entry.data().as_ref();
                    match aggregated.then(|| deaggregate(data)).flatten() {
                        Some(recs) => dead.send("retries_exhausted", recs.iter().map(|(_, d)| &d[..])),
                        None => dead.send("retries_exhausted", [data]),
                    }
                }
            }
            // Delivered, or dropped on purpose and counted: the batches may
            // move on.
            for t in tags {
                t.release();
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests;
