//! What is accepted without effect. The invariant (ARCHITECTURE.md): a
//! Fluent Bit key is mapped, listed here as a note, or an error naming its
//! line; never silently ignored.

use super::syntax::Section;
use super::translate::Tr;

/// Keys any plugin section may carry that change nothing here.
pub(super) const HARMLESS_ANY: &[&str] = &[
    "alias",
    "log_level",
    "workers",
    "threaded",
    "storage.type",
    "storage.pause_on_chunks_overlimit",
    "storage.total_limit_size",
    "auto_retry_requests",
    "extra_user_agent",
    "tls",
    "tls.verify",
    "net.keepalive",
    "net.keepalive_idle_timeout",
    "net.connect_timeout",
];

pub(super) const HARMLESS_SERVICE: &[&str] = &[
    "daemon",
    "log_level",
    "parsers_file",
    "log_file",
    "health_check",
    "hc_errors_count",
    "hc_retry_failure_count",
    "hc_period",
    "storage.sync",
    "storage.checksum",
    "storage.metrics",
    "storage.backlog.mem_limit",
    "storage.max_chunks_up",
    "storage.delete_irrecoverable_chunks",
    "http_port",
    "http_listen",
    "http_server",
    "flush",
    "grace",
    "storage.path",
];

pub(super) const INPUTS: &str = "forward (and the FireLens health check `tcp` input tagged firelens-healthcheck)";
pub(super) const FILTERS: &str = "record_modifier, grep, parser, multiline (Mode partial_message)";
pub(super) const OUTPUTS: &str =
    "cloudwatch_logs (cloudwatch), kinesis_firehose (firehose), kinesis_streams, s3, http, loki, null, stdout";

impl Tr {
    /// Reports every key of `section` not in `known` (mapped) or harmless.
    pub(super) fn check_keys(&mut self, section: &Section, what: &str, known: &[&str], harmless: &[&str]) {
        for e in &section.entries {
            let k = e.key.to_ascii_lowercase();
            if known.contains(&k.as_str()) || k == "name" {
                continue;
            }
            if harmless.contains(&k.as_str()) || HARMLESS_ANY.contains(&k.as_str()) {
                self.notes.push(format!(
                    "{}:{}: `{}` of {what} accepted, no effect in Logferry",
                    e.pos.file, e.pos.line, e.key
                ));
                continue;
            }
            let mut supported: Vec<&str> = known.to_vec();
            supported.sort_unstable();
            self.errors.push(e.pos.error(format!(
                "`{}` of {what} is not supported by Logferry (supported: {})",
                e.key,
                supported.join(", ")
            )));
        }
    }
}
