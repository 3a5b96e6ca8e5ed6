//! Pod metadata from the Kubernetes API (`kubernetes_metadata = "api"`):
//! the path's fields (`kubernetes.rs`) plus the pod's labels, annotations,
//! uid, node, container image and controller, with Fluent Bit's names.
//!
//! Why a watch of this node's pods only: a DaemonSet runs one router per
//! node, and each needs the pods whose logs it tails. A list and watch with
//! `fieldSelector=spec.nodeName=<node>` costs the API server one watch per
//! node and sends each router only its own pods' changes; the list asks for
//! `resourceVersion=0` (kube's `any_semantic`), which the API server answers
//! from its watch cache, not from etcd. No request is made per record or per
//! file.
//!
//! Why kube's `watcher` and not its `reflector`: a reflector's store keeps
//! whole `Pod` objects (spec and status, several KiB each) and forgets a pod
//! the moment it is deleted. This cache keeps only what records carry (a
//! [`PodMeta`], labels and annotations already filtered), charges it to
//! `memory_limit`, and keeps a deleted pod for `delete_grace`, because the
//! kubelet deletes the pod object while the router still reads its last
//! lines.
//!
//! Why resolve at batch time: a file may be opened before its pod is in the
//! cache (the kubelet creates the log as the container starts; the watch
//! event can come later, or the API may be down). Each file keeps the
//! cache's generation it resolved at; a batch first compares it with the
//! cache's (one atomic load), and looks the pod up again only when the
//! cache changed since. The fields are an `Arc` shared by every batch of the
//! file until then.
//!
//! Why errors are not fatal: the path's fields need no API. When the watch
//! fails, records keep those (and pods already cached keep theirs), the
//! failure is counted (`logferry_kubernetes_api_errors_total`) and warned
//! about once per outage, and the watch is retried with an exponential
//! backoff with jitter (0.5 s .. 30 s), so a thousand nodes do not retry in
//! step against a recovering API server. A `410 Gone` is the API server
//! saying our resource version is too old: kube relists at once.
//!
//! Why the memory charge can refuse a pod: everything held counts under
//! `memory_limit`, and the cache takes at most a quarter of it, so batches
//! always find room (a full cache must not stall reading). A pod that does
//! not fit is not cached (its records keep
//! the path's fields), counted, and the watch relists once room returns.
//!
//! Token and CA: kube re-reads `token_file` and `ca_file` about every minute,
//! so the projected service-account token (rotated hourly by the kubelet)
//! keeps working without a restart.
//!
//! Why the `logferry.io/parser` (or `fluentbit.io/parser`) annotation parses
//! the `log` text and not the line: the line's format is the runtime's (CRI
//! or json-file) and fixed per source; what varies by pod is its
//! application's format inside `log`. It is applied per batch like the other
//! fields, so lines read before the pod is known pass unparsed, as they
//! pass without labels.
//!
//! Why namespace labels come from a watch of all namespaces and not a get
//! per namespace seen: a cluster has tens of namespaces, which change
//! rarely, and a watch costs the API server nothing per record or file.
//!
//! Why `use_kubelet` polls: the kubelet's `/pods` has no watch. It costs
//! the API server nothing, and the kubelet answers from memory; a pod
//! created between two polls is enriched from the next one on, as a late
//! watch event would be.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::kubernetes::ContainerLog;
use crate::confdiag::{Ctx, Seg};
use crate::event::{Fields, Records};
use crate::memory::Charge;
use crate::metrics::Metrics;
use crate::transforms::parse::Reparser;

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Annotations that say "drop this pod's records" when `"true"`.
const EXCLUDE_ANNOTATIONS: [&str; 2] = ["logferry.io/exclude", "fluentbit.io/exclude"];
/// Annotations naming the parser of a pod's `log` text; the first present wins.
const PARSER_ANNOTATIONS: [&str; 2] = ["logferry.io/parser", "fluentbit.io/parser"];

/// Parses the `log` text of annotated pods' records, as a `parse` transform
/// with `reserve_data = true` would: the parsed fields join the record's
/// others and replace `log`. A record that does not parse passes as it was,
/// counted (`parse_failed`, `parse_field_missing`).
pub struct AnnotatedParsers {
    json: Option<Reparser>,
    logfmt: Option<Reparser>,
    missing: Counter,
    failed: Counter,
    unknown: Counter,
}

impl AnnotatedParsers {
    pub fn new(m: &crate::metrics::ComponentMetrics) -> Self {
        AnnotatedParsers {
            json: None,
            logfmt: None,
            missing: m.line_issue("parse_field_missing"),
            failed: m.line_issue("parse_failed"),
            unknown: m.line_issue("kubernetes_parser_unknown"),
        }
    }

    pub fn apply(&mut self, parser: LogParser, records: Records) -> Records {
        let (slot, name) = match parser {
            LogParser::Json => (&mut self.json, "json"),
            LogParser::Logfmt => (&mut self.logfmt, "logfmt"),
            LogParser::Unknown => {
                self.unknown.inc_by(records.len() as u64);
                return records;
            }
        };
        let reparser = slot.get_or_insert_with(|| {
            let cfg = serde_json::from_value(serde_json::json!({"parser": name, "reserve_data": true}))
                .expect("a built-in parser's config");
            Reparser::new(cfg).expect("a built-in parser")
        });
        reparser.rewrite_all(&records, &self.missing, &self.failed)
    }
}

/// The parser a pod's annotation picks for the `log` text of its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogParser {
    Json,
    Logfmt,
    /// A name this router has no parser for: records pass unparsed, counted
    /// (`kubernetes_parser_unknown`).
    Unknown,
}

impl LogParser {
    fn named(name: &str) -> LogParser {
        match name.trim().to_ascii_lowercase().as_str() {
            "json" => LogParser::Json,
            "logfmt" => LogParser::Logfmt,
            _ => LogParser::Unknown,
        }
    }
}
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often deleted pods past their grace are forgotten.
const SWEEP: Duration = Duration::from_millis(500);

