//! The event loop both record sinks run: log records encoded, packed into
//! service records by the sink's own packer, queued until they fill a call
//! or the oldest has waited `flush_interval`, sent through [`put_all`], and
//! charged to `memory_limit` while they wait. One loop, so the two sinks
//! cannot drift apart in when they send, what they charge, or how acks
//! are released; each keeps only its packing and its SDK call
//! ([`Service`]).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Answer, CallLimits, Caller, Settled, call_ready, next_call, put_all};
use crate::api::Health;
use crate::dead_letter::DeadLetters;
use crate::event::{Batch, HeldAck};
use crate::memory::Charge;
use crate::metrics::ComponentMetrics;
use crate::sinks::SinkContext;
use crate::sinks::aws::{Abandoned, RetryCtx};
use crate::sinks::encoding::{MissingKey, RecordFormat};

/// One service record: its partition key (empty for Firehose), its data,
/// how many log records it holds, and the tags (ack clones) of the batches
/// they came from, one per batch.
#[derive(Debug)]
pub struct Rec<T> {
    pub key: String,
    pub data: Vec<u8>,
    pub lines: u64,
    pub tags: Vec<T>,
}

impl<T> Rec<T> {
    pub fn new() -> Self {
        Rec {
            key: String::new(),
            data: Vec::new(),
            lines: 0,
            tags: Vec::new(),
        }
    }

    /// Size as the service counts it (key and data).
    pub fn size(&self) -> usize {
        self.key.len() + self.data.len()
    }
}

impl<T> Default for Rec<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// What a packer did with a log record.
#[derive(Debug)]
pub enum Pushed<T> {
    /// Added to the open record.
    Added,
    /// A record is ready (the log record itself, or the open record it did
    /// not fit in; then it starts the next).
    Closed(Rec<T>),
    /// Larger than a service record may be: not taken.
    Oversize,
}

/// A failed call, as the SDK returns it.
pub type SdkErrorOf<E> = SdkError<E, HttpResponse>;

/// What is a sink's own: how log records become service records, and the
/// SDK call.
pub trait Service: Send + Sync {
    /// For log lines: "Firehose", "Kinesis".
    const SERVICE: &'static str;
    /// For log lines: "PutRecordBatch", "PutRecords".
    const CALL: &'static str;
    const LIMITS: CallLimits;
    /// The SDK's request entry.
    type Entry: Clone + Send;
    type Error: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static;

    /// Bytes one service record may hold.
    fn record_limit(&self) -> usize;
    /// Starts the log records of a batch; every service record that gets
    /// one of them gets a clone of `tag`.
    fn begin(&mut self, tag: Option<HeldAck>);
    /// Ends the batch; returns its tag.
    fn end(&mut self) -> Option<HeldAck>;
    /// Packs log record `i` of `batch`, encoded as `line` (newline included).
    fn push(&mut self, batch: &Batch, i: usize, line: &[u8]) -> Pushed<HeldAck>;
    /// Closes the open record, if it has anything.
    fn take_open(&mut self) -> Option<Rec<HeldAck>>;
    /// Bytes held in the open record.
    fn open_size(&self) -> usize;
    /// The request entry of a record; `None` when the SDK refuses to build
    /// it (it cannot: the required fields are set), logged here.
    fn entry(&self, key: String, data: Vec<u8>) -> Option<Self::Entry>;
    /// One call with `entries`.
    fn send(
        &self,
        entries: Vec<Self::Entry>,
    ) -> impl Future<Output = Result<Answer, SdkErrorOf<Self::Error>>> + Send + 'static;
    /// The log records of an entry rejected for good, to the dead letters.
    fn exhausted(&self, entry: &Self::Entry, dead: &DeadLetters);
}

/// The settings the loop needs from the sink's config.
pub struct Settings {
    pub flush_interval: Duration,
    pub max_record_retries: u32,
    pub format: RecordFormat,
    /// `logferry_<service>_records_sent_total`.
    pub records_sent: Counter,
}

struct RecordSink<S: Service> {
    svc: S,
    id: String,
    flush_interval: Duration,
    max_record_retries: u32,
    /// Closed records waiting for a call, and their bytes.
    queue: VecDeque<Rec<HeldAck>>,
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
    /// Calls fail or records are rejected: logged once, readiness back when it ends.
    failing: AtomicBool,
    dead: Arc<DeadLetters>,
    /// Queued and packed bytes, against `memory_limit`.
    charge: Charge,
}

