//! `kubernetes_metadata = "api"` through the real binary, against a small
//! Kubernetes API emulator (hyper on its own runtime thread): the pod list
//! and watch of `GET /api/v1/pods` with `fieldSelector`, ADDED / MODIFIED /
//! DELETED events with resource versions, a `410 Gone` that forces a relist,
//! and a server answering 500 until it recovers.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(90);
const NODE: &str = "node-a";

#[derive(Default)]
struct State {
    /// Every pod the "cluster" has, on any node, by (namespace, name).
    pods: BTreeMap<(String, String), Value>,
    rv: u64,
    /// (resourceVersion, type, object) of every change.
    events: Vec<(u64, &'static str, Value)>,
    /// A watch from before this version gets `410 Gone`.
    compacted: u64,
    /// Answer every request with 500.
    failing: bool,
    /// Request targets seen (path and query).
    requests: Vec<String>,
    lists: usize,
    /// Bearer tokens seen.
    tokens: Vec<String>,
}

/// The emulator: the test thread changes `state`, open watches follow.
struct Api {
    state: Arc<Mutex<State>>,
    changed: tokio::sync::watch::Sender<u64>,
    port: u16,
}

impl Api {
    fn start() -> Api {
        let state = Arc::new(Mutex::new(State::default()));
        let (changed, _) = tokio::sync::watch::channel(0u64);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (st, tx) = (state.clone(), changed.clone());
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
                    let (st, tx) = (st.clone(), tx.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| handle(req, st.clone(), tx.subscribe()));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                            .await;
                    });
                }
            });
        });
        Api { state, changed, port }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn change(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap());
        self.changed.send_modify(|v| *v += 1);
    }

    fn put(&self, pod: Value) {
        self.change(|s| {
            s.rv += 1;
            let mut pod = pod;
            pod["metadata"]["resourceVersion"] = json!(s.rv.to_string());
            let key = (
                pod["metadata"]["namespace"].as_str().unwrap_or("").to_string(),
                pod["metadata"]["name"].as_str().unwrap().to_string(),
            );
            let kind = if s.pods.contains_key(&key) { "MODIFIED" } else { "ADDED" };
            s.pods.insert(key, pod.clone());
            s.events.push((s.rv, kind, pod));
        });
    }

    fn delete(&self, ns: &str, name: &str) {
        self.change(|s| {
            s.rv += 1;
            if let Some(mut pod) = s.pods.remove(&(ns.to_string(), name.to_string())) {
                pod["metadata"]["resourceVersion"] = json!(s.rv.to_string());
                s.events.push((s.rv, "DELETED", pod));
            }
        });
    }

    /// Forgets history: open and later watches from an older version get
    /// `410 Gone`, and only a relist shows what changed.
    fn compact(&self) {
        self.change(|s| s.compacted = s.rv + 1);
    }

    fn set_failing(&self, failing: bool) {
        self.change(|s| s.failing = failing);
    }

    fn lists(&self) -> usize {
        self.state.lock().unwrap().lists
    }
}

fn query(uri: &hyper::Uri) -> BTreeMap<String, String> {
    let decode = |s: &str| {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(if b[i] == b'+' { b' ' } else { b[i] });
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), decode(v)))
        .collect()
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, v: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .unwrap()
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": reason, "reason": reason, "code": code})
}

