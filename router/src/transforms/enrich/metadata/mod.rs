//! Where a record was produced: the ECS task, the EC2 instance and the Kubernetes pod.
//!
//! Users query logs by these fields, so the names follow FireLens / Fluent Bit rather than
//! anything of our own. The collection runs once at start-up (and whenever the transform
//! decides to refresh), never per record, so each source is fetched in full and cached by the
//! caller.
//!
//! A sidecar must never hold up the task it serves: the three sources run in parallel under
//! one shared deadline, and a source that is merely *not here* (the default `auto` mode on a
//! laptop, on Fargate without IMDS, outside Kubernetes) is reported as [`Outcome::Absent`]
//! rather than as a failure, so readiness only turns red for something the user asked for or
//! for an endpoint that exists but misbehaves.
//!
//! The environment is read through a lookup function instead of `std::env` so that tests can
//! describe a whole machine without mutating the process environment.

mod ec2;
mod ecs;

pub use ecs::{URI_ENV as ECS_METADATA_URI_ENV, container_status as ecs_container_status};
mod kubernetes;
#[cfg(test)]
mod testserver;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde_json::Value;
use tokio::time::Instant;

/// The environment lookup the collectors read through (see the module docs for why).
pub type EnvLookup<'a> = &'a (dyn Fn(&str) -> Option<String> + Sync);

/// Looks a name up in the real process environment; what production passes to [`collect`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Whether a metadata source is probed.
///
/// Config accepts `"auto"`, `true`, `false`, `"enabled"` and `"disabled"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Detect {
    /// Probe; a source that is not there is [`Outcome::Absent`], not a failure.
    #[default]
    Auto,
    /// The source must be there; its absence is [`Outcome::Failed`].
    Enabled,
    /// Never probed and not reported.
    Disabled,
}

impl<'de> serde::Deserialize<'de> for Detect {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DetectVisitor;

        impl Visitor<'_> for DetectVisitor {
            type Value = Detect;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#""auto", true, false, "enabled" or "disabled""#)
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Detect, E> {
                Ok(if v { Detect::Enabled } else { Detect::Disabled })
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Detect, E> {
                match v {
                    "auto" => Ok(Detect::Auto),
                    "enabled" | "true" => Ok(Detect::Enabled),
                    "disabled" | "false" => Ok(Detect::Disabled),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }
        }

        deserializer.deserialize_any(DetectVisitor)
    }
}

/// Names of the environment variables a pod spec fills from the downward API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesEnv {
    pub pod_name: String,
    pub namespace: String,
    pub pod_uid: String,
    pub node_name: String,
    pub pod_ip: String,
    pub container_name: String,
}

impl Default for KubernetesEnv {
    fn default() -> Self {
        Self {
            pod_name: "POD_NAME".to_owned(),
            namespace: "POD_NAMESPACE".to_owned(),
            pod_uid: "POD_UID".to_owned(),
            node_name: "NODE_NAME".to_owned(),
            pod_ip: "POD_IP".to_owned(),
            container_name: "CONTAINER_NAME".to_owned(),
        }
    }
}

/// What to collect and how long one collection may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataOptions {
    pub ecs: Detect,
    pub ec2: Detect,
    pub kubernetes: Detect,
    /// Name of the application container whose `container_name` / `container_id` are added.
    /// `None`: the first NORMAL container of the task that is not the router itself.
    pub ecs_container: Option<String>,
    pub kubernetes_env: KubernetesEnv,
    /// Downward-API labels file; `None` means [`DEFAULT_LABELS_FILE`]. Read only if it exists.
    pub labels_file: Option<PathBuf>,
    /// Budget for one whole collection, all sources together.
    pub timeout: Duration,
}

/// Where a pod spec conventionally mounts the downward-API `metadata.labels` file.
pub const DEFAULT_LABELS_FILE: &str = "/etc/podinfo/labels";

/// Default for [`MetadataOptions::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

