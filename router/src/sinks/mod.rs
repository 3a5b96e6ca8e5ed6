//! Sinks: where records go. Each one acknowledges a batch (by dropping its
//! token) only once the batch is durable at the destination.

pub mod aws;
pub mod blackhole;
pub mod cloudwatch_logs;
pub mod encoding;
pub mod file;
pub mod firehose;
pub mod forward;
pub mod http;
pub mod kinesis;
pub mod object;
pub mod records;
pub mod s3;
pub mod stdout;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::api::Health;
use crate::confdiag::{Ctx, Seg, checked, deserialize_at};
use crate::dead_letter::DeadLetters;
use crate::metrics::ComponentMetrics;

/// What every sink is handed besides its config and input.
pub struct SinkContext {
    pub id: String,
    pub m: ComponentMetrics,
    /// `/readyz`: a sink marks itself failing while a permanent error lasts.
    pub health: Arc<Health>,
    /// Stop retrying: the sources have saved checkpoints without what is left.
    pub stop: CancellationToken,
    /// Where records rejected for good go.
    pub dead: Arc<DeadLetters>,
    /// `global.memory_limit`, for what the sink buffers (see `memory.rs`).
    pub memory: Arc<tokio::sync::Semaphore>,
    /// The size of that limit in bytes.
    pub memory_limit: usize,
}

/// The configuration of one sink, by `type`.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    File(file::FileSinkConfig),
    Stdout(stdout::StdoutSinkConfig),
    Blackhole(blackhole::BlackholeSinkConfig),
    S3(s3::S3SinkConfig),
    CloudWatchLogs(cloudwatch_logs::CloudWatchLogsSinkConfig),
    Firehose(firehose::FirehoseSinkConfig),
    Forward(forward::ForwardSinkConfig),
    Http(http::HttpSinkConfig),
    Kinesis(kinesis::KinesisSinkConfig),
}

const KINDS: &str = "s3, cloudwatch_logs, firehose, kinesis_streams, forward, http, file, stdout, blackhole";