/// The node a field selector asks for, if it is `spec.nodeName=<node>`.
fn on_node(pod: &Value, selector: Option<&String>) -> bool {
    match selector.and_then(|s| s.strip_prefix("spec.nodeName=")) {
        Some(node) => pod["spec"]["nodeName"] == node,
        None => true,
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    st: Arc<Mutex<State>>,
    mut changed: tokio::sync::watch::Receiver<u64>,
) -> Result<Response<Body>, Infallible> {
    let q = query(req.uri());
    let selector = q.get("fieldSelector").cloned();
    {
        let mut s = st.lock().unwrap();
        s.requests.push(req.uri().to_string());
        if let Some(t) = req.headers().get("authorization") {
            s.tokens.push(t.to_str().unwrap_or("").to_string());
        }
        if s.failing {
            return Ok(full(StatusCode::INTERNAL_SERVER_ERROR, status(500, "InternalError")));
        }
    }
    // Pods and namespaces live in one map; the path picks the kind.
    let kind = match req.uri().path() {
        "/api/v1/pods" => "Pod",
        // The kubelet's `/pods`: this node's pods, list only.
        "/pods" => {
            let s = st.lock().unwrap();
            let node = format!("spec.nodeName={NODE}");
            let items: Vec<Value> = s
                .pods
                .values()
                .filter(|p| p["kind"] == "Pod" && on_node(p, Some(&node)))
                .cloned()
                .collect();
            return Ok(full(
                StatusCode::OK,
                json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}),
            ));
        }
        "/api/v1/namespaces" => "Namespace",
        _ => return Ok(full(StatusCode::NOT_FOUND, status(404, "NotFound"))),
    };
    if q.get("watch").map(String::as_str) != Some("true") && q.get("watch").map(String::as_str) != Some("1") {
        let mut s = st.lock().unwrap();
        s.lists += 1;
        let items: Vec<Value> = s
            .pods
            .values()
            .filter(|p| p["kind"] == kind && on_node(p, selector.as_ref()))
            .cloned()
            .collect();
        return Ok(full(
            StatusCode::OK,
            json!({"kind": format!("{kind}List"), "apiVersion": "v1", "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
        ));
    }
    let mut from: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let timeout = Duration::from_secs(q.get("timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(290));
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(64);
    tokio::spawn(async move {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            let (lines, gone, failing) = {
                let s = st.lock().unwrap();
                let lines: Vec<(u64, String)> = s
                    .events
                    .iter()
                    .filter(|(rv, _, p)| *rv > from && p["kind"] == kind && on_node(p, selector.as_ref()))
                    .map(|(rv, t, p)| (*rv, json!({"type": t, "object": p}).to_string()))
                    .collect();
                (lines, from < s.compacted, s.failing)
            };
            if failing {
                return;
            }
            if gone {
                let e = json!({"type": "ERROR", "object": status(410, "Expired")}).to_string();
                let _ = tx.send_data(Bytes::from(e + "\n")).await;
                return;
            }
            for (rv, l) in lines {
                if tx.send_data(Bytes::from(l + "\n")).await.is_err() {
                    return;
                }
                from = rv;
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = tokio::time::sleep_until(end) => return,
            }
        }
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(body.boxed())
        .unwrap())
}

const ID_WEB: &str = "1111111111111111111111111111111111111111111111111111111111111111";

fn cid(n: u64) -> String {
    format!("{n:064x}")
}

fn pod(ns: &str, name: &str, node: &str, labels: Value, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"),
            "labels": labels, "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-rs"), "uid": "x", "controller": true}],
        },
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": format!("registry/{name}:1")}]},
    })
}

/// The kubelet's name of a container log, linked as on a node.
fn log_path(env: &Env, ns: &str, pod: &str, id: &str) -> PathBuf {
    env.logs().join(format!("{pod}_{ns}_app-{id}.log"))
}

fn write_lines(path: &PathBuf, tag: &str, range: std::ops::Range<u64>) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for i in range {
        writeln!(f, "{{\"tag\":\"{tag}\",\"n\":{i}}}").unwrap();
    }
}

fn config(env: &Env, api: &Api, api_port: u16, extra: &str) -> PathBuf {
    std::fs::write(env.path("token"), "secret-token").unwrap();
    env.write_config(&format!(
        r#"
[global]
data_dir = "{data}"
{extra_global}
[api]
address = "127.0.0.1:{api_port}"

[sources.containers]
type = "file"
include = ["{logs}/*.log"]
glob_interval = "100ms"
kubernetes_metadata = "api"
[sources.containers.kubernetes_api]
endpoint = "{endpoint}"
token_file = "{token}"
node_name = "{NODE}"
{extra}

[sinks.out]
type = "file"
inputs = ["containers"]
path = "{out}"
key_prefix = "x/"
compression = "none"
flush_interval = "100ms"
"#,
        data = env.path("data").display(),
        logs = env.logs().display(),
        endpoint = api.endpoint(),
        token = env.path("token").display(),
        out = env.path("out").display(),
        extra_global = if extra.contains("#memory") {
            "memory_limit = \"4MiB\""
        } else {
            ""
        },
    ))
}

