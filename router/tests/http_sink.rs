//! The `http` sink through the real binary, against an HTTP server written
//! here (hyper on its own runtime thread) that decodes and counts bodies and
//! can be told to throttle (429 with Retry-After), fail (500/503), hang past
//! the request timeout, reject (400), require auth, and serve TLS with an
//! rcgen-made CA.

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};

const LONG: Duration = Duration::from_secs(120);

/// What the server does with one request.
#[derive(Debug, Clone)]
enum Act {
    Ok,
    Status(u16, Option<String>),
    /// Read the body, then answer nothing for this long.
    Hang(Duration),
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    method: String,
    headers: BTreeMap<String, String>,
    /// Record ids in the body (decoded per Content-Encoding and format).
    ids: Vec<u64>,
    records: Vec<serde_json::Value>,
    /// The status answered (0: none, hung).
    status: u16,
    /// For a `_bulk` answer: each document's status, as `ids`.
    items: Option<Vec<u16>>,
}

#[derive(Default)]
struct Behaviour {
    /// Answers for the first requests, in order; then `Ok`.
    plan: Mutex<VecDeque<Act>>,
    /// `Authorization` value a request must carry, else 401.
    require_auth: Option<String>,
    /// Refuse (400) every body holding this id.
    reject_id: Option<u64>,
    /// While set, answer 503 to everything.
    failing: Option<Arc<AtomicBool>>,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Answer as OpenSearch `_bulk` does: 200 with an item per document,
    /// whose status this gives from the id and how often it came before.
    bulk: Option<fn(u64, usize) -> u16>,
    /// Answer the first bulk request 200 with a body that is not JSON.
    bulk_garbage_first: bool,
}

struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn start(b: Behaviour) -> Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let b = Arc::new(b);
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (b, seen) = (b.clone(), seen2.clone());
                    tokio::spawn(async move {
                        let tls = b.tls.clone();
                        let svc = hyper::service::service_fn(move |req| handle(req, b.clone(), seen.clone()));
                        match tls {
                            Some(cfg) => {
                                let Ok(tls) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await else {
                                    return;
                                };
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                                    .await;
                            }
                            None => {
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                                    .await;
                            }
                        }
                    });
                }
            });
        });
        Server { port, seen }
    }

    fn uri(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Ids of the bodies answered 2xx, with how often each arrived.
    fn accepted(&self) -> BTreeMap<u64, usize> {
        let mut m = BTreeMap::new();
        for s in self.seen().iter().filter(|s| (200..300).contains(&s.status)) {
            for (i, id) in s.ids.iter().enumerate() {
                let taken = match &s.items {
                    Some(items) => items.get(i).is_some_and(|st| (200..300).contains(st)),
                    None => true,
                };
                if taken {
                    *m.entry(*id).or_insert(0) += 1;
                }
            }
        }
        m
    }
}

