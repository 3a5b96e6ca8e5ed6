//! `route` and `throttle` through the real binary.

mod common;

use std::time::Duration;

use common::*;

fn checkpoint_offset(env: &Env) -> serde_json::Value {
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.path("data/checkpoints/app.json")).unwrap()).unwrap();
    saved["files"][0]["offset"].clone()
}

fn ids(records: &[serde_json::Value]) -> Vec<u64> {
    let mut v: Vec<u64> = records.iter().filter_map(|r| r["id"].as_u64()).collect();
    v.sort_unstable();
    v
}

/// A file sink under `out/<name>`.
fn file_sink(env: &Env, name: &str, input: &str) -> String {
    format!(
        "[sinks.{name}]\ntype = \"file\"\ninputs = [{input}]\npath = \"{}\"\nkey_prefix = \"x/\"\ncompression = \"none\"\n",
        env.path(&format!("out/{name}")).display()
    )
}

#[test]
fn errors_also_to_a_second_sink_everything_to_the_first_and_the_checkpoint_reaches_the_end() {
    let env = Env::new();
    let levels = ["debug", "info", "warn", "error", "fatal"];
    let mut text = String::new();
    for i in 0..5000 {
        let tag = if i % 7 == 0 { ",\"tag\":\"audit.login\"" } else { "" };
        text.push_str(&format!("{{\"id\":{i},\"level\":\"{}\"{tag}}}\n", levels[i % 5]));
    }
    std::fs::write(env.logs().join("app.log"), &text).unwrap();
    let cfg = env.write_config(&format!(
        r#"
[global]
data_dir = "{data}"

[sources.app]
type = "file"
include = ["{logs}/*.log"]

[transforms.r]
type = "route"
inputs = ["app"]
[transforms.r.routes]
errors = {{ level_at_least = "error" }}
audit = {{ field = "tag", regex = "^audit" }}

{all}
{cw}
{rest}
"#,
        data = env.path("data").display(),
        logs = env.logs().display(),
        all = file_sink(&env, "all", "\"app\""),
        cw = file_sink(&env, "cw", "\"r.errors\""),
        rest = file_sink(&env, "rest", "\"r._unmatched\""),
    ));
    let (code, stdout, stderr) = validate_config(&cfg);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("transform r (route: audit: tag =~ /^audit/; errors: level >= error; else _unmatched) <- app"),
        "{stdout}"
    );
    assert!(
        stdout.contains("sink cw (") && stdout.contains(") <- r.errors"),
        "{stdout}"
    );

    run_to_eof(&cfg, &[]);
    let all = read_records(&env.path("out/all"));
    assert_each_once(&all, 5000);
    let errors = read_records(&env.path("out/cw"));
    let want_errors: Vec<u64> = (0..5000).filter(|i| i % 5 >= 3).collect();
    assert_eq!(
        ids(&errors),
        want_errors,
        "exactly the error and fatal records, once each"
    );
    // Neither an error nor audit: the `_unmatched` output. The audit output
    // is read by nobody, so audit records that are not errors go only to `all`.
    let rest = read_records(&env.path("out/rest"));
    let want_rest: Vec<u64> = (0..5000).filter(|i| i % 5 < 3 && i % 7 != 0).collect();
    assert_eq!(ids(&rest), want_rest);
    assert_eq!(checkpoint_offset(&env), text.len() as u64);
}

