//! `type = "firehose"`: log records into an Amazon Data Firehose delivery
//! stream (Direct PUT).
//!
//! Why aggregation: Firehose bills and limits per record (each is rounded up
//! to 5 KiB, and a PutRecordBatch call takes at most 500), so one log record
//! per Firehose record would be slow and costly. The sink packs encoded log
//! records, newline-delimited, into Firehose records of up to
//! `max_record_size` (Firehose's limit, 1,000 KiB, by default). The
//! destination receives the same NDJSON as the other sinks write, and a
//! Firehose record never splits a log record. A single log record longer than
//! the limit cannot be sent at all: it goes to the dead letters
//! (`over_size_limit`, see `dead_letter.rs`).
//!
//! Closed Firehose records queue until they fill one PutRecordBatch call (500
//! records, 4 MiB) or the oldest waiting log record is `flush_interval` old;
//! everything is flushed when the input closes. Memory outside
//! `memory_limit` stays near one call plus the record being filled.
//!
//! Acknowledgement: every Firehose record holds a clone of the `AckToken` of
//! each batch it has log records of, and drops it only once the delivery
//! stream accepted the record, so a batch is acknowledged when the last
//! Firehose record carrying any of its log records is in. A clone dropped any
//! other way (abandoned at shutdown, task aborted) marks its batch failed, so
//! the checkpoint never passes data Firehose does not have.
//!
//! Errors never drop data, as in the S3 sink: a failed call is retried with
//! capped, jittered backoff while the sink takes no input (the files are the
//! queue); permanent errors (no such stream, access denied) are logged once
//! per burst and make `/readyz` fail. A partly failed call
//! (`FailedPutCount > 0`) is retried with only the rejected records, after a
//! backoff too. A record still rejected after `max_record_retries` such
//! attempts goes to the dead letters (`retries_exhausted`) so that one
//! poisoned record cannot hold the stream forever; whole-call failures
//! (stream missing, access denied, network) are retried until the sink is
//! told to stop, since they say nothing about the records. That call loop,
//! and the event loop around it (queueing, flushing, the memory charge),
//! live in `records/`, shared with the Kinesis sink; this file keeps the
//! packing and the SDK call.

mod config;

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use tokio::sync::mpsc;

pub use config::{FirehoseSinkConfig, MAX_RECORD_SIZE};

use super::SinkContext;
use super::aws;
use super::records::sink::{self, Pushed, Rec, Service, Settings};
use super::records::{Answer, CallLimits};
use crate::dead_letter::DeadLetters;
use crate::event::{Batch, HeldAck};

/// PutRecordBatch limits: records per call, and data bytes per call.
pub const MAX_CALL_RECORDS: usize = 500;
pub const MAX_CALL_BYTES: usize = 4 * 1024 * 1024;

/// Packs log records into Firehose records of at most `limit` bytes, in
/// order. No I/O; the tag type is generic so tests can follow batches.
#[derive(Debug)]
struct Packer<T> {
    limit: usize,
    open: Rec<T>,
    /// Tag of the batch being packed.
    tag: Option<T>,
    /// `open` already holds a clone of `tag`.
    tagged: bool,
}

impl<T: Clone> Packer<T> {
    fn new(limit: usize) -> Self {
        Packer {
            limit,
            open: Rec::new(),
            tag: None,
            tagged: false,
        }
    }

    /// Starts the log records of a batch; every Firehose record that gets
    /// one of them gets a clone of `tag`.
    fn begin(&mut self, tag: Option<T>) {
        self.tag = tag;
        self.tagged = false;
    }

    /// Ends the batch; returns its tag.
    fn end(&mut self) -> Option<T> {
        self.tagged = false;
        self.tag.take()
    }

    /// Adds one encoded log record, newline included.
    fn push(&mut self, line: &[u8]) -> Pushed<T> {
        if line.len() > self.limit {
            return Pushed::Oversize;
        }
        let closed = (self.open.data.len() + line.len() > self.limit).then(|| self.take_open());
        self.open.data.extend_from_slice(line);
        self.open.lines += 1;
        if !self.tagged {
            if let Some(t) = &self.tag {
                self.open.tags.push(t.clone());
            }
            self.tagged = true;
        }
        match closed {
            Some(r) => Pushed::Closed(r),
            None => Pushed::Added,
        }
    }