/// `[sources.<id>.kubernetes_api]`: every key optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesApiConfig {
    /// The API server. Default: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    pub endpoint: Option<String>,
    /// Bearer token, re-read about every minute. Default: the service
    /// account's token, when that file exists.
    pub token_file: Option<PathBuf>,
    /// CA bundle (PEM) for an https endpoint. Default: the service account's
    /// `ca.crt`, when that file exists.
    pub ca_file: Option<PathBuf>,
    /// This node's name (watch only its pods). Default: `$NODE_NAME`.
    pub node_name: Option<String>,
    /// How long a deleted pod stays cached, so its last lines are enriched.
    #[serde(default = "default_delete_grace", with = "humantime_serde")]
    pub delete_grace: Duration,
    /// How long the source waits at start for the first list of pods
    /// before it reads (records read before it carry only the path fields).
    #[serde(default = "default_sync_wait", with = "humantime_serde")]
    pub sync_wait: Duration,
    /// Add `kubernetes.labels`.
    #[serde(default = "default_true")]
    pub labels: bool,
    /// Add `kubernetes.annotations`.
    #[serde(default = "default_true")]
    pub annotations: bool,
    /// Globs over annotation keys: when not empty, only matching keys are kept.
    #[serde(default)]
    pub annotations_include: Vec<String>,
    /// Globs over annotation keys never kept (applied after the include list).
    #[serde(default = "default_annotations_exclude")]
    pub annotations_exclude: Vec<String>,
    /// Drop the records of pods annotated `logferry.io/exclude: "true"` (or
    /// `fluentbit.io/exclude`), counted as `kubernetes_excluded`.
    #[serde(default = "default_true")]
    pub exclude_by_annotation: bool,
    /// Parse the `log` text of pods annotated `logferry.io/parser` (or
    /// `fluentbit.io/parser`) with the parser it names: `json` or `logfmt`.
    #[serde(default = "default_true")]
    pub parser_by_annotation: bool,
    /// Add `kubernetes.namespace_labels`: the labels of the pod's namespace,
    /// from a second watch (of all namespaces: there are few).
    #[serde(default)]
    pub namespace_labels: bool,
    /// Read this node's pods from the kubelet's `/pods` instead of watching
    /// the API server (Fluent Bit's `Use_Kubelet`): no load on the API server
    /// at all, at the price of a poll. Needs `nodes/proxy` in the RBAC.
    #[serde(default)]
    pub use_kubelet: bool,
    /// The kubelet. Default: `https://$NODE_IP:10250` (the downward API's
    /// `status.hostIP`), else `https://127.0.0.1:10250` (host network).
    pub kubelet_endpoint: Option<String>,
    /// How often the kubelet's `/pods` is read.
    #[serde(default = "default_kubelet_interval", with = "humantime_serde")]
    pub kubelet_interval: Duration,
    /// Verify the kubelet's certificate against `ca_file`. A kubelet whose
    /// serving certificate is self-signed needs `false`.
    #[serde(default = "default_true")]
    pub kubelet_tls_verify: bool,
}

impl Default for KubernetesApiConfig {
    fn default() -> Self {
        KubernetesApiConfig {
            endpoint: None,
            token_file: None,
            ca_file: None,
            node_name: None,
            delete_grace: default_delete_grace(),
            sync_wait: default_sync_wait(),
            labels: true,
            annotations: true,
            annotations_include: Vec::new(),
            annotations_exclude: default_annotations_exclude(),
            exclude_by_annotation: true,
            parser_by_annotation: true,
            namespace_labels: false,
            use_kubelet: false,
            kubelet_endpoint: None,
            kubelet_interval: default_kubelet_interval(),
            kubelet_tls_verify: true,
        }
    }
}

fn default_kubelet_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_delete_grace() -> Duration {
    Duration::from_secs(60)
}

fn default_sync_wait() -> Duration {
    Duration::from_secs(10)
}

fn default_true() -> bool {
    true
}

/// kubectl's copy of the whole manifest: often KiBs per pod, never useful
/// on a log line.
fn default_annotations_exclude() -> Vec<String> {
    vec!["kubectl.kubernetes.io/last-applied-configuration".to_string()]
}

impl KubernetesApiConfig {
    /// Checks what serde cannot; `base` is the path of this table.
    pub fn validate(&self, ctx: &mut Ctx<'_>, base: &[Seg]) -> bool {
        let at = |k: &str| {
            let mut p = base.to_vec();
            p.push(Seg::Key(k.to_string()));
            p
        };
        let mut ok = true;
        for (key, value) in [
            ("endpoint", &self.endpoint),
            ("kubelet_endpoint", &self.kubelet_endpoint),
        ] {
            let Some(e) = value else { continue };
            match e.parse::<http::Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
                Ok(_) => {
                    ctx.error(&at(key), format!("`{e}` is not an http:// or https:// URL with a host"));
                    ok = false;
                }
                Err(err) => {
                    ctx.error(&at(key), format!("`{e}` is not a URL: {err}"));
                    ok = false;
                }
            }
        }
        if !self.use_kubelet {
            for (key, set) in [
                ("kubelet_endpoint", self.kubelet_endpoint.is_some()),
                ("kubelet_tls_verify", !self.kubelet_tls_verify),
            ] {
                if set {
                    ctx.error(&at(key), "is only read with use_kubelet = true");
                    ok = false;
                }
            }
        } else if self.namespace_labels {
            ctx.error(
                &at("namespace_labels"),
                "needs the API server's watch of namespaces: not with use_kubelet = true (the kubelet knows only pods)",
            );
            ok = false;
        }
        if self.kubelet_interval < Duration::from_secs(1) && self.use_kubelet {
            ctx.error(&at("kubelet_interval"), "must be at least 1s");
            ok = false;
        }
        if let Some(n) = &self.node_name
            && n.trim().is_empty()
        {
            ctx.error(
                &at("node_name"),
                "is empty: set NODE_NAME from the downward API (fieldRef spec.nodeName), or remove the key",
            );
            ok = false;
        }
        for (key, list) in [
            ("annotations_include", &self.annotations_include),
            ("annotations_exclude", &self.annotations_exclude),
        ] {
            for (i, pat) in list.iter().enumerate() {
                if let Err(e) = globset::Glob::new(pat) {
                    let mut p = at(key);
                    p.push(Seg::Index(i));
                    ctx.error(&p, format!("invalid glob `{pat}`: {e}"));
                    ok = false;
                }
            }
        }
        if self.delete_grace > Duration::from_secs(3600) {
            ctx.error(&at("delete_grace"), "must be at most 1h");
            ok = false;
        }
        ok
    }
}

/// What a pod adds to its records, built once per pod event.
#[derive(Debug, Clone, PartialEq)]
pub struct PodMeta {
    /// `pod_id`, `host`, `labels`, `annotations`, `ownerReferences`: merged
    /// as is into each file's `kubernetes` object.
    pub object: Map<String, Value>,
    /// Container name to image, for `container_image` (and init and
    /// ephemeral containers).
    pub images: BTreeMap<String, String>,
    /// Annotated to be dropped.
    pub exclude: bool,
    /// Annotated with a parser for its `log` text.
    pub parser: Option<LogParser>,
    /// Bytes charged to `memory_limit` for this entry (an estimate of the
    /// heap it holds).
    pub bytes: usize,
}

