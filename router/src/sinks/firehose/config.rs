//! `[sinks.<id>] type = "firehose"`.

use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::config::{Ctx, Seg};

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
        let at = |k: &str| {
            let mut p = base.to_vec();
            p.push(Seg::Key(k.into()));
            p
        };
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

#[cfg(test)]
mod tests {
    use crate::config::load_str;
    use crate::sinks::SinkConfig;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn config(sink: &str) -> String {
        format!(
            r#"
[sources.app]
type = "file"
include = ["/var/log/app/*.log"]

[sinks.fh]
type = "firehose"
inputs = ["app"]
{sink}
"#
        )
    }

    #[test]
    fn defaults() {
        let c = load_str(&config("delivery_stream = \"my-stream\""), "t.toml", &no_env).unwrap();
        let SinkConfig::Firehose(f) = &c.sinks[0].inner else {
            panic!("not a firehose sink: {:?}", c.sinks[0].inner)
        };
        assert_eq!(f.delivery_stream, "my-stream");
        assert_eq!(f.max_record_size.as_u64(), 1_024_000);
        assert_eq!(f.flush_interval, std::time::Duration::from_secs(1));
        assert!(f.region.is_none() && f.endpoint_url.is_none());
        assert!(c.describe().contains("firehose: my-stream"), "{}", c.describe());
    }

    #[test]
    fn all_options() {
        let text = config(
            r#"delivery_stream = "s"
region = "eu-west-1"
endpoint_url = "http://127.0.0.1:4566"
flush_interval = "250ms"
max_record_size = "64KiB""#,
        );
        let c = load_str(&text, "t.toml", &no_env).unwrap();
        let SinkConfig::Firehose(f) = &c.sinks[0].inner else {
            panic!("not a firehose sink")
        };
        assert_eq!(f.region.as_deref(), Some("eu-west-1"));
        assert_eq!(f.max_record_size.as_u64(), 65536);
        assert_eq!(f.flush_interval, std::time::Duration::from_millis(250));
    }

    fn errs(sink: &str) -> Vec<String> {
        match load_str(&config(sink), "t.toml", &no_env) {
            Ok(_) => panic!("expected errors for {sink}"),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn errors_name_the_key() {
        let e = errs("delivery_stream = \"s\"\nmax_record_size = \"1001KiB\"");
        assert!(e[0].contains("`sinks.fh.max_record_size`"), "{e:?}");
        let e = errs("delivery_stream = \"no spaces\"");
        assert!(e[0].contains("`sinks.fh.delivery_stream`"), "{e:?}");
        let e = errs("delivery_stream = \"s\"\nflush_interval = \"1ms\"");
        assert!(e[0].contains("`sinks.fh.flush_interval`"), "{e:?}");
        let e = errs("delivery_stream = \"s\"\nbucket = \"x\"");
        assert!(e[0].contains("unknown field `bucket`"), "{e:?}");
        let e = errs("region = \"us-east-1\"");
        assert!(e[0].contains("delivery_stream"), "{e:?}");
    }
}