    /// Closes the open record, if it has anything.
    fn take(&mut self) -> Option<Rec<T>> {
        (self.open.lines > 0).then(|| self.take_open())
    }

    fn take_open(&mut self) -> Rec<T> {
        self.tagged = false;
        std::mem::take(&mut self.open)
    }
}

/// The Firehose side of the record sink loop (`records/sink.rs`).
struct Firehose {
    client: aws_sdk_firehose::Client,
    stream: String,
    packer: Packer<HeldAck>,
}

impl Service for Firehose {
    const SERVICE: &'static str = "Firehose";
    const CALL: &'static str = "PutRecordBatch";
    const LIMITS: CallLimits = CallLimits {
        records: MAX_CALL_RECORDS,
        bytes: MAX_CALL_BYTES,
    };
    type Entry = Record;
    type Error = aws_sdk_firehose::operation::put_record_batch::PutRecordBatchError;

    fn record_limit(&self) -> usize {
        self.packer.limit
    }

    fn begin(&mut self, tag: Option<HeldAck>) {
        self.packer.begin(tag);
    }

    fn end(&mut self) -> Option<HeldAck> {
        self.packer.end()
    }

    fn push(&mut self, _: &Batch, _: usize, line: &[u8]) -> Pushed<HeldAck> {
        self.packer.push(line)
    }

    fn take_open(&mut self) -> Option<Rec<HeldAck>> {
        self.packer.take()
    }

    fn open_size(&self) -> usize {
        self.packer.open.data.len()
    }

    fn entry(&self, _: String, data: Vec<u8>) -> Option<Record> {
        // `data`, the only required field, is set: building cannot fail.
        Record::builder()
            .data(Blob::new(data))
            .build()
            .inspect_err(|e| tracing::error!(error = %e, "cannot build a Firehose record"))
            .ok()
    }

    fn send(
        &self,
        records: Vec<Record>,
    ) -> impl std::future::Future<Output = Result<Answer, sink::SdkErrorOf<Self::Error>>> + Send + 'static {
        let call = self
            .client
            .put_record_batch()
            .delivery_stream_name(&self.stream)
            .set_records(Some(records));
        async move {
            call.send().await.map(|out| Answer {
                failed_count: out.failed_put_count(),
                codes: out
                    .request_responses()
                    .iter()
                    .map(|e| e.error_code().map(str::to_string))
                    .collect(),
            })
        }
    }

    fn exhausted(&self, rec: &Record, dead: &DeadLetters) {
        dead.send(
            "retries_exhausted",
            rec.data().as_ref().split_inclusive(|b| *b == b'\n'),
        );
    }
}

pub async fn run(cfg: FirehoseSinkConfig, input: mpsc::Receiver<Batch>, cx: SinkContext) {
    let sdk = aws::sink_sdk_config(cfg.region.as_deref(), cfg.endpoint_url.as_deref()).await;
    let client = aws_sdk_firehose::Client::new(&sdk);
    run_with_client(cfg, client, input, cx).await;
}