/// Which annotations are kept.
#[derive(Debug, Clone)]
pub struct Filters {
    labels: bool,
    annotations: bool,
    include: Option<globset::GlobSet>,
    exclude: globset::GlobSet,
    exclude_by_annotation: bool,
    parser_by_annotation: bool,
}

fn glob_set(pats: &[String]) -> globset::GlobSet {
    let mut b = globset::GlobSetBuilder::new();
    for p in pats {
        if let Ok(g) = globset::Glob::new(p) {
            b.add(g);
        }
    }
    b.build().unwrap_or_else(|_| globset::GlobSet::empty())
}

impl Filters {
    pub fn new(cfg: &KubernetesApiConfig) -> Self {
        Filters {
            labels: cfg.labels,
            annotations: cfg.annotations,
            include: (!cfg.annotations_include.is_empty()).then(|| glob_set(&cfg.annotations_include)),
            exclude: glob_set(&cfg.annotations_exclude),
            exclude_by_annotation: cfg.exclude_by_annotation,
            parser_by_annotation: cfg.parser_by_annotation,
        }
    }
}

/// The parts of a pod that its records carry, as the watcher decodes them.
///
/// Why not k8s-openapi's `Pod`: decoding into it builds the whole spec and
/// status (volumes, probes, every container's env...) for each event, only to
/// drop them, and links a deserializer for each of those hundreds of types
/// into the binary. Unknown fields are skipped by serde, so this decodes the
/// same objects with a fraction of the code (the shipped binary has a 30 MiB
/// budget, issue 17).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Pod {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<PodSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub node_name: Option<String>,
    #[serde(default)]
    pub containers: Vec<Container>,
    pub init_containers: Option<Vec<Container>>,
    pub ephemeral_containers: Option<Vec<Container>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Container {
    pub name: String,
    pub image: Option<String>,
}

/// A namespace as the namespace watch decodes it: its labels are all it needs.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Namespace {
    pub metadata: ObjectMeta,
}