fn metrics(port: u16) -> String {
    http_get(port, "/metrics").map(|(_, b)| b).unwrap_or_default()
}

fn by_tag(env: &Env, tag: &str) -> Vec<Value> {
    env.records().into_iter().filter(|r| r["tag"] == tag).collect()
}

#[test]
fn pods_of_this_node_enrich_their_records_and_excluded_pods_are_dropped() {
    let env = Env::new();
    let api = Api::start();
    api.put(pod(
        "prod",
        "web-1",
        NODE,
        json!({"app": "web", "team": "core"}),
        json!({"note": "hello", "kubectl.kubernetes.io/last-applied-configuration": "{\"big\":1}"}),
    ));
    api.put(pod(
        "prod",
        "muted-1",
        NODE,
        json!({"app": "m"}),
        json!({"logferry.io/exclude": "true"}),
    ));
    api.put(pod(
        "prod",
        "muted-2",
        NODE,
        json!({"app": "m"}),
        json!({"fluentbit.io/exclude": "true"}),
    ));
    // A pod of another node: its name matches a local file, but the watch
    // must not see it (the field selector).
    api.put(pod("prod", "far-1", "node-b", json!({"app": "far"}), json!({})));
    for (name, id, tag, n) in [
        ("web-1", ID_WEB.to_string(), "web", 50),
        ("muted-1", cid(2), "muted1", 40),
        ("muted-2", cid(3), "muted2", 30),
        ("far-1", cid(4), "far", 20),
        ("ghost-1", cid(5), "ghost", 10),
    ] {
        write_lines(&log_path(&env, "prod", name, &id), tag, 0..n);
    }
    let port = free_port();
    let cfg = config(&env, &api, port, "");
    let router = spawn(&cfg, &[]);
    wait_for("the web and far records", LONG, || {
        by_tag(&env, "web").len() == 50 && by_tag(&env, "far").len() == 20 && by_tag(&env, "ghost").len() == 10
    });
    wait_for("the excluded records counted", LONG, || {
        metric(
            &metrics(port),
            "logferry_component_discarded_events_total",
            &["reason=\"kubernetes_excluded\""],
        ) == Some(70.0)
    });
    let web = by_tag(&env, "web");
    for r in &web {
        assert_eq!(
            r["kubernetes"],
            json!({
                "pod_name": "web-1", "namespace_name": "prod", "container_name": "app", "container_id": ID_WEB,
                "pod_id": "uid-prod-web-1", "host": NODE,
                "labels": {"app": "web", "team": "core"},
                "annotations": {"note": "hello"},
                "ownerReferences": [{"kind": "ReplicaSet", "name": "web-1-rs"}],
                "container_image": "registry/web-1:1",
            }),
        );
    }
    // Not on this node, or not in the API: the path's fields only.
    for (tag, pod) in [("far", "far-1"), ("ghost", "ghost-1")] {
        for r in by_tag(&env, tag) {
            let k = r["kubernetes"].as_object().unwrap();
            assert_eq!(k["pod_name"], pod);
            assert_eq!(k.len(), 4, "{r}");
        }
    }
    assert!(by_tag(&env, "muted1").is_empty() && by_tag(&env, "muted2").is_empty());
    let s = api.state.lock().unwrap();
    assert!(
        s.requests
            .iter()
            .all(|r| r.contains("fieldSelector=spec.nodeName%3Dnode-a")
                || r.contains("fieldSelector=spec.nodeName=node-a")),
        "{:?}",
        s.requests
    );
    assert!(s.tokens.iter().all(|t| t == "Bearer secret-token") && !s.tokens.is_empty());
    drop(s);
    let text = metrics(port);
    assert_eq!(
        metric(&text, "logferry_kubernetes_pods", &["component=\"containers\""]),
        Some(3.0)
    );
    let charged = metric(&text, "logferry_kubernetes_cache_bytes", &[]).unwrap();
    assert!(charged > 3.0 * 500.0 && charged < 3.0 * 8192.0, "{charged}");
    router.signal(libc::SIGTERM);
    let (st, _) = router.wait(LONG);
    assert!(st.success());
}

