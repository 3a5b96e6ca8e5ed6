//! Internal metrics, exposed at `/metrics` in Prometheus text format.
//!
//! Why handles are resolved once: `Family::get_or_create` takes a lock and
//! hashes the labels. Components call [`Metrics::component`] when they are
//! built and keep the returned counters (an `Arc<AtomicU64>` each), then bump
//! them once per batch on the data path. Names follow
//! `logferry_<noun>_<unit>_total`; label values are component ids, file paths
//! and a closed set of reasons, never record contents.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabels {
    pub component: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub component: String,
    pub reason: String,
}

/// A named output of a component (a route).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutputLabels {
    pub component: String,
    pub output: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub component: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DetectorLabels {
    pub component: String,
    pub detector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileLabels {
    pub component: String,
    pub file: String,
}

/// Every metric family of the process, registered once.
pub struct Metrics {
    registry: Registry,
    received_events: Family<ComponentLabels, Counter>,
    received_bytes: Family<ComponentLabels, Counter>,
    sent_events: Family<ComponentLabels, Counter>,
    sent_bytes: Family<ComponentLabels, Counter>,
    discarded: Family<ReasonLabels, Counter>,
    /// `discarded` summed over reasons, per component. Not exported: the
    /// exit report uses it to tell what a sink abandoned from what it
    /// dropped on purpose.
    discarded_total: Family<ComponentLabels, Counter>,
    /// Discarded records written to the dead-letter directory.
    dead_letters: Family<ReasonLabels, Counter>,
    /// Lines kept but altered: parse fallback, invalid UTF-8, truncation.
    line_issues: Family<ReasonLabels, Counter>,
    pub file_read_offset: Family<FileLabels, Gauge>,
    pub file_lag: Family<FileLabels, Gauge>,
    pub file_checkpoint_offset: Family<FileLabels, Gauge>,
    /// Bytes of a file not yet durable in every sink: size minus checkpoint.
    pub file_checkpoint_lag: Family<FileLabels, Gauge>,
    acked_events: Family<ComponentLabels, Counter>,
    failed_events: Family<ComponentLabels, Counter>,
    unacked_events: Family<ComponentLabels, Gauge>,
    files_open: Family<ComponentLabels, Gauge>,
    connections: Family<ComponentLabels, Gauge>,
    objects_written: Family<ComponentLabels, Counter>,
    /// Objects an object sink closed, by reason (size, age, memory, shutdown).
    objects_closed: Family<ReasonLabels, Counter>,
    sink_errors: Family<ReasonLabels, Counter>,
    /// HTTP requests of the http sink by answer class (`2xx`..`5xx`, `error`).
    http_requests: Family<StatusLabels, Counter>,
    /// Failed forward-protocol handshakes (source or sink), by reason.
    handshake_failures: Family<ReasonLabels, Counter>,
    /// Requests sent again after an error or a partial rejection.
    retries: Family<ComponentLabels, Counter>,
    /// Values the redact transform replaced, by detector.
    redactions: Family<DetectorLabels, Counter>,
    /// Seconds since a file's checkpoint last caught up with what was read.
    pub file_checkpoint_age: Family<FileLabels, Gauge>,
    /// `global.memory_limit` bytes held by batches and sink buffers.
    pub memory_used: Gauge,
    pub memory_limit: Gauge,
    /// How long records have waited with no acknowledgement at all.
    pub delivery_stalled: Gauge,
    /// Firehose records (each many log records) the delivery stream accepted.
    firehose_records_sent: Family<SinkLabels, Counter>,
    /// Kinesis records (one log record, or a KPL aggregate) a stream accepted.
    kinesis_records_sent: Family<SinkLabels, Counter>,
    buffer_bytes: Family<SinkLabels, Gauge>,
    buffer_records: Family<SinkLabels, Gauge>,
    buffer_corrupt_frames: Family<SinkLabels, Counter>,
    buffer_torn_writes: Family<SinkLabels, Counter>,
    /// Failed writes of a disk buffer (segments, position file), by reason.
    buffer_write_errors: Family<ReasonLabels, Counter>,
    /// Failed saves of a source's checkpoint file, by reason.
    checkpoint_write_errors: Family<ReasonLabels, Counter>,
    /// Seconds a source's checkpoint file has failed to save (0 once saved).
    checkpoint_save_failing: Family<SinkLabels, Gauge>,
    /// Checkpoint files found corrupt at start-up (every file read again).
    checkpoint_corrupt: Family<SinkLabels, Counter>,
    /// Records a route sent to each of its named outputs.
    route_output_events: Family<OutputLabels, Counter>,
    /// Failed list/watch requests to the Kubernetes API, by reason.
    kubernetes_api_errors: Family<ReasonLabels, Counter>,
    /// Pods in a file source's cache (deleted ones in their grace too).
    kubernetes_pods: Family<ComponentLabels, Gauge>,
    /// `memory_limit` bytes the pod cache holds.
    kubernetes_cache_bytes: Family<ComponentLabels, Gauge>,
    /// Handles given out, for the summary logged at exit.
    components: std::sync::Mutex<Vec<ComponentMetrics>>,
    /// Checkpoint handles given out, for the watchdog.
    checkpoints: std::sync::Mutex<Vec<CheckpointMetrics>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            received_events: Family::default(),
            received_bytes: Family::default(),
            sent_events: Family::default(),
            sent_bytes: Family::default(),
            discarded: Family::default(),
            discarded_total: Family::default(),
            dead_letters: Family::default(),
            line_issues: Family::default(),
            file_read_offset: Family::default(),
            file_lag: Family::default(),
            file_checkpoint_offset: Family::default(),
            file_checkpoint_lag: Family::default(),
            acked_events: Family::default(),
            failed_events: Family::default(),
            unacked_events: Family::default(),
            files_open: Family::default(),
            connections: Family::default(),
            objects_written: Family::default(),
            objects_closed: Family::default(),
            sink_errors: Family::default(),
            http_requests: Family::default(),
            handshake_failures: Family::default(),
            retries: Family::default(),
            redactions: Family::default(),
            file_checkpoint_age: Family::default(),
            memory_used: Gauge::default(),
            memory_limit: Gauge::default(),
            delivery_stalled: Gauge::default(),
            firehose_records_sent: Family::default(),
            kinesis_records_sent: Family::default(),
            buffer_bytes: Family::default(),
            buffer_records: Family::default(),
            buffer_corrupt_frames: Family::default(),
            buffer_torn_writes: Family::default(),
            buffer_write_errors: Family::default(),
            checkpoint_write_errors: Family::default(),
            checkpoint_save_failing: Family::default(),
            checkpoint_corrupt: Family::default(),
            kubernetes_api_errors: Family::default(),
            kubernetes_pods: Family::default(),
            kubernetes_cache_bytes: Family::default(),
            route_output_events: Family::default(),
            registry: Registry::default(),
            components: std::sync::Mutex::new(Vec::new()),
            checkpoints: std::sync::Mutex::new(Vec::new()),
        };
        registry.register(
            "logferry_component_received_events",
            "Records received by a component",
            m.received_events.clone(),
        );
        registry.register(
            "logferry_component_received_bytes",
            "Bytes received by a component (sources: raw bytes read)",
            m.received_bytes.clone(),
        );
        registry.register(
            "logferry_component_sent_events",
            "Records a component delivered downstream (sinks: made durable)",
            m.sent_events.clone(),
        );
        registry.register(
            "logferry_component_sent_bytes",
            "Bytes a component delivered (sinks: encoded, before compression)",
            m.sent_bytes.clone(),
        );
        registry.register(
            "logferry_component_discarded_events",
            "Records dropped on purpose, by reason",
            m.discarded.clone(),
        );
        registry.register(
            "logferry_dead_letter_records",
            "Records rejected for good and written to the dead-letter directory, by reason",
            m.dead_letters.clone(),
        );
        registry.register(
            "logferry_source_line_issues",
            "Lines kept but altered, or passed unparsed, by reason (not_json, no_match, invalid_utf8, truncated, time_missing, parse_failed, parse_field_missing, ...)",
            m.line_issues.clone(),
        );
        registry.register(
            "logferry_file_read_offset_bytes",
            "Offset up to which a file has been read",
            m.file_read_offset.clone(),
        );
        registry.register(
            "logferry_file_lag_bytes",
            "Bytes of a file not yet read (size minus read offset)",
            m.file_lag.clone(),
        );
        registry.register(
            "logferry_file_checkpoint_offset_bytes",
            "Offset of a file that every sink has made durable",
            m.file_checkpoint_offset.clone(),
        );
        registry.register(
            "logferry_file_checkpoint_lag_bytes",
            "Bytes of a file not yet durable in every sink (size minus checkpoint offset)",
            m.file_checkpoint_lag.clone(),
        );
        registry.register(
            "logferry_source_acked_events",
            "Records every sink made durable (end-to-end acknowledged)",
            m.acked_events.clone(),
        );
        registry.register(
            "logferry_source_failed_events",
            "Records a sink gave up on (left behind the checkpoint, read again at the next start)",
            m.failed_events.clone(),
        );
        registry.register(
            "logferry_source_unacked_events",
            "Records sent downstream and not yet acknowledged",
            m.unacked_events.clone(),
        );
        registry.register("logferry_files_open", "Files a source is tailing", m.files_open.clone());
        registry.register(
            "logferry_source_connections",
            "Client connections a network source has open",
            m.connections.clone(),
        );
        registry.register(
            "logferry_sink_objects_written",
            "Objects (files) a sink has completed",
            m.objects_written.clone(),
        );
        registry.register(
            "logferry_sink_objects_closed",
            "Objects an object sink (s3, file) closed, by reason: size (max_object_size), age (flush_interval), memory (closed early to stay within memory_limit), shutdown (input ended)",
            m.objects_closed.clone(),
        );
        registry.register(
            "logferry_sink_errors",
            "Sink write errors, by reason",
            m.sink_errors.clone(),
        );
        registry.register(
            "logferry_http_requests",
            "Requests of an http sink, by answer class: 2xx, 3xx, 4xx, 5xx, or error (no answer: connect, TLS, timeout)",
            m.http_requests.clone(),
        );
        registry.register(
            "logferry_forward_handshake_failures",
            "Failed HELO/PING/PONG handshakes of a forward source (clients refused) or sink (server refused us), by reason",
            m.handshake_failures.clone(),
        );
        registry.register(
            "logferry_component_retries",
            "Requests a sink sent again after an error or a partial rejection",
            m.retries.clone(),
        );
        registry.register(
            "logferry_redactions",
            "Values the redact transform masked or hashed, by detector",
            m.redactions.clone(),
        );
        registry.register(
            "logferry_file_checkpoint_age_seconds",
            "Seconds since a file's checkpoint last caught up with everything read from it (0 when it has)",
            m.file_checkpoint_age.clone(),
        );
        registry.register(
            "logferry_memory_used_bytes",
            "Bytes of global.memory_limit held by batches in flight and sink buffers",
            m.memory_used.clone(),
        );
        registry.register(
            "logferry_memory_limit_bytes",
            "global.memory_limit",
            m.memory_limit.clone(),
        );
        registry.register(
            "logferry_delivery_stalled_seconds",
            "Seconds records have been waiting while no sink acknowledged anything (0 when delivering or idle)",
            m.delivery_stalled.clone(),
        );
        registry.register(
            "logferry_firehose_records_sent",
            "Firehose records (newline-delimited log records packed together) a delivery stream accepted",
            m.firehose_records_sent.clone(),
        );
        registry.register(
            "logferry_kinesis_records_sent",
            "Kinesis records (a log record each, or a KPL aggregate of many) a data stream accepted",
            m.kinesis_records_sent.clone(),
        );
        registry.register(
            "logferry_buffer_bytes",
            "Bytes in a sink's disk buffer the sink has not acknowledged yet",
            m.buffer_bytes.clone(),
        );
        registry.register(
            "logferry_buffer_records",
            "Records in a sink's disk buffer the sink has not acknowledged yet",
            m.buffer_records.clone(),
        );
        registry.register(
            "logferry_buffer_corrupt_frames",
            "Damaged regions of a disk buffer skipped on read (bad length or checksum)",
            m.buffer_corrupt_frames.clone(),
        );
        registry.register(
            "logferry_buffer_torn_writes",
            "Incomplete frames cut from the end of a disk buffer at start-up (crash mid-write; never acknowledged)",
            m.buffer_torn_writes.clone(),
        );
        registry.register(
            "logferry_buffer_write_errors",
            "Failed writes of a disk buffer (segments: retried, the batches held unacknowledged; position file), by reason",
            m.buffer_write_errors.clone(),
        );
        registry.register(
            "logferry_checkpoint_write_errors",
            "Failed saves of a source's checkpoint file (retried; the last good one stays), by reason",
            m.checkpoint_write_errors.clone(),
        );
        registry.register(
            "logferry_checkpoint_save_failing_seconds",
            "Seconds since a source's checkpoint file first failed to save, while it fails (0 once a save succeeds)",
            m.checkpoint_save_failing.clone(),
        );
        registry.register(
            "logferry_checkpoint_corrupt_files",
            "Checkpoint files found corrupt at start-up (every file present was then read from its start)",
            m.checkpoint_corrupt.clone(),
        );
        registry.register(
            "logferry_route_output_events",
            "Records a route transform sent to one of its outputs (a record matching several routes counts in each)",
            m.route_output_events.clone(),
        );
        registry.register(
            "logferry_kubernetes_api_errors",
            "Failed requests of a file source's watch of the Kubernetes API (records keep the path's fields meanwhile), by reason: list, watch_start, watch, watch_event, gone (410, relisted), memory (a pod refused for want of memory_limit)",
            m.kubernetes_api_errors.clone(),
        );
        registry.register(
            "logferry_kubernetes_pods",
            "Pods in a file source's metadata cache, deleted ones within their grace included",
            m.kubernetes_pods.clone(),
        );
        registry.register(
            "logferry_kubernetes_cache_bytes",
            "memory_limit bytes a file source's pod metadata cache holds",
            m.kubernetes_cache_bytes.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The pod count and charged bytes of source `id`'s pod cache.
    pub fn kubernetes_cache(&self, id: &str) -> (Gauge, Gauge) {
        let l = ComponentLabels {
            component: id.to_string(),
            kind: "file".to_string(),
        };
        (
            self.kubernetes_pods.get_or_create(&l).clone(),
            self.kubernetes_cache_bytes.get_or_create(&l).clone(),
        )
    }

    /// The Kubernetes API error counter of source `id` for `reason`.
    pub fn kubernetes_api_error(&self, id: &str, reason: &'static str) -> Counter {
        self.kubernetes_api_errors
            .get_or_create(&ReasonLabels {
                component: id.to_string(),
                reason: reason.to_string(),
            })
            .clone()
    }

    /// Handles of the disk buffer in front of sink `id`.
    pub fn buffer(&self, id: &str) -> BufferMetrics {
        let labels = SinkLabels {
            component: id.to_string(),
        };
        BufferMetrics {
            bytes: self.buffer_bytes.get_or_create(&labels).clone(),
            records: self.buffer_records.get_or_create(&labels).clone(),
            corrupt_frames: self.buffer_corrupt_frames.get_or_create(&labels).clone(),
            torn_writes: self.buffer_torn_writes.get_or_create(&labels).clone(),
            write_errors: self.buffer_write_errors.clone(),
            id: id.to_string(),
        }
    }

    /// Handles of the checkpoint file of source `id`; the watchdog sees
    /// every one given out (see [`Metrics::checkpoints`]).
    pub fn checkpoint(&self, id: &str) -> CheckpointMetrics {
        let labels = SinkLabels {
            component: id.to_string(),
        };
        if let Ok(all) = self.checkpoints.lock()
            && let Some(c) = all.iter().find(|c| c.id == id)
        {
            return c.clone();
        }
        let handles = CheckpointMetrics {
            id: id.to_string(),
            write_errors: self.checkpoint_write_errors.clone(),
            save_failing: self.checkpoint_save_failing.get_or_create(&labels).clone(),
            corrupt: self.checkpoint_corrupt.get_or_create(&labels).clone(),
            failure: Arc::default(),
        };
        if let Ok(mut all) = self.checkpoints.lock() {
            all.push(handles.clone());
        }
        handles
    }

    /// Every checkpoint handle given out.
    pub fn checkpoints(&self) -> Vec<CheckpointMetrics> {
        self.checkpoints.lock().map(|all| all.clone()).unwrap_or_default()
    }

    /// The counter of records route `id` sends to its output `output`.
    pub fn route_output(&self, id: &str, output: &str) -> Counter {
        self.route_output_events
            .get_or_create(&OutputLabels {
                component: id.to_string(),
                output: output.to_string(),
            })
            .clone()
    }

    /// Counter handles of one component.
    pub fn component(&self, id: &str, kind: &str) -> ComponentMetrics {
        let labels = ComponentLabels {
            component: id.to_string(),
            kind: kind.to_string(),
        };
        let handles = ComponentMetrics {
            id: id.to_string(),
            kind: kind.to_string(),
            received_events: self.received_events.get_or_create(&labels).clone(),
            received_bytes: self.received_bytes.get_or_create(&labels).clone(),
            sent_events: self.sent_events.get_or_create(&labels).clone(),
            sent_bytes: self.sent_bytes.get_or_create(&labels).clone(),
            files_open: self.files_open.get_or_create(&labels).clone(),
            connections: self.connections.get_or_create(&labels).clone(),
            acked_events: self.acked_events.get_or_create(&labels).clone(),
            failed_events: self.failed_events.get_or_create(&labels).clone(),
            unacked_events: self.unacked_events.get_or_create(&labels).clone(),
            objects_written: self.objects_written.get_or_create(&labels).clone(),
            objects_closed: self.objects_closed.clone(),
            discarded: self.discarded.clone(),
            discarded_total: self.discarded_total.get_or_create(&labels).clone(),
            dead_letters: self.dead_letters.clone(),
            line_issues: self.line_issues.clone(),
            sink_errors: self.sink_errors.clone(),
            http_requests: self.http_requests.clone(),
            handshake_failures: self.handshake_failures.clone(),
            retries: self.retries.get_or_create(&labels).clone(),
            redactions: self.redactions.clone(),
            firehose_records_sent: self.firehose_records_sent.clone(),
            kinesis_records_sent: self.kinesis_records_sent.clone(),
        };
        if let Ok(mut all) = self.components.lock()
            && !all.iter().any(|c| c.id == id)
        {
            all.push(handles.clone());
        }
        handles
    }

    /// Records settled (acknowledged or given up) and records still waiting,
    /// over every source: what the watchdog tells progress by.
    pub fn delivery_progress(&self) -> (u64, i64) {
        self.components
            .lock()
            .map(|all| {
                all.iter().fold((0, 0), |(settled, waiting), c| {
                    (
                        settled + c.acked_events.get() + c.failed_events.get(),
                        waiting + c.unacked_events.get().max(0),
                    )
                })
            })
            .unwrap_or_default()
    }

    /// (component, kind, received, sent) of every component, for the exit log.
    pub fn totals(&self) -> Vec<(String, String, u64, u64)> {
        self.components
            .lock()
            .map(|all| {
                all.iter()
                    .map(|c| {
                        (
                            c.id.clone(),
                            c.kind.clone(),
                            c.received_events.get(),
                            c.sent_events.get(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The whole registry in the text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Per-component handles; cheap to clone.
#[derive(Clone, Debug)]
pub struct ComponentMetrics {
    pub id: String,
    pub kind: String,
    pub received_events: Counter,
    pub received_bytes: Counter,
    pub sent_events: Counter,
    pub sent_bytes: Counter,
    pub files_open: Gauge,
    pub connections: Gauge,
    pub acked_events: Counter,
    pub failed_events: Counter,
    pub unacked_events: Gauge,
    pub objects_written: Counter,
    pub retries: Counter,
    objects_closed: Family<ReasonLabels, Counter>,
    redactions: Family<DetectorLabels, Counter>,
    discarded: Family<ReasonLabels, Counter>,
    /// All of this component's discarded records, whatever the reason.
    pub discarded_total: Counter,
    dead_letters: Family<ReasonLabels, Counter>,
    line_issues: Family<ReasonLabels, Counter>,
    sink_errors: Family<ReasonLabels, Counter>,
    http_requests: Family<StatusLabels, Counter>,
    handshake_failures: Family<ReasonLabels, Counter>,
    firehose_records_sent: Family<SinkLabels, Counter>,
    kinesis_records_sent: Family<SinkLabels, Counter>,
}

impl ComponentMetrics {
    fn labels(&self, reason: &str) -> ReasonLabels {
        ReasonLabels {
            component: self.id.clone(),
            reason: reason.to_string(),
        }
    }

    /// Records dropped on purpose. Also logs, so logs and metrics agree.
    pub fn discarded(&self, reason: &'static str, count: u64) {
        if count == 0 {
            return;
        }
        self.discarded.get_or_create(&self.labels(reason)).inc_by(count);
        self.discarded_total.inc_by(count);
        tracing::debug!(component = %self.id, reason, count, "records discarded");
    }

    /// Discarded records that were written to the dead-letter directory.
    pub fn dead_letters(&self, reason: &'static str, count: u64) {
        self.dead_letters.get_or_create(&self.labels(reason)).inc_by(count);
    }

    /// A handle for a line issue counter (resolve once, bump per batch).
    pub fn line_issue(&self, reason: &'static str) -> Counter {
        self.line_issues.get_or_create(&self.labels(reason)).clone()
    }

    /// The handle of `logferry_redactions_total` for one detector (resolve
    /// once, bump per batch).
    pub fn redactions(&self, detector: &str) -> Counter {
        self.redactions
            .get_or_create(&DetectorLabels {
                component: self.id.clone(),
                detector: detector.to_string(),
            })
            .clone()
    }

    /// The handle of `logferry_sink_objects_closed_total` for one reason
    /// (an object sink resolves its four once, at start).
    pub fn objects_closed(&self, reason: &'static str) -> Counter {
        self.objects_closed.get_or_create(&self.labels(reason)).clone()
    }

    pub fn sink_error(&self, reason: &'static str) {
        self.sink_errors.get_or_create(&self.labels(reason)).inc();
    }

    /// An http sink request, by the class of its answer (or `error`).
    pub fn http_request(&self, status: &'static str) {
        self.http_requests
            .get_or_create(&StatusLabels {
                component: self.id.clone(),
                status: status.to_string(),
            })
            .inc();
    }

    /// A forward-protocol handshake that failed (once per connection).
    pub fn handshake_failure(&self, reason: &'static str) {
        self.handshake_failures.get_or_create(&self.labels(reason)).inc();
    }

    /// The handle of `logferry_firehose_records_sent_total` for this
    /// component (a Firehose sink resolves it once, at start).
    pub fn firehose_records_sent(&self) -> Counter {
        self.firehose_records_sent
            .get_or_create(&SinkLabels {
                component: self.id.clone(),
            })
            .clone()
    }

    /// The handle of `logferry_kinesis_records_sent_total` for this
    /// component (a Kinesis sink resolves it once, at start).
    pub fn kinesis_records_sent(&self) -> Counter {
        self.kinesis_records_sent
            .get_or_create(&SinkLabels {
                component: self.id.clone(),
            })
            .clone()
    }
}

/// Handles of one disk buffer.
#[derive(Clone, Debug)]
pub struct BufferMetrics {
    pub bytes: Gauge,
    pub records: Gauge,
    pub corrupt_frames: Counter,
    pub torn_writes: Counter,
    write_errors: Family<ReasonLabels, Counter>,
    id: String,
}

impl BufferMetrics {
    /// Counts a failed write (`reason` from [`io_reason`]).
    pub fn write_error(&self, reason: &'static str) {
        self.write_errors
            .get_or_create(&ReasonLabels {
                component: self.id.clone(),
                reason: reason.to_string(),
            })
            .inc();
    }
}

/// Handles of one source's checkpoint file. `failure` is what the watchdog
/// reads for `/readyz` (see `checkpoint::SaveHealth`, which writes it).
#[derive(Clone, Debug)]
pub struct CheckpointMetrics {
    pub id: String,
    write_errors: Family<ReasonLabels, Counter>,
    pub save_failing: Gauge,
    pub corrupt: Counter,
    pub failure: Arc<std::sync::Mutex<Option<SaveFailure>>>,
}

/// Saves of a checkpoint file failing: since when, and the last reason.
#[derive(Clone, Copy, Debug)]
pub struct SaveFailure {
    pub since: std::time::Instant,
    pub reason: &'static str,
}

impl CheckpointMetrics {
    /// Counts a failed save (`reason` from [`io_reason`]).
    pub fn write_error(&self, reason: &'static str) {
        self.write_errors
            .get_or_create(&ReasonLabels {
                component: self.id.clone(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The failure in progress, if saves fail now.
    pub fn failure(&self) -> Option<SaveFailure> {
        self.failure.lock().map(|f| *f).unwrap_or_else(|e| *e.into_inner())
    }

    pub fn set_failure(&self, f: Option<SaveFailure>) {
        match self.failure.lock() {
            Ok(mut g) => *g = f,
            Err(e) => *e.into_inner() = f,
        }
    }
}

/// The `reason` label of a failed disk write: a closed set, so the label
/// stays low-cardinality whatever the OS reports.
pub fn io_reason(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::StorageFull => "no_space",
        K::QuotaExceeded => "quota",
        K::ReadOnlyFilesystem => "read_only",
        K::PermissionDenied => "permission_denied",
        K::NotFound => "not_found",
        _ => "io",
    }
}

pub type SharedMetrics = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_up_in_text_format() {
        let m = Metrics::new();
        let c = m.component("app", "file");
        c.received_events.inc_by(42);
        c.discarded("empty_line", 3);
        c.line_issue("not_json").inc_by(2);
        let text = m.encode();
        assert!(
            text.contains(r#"logferry_component_received_events_total{component="app",kind="file"} 42"#),
            "{text}"
        );
        assert!(text.contains(r#"logferry_component_discarded_events_total{component="app",reason="empty_line"} 3"#));
        assert!(text.contains(r#"logferry_source_line_issues_total{component="app",reason="not_json"} 2"#));
        m.component("fh", "firehose").firehose_records_sent().inc_by(7);
        let text = m.encode();
        assert!(
            text.contains(r#"logferry_firehose_records_sent_total{component="fh"} 7"#),
            "{text}"
        );
    }
}
