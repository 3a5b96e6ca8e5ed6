//! EC2 instance metadata through IMDSv2.
//!
//! aws-config's IMDS client is used rather than hand-rolled HTTP because it already gets the
//! session-token dance, token TTL headers, retries on 401/5xx and endpoint modes right, and
//! matches what the AWS SDKs do on the same host.
//!
//! Its endpoint and the opt-out are taken from our environment lookup and handed to the
//! builder explicitly, so that what the tests describe is what the client does (and the real
//! process environment, or `~/.aws/config`, can never point a test at the real link-local
//! address).
//!
//! "Not on EC2" has no clean signal: off EC2 the link-local address refuses or black-holes;
//! on Fargate, or in a container behind an IMDS hop limit of 1, the token request goes
//! unanswered. So in `auto` mode anything that goes wrong before IMDS has answered at all is
//! "absent"; once it has answered, later errors are real failures. Connect timeouts are kept
//! short so that the common off-EC2 case settles well inside the collection budget.

use std::time::Duration;

use aws_config::imds::client::Client;
use aws_config::imds::client::error::ImdsError;
use serde::Deserialize;
use tokio::time::Instant;

use super::{Detect, EnvLookup, Partial, error_chain, lookup, string_field};

const ENDPOINT_ENV: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
const ENDPOINT_MODE_ENV: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE";
const DISABLED_ENV: &str = "AWS_EC2_METADATA_DISABLED";
const DEFAULT_ENDPOINT_V4: &str = "http://169.254.169.254";
const DEFAULT_ENDPOINT_V6: &str = "http://[fd00:ec2::254]";

/// Off EC2 a black-holed connect is the slow path; real IMDS accepts in microseconds.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// IMDS answers in milliseconds; a token request that goes unanswered this long is being
/// dropped (hop limit), and waiting out the whole budget would not change that.
const MAX_READ_TIMEOUT: Duration = Duration::from_secs(1);
/// One retry covers an expired token (401) or a transient 5xx.
const MAX_ATTEMPTS: u32 = 2;

const INSTANCE_ID: &str = "/latest/meta-data/instance-id";
const IDENTITY_DOCUMENT: &str = "/latest/dynamic/instance-identity/document";
/// Field name and IMDS path of every plain-text field after the instance id, in output order.
const TEXT_FIELDS: [(&str, &str); 5] = [
    ("ec2_instance_type", "/latest/meta-data/instance-type"),
    ("az", "/latest/meta-data/placement/availability-zone"),
    ("private_ip", "/latest/meta-data/local-ipv4"),
    ("ami_id", "/latest/meta-data/ami-id"),
    ("hostname", "/latest/meta-data/local-hostname"),
];

#[derive(Debug, Deserialize)]
struct IdentityDocument {
    #[serde(rename = "accountId")]
    account_id: Option<String>,
}

pub(super) async fn collect(detect: Detect, env: EnvLookup<'_>, deadline: Instant) -> Partial {
    if lookup(env, DISABLED_ENV).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Partial::not_present(detect, format!("IMDS is disabled by {DISABLED_ENV}"));
    }
    let endpoint = match lookup(env, ENDPOINT_ENV) {
        Some(explicit) => explicit.trim().trim_end_matches('/').to_owned(),
        None => match lookup(env, ENDPOINT_MODE_ENV) {
            Some(mode) if mode.trim().eq_ignore_ascii_case("ipv6") => DEFAULT_ENDPOINT_V6.to_owned(),
            _ => DEFAULT_ENDPOINT_V4.to_owned(),
        },
    };
    let client = match build_client(&endpoint, deadline) {
        Ok(client) => client,
        Err(why) => return Partial::failed(Vec::new(), why),
    };

    // Until the instance id arrives we do not know whether IMDS exists at all.
    let instance_id = match tokio::time::timeout_at(deadline, get(&client, INSTANCE_ID)).await {
        Ok(Ok(Some(id))) => id,
        Ok(Ok(None)) => return Partial::failed(Vec::new(), "IMDS has no instance-id (HTTP 404)"),
        Ok(Err(ImdsError::ErrorResponse(r))) => {
            let why = format!(
                "IMDS answered HTTP {} for {INSTANCE_ID}",
                r.response().status().as_u16()
            );
            return Partial::failed(Vec::new(), why);
        }
        Ok(Err(e)) => {
            return Partial::not_present(detect, format!("IMDS at {endpoint}: {}", error_chain(&e)));
        }
        Err(_) => {
            return Partial::not_present(detect, format!("IMDS at {endpoint} did not answer in time"));
        }
    };

    let mut fields = vec![string_field("ec2_instance_id", instance_id)];
    let mut failures = Vec::new();
    let rest = async {
        let [kind, zone, ip, ami, host] = TEXT_FIELDS.map(|(_, path)| get(&client, path));
        let (kind, zone, ip, ami, host, doc) = tokio::join!(kind, zone, ip, ami, host, get(&client, IDENTITY_DOCUMENT));
        ([kind, zone, ip, ami, host], doc)
    };
    let Ok((texts, doc)) = tokio::time::timeout_at(deadline, Box::pin(rest)).await else {
        return Partial::failed(fields, "IMDS answered the instance id but not the rest in time");
    };
    for ((name, path), result) in TEXT_FIELDS.iter().zip(texts) {
        match result {
            Ok(Some(value)) if !value.trim().is_empty() => {
                fields.push(string_field(name, value.trim()));
            }
            // e.g. local-ipv4 on an IPv6-only instance.
            Ok(_) => {}
            Err(e) => failures.push(format!("{path}: {}", error_chain(&e))),
        }
    }
    match doc.map(|d| d.map(|text| serde_json::from_str::<IdentityDocument>(&text))) {
        Ok(Some(Ok(IdentityDocument { account_id: Some(id) }))) if !id.is_empty() => {
            fields.push(string_field("account_id", id));
        }
        Ok(Some(Ok(_)) | None) => {}
        Ok(Some(Err(e))) => failures.push(format!("{IDENTITY_DOCUMENT}: invalid JSON: {e}")),
        Err(e) => failures.push(format!("{IDENTITY_DOCUMENT}: {}", error_chain(&e))),
    }

    if failures.is_empty() {
        Partial::found(fields)
    } else {
        Partial::failed(fields, failures.join("; "))
    }
}