fn decode(headers: &BTreeMap<String, String>, body: &[u8]) -> Vec<serde_json::Value> {
    let plain = if headers.get("content-encoding").map(String::as_str) == Some("gzip") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .expect("gzip body decodes");
        out
    } else {
        body.to_vec()
    };
    if plain.first() == Some(&b'[') {
        return serde_json::from_slice(&plain).expect("JSON array body");
    }
    if plain.starts_with(b"{\"streams\"") {
        // Loki push: each value's line is a record; the stream labels and the
        // nanosecond time are kept beside it for the test to check.
        let v: serde_json::Value = serde_json::from_slice(&plain).expect("Loki push body");
        let mut out = Vec::new();
        for (k, st) in v["streams"].as_array().expect("streams").iter().enumerate() {
            for val in st["values"].as_array().expect("values") {
                let line = val[1].as_str().expect("line string");
                // A line from `log_key` is the field's text, not a record.
                let mut rec: serde_json::Value = match serde_json::from_str(line) {
                    Ok(v @ serde_json::Value::Object(_)) => v,
                    _ => serde_json::json!({ "_line": line }),
                };
                rec["_labels"] = st["stream"].clone();
                rec["_ns"] = val[0].clone();
                rec["_stream"] = k.into();
                out.push(rec);
            }
        }
        return out;
    }
    plain
        .split(|c| *c == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("NDJSON line"))
        .collect()
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    b: Arc<Behaviour>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let method = req.method().to_string();
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = req.into_body().collect().await?.to_bytes();
    let records = if method == "POST" || method == "PUT" {
        decode(&headers, &body)
    } else {
        Vec::new()
    };
    let ids: Vec<u64> = records.iter().filter_map(|r| r["id"].as_u64()).collect();
    let act = if b.require_auth.is_some() && headers.get("authorization") != b.require_auth.as_ref() {
        Act::Status(401, None)
    } else if b.failing.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)) {
        Act::Status(503, None)
    } else if b.reject_id.is_some_and(|r| ids.contains(&r)) {
        Act::Status(400, None)
    } else if method == "HEAD" || method == "GET" {
        Act::Ok
    } else {
        b.plan.lock().unwrap().pop_front().unwrap_or(Act::Ok)
    };
    let status = match &act {
        Act::Ok => 200,
        Act::Status(s, _) => *s,
        Act::Hang(_) => 0,
    };
    let mut answer = Bytes::from_static(b"{}");
    let mut items = None;
    if let (Some(rule), 200) = (b.bulk, status) {
        let seen = seen.lock().unwrap();
        let first = !seen.iter().any(|s| s.items.is_some() || s.status == 200);
        if b.bulk_garbage_first && first {
            answer = Bytes::from_static(b"<html>upstream ok</html>");
            // No item statuses: nothing counts as taken, nor as an attempt.
            items = Some(Vec::new());
        } else {
            let st: Vec<u16> = ids
                .iter()
                .map(|id| {
                    let before = seen
                        .iter()
                        .filter(|s| s.items.as_ref().is_some_and(|i| !i.is_empty()))
                        .flat_map(|s| s.ids.iter())
                        .filter(|x| *x == id)
                        .count();
                    rule(*id, before)
                })
                .collect();
            let items_json: Vec<serde_json::Value> = st
                .iter()
                .map(|s| match s {
                    200..=299 => serde_json::json!({"index": {"_index": "logs", "_id": "x", "_version": 1, "result": "created",
                        "_shards": {"total": 2, "successful": 1, "failed": 0}, "_seq_no": 0, "_primary_term": 1, "status": s}}),
                    429 => serde_json::json!({"index": {"_index": "logs", "_id": "x", "status": s, "error": {
                        "type": "es_rejected_execution_exception", "reason": "rejected execution of coordinating operation"}}}),
                    _ => serde_json::json!({"index": {"_index": "logs", "_id": "x", "status": s, "error": {
                        "type": "mapper_parsing_exception", "reason": "failed to parse field [id] of type [date]"}}}),
                })
                .collect();
            let errors = st.iter().any(|s| !(200..300).contains(s));
            answer = Bytes::from(
                serde_json::to_vec(&serde_json::json!({"took": 7, "errors": errors, "items": items_json})).unwrap(),
            );
            items = Some(st);
        }
        drop(seen);
    }
    seen.lock().unwrap().push(Seen {
        at: Instant::now(),
        method,
        headers,
        ids,
        records,
        status,
        items,
    });
    let mut resp = Response::new(Full::new(answer));
    match act {
        Act::Ok => {}
        Act::Status(s, retry_after) => {
            *resp.status_mut() = StatusCode::from_u16(s).unwrap();
            if let Some(r) = retry_after {
                resp.headers_mut().insert("retry-after", r.parse().unwrap());
            }
        }
        Act::Hang(d) => {
            tokio::time::sleep(d).await;
            // Too late: the client gave up; this answer must not count.
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    Ok(resp)
}

/// `logs/app.log` with ids `0..n`.
fn write_logs(env: &Env, n: u64) {
    append_ids(&env.logs().join("app.log"), 0..n);
}

/// file source -> http sink with `sink` options.
fn config(env: &Env, uri: &str, sink: &str, global: &str, api: Option<u16>) -> PathBuf {
    let api = api
        .map(|p| format!("[api]\naddress = \"127.0.0.1:{p}\"\n"))
        .unwrap_or_default();
    env.write_config(&format!(
        r#"
[global]
data_dir = "{data}"
{global}
{api}
[sources.app]
type = "file"
include = ["{logs}/*.log"]
glob_interval = "100ms"

[sinks.web]
type = "http"
inputs = ["app"]
uri = "{uri}"
{flush}
{sink}
"#,
        data = env.path("data").display(),
        logs = env.logs().display(),
        flush = if sink.contains("flush_interval") {
            ""
        } else {
            "flush_interval = \"100ms\""
        },
    ))
}

fn metrics_of(port: u16) -> String {
    http_get(port, "/metrics").map(|(_, b)| b).unwrap_or_default()
}

/// Waits until the file source has every one of `n` records acknowledged
/// (delivered, or handled as dead letters).
fn wait_acked(api: u16, what: &str, n: f64) {
    wait_for(what, LONG, || {
        metric(
            &metrics_of(api),
            "logferry_source_acked_events_total",
            &["component=\"app\""],
        ) == Some(n)
    });
}

/// Every dead letter the sink `web` wrote under `dir`.
fn dead_letters(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for f in std::fs::read_dir(dir.join("web")).unwrap() {
        for l in std::fs::read_to_string(f.unwrap().path()).unwrap().lines() {
            out.push(serde_json::from_str(l).unwrap());
        }
    }
    out
}

fn assert_all_once(got: &BTreeMap<u64, usize>, n: u64) {
    let missing: Vec<u64> = (0..n).filter(|i| !got.contains_key(i)).take(10).collect();
    assert!(missing.is_empty(), "missing ids (first 10): {missing:?}");
    let twice: Vec<_> = got.iter().filter(|(_, c)| **c > 1).take(10).collect();
    assert!(twice.is_empty(), "accepted twice: {twice:?}");
    assert_eq!(got.len() as u64, n, "unexpected ids");
}

#[test]
fn every_record_arrives_once_through_throttles_failures_and_hangs() {
    let env = Env::new();
    let n = 3000;
    write_logs(&env, n);
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(1));
    let server = Server::start(Behaviour {
        plan: Mutex::new(VecDeque::from([
            Act::Status(429, Some("2".into())),
            Act::Status(500, None),
            Act::Status(503, Some("0".into())),
            Act::Hang(Duration::from_secs(4)),
            Act::Status(429, Some(date)),
            // Capped by max_retry_after.
            Act::Status(429, Some("3600".into())),
            Act::Ok,
            Act::Status(502, None),
        ])),
        ..Behaviour::default()
    });
    let sink =
        "compression = \"gzip\"\nbatch = { max_events = 250 }\nrequest_timeout = \"1s\"\nmax_retry_after = \"2s\"";
    let cfg = config(&env, &server.uri("/logs"), sink, "", None);
    run_to_eof(&cfg, &[]);
    let seen = server.seen();
    assert_all_once(&server.accepted(), n);
    let statuses: Vec<u16> = seen.iter().map(|s| s.status).take(8).collect();
    assert_eq!(statuses, [429, 500, 503, 0, 429, 429, 200, 502]);
    // The first body was the one throttled: it was sent again as it was.
    assert_eq!(seen[1].ids, seen[0].ids);
    assert_eq!(seen[6].ids, seen[0].ids, "the same body until a 2xx");
    // Retry-After: 2 was honoured: the next attempt came no sooner.
    assert!(
        seen[1].at.duration_since(seen[0].at) >= Duration::from_millis(1900),
        "{:?}",
        seen[1].at.duration_since(seen[0].at)
    );
    for s in &seen {
        assert_eq!(s.method, "POST");
        assert_eq!(s.headers.get("content-encoding").map(String::as_str), Some("gzip"));
        assert_eq!(
            s.headers.get("content-type").map(String::as_str),
            Some("application/x-ndjson")
        );
        assert!(s.ids.len() <= 250);
    }
    // Records arrive as written, with the time the source added.
    let r = &seen.iter().find(|s| s.status == 200).unwrap().records[0];
    assert!(r["msg"].as_str().unwrap().starts_with("line number"), "{r}");
    assert!(r["@timestamp"].is_string(), "{r}");
}

