//! The command line: validate, config errors, inline config, exact output.

mod common;

use std::process::Command;

use common::*;

fn validate(text: &str) -> (i32, String, String) {
    let env = Env::new();
    let p = env.write_config(text);
    let (code, stdout, stderr) = validate_config(&p);
    (
        code.unwrap_or(-1),
        stdout,
        stderr.replace(&p.display().to_string(), "CFG"),
    )
}

const BASE: &str = r#"[global]
data_dir = "/tmp/logferry-cli-test"

[sources.app]
type = "file"
include = ["/var/log/app/*.log"]

[sinks.out]
type = "file"
inputs = ["app"]
path = "/tmp/out"
key_prefix = "logs/{ecs_cluster}/%Y/%m/"
max_object_size = "10MiB"
"#;

#[test]
fn validate_prints_the_pipeline() {
    let (code, out, err) = validate(BASE);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("source app (file"), "{out}");
    assert!(
        out.contains("sink out (file: /tmp/out/logs/{ecs_cluster}/%Y/%m/*.ndjson.gz"),
        "{out}"
    );
}

#[test]
fn config_errors_name_key_and_line_and_exit_non_zero() {
    let cases = [
        (
            BASE.replace("include = [", "inclde = [\"x\"]\ninclude = ["),
            "CFG:6:1: `sources.app.inclde`: unknown field `inclde`",
        ),
        (
            BASE.replace("inputs = [\"app\"]", "inputs = [\"ap\"]"),
            "CFG:10:11: `sinks.out.inputs[0]`: unknown input `ap`",
        ),
        (
            BASE.replace("{ecs_cluster}", "{ecs_cluster"),
            "CFG:12:1: `sinks.out.key_prefix`: unclosed `{`",
        ),
        (
            BASE.replace("\"10MiB\"", "\"10 lightyears\""),
            "CFG:13:1: `sinks.out.max_object_size`: invalid value",
        ),
        (
            BASE.replace("type = \"file\"\ninputs", "type = \"s4\"\ninputs"),
            "`sinks.out`: unknown sink type `s4`",
        ),
        (
            BASE.replace("/tmp/out", "${NOT_SET_ANYWHERE_42}"),
            "CFG:11:1: `sinks.out.path`: environment variable `NOT_SET_ANYWHERE_42` is not set",
        ),
    ];
    for (text, want) in cases {
        let (code, _, err) = validate(&text);
        assert_eq!(code, 78, "{err}");
        assert!(err.contains(want), "want {want:?} in:\n{err}");
    }
}

#[test]
fn version_flag() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("logferry "));
}

#[test]
fn exit_on_eof_output_matches_input_exactly() {
    let env = Env::new();
    let log = env.logs().join("app.log");
    let input = concat!(
        "{\"ts\":\"2026-11-25T10:00:00.123Z\",\"level\":\"info\",\"msg\":\"hello\",\"n\":1.5,\"nested\":{\"a\":[1,2]}}\n",
        "{\"@timestamp\":\"2026-01-01T00:00:00.000Z\",\"msg\":\"keeps its own\"}\n",
        "not json at all\n",
        "{\"ts\":1795600800,\"msg\":\"epoch seconds\"}\n",
    );
    std::fs::write(&log, input).unwrap();
    let cfg = env.config("*.log", "time_key = \"ts\"", "");
    run_to_eof(&cfg, &[]);
    let objects = logferry::sinks::file::list_objects(&env.path("out"));
    let text: String = objects.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    // JSON records keep their exact bytes, with @timestamp spliced in front.
    for want in [
        "{\"@timestamp\":\"2026-11-25T10:00:00.123Z\",\"ts\":\"2026-11-25T10:00:00.123Z\",\"level\":\"info\",\"msg\":\"hello\",\"n\":1.5,\"nested\":{\"a\":[1,2]}}",
        "{\"@timestamp\":\"2026-01-01T00:00:00.000Z\",\"msg\":\"keeps its own\"}",
        "{\"@timestamp\":\"2026-11-25T10:00:00.000Z\",\"ts\":1795600800,\"msg\":\"epoch seconds\"}",
    ] {
        assert!(lines.contains(&want), "missing {want}\n{text}");
    }
    let plain: serde_json::Value =
        serde_json::from_str(lines.iter().find(|l| l.contains("not json")).unwrap()).unwrap();
    assert_eq!(plain["log"], "not json at all");
    assert!(plain["@timestamp"].as_str().unwrap().ends_with('Z'));
    // Objects are time-sliced by event time.
    assert!(
        objects.iter().any(|p| p.starts_with(env.path("out/2026/11/25"))),
        "{objects:?}"
    );
    assert!(
        objects.iter().any(|p| p.starts_with(env.path("out/2026/01/01"))),
        "{objects:?}"
    );
}

