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
//! `firehose/mod.rs`) and shared with it in `records/`: each Kinesis
//! record holds an ack clone of every batch it has log records of, only
//! the records a call rejected (`ProvisionedThroughputExceededException`,
//! `InternalFailure`) are sent again, with capped jittered backoff, and a
//! record rejected past `max_record_retries` goes to the dead letters
//! (`retries_exhausted`). Whole-call failures (throttling with
//! `LimitExceededException`, network, no such stream) are retried until
//! the sink is told to stop.

mod aggregate;
mod config;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use tokio::sync::mpsc;

pub use aggregate::deaggregate;
pub use config::KinesisSinkConfig;

use super::SinkContext;
use super::aws;
use super::records::sink::{self, Pushed, Rec, Service, Settings};
use super::records::{Answer, CallLimits};
use crate::dead_letter::DeadLetters;
use crate::event::{Batch, HeldAck};
use crate::template::{Renderer, Template};
use aggregate::Aggregate;

/// PutRecords limits: records per call, bytes per call (data and partition
/// keys), bytes per record (data and partition key).
pub const MAX_CALL_RECORDS: usize = 500;
pub const MAX_CALL_BYTES: usize = 5 * 1024 * 1024;
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// A partition key is 1 to 256 Unicode characters.
pub const MAX_KEY_CHARS: usize = 256;

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
            return Pushed::Closed(Rec {
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
    fn take_open(&mut self) -> Option<Rec<T>> {
        let open = self.open.as_mut().filter(|a| !a.is_empty())?;
        let lines = open.len() as u64;
        let (key, data) = open.finish();
        self.tagged = false;
        Some(Rec {
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

/// The Kinesis side of the record sink loop (`records/sink.rs`).
struct Kinesis {
    client: aws_sdk_kinesis::Client,
    stream: String,
    builder: Builder<HeldAck>,
    keys: Keys,
    key: String,
    aggregated: bool,
}

impl Service for Kinesis {
    const SERVICE: &'static str = "Kinesis";
    const CALL: &'static str = "PutRecords";
    const LIMITS: CallLimits = CallLimits {
        records: MAX_CALL_RECORDS,
        bytes: MAX_CALL_BYTES,
    };
    type Entry = PutRecordsRequestEntry;
    type Error = aws_sdk_kinesis::operation::put_records::PutRecordsError;

    fn record_limit(&self) -> usize {
        MAX_RECORD_BYTES
    }

    fn begin(&mut self, tag: Option<HeldAck>) {
        self.builder.begin(tag);
    }

    fn end(&mut self) -> Option<HeldAck> {
        self.builder.end()
    }

    fn push(&mut self, batch: &Batch, i: usize, line: &[u8]) -> Pushed<HeldAck> {
        self.keys.render(batch, i, &mut self.key);
        self.builder.push(&self.key, line)
    }

    fn take_open(&mut self) -> Option<Rec<HeldAck>> {
        self.builder.take_open()
    }

    fn open_size(&self) -> usize {
        self.builder.open_size()
    }

    fn entry(&self, key: String, data: Vec<u8>) -> Option<PutRecordsRequestEntry> {
        // Both required fields are set: building cannot fail.
        PutRecordsRequestEntry::builder()
            .data(Blob::new(data))
            .partition_key(key)
            .build()
            .inspect_err(|e| tracing::error!(error = %e, "cannot build a Kinesis record"))
            .ok()
    }

    fn send(
        &self,
        entries: Vec<PutRecordsRequestEntry>,
    ) -> impl std::future::Future<Output = Result<Answer, sink::SdkErrorOf<Self::Error>>> + Send + 'static {
        let call = self
            .client
            .put_records()
            .stream_name(&self.stream)
            .set_records(Some(entries));
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
    }

    fn exhausted(&self, entry: &PutRecordsRequestEntry, dead: &DeadLetters) {
        let data = entry.data().as_ref();
        match self.aggregated.then(|| deaggregate(data)).flatten() {
            Some(recs) => dead.send("retries_exhausted", recs.iter().map(|(_, d)| &d[..])),
            None => dead.send("retries_exhausted", [data]),
        }
    }
}

pub async fn run(cfg: KinesisSinkConfig, input: mpsc::Receiver<Batch>, cx: SinkContext) {
    let sdk = aws::sink_sdk_config(cfg.region.as_deref(), cfg.endpoint_url.as_deref()).await;
    let client = aws_sdk_kinesis::Client::new(&sdk);
    run_with_client(cfg, client, input, cx).await;
}

/// [`run`] with a ready client (tests point it at a local server).
async fn run_with_client(
    cfg: KinesisSinkConfig,
    client: aws_sdk_kinesis::Client,
    input: mpsc::Receiver<Batch>,
    cx: SinkContext,
) {
    // Validated: a template that parses, or none.
    let renderer = cfg
        .partition_key
        .as_deref()
        .and_then(|k| Template::parse(k).ok())
        .map(Renderer::new);
    let settings = Settings {
        flush_interval: cfg.flush_interval,
        max_record_retries: cfg.max_record_retries,
        format: cfg.record_format(),
        records_sent: cx.m.kinesis_records_sent(),
    };
    let svc = Kinesis {
        client,
        stream: cfg.stream,
        builder: Builder::new(cfg.aggregation),
        keys: Keys { renderer },
        key: String::with_capacity(64),
        aggregated: cfg.aggregation,
    };
    sink::run(svc, settings, input, cx).await;
}

#[cfg(test)]
mod tests;
