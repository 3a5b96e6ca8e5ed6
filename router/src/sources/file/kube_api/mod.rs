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

mod cache;
mod pod;
#[cfg(test)]
mod tests;

pub use cache::{FileMeta, Lookup, NamespaceLookup, PodCache};
use pod::Filters;
pub use pod::{AnnotatedParsers, Container, LogParser, Namespace, Pod, PodMeta, PodSpec, fields_for, pod_meta};

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::watcher;
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::confdiag::{Ctx, Seg};
use crate::metrics::Metrics;

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

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
        let at = |k: &str| crate::confdiag::key(base, k);
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
                    if missed && cache.room() > 1024 * 1024 {
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
                            cache.set_synced();
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
                    cache.set_synced();
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
