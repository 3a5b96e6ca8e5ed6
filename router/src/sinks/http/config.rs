//! `[sinks.<id>] type = "http"`.
//!
//! Names follow what users of Vector's `http` sink and Fluent Bit's
//! `out_http` already write (`uri`, `method`, `headers`, `auth.strategy`,
//! `batch.max_bytes`, `batch.max_events`, `tls.ca_file`), in Logferry's
//! shapes (`flush_interval`, `compression`, `tls.verify` as in the forward
//! sink).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use hyper::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use crate::confdiag::{Ctx, Secret, Seg};

/// Largest `batch.max_bytes`: a request body is held in memory until the
/// server answered 2xx, and SaaS intake APIs refuse bigger bodies anyway
/// (Datadog 5 MB, Splunk HEC 1 MB by default, New Relic 1 MB compressed).
pub const MAX_BATCH_BYTES: u64 = 10 * 1024 * 1024;

/// Headers the sink sets itself; configuring them would break the body.
const MANAGED_HEADERS: &[&str] = &["content-length", "content-encoding", "transfer-encoding", "host"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// Where requests go: `http://` or `https://`, path and query included.
    pub uri: String,
    #[serde(default)]
    pub method: HttpMethod,
    /// The body: one JSON record per line, or one JSON array of records.
    #[serde(default)]
    pub encoding: HttpEncoding,
    /// How each record is wrapped for the backend's bulk API.
    #[serde(default)]
    pub framing: Framing,
    #[serde(default)]
    pub compression: HttpCompression,
    /// `framing = "loki"`: the stream labels, name to template (`{level}`,
    /// `{kubernetes.namespace}`, `{tag[1]}`); rendered per record.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `framing = "loki"`: the line is this top-level field's value (a
    /// string as its text) instead of the whole record, as Fluent Bit's
    /// `log_key`. Records without it are dropped and counted
    /// (`log_key_missing`).
    pub log_key: Option<String>,
    /// Key of the event time the source added: `@timestamp` (default), `""`
    /// to leave it out, or another name. The record's own keys are kept.
    pub timestamp_key: Option<String>,
    /// Extra request headers (API keys: `DD-API-KEY = "${DD_API_KEY}"`).
    /// Values are secrets: never logged, marked sensitive for hyper.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    pub auth: Option<HttpAuth>,
    #[serde(default)]
    pub batch: BatchOptions,
    /// Longest time a record waits in the sink before its request is sent.
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    pub flush_interval: Duration,
    /// One attempt (connect, send, read the answer) may take this long;
    /// then it is retried.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Longest pause a `Retry-After` answer may ask for; longer asks wait
    /// this long.
    #[serde(default = "default_max_retry_after", with = "humantime_serde")]
    pub max_retry_after: Duration,
    #[serde(default)]
    pub tls: HttpTls,
    /// `logferry check` sends a GET here and wants a 2xx; without it, check
    /// sends a HEAD to `uri` (see `check` in `mod.rs`).
    pub healthcheck_uri: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    #[serde(alias = "post")]
    Post,
    #[serde(alias = "put")]
    Put,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HttpEncoding {
    /// `application/x-ndjson`: each record and a newline.
    #[default]
    Ndjson,
    /// `application/json`: `[record,record,...]`.
    JsonArray,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// The record as it is.
    #[default]
    None,
    /// Splunk HEC `/services/collector/event`: `{"time":<s>,"event":record}`.
    SplunkHec,
    /// OpenSearch / Elasticsearch `_bulk`: `{"index":{}}` then the record.
    OpensearchBulk,
    /// Grafana Loki `/loki/api/v1/push` JSON: records grouped into streams
    /// by their `labels`, each `["<ns>","<record>"]`.
    Loki,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HttpCompression {
    #[default]
    None,
    /// The body gzipped, `Content-Encoding: gzip`.
    Gzip,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "strategy", rename_all = "lowercase", deny_unknown_fields)]
pub enum HttpAuth {
    Basic { user: String, password: Secret },
    Bearer { token: Secret },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchOptions {
    /// Uncompressed bytes of records in one request (framing included).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// Records in one request.
    #[serde(default = "default_max_events")]
    pub max_events: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            max_bytes: default_max_bytes(),
            max_events: default_max_events(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTls {
    /// PEM file of the certificates to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Check the server's certificate; `false` accepts any (tests only).
    #[serde(default = "default_true")]
    pub verify: bool,
}

impl Default for HttpTls {
    fn default() -> Self {
        HttpTls {
            ca_file: None,
            verify: true,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_max_bytes() -> ByteSize {
    ByteSize::mib(1)
}

fn default_max_events() -> usize {
    1000
}

fn default_flush_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_max_retry_after() -> Duration {
    Duration::from_secs(60)
}

/// Is `uri` an absolute http(s) URI with a host?
fn check_uri(uri: &str) -> Result<hyper::Uri, String> {
    let u: hyper::Uri = uri.parse().map_err(|e| format!("not a URI: {e}"))?;
    match u.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("must start with http:// or https://".into()),
    }
    if u.host().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    Ok(u)
}

impl HttpSinkConfig {
    pub fn validate(&self, ctx: &mut Ctx<'_>, base: &[Seg]) -> bool {
        let at = |k: &[&str]| {
            let mut p = base.to_vec();
            p.extend(k.iter().map(|k| Seg::Key((*k).into())));
            p
        };
        let mut ok = true;
        if let Err(e) = check_uri(&self.uri) {
            ctx.error(&at(&["uri"]), e);
            ok = false;
        }
        if let Some(h) = &self.healthcheck_uri
            && let Err(e) = check_uri(h)
        {
            ctx.error(&at(&["healthcheck_uri"]), e);
            ok = false;
        }
        for (name, value) in &self.headers {
            let path = at(&["headers", name.as_str()]);
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                ctx.error(&path, "not a valid header name");
                ok = false;
            } else if MANAGED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                ctx.error(&path, "set by the sink itself (from `compression` and the body)");
                ok = false;
            } else if name.eq_ignore_ascii_case("authorization") && self.auth.is_some() {
                ctx.error(&path, "both `auth` and an Authorization header: keep one");
                ok = false;
            }
            // The value is a secret: the error does not repeat it.
            if HeaderValue::from_str(value.expose()).is_err() {
                ctx.error(
                    &path,
                    "the value has characters a header cannot carry (control characters, non-ASCII)",
                );
                ok = false;
            }
        }
        match &self.auth {
            Some(HttpAuth::Basic { user, .. }) if user.contains(':') => {
                ctx.error(
                    &at(&["auth", "user"]),
                    "must not contain `:` (basic auth joins user:password)",
                );
                ok = false;
            }
            Some(HttpAuth::Bearer { token }) if token.is_empty() => {
                ctx.error(&at(&["auth", "token"]), "must not be empty");
                ok = false;
            }
            _ => {}
        }
        if !(1024..=MAX_BATCH_BYTES).contains(&self.batch.max_bytes.as_u64()) {
            ctx.error(&at(&["batch", "max_bytes"]), "must be between 1KiB and 10MiB");
            ok = false;
        }
        if !(1..=100_000).contains(&self.batch.max_events) {
            ctx.error(&at(&["batch", "max_events"]), "must be between 1 and 100000");
            ok = false;
        }
        if self.flush_interval < Duration::from_millis(10) {
            ctx.error(&at(&["flush_interval"]), "must be at least 10ms");
            ok = false;
        }
        if self.request_timeout < Duration::from_millis(100) {
            ctx.error(&at(&["request_timeout"]), "must be at least 100ms");
            ok = false;
        }
        if self.framing != Framing::None && self.encoding != HttpEncoding::Ndjson {
            ctx.error(
                &at(&["framing"]),
                match self.framing {
                    Framing::Loki => "loki bodies are Loki's own JSON envelope: leave `encoding` unset",
                    _ => "splunk_hec and opensearch_bulk bodies are line-delimited: use encoding = \"ndjson\"",
                },
            );
            ok = false;
        }
        ok &= crate::sinks::encoding::RecordFormat::validate(self.log_key.as_deref(), ctx, base);
        if self.log_key.is_some() && self.framing != Framing::Loki {
            ctx.error(
                &at(&["log_key"]),
                "a field's text is only a valid body as a Loki line (framing = \"loki\"); the other bodies carry JSON records",
            );
            ok = false;
        }
        if self.framing == Framing::Loki && self.labels.is_empty() {
            ctx.error(
                &at(&["labels"]),
                "Loki needs at least one stream label, e.g. labels = { job = \"logferry\" }",
            );
            ok = false;
        }
        if self.framing != Framing::Loki && !self.labels.is_empty() {
            ctx.error(&at(&["labels"]), "stream labels are only sent with framing = \"loki\"");
            ok = false;
        }
        for (name, t) in &self.labels {
            let mut c = name.chars();
            let valid = c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
                && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
                && !name.starts_with("__");
            if !valid {
                ctx.error(
                    &at(&["labels", name]),
                    "a Loki label name is letters, digits and `_`, not starting with a digit or `__`",
                );
                ok = false;
            }
            if let Err(e) = crate::template::Template::parse(t) {
                ctx.error(&at(&["labels", name]), e.to_string());
                ok = false;
            }
        }
        let tls_set = self.tls.ca_file.is_some() || !self.tls.verify;
        if tls_set && !self.uri.starts_with("https://") {
            ctx.error(&at(&["tls"]), "TLS options given but `uri` is not https://");
            ok = false;
        }
        ok
    }

    /// What this sink writes for one record (`log_key`, `timestamp_key`).
    pub fn record_format(&self) -> crate::sinks::encoding::RecordFormat {
        crate::sinks::encoding::RecordFormat::new(self.log_key.as_deref(), self.timestamp_key.as_deref())
    }

    /// The `Content-Type` the body has, unless `headers` sets one.
    pub fn content_type(&self) -> &'static str {
        if self.framing == Framing::Loki {
            return "application/json";
        }
        match self.encoding {
            HttpEncoding::Ndjson => "application/x-ndjson",
            HttpEncoding::JsonArray => "application/json",
        }
    }
}