/// `logferry.io/parser` (or `fluentbit.io/parser`) parses the `log` text of
/// a pod's CRI lines; a line that is not in that format, and a parser name
/// the router does not have, pass as they were, counted.
#[test]
fn the_parser_annotation_parses_each_pods_log_text() {
    let env = Env::new();
    let api = Api::start();
    api.put(pod(
        "prod",
        "json-1",
        NODE,
        json!({}),
        json!({"logferry.io/parser": "json"}),
    ));
    api.put(pod(
        "prod",
        "kv-1",
        NODE,
        json!({}),
        json!({"fluentbit.io/parser": "logfmt"}),
    ));
    api.put(pod(
        "prod",
        "odd-1",
        NODE,
        json!({}),
        json!({"logferry.io/parser": "apache2"}),
    ));
    api.put(pod("prod", "plain-1", NODE, json!({}), json!({})));
    let cri = |path: &PathBuf, lines: Vec<String>| {
        let text: String = lines
            .iter()
            .map(|l| format!("2026-12-04T10:00:00.000000000Z stdout F {l}\n"))
            .collect();
        std::fs::write(path, text).unwrap();
    };
    let json_lines = |tag: &str| {
        (0..20)
            .map(|i| format!("{{\"tag\":\"{tag}\",\"n\":{i}}}"))
            .collect::<Vec<_>>()
    };
    let mut j = json_lines("j");
    j.push("not json at all".into());
    cri(&log_path(&env, "prod", "json-1", &cid(1)), j);
    cri(
        &log_path(&env, "prod", "kv-1", &cid(2)),
        (0..20)
            .map(|i| format!("tag=kv n={i} msg=\"order {i} paid\""))
            .collect(),
    );
    cri(&log_path(&env, "prod", "odd-1", &cid(3)), json_lines("odd"));
    cri(&log_path(&env, "prod", "plain-1", &cid(4)), json_lines("plain"));
    let port = free_port();
    let cfg = config(&env, &api, port, "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "kubernetes_metadata = \"api\"",
        "parser = \"cri\"\nkubernetes_metadata = \"api\"",
    );
    std::fs::write(&cfg, text).unwrap();
    let router = spawn(&cfg, &[]);
    wait_for("81 records", LONG, || env.records().len() == 81);
    let records = env.records();
    let pod_of = |r: &Value| r["kubernetes"]["pod_name"].as_str().unwrap().to_string();
    let of = |p: &str| records.iter().filter(|r| pod_of(r) == p).cloned().collect::<Vec<_>>();
    // json: the payload's fields replace `log`, next to the CRI fields.
    let json = of("json-1");
    let parsed: Vec<_> = json.iter().filter(|r| r.get("log").is_none()).collect();
    assert_eq!(parsed.len(), 20, "{json:?}");
    for r in &parsed {
        assert_eq!(r["tag"], "j");
        assert!(
            r["n"].is_u64() && r["stream"] == "stdout" && r["kubernetes"]["pod_id"] == "uid-prod-json-1",
            "{r}"
        );
    }
    let unparsed: Vec<_> = json.iter().filter(|r| r.get("log").is_some()).collect();
    assert_eq!(unparsed.len(), 1);
    assert_eq!(unparsed[0]["log"], "not json at all");
    // logfmt, by Fluent Bit's annotation.
    let kv = of("kv-1");
    assert_eq!(kv.len(), 20);
    for r in &kv {
        assert!(r.get("log").is_none() && r["tag"] == "kv", "{r}");
        assert!(r["msg"].as_str().unwrap().starts_with("order "), "{r}");
    }
    // An unknown parser and no annotation: `log` kept as the runtime wrote it.
    for p in ["odd-1", "plain-1"] {
        let rs = of(p);
        assert_eq!(rs.len(), 20);
        assert!(
            rs.iter().all(|r| r["log"].as_str().unwrap().starts_with("{\"tag\"")),
            "{rs:?}"
        );
    }
    let text = metrics(port);
    let issue = |reason: &str| {
        metric(
            &text,
            "logferry_source_line_issues_total",
            &[&format!("reason=\"{reason}\"")],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(issue("parse_failed"), 1.0);
    assert_eq!(issue("kubernetes_parser_unknown"), 20.0);
    router.signal(libc::SIGTERM);
    let (st, _) = router.wait(LONG);
    assert!(st.success());
}

/// `namespace_labels = true`: records carry their namespace's labels, and a
/// relabelled namespace's new labels reach the records read after it.
#[test]
fn namespace_labels_follow_the_namespace() {
    let env = Env::new();
    let api = Api::start();
    let ns = |name: &str, labels: Value| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}});
    api.put(ns("prod", json!({"env": "production", "team": "core"})));
    api.put(ns("bare", json!({})));
    api.put(pod("prod", "web-1", NODE, json!({"app": "web"}), json!({})));
    api.put(pod("bare", "job-1", NODE, json!({"app": "job"}), json!({})));
    let web = log_path(&env, "prod", "web-1", ID_WEB);
    write_lines(&web, "first", 0..10);
    write_lines(&log_path(&env, "bare", "job-1", &cid(2)), "bare", 0..10);
    let port = free_port();
    let cfg = config(&env, &api, port, "namespace_labels = true");
    let router = spawn(&cfg, &[]);
    wait_for("the first records", LONG, || {
        by_tag(&env, "first").len() == 10 && by_tag(&env, "bare").len() == 10
    });
    for r in by_tag(&env, "first") {
        assert_eq!(
            r["kubernetes"]["namespace_labels"],
            json!({"env": "production", "team": "core"}),
            "{r}"
        );
        assert_eq!(r["kubernetes"]["labels"], json!({"app": "web"}), "{r}");
    }
    for r in by_tag(&env, "bare") {
        assert!(r["kubernetes"].get("namespace_labels").is_none(), "{r}");
    }
    api.put(ns("prod", json!({"env": "staging"})));
    // The change reaches the cache before the next lines are read.
    wait_for("the relabelled namespace", LONG, || {
        write_lines(&web, "probe", 0..1);
        std::thread::sleep(Duration::from_millis(200));
        by_tag(&env, "probe")
            .iter()
            .any(|r| r["kubernetes"]["namespace_labels"] == json!({"env": "staging"}))
    });
    router.signal(libc::SIGTERM);
    let (st, _) = router.wait(LONG);
    assert!(st.success());
    // Without the key, the namespaces are never asked for.
    assert!(
        api.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .any(|r| r.starts_with("/api/v1/namespaces"))
    );
    let env2 = Env::new();
    write_lines(&log_path(&env2, "prod", "web-1", ID_WEB), "off", 0..5);
    let before = api.state.lock().unwrap().requests.len();
    let port = free_port();
    let router = spawn(&config(&env2, &api, port, ""), &[]);
    wait_for("the records without namespace labels", LONG, || {
        by_tag(&env2, "off").len() == 5
    });
    assert!(
        by_tag(&env2, "off")
            .iter()
            .all(|r| r["kubernetes"].get("namespace_labels").is_none())
    );
    router.signal(libc::SIGTERM);
    let (st, _) = router.wait(LONG);
    assert!(st.success());
    assert!(
        !api.state.lock().unwrap().requests[before..]
            .iter()
            .any(|r| r.starts_with("/api/v1/namespaces"))
    );
}