#[test]
fn inline_config_from_environment_and_gzip_output() {
    let env = Env::new();
    append_ids(&env.logs().join("a.log"), 0..1000);
    let text = format!(
        r#"
[global]
data_dir = "{}"
[sources.app]
type = "file"
include = ["{}/*.log"]
[sinks.out]
type = "file"
inputs = ["app"]
path = "{}"
compression = "${{COMPRESSION:-gzip}}"
"#,
        env.path("data").display(),
        env.logs().display(),
        env.path("out").display()
    );
    let out = Command::new(BIN)
        .args(["run", "--exit-on-eof"])
        .env("LOGFERRY_CONFIG", &text)
        .env("COMPRESSION", "zstd")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let objects = logferry::sinks::file::list_objects(&env.path("out"));
    assert!(
        objects.iter().all(|p| p.to_string_lossy().ends_with(".ndjson.zst")),
        "{objects:?}"
    );
    assert_eq!(id_counts(&env.records()).len(), 1000);
    // A second run reads nothing new: checkpoints were saved.
    let out = Command::new(BIN)
        .args(["run", "--exit-on-eof"])
        .env("LOGFERRY_CONFIG", &text)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(env.records().len(), 1000);
}

#[test]
fn stdout_sink_writes_ndjson() {
    let env = Env::new();
    append_ids(&env.logs().join("a.log"), 0..10);
    let text = format!(
        "[global]\ndata_dir = \"{}\"\n[sources.app]\ntype = \"file\"\ninclude = [\"{}/*.log\"]\n[sinks.out]\ntype = \"stdout\"\ninputs = [\"app\"]\n",
        env.path("data").display(),
        env.logs().display()
    );
    let p = env.write_config(&text);
    let out = run_to_eof(&p, &[]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    assert_eq!(lines[3]["id"], 3);
}

#[test]
fn the_shipped_example_runs() {
    // The README's first set-up command, on the embedded default config.
    let env = Env::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let out = Command::new(BIN)
        .args(["run", "--exit-on-eof"])
        .current_dir(&root)
        .env_remove("LOGFERRY_CONFIG")
        .env("LOGFERRY_DATA_DIR", env.path("data"))
        .env("LOGFERRY_OUT_DIR", env.path("out"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let records = env.records();
    assert_eq!(records.len(), 51);
    assert!(records.iter().all(|r| r["environment"] == "local"));
    let objects = logferry::sinks::file::list_objects(&env.path("out"));
    assert!(objects.iter().all(|p| p.to_string_lossy().ends_with(".ndjson.gz")));
    // JSON lines go to their event-time slice; the one plain line to its read time.
    let slice = env.path("out/logs/local/2026/11/25/10/00");
    assert_eq!(
        objects.iter().filter(|p| p.starts_with(&slice)).count(),
        1,
        "{objects:?}"
    );
    assert_eq!(read_records(&slice).len(), 50);
}

#[test]
fn objects_roll_at_max_object_size_and_never_collide() {
    let env = Env::new();
    append_ids(&env.logs().join("a.log"), 0..2000);
    let cfg = env.config("*.log", "", "max_object_size = \"16KiB\"");
    run_to_eof(&cfg, &[]);
    let objects = logferry::sinks::file::list_objects(&env.path("out"));
    // ~190 KB of records in 16 KiB objects.
    assert!(objects.len() >= 10, "{} objects", objects.len());
    for p in &objects {
        let len = std::fs::metadata(p).unwrap().len();
        // An object closes on the record that reaches the limit.
        assert!(len < 16 * 1024 + 200, "{} is {len} bytes", p.display());
    }
    assert_eq!(id_counts(&env.records()).len(), 2000);
    // A second run over new data adds objects; none is overwritten.
    append_ids(&env.logs().join("a.log"), 2000..2100);
    run_to_eof(&cfg, &[]);
    let after = logferry::sinks::file::list_objects(&env.path("out"));
    assert!(objects.iter().all(|p| after.contains(p)));
    assert_eq!(id_counts(&env.records()).len(), 2100);
    assert_eq!(env.records().len(), 2100);
}

#[test]
fn healthcheck_passes_against_a_running_router_and_fails_on_a_closed_port() {
    let env = Env::new();
    let port = free_port();
    let cfg = env.config("*.log", "", &format!("\n[api]\naddress = \"127.0.0.1:{port}\"\n"));
    let router = spawn(&cfg, &[]);
    wait_for("the api", std::time::Duration::from_secs(60), || {
        http_get(port, "/healthz").is_some()
    });
    let url = format!("http://127.0.0.1:{port}/healthz");
    let healthcheck = |url: &str| Command::new(BIN).args(["healthcheck", "--url", url]).output().unwrap();

    let out = healthcheck(&url);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty() && out.stdout.is_empty());
    // Not 2xx: unhealthy, and the line says why.
    let out = healthcheck(&format!("http://127.0.0.1:{port}/no-such-path"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("HTTP status 404"), "{err}");

    router.signal(libc::SIGTERM);
    let (status, _) = router.wait(std::time::Duration::from_secs(60));
    assert!(status.success());
    // Nothing listens any more: exit 1 with exactly one line naming the URL.
    let out = healthcheck(&url);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("logferry healthcheck: unhealthy: GET ") && err.contains(&url),
        "{err}"
    );
}