#[test]
fn a_rejected_body_goes_to_the_dead_letters_and_nothing_else_is_lost() {
    let env = Env::new();
    let n = 2000;
    write_logs(&env, n);
    let server = Server::start(Behaviour {
        reject_id: Some(1234),
        ..Behaviour::default()
    });
    let dead = env.path("dead");
    let sink = "encoding = \"json_array\"\nmethod = \"PUT\"\nbatch = { max_events = 100 }";
    let global = format!("dead_letter_dir = \"{}\"", dead.display());
    let api = free_port();
    let cfg = config(&env, &server.uri("/bulk"), sink, &global, Some(api));
    let router = spawn(&cfg, &[]);
    wait_acked(api, "every record accepted or rejected", n as f64);
    let m = metrics_of(api);
    let rejected: Vec<Seen> = server.seen().into_iter().filter(|s| s.status == 400).collect();
    assert_eq!(rejected.len(), 1, "a 400 is not retried");
    let rejected_ids: BTreeSet<u64> = rejected[0].ids.iter().copied().collect();
    assert!(rejected_ids.contains(&1234));
    assert_eq!(
        metric(
            &m,
            "logferry_component_discarded_events_total",
            &["reason=\"http_400\""]
        ),
        Some(rejected_ids.len() as f64)
    );
    assert_eq!(
        metric(&m, "logferry_http_requests_total", &["status=\"4xx\""]),
        Some(1.0)
    );
    router.signal(libc::SIGTERM);
    let (status, err) = router.wait(LONG);
    assert!(status.success(), "{err}");
    // Dead letters hold exactly the rejected body's records.
    let mut dead_ids = BTreeSet::new();
    for v in dead_letters(&dead) {
        assert_eq!(v["reason"], "http_400");
        assert_eq!(v["sink"], "web");
        dead_ids.insert(v["record"]["id"].as_u64().unwrap());
    }
    assert_eq!(dead_ids, rejected_ids);
    // Everything else was accepted, once, through PUT with JSON arrays.
    let accepted = server.accepted();
    assert!(accepted.keys().all(|id| !dead_ids.contains(id)));
    let mut all = accepted.clone();
    for id in &dead_ids {
        all.insert(*id, 1);
    }
    assert_all_once(&all, n);
    for s in server.seen() {
        assert_eq!(s.method, "PUT");
        assert_eq!(s.headers["content-type"], "application/json");
    }
}

