//! `[sinks.<id>] type = "kinesis_streams"`.

use std::time::Duration;

use serde::Deserialize;

use crate::confdiag::{Ctx, Seg};
use crate::template::Template;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KinesisSinkConfig {
    /// Name of the data stream.
    pub stream: String,
    /// Template of each record's partition key (`{tag}`,
    /// `{ecs_task_id}`, `{kubernetes.pod_name}`, literals, `%H`). Unset, or
    /// a record lacking one of its fields: a random key, so records spread
    /// over the shards.
    pub partition_key: Option<String>,
    /// Region; default from the environment, profile or instance metadata.
    pub region: Option<String>,
    /// Endpoint override (LocalStack, VPC endpoints); `AWS_ENDPOINT_URL` and
    /// `AWS_ENDPOINT_URL_KINESIS` work too.
    pub endpoint_url: Option<String>,
    /// Longest time a log record waits in the sink before it is sent.
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Calls a record Kinesis keeps rejecting is sent again before it goes
    /// to the dead letters; 0 retries forever.
    #[serde(default = "default_max_record_retries")]
    pub max_record_retries: u32,
    /// Pack log records into KPL aggregated records (magic, protobuf, MD5)
    /// that KCL consumers and Lambda's deaggregation read back.
    #[serde(default)]
    pub aggregation: bool,
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

impl KinesisSinkConfig {
    /// What this sink writes for one record (`log_key`, `timestamp_key`).
    pub fn record_format(&self) -> crate::sinks::encoding::RecordFormat {
        crate::sinks::encoding::RecordFormat::new(self.log_key.as_deref(), self.timestamp_key.as_deref())
    }

    pub fn validate(&self, ctx: &mut Ctx<'_>, base: &[Seg]) -> bool {
        let at = |k: &str| crate::confdiag::key(base, k);
        let mut ok = true;
        let name = &self.stream;
        let name_ok = (1..=128).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
        if !name_ok {
            ctx.error(
                &at("stream"),
                format!("`{name}` is not a valid stream name (1-128 of A-Z a-z 0-9 _ . -)"),
            );
            ok = false;
        }
        if let Some(k) = &self.partition_key {
            if k.is_empty() {
                ctx.error(&at("partition_key"), "must not be empty (leave it out for random keys)");
                ok = false;
            } else if let Err(e) = Template::parse(k) {
                ctx.error(&at("partition_key"), e.to_string());
                ok = false;
            }
        }
        if self.flush_interval < Duration::from_millis(10) {
            ctx.error(&at("flush_interval"), "must be at least 10ms");
            ok = false;
        }
        ok &= crate::sinks::encoding::RecordFormat::validate(self.log_key.as_deref(), ctx, base);
        ok
    }
}