impl SinkConfig {
    pub fn build(ctx: &mut Ctx<'_>, base: &[Seg], kind: &str, value: toml::Value) -> Option<Self> {
        match kind {
            "file" => checked(ctx, base, value, file::FileSinkConfig::validate).map(SinkConfig::File),
            "s3" => checked(ctx, base, value, s3::S3SinkConfig::validate).map(SinkConfig::S3),
            "cloudwatch_logs" => checked(ctx, base, value, cloudwatch_logs::CloudWatchLogsSinkConfig::validate)
                .map(SinkConfig::CloudWatchLogs),
            "firehose" => checked(ctx, base, value, firehose::FirehoseSinkConfig::validate).map(SinkConfig::Firehose),
            "kinesis_streams" => {
                checked(ctx, base, value, kinesis::KinesisSinkConfig::validate).map(SinkConfig::Kinesis)
            }
            "forward" => checked(ctx, base, value, forward::ForwardSinkConfig::validate).map(SinkConfig::Forward),
            "http" => checked(ctx, base, value, http::HttpSinkConfig::validate).map(SinkConfig::Http),
            "stdout" => checked(ctx, base, value, stdout::StdoutSinkConfig::validate).map(SinkConfig::Stdout),
            "blackhole" => deserialize_at(ctx, base, value).map(SinkConfig::Blackhole),
            other => {
                ctx.error(base, format!("unknown sink type `{other}`, expected one of: {KINDS}"));
                None
            }
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::File(_) => "file",
            SinkConfig::Stdout(_) => "stdout",
            SinkConfig::Blackhole(_) => "blackhole",
            SinkConfig::S3(_) => "s3",
            SinkConfig::CloudWatchLogs(_) => "cloudwatch_logs",
            SinkConfig::Firehose(_) => "firehose",
            SinkConfig::Forward(_) => "forward",
            SinkConfig::Http(_) => "http",
            SinkConfig::Kinesis(_) => "kinesis_streams",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            SinkConfig::File(c) => format!(
                "file: {}/{}*{}, max_object_size {}, flush_interval {}{}",
                c.path.display(),
                c.key_prefix,
                c.compression.extension(),
                c.max_object_size.display().iec(),
                humantime::format_duration(c.flush_interval),
                c.record_format().describe()
            ),
            SinkConfig::S3(c) => format!(
                "s3: s3://{}/{}*{}, max_object_size {}, flush_interval {}{}{}",
                c.bucket,
                c.key_prefix,
                c.compression.extension(),
                c.max_object_size.display().iec(),
                humantime::format_duration(c.flush_interval),
                c.endpoint_url
                    .as_deref()
                    .map(|e| format!(", endpoint {e}"))
                    .unwrap_or_default(),
                c.record_format().describe()
            ),
            SinkConfig::CloudWatchLogs(c) => format!(
                "cloudwatch_logs: group {}, stream {}, create_missing {}{}{}",
                c.log_group,
                c.log_stream,
                c.create_missing,
                c.record_format().describe(),
                c.log_format
                    .as_deref()
                    .map(|f| format!(", log_format {f}"))
                    .unwrap_or_default()
            ),
            SinkConfig::Firehose(c) => format!(
                "firehose: {}, max_record_size {}, flush_interval {}{}{}",
                c.delivery_stream,
                c.max_record_size.display().iec(),
                humantime::format_duration(c.flush_interval),
                c.endpoint_url
                    .as_deref()
                    .map(|e| format!(", endpoint {e}"))
                    .unwrap_or_default(),
                c.record_format().describe()
            ),
            SinkConfig::Kinesis(c) => format!(
                "kinesis_streams: {}, partition_key {}, aggregation {}, flush_interval {}{}{}",
                c.stream,
                c.partition_key.as_deref().unwrap_or("(random)"),
                c.aggregation,
                humantime::format_duration(c.flush_interval),
                c.endpoint_url
                    .as_deref()
                    .map(|e| format!(", endpoint {e}"))
                    .unwrap_or_default(),
                c.record_format().describe()
            ),
            SinkConfig::Forward(c) => format!(
                "forward: {}{}:{}, tag {}, require_ack {}, compression {}, max_chunk_size {}, flush_interval {}{}",
                if c.tls.enabled { "tls://" } else { "" },
                c.host,
                c.port,
                c.tag.as_deref().unwrap_or("(the batch's, else logferry)"),
                c.require_ack,
                match c.compression {
                    forward::ForwardCompression::None => "none",
                    forward::ForwardCompression::Gzip => "gzip",
                },
                c.max_chunk_size.display().iec(),
                humantime::format_duration(c.flush_interval),
                match (&c.shared_key, &c.username) {
                    (Some(_), Some(u)) => format!(", shared_key handshake as user `{u}`"),
                    (Some(_), None) => ", shared_key handshake".to_string(),
                    _ => String::new(),
                }
            ),
            SinkConfig::Http(c) => format!(
                "http: {} {}, encoding {:?}, framing {:?}, compression {:?}, batch {} / {} records, flush_interval {}{}{}{}{}",
                match c.method {
                    http::HttpMethod::Post => "POST",
                    http::HttpMethod::Put => "PUT",
                },
                http::shown_uri(c),
                c.encoding,
                c.framing,
                c.compression,
                c.batch.max_bytes.display().iec(),
                c.batch.max_events,
                humantime::format_duration(c.flush_interval),
                match &c.auth {
                    Some(http::HttpAuth::Basic { user, .. }) => format!(", basic auth as `{user}`"),
                    Some(http::HttpAuth::Bearer { .. }) => ", bearer token".to_string(),
                    None => String::new(),
                },
                // Names only: header values are secrets.
                if c.headers.is_empty() {
                    String::new()
                } else {
                    format!(", headers {}", c.headers.keys().cloned().collect::<Vec<_>>().join(", "))
                },
                if c.labels.is_empty() {
                    String::new()
                } else {
                    let l: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!(", labels {}", l.join(" "))
                },
                c.record_format().describe()
            ),
            SinkConfig::Stdout(_) => "stdout".to_string(),
            SinkConfig::Blackhole(_) => "blackhole".to_string(),
        }
    }
}