/// Runs a record sink until its input closes (then flushes everything) or
/// it is told to stop (then what it still holds drops as failed, see
/// `HeldAck`).
pub async fn run<S: Service>(svc: S, settings: Settings, mut input: mpsc::Receiver<Batch>, cx: SinkContext) {
    let SinkContext {
        id,
        m,
        health,
        stop,
        dead,
        memory,
        ..
    } = cx;
    let tick_every = (settings.flush_interval / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut sink = RecordSink {
        svc,
        id,
        flush_interval: settings.flush_interval,
        max_record_retries: settings.max_record_retries,
        queue: VecDeque::new(),
        queued_bytes: 0,
        oldest: None,
        m,
        records_sent: settings.records_sent,
        health,
        stop,
        line: Vec::with_capacity(4096),
        format: settings.format,
        missing: MissingKey::default(),
        failing: AtomicBool::new(false),
        dead,
        charge: Charge::new(memory),
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
            Ok(()) if !sink.charge.resize(sink.queued_bytes + sink.svc.open_size()) => sink.flush_all().await,
            r => r,
        };
        if r.is_err() {
            break true;
        }
    };
    if !abandoned {
        let _ = sink.flush_all().await;
    }
    tracing::info!(
        records_sent = sink.records_sent.get(),
        events_sent = sink.m.sent_events.get(),
        "{} sink finished",
        S::SERVICE.to_lowercase()
    );
}

impl<S: Service> RecordSink<S> {
    /// Packs a batch; sends every call that became full on the way.
    async fn write_batch(&mut self, batch: Batch) -> Result<(), Abandoned> {
        let n = batch.len();
        self.m.received_events.inc_by(n as u64);
        self.svc.begin(batch.ack.clone().map(|a| HeldAck(Some(a))));
        let mut result = Ok(());
        for i in 0..n {
            self.line.clear();
            if !self.format.encode(&batch, i, &mut self.line) {
                self.missing.record();
                continue;
            }
            self.line.push(b'\n');
            self.m.received_bytes.inc_by(self.line.len() as u64);
            match self.svc.push(&batch, i, &self.line) {
                Pushed::Oversize => {
                    self.dead.send("over_size_limit", [&self.line[..]]);
                    continue;
                }
                Pushed::Added => {}
                Pushed::Closed(rec) => {
                    self.enqueue(rec);
                    if let Err(a) = self.send_ready().await {
                        result = Err(a);
                        break;
                    }
                }
            }
            self.oldest.get_or_insert_with(Instant::now);
        }
        self.missing.flush(&self.m, &self.format);
        if let Some(tag) = self.svc.end() {
            tag.release();
        }
        if result.is_err() {
            // Not all of its records were packed.
            batch.fail();
        }
        result
    }

    fn enqueue(&mut self, rec: Rec<HeldAck>) {
        self.queued_bytes += rec.size();
        self.queue.push_back(rec);
    }

    /// Sends full calls while the queue has them.
    async fn send_ready(&mut self) -> Result<(), Abandoned> {
        while call_ready(self.queue.len(), self.queued_bytes, self.svc.record_limit(), S::LIMITS) {
            self.send_next().await?;
        }
        Ok(())
    }

    async fn flush_if_due(&mut self) -> Result<(), Abandoned> {
        match self.oldest {
            Some(t) if t.elapsed() >= self.flush_interval => self.flush_all().await,
            _ => Ok(()),
        }
    }

    /// Closes the open record and sends everything.
    async fn flush_all(&mut self) -> Result<(), Abandoned> {
        if let Some(rec) = self.svc.take_open() {
            self.enqueue(rec);
        }
        while !self.queue.is_empty() {
            self.send_next().await?;
        }
        self.oldest = None;
        Ok(())
    }

    async fn send_next(&mut self) -> Result<(), Abandoned> {
        let n = next_call(self.queue.iter().map(Rec::size), S::LIMITS);
        let recs: Vec<Rec<HeldAck>> = self.queue.drain(..n).collect();
        self.queued_bytes -= recs.iter().map(Rec::size).sum::<usize>();
        self.put(recs).await
    }

    /// One call, until every record is accepted or exhausted: rejected
    /// records alone are sent again after a backoff (see [`put_all`]).
    async fn put(&mut self, recs: Vec<Rec<HeldAck>>) -> Result<(), Abandoned> {
        // The record data moves into the request; `held` keeps the rest.
        let mut held = Vec::with_capacity(recs.len());
        let mut entries = Vec::with_capacity(recs.len());
        for r in recs {
            let bytes = r.data.len();
            // Should building fail, the record is dropped here and its acks fail.
            if let Some(e) = self.svc.entry(r.key, r.data) {
                entries.push(e);
                held.push((r.lines, bytes, r.tags));
            }
        }
        let caller = Caller {
            retry: RetryCtx {
                id: &self.id,
                service: S::SERVICE,
                m: &self.m,
                health: &self.health,
                stop: &self.stop,
                failing: &self.failing,
            },
            what: S::CALL,
            max_record_retries: self.max_record_retries,
        };
        let (svc, m, records_sent, dead) = (&self.svc, &self.m, &self.records_sent, &self.dead);
        put_all(
            caller,
            entries,
            held,
            |entries| svc.send(entries),
            |settled, entry, (lines, bytes, tags)| {
                match settled {
                    Settled::Accepted => {
                        m.sent_events.inc_by(lines);
                        m.sent_bytes.inc_by(bytes as u64);
                        records_sent.inc();
                    }
                    Settled::Exhausted => svc.exhausted(&entry, dead),
                }
                // Delivered, or dropped on purpose and counted: the batches
                // may move on.
                for t in tags {
                    t.release();
                }
            },
        )
        .await
    }
}
