//! ECS task metadata (endpoint v4), the source FireLens itself uses.
//!
//! The router is a sidecar, so "the container" a record belongs to is the application next
//! to it, not the router. The v4 task document has no `essential` flag to find that
//! application by, so unless the user names it we take the first ordinary (`NORMAL`)
//! container that is not the router; the router recognises itself through the per-container
//! document the agent serves at the bare endpoint URI.
//!
//! The agent is local and fast, so there are no retries: a slow or broken agent costs at most
//! the collection budget and is reported as a failure for the caller to act on.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::time::Instant;

use super::{Detect, EnvLookup, Partial, error_chain, lookup, string_field};

/// Injected by the ECS agent (EC2 launch type, agent >= 1.39) and by Fargate (platform >= 1.4).
pub const URI_ENV: &str = "ECS_CONTAINER_METADATA_URI_V4";

/// Metadata documents are a few KiB; anything near this is not the agent.
const MAX_BODY: usize = 1 << 20;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("invalid metadata URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("GET {url}: {reason}")]
    Request { url: String, reason: String },
    #[error("GET {url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: reading body: {reason}")]
    Body { url: String, reason: String },
    #[error("GET {url}: invalid JSON: {source}")]
    Json {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("GET {url}: no answer within the metadata timeout")]
    Timeout { url: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TaskDoc {
    cluster: Option<String>,
    #[serde(rename = "TaskARN")]
    task_arn: Option<String>,
    family: Option<String>,
    /// A string in every documented example, but tolerate a number.
    revision: Option<Value>,
    availability_zone: Option<String>,
    launch_type: Option<String>,
    #[serde(default)]
    containers: Vec<ContainerDoc>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerDoc {
    docker_id: Option<String>,
    name: Option<String>,
    /// `NORMAL` for task-definition containers; `CNI_PAUSE`, `NAMESPACE_PAUSE`, ... for the
    /// agent's own. Older agents omit it.
    #[serde(rename = "Type")]
    kind: Option<String>,
    /// `PULLED`, `RUNNING`, `STOPPED`, ... (the lifecycle's app-exit check).
    known_status: Option<String>,
}

impl ContainerDoc {
    fn is_normal(&self) -> bool {
        self.kind.as_deref().is_none_or(|k| k.eq_ignore_ascii_case("NORMAL"))
    }

    /// Containers that have not started yet have no DockerId, so an empty id matches nothing.
    fn is_same_as(&self, me: &ContainerDoc) -> bool {
        let same_name = matches!((&self.name, &me.name), (Some(a), Some(b)) if !a.is_empty() && a == b);
        let same_id = matches!((&self.docker_id, &me.docker_id), (Some(a), Some(b)) if !a.is_empty() && a == b);
        same_name || same_id
    }
}

pub(super) async fn collect(
    detect: Detect,
    app_container: Option<&str>,
    env: EnvLookup<'_>,
    deadline: Instant,
) -> Partial {
    let Some(base) = lookup(env, URI_ENV) else {
        return Partial::not_present(detect, format!("{URI_ENV} is not set"));
    };
    let base = base.trim().trim_end_matches('/').to_owned();
    let client = http_client(deadline);
    let task_url = format!("{base}/task");

    let (task, me) = tokio::join!(get_json::<TaskDoc>(&client, &task_url, deadline), async {
        match app_container {
            // The router's own document is only needed to tell it apart from the app.
            Some(_) => None,
            None => Some(get_json::<ContainerDoc>(&client, &base, deadline).await),
        }
    });
    let task = match task {
        Ok(task) => task,
        Err(e) => return Partial::failed(Vec::new(), error_chain(&e)),
    };

    let (app, problem) = match (app_container, me) {
        (Some(wanted), _) => match task.containers.iter().find(|c| c.name.as_deref() == Some(wanted)) {
            Some(c) => (Some(c), None),
            None => (None, Some(format!("container {wanted:?} is not in the task"))),
        },
        (None, Some(Ok(me))) => (default_app_container(&task.containers, &me), None),
        (None, Some(Err(e))) => (
            None,
            Some(format!(
                "cannot identify the router's own container: {}",
                error_chain(&e)
            )),
        ),
        (None, None) => (None, None),
    };
    let fields = fields(&task, app);
    match problem {
        None => Partial::found(fields),
        Some(why) => Partial::failed(fields, why),
    }
}

/// The `KnownStatus` of the task's container named `name` (`None` when the
/// task has no such container), for `[lifecycle.exit_when]`.
pub async fn container_status(base: &str, name: &str, timeout: Duration) -> Result<Option<String>, String> {
    let deadline = Instant::now() + timeout;
    let client = http_client(deadline);
    let url = format!("{}/task", base.trim().trim_end_matches('/'));
    let task = get_json::<TaskDoc>(&client, &url, deadline)
        .await
        .map_err(|e| error_chain(&e))?;
    Ok(task
        .containers
        .into_iter()
        .find(|c| c.name.as_deref() == Some(name))
        .map(|c| c.known_status.unwrap_or_default()))
}

fn default_app_container<'a>(containers: &'a [ContainerDoc], me: &ContainerDoc) -> Option<&'a ContainerDoc> {
    containers.iter().find(|c| c.is_normal() && !c.is_same_as(me))
}

fn fields(task: &TaskDoc, app: Option<&ContainerDoc>) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut push = |name: &str, value: Option<&str>| {
        if let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) {
            out.push(string_field(name, v));
        }
    };
    let arn = task.task_arn.as_deref();
    push("ecs_cluster", task.cluster.as_deref().map(cluster_name));
    push("ecs_task_arn", arn);
    push("ecs_task_id", arn.and_then(|a| a.rsplit('/').next()));
    push("ecs_task_definition", task_definition(task).as_deref());
    push("container_name", app.and_then(|c| c.name.as_deref()));
    push("container_id", app.and_then(|c| c.docker_id.as_deref()));
    push("aws_region", arn.and_then(arn_region));
    push("availability_zone", task.availability_zone.as_deref());
    push("launch_type", task.launch_type.as_deref());
    out
}

