//! Enrichment through the real binary, against small HTTP servers shaped like
//! the ECS task metadata endpoint v4 and IMDSv2.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// (method, path) -> body; `hang` accepts and never answers.
struct Server {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

fn serve(routes: HashMap<(&'static str, String), String>, hang: bool, need_token: bool) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            if hang {
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(120));
                    drop(stream);
                });
                continue;
            }
            let routes = routes.clone();
            let log = log.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let (method, path) = (
                        parts.next().unwrap_or("").to_string(),
                        parts.next().unwrap_or("").to_string(),
                    );
                    let mut headers = Vec::new();
                    let mut len = 0;
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).unwrap();
                        let h = h.trim_end().to_string();
                        if h.is_empty() {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        headers.push(h.to_ascii_lowercase());
                    }
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body).unwrap();
                    log.lock().unwrap().push(format!("{method} {path}"));
                    let token_ok = !need_token
                        || method == "PUT"
                        || headers
                            .iter()
                            .any(|h| h.starts_with("x-aws-ec2-metadata-token: tok-123"));
                    let (status, body) = match routes.get(&(if method == "PUT" { "PUT" } else { "GET" }, path.clone()))
                    {
                        Some(b) if token_ok => ("200 OK", b.clone()),
                        Some(_) => ("401 Unauthorized", String::new()),
                        None => ("404 Not Found", String::new()),
                    };
                    // IMDS answers the token PUT with the token's TTL, as AWS does.
                    let ttl = if method == "PUT" {
                        "x-aws-ec2-metadata-token-ttl-seconds: 21600\r\n"
                    } else {
                        ""
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n{ttl}\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Server { port, requests }
}

fn ecs_routes() -> HashMap<(&'static str, String), String> {
    // Shaped on AWS's documented Fargate v4 task metadata example.
    let container = json!({
        "DockerId": "cd189a933e5849daa93386466019ab50-2495160603",
        "Name": "log_router",
        "DockerName": "log_router",
        "Image": "public.ecr.aws/logferry/logferry:latest",
        "Labels": {"com.amazonaws.ecs.container-name": "log_router"},
        "DesiredStatus": "RUNNING", "KnownStatus": "RUNNING",
        "Type": "NORMAL"
    });
    let task = json!({
        "Cluster": "arn:aws:ecs:us-west-2:111122223333:cluster/default",
        "TaskARN": "arn:aws:ecs:us-west-2:111122223333:task/default/e9028f8d5d8e4f258373e7b93ce9a3c3",
        "Family": "curltest",
        "Revision": "3",
        "DesiredStatus": "RUNNING",
        "KnownStatus": "RUNNING",
        "Limits": {"CPU": 0.25, "Memory": 512},
        "AvailabilityZone": "us-west-2d",
        "LaunchType": "FARGATE",
        "Containers": [
            container,
            {
                "DockerId": "e9028f8d5d8e4f258373e7b93ce9a3c3-2495160603",
                "Name": "curl",
                "DockerName": "curl",
                "Image": "111122223333.dkr.ecr.us-west-2.amazonaws.com/curltest:latest",
                "DesiredStatus": "RUNNING", "KnownStatus": "RUNNING",
                "Type": "NORMAL"
            }
        ]
    });
    HashMap::from([
        (("GET", "/v4/abc".to_string()), container.to_string()),
        (("GET", "/v4/abc/task".to_string()), task.to_string()),
    ])
}

fn imds_routes() -> HashMap<(&'static str, String), String> {
    let doc = json!({
        "accountId": "111122223333", "architecture": "x86_64", "availabilityZone": "us-west-2b",
        "imageId": "ami-0abcdef1234567890", "instanceId": "i-1234567890abcdef0",
        "instanceType": "m6i.large", "privateIp": "10.0.1.23", "region": "us-west-2"
    });
    HashMap::from([
        (("PUT", "/latest/api/token".to_string()), "tok-123".to_string()),
        (
            ("GET", "/latest/meta-data/instance-id".to_string()),
            "i-1234567890abcdef0".to_string(),
        ),
        (
            ("GET", "/latest/meta-data/instance-type".to_string()),
            "m6i.large".to_string(),
        ),
        (
            ("GET", "/latest/meta-data/placement/availability-zone".to_string()),
            "us-west-2b".to_string(),
        ),
        (
            ("GET", "/latest/meta-data/local-ipv4".to_string()),
            "10.0.1.23".to_string(),
        ),
        (
            ("GET", "/latest/meta-data/ami-id".to_string()),
            "ami-0abcdef1234567890".to_string(),
        ),
        (
            ("GET", "/latest/meta-data/local-hostname".to_string()),
            "ip-10-0-1-23.us-west-2.compute.internal".to_string(),
        ),
        (
            ("GET", "/latest/dynamic/instance-identity/document".to_string()),
            doc.to_string(),
        ),
    ])
}

fn enrich_config(env: &Env, extra: &str) -> std::path::PathBuf {
    append_ids(&env.logs().join("app.log"), 0..50);
    env.write_config(&format!(
        r#"
[global]
data_dir = "{data}"
[sources.app]
type = "file"
include = ["{logs}/*.log"]
[transforms.meta]
type = "enrich"
inputs = ["app"]
fields = {{ cluster_region = "${{TEST_REGION:-eu-west-1}}" }}
{extra}
[sinks.out]
type = "file"
inputs = ["meta"]
path = "{out}"
key_prefix = "{{ecs_cluster}}/{{kubernetes.pod_name}}/%Y/"
compression = "gzip"
"#,
        data = env.path("data").display(),
        logs = env.logs().display(),
        out = env.path("out").display(),
    ))
}