/// `kube::Resource` for a core/v1 kind decoded into our own type.
macro_rules! core_v1_resource {
    ($ty:ty, $kind:literal, $plural:literal, $scope:ty) => {
        impl kube::Resource for $ty {
            type DynamicType = ();
            type Scope = $scope;

            fn kind(_: &()) -> Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                "".into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                "v1".into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

core_v1_resource!(Pod, "Pod", "pods", k8s_openapi::NamespaceResourceScope);
core_v1_resource!(Namespace, "Namespace", "namespaces", k8s_openapi::ClusterResourceScope);

/// The fields of `pod` its records carry (Fluent Bit's names).
pub fn pod_meta(pod: &Pod, f: &Filters) -> PodMeta {
    let md = &pod.metadata;
    let mut object = Map::new();
    if let Some(uid) = &md.uid {
        object.insert("pod_id".into(), Value::String(uid.clone()));
    }
    if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()) {
        object.insert("host".into(), Value::String(node.clone()));
    }
    if f.labels
        && let Some(labels) = md.labels.as_ref().filter(|l| !l.is_empty())
    {
        let m: Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        object.insert("labels".into(), Value::Object(m));
    }
    let all = md.annotations.as_ref();
    let exclude = f.exclude_by_annotation
        && all.is_some_and(|a| {
            EXCLUDE_ANNOTATIONS
                .iter()
                .any(|k| a.get(*k).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")))
        });
    if f.annotations
        && let Some(a) = all
    {
        let m: Map<String, Value> = a
            .iter()
            .filter(|(k, _)| {
                f.include.as_ref().is_none_or(|i| i.is_match(k.as_str())) && !f.exclude.is_match(k.as_str())
            })
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        if !m.is_empty() {
            object.insert("annotations".into(), Value::Object(m));
        }
    }
    let owners: Vec<Value> = md
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.controller == Some(true))
        .map(|o| serde_json::json!({"kind": o.kind, "name": o.name}))
        .collect();
    if !owners.is_empty() {
        object.insert("ownerReferences".into(), Value::Array(owners));
    }
    let mut images = BTreeMap::new();
    if let Some(spec) = &pod.spec {
        for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
            if let Some(i) = &c.image {
                images.insert(c.name.clone(), i.clone());
            }
        }
        for c in spec.ephemeral_containers.iter().flatten() {
            if let Some(i) = &c.image {
                images.insert(c.name.clone(), i.clone());
            }
        }
    }
    let parser = if f.parser_by_annotation {
        all.and_then(|a| PARSER_ANNOTATIONS.iter().find_map(|k| a.get(*k)))
            .map(|name| LogParser::named(name))
    } else {
        None
    };
    let mut meta = PodMeta {
        object,
        images,
        exclude,
        parser,
        bytes: 0,
    };
    meta.bytes = estimate_bytes(&meta) + md.name.as_ref().map_or(0, String::len) * 2;
    meta
}

/// Heap bytes a [`PodMeta`] holds, roughly: its strings plus a fixed cost per
/// map entry and per value (allocation headers, tree nodes).
fn estimate_bytes(m: &PodMeta) -> usize {
    fn value(v: &Value) -> usize {
        48 + match v {
            Value::String(s) => s.len(),
            Value::Array(a) => a.iter().map(value).sum(),
            Value::Object(o) => o.iter().map(|(k, v)| 48 + k.len() + value(v)).sum(),
            _ => 0,
        }
    }
    let object: usize = m.object.iter().map(|(k, v)| 48 + k.len() + value(v)).sum();
    let images: usize = m.images.iter().map(|(k, v)| 96 + k.len() + v.len()).sum();
    256 + object + images
}

/// The `kubernetes` fragment of a file: its path's fields, plus its pod's.
pub fn fields_for(
    c: &ContainerLog<'_>,
    pod: Option<&PodMeta>,
    namespace_labels: Option<&Map<String, Value>>,
) -> Arc<Fields> {
    let mut o = Map::new();
    o.insert("pod_name".into(), c.pod_name.into());
    o.insert("namespace_name".into(), c.namespace_name.into());
    o.insert("container_name".into(), c.container_name.into());
    o.insert("container_id".into(), c.container_id.into());
    if let Some(p) = pod {
        for (k, v) in &p.object {
            o.insert(k.clone(), v.clone());
        }
        if let Some(i) = p.images.get(c.container_name) {
            o.insert("container_image".into(), Value::String(i.clone()));
        }
    }
    if let Some(l) = namespace_labels.filter(|l| !l.is_empty()) {
        o.insert("namespace_labels".into(), Value::Object(l.clone()));
    }
    Arc::new(Fields::new([("kubernetes".to_string(), Value::Object(o))]))
}

struct Entry {
    meta: Arc<PodMeta>,
    /// The cache generation of the last change of this entry.
    version: u64,
    /// When the pod was deleted (kept until `delete_grace` after).
    deleted: Option<Instant>,
}

struct NsEntry {
    labels: Arc<Map<String, Value>>,
    /// The cache generation of their last change.
    version: u64,
    /// Charged to `memory_limit` for them.
    bytes: usize,
}

struct Inner {
    pods: HashMap<(String, String), Entry>,
    /// Namespace labels (`namespace_labels = true`).
    namespaces: HashMap<String, NsEntry>,
    charge: Charge,
    /// Sum of the entries' `bytes`.
    bytes: usize,
    /// At most this many bytes (a share of `memory_limit`, so batches
    /// always find room).
    max: usize,
}

/// The pods of this node, shared by the watch task (writer) and the file
/// source thread (reader).
pub struct PodCache {
    inner: RwLock<Inner>,
    generation: AtomicU64,
    synced: AtomicBool,
    pods: Gauge,
    bytes: Gauge,
}

/// A pod as a file of the source sees it.
pub struct Lookup {
    pub version: u64,
    pub meta: Arc<PodMeta>,
}

/// A namespace's labels as a file of the source sees them.
pub struct NamespaceLookup {
    pub version: u64,
    pub labels: Arc<Map<String, Value>>,
}

impl PodCache {
    /// `max`: the most bytes the cache may hold.
    pub fn new(memory: Arc<Semaphore>, max: usize, metrics: &Metrics, id: &str) -> Self {
        let (pods, bytes) = metrics.kubernetes_cache(id);
        PodCache {
            inner: RwLock::new(Inner {
                pods: HashMap::new(),
                namespaces: HashMap::new(),
                charge: Charge::new(memory),
                bytes: 0,
                max,
            }),
            generation: AtomicU64::new(1),
            synced: AtomicBool::new(false),
            pods,
            bytes,
        }
    }

    /// Changes on every insert, update or removal.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// True once the first list of pods is in.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn lookup(&self, namespace: &str, pod: &str) -> Option<Lookup> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        g.pods.get(&(namespace.to_string(), pod.to_string())).map(|e| Lookup {
            version: e.version,
            meta: e.meta.clone(),
        })
    }

    pub fn namespace(&self, namespace: &str) -> Option<NamespaceLookup> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        g.namespaces.get(namespace).map(|e| NamespaceLookup {
            version: e.version,
            labels: e.labels.clone(),
        })
    }

    /// Sets a namespace's labels; false when `memory_limit` has no room.
    pub fn apply_namespace(&self, name: &str, labels: Map<String, Value>) -> bool {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let old = g.namespaces.get(name);
        if old.is_some_and(|e| *e.labels == labels) {
            return true;
        }
        let old_bytes = old.map_or(0, |e| e.bytes);
        let bytes = 96
            + name.len()
            + labels
                .iter()
                .map(|(k, v)| 96 + k.len() + v.as_str().map_or(0, str::len))
                .sum::<usize>();
        let want = g.bytes - old_bytes + bytes;
        if want > g.max || !g.charge.resize(want) {
            return false;
        }
        g.bytes = want;
        let version = self.bump();
        g.namespaces.insert(
            name.to_string(),
            NsEntry {
                labels: Arc::new(labels),
                version,
                bytes,
            },
        );
        self.publish(&g);
        true
    }

    /// Forgets a deleted namespace, or, with `keep`, every one not in it
    /// (after a relist).
    pub fn remove_namespaces(&self, gone: Option<&str>, keep: Option<&HashSet<String>>) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let drop: Vec<String> = g
            .namespaces
            .keys()
            .filter(|k| gone == Some(k.as_str()) || keep.is_some_and(|l| !l.contains(*k)))
            .cloned()
            .collect();
        if drop.is_empty() {
            return;
        }
        for k in drop {
            if let Some(e) = g.namespaces.remove(&k) {
                g.bytes -= e.bytes;
            }
        }
        let want = g.bytes;
        g.charge.resize(want);
        self.bump();
        self.publish(&g);
    }

    /// Bytes charged to `memory_limit` now.
    pub fn charged(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).charge.bytes()
    }

    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn bump(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    fn publish(&self, g: &Inner) {
        self.pods.set(g.pods.len() as i64);
        self.bytes.set(g.charge.bytes() as i64);
    }

    /// Adds or replaces a pod; false when `memory_limit` has no room for it
    /// (then the cache is as before, with an older version of it, if any).
    pub fn apply(&self, key: (String, String), meta: PodMeta) -> bool {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let old = g.pods.get(&key).map_or(0, |e| e.meta.bytes);
        if g.pods.get(&key).is_some_and(|e| *e.meta == meta && e.deleted.is_none()) {
            return true;
        }
        let want = g.bytes - old + meta.bytes;
        if want > g.max || !g.charge.resize(want) {
            return false;
        }
        g.bytes = want;
        let version = self.bump();
        g.pods.insert(
            key,
            Entry {
                meta: Arc::new(meta),
                version,
                deleted: None,
            },
        );
        self.publish(&g);
        true
    }

    /// Marks a pod deleted: it stays until [`PodCache::sweep`] finds it
    /// older than the grace.
    pub fn delete(&self, key: &(String, String), now: Instant) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = g.pods.get_mut(key)
            && e.deleted.is_none()
        {
            e.deleted = Some(now);
        }
    }

    /// After a relist: pods cached but not listed were deleted meanwhile.
    fn retain_listed(&self, listed: &HashSet<(String, String)>, now: Instant) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        for (k, e) in g.pods.iter_mut() {
            if !listed.contains(k) && e.deleted.is_none() {
                e.deleted = Some(now);
            }
        }
    }

    /// Forgets pods deleted more than `grace` before `now`.
    pub fn sweep(&self, now: Instant, grace: Duration) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let before = g.pods.len();
        let mut freed = 0;
        g.pods.retain(|_, e| {
            let keep = e.deleted.is_none_or(|t| now.saturating_duration_since(t) < grace);
            if !keep {
                freed += e.meta.bytes;
            }
            keep
        });
        if g.pods.len() != before {
            let want = g.bytes - freed;
            g.bytes = want;
            g.charge.resize(want);
            self.bump();
            self.publish(&g);
        }
    }
}