/// `use_kubelet = true`: the pods come from the kubelet's `/pods`, polled,
/// and the API server is never asked; a pod that appears later is picked up
/// by the next poll, and a failing kubelet leaves the path's fields, counted.
#[test]
fn use_kubelet_reads_the_pods_from_the_kubelet() {
    let env = Env::new();
    let api = Api::start();
    api.put(pod("prod", "web-1", NODE, json!({"app": "web"}), json!({})));
    api.put(pod("prod", "far-1", "node-b", json!({"app": "far"}), json!({})));
    write_lines(&log_path(&env, "prod", "web-1", ID_WEB), "web", 0..10);
    let port = free_port();
    let extra = format!(
        "use_kubelet = true\nkubelet_endpoint = \"{}\"\nkubelet_interval = \"1s\"",
        api.endpoint()
    );
    let cfg = config(&env, &api, port, &extra);
    let router = spawn(&cfg, &[]);
    wait_for("the web records", LONG, || by_tag(&env, "web").len() == 10);
    for r in by_tag(&env, "web") {
        assert_eq!(r["kubernetes"]["labels"], json!({"app": "web"}), "{r}");
        assert_eq!(r["kubernetes"]["pod_id"], "uid-prod-web-1", "{r}");
    }
    // A pod the kubelet starts later: its lines get its labels once a poll saw it.
    api.put(pod("prod", "late-1", NODE, json!({"app": "late"}), json!({})));
    let late = log_path(&env, "prod", "late-1", &cid(7));
    wait_for("the late pod's labels", LONG, || {
        write_lines(&late, "late", 0..1);
        std::thread::sleep(Duration::from_millis(300));
        by_tag(&env, "late")
            .iter()
            .any(|r| r["kubernetes"]["labels"] == json!({"app": "late"}))
    });
    api.set_failing(true);
    wait_for("a failed poll counted", LONG, || {
        metric(
            &metrics(port),
            "logferry_kubernetes_api_errors_total",
            &["reason=\"kubelet\""],
        )
        .unwrap_or(0.0)
            >= 1.0
    });
    api.set_failing(false);
    router.signal(libc::SIGTERM);
    let (st, _) = router.wait(LONG);
    assert!(st.success());
    let s = api.state.lock().unwrap();
    assert!(s.requests.iter().all(|r| r == "/pods"), "{:?}", s.requests);
    assert!(s.tokens.iter().all(|t| t == "Bearer secret-token") && !s.tokens.is_empty());
}

