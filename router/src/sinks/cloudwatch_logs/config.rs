//! `[sinks.<id>] type = "cloudwatch_logs"`.

use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::confdiag::{Ctx, Seg};
use crate::template::Template;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudWatchLogsSinkConfig {
    /// Log group template, e.g. `/ecs/{ecs_task_definition}`.
    pub log_group: String,
    /// Log stream template, e.g. `{container_name}/{ecs_task_id}`.
    pub log_stream: String,
    /// Create the group and stream when they do not exist.
    #[serde(default = "default_true")]
    pub create_missing: bool,
    /// Retention applied when the sink creates a group.
    pub retention_days: Option<i32>,
    /// `STANDARD` or `INFREQUENT_ACCESS`, for groups the sink creates.
    pub log_group_class: Option<String>,
    /// Longest time an event waits before it is sent.
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Largest event, counting CloudWatch's 26 bytes of overhead; longer
    /// messages are truncated with a marker and counted.
    #[serde(default = "default_max_event_size")]
    pub max_event_size: ByteSize,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    /// Send only this top-level field's value instead of the whole record
    /// (Fluent Bit's `log_key`): a string as its text, anything else as JSON.
    /// Records without it are dropped and counted (`log_key_missing`).
    pub log_key: Option<String>,
    /// Key of the event time the source added: `@timestamp` (default), `""`
    /// to leave it out, or another name. The record's own keys are kept.
    pub timestamp_key: Option<String>,
    /// `json/emf`: PutLogEvents carries `x-amzn-logs-format: json/emf`, so
    /// CloudWatch extracts Embedded Metric Format metrics from the events.
    pub log_format: Option<String>,
}

/// The one `log_format` CloudWatch Logs knows.
pub const EMF: &str = "json/emf";

fn default_true() -> bool {
    true
}

fn default_flush_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_max_event_size() -> ByteSize {
    ByteSize::kib(256)
}

/// Values PutRetentionPolicy accepts.
const RETENTION_DAYS: &[i32] = &[
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653,
];

impl CloudWatchLogsSinkConfig {
    /// What this sink writes for one record (`log_key`, `timestamp_key`).
    pub fn record_format(&self) -> crate::sinks::encoding::RecordFormat {
        crate::sinks::encoding::RecordFormat::new(self.log_key.as_deref(), self.timestamp_key.as_deref())
    }

    pub fn validate(&self, ctx: &mut Ctx<'_>, base: &[Seg]) -> bool {
        let at = |k: &str| crate::confdiag::key(base, k);
        let mut ok = true;
        for (key, value) in [("log_group", &self.log_group), ("log_stream", &self.log_stream)] {
            if value.is_empty() {
                ctx.error(&at(key), "must not be empty");
                ok = false;
            } else if let Err(e) = Template::parse(value) {
                ctx.error(&at(key), e.to_string());
                ok = false;
            }
        }
        if let Some(d) = self.retention_days
            && !RETENTION_DAYS.contains(&d)
        {
            ctx.error(
                &at("retention_days"),
                format!("{d} is not a retention CloudWatch accepts ({RETENTION_DAYS:?})"),
            );
            ok = false;
        }
        if let Some(c) = &self.log_group_class
            && !["STANDARD", "INFREQUENT_ACCESS"].contains(&c.as_str())
        {
            ctx.error(
                &at("log_group_class"),
                format!("`{c}`: expected STANDARD or INFREQUENT_ACCESS"),
            );
            ok = false;
        }
        let size = self.max_event_size.as_u64();
        if !(1024..=1024 * 1024).contains(&size) {
            ctx.error(&at("max_event_size"), "must be between 1KiB and 1MiB");
            ok = false;
        }
        if self.flush_interval < Duration::from_millis(10) {
            ctx.error(&at("flush_interval"), "must be at least 10ms");
            ok = false;
        }
        ok &= crate::sinks::encoding::RecordFormat::validate(self.log_key.as_deref(), ctx, base);
        if let Some(f) = &self.log_format
            && f != EMF
        {
            ctx.error(&at("log_format"), format!("`{f}`: the only format is `{EMF}`"));
            ok = false;
        }
        ok
    }
}