/// What the file source keeps per file.
pub struct FileMeta {
    namespace: String,
    pod: String,
    container: String,
    container_id: String,
    /// The cache generation `fields` was resolved at.
    generation: u64,
    /// The versions of the pod entry and of the namespace's labels `fields`
    /// was built from (`None`: path only).
    version: (Option<u64>, Option<u64>),
    pub fields: Arc<Fields>,
    pub exclude: bool,
    pub parser: Option<LogParser>,
}

impl FileMeta {
    pub fn new(c: &ContainerLog<'_>) -> Self {
        FileMeta {
            namespace: c.namespace_name.to_string(),
            pod: c.pod_name.to_string(),
            container: c.container_name.to_string(),
            container_id: c.container_id.to_string(),
            generation: 0,
            version: (None, None),
            fields: fields_for(c, None, None),
            exclude: false,
            parser: None,
        }
    }

    /// Brings `fields` up to date with the cache; cheap when nothing changed.
    pub fn refresh(&mut self, cache: &PodCache) {
        let g = cache.generation();
        if g == self.generation {
            return;
        }
        self.generation = g;
        let found = cache.lookup(&self.namespace, &self.pod);
        let ns = cache.namespace(&self.namespace);
        let version = (found.as_ref().map(|l| l.version), ns.as_ref().map(|n| n.version));
        if version == self.version {
            return;
        }
        self.version = version;
        let c = ContainerLog {
            pod_name: &self.pod,
            namespace_name: &self.namespace,
            container_name: &self.container,
            container_id: &self.container_id,
        };
        self.fields = fields_for(&c, found.as_ref().map(|l| &*l.meta), ns.as_ref().map(|n| &*n.labels));
        self.exclude = found.as_ref().is_some_and(|l| l.meta.exclude);
        self.parser = found.and_then(|l| l.meta.parser);
    }
}

/// Why the watch failed, as the metric's `reason` label.
fn reason(e: &watcher::Error) -> &'static str {
    match e {
        watcher::Error::WatchError(s) if s.code == 410 => "gone",
        watcher::Error::WatchError(_) => "watch_event",
        watcher::Error::InitialListFailed(_) => "list",
        watcher::Error::WatchStartFailed(_) => "watch_start",
        watcher::Error::WatchFailed(_) => "watch",
        _ => "other",
    }
}

/// Everything the watch needs, resolved from the config and the environment.
pub struct Watch {
    client: kube::Client,
    node: String,
    filters: Filters,
    grace: Duration,
    namespace_labels: bool,
    /// Poll the kubelet's `/pods` this often instead of watching.
    kubelet: Option<Duration>,
}

/// The in-cluster defaults, or what the config says. Errors name the key.
pub fn resolve(cfg: &KubernetesApiConfig) -> Result<(kube::Config, String), String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let node = match (&cfg.node_name, env("NODE_NAME")) {
        (Some(n), _) => n.clone(),
        (None, Some(n)) => n,
        (None, None) => {
            return Err("kubernetes_api.node_name is not set and NODE_NAME is empty: set it from the downward API (fieldRef spec.nodeName)".into());
        }
    };
    let kubelet = cfg.use_kubelet.then(|| match (&cfg.kubelet_endpoint, env("NODE_IP")) {
        (Some(e), _) => e.clone(),
        (None, Some(ip)) if ip.contains(':') => format!("https://[{ip}]:10250"),
        (None, Some(ip)) => format!("https://{ip}:10250"),
        (None, None) => "https://127.0.0.1:10250".to_string(),
    });
    let endpoint = match (
        kubelet.as_ref().or(cfg.endpoint.as_ref()),
        env("KUBERNETES_SERVICE_HOST"),
        env("KUBERNETES_SERVICE_PORT"),
    ) {
        (Some(e), _, _) => e.clone(),
        (None, Some(h), Some(p)) if h.contains(':') => format!("https://[{h}]:{p}"),
        (None, Some(h), Some(p)) => format!("https://{h}:{p}"),
        _ => {
            return Err("kubernetes_api.endpoint is not set and KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not in the environment (not in a pod?)".into());
        }
    };
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("kubernetes_api.endpoint `{endpoint}`: {e}"))?;
    let https = uri.scheme_str() == Some("https");
    let mut kc = kube::Config::new(uri);
    let sa = |f: &str| {
        let p = PathBuf::from(SA_DIR).join(f);
        p.exists().then_some(p)
    };
    let token = cfg.token_file.clone().or_else(|| sa("token"));
    if let Some(t) = token {
        if !t.exists() {
            return Err(format!("kubernetes_api.token_file {}: no such file", t.display()));
        }
        kc.auth_info.token_file = Some(t.display().to_string());
    }
    if https && let Some(ca) = cfg.ca_file.clone().or_else(|| sa("ca.crt")) {
        let pem = std::fs::read(&ca).map_err(|e| format!("kubernetes_api.ca_file {}: {e}", ca.display()))?;
        let ders = pem_certs(&pem).map_err(|e| format!("kubernetes_api.ca_file {}: {e}", ca.display()))?;
        kc.root_cert = Some(ders);
        kc.root_cert_file = Some(ca);
    }
    kc.read_timeout = None;
    if kubelet.is_some() {
        // A poll, not a watch: a request that hangs is an error.
        kc.read_timeout = Some(Duration::from_secs(30));
        kc.accept_invalid_certs = !cfg.kubelet_tls_verify;
    }
    Ok((kc, node))
}

/// The DER certificates of a PEM bundle.
fn pem_certs(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    let certs = certs.map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs.into_iter().map(|c| c.to_vec()).collect())
}

impl Watch {
    /// Needs a tokio runtime context (the client's connection pool).
    pub fn new(cfg: &KubernetesApiConfig) -> Result<Self, String> {
        let (kc, node) = resolve(cfg)?;
        let client = kube::Client::try_from(kc).map_err(|e| format!("kubernetes_api: cannot build the client: {e}"))?;
        Ok(Watch {
            client,
            node,
            filters: Filters::new(cfg),
            grace: cfg.delete_grace,
            namespace_labels: cfg.namespace_labels,
            kubelet: cfg.use_kubelet.then_some(cfg.kubelet_interval),
        })
    }

