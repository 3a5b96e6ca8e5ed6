//! `[sinks.<id>] type = "firehose"`.

use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::confdiag::{Ctx, Seg};

/// Firehose's limit on one record's data (before base64): 1,000 KiB.
pub const MAX_RECORD_SIZE: u64 = 1000 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirehoseSinkConfig {
    /// Name of the delivery stream (Direct PUT) the records go to.
    pub delivery_stream: String,
    /// Region; default from the environment, profile or instance metadata.
    pub region: Option<String>,
    /// Endpoint override (LocalStack, VPC endpoints); `AWS_ENDPOINT_URL` and
    /// `AWS_ENDPOINT_URL_FIREHOSE` work too.
    pub endpoint_url: Option<String>,
    /// Longest time a log record waits in the sink before it is sent.
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Bytes of newline-delimited log records packed into one Firehose
    /// record; at most Firehose's limit of 1000KiB (the default). A single
    /// log record longer than this is dropped and counted.
    #[serde(default = "default_max_record_size")]
    pub max_record_size: ByteSize,
    /// Calls a record Firehose keeps rejecting (`FailedPutCount`) is sent
    /// again before it goes to the dead letters; 0 retries forever.
    #[serde(default = "default_max_record_retries")]
    pub max_record_retries: u32,
    /// Send only this top-level field's value instead of the whole record
    /// (Fluent Bit's `log_key`): a string as its text, anything else as JSON.
    /// Records without it are dropped and counted (`log_key_missing`).
    pub log_key: Option<String>,
    /// Key of the event time the source added: `@timestamp` (default), `""`
    /// to leave it out, or another name. The record's own keys are kept.
    pub timestamp_key: Option<String>,
}

fn default_max_record_retries() -> u32 {
    20
}

fn default_flush_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_max_record_size() -> ByteSize {
    ByteSize::b(MAX_RECORD_SIZE)
}

impl FirehoseSinkConfig {
    /// What this sink writes for one record (`log_key`, `timestamp_key`).
    pub fn record_format(&self) -> crate::sinks::encoding::RecordFormat {
        crate::sinks::encoding::RecordFormat::new(self.log_key.as_deref(), self.timestamp_key.as_deref())
    }

    pub fn validate(&self, ctx: &mut Ctx<'_>, base: &[Seg]) -> bool {
        let at = |k: &str| crate::confdiag::key(base, k);
        let mut ok = true;
        let name = &self.delivery_stream;
        let name_ok = (1..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
        if !name_ok {
            ctx.error(
                &at("delivery_stream"),
                format!("`{name}` is not a valid delivery stream name (1-64 of A-Z a-z 0-9 _ . -)"),
            );
            ok = false;
        }
        let size = self.max_record_size.as_u64();
        if !(1024..=MAX_RECORD_SIZE).contains(&size) {
            ctx.error(
                &at("max_record_size"),
                "must be between 1KiB and 1000KiB (Firehose's record size limit)",
            );
            ok = false;
        }
        if self.flush_interval < Duration::from_millis(10) {
            ctx.error(&at("flush_interval"), "must be at least 10ms");
            ok = false;
        }
        ok &= crate::sinks::encoding::RecordFormat::validate(self.log_key.as_deref(), ctx, base);
        ok
    }
}