#[test]
fn ecs_ec2_and_kubernetes_metadata_are_added_to_every_record() {
    let env = Env::new();
    let ecs = serve(ecs_routes(), false, false);
    let imds = serve(imds_routes(), false, true);
    let labels = env.path("labels");
    std::fs::write(&labels, "app=\"web\"\napp.kubernetes.io/name=\"x\\\"y\"\n").unwrap();
    let cfg = enrich_config(&env, &format!("labels_file = \"{}\"", labels.display()));
    let ecs_uri = format!("http://127.0.0.1:{}/v4/abc", ecs.port);
    let imds_uri = format!("http://127.0.0.1:{}", imds.port);
    run_to_eof(
        &cfg,
        &[
            ("ECS_CONTAINER_METADATA_URI_V4", &ecs_uri),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds_uri),
            ("POD_NAME", "web-7d9f"),
            ("POD_NAMESPACE", "shop"),
            ("POD_UID", "uid-1"),
            ("NODE_NAME", "node-a"),
        ],
    );
    let records = env.records();
    assert_eq!(records.len(), 50);
    for r in &records {
        assert_eq!(r["ecs_cluster"], "default");
        assert_eq!(
            r["ecs_task_arn"],
            "arn:aws:ecs:us-west-2:111122223333:task/default/e9028f8d5d8e4f258373e7b93ce9a3c3"
        );
        assert_eq!(r["ecs_task_id"], "e9028f8d5d8e4f258373e7b93ce9a3c3");
        assert_eq!(r["ecs_task_definition"], "curltest:3");
        assert_eq!(r["container_name"], "curl");
        assert_eq!(r["container_id"], "e9028f8d5d8e4f258373e7b93ce9a3c3-2495160603");
        assert_eq!(r["aws_region"], "us-west-2");
        assert_eq!(r["availability_zone"], "us-west-2d");
        assert_eq!(r["launch_type"], "FARGATE");
        assert_eq!(r["ec2_instance_id"], "i-1234567890abcdef0");
        assert_eq!(r["ec2_instance_type"], "m6i.large");
        assert_eq!(r["az"], "us-west-2b");
        assert_eq!(r["private_ip"], "10.0.1.23");
        assert_eq!(r["ami_id"], "ami-0abcdef1234567890");
        assert_eq!(r["account_id"], "111122223333");
        assert_eq!(r["hostname"], "ip-10-0-1-23.us-west-2.compute.internal");
        assert_eq!(r["kubernetes"]["pod_name"], "web-7d9f");
        assert_eq!(r["kubernetes"]["namespace_name"], "shop");
        assert_eq!(r["kubernetes"]["pod_id"], "uid-1");
        assert_eq!(r["kubernetes"]["host"], "node-a");
        assert_eq!(
            r["kubernetes"]["labels"],
            json!({"app": "web", "app.kubernetes.io/name": "x\"y"})
        );
        assert_eq!(r["cluster_region"], "eu-west-1");
        assert!(r["@timestamp"].is_string());
        assert!(r["id"].is_u64());
    }
    // The object key used record fields.
    let objects = logferry::sinks::file::list_objects(&env.path("out"));
    assert!(
        objects.iter().all(|p| p.starts_with(env.path("out/default/web-7d9f"))),
        "{objects:?}"
    );
    // Metadata was fetched once, not per record.
    let n = ecs
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.ends_with("/task"))
        .count();
    assert_eq!(n, 1);
    let imds_reqs = imds.requests.lock().unwrap().clone();
    assert_eq!(
        imds_reqs
            .iter()
            .filter(|r| r.starts_with("PUT /latest/api/token"))
            .count(),
        1,
        "{imds_reqs:?}"
    );
}

#[test]
fn absent_metadata_adds_nothing_and_starts_fast() {
    let env = Env::new();
    let cfg = enrich_config(&env, "ec2 = false");
    let start = Instant::now();
    run_to_eof(&cfg, &[]);
    let records = env.records();
    assert_eq!(records.len(), 50);
    assert!(records[0].get("ecs_cluster").is_none() && records[0].get("kubernetes").is_none());
    assert_eq!(records[0]["cluster_region"], "eu-west-1");
    assert!(start.elapsed() < Duration::from_secs(30), "hang guard");
}

#[test]
fn hanging_metadata_endpoints_do_not_hold_start_up() {
    let env = Env::new();
    let ecs = serve(HashMap::new(), true, false);
    let imds = serve(HashMap::new(), true, false);
    let cfg = enrich_config(&env, "");
    let ecs_uri = format!("http://127.0.0.1:{}/v4/abc", ecs.port);
    let imds_uri = format!("http://127.0.0.1:{}", imds.port);
    let start = Instant::now();
    run_to_eof(
        &cfg,
        &[
            ("ECS_CONTAINER_METADATA_URI_V4", &ecs_uri),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds_uri),
            ("POD_NAME", "web-1"),
        ],
    );
    let took = start.elapsed();
    let records = env.records();
    assert_eq!(records.len(), 50);
    assert!(records[0].get("ecs_cluster").is_none());
    assert_eq!(records[0]["kubernetes"]["pod_name"], "web-1");
    // Detection is bounded by the 2 s default budget; generous guard for noisy machines.
    assert!(took < Duration::from_secs(15), "start-up took {took:?}");
}
