//! `[sinks.x] type = "http"` through the loader: defaults, options, secrets, errors.

use crate::config::load_str;
use crate::sinks::SinkConfig;

use std::time::Duration;

use crate::sinks::http::{Framing, HttpAuth, HttpCompression, HttpEncoding, HttpMethod, HttpSinkConfig};

fn config(sink: &str) -> String {
    super::one_sink("h", "http", sink)
}

fn load(sink: &str, env: &dyn Fn(&str) -> Option<String>) -> HttpSinkConfig {
    let c = load_str(&config(sink), "t.toml", env).unwrap();
    let SinkConfig::Http(h) = &c.sinks[0].inner else {
        panic!("not an http sink: {:?}", c.sinks[0].inner)
    };
    h.clone()
}

fn errs(sink: &str) -> Vec<String> {
    match load_str(&config(sink), "t.toml", &|_| None) {
        Ok(_) => panic!("expected errors for {sink}"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn defaults() {
    let h = load(r#"uri = "http://127.0.0.1:8080/logs""#, &|_| None);
    assert_eq!(h.method, HttpMethod::Post);
    assert_eq!(h.encoding, HttpEncoding::Ndjson);
    assert_eq!(h.framing, Framing::None);
    assert_eq!(h.compression, HttpCompression::None);
    assert_eq!(h.batch.max_bytes.as_u64(), 1024 * 1024);
    assert_eq!(h.batch.max_events, 1000);
    assert_eq!(h.flush_interval, Duration::from_secs(1));
    assert_eq!(h.request_timeout, Duration::from_secs(30));
    assert_eq!(h.max_retry_after, Duration::from_secs(60));
    assert!(h.headers.is_empty() && h.auth.is_none() && h.tls.verify && h.tls.ca_file.is_none());
    assert_eq!(h.content_type(), "application/x-ndjson");
}

#[test]
fn all_options_and_secrets_stay_hidden() {
    let env = |k: &str| (k == "DD_API_KEY").then(|| "k3y-from-env".to_string());
    let h = load(
        r#"uri = "https://http-intake.logs.datadoghq.eu/api/v2/logs?ddsource=logferry"
method = "put"
encoding = "json_array"
compression = "gzip"
headers = { "DD-API-KEY" = "${DD_API_KEY}", "X-Team" = "web" }
auth = { strategy = "basic", user = "u", password = "hunter2" }
batch = { max_bytes = "512KiB", max_events = 50 }
flush_interval = "200ms"
request_timeout = "5s"
max_retry_after = "10s"
tls = { ca_file = "/etc/ca.pem", verify = true }
healthcheck_uri = "https://http-intake.logs.datadoghq.eu/api/v1/validate""#,
        &env,
    );
    assert_eq!(h.method, HttpMethod::Put);
    assert_eq!(h.encoding, HttpEncoding::JsonArray);
    assert_eq!(h.compression, HttpCompression::Gzip);
    assert_eq!(h.headers["DD-API-KEY"].expose(), "k3y-from-env");
    assert_eq!(h.batch.max_events, 50);
    assert_eq!(h.content_type(), "application/json");
    let shown = format!("{h:?}");
    assert!(!shown.contains("k3y-from-env") && !shown.contains("hunter2"), "{shown}");
    let h = load(
        "uri = \"https://x.example/a\"\nauth = { strategy = \"bearer\", token = \"t0ken\" }",
        &|_| None,
    );
    assert!(matches!(&h.auth, Some(HttpAuth::Bearer { token }) if token.expose() == "t0ken"));
    assert!(!format!("{h:?}").contains("t0ken"));
}

#[test]
fn errors_name_the_key() {
    let e = errs(r#"uri = "ftp://x/y""#);
    assert!(e[0].contains("`sinks.h.uri`") && e[0].contains("http://"), "{e:?}");
    let e = errs(r#"uri = "not a uri""#);
    assert!(e[0].contains("`sinks.h.uri`"), "{e:?}");
    let e = errs("uri = \"http://h/\"\nmethod = \"GET\"");
    assert!(e[0].contains("`sinks.h.method`"), "{e:?}");
    let e = errs("uri = \"http://h/\"\nencoding = \"csv\"");
    assert!(e[0].contains("`sinks.h.encoding`"), "{e:?}");
    let e = errs("uri = \"http://h/\"\ncompression = \"zstd\"");
    assert!(e[0].contains("`sinks.h.compression`"), "{e:?}");
    let e = errs("uri = \"http://h/\"\nauth = { strategy = \"digest\", user = \"u\" }");
    assert!(e[0].contains("`sinks.h.auth.strategy`"), "{e:?}");
    let e = errs("uri = \"http://h/\"\nauth = { strategy = \"bearer\", token = \"t\", user = \"u\" }");
    assert!(e[0].contains("unknown field `user`"), "{e:?}");
    let e = errs("uri = \"http://h/\"\nbatch = { max_bytes = \"64MiB\" }");
    assert!(e[0].contains("`sinks.h.batch.max_bytes`"), "{e:?}");
    let e = errs("uri = \"http://h/\"\nbatch = { max_events = 0 }");
    assert!(e[0].contains("`sinks.h.batch.max_events`"), "{e:?}");
    let e = errs("uri = \"http://h/\"\nheaders = { \"Content-Encoding\" = \"br\" }");
    assert!(e[0].contains("`sinks.h.headers.Content-Encoding`"), "{e:?}");
    let e = errs("uri = \"http://h/\"\nheaders = { \"X-Key\" = \"bad\\nvalue-s3cret\" }");
    assert!(e[0].contains("`sinks.h.headers.X-Key`"), "{e:?}");
    assert!(!e[0].contains("s3cret"), "a header value is never repeated: {e:?}");
    let e = errs(
        "uri = \"http://h/\"\nheaders = { Authorization = \"x\" }\nauth = { strategy = \"bearer\", token = \"t\" }",
    );
    assert!(e[0].contains("Authorization"), "{e:?}");
    let e = errs("uri = \"http://h/\"\ntls = { ca_file = \"/x\" }");
    assert!(e[0].contains("`sinks.h.tls`"), "{e:?}");
    let e = errs("uri = \"http://h/\"\nencoding = \"json_array\"\nframing = \"splunk_hec\"");
    assert!(e[0].contains("`sinks.h.framing`"), "{e:?}");
    let e = errs("uri = \"http://h/\"\nrequest_timeout = \"1ms\"");
    assert!(e[0].contains("`sinks.h.request_timeout`"), "{e:?}");
    let e = errs("uri = \"http://h/\"\nbatch_size = 3");
    assert!(e[0].contains("unknown field `batch_size`"), "{e:?}");
}

#[test]
fn loki_labels_are_checked() {
    let ok = load(
        "uri = \"http://h/loki/api/v1/push\"\nframing = \"loki\"\nlabels = { job = \"x\", ns = \"{kubernetes.namespace}\" }",
        &|_| None,
    );
    assert_eq!(ok.content_type(), "application/json");
    for (sink, key, says) in [
        ("framing = \"loki\"", "labels", "at least one stream label"),
        (
            "labels = { job = \"x\" }",
            "labels",
            "only sent with framing = \"loki\"",
        ),
        (
            "framing = \"loki\"\nlabels = { \"1x\" = \"a\" }",
            "labels.1x",
            "label name",
        ),
        (
            "framing = \"loki\"\nlabels = { __name__ = \"a\" }",
            "labels.__name__",
            "label name",
        ),
        (
            "framing = \"loki\"\nlabels = { job = \"{unclosed\" }",
            "labels.job",
            "unclosed",
        ),
        (
            "framing = \"loki\"\nlabels = { job = \"x\" }\nencoding = \"json_array\"",
            "framing",
            "leave `encoding` unset",
        ),
        ("log_key = \"log\"", "log_key", "only a valid body as a Loki line"),
        (
            "framing = \"loki\"\nlabels = { job = \"x\" }\nlog_key = \"\"",
            "log_key",
            "",
        ),
    ] {
        let e = errs(&format!("uri = \"http://h/\"\n{sink}"));
        assert!(
            e[0].contains(&format!("`sinks.h.{key}`")) && e[0].contains(says),
            "{sink}: {e:?}"
        );
    }
}