#[test]
fn nothing_is_acknowledged_before_a_2xx() {
    let env = Env::new();
    let n = 1500;
    write_logs(&env, n);
    let failing = Arc::new(AtomicBool::new(true));
    let server = Server::start(Behaviour {
        failing: Some(failing.clone()),
        ..Behaviour::default()
    });
    let api = free_port();
    let cfg = config(&env, &server.uri("/"), "batch = { max_events = 200 }", "", Some(api));
    let router = spawn(&cfg, &[]);
    wait_for("several failed attempts", LONG, || {
        server.seen().len() >= 3
            && metric(&metrics_of(api), "logferry_sink_errors_total", &["reason=\"http_503\""]).unwrap_or(0.0) >= 3.0
    });
    let m = metrics_of(api);
    assert_eq!(
        metric(&m, "logferry_source_acked_events_total", &["component=\"app\""]).unwrap_or(0.0),
        0.0,
        "records acknowledged while the server answers 503"
    );
    assert_eq!(
        metric(&m, "logferry_file_checkpoint_offset_bytes", &["app.log"]).unwrap_or(0.0),
        0.0,
        "checkpoint moved while the server answers 503"
    );
    assert!(metric(&m, "logferry_http_requests_total", &["status=\"5xx\""]).unwrap_or(0.0) >= 3.0);
    failing.store(false, Ordering::SeqCst);
    let size = std::fs::metadata(env.logs().join("app.log")).unwrap().len() as f64;
    wait_for("checkpoint at the end of the file", LONG, || {
        metric(&metrics_of(api), "logferry_file_checkpoint_offset_bytes", &["app.log"]) == Some(size)
    });
    router.signal(libc::SIGTERM);
    let (status, err) = router.wait(LONG);
    assert!(status.success(), "{err}");
    assert_all_once(&server.accepted(), n);
}

#[test]
fn basic_and_bearer_auth_and_headers_from_the_environment() {
    use base64::Engine as _;
    for (auth, want) in [
        (
            "auth = { strategy = \"basic\", user = \"ingest\", password = \"${HTTP_PW}\" }",
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("ingest:pa55-w0rd")
            ),
        ),
        (
            "auth = { strategy = \"bearer\", token = \"${HTTP_PW}\" }",
            "Bearer pa55-w0rd".to_string(),
        ),
    ] {
        let env = Env::new();
        let n = 500;
        write_logs(&env, n);
        let server = Server::start(Behaviour {
            require_auth: Some(want.clone()),
            ..Behaviour::default()
        });
        let sink = format!("{auth}\nheaders = {{ \"DD-API-KEY\" = \"${{DD_KEY}}\", \"X-Team\" = \"web\" }}");
        let cfg = config(&env, &server.uri("/v1/input"), &sink, "", None);
        let out = run_to_eof(&cfg, &[("HTTP_PW", "pa55-w0rd"), ("DD_KEY", "dd-s3cret")]);
        assert_all_once(&server.accepted(), n);
        for s in server.seen() {
            assert_eq!(s.headers["authorization"], want);
            assert_eq!(s.headers["dd-api-key"], "dd-s3cret");
            assert_eq!(s.headers["x-team"], "web");
            assert!(s.headers["user-agent"].starts_with("logferry/"));
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("pa55-w0rd") && !err.contains("dd-s3cret"), "{err}");
    }
}