#[test]
fn late_pods_changes_relists_and_deleted_pods_last_lines() {
    let env = Env::new();
    let api = Api::start();
    let path = log_path(&env, "prod", "late-1", ID_WEB);
    // The log exists before its pod is in the API.
    write_lines(&path, "before", 0..5);
    let port = free_port();
    let cfg = config(&env, &api, port, "delete_grace = \"15s\"\nsync_wait = \"30s\"");
    let router = spawn(&cfg, &[]);
    wait_for("the early lines", LONG, || by_tag(&env, "before").len() == 5);
    for r in by_tag(&env, "before") {
        assert_eq!(r["kubernetes"].as_object().unwrap().len(), 4, "no pod yet: {r}");
    }
    let pods = |want: f64| metric(&metrics(port), "logferry_kubernetes_pods", &[]) == Some(want);

    // The pod starts: later lines of the same open file carry it.
    api.put(pod("prod", "late-1", NODE, json!({"app": "v1"}), json!({})));
    wait_for("the pod cached", LONG, || pods(1.0));
    write_lines(&path, "after", 0..5);
    wait_for("the later lines", LONG, || by_tag(&env, "after").len() == 5);
    for r in by_tag(&env, "after") {
        assert_eq!(r["kubernetes"]["labels"], json!({"app": "v1"}));
        assert_eq!(r["kubernetes"]["pod_id"], "uid-prod-late-1");
    }

    // A MODIFIED event reaches the file's fields.
    api.put(pod("prod", "late-1", NODE, json!({"app": "v2"}), json!({})));
    let mut n = 0;
    wait_for("a record with the new label", LONG, || {
        write_lines(&path, "mod", n..n + 1);
        n += 1;
        std::thread::sleep(Duration::from_millis(100));
        by_tag(&env, "mod")
            .iter()
            .any(|r| r["kubernetes"]["labels"]["app"] == "v2")
    });

    // History compacted and the label changed: only a relist after the
    // 410 shows v3.
    let lists = api.lists();
    api.compact();
    api.put(pod("prod", "late-1", NODE, json!({"app": "v3"}), json!({})));
    api.compact();
    wait_for("a relist", LONG, || api.lists() > lists);
    let mut n = 0;
    wait_for("a record with the relisted label", LONG, || {
        write_lines(&path, "relist", n..n + 1);
        n += 1;
        std::thread::sleep(Duration::from_millis(100));
        by_tag(&env, "relist")
            .iter()
            .any(|r| r["kubernetes"]["labels"]["app"] == "v3")
    });
    assert!(
        metric(
            &metrics(port),
            "logferry_kubernetes_api_errors_total",
            &["reason=\"gone\""]
        )
        .unwrap_or(0.0)
            >= 1.0
    );

    // Deleted: the events after the delete (a marker pod) show it was
    // seen; the last lines written after it still carry the pod.
    api.delete("prod", "late-1");
    api.put(pod("prod", "marker", NODE, json!({}), json!({})));
    wait_for("the marker", LONG, || pods(2.0));
    write_lines(&path, "last", 0..5);
    wait_for("the last lines", LONG, || by_tag(&env, "last").len() == 5);
    for r in by_tag(&env, "last") {
        assert_eq!(r["kubernetes"]["labels"], json!({"app": "v3"}), "within the grace: {r}");
    }
    // After the grace the pod is forgotten.
    wait_for("the deleted pod forgotten", LONG, || pods(1.0));
    write_lines(&path, "forgotten", 0..3);
    wait_for("the lines after the grace", LONG, || {
        by_tag(&env, "forgotten").len() == 3
    });
    for r in by_tag(&env, "forgotten") {
        assert_eq!(r["kubernetes"].as_object().unwrap().len(), 4, "{r}");
    }
    drop(router);
}