#[test]
fn a_route_nothing_matches_still_lets_the_checkpoint_pass_every_record() {
    let env = Env::new();
    let mut text = String::new();
    for i in 0..3000 {
        text.push_str(&format!("{{\"id\":{i},\"level\":\"info\"}}\n"));
    }
    std::fs::write(env.logs().join("app.log"), &text).unwrap();
    let cfg = env.write_config(&format!(
        r#"
[global]
data_dir = "{data}"

[sources.app]
type = "file"
include = ["{logs}/*.log"]

[transforms.r]
type = "route"
inputs = ["app"]
routes.errors = {{ level_at_least = "error" }}

{cw}
"#,
        data = env.path("data").display(),
        logs = env.logs().display(),
        cw = file_sink(&env, "cw", "\"r.errors\""),
    ));
    let out = run_to_eof(&cfg, &[]);
    assert!(read_records(&env.path("out")).is_empty());
    assert_eq!(
        checkpoint_offset(&env),
        text.len() as u64,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn validate_names_the_route_and_the_output_of_a_bad_input() {
    let env = Env::new();
    let cfg = env.config(
        "*.log",
        "",
        "\n[transforms.r]\ntype = \"route\"\ninputs = [\"app\"]\nroutes.errors = { level_at_least = \"error\" }\n\n[sinks.cw]\ntype = \"blackhole\"\ninputs = [\"r.eror\"]\n\n[sinks.bare]\ntype = \"blackhole\"\ninputs = [\"r\"]\n",
    );
    let (code, _, stderr) = validate_config(&cfg);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("`sinks.cw.inputs[0]`: route `r` has no output `eror` (outputs: errors, _unmatched)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`sinks.bare.inputs[0]`: `r` is a route: name one of its outputs, e.g. `r.errors`"),
        "{stderr}"
    );
}

#[test]
fn throttle_lets_exactly_threshold_per_key_through_and_counts_the_rest() {
    let env = Env::new();
    let pods = ["web-1", "web-2", "worker-1"];
    let mut text = String::new();
    // 300 records per pod, every 10th an error (excluded from throttling).
    for i in 0..900u64 {
        let level = if i % 10 == 0 { "error" } else { "info" };
        let pod = pods[(i % 3) as usize];
        text.push_str(&format!(
            "{{\"id\":{i},\"level\":\"{level}\",\"kubernetes\":{{\"pod_name\":\"{pod}\"}}}}\n"
        ));
    }
    std::fs::write(env.logs().join("app.log"), &text).unwrap();
    let port = free_port();
    let cfg = env.write_config(&format!(
        r#"
[global]
data_dir = "{data}"

[api]
address = "127.0.0.1:{port}"

[sources.app]
type = "file"
include = ["{logs}/*.log"]

[transforms.t]
type = "throttle"
inputs = ["app"]
threshold = 100
window = "1h"
key_field = "{{kubernetes.pod_name}}"
exclude = {{ field = "level", equals = "error" }}

[sinks.out]
type = "file"
inputs = ["t"]
path = "{out}"
key_prefix = "x/"
compression = "none"
flush_interval = "200ms"
"#,
        data = env.path("data").display(),
        logs = env.logs().display(),
        out = env.path("out").display(),
    ));
    let (code, stdout, stderr) = validate_config(&cfg);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains(
            "transform t (throttle: 100 record(s) per 1h per key `{kubernetes.pod_name}`, except level == \"error\", up to 10000 keys) <- app"
        ),
        "{stdout}"
    );

    let router = spawn(&cfg, &[]);
    let metrics = || http_get(port, "/metrics").map(|(_, b)| b).unwrap_or_default();
    let size = text.len() as f64;
    // Every record handled and acknowledged, dropped ones included.
    wait_for("the checkpoint at the end of the file", Duration::from_secs(60), || {
        metric(&metrics(), "logferry_file_checkpoint_offset_bytes", &[]) == Some(size)
    });
    let text_metrics = metrics();
    let errors = 90u64;
    let throttled = 900 - errors - 3 * 100;
    assert_eq!(
        metric(
            &text_metrics,
            "logferry_component_discarded_events_total",
            &["component=\"t\"", "reason=\"throttled\""]
        ),
        Some(throttled as f64),
        "{text_metrics}"
    );
    assert!(!text_metrics.contains("web-1"), "key values never become labels");
    router.signal(libc::SIGTERM);
    let (status, stderr) = router.wait(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");

    let records = env.records();
    assert_eq!(records.len() as u64, 900 - throttled);
    for pod in pods {
        let of_pod = |level: &str| {
            records
                .iter()
                .filter(|r| r["kubernetes"]["pod_name"] == pod && r["level"] == level)
                .count()
        };
        assert_eq!(of_pod("info"), 100, "{pod}: exactly threshold throttled records");
        assert_eq!(of_pod("error"), 30, "{pod}: every excluded record");
    }
    // Which ones: the first 100 of each key in file order, and every error.
    let mut seen = [0u32; 3];
    let want: Vec<u64> = (0..900u64)
        .filter(|i| {
            let n = &mut seen[(i % 3) as usize];
            let error = i % 10 == 0;
            if !error {
                *n += 1;
            }
            error || *n <= 100
        })
        .collect();
    assert_eq!(ids(&records), want);
}