#[test]
fn wrong_credentials_keep_the_records_and_fail_readiness() {
    let env = Env::new();
    let n = 300;
    write_logs(&env, n);
    let server = Server::start(Behaviour {
        require_auth: Some("Bearer right".into()),
        ..Behaviour::default()
    });
    let api = free_port();
    let dead = env.path("dead");
    let cfg = config(
        &env,
        &server.uri("/"),
        "auth = { strategy = \"bearer\", token = \"wr0ng-t0ken\" }",
        &format!("dead_letter_dir = \"{}\"", dead.display()),
        Some(api),
    );
    let router = spawn(&cfg, &[]);
    wait_for("401s counted and /readyz failing", LONG, || {
        metric(&metrics_of(api), "logferry_sink_errors_total", &["reason=\"http_401\""]).unwrap_or(0.0) >= 2.0
            && http_get(api, "/readyz").is_some_and(|(s, _)| s == 503)
    });
    let m = metrics_of(api);
    assert_eq!(
        metric(&m, "logferry_source_acked_events_total", &["component=\"app\""]).unwrap_or(0.0),
        0.0
    );
    assert_eq!(
        metric(&m, "logferry_component_discarded_events_total", &["component=\"web\""]).unwrap_or(0.0),
        0.0
    );
    assert!(!dead.join("web").exists(), "nothing dead-lettered on a 401");
    router.signal(libc::SIGTERM);
    let (_, err) = router.wait(LONG);
    assert!(err.contains("401") && err.contains("credentials refused"), "{err}");
    assert!(!err.contains("wr0ng-t0ken"), "{err}");
}

/// A CA made here, and a server certificate for 127.0.0.1 signed by it.
fn tls_server_config(dir: &Path) -> (Arc<rustls::ServerConfig>, PathBuf) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "logferry test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &*ca)
        .unwrap();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
        .unwrap();
    (Arc::new(cfg), ca_path)
}

#[test]
fn tls_with_a_custom_ca_delivers_and_without_it_fails_clearly() {
    let env = Env::new();
    let n = 800;
    write_logs(&env, n);
    let (tls, ca) = tls_server_config(env.dir.path());
    let server = Server::start(Behaviour {
        tls: Some(tls),
        ..Behaviour::default()
    });
    let uri = format!("https://127.0.0.1:{}/logs", server.port);
    // Without the CA (system roots only): no request gets through, the
    // error names TLS and the certificate, and /readyz fails.
    let api = free_port();
    let cfg = config(&env, &uri, "", "", Some(api));
    let router = spawn(&cfg, &[]);
    wait_for("TLS errors counted", LONG, || {
        metric(&metrics_of(api), "logferry_sink_errors_total", &["reason=\"tls\""]).unwrap_or(0.0) >= 1.0
    });
    assert!(server.seen().is_empty());
    assert!(http_get(api, "/readyz").is_some_and(|(s, _)| s == 503));
    drop(router);
    // Give the stderr file a look: the reason is spelled out.
    let err = std::fs::read_to_string(cfg.with_extension("stderr")).unwrap();
    // (UnknownIssuer from rustls; on a machine without system roots, the
    // sink says so at start.)
    assert!(err.contains("certificate"), "{err}");
    // With the CA: everything arrives, once.
    let cfg = config(
        &env,
        &uri,
        &format!("compression = \"gzip\"\ntls = {{ ca_file = \"{}\" }}", ca.display()),
        "",
        None,
    );
    run_to_eof(&cfg, &[]);
    assert_all_once(&server.accepted(), n);
}