    /// Keeps `cache` in step with this node's pods until `stop`.
    pub async fn run(self, cache: Arc<PodCache>, metrics: Arc<Metrics>, id: String, stop: CancellationToken) {
        if let Some(every) = self.kubelet {
            return self.poll_kubelet(every, cache, metrics, id, stop).await;
        }
        use futures_util::StreamExt;
        let api: kube::Api<Pod> = kube::Api::all(self.client.clone());
        let wc = watcher::Config::default()
            .fields(&format!("spec.nodeName={}", self.node))
            .any_semantic();
        let errors = |r: &'static str| -> Counter { metrics.kubernetes_api_error(&id, r) };
        let mut stream = watcher(api.clone(), wc.clone()).boxed();
        // Namespace labels: a watch of every namespace, retried by kube's
        // own backoff (its errors only leave the labels as they were).
        let mut namespaces = self.namespace_labels.then(|| {
            use kube::runtime::WatchStreamExt;
            let api: kube::Api<Namespace> = kube::Api::all(self.client.clone());
            watcher(api, watcher::Config::default().any_semantic())
                .default_backoff()
                .boxed()
        });
        let mut ns_listed: Option<HashSet<String>> = None;
        let mut sweep = tokio::time::interval(SWEEP);
        let mut listed: Option<HashSet<(String, String)>> = None;
        let mut failures: u32 = 0;
        let mut failing = false;
        // Pods refused for want of memory: relist when there is room.
        let mut missed = false;
        tracing::info!(node = %self.node, "watching this node's pods in the Kubernetes API");
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => return,
                _ = sweep.tick() => {
                    cache.sweep(Instant::now(), self.grace);
                    if missed && cache.inner.read().map(|g| g.charge.available()).unwrap_or(0) > 1024 * 1024 {
                        missed = false;
                        listed = None;
                        stream = watcher(api.clone(), wc.clone()).boxed();
                    }
                    continue;
                }
                ev = stream.next() => ev,
                Some(ev) = async {
                    match namespaces.as_mut() {
                        Some(s) => s.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    match ev {
                        Ok(watcher::Event::Init) => ns_listed = Some(HashSet::new()),
                        Ok(watcher::Event::InitApply(n) | watcher::Event::Apply(n)) => {
                            if let Some(name) = n.metadata.name {
                                let labels = n.metadata.labels.unwrap_or_default()
                                    .into_iter().map(|(k, v)| (k, Value::String(v))).collect();
                                if !cache.apply_namespace(&name, labels) {
                                    errors("memory").inc();
                                }
                                if let Some(l) = ns_listed.as_mut() {
                                    l.insert(name);
                                }
                            }
                        }
                        Ok(watcher::Event::InitDone) => {
                            if let Some(l) = ns_listed.take() {
                                cache.remove_namespaces(None, Some(&l));
                            }
                        }
                        Ok(watcher::Event::Delete(n)) => cache.remove_namespaces(n.metadata.name.as_deref(), None),
                        Err(e) => {
                            errors("namespaces").inc();
                            tracing::debug!(error = %e, "the namespace watch failed; retrying");
                        }
                    }
                    continue;
                }
            };
            let Some(ev) = ev else {
                // The watcher stream never ends; start over if it does.
                stream = watcher(api.clone(), wc.clone()).boxed();
                continue;
            };
            let now = Instant::now();
            match ev {
                Ok(ev) => {
                    // `Init` comes before the list is even requested: not a
                    // sign that the API answers.
                    let answered = !matches!(ev, watcher::Event::Init);
                    if answered && failing {
                        tracing::info!("the Kubernetes API answers again");
                        failing = false;
                    }
                    if answered {
                        failures = 0;
                    }
                    match ev {
                        watcher::Event::Init => listed = Some(HashSet::new()),
                        watcher::Event::InitApply(p) => {
                            if let Some(k) = key(&p) {
                                missed |= !cache.apply(k.clone(), pod_meta(&p, &self.filters));
                                if let Some(l) = listed.as_mut() {
                                    l.insert(k);
                                }
                            }
                        }
                        watcher::Event::InitDone => {
                            if let Some(l) = listed.take() {
                                cache.retain_listed(&l, now);
                            }
                            cache.bump();
                            cache.synced.store(true, Ordering::Release);
                            tracing::debug!(pods = cache.len(), "pod list in");
                        }
                        watcher::Event::Apply(p) => {
                            if let Some(k) = key(&p) {
                                missed |= !cache.apply(k, pod_meta(&p, &self.filters));
                            }
                        }
                        watcher::Event::Delete(p) => {
                            if let Some(k) = key(&p) {
                                cache.delete(&k, now);
                            }
                        }
                    }
                    if missed {
                        errors("memory").inc();
                        tracing::warn!(
                            "memory_limit has no room for more pod metadata; those pods' records carry only the path's fields until there is"
                        );
                    }
                }
                Err(e) => {
                    let r = reason(&e);
                    errors(r).inc();
                    if r == "gone" {
                        tracing::debug!("watch expired (410 Gone); listing the pods again");
                        continue;
                    }
                    if !failing {
                        tracing::warn!(error = %e, "Kubernetes API request failed; records keep the path's fields, retrying with backoff");
                        failing = true;
                    } else {
                        tracing::debug!(error = %e, "Kubernetes API request failed again");
                    }
                    failures = failures.saturating_add(1);
                    let delay = backoff(failures);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

impl Watch {
    /// `use_kubelet`: the kubelet's `/pods` (every pod of this node, and only
    /// those) every `every`; a pod gone from it is deleted, kept for
    /// `delete_grace` like one the watch saw deleted.
    async fn poll_kubelet(
        self,
        every: Duration,
        cache: Arc<PodCache>,
        metrics: Arc<Metrics>,
        id: String,
        stop: CancellationToken,
    ) {
        let errors = |r: &'static str| -> Counter { metrics.kubernetes_api_error(&id, r) };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures: u32 = 0;
        let mut failing = false;
        tracing::info!(node = %self.node, "reading this node's pods from the kubelet");
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            cache.sweep(Instant::now(), self.grace);
            let req = http::Request::get("/pods").body(Vec::new()).expect("a static request");
            match self.client.request::<kube::core::ObjectList<Pod>>(req).await {
                Ok(list) => {
                    if failing {
                        tracing::info!("the kubelet answers again");
                        failing = false;
                    }
                    failures = 0;
                    let now = Instant::now();
                    let mut listed = HashSet::new();
                    let mut missed = false;
                    for p in &list.items {
                        if let Some(k) = key(p) {
                            missed |= !cache.apply(k.clone(), pod_meta(p, &self.filters));
                            listed.insert(k);
                        }
                    }
                    cache.retain_listed(&listed, now);
                    cache.bump();
                    cache.synced.store(true, Ordering::Release);
                    if missed {
                        errors("memory").inc();
                        tracing::warn!(
                            "memory_limit has no room for more pod metadata; those pods' records carry only the path's fields until there is"
                        );
                    }
                }
                Err(e) => {
                    errors("kubelet").inc();
                    if !failing {
                        tracing::warn!(error = %e, "reading the kubelet's pods failed; records keep the path's fields, retrying with backoff");
                        failing = true;
                    }
                    failures = failures.saturating_add(1);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff(failures)) => {}
                    }
                }
            }
        }
    }
}

/// `n`-th retry delay: doubling from 0.5 s up to 30 s, times 0.5..1.5.
fn backoff(n: u32) -> Duration {
    let base = BACKOFF_MIN
        .saturating_mul(1u32 << n.saturating_sub(1).min(10))
        .min(BACKOFF_MAX);
    base.mul_f64(0.5 + fastrand::f64())
}

fn key(p: &Pod) -> Option<(String, String)> {
    Some((p.metadata.namespace.clone()?, p.metadata.name.clone()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn web() -> Pod {
        pod(json!({
            "metadata": {
                "name": "web-1", "namespace": "prod", "uid": "u-1",
                "labels": {"app": "web", "team": "core"},
                "annotations": {
                    "prometheus.io/scrape": "true",
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"huge\":1}",
                },
                "ownerReferences": [
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4", "uid": "r", "controller": true},
                    {"apiVersion": "v1", "kind": "Thing", "name": "not-controller", "uid": "t"},
                ],
            },
            "spec": {
                "nodeName": "node-a",
                "containers": [{"name": "app", "image": "repo/web:1.2"}, {"name": "side", "image": "envoy:1"}],
                "initContainers": [{"name": "init", "image": "busybox"}],
            },
        }))
    }

    fn log() -> ContainerLog<'static> {
        ContainerLog {
            pod_name: "web-1",
            namespace_name: "prod",
            container_name: "app",
            container_id: ID,
        }
    }

    #[test]
    fn a_pod_maps_to_fluent_bit_names_next_to_the_path_fields() {
        let m = pod_meta(&web(), &Filters::new(&KubernetesApiConfig::default()));
        assert!(!m.exclude);
        let f = fields_for(&log(), Some(&m), None);
        let mut b = crate::event::batch_of(&[r#"{"log":"x"}"#]);
        b.fields.push(f);
        let mut out = Vec::new();
        b.encode(0, &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"log": "x", "kubernetes": {
                "pod_name": "web-1", "namespace_name": "prod", "container_name": "app", "container_id": ID,
                "pod_id": "u-1", "host": "node-a",
                "labels": {"app": "web", "team": "core"},
                "annotations": {"prometheus.io/scrape": "true"},
                "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d4"}],
                "container_image": "repo/web:1.2",
            }})
        );
        // Each container gets its own image; an unknown one gets none.
        let side = ContainerLog {
            container_name: "side",
            ..log()
        };
        assert_eq!(
            fields_for(&side, Some(&m), None)
                .lookup("kubernetes.container_image")
                .as_deref(),
            Some("envoy:1")
        );
        let gone = ContainerLog {
            container_name: "gone",
            ..log()
        };
        assert_eq!(
            fields_for(&gone, Some(&m), None).lookup("kubernetes.container_image"),
            None
        );
        assert_eq!(
            fields_for(&log(), None, None).lookup("kubernetes.pod_id"),
            None,
            "no pod: the path's fields only"
        );
    }