impl Default for MetadataOptions {
    fn default() -> Self {
        Self {
            ecs: Detect::Auto,
            ec2: Detect::Auto,
            kubernetes: Detect::Auto,
            ecs_container: None,
            kubernetes_env: KubernetesEnv::default(),
            labels_file: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// The result of one collection pass.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Collected {
    /// Fields to add to every record: ECS, then EC2, then `kubernetes`, each in a fixed order.
    pub fields: Vec<(String, Value)>,
    /// One entry per source that was not [`Detect::Disabled`], in the order ecs, ec2, kubernetes.
    pub report: Vec<SourceStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceStatus {
    /// `"ecs"`, `"ec2"` or `"kubernetes"`.
    pub source: &'static str,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Found,
    /// `auto` and the source is not there.
    Absent,
    /// Asked for (`enabled`), or there but the fetch failed or ran out of time. Fields that
    /// were fetched before the failure are still returned.
    Failed(String),
}

impl Outcome {
    pub fn is_failed(&self) -> bool {
        matches!(self, Outcome::Failed(_))
    }
}

/// What one source contributes.
#[derive(Debug, Default)]
struct Partial {
    fields: Vec<(String, Value)>,
    outcome: Option<Outcome>,
}

impl Partial {
    fn found(fields: Vec<(String, Value)>) -> Self {
        Self {
            fields,
            outcome: Some(Outcome::Found),
        }
    }

    fn absent() -> Self {
        Self {
            fields: Vec::new(),
            outcome: Some(Outcome::Absent),
        }
    }

    fn failed(fields: Vec<(String, Value)>, why: impl Into<String>) -> Self {
        Self {
            fields,
            outcome: Some(Outcome::Failed(why.into())),
        }
    }

    /// Absent when probing, a failure when the user insisted on the source.
    fn not_present(detect: Detect, why: impl Into<String>) -> Self {
        match detect {
            Detect::Enabled => Self::failed(Vec::new(), why),
            Detect::Auto | Detect::Disabled => Self::absent(),
        }
    }
}

/// One collection pass; never takes (much) longer than `opts.timeout`.
pub async fn collect(opts: &MetadataOptions, env: EnvLookup<'_>) -> Collected {
    let deadline = Instant::now() + opts.timeout;
    let (ecs, ec2, kubernetes) = tokio::join!(
        async {
            match opts.ecs {
                Detect::Disabled => Partial::default(),
                detect => ecs::collect(detect, opts.ecs_container.as_deref(), env, deadline).await,
            }
        },
        async {
            match opts.ec2 {
                Detect::Disabled => Partial::default(),
                // The SDK's future is large; keep it off the caller's stack.
                detect => Box::pin(ec2::collect(detect, env, deadline)).await,
            }
        },
        async {
            match opts.kubernetes {
                Detect::Disabled => Partial::default(),
                detect => kubernetes::collect(detect, opts, env, deadline).await,
            }
        },
    );

    let mut collected = Collected::default();
    for (source, partial) in [("ecs", ecs), ("ec2", ec2), ("kubernetes", kubernetes)] {
        if let Some(outcome) = partial.outcome {
            match &outcome {
                Outcome::Found => {
                    tracing::debug!(source, fields = partial.fields.len(), "metadata found")
                }
                Outcome::Absent => tracing::debug!(source, "metadata source not present"),
                Outcome::Failed(why) => {
                    tracing::debug!(source, error = %why, "metadata collection failed")
                }
            }
            collected.report.push(SourceStatus { source, outcome });
        }
        collected.fields.extend(partial.fields);
    }
    collected
}

/// A non-empty value of `name`: an empty variable means "not set" to every caller here.
fn lookup(env: EnvLookup<'_>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.trim().is_empty())
}

/// `err` followed by its sources, because HTTP client errors put the cause in the chain
/// ("client error (Connect)" alone says nothing).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

fn string_field(name: &str, value: impl Into<String>) -> (String, Value) {
    (name.to_owned(), Value::String(value.into()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Instant as StdInstant;

    use serde::Deserialize;
    use serde_json::json;

    use super::testserver::{TestServer, closed_port_url};
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Config {
        #[serde(default)]
        ecs: Detect,
    }

    fn detect(toml_text: &str) -> Result<Detect, toml::de::Error> {
        toml::from_str::<Config>(toml_text).map(|c| c.ecs)
    }

    #[test]
    fn detect_accepts_auto_bools_and_words() {
        assert_eq!(detect(r#"ecs = "auto""#).ok(), Some(Detect::Auto));
        assert_eq!(detect("ecs = true").ok(), Some(Detect::Enabled));
        assert_eq!(detect("ecs = false").ok(), Some(Detect::Disabled));
        assert_eq!(detect(r#"ecs = "enabled""#).ok(), Some(Detect::Enabled));
        assert_eq!(detect(r#"ecs = "disabled""#).ok(), Some(Detect::Disabled));
        assert_eq!(detect("").ok(), Some(Detect::Auto));
    }

    #[test]
    fn detect_rejects_other_values_with_a_useful_message() {
        let err = detect(r#"ecs = "sometimes""#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("sometimes") && err.contains(r#""auto", true, false"#),
            "{err}"
        );
        assert!(detect("ecs = 1").is_err());
    }

    #[test]
    fn error_chain_includes_causes_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        #[derive(Debug, thiserror::Error)]
        #[error("connect failed")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(error_chain(&Outer(io)), "connect failed: refused");
    }

    fn env_of(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> + Sync + use<> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        move |name: &str| map.get(name).cloned()
    }

    fn no_labels_opts(timeout: Duration) -> (MetadataOptions, tempfile::TempDir) {
        let dir = tempfile::tempdir().ok();
        let dir = match dir {
            Some(d) => d,
            None => panic!("cannot create a temp dir"),
        };
        let opts = MetadataOptions {
            labels_file: Some(dir.path().join("no-such-labels")),
            timeout,
            ..MetadataOptions::default()
        };
        (opts, dir)
    }

    fn outcome_of<'a>(collected: &'a Collected, source: &str) -> Option<&'a Outcome> {
        collected.report.iter().find(|s| s.source == source).map(|s| &s.outcome)
    }

    #[test]
    fn collect_can_be_spawned() {
        fn assert_send<T: Send>(_: &T) {}
        let opts = MetadataOptions::default();
        let env = |_: &str| None;
        // Never polled: this only checks the future's type.
        let future = collect(&opts, &env);
        assert_send(&future);
    }

    #[tokio::test]
    async fn nothing_present_yields_no_fields_and_all_absent_quickly() {
        // "Not on EC2" is simulated by an IMDS endpoint that refuses connections: tests
        // must never send traffic to the real link-local metadata address.
        let (opts, _dir) = no_labels_opts(Duration::from_secs(2));
        let env = env_of(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", closed_port_url())]);
        let started = StdInstant::now();
        let collected = collect(&opts, &env).await;
        let elapsed = started.elapsed();

        assert_eq!(collected.fields, Vec::new());
        let expected: Vec<SourceStatus> = ["ecs", "ec2", "kubernetes"]
            .into_iter()
            .map(|source| SourceStatus {
                source,
                outcome: Outcome::Absent,
            })
            .collect();
        assert_eq!(collected.report, expected);
        assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    }

    #[tokio::test]
    async fn imds_disabled_by_env_is_absent_without_any_request() {
        let (opts, _dir) = no_labels_opts(Duration::from_secs(2));
        let imds = TestServer::start();
        let env = env_of(&[
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ]);
        let collected = collect(&opts, &env).await;
        assert_eq!(outcome_of(&collected, "ec2"), Some(&Outcome::Absent));
        assert_eq!(imds.requests().len(), 0);
    }

    #[tokio::test]
    async fn disabled_sources_are_skipped_and_not_reported() {
        let opts = MetadataOptions {
            ecs: Detect::Disabled,
            ec2: Detect::Disabled,
            kubernetes: Detect::Disabled,
            ..MetadataOptions::default()
        };
        let env = env_of(&[("POD_NAME", "web-0".to_owned())]);
        let collected = collect(&opts, &env).await;
        assert_eq!(collected, Collected::default());
    }

    #[tokio::test]
    async fn hanging_endpoints_are_cut_off_and_kubernetes_still_arrives() {
        let ecs = TestServer::start();
        ecs.hang();
        let imds = TestServer::start();
        imds.hang();
        let timeout = Duration::from_millis(800);
        let (opts, _dir) = no_labels_opts(timeout);
        let env = env_of(&[
            ("ECS_CONTAINER_METADATA_URI_V4", format!("{}/v4/abc", ecs.url())),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url()),
            ("POD_NAME", "web-0".to_owned()),
            ("POD_NAMESPACE", "shop".to_owned()),
        ]);

        let started = StdInstant::now();
        let collected = collect(&opts, &env).await;
        let elapsed = started.elapsed();

        assert!(elapsed < timeout + Duration::from_millis(500), "took {elapsed:?}");
        assert!(
            matches!(outcome_of(&collected, "ecs"), Some(Outcome::Failed(_))),
            "{collected:?}"
        );
        // In `auto`, an IMDS that never hands out a token is indistinguishable from none.
        assert_eq!(outcome_of(&collected, "ec2"), Some(&Outcome::Absent), "{collected:?}");
        assert_eq!(outcome_of(&collected, "kubernetes"), Some(&Outcome::Found));
        assert_eq!(
            collected.fields,
            vec![(
                "kubernetes".to_owned(),
                json!({"pod_name": "web-0", "namespace_name": "shop"})
            )]
        );
        // Both servers were really asked, so the deadline (not a refusal) ended the wait.
        assert!(!ecs.requests().is_empty());
        assert!(!imds.requests().is_empty());
    }

    #[tokio::test]
    async fn hanging_imds_when_enabled_is_a_failure() {
        let imds = TestServer::start();
        imds.hang();
        let (mut opts, _dir) = no_labels_opts(Duration::from_millis(500));
        opts.ec2 = Detect::Enabled;
        let env = env_of(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url())]);
        let started = StdInstant::now();
        let collected = collect(&opts, &env).await;
        assert!(started.elapsed() < Duration::from_millis(1000));
        assert!(
            matches!(outcome_of(&collected, "ec2"), Some(Outcome::Failed(_))),
            "{collected:?}"
        );
    }

    #[tokio::test]
    async fn all_sources_together_keep_the_documented_order() {
        let ecs = TestServer::start();
        ecs.get("/v4/abc", ecs::tests::FARGATE_CONTAINER);
        ecs.get("/v4/abc/task", ecs::tests::FARGATE_TASK);
        let imds = TestServer::start();
        ec2::tests::serve_imds(&imds);
        let (opts, _dir) = no_labels_opts(Duration::from_secs(2));
        let env = env_of(&[
            ("ECS_CONTAINER_METADATA_URI_V4", format!("{}/v4/abc", ecs.url())),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url()),
            ("POD_NAME", "web-0".to_owned()),
        ]);
        let collected = collect(&opts, &env).await;
        let names: Vec<&str> = collected.fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "ecs_cluster",
                "ecs_task_arn",
                "ecs_task_id",
                "ecs_task_definition",
                "container_name",
                "container_id",
                "aws_region",
                "availability_zone",
                "launch_type",
                "ec2_instance_id",
                "ec2_instance_type",
                "az",
                "private_ip",
                "ami_id",
                "hostname",
                "account_id",
                "kubernetes",
            ]
        );
        // Each has a typed column in the compacted archive (the rest would land in `rest`).
        for name in &names {
            assert!(
                *name == "kubernetes" || logferry_indexer::compacted::STRING_COLUMNS.contains(name),
                "{name} has no column in logferry_indexer::compacted"
            );
        }
        assert!(
            collected.report.iter().all(|s| s.outcome == Outcome::Found),
            "{collected:?}"
        );
    }
}