/// `arn:aws:ecs:REGION:ACCOUNT:cluster/NAME` or the bare name.
fn cluster_name(cluster: &str) -> &str {
    if cluster.starts_with("arn:") {
        cluster.rsplit('/').next().unwrap_or(cluster)
    } else {
        cluster
    }
}

fn arn_region(arn: &str) -> Option<&str> {
    if !arn.starts_with("arn:") {
        return None;
    }
    arn.split(':').nth(3).filter(|r| !r.is_empty())
}

fn task_definition(task: &TaskDoc) -> Option<String> {
    let family = task.family.as_deref().filter(|f| !f.is_empty())?;
    let revision = match task.revision.as_ref()? {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    Some(format!("{family}:{revision}"))
}

fn http_client(deadline: Instant) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1)),
    ));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector)
}

async fn get_json<T: DeserializeOwned>(client: &HttpClient, url: &str, deadline: Instant) -> Result<T, FetchError> {
    let uri: hyper::Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| FetchError::Url {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    let fetch = async {
        let response = client.get(uri).await.map_err(|e| FetchError::Request {
            url: url.to_owned(),
            reason: error_chain(&e),
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| FetchError::Body {
                url: url.to_owned(),
                reason: e.to_string(),
            })?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|source| FetchError::Json {
            url: url.to_owned(),
            source,
        })
    };
    tokio::time::timeout_at(deadline, fetch)
        .await
        .unwrap_or_else(|_| Err(FetchError::Timeout { url: url.to_owned() }))
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use serde_json::json;

    use super::super::Outcome;
    use super::super::testserver::{Route, TestServer, closed_port_url};
    use super::*;

    // Shaped after AWS's documented v4 examples (Fargate, then EC2 with awsvpc); values are ours.

    /// `${ECS_CONTAINER_METADATA_URI_V4}` as served to the router container on Fargate.
    pub(in super::super) const FARGATE_CONTAINER: &str = r#"{
        "DockerId": "cd189a933e5849daa93386466019ab50-2495160603",
        "Name": "log_router",
        "DockerName": "log_router",
        "Image": "123456789012.dkr.ecr.us-west-2.amazonaws.com/logferry:latest",
        "ImageID": "sha256:8fd5b2bd4fb5a0b1fdb4b51d25c1b3ea3a1fbb1bd8b5c1a2c4f4bbd84bd5c9e1",
        "Labels": {
            "com.amazonaws.ecs.cluster": "arn:aws:ecs:us-west-2:123456789012:cluster/prod-web",
            "com.amazonaws.ecs.container-name": "log_router",
            "com.amazonaws.ecs.task-arn": "arn:aws:ecs:us-west-2:123456789012:task/prod-web/cd189a933e5849daa93386466019ab50",
            "com.amazonaws.ecs.task-definition-family": "web",
            "com.amazonaws.ecs.task-definition-version": "7"
        },
        "DesiredStatus": "RUNNING",
        "KnownStatus": "RUNNING",
        "Limits": { "CPU": 2 },
        "CreatedAt": "2024-03-04T10:11:12.123456789Z",
        "StartedAt": "2024-03-04T10:11:13.123456789Z",
        "Type": "NORMAL",
        "ContainerARN": "arn:aws:ecs:us-west-2:123456789012:container/prod-web/cd189a933e5849daa93386466019ab50/0f1c6f0e-1c4b-4a86-9e0e-6c1f0f0e1c4b",
        "LogDriver": "awslogs",
        "LogOptions": { "awslogs-group": "/ecs/web", "awslogs-region": "us-west-2", "awslogs-stream": "router/log_router/cd189a933e5849daa93386466019ab50" },
        "Networks": [ { "NetworkMode": "awsvpc", "IPv4Addresses": ["10.0.2.106"] } ]
    }"#;

    /// `${ECS_CONTAINER_METADATA_URI_V4}/task` on Fargate: the router is listed first.
    pub(in super::super) const FARGATE_TASK: &str = r#"{
        "Cluster": "arn:aws:ecs:us-west-2:123456789012:cluster/prod-web",
        "TaskARN": "arn:aws:ecs:us-west-2:123456789012:task/prod-web/cd189a933e5849daa93386466019ab50",
        "Family": "web",
        "Revision": "7",
        "DesiredStatus": "RUNNING",
        "KnownStatus": "RUNNING",
        "Limits": { "CPU": 0.25, "Memory": 512 },
        "PullStartedAt": "2024-03-04T10:11:01.123456789Z",
        "PullStoppedAt": "2024-03-04T10:11:09.123456789Z",
        "AvailabilityZone": "us-west-2b",
        "LaunchType": "FARGATE",
        "Containers": [
            {
                "DockerId": "cd189a933e5849daa93386466019ab50-2495160603",
                "Name": "log_router",
                "DockerName": "log_router",
                "Image": "123456789012.dkr.ecr.us-west-2.amazonaws.com/logferry:latest",
                "Labels": { "com.amazonaws.ecs.container-name": "log_router" },
                "DesiredStatus": "RUNNING",
                "KnownStatus": "RUNNING",
                "Type": "NORMAL",
                "Networks": [ { "NetworkMode": "awsvpc", "IPv4Addresses": ["10.0.2.106"] } ]
            },
            {
                "DockerId": "cd189a933e5849daa93386466019ab50-3681984407",
                "Name": "app",
                "DockerName": "app",
                "Image": "123456789012.dkr.ecr.us-west-2.amazonaws.com/web:1.4.2",
                "Labels": { "com.amazonaws.ecs.container-name": "app" },
                "DesiredStatus": "RUNNING",
                "KnownStatus": "RUNNING",
                "Limits": { "CPU": 2 },
                "Type": "NORMAL",
                "Networks": [ { "NetworkMode": "awsvpc", "IPv4Addresses": ["10.0.2.106"] } ]
            },
            {
                "DockerId": "cd189a933e5849daa93386466019ab50-1081234567",
                "Name": "metrics",
                "DockerName": "metrics",
                "Image": "public.ecr.aws/example/metrics:2",
                "DesiredStatus": "RUNNING",
                "KnownStatus": "RUNNING",
                "Type": "NORMAL"
            }
        ],
        "ClockDrift": { "ClockErrorBound": 0.5, "ReferenceTimestamp": "2024-03-04T10:10:00Z", "ClockSynchronizationStatus": "SYNCHRONIZED" },
        "EphemeralStorageMetrics": { "Utilized": 261, "Reserved": 20496 }
    }"#;

    /// The router's own document on the EC2 launch type.
    const EC2_CONTAINER: &str = r#"{
        "DockerId": "ea32192c8553fbff06c9340478a2ff089b2bb5646fb718b4ee206641c9086d66",
        "Name": "logferry",
        "DockerName": "ecs-worker-12-logferry-a0e0d8c9a0b1c2d3e4f5",
        "Image": "logferry:0.1",
        "DesiredStatus": "RUNNING",
        "KnownStatus": "RUNNING",
        "Type": "NORMAL"
    }"#;

    /// Task document on EC2 with awsvpc: short cluster name, the agent's pause container first,
    /// no AvailabilityZone, and the router listed after the app.
    const EC2_TASK: &str = r#"{
        "Cluster": "batch",
        "TaskARN": "arn:aws:ecs:eu-central-1:210987654321:task/batch/158d1c8083dd49d6b527399fd6414f5c",
        "Family": "worker",
        "ServiceName": "worker-svc",
        "Revision": "12",
        "DesiredStatus": "RUNNING",
        "KnownStatus": "RUNNING",
        "Limits": { "CPU": 0.25, "Memory": 512 },
        "PullStartedAt": "2024-02-01T08:00:00.000000000Z",
        "PullStoppedAt": "2024-02-01T08:00:02.000000000Z",
        "LaunchType": "EC2",
        "VPCID": "vpc-0123456789abcdef0",
        "Containers": [
            {
                "DockerId": "731a0d6a3b4210e2448339bc7015aaa79bfe4fa256384f4102db86ef94cbbc4c",
                "Name": "~internal~ecs~pause",
                "DockerName": "ecs-worker-12-internalecspause-9a8b7c6d5e4f",
                "Image": "amazon/amazon-ecs-pause:0.1.0",
                "DesiredStatus": "RESOURCES_PROVISIONED",
                "KnownStatus": "RESOURCES_PROVISIONED",
                "Type": "CNI_PAUSE"
            },
            {
                "DockerId": "43481a6ce4842eec8fe72fc28500c6b52edcc0917f105b83379f88cac1ff3946",
                "Name": "worker",
                "DockerName": "ecs-worker-12-worker-b2c3d4e5f6a7",
                "Image": "worker:3",
                "DesiredStatus": "RUNNING",
                "KnownStatus": "RUNNING",
                "Type": "NORMAL"
            },
            {
                "DockerId": "ea32192c8553fbff06c9340478a2ff089b2bb5646fb718b4ee206641c9086d66",
                "Name": "logferry",
                "DockerName": "ecs-worker-12-logferry-a0e0d8c9a0b1c2d3e4f5",
                "Image": "logferry:0.1",
                "DesiredStatus": "RUNNING",
                "KnownStatus": "RUNNING",
                "Type": "NORMAL"
            }
        ]
    }"#;

    fn env_with_uri(uri: String) -> impl Fn(&str) -> Option<String> + Sync {
        let map = HashMap::from([(URI_ENV.to_owned(), uri)]);
        move |name: &str| map.get(name).cloned()
    }

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(2)
    }

    fn server(container: &str, task: &str) -> TestServer {
        let server = TestServer::start();
        server.get("/v4/abc", container);
        server.get("/v4/abc/task", task);
        server
    }

    fn s(name: &str, value: &str) -> (String, Value) {
        (name.to_owned(), json!(value))
    }

    #[tokio::test]
    async fn fargate_document_yields_every_field() {
        let server = server(FARGATE_CONTAINER, FARGATE_TASK);
        let env = env_with_uri(format!("{}/v4/abc", server.url()));
        let got = collect(Detect::Auto, None, &env, deadline()).await;
        assert_eq!(got.outcome, Some(Outcome::Found));
        assert_eq!(
            got.fields,
            vec![
                s("ecs_cluster", "prod-web"),
                s(
                    "ecs_task_arn",
                    "arn:aws:ecs:us-west-2:123456789012:task/prod-web/cd189a933e5849daa93386466019ab50"
                ),
                s("ecs_task_id", "cd189a933e5849daa93386466019ab50"),
                s("ecs_task_definition", "web:7"),
                s("container_name", "app"),
                s("container_id", "cd189a933e5849daa93386466019ab50-3681984407"),
                s("aws_region", "us-west-2"),
                s("availability_zone", "us-west-2b"),
                s("launch_type", "FARGATE"),
            ]
        );
        let mut paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
        paths.sort();
        assert_eq!(paths, ["/v4/abc", "/v4/abc/task"]);
    }

    #[tokio::test]
    async fn ec2_document_skips_pause_and_router_containers() {
        let server = server(EC2_CONTAINER, EC2_TASK);
        // A trailing slash in the variable must not produce "//task".
        let env = env_with_uri(format!("{}/v4/abc/", server.url()));
        let got = collect(Detect::Enabled, None, &env, deadline()).await;
        assert_eq!(got.outcome, Some(Outcome::Found));
        assert_eq!(
            got.fields,
            vec![
                s("ecs_cluster", "batch"),
                s(
                    "ecs_task_arn",
                    "arn:aws:ecs:eu-central-1:210987654321:task/batch/158d1c8083dd49d6b527399fd6414f5c"
                ),
                s("ecs_task_id", "158d1c8083dd49d6b527399fd6414f5c"),
                s("ecs_task_definition", "worker:12"),
                s("container_name", "worker"),
                s(
                    "container_id",
                    "43481a6ce4842eec8fe72fc28500c6b52edcc0917f105b83379f88cac1ff3946"
                ),
                s("aws_region", "eu-central-1"),
                s("launch_type", "EC2"),
            ]
        );
    }

    #[tokio::test]
    async fn named_container_is_selected_without_asking_for_the_router_document() {
        let server = TestServer::start();
        server.get("/v4/abc/task", FARGATE_TASK);
        let env = env_with_uri(format!("{}/v4/abc", server.url()));
        let got = collect(Detect::Auto, Some("metrics"), &env, deadline()).await;
        assert_eq!(got.outcome, Some(Outcome::Found));
        let pick = |name: &str| got.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        assert_eq!(pick("container_name"), Some(json!("metrics")));
        assert_eq!(
            pick("container_id"),
            Some(json!("cd189a933e5849daa93386466019ab50-1081234567"))
        );
        let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["/v4/abc/task"]);
    }

    #[tokio::test]
    async fn unknown_named_container_keeps_task_fields_but_fails() {
        let server = server(FARGATE_CONTAINER, FARGATE_TASK);
        let env = env_with_uri(format!("{}/v4/abc", server.url()));
        let got = collect(Detect::Auto, Some("nginx"), &env, deadline()).await;
        assert!(
            matches!(&got.outcome, Some(Outcome::Failed(why)) if why.contains("nginx")),
            "{got:?}"
        );
        assert!(got.fields.iter().any(|(k, _)| k == "ecs_task_arn"));
        assert!(!got.fields.iter().any(|(k, _)| k == "container_name"));
    }

    #[tokio::test]
    async fn unreadable_router_document_keeps_task_fields_but_fails() {
        let server = TestServer::start();
        server.get("/v4/abc/task", FARGATE_TASK);
        server.route(Route::new("GET", "/v4/abc", 500, "boom"));
        let env = env_with_uri(format!("{}/v4/abc", server.url()));
        let got = collect(Detect::Auto, None, &env, deadline()).await;
        assert!(
            matches!(&got.outcome, Some(Outcome::Failed(why)) if why.contains("500")),
            "{got:?}"
        );
        assert_eq!(got.fields.len(), 7, "{got:?}");
    }

    #[tokio::test]
    async fn missing_variable_is_absent_or_failed_by_mode() {
        let env = |_: &str| None;
        assert_eq!(
            collect(Detect::Auto, None, &env, deadline()).await.outcome,
            Some(Outcome::Absent)
        );
        let enabled = collect(Detect::Enabled, None, &env, deadline()).await;
        assert!(matches!(enabled.outcome, Some(Outcome::Failed(ref why)) if why.contains(URI_ENV)));
        assert!(enabled.fields.is_empty());
    }

    #[tokio::test]
    async fn broken_agent_answers_are_failures_even_in_auto() {
        let refused = env_with_uri(format!("{}/v4/abc", closed_port_url()));
        let got = collect(Detect::Auto, None, &refused, deadline()).await;
        assert!(matches!(got.outcome, Some(Outcome::Failed(_))), "{got:?}");

        let server = server(FARGATE_CONTAINER, "<html>not json</html>");
        let env = env_with_uri(format!("{}/v4/abc", server.url()));
        let got = collect(Detect::Auto, None, &env, deadline()).await;
        assert!(
            matches!(&got.outcome, Some(Outcome::Failed(why)) if why.contains("invalid JSON")),
            "{got:?}"
        );
        assert!(got.fields.is_empty());
    }

    #[tokio::test]
    async fn oversized_body_is_rejected() {
        let big = format!(r#"{{"Cluster": "{}"}}"#, "x".repeat(MAX_BODY + 1));
        let server = server(FARGATE_CONTAINER, &big);
        let env = env_with_uri(format!("{}/v4/abc", server.url()));
        let got = collect(Detect::Auto, None, &env, deadline()).await;
        assert!(
            matches!(&got.outcome, Some(Outcome::Failed(why)) if why.contains("reading body")),
            "{got:?}"
        );
    }

    #[test]
    fn arn_helpers() {
        assert_eq!(cluster_name("arn:aws:ecs:us-east-1:1:cluster/a"), "a");
        assert_eq!(cluster_name("plain"), "plain");
        assert_eq!(arn_region("arn:aws:ecs:ap-south-1:1:task/c/t"), Some("ap-south-1"));
        assert_eq!(arn_region("arn:aws:ecs::1:task"), None);
        assert_eq!(arn_region("not-an-arn"), None);
    }

    #[test]
    fn revision_may_be_a_number_and_partial_documents_still_parse() {
        let task: TaskDoc =
            match serde_json::from_value(json!({"Family": "f", "Revision": 3, "AvailabilityZone": null})) {
                Ok(t) => t,
                Err(e) => panic!("{e}"),
            };
        assert_eq!(task_definition(&task).as_deref(), Some("f:3"));
        assert_eq!(fields(&task, None), vec![s("ecs_task_definition", "f:3")]);
    }

    #[test]
    fn default_container_ignores_unstarted_ids_and_untyped_old_agents() {
        let me = ContainerDoc {
            docker_id: Some(String::new()),
            name: Some("router".into()),
            kind: None,
            known_status: None,
        };
        let containers = vec![
            ContainerDoc {
                docker_id: Some(String::new()),
                name: Some("router".into()),
                kind: None,
                known_status: None,
            },
            ContainerDoc {
                docker_id: Some(String::new()),
                name: Some("app".into()),
                kind: None,
                known_status: None,
            },
        ];
        let pick = default_app_container(&containers, &me).and_then(|c| c.name.as_deref());
        assert_eq!(pick, Some("app"));
    }
}