    #[test]
    fn annotation_lists_and_toggles() {
        let cfg = KubernetesApiConfig {
            annotations_include: vec!["prometheus.io/*".into(), "kubectl.kubernetes.io/*".into()],
            ..KubernetesApiConfig::default()
        };
        let m = pod_meta(&web(), &Filters::new(&cfg));
        // Include picks; the default exclude still removes the manifest copy.
        assert_eq!(m.object["annotations"], json!({"prometheus.io/scrape": "true"}));
        let cfg = KubernetesApiConfig {
            annotations_include: vec!["nothing/*".into()],
            ..KubernetesApiConfig::default()
        };
        assert!(!pod_meta(&web(), &Filters::new(&cfg)).object.contains_key("annotations"));
        let cfg = KubernetesApiConfig {
            annotations_exclude: vec![],
            ..KubernetesApiConfig::default()
        };
        assert_eq!(
            pod_meta(&web(), &Filters::new(&cfg)).object["annotations"]
                .as_object()
                .unwrap()
                .len(),
            2
        );
        let cfg = KubernetesApiConfig {
            labels: false,
            annotations: false,
            ..KubernetesApiConfig::default()
        };
        let m = pod_meta(&web(), &Filters::new(&cfg));
        assert!(!m.object.contains_key("labels") && !m.object.contains_key("annotations"));
        assert_eq!(m.object["pod_id"], "u-1");
    }

    #[test]
    fn exclude_annotations_are_read_in_both_spellings() {
        let f = Filters::new(&KubernetesApiConfig::default());
        for (k, v, want) in [
            ("logferry.io/exclude", "true", true),
            ("fluentbit.io/exclude", "True", true),
            ("fluentbit.io/exclude", " true ", true),
            ("logferry.io/exclude", "false", false),
            ("logferry.io/exclude", "yes", false),
            ("logferry.io/excluded", "true", false),
        ] {
            let p = pod(json!({"metadata": {"name": "a", "namespace": "n", "annotations": {k: v}}}));
            assert_eq!(pod_meta(&p, &f).exclude, want, "{k}: {v}");
        }
        let off = Filters::new(&KubernetesApiConfig {
            exclude_by_annotation: false,
            ..KubernetesApiConfig::default()
        });
        let p =
            pod(json!({"metadata": {"name": "a", "namespace": "n", "annotations": {"logferry.io/exclude": "true"}}}));
        assert!(!pod_meta(&p, &off).exclude);
    }