fn build_client(endpoint: &str, deadline: Instant) -> Result<Client, String> {
    let budget = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    Client::builder()
        .endpoint(endpoint)
        .map_err(|e| format!("invalid IMDS endpoint {endpoint:?}: {e}"))
        .map(|builder| {
            builder
                .max_attempts(MAX_ATTEMPTS)
                .connect_timeout(budget.min(MAX_CONNECT_TIMEOUT))
                .read_timeout(budget.min(MAX_READ_TIMEOUT))
                .operation_attempt_timeout(budget)
                .operation_timeout(budget)
                .build()
        })
}

/// `Ok(None)` for a 404: IMDS leaves out what an instance does not have.
async fn get(client: &Client, path: &str) -> Result<Option<String>, ImdsError> {
    match client.get(path).await {
        Ok(value) => Ok(Some(String::from(value))),
        Err(ImdsError::ErrorResponse(r)) if r.response().status().as_u16() == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::HashMap;

    use serde_json::{Value, json};

    use super::super::Outcome;
    use super::super::testserver::{Route, TestServer, closed_port_url};
    use super::*;

    const TOKEN: &str = "AQAEAOTqD5Kx-test-token==";
    const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
    const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

    const IDENTITY: &str = r#"{
        "accountId" : "123456789012",
        "architecture" : "x86_64",
        "availabilityZone" : "us-west-2b",
        "billingProducts" : null,
        "devpayProductCodes" : null,
        "marketplaceProductCodes" : null,
        "imageId" : "ami-0abcdef1234567890",
        "instanceId" : "i-0123456789abcdef0",
        "instanceType" : "m6i.large",
        "kernelId" : null,
        "pendingTime" : "2024-03-04T09:00:00Z",
        "privateIp" : "10.0.1.23",
        "ramdiskId" : null,
        "region" : "us-west-2",
        "version" : "2017-09-30"
    }"#;

    /// An IMDSv2-only endpoint: no token, no metadata.
    pub(in super::super) fn serve_imds(server: &TestServer) {
        server.route(
            Route::new("PUT", "/latest/api/token", 200, TOKEN)
                .require(TTL_HEADER, None)
                .header(TTL_HEADER, "21600"),
        );
        let answers = [
            (INSTANCE_ID, "i-0123456789abcdef0"),
            ("/latest/meta-data/instance-type", "m6i.large"),
            ("/latest/meta-data/placement/availability-zone", "us-west-2b"),
            ("/latest/meta-data/local-ipv4", "10.0.1.23"),
            ("/latest/meta-data/ami-id", "ami-0abcdef1234567890"),
            (
                "/latest/meta-data/local-hostname",
                "ip-10-0-1-23.us-west-2.compute.internal",
            ),
            (IDENTITY_DOCUMENT, IDENTITY),
        ];
        for (path, body) in answers {
            server.route(Route::new("GET", path, 200, body).require(TOKEN_HEADER, Some(TOKEN)));
        }
    }

    fn env_for(endpoint: String) -> impl Fn(&str) -> Option<String> + Sync {
        let map = HashMap::from([(ENDPOINT_ENV.to_owned(), endpoint)]);
        move |name: &str| map.get(name).cloned()
    }

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(3)
    }

    fn s(name: &str, value: &str) -> (String, Value) {
        (name.to_owned(), json!(value))
    }

    #[tokio::test]
    async fn imdsv2_flow_yields_every_field() {
        let server = TestServer::start();
        serve_imds(&server);
        let env = env_for(server.url());
        let got = collect(Detect::Auto, &env, deadline()).await;
        assert_eq!(got.outcome, Some(Outcome::Found), "{got:?}");
        assert_eq!(
            got.fields,
            vec![
                s("ec2_instance_id", "i-0123456789abcdef0"),
                s("ec2_instance_type", "m6i.large"),
                s("az", "us-west-2b"),
                s("private_ip", "10.0.1.23"),
                s("ami_id", "ami-0abcdef1234567890"),
                s("hostname", "ip-10-0-1-23.us-west-2.compute.internal"),
                s("account_id", "123456789012"),
            ]
        );

        let requests = server.requests();
        let first = requests.first();
        assert_eq!(
            first.map(|r| (r.method.as_str(), r.path.as_str())),
            Some(("PUT", "/latest/api/token"))
        );
        assert!(first.and_then(|r| r.header(TTL_HEADER)).is_some());
        let gets: Vec<_> = requests.iter().filter(|r| r.method == "GET").collect();
        assert_eq!(gets.len(), 7);
        assert!(gets.iter().all(|r| r.header(TOKEN_HEADER) == Some(TOKEN)), "{gets:?}");
    }

    #[tokio::test]
    async fn missing_optional_paths_are_left_out_silently() {
        let sparse = TestServer::start();
        sparse.route(
            Route::new("PUT", "/latest/api/token", 200, TOKEN)
                .require(TTL_HEADER, None)
                .header(TTL_HEADER, "21600"),
        );
        sparse.route(Route::new("GET", INSTANCE_ID, 200, "i-1").require(TOKEN_HEADER, Some(TOKEN)));
        let env = env_for(sparse.url());
        let got = collect(Detect::Enabled, &env, deadline()).await;
        assert_eq!(got.outcome, Some(Outcome::Found), "{got:?}");
        assert_eq!(got.fields, vec![s("ec2_instance_id", "i-1")]);
    }

    #[tokio::test]
    async fn server_errors_after_the_token_are_failures_with_partial_fields() {
        let server = TestServer::start();
        server.route(
            Route::new("PUT", "/latest/api/token", 200, TOKEN)
                .require(TTL_HEADER, None)
                .header(TTL_HEADER, "21600"),
        );
        server.route(Route::new("GET", INSTANCE_ID, 200, "i-2").require(TOKEN_HEADER, Some(TOKEN)));
        server.route(Route::new("GET", "/latest/meta-data/ami-id", 500, "oops"));
        let env = env_for(server.url());
        let got = collect(Detect::Auto, &env, deadline()).await;
        assert!(
            matches!(&got.outcome, Some(Outcome::Failed(why)) if why.contains("ami-id")),
            "{got:?}"
        );
        assert_eq!(got.fields, vec![s("ec2_instance_id", "i-2")]);
    }

    #[tokio::test]
    async fn refused_connection_is_absent_in_auto_and_failed_when_enabled() {
        let env = env_for(closed_port_url());
        assert_eq!(
            collect(Detect::Auto, &env, deadline()).await.outcome,
            Some(Outcome::Absent)
        );
        let enabled = collect(Detect::Enabled, &env, deadline()).await;
        assert!(matches!(enabled.outcome, Some(Outcome::Failed(_))), "{enabled:?}");
        assert!(enabled.fields.is_empty());
    }

    #[tokio::test]
    async fn token_refused_means_imds_is_off() {
        // IMDS answers 403 to the token request when it is disabled for the instance.
        let server = TestServer::start();
        server.route(Route::new("PUT", "/latest/api/token", 403, "Forbidden"));
        let env = env_for(server.url());
        assert_eq!(
            collect(Detect::Auto, &env, deadline()).await.outcome,
            Some(Outcome::Absent)
        );
    }

    #[tokio::test]
    async fn disabled_variable_wins_over_the_endpoint() {
        let server = TestServer::start();
        serve_imds(&server);
        let map = HashMap::from([
            (ENDPOINT_ENV.to_owned(), server.url()),
            (DISABLED_ENV.to_owned(), "TRUE".to_owned()),
        ]);
        let env = move |name: &str| map.get(name).cloned();
        assert_eq!(
            collect(Detect::Auto, &env, deadline()).await.outcome,
            Some(Outcome::Absent)
        );
        let enabled = collect(Detect::Enabled, &env, deadline()).await.outcome;
        assert!(matches!(enabled, Some(Outcome::Failed(ref why)) if why.contains(DISABLED_ENV)));
        assert!(server.requests().is_empty());
    }

    #[tokio::test]
    async fn invalid_endpoint_is_reported() {
        let env = env_for("not a uri".to_owned());
        let got = collect(Detect::Auto, &env, deadline()).await;
        assert!(
            matches!(got.outcome, Some(Outcome::Failed(ref why)) if why.contains("invalid IMDS endpoint")),
            "{got:?}"
        );
    }
}