/// [`run`] with a ready client (tests point it at a local server).
async fn run_with_client(
    cfg: FirehoseSinkConfig,
    client: aws_sdk_firehose::Client,
    input: mpsc::Receiver<Batch>,
    cx: SinkContext,
) {
    // Validated to be at most MAX_RECORD_SIZE, so it fits a usize.
    let limit = cfg.max_record_size.as_u64().min(MAX_RECORD_SIZE) as usize;
    let settings = Settings {
        flush_interval: cfg.flush_interval,
        max_record_retries: cfg.max_record_retries,
        format: cfg.record_format(),
        records_sent: cx.m.firehose_records_sent(),
    };
    let svc = Firehose {
        client,
        stream: cfg.delivery_stream,
        packer: Packer::new(limit),
    };
    sink::run(svc, settings, input, cx).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::event::AckToken;
    use tokio_util::sync::CancellationToken;

    use crate::api::Health;
    use crate::sinks::records;

    const LIMITS: CallLimits = <Firehose as Service>::LIMITS;

    fn line(id: usize, len: usize) -> Vec<u8> {
        // `{"i":N,"p":"xxx"}\n` padded to exactly `len` bytes.
        let head = format!("{{\"i\":{id},\"p\":\"");
        let pad = len - head.len() - 3;
        let mut l = head.into_bytes();
        l.extend(std::iter::repeat_n(b'x', pad));
        l.extend_from_slice(b"\"}\n");
        assert_eq!(l.len(), len);
        l
    }

    /// Packs batches of line lengths; returns the records (with tag = batch
    /// number) and how many lines were refused.
    fn pack(limit: usize, batches: &[Vec<usize>]) -> (Vec<Rec<usize>>, usize) {
        let mut p = Packer::new(limit);
        let (mut out, mut oversize, mut id) = (Vec::new(), 0, 0);
        for (b, lens) in batches.iter().enumerate() {
            p.begin(Some(b));
            for &len in lens {
                id += 1;
                match p.push(&line(id, len)) {
                    Pushed::Added => {}
                    Pushed::Closed(r) => out.push(r),
                    Pushed::Oversize => oversize += 1,
                }
            }
            assert_eq!(p.end(), Some(b));
        }
        out.extend(p.take());
        (out, oversize)
    }

    fn ids(rec: &Rec<usize>) -> Vec<usize> {
        rec.data
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_slice(l).unwrap();
                v["i"].as_u64().unwrap() as usize
            })
            .collect()
    }

    #[test]
    fn packs_up_to_the_limit_exactly_in_order() {
        // 10 lines of 100 bytes, limit 300: 3+3+3+1, each full record exactly 300.
        let (recs, oversize) = pack(300, &[vec![100; 10]]);
        assert_eq!(oversize, 0);
        let sizes: Vec<usize> = recs.iter().map(|r| r.data.len()).collect();
        assert_eq!(sizes, [300, 300, 300, 100]);
        let all: Vec<usize> = recs.iter().flat_map(ids).collect();
        assert_eq!(all, (1..=10).collect::<Vec<_>>());
        assert_eq!(recs.iter().map(|r| r.lines).sum::<u64>(), 10);
        assert!(recs.iter().all(|r| r.data.ends_with(b"\n")));
    }

    #[test]
    fn the_default_limit_holds_to_the_byte() {
        let limit = MAX_RECORD_SIZE as usize;
        assert_eq!(limit, 1_024_000);
        // A line of exactly the limit fits alone; one byte more does not fit at all.
        let (recs, oversize) = pack(limit, &[vec![limit, 1000, limit + 1, 24_000, limit - 1000]]);
        assert_eq!(oversize, 1);
        let sizes: Vec<usize> = recs.iter().map(|r| r.data.len()).collect();
        assert_eq!(sizes, [limit, 25_000, limit - 1000]);
        assert_eq!(recs.iter().flat_map(ids).collect::<Vec<_>>(), [1, 2, 4, 5]);
    }

    #[test]
    fn oversize_lines_are_refused_and_the_rest_continue() {
        let (recs, oversize) = pack(200, &[vec![50, 201, 50, 1000, 50]]);
        assert_eq!(oversize, 2);
        assert_eq!(recs.len(), 1);
        assert_eq!(ids(&recs[0]), [1, 3, 5]);
        // A batch of nothing but oversize lines leaves no record and no tag.
        let (recs, oversize) = pack(200, &[vec![300, 300]]);
        assert_eq!((recs.len(), oversize), (0, 2));
    }

    #[test]
    fn every_record_holds_the_tag_of_each_batch_it_has_lines_of() {
        // Batch 0: 5 lines of 100 (records 0,1 and part of 2), batch 1: 2 lines
        // (rest of record 2), batch 2: 4 lines (record 3, 4).
        let (recs, _) = pack(200, &[vec![100; 5], vec![50, 50], vec![100; 4]]);
        let tags: Vec<Vec<usize>> = recs.iter().map(|r| r.tags.clone()).collect();
        assert_eq!(tags, [vec![0], vec![0], vec![0, 1], vec![2], vec![2]]);
        // An empty batch tags nothing.
        let (recs, _) = pack(200, &[vec![100], vec![], vec![100]]);
        assert_eq!(recs[0].tags, [0, 2]);
    }

    fn plan(sizes: &[usize]) -> Vec<Vec<usize>> {
        let mut rest = sizes;
        let mut calls = Vec::new();
        while !rest.is_empty() {
            let n = records::next_call(rest.iter().copied(), LIMITS);
            assert!(n > 0);
            calls.push(rest[..n].to_vec());
            rest = &rest[n..];
        }
        calls
    }

    #[test]
    fn calls_hold_at_most_500_records_and_4_mib() {
        let calls = plan(&vec![100; 1201]);
        assert_eq!(calls.iter().map(Vec::len).collect::<Vec<_>>(), [500, 500, 201]);

        let full = MAX_RECORD_SIZE as usize;
        let calls = plan(&[full; 9]);
        assert_eq!(calls.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 1]);

        // Exactly 4 MiB fits; a byte more starts the next call.
        let calls = plan(&[MAX_CALL_BYTES - 10, 10, 1]);
        assert_eq!(calls, [vec![MAX_CALL_BYTES - 10, 10], vec![1]]);
        let calls = plan(&[1_000_000, 1_000_000, 1_000_000, 1_000_000, 194_305]);
        assert_eq!(calls.len(), 2);

        let mixed: Vec<usize> = (0..3000).map(|i| (i * 7919) % full + 1).collect();
        let calls = plan(&mixed);
        assert_eq!(calls.concat(), mixed, "order kept, nothing lost");
        for c in &calls {
            assert!(c.len() <= MAX_CALL_RECORDS && c.iter().sum::<usize>() <= MAX_CALL_BYTES);
        }
    }

    // `call_ready` and `failed_indices` are tested in `records/`.

    #[test]
    fn dropped_unreleased_acks_fail_their_batch() {
        let (tx, rx) = std::sync::mpsc::channel();
        let token = AckToken::new(1, 7, tx.clone());
        let held = HeldAck(Some(token.clone()));
        let second = held.clone();
        drop(token);
        held.release();
        assert!(rx.try_recv().is_err(), "a clone is still held");
        drop(second);
        assert!(!rx.try_recv().unwrap().delivered);

        let token = AckToken::new(1, 8, tx);
        HeldAck(Some(token.clone())).release();
        drop(token);
        assert!(rx.try_recv().unwrap().delivered);
    }

    use records::scripted::{self, Answer};

    struct Outcome {
        calls: Vec<Vec<Vec<u8>>>,
        acks: Vec<crate::event::Ack>,
        records_sent: u64,
        events_sent: u64,
        healthy: bool,
    }

    /// Runs the sink against a scripted server: 3 batches of 10 lines of
    /// 200 bytes, records of at most 1KiB (5 lines each, 6 records, one call).
    async fn scenario(script: Vec<Answer>, stop_after: Option<Duration>) -> Outcome {
        scenario_with(script, stop_after, 0, None).await
    }

    async fn scenario_with(
        script: Vec<Answer>,
        stop_after: Option<Duration>,
        max_record_retries: u32,
        dead_letter_dir: Option<&std::path::Path>,
    ) -> Outcome {
        let (url, state) = scripted::start(scripted::FIREHOSE, script);
        let conf = aws_sdk_firehose::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_firehose::config::Region::new("us-east-1"))
            .endpoint_url(url)
            .credentials_provider(aws_sdk_firehose::config::Credentials::new("a", "b", None, None, "test"))
            .build();
        let cfg = FirehoseSinkConfig {
            delivery_stream: "s".into(),
            region: None,
            endpoint_url: None,
            flush_interval: Duration::from_secs(60),
            max_record_size: bytesize::ByteSize::kib(1),
            max_record_retries,
            log_key: None,
            timestamp_key: None,
        };
        let metrics = crate::metrics::Metrics::new();
        let m = metrics.component("fh", "firehose");
        let health = Arc::new(Health::default());
        let stop = CancellationToken::new();
        let (tx, rx) = mpsc::channel(8);
        let (ack_tx, ack_rx) = std::sync::mpsc::channel();
        let task = tokio::spawn(run_with_client(
            cfg,
            aws_sdk_firehose::Client::from_conf(conf),
            rx,
            SinkContext {
                id: "fh".into(),
                m: m.clone(),
                health: health.clone(),
                stop: stop.clone(),
                dead: Arc::new(DeadLetters::new(dead_letter_dir, "fh", m.clone())),
                memory: Arc::new(tokio::sync::Semaphore::new(64 << 20)),
                memory_limit: 64 << 20,
            },
        ));
        let mut id = 0;
        for seq in 0..3 {
            let mut records = crate::event::Records::default();
            for _ in 0..10 {
                id += 1;
                let start = records.buf.len();
                let l = line(id, 200);
                records.buf.extend_from_slice(&l[..l.len() - 1]);
                records.push_written(start, 0, 0);
            }
            let ack = AckToken::new(0, seq, ack_tx.clone());
            tx.send(Batch::new(records, Some(ack))).await.unwrap();
        }
        drop(tx);
        drop(ack_tx);
        if let Some(d) = stop_after {
            tokio::time::sleep(d).await;
            stop.cancel();
        }
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap();
        let calls = state.lock().unwrap().data();
        Outcome {
            calls,
            acks: ack_rx.try_iter().collect(),
            records_sent: m.firehose_records_sent().get(),
            events_sent: m.sent_events.get(),
            healthy: health.failing_sinks().is_empty(),
        }
    }

    fn lines_of(records: &[Vec<u8>]) -> usize {
        records.iter().map(|r| r.iter().filter(|&&b| b == b'\n').count()).sum()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rejected_records_alone_are_sent_again_and_acks_wait_for_them() {
        let o = scenario(vec![Answer::Reject(vec![0, 3])], None).await;
        assert_eq!(o.calls.len(), 2, "one call, one retry");
        assert_eq!(o.calls[0].len(), 6);
        assert!(o.calls[0].iter().all(|r| r.len() == 1000 && r.ends_with(b"\n")));
        assert_eq!(o.calls[1], vec![o.calls[0][0].clone(), o.calls[0][3].clone()]);
        assert_eq!(lines_of(&o.calls[0]), 30);
        assert_eq!((o.records_sent, o.events_sent), (6, 30));
        assert_eq!(o.acks.len(), 3);
        assert!(o.acks.iter().all(|a| a.delivered), "{:?}", o.acks);
        assert!(o.healthy);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn whole_call_errors_are_retried_and_readiness_comes_back() {
        let script = vec![Answer::Error(400, "ResourceNotFoundException"), Answer::Reject(vec![5])];
        let o = scenario(script, None).await;
        assert_eq!(o.calls.iter().map(Vec::len).collect::<Vec<_>>(), [6, 6, 1]);
        assert_eq!(o.calls[0], o.calls[1]);
        assert_eq!(o.calls[2][0], o.calls[0][5]);
        assert_eq!((o.records_sent, o.events_sent), (6, 30));
        assert!(o.acks.iter().all(|a| a.delivered) && o.acks.len() == 3);
        assert!(o.healthy, "ready again once everything is accepted");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_never_accepted_fail_their_batches_at_stop() {
        // Record 2 (the first half of batch 1) is always rejected.
        let script = vec![Answer::Reject(vec![2]); 100];
        let o = scenario(script, Some(Duration::from_secs(2))).await;
        assert!(o.calls.len() >= 2);
        assert!(
            o.calls[1..].iter().all(|c| c.len() == 1),
            "only the rejected record is resent"
        );
        assert_eq!((o.records_sent, o.events_sent), (5, 25));
        let mut acks: Vec<(u64, bool)> = o.acks.iter().map(|a| (a.seq, a.delivered)).collect();
        acks.sort();
        assert_eq!(acks, [(0, true), (1, false), (2, true)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_rejected_past_the_bound_goes_to_the_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        let script = vec![Answer::Reject(vec![2]); 100];
        let o = scenario_with(script, None, 2, Some(dir.path())).await;
        assert_eq!(o.calls.len(), 3, "the call and two retries");
        assert_eq!((o.records_sent, o.events_sent), (5, 25));
        assert!(o.acks.iter().all(|a| a.delivered) && o.acks.len() == 3, "{:?}", o.acks);
        let files: Vec<_> = std::fs::read_dir(dir.path().join("fh")).unwrap().flatten().collect();
        let text = std::fs::read_to_string(files[0].path()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 5, "the rejected Firehose record held 5 log records");
        assert!(
            lines
                .iter()
                .all(|l| l["reason"] == "retries_exhausted" && l["record"].is_object())
        );
    }
}