#[test]
fn a_failing_api_leaves_the_path_fields_and_is_warned_about_once() {
    let env = Env::new();
    let api = Api::start();
    api.put(pod("prod", "web-1", NODE, json!({"app": "web"}), json!({})));
    api.set_failing(true);
    let path = log_path(&env, "prod", "web-1", ID_WEB);
    write_lines(&path, "down", 0..10);
    let port = free_port();
    let cfg = config(&env, &api, port, "sync_wait = \"1s\"");
    let router = spawn(&cfg, &[]);
    wait_for("the lines, while the API fails", LONG, || {
        by_tag(&env, "down").len() == 10
    });
    for r in by_tag(&env, "down") {
        assert_eq!(r["kubernetes"].as_object().unwrap().len(), 4, "{r}");
    }
    wait_for("three failed lists", LONG, || {
        metric(
            &metrics(port),
            "logferry_kubernetes_api_errors_total",
            &["reason=\"list\""],
        )
        .unwrap_or(0.0)
            >= 3.0
    });
    api.set_failing(false);
    wait_for("the pod cached after recovery", LONG, || {
        metric(&metrics(port), "logferry_kubernetes_pods", &[]) == Some(1.0)
    });
    write_lines(&path, "up", 0..10);
    wait_for("the lines after recovery", LONG, || by_tag(&env, "up").len() == 10);
    for r in by_tag(&env, "up") {
        assert_eq!(r["kubernetes"]["labels"], json!({"app": "web"}));
    }
    let err = router.stderr();
    assert_eq!(
        err.matches("Kubernetes API request failed; records keep").count(),
        1,
        "warned once per outage:\n{err}"
    );
    assert!(err.contains("the Kubernetes API answers again"), "{err}");
    assert!(!err.contains("secret-token"), "no credentials in the logs");
    drop(router);
}