#[test]
fn check_uses_the_healthcheck_uri_or_a_head_of_uri() {
    let env = Env::new();
    write_logs(&env, 1);
    let server = Server::start(Behaviour {
        require_auth: Some("Bearer t".into()),
        ..Behaviour::default()
    });
    let check = |cfg: &Path| {
        let out = std::process::Command::new(BIN)
            .args(["check", "--config"])
            .arg(cfg)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let auth = "auth = { strategy = \"bearer\", token = \"t\" }";
    let (ok, text) = check(&config(&env, &server.uri("/in"), auth, "", None));
    assert!(ok, "{text}");
    assert!(text.contains("HEAD http://127.0.0.1"), "{text}");
    let sink = format!("{auth}\nhealthcheck_uri = \"{}\"", server.uri("/health?key=k3y"));
    let (ok, text) = check(&config(&env, &server.uri("/in"), &sink, "", None));
    assert!(ok, "{text}");
    assert!(text.contains("GET http://127.0.0.1") && !text.contains("k3y"), "{text}");
    let (ok, text) = check(&config(&env, &server.uri("/in"), "", "", None));
    assert!(
        !ok && text.contains("FAIL") && text.contains("credentials refused"),
        "{text}"
    );
    let (ok, text) = check(&config(
        &env,
        &format!("http://127.0.0.1:{}/", free_port()),
        "",
        "",
        None,
    ));
    assert!(!ok && text.contains("cannot connect"), "{text}");
    let seen = server.seen();
    assert!(seen.iter().any(|s| s.method == "HEAD") && seen.iter().any(|s| s.method == "GET"));
}

/// OpenSearch `_bulk` answers 200 even when documents were refused: the sink
/// must read the items, send again only the busy ones (429, 5xx), dead-letter
/// the refused ones with their status, and release the checkpoint only when
/// every document is settled. A 200 that cannot be read resends the body.
#[test]
fn a_bulk_answer_with_errors_resends_only_the_busy_documents_and_dead_letters_the_refused() {
    let env = Env::new();
    let n = 3000;
    write_logs(&env, n);
    fn rule(id: u64, before: usize) -> u16 {
        match id {
            _ if id.is_multiple_of(97) => 400,
            _ if id % 10 == 3 && before < 2 => 429,
            _ if id % 50 == 7 && before < 1 => 503,
            _ => 201,
        }
    }
    let server = Server::start(Behaviour {
        bulk: Some(rule),
        bulk_garbage_first: true,
        ..Behaviour::default()
    });
    let dead = env.path("dead");
    let sink = "framing = \"opensearch_bulk\"\ncompression = \"gzip\"\nbatch = { max_events = 200 }";
    let global = format!("dead_letter_dir = \"{}\"", dead.display());
    let api = free_port();
    let cfg = config(&env, &server.uri("/_bulk"), sink, &global, Some(api));
    let router = spawn(&cfg, &[]);
    wait_acked(api, "every record accepted or dead-lettered", n as f64);
    let m = metrics_of(api);
    router.signal(libc::SIGTERM);
    let (status, err) = router.wait(LONG);
    assert!(status.success(), "{err}");
    let refused: BTreeSet<u64> = (0..n).filter(|id| id.is_multiple_of(97)).collect();
    let mut dead_ids = BTreeSet::new();
    for v in dead_letters(&dead) {
        assert_eq!(v["reason"], "bulk_400", "{v}");
        assert!(
            dead_ids.insert(v["record"]["id"].as_u64().unwrap()),
            "dead-lettered twice: {v}"
        );
    }
    assert_eq!(dead_ids, refused, "exactly the refused documents are dead letters");
    assert_eq!(
        metric(
            &m,
            "logferry_component_discarded_events_total",
            &["reason=\"bulk_400\""]
        ),
        Some(refused.len() as f64)
    );
    // Every other document was taken exactly once: taken ones were never sent again.
    let mut all = server.accepted();
    assert!(all.keys().all(|id| !refused.contains(id)));
    for id in &refused {
        all.insert(*id, 1);
    }
    assert_all_once(&all, n);
    let seen = server.seen();
    // The unreadable 200 made the whole first body go again, as it was.
    assert_eq!(
        seen[0].items.as_deref(),
        Some(&[][..]),
        "the first answer was the unreadable one"
    );
    assert_eq!(
        seen[1].ids, seen[0].ids,
        "the body after an unreadable answer is resent whole"
    );
    // Retried bodies hold only busy documents, and each busy one went 3 times (429, 429, 201).
    let sent: BTreeMap<u64, usize> =
        seen.iter()
            .skip(1)
            .flat_map(|s| s.ids.iter().copied())
            .fold(BTreeMap::new(), |mut m, id| {
                *m.entry(id).or_insert(0) += 1;
                m
            });
    for id in 0..n {
        let want = match id {
            _ if id.is_multiple_of(97) => 1,
            _ if id % 10 == 3 => 3,
            _ if id % 50 == 7 => 2,
            _ => 1,
        };
        assert_eq!(sent[&id], want, "id {id} sent {} times", sent[&id]);
    }
    assert!(
        metric(&m, "logferry_sink_errors_total", &["reason=\"bulk_429\""]).unwrap_or(0.0) >= 2.0,
        "busy answers are counted"
    );
    assert_eq!(
        metric(&m, "logferry_sink_errors_total", &["reason=\"bulk_answer\""]),
        Some(1.0)
    );
}

/// Grafana Loki's push API: records grouped into streams by rendered labels,
/// nanosecond times as strings, the record as the line; throttled and failed
/// pushes are sent again whole, a 400 (Loki's "entry too far behind") sends
/// the records, not Loki's envelope, to the dead letters.
#[test]
fn loki_push_bodies_group_streams_by_labels_and_survive_throttles() {
    let env = Env::new();
    let n = 2400u64;
    let levels = ["info", "warn", "error"];
    let mut text = String::new();
    for i in 0..n {
        // Runs of 7 records share a level, so bodies hold several streams.
        text.push_str(&format!(
            "{{\"id\":{i},\"level\":\"{}\",\"msg\":\"quote \\\" and tab \\t in line {i}\"}}\n",
            levels[(i / 7 % 3) as usize]
        ));
    }
    std::fs::write(env.logs().join("app.log"), text).unwrap();
    let server = Server::start(Behaviour {
        plan: Mutex::new(VecDeque::from([
            Act::Status(429, Some("1".into())),
            Act::Status(500, None),
            Act::Ok,
            Act::Status(400, None),
        ])),
        ..Behaviour::default()
    });
    let dead = env.path("dead");
    let sink = "framing = \"loki\"\ncompression = \"gzip\"\nlabels = { job = \"app\", level = \"{level}\" }\nbatch = { max_events = 300 }";
    let global = format!("dead_letter_dir = \"{}\"", dead.display());
    let api = free_port();
    let cfg = config(&env, &server.uri("/loki/api/v1/push"), sink, &global, Some(api));
    let router = spawn(&cfg, &[]);
    wait_acked(api, "every record pushed or dead-lettered", n as f64);
    router.signal(libc::SIGTERM);
    let (status, err) = router.wait(LONG);
    assert!(status.success(), "{err}");
    let seen = server.seen();
    assert_eq!(
        seen.iter().map(|s| s.status).take(4).collect::<Vec<_>>(),
        [429, 500, 200, 400]
    );
    assert_eq!(seen[1].ids, seen[0].ids);
    assert_eq!(seen[2].ids, seen[0].ids, "the same push until a 2xx");
    let rejected: BTreeSet<u64> = seen[3].ids.iter().copied().collect();
    assert!(!rejected.is_empty());
    let mut dead_ids = BTreeSet::new();
    for v in dead_letters(&dead) {
        assert_eq!(v["reason"], "http_400");
        assert!(
            v["record"]["msg"].as_str().unwrap().contains("quote \" and tab \t"),
            "the record itself: {v}"
        );
        dead_ids.insert(v["record"]["id"].as_u64().unwrap());
    }
    assert_eq!(dead_ids, rejected);
    let mut all = server.accepted();
    for id in &dead_ids {
        assert!(all.insert(*id, 1).is_none());
    }
    assert_all_once(&all, n);
    let mut streams_per_body = Vec::new();
    for s in seen.iter().filter(|s| s.status == 200) {
        assert_eq!(s.headers["content-type"], "application/json");
        let streams = s.records.iter().map(|r| r["_stream"].as_u64().unwrap()).max().unwrap() + 1;
        for r in &s.records {
            let id = r["id"].as_u64().unwrap();
            assert_eq!(
                r["_labels"],
                serde_json::json!({"job": "app", "level": levels[(id / 7 % 3) as usize]})
            );
            assert!(r["msg"].as_str().unwrap().ends_with(&format!("line {id}")), "{r}");
            // The line's time and the stream value's time are the same instant.
            let ms = chrono::DateTime::parse_from_rfc3339(r["@timestamp"].as_str().unwrap())
                .unwrap()
                .timestamp_millis();
            assert_eq!(r["_ns"].as_str().unwrap(), (ms as i128 * 1_000_000).to_string());
        }
        streams_per_body.push((s.records.len(), streams as usize));
    }
    // Runs of 7 share a stream entry: a body of 300 has about 300/7 streams, not 300.
    assert!(
        streams_per_body.iter().all(|(r, st)| *st <= r / 7 + 2),
        "{streams_per_body:?}"
    );
}

/// `log_key` makes the Loki line the field's text (as Fluent Bit's loki
/// output with `line_format key_value`/`drop_single_key` users expect), a
/// record without the field is dropped and counted; `timestamp_key` renames
/// the event time the source added in JSON bodies.
#[test]
fn log_key_lines_for_loki_and_timestamp_key_for_json_bodies() {
    let env = Env::new();
    let mut text = String::new();
    for i in 0..200u64 {
        if i == 50 {
            text.push_str("{\"id\":50,\"level\":\"info\"}\n");
        } else {
            text.push_str(&format!(
                "{{\"id\":{i},\"level\":\"info\",\"log\":\"GET /item/{i} 200 \\\"ok\\\"\"}}\n"
            ));
        }
    }
    std::fs::write(env.logs().join("app.log"), &text).unwrap();
    let server = Server::start(Behaviour::default());
    let api = free_port();
    let sink = "framing = \"loki\"\nlabels = { job = \"app\" }\nlog_key = \"log\"";
    let cfg = config(&env, &server.uri("/loki/api/v1/push"), sink, "", Some(api));
    let router = spawn(&cfg, &[]);
    wait_acked(api, "every record settled", 200.0);
    let m = metrics_of(api);
    router.signal(libc::SIGTERM);
    assert!(router.wait(LONG).0.success());
    assert_eq!(
        metric(
            &m,
            "logferry_component_discarded_events_total",
            &["reason=\"log_key_missing\""]
        ),
        Some(1.0)
    );
    let lines: Vec<String> = server
        .seen()
        .iter()
        .filter(|s| s.status == 200)
        .flat_map(|s| s.records.iter().map(|r| r["_line"].as_str().unwrap().to_string()))
        .collect();
    let want: Vec<String> = (0..200u64)
        .filter(|i| *i != 50)
        .map(|i| format!("GET /item/{i} 200 \"ok\""))
        .collect();
    assert_eq!(lines, want, "each line is the log field's text, in order");

    let env = Env::new();
    write_logs(&env, 100);
    let server = Server::start(Behaviour::default());
    let cfg = config(&env, &server.uri("/logs"), "timestamp_key = \"time\"", "", None);
    run_to_eof(&cfg, &[]);
    assert_all_once(&server.accepted(), 100);
    for s in server.seen() {
        for r in &s.records {
            assert!(r["time"].is_string() && r.get("@timestamp").is_none(), "{r}");
        }
    }
}

/// At least once through kill -9: a seeded loop appends ids, starts the
/// router against a server that sometimes throttles and fails, and kills it
/// with SIGKILL at a random moment (mid-request, mid-backoff, mid-batch);
/// a final run reads to the end. Every id must have been accepted (2xx) at
/// least once: a checkpoint never passes a record the server did not take.
#[test]
fn every_id_is_accepted_at_least_once_through_sigkill_loops() {
    for seed in [7u64, 1234] {
        let env = Env::new();
        let mut rng = seed;
        let mut next = move |n: u64| {
            // xorshift64*: deterministic per seed.
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
        };
        let plan: VecDeque<Act> = (0..200)
            .map(|_| match next(6) {
                0 => Act::Status(503, None),
                1 => Act::Status(429, Some("0".into())),
                _ => Act::Ok,
            })
            .collect();
        let server = Server::start(Behaviour {
            plan: Mutex::new(plan),
            ..Behaviour::default()
        });
        let sink = "compression = \"gzip\"\nbatch = { max_events = 150 }\nflush_interval = \"50ms\"";
        let cfg = config(&env, &server.uri("/logs"), sink, "", None);
        let mut written = 0u64;
        for _ in 0..8 {
            let more = 500 + next(1500);
            append_ids(&env.logs().join("app.log"), written..written + more);
            written += more;
            let router = spawn(&cfg, &[]);
            std::thread::sleep(Duration::from_millis(50 + next(400)));
            router.signal(libc::SIGKILL);
            let _ = router.wait(LONG);
        }
        run_to_eof(&cfg, &[]);
        let got = server.accepted();
        let missing: Vec<u64> = (0..written).filter(|i| !got.contains_key(i)).take(10).collect();
        assert!(
            missing.is_empty(),
            "seed {seed}: ids never accepted (first 10): {missing:?}"
        );
        assert!(got.keys().all(|id| *id < written), "seed {seed}: unexpected ids");
        let dup = got.values().filter(|c| **c > 1).count();
        eprintln!(
            "seed {seed}: {written} ids, all accepted; {dup} accepted more than once ({:.1}%)",
            100.0 * dup as f64 / written as f64
        );
    }
}