    #[test]
    fn the_parser_annotation_names_a_parser_and_ours_wins() {
        let f = Filters::new(&KubernetesApiConfig::default());
        for (annotations, want) in [
            (json!({"logferry.io/parser": "json"}), Some(LogParser::Json)),
            (json!({"fluentbit.io/parser": " LogFmt "}), Some(LogParser::Logfmt)),
            (
                json!({"fluentbit.io/parser": "json", "logferry.io/parser": "logfmt"}),
                Some(LogParser::Logfmt),
            ),
            (json!({"logferry.io/parser": "apache2"}), Some(LogParser::Unknown)),
            (json!({"logferry.io/parsers": "json"}), None),
        ] {
            let p = pod(json!({"metadata": {"name": "a", "namespace": "n", "annotations": annotations.clone()}}));
            assert_eq!(pod_meta(&p, &f).parser, want, "{annotations}");
        }
        let off = Filters::new(&KubernetesApiConfig {
            parser_by_annotation: false,
            ..KubernetesApiConfig::default()
        });
        let p =
            pod(json!({"metadata": {"name": "a", "namespace": "n", "annotations": {"logferry.io/parser": "json"}}}));
        assert_eq!(pod_meta(&p, &off).parser, None);
    }

    #[test]
    fn a_bare_pod_maps_to_nothing_but_the_path() {
        let p = pod(json!({"metadata": {"name": "web-1", "namespace": "prod"}}));
        let m = pod_meta(&p, &Filters::new(&KubernetesApiConfig::default()));
        assert!(m.object.is_empty() && m.images.is_empty() && !m.exclude);
        assert_eq!(
            format!("{:?}", fields_for(&log(), Some(&m), None)),
            format!("{:?}", fields_for(&log(), None, None))
        );
    }

    fn cache(limit: usize) -> PodCache {
        PodCache::new(Arc::new(Semaphore::new(limit)), usize::MAX, &Metrics::new(), "k")
    }

    fn k(ns: &str, pod: &str) -> (String, String) {
        (ns.to_string(), pod.to_string())
    }

    #[test]
    fn files_see_late_pods_updates_and_deletions_after_the_grace() {
        let c = cache(1 << 20);
        let f = Filters::new(&KubernetesApiConfig::default());
        let mut file = FileMeta::new(&log());
        file.refresh(&c);
        assert_eq!(file.fields.lookup("kubernetes.pod_id"), None);
        // Late start: the pod shows up after the file was opened.
        assert!(c.apply(k("prod", "web-1"), pod_meta(&web(), &f)));
        file.refresh(&c);
        assert_eq!(file.fields.lookup("kubernetes.pod_id").as_deref(), Some("u-1"));
        let shared = file.fields.clone();
        // Another pod changing leaves this file's fields (the same Arc).
        let mut other = web();
        other.metadata.name = Some("web-2".into());
        assert!(c.apply(k("prod", "web-2"), pod_meta(&other, &f)));
        file.refresh(&c);
        assert!(Arc::ptr_eq(&shared, &file.fields));
        // A label change reaches the file.
        let mut changed = web();
        changed
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("app".into(), "web2".into());
        assert!(c.apply(k("prod", "web-1"), pod_meta(&changed, &f)));
        file.refresh(&c);
        assert_eq!(file.fields.lookup("kubernetes.labels.app").as_deref(), Some("web2"));
        // Deleted: kept through the grace, gone after it.
        let t0 = Instant::now();
        c.delete(&k("prod", "web-1"), t0);
        c.sweep(t0 + Duration::from_secs(59), Duration::from_secs(60));
        file.refresh(&c);
        assert_eq!(file.fields.lookup("kubernetes.pod_id").as_deref(), Some("u-1"));
        c.sweep(t0 + Duration::from_secs(61), Duration::from_secs(60));
        file.refresh(&c);
        assert_eq!(file.fields.lookup("kubernetes.pod_id"), None);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn the_charge_follows_the_entries_and_refuses_what_does_not_fit() {
        let f = Filters::new(&KubernetesApiConfig::default());
        let named = |n: &str| {
            let mut p = web();
            p.metadata.name = Some(n.to_string());
            p
        };
        let one = pod_meta(&named("p0"), &f).bytes;
        assert!(one > 500, "{one}: labels, annotations, images and overheads");
        // Room for two pods, not three.
        let c = cache(one * 2 + one / 2);
        for i in 0..2 {
            assert!(c.apply(k("prod", &format!("p{i}")), pod_meta(&named(&format!("p{i}")), &f)));
        }
        assert_eq!(c.charged(), one * 2);
        // The same pod again changes nothing.
        assert!(c.apply(k("prod", "p0"), pod_meta(&named("p0"), &f)));
        assert_eq!(c.charged(), one * 2);
        let p = named("p2");
        assert!(!c.apply(k("prod", "p2"), pod_meta(&p, &f)), "over the limit");
        assert_eq!(c.len(), 2);
        assert!(c.lookup("prod", "p2").is_none());
        // Deleting frees room only once the grace has passed.
        let t0 = Instant::now();
        c.delete(&k("prod", "p0"), t0);
        assert!(!c.apply(k("prod", "p2"), pod_meta(&p, &f)));
        c.sweep(t0 + Duration::from_secs(120), Duration::from_secs(60));
        assert!(c.apply(k("prod", "p2"), pod_meta(&p, &f)));
        assert_eq!(c.len(), 2);
        // A relist without p1 marks it deleted.
        c.retain_listed(&HashSet::from([k("prod", "p2")]), t0);
        c.sweep(t0 + Duration::from_secs(120), Duration::from_secs(60));
        assert_eq!(c.len(), 1);
        assert!(c.lookup("prod", "p1").is_none());
    }

    #[test]
    fn the_cache_keeps_to_its_share_of_the_limit() {
        let f = Filters::new(&KubernetesApiConfig::default());
        let one = pod_meta(&web(), &f).bytes;
        let c = PodCache::new(Arc::new(Semaphore::new(1 << 30)), one * 3, &Metrics::new(), "k");
        let mut n = 0;
        for i in 0..10 {
            let mut p = web();
            p.metadata.name = Some(format!("w{i}"));
            n += usize::from(c.apply(k("prod", &format!("w{i}")), pod_meta(&p, &f)));
        }
        assert_eq!(n, 3);
        assert!(c.charged() <= one * 3);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        for n in 1..40 {
            let d = backoff(n);
            let base = BACKOFF_MIN.saturating_mul(1 << (n - 1).min(10)).min(BACKOFF_MAX);
            assert!(d >= base.mul_f64(0.5) && d <= base.mul_f64(1.5), "{n}: {d:?}");
        }
        assert!(backoff(30) <= BACKOFF_MAX.mul_f64(1.5));
    }
}
