//! `type = "enrich"`: adds where a record came from (ECS task, EC2 instance,
//! Kubernetes pod) and static fields.
//!
//! Why metadata is a shared fragment, fetched off the data path: the values
//! are the same for every record of the process, so they are collected once
//! (bounded by `timeout`, ~2 s, so start-up never hangs on a dead endpoint),
//! serialized once into an [`Fields`] fragment, and attached to each batch by
//! `Arc`. A background task refreshes them every `refresh_interval`, and
//! retries sooner while a source that should be there has failed, so a
//! metadata endpoint that was slow at start-up is picked up later.

pub mod metadata;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use crate::confdiag::{Ctx, Seg};
use crate::event::{Batch, Fields};
use crate::metrics::Metrics;
use crate::topology::Fanout;
use metadata::{Detect, KubernetesEnv, MetadataOptions, Outcome};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// ECS task metadata endpoint v4: `"auto"` (when present), `true`, `false`.
    #[serde(default)]
    pub ecs: Detect,
    /// EC2 instance metadata (IMDSv2).
    #[serde(default)]
    pub ec2: Detect,
    /// Downward-API environment variables and labels file.
    #[serde(default)]
    pub kubernetes: Detect,
    /// Static fields; they win over detected metadata of the same name.
    #[serde(default)]
    pub fields: BTreeMap<String, serde_json::Value>,
    /// Name of the application container in the ECS task (default: the first
    /// container that is not the router).
    pub ecs_container: Option<String>,
    /// Downward-API labels file (default `/etc/podinfo/labels`, if present).
    pub labels_file: Option<PathBuf>,
    /// Names of the downward-API environment variables.
    #[serde(default)]
    pub kubernetes_env: KubernetesEnvConfig,
    /// Budget for one metadata collection.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh_interval: Duration,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KubernetesEnvConfig {
    pub pod_name: Option<String>,
    pub namespace: Option<String>,
    pub pod_uid: Option<String>,
    pub node_name: Option<String>,
    pub pod_ip: Option<String>,
    pub container_name: Option<String>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_refresh() -> Duration {
    Duration::from_secs(300)
}

impl EnrichConfig {
    pub fn validate(&self, ctx: &mut Ctx<'_>, base: &[Seg]) -> bool {
        let mut ok = true;
        for (k, v) in &self.fields {
            if k.is_empty() || v.is_null() {
                let mut p = crate::confdiag::key(base, "fields");
                p.push(Seg::Key(k.clone()));
                ctx.error(&p, "field names must be non-empty and values non-null");
                ok = false;
            }
        }
        if self.timeout > Duration::from_secs(30) || self.timeout < Duration::from_millis(10) {
            ctx.error(&crate::confdiag::key(base, "timeout"), "must be between 10ms and 30s");
            ok = false;
        }
        ok
    }

    fn options(&self) -> MetadataOptions {
        let d = KubernetesEnv::default();
        let e = &self.kubernetes_env;
        MetadataOptions {
            ecs: self.ecs,
            ec2: self.ec2,
            kubernetes: self.kubernetes,
            ecs_container: self.ecs_container.clone(),
            kubernetes_env: KubernetesEnv {
                pod_name: e.pod_name.clone().unwrap_or(d.pod_name),
                namespace: e.namespace.clone().unwrap_or(d.namespace),
                pod_uid: e.pod_uid.clone().unwrap_or(d.pod_uid),
                node_name: e.node_name.clone().unwrap_or(d.node_name),
                pod_ip: e.pod_ip.clone().unwrap_or(d.pod_ip),
                container_name: e.container_name.clone().unwrap_or(d.container_name),
            },
            labels_file: self.labels_file.clone(),
            timeout: self.timeout,
        }
    }

    fn fragment(&self, detected: Vec<(String, serde_json::Value)>) -> Arc<Fields> {
        let statics = self.fields.iter().map(|(k, v)| (k.clone(), v.clone()));
        Arc::new(Fields::new(statics.chain(detected)))
    }
}

type EnvFn = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Runs the transform until its input closes.
pub async fn run(
    id: String,
    cfg: EnrichConfig,
    mut input: mpsc::Receiver<Batch>,
    output: Fanout,
    metrics: Arc<Metrics>,
    env: EnvFn,
) {
    let m = metrics.component(&id, "enrich");
    let opts = cfg.options();
    let first = collect(&opts, &env).await;
    let (tx, rx) = watch::channel(cfg.fragment(first.0));
    let mut retry_soon = first.1;
    let refresher = {
        let cfg = cfg.clone();
        let env = env.clone();
        let id = id.clone();
        tokio::spawn(async move {
            loop {
                let wait = if retry_soon {
                    Duration::from_secs(10).min(cfg.refresh_interval)
                } else {
                    cfg.refresh_interval
                };
                tokio::time::sleep(wait).await;
                let (fields, failed) = collect(&opts, &env).await;
                retry_soon = failed;
                tracing::debug!(transform = %id, fields = fields.len(), "metadata refreshed");
                if tx.send(cfg.fragment(fields)).is_err() {
                    break;
                }
            }
        })
    };
    while let Some(mut batch) = input.recv().await {
        let n = batch.len() as u64;
        m.received_events.inc_by(n);
        m.received_bytes.inc_by(batch.bytes());
        let fields = rx.borrow().clone();
        if !fields.is_empty() {
            batch.fields.push(fields);
        }
        let bytes = batch.bytes();
        if output.send(batch).await.is_err() {
            break;
        }
        m.sent_events.inc_by(n);
        m.sent_bytes.inc_by(bytes);
    }
    refresher.abort();
}

/// One collection; logs what was found. Returns (fields, any source failed).
async fn collect(opts: &MetadataOptions, env: &EnvFn) -> (Vec<(String, serde_json::Value)>, bool) {
    let lookup = |k: &str| env(k);
    let c = metadata::collect(opts, &lookup).await;
    let mut failed = false;
    for s in &c.report {
        match &s.outcome {
            Outcome::Found => tracing::info!(source = s.source, "metadata found"),
            Outcome::Absent => tracing::debug!(source = s.source, "metadata not present"),
            Outcome::Failed(why) => {
                failed = true;
                tracing::warn!(source = s.source, error = %why, "metadata unavailable; records go without it until it is")
            }
        }
    }
    (c.fields, failed)
}