fn many_pods(api: &Api, n: u64) {
    let big = "x".repeat(4096);
    for i in 0..n {
        let labels: serde_json::Map<String, Value> = (0..10)
            .map(|l| (format!("label-{l}"), json!(format!("value-{i}-{l}"))))
            .collect();
        api.put(pod(
            "load",
            &format!("pod-{i}"),
            NODE,
            Value::Object(labels),
            json!({"team": "core", "kubectl.kubernetes.io/last-applied-configuration": big}),
        ));
    }
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn two_thousand_pods_stay_charged_and_bounded() {
    let env = Env::new();
    let api = Api::start();
    let port = free_port();
    let cfg = config(&env, &api, port, "");
    // The same router with no pod, for the RSS baseline.
    let router = spawn(&cfg, &[]);
    wait_for("the empty list", LONG, || {
        http_get(port, "/metrics").is_some() && api.lists() >= 1
    });
    std::thread::sleep(Duration::from_millis(500));
    let base = rss_kib(router.pid());
    many_pods(&api, 2000);
    wait_for("2,000 pods cached", LONG, || {
        metric(&metrics(port), "logferry_kubernetes_pods", &[]) == Some(2000.0)
    });
    let text = metrics(port);
    let charged = metric(&text, "logferry_kubernetes_cache_bytes", &[]).unwrap();
    let rss = rss_kib(router.pid());
    eprintln!(
        "2,000 pods: charged {:.1} KiB ({:.0} B/pod); RSS {base} KiB with none, {rss} KiB with them (+{} KiB)",
        charged / 1024.0,
        charged / 2000.0,
        rss.saturating_sub(base)
    );
    // The 4 KiB manifest annotations are not kept, and the charge covers
    // what is: the RSS growth stays within a small factor of it.
    assert!(charged < 2000.0 * 3072.0, "{charged}");
    assert!(((rss.saturating_sub(base)) as f64) < 3.0 * charged / 1024.0 + 8192.0);
    drop(router);

    // With 4 MiB of memory_limit the cache refuses what does not fit in its
    // quarter and says so.
    let env = Env::new();
    let api = Api::start();
    many_pods(&api, 2000);
    let port = free_port();
    let cfg = config(&env, &api, port, "#memory");
    let router = spawn(&cfg, &[]);
    wait_for("pods refused for memory", LONG, || {
        metric(
            &metrics(port),
            "logferry_kubernetes_api_errors_total",
            &["reason=\"memory\""],
        )
        .unwrap_or(0.0)
            >= 1.0
    });
    let text = metrics(port);
    let pods = metric(&text, "logferry_kubernetes_pods", &[]).unwrap();
    let charged = metric(&text, "logferry_kubernetes_cache_bytes", &[]).unwrap();
    eprintln!("memory_limit 4MiB: {pods} pods cached, {charged} bytes charged");
    assert!(pods > 0.0 && pods < 2000.0, "{pods}");
    assert!(
        charged <= 1024.0 * 1024.0,
        "a quarter of memory_limit at most: {charged}"
    );
    // Reading goes on with a full cache: a pod's file is read and shipped.
    write_lines(&log_path(&env, "load", "pod-1999", &cid(7)), "full", 0..100);
    wait_for("records while the cache is full", LONG, || {
        by_tag(&env, "full").len() == 100
    });
    drop(router);
}

#[test]
fn kubernetes_api_keys_are_checked_at_their_place() {
    let env = Env::new();
    for (source, want) in [
        (
            "kubernetes_metadata = \"path\"\n[sources.containers.kubernetes_api]\nnode_name = \"n\"",
            "sources.containers.kubernetes_api",
        ),
        (
            "kubernetes_metadata = \"api\"\n[sources.containers.kubernetes_api]\nendpoint = \"ftp://x\"",
            "sources.containers.kubernetes_api.endpoint",
        ),
        (
            "kubernetes_metadata = \"api\"\n[sources.containers.kubernetes_api]\nnode_name = \"\"",
            "sources.containers.kubernetes_api.node_name",
        ),
        (
            "kubernetes_metadata = \"api\"\n[sources.containers.kubernetes_api]\nannotations_exclude = [\"a[\"]",
            "sources.containers.kubernetes_api.annotations_exclude[0]",
        ),
        (
            "kubernetes_metadata = \"api\"\n[sources.containers.kubernetes_api]\nendpont = \"http://x\"",
            "endpont",
        ),
        (
            "kubernetes_metadata = \"api\"\n[sources.containers.kubernetes_api]\nkubelet_endpoint = \"https://10.0.0.1:10250\"",
            "sources.containers.kubernetes_api.kubelet_endpoint",
        ),
        (
            "kubernetes_metadata = \"api\"\n[sources.containers.kubernetes_api]\nuse_kubelet = true\nnamespace_labels = true",
            "sources.containers.kubernetes_api.namespace_labels",
        ),
        (
            "kubernetes_metadata = \"api\"\n[sources.containers.kubernetes_api]\nuse_kubelet = true\nkubelet_endpoint = \"10250\"",
            "sources.containers.kubernetes_api.kubelet_endpoint",
        ),
    ] {
        let cfg = env.write_config(&format!(
            "[sources.containers]\ntype = \"file\"\ninclude = [\"/tmp/x/*.log\"]\n{source}\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"containers\"]\n"
        ));
        let (code, out, err) = validate_config(&cfg);
        assert_ne!(code, Some(0), "{source}");
        assert!(
            err.contains(want) || out.contains(want),
            "{source}: want {want} in\n{err}{out}"
        );
    }
    // Without an endpoint nor the in-cluster environment, `run` says which key.
    let cfg = env.write_config(
        "[global]\ndata_dir = \"DATA\"\n[sources.containers]\ntype = \"file\"\ninclude = [\"/tmp/x/*.log\"]\nkubernetes_metadata = \"api\"\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"containers\"]\n"
            .replace("DATA", &env.path("data").display().to_string())
            .as_str(),
    );
    let out = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("NODE_NAME", "n1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("kubernetes_api.endpoint is not set"), "{err}");
}
