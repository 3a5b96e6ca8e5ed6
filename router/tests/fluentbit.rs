//! `--fluent-bit-config` through the real binary, on files shaped like the
//! ones ECS generates for a FireLens log router.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::BIN;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fluent-bit")
        .join(name)
}

/// (exit code, stdout, stderr) of `logferry validate --fluent-bit-config`,
/// with the fixture directory shown as `FB/`.
fn validate(name: &str) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["validate", "--fluent-bit-config"])
        .arg(fixture(name))
        .env_remove("LOGFERRY_CONFIG")
        .output()
        .expect("run logferry validate");
    let dir = format!("{}/", fixture("").display().to_string().trim_end_matches('/'));
    let clean = |b: &[u8]| String::from_utf8_lossy(b).replace(&dir, "FB/");
    (out.status.code().unwrap_or(-1), clean(&out.stdout), clean(&out.stderr))
}

#[test]
fn cloudwatch_firelens_config_becomes_this_pipeline() {
    let (code, out, err) = validate("cloudwatch.conf");
    assert_eq!(code, 0, "{err}");
    let expected = "\
config: FB/cloudwatch.conf
data_dir: /var/lib/logferry
memory_limit: 64.0 MiB
api: http://127.0.0.1:2020
health_tcp: 127.0.0.1:8877
lifecycle: drain_quiet 2s, drain_timeout 25s
source input1_forward (forward: unix /var/run/fluent.sock (mode 0666), no handshake, max_frame_size 16.0 MiB, max_record_size 1.0 MiB, max_connections 256)
source input2_forward (forward: tcp 127.0.0.1:24224, no handshake, max_frame_size 16.0 MiB, max_record_size 1.0 MiB, max_connections 256)
transform filter1_record_modifier (enrich: ecs Disabled, ec2 Disabled, kubernetes Disabled, 3 static field(s)) <- input1_forward, input2_forward
transform output2_cloudwatch_logs_match (filter: keep records matching all of 1 condition(s)) <- filter1_record_modifier
sink output2_cloudwatch_logs (cloudwatch_logs: group /ecs/web, stream app-{tag}, create_missing true, timestamp_key (none)) <- output2_cloudwatch_logs_match
";
    assert!(out.starts_with(expected), "{out}");
    for line in [
        // The mapping table: each Fluent Bit key and what it became.
        "fluent-bit: FB/cloudwatch.conf:15: Port -> api.health_tcp\n",
        "fluent-bit: FB/cloudwatch.conf:32: log_group_name -> sinks.output2_cloudwatch_logs.log_group\n",
        "fluent-bit: FB/cloudwatch.conf:28: [OUTPUT] cloudwatch_logs -> sinks.output2_cloudwatch_logs\n",
        "fluent-bit: note: HTTP_Server is not On: /healthz, /readyz and /metrics are served on 127.0.0.1:2020 anyway",
        "fluent-bit: note: FB/cloudwatch.conf:24: [OUTPUT] null for firelens-healthcheck: the health check's records are discarded by its listener\n",
        "config OK\n",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
}

#[test]
fn firehose_firelens_config_with_include_and_exclude_patterns() {
    let (code, out, err) = validate("firehose.conf");
    assert_eq!(code, 0, "{err}");
    for line in [
        "source input2_forward (forward: tcp 0.0.0.0:24224,",
        "transform filter1_grep (filter: keep records matching all of 1 condition(s)) <- input1_forward, input2_forward\n",
        "transform filter2_grep_exclude (filter: drop records matching any of 1 condition(s)) <- filter1_grep\n",
        "transform filter3_record_modifier (enrich: ecs Disabled, ec2 Disabled, kubernetes Disabled, 4 static field(s)) <- filter2_grep_exclude\n",
        "transform output2_firehose_match (filter: keep records matching all of 1 condition(s)) <- filter3_record_modifier\n",
        "sink output2_firehose (firehose: demo-stream, max_record_size 1000.0 KiB, flush_interval 1s, timestamp_key (none)) <- output2_firehose_match\n",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
}

#[test]
fn s3_firelens_config_with_the_users_included_file() {
    let (code, out, err) = validate("s3.conf");
    assert_eq!(code, 0, "{err}");
    for line in [
        // [SERVICE] of the included file.
        "data_dir: /var/lib/logferry\n",
        "api: http://127.0.0.1:2020\n",
        "lifecycle: drain_quiet 2s, drain_timeout 30s\n",
        // FireLens metadata, then the user's filters, shared by both outputs.
        "transform filter1_record_modifier (enrich: ecs Disabled, ec2 Disabled, kubernetes Disabled, 3 static field(s)) <- input1_forward, input2_forward\n",
        "transform filter2_grep_exclude (filter: drop records matching any of 1 condition(s)) <- filter1_record_modifier\n",
        "transform filter3_record_modifier (enrich: ecs Disabled, ec2 Disabled, kubernetes Disabled, 1 static field(s)) <- filter2_grep_exclude\n",
        "transform output1_stdout_match (filter: keep records matching all of 1 condition(s)) <- filter3_record_modifier\n",
        "transform output3_s3_match (filter: keep records matching all of 1 condition(s)) <- filter3_record_modifier\n",
        "sink output1_stdout (stdout) <- output1_stdout_match\n",
        "sink output3_s3 (s3: s3://acme-api-logs/firelens/{tag}/%Y/%m/%d/%H/*.ndjson.gz, max_object_size 47.7 MiB, flush_interval 5m, timestamp_key date) <- output3_s3_match\n",
        "fluent-bit: note: FB/extra.conf:26: Retry_Limit of [OUTPUT] stdout: Logferry retries until delivered or dead-lettered, never drops after N retries\n",
        "fluent-bit: note: FB/s3.conf:36: s3_key_format: the object name `%M-$UUID.gz` is Logferry's own",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
}

#[test]
fn unsupported_plugin_in_an_included_file_fails_with_its_file_and_line() {
    let (code, out, err) = validate("unsupported.conf");
    assert_eq!(code, 78, "{out}");
    assert_eq!(
        err,
        "logferry: invalid configuration:
  FB/conf.d/lua.conf:1:1: filter plugin `lua` is not supported by --fluent-bit-config (supported: record_modifier, grep, parser, multiline (Mode partial_message))
"
    );
}

#[test]
fn fluent_bit_config_excludes_other_configs() {
    let out = Command::new(BIN)
        .args(["validate", "--config", "x.toml", "--fluent-bit-config"])
        .arg(fixture("cloudwatch.conf"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
    let out = Command::new(BIN)
        .args(["validate", "--fluent-bit-config"])
        .arg(fixture("cloudwatch.conf"))
        .env("LOGFERRY_CONFIG", "[sources.a]\ntype = \"file\"\n")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--fluent-bit-config cannot be combined with --config or LOGFERRY_CONFIG")
    );
}

/// Encodes a forward message-mode entry `[tag, time, {"log": line}]`.
fn forward_entry(tag: &str, line: &str) -> Vec<u8> {
    let mut out = Vec::new();
    rmp::encode::write_array_len(&mut out, 3).unwrap();
    rmp::encode::write_str(&mut out, tag).unwrap();
    rmp::encode::write_uint(&mut out, 1_700_000_000).unwrap();
    rmp::encode::write_map_len(&mut out, 2).unwrap();
    rmp::encode::write_str(&mut out, "log").unwrap();
    rmp::encode::write_str(&mut out, line).unwrap();
    rmp::encode::write_str(&mut out, "container_name").unwrap();
    rmp::encode::write_str(&mut out, "app").unwrap();
    out
}

/// The config ECS generates (forward on a socket and on TCP, the `tcp`
/// health input, `null` for its tag) with the user's file: a Parsers_File
/// and a `parser` filter. Records come out parsed; the health port answers
/// like Fluent Bit's `in_tcp`; `/healthz` answers without `HTTP_Server On`.
#[test]
fn ecs_generated_config_with_a_parser_filter_runs() {
    use std::io::{Read, Write};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let (fwd, health, api) = (common::free_port(), common::free_port(), common::free_port());
    std::fs::write(
        dir.path().join("parsers.conf"),
        "[PARSER]\n    Name access\n    Format regex\n    Regex ^(?<host>[^ ]+) \\[(?<time>[^\\]]+)\\] (?<method>\\S+) (?<path>\\S+)$\n    Time_Key time\n    Time_Format %d/%b/%Y:%H:%M:%S %z\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("extra.conf"),
        format!(
            "[SERVICE]\n    Parsers_File parsers.conf\n    HTTP_Port {api}\n    storage.path {}\n\n[FILTER]\n    Name parser\n    Match app-firelens*\n    Key_Name log\n    Parser access\n    Reserve_Data On\n\n[OUTPUT]\n    Name stdout\n    Match app-firelens*\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let conf = dir.path().join("fluent-bit.conf");
    std::fs::write(
        &conf,
        format!(
            "[INPUT]\n    Name forward\n    Listen 127.0.0.1\n    Port {fwd}\n\n[INPUT]\n    Name tcp\n    Tag firelens-healthcheck\n    Listen 127.0.0.1\n    Port {health}\n\n[FILTER]\n    Name record_modifier\n    Match *\n    Record ecs_cluster prod\n\n@INCLUDE extra.conf\n\n[OUTPUT]\n    Name null\n    Match firelens-healthcheck\n"
        ),
    )
    .unwrap();
    let stdout = dir.path().join("stdout");
    let stderr = dir.path().join("stderr");
    let child = Command::new(BIN)
        .args(["run", "--fluent-bit-config"])
        .arg(&conf)
        .env_remove("LOGFERRY_CONFIG")
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = Kill(child);
    let why = || std::fs::read_to_string(&stderr).unwrap_or_default();
    common::wait_for("the forward port", Duration::from_secs(60), || {
        std::net::TcpStream::connect(("127.0.0.1", fwd)).is_ok()
    });
    // The documented health check: connect, send the line, get closed.
    let mut nc = std::net::TcpStream::connect(("127.0.0.1", health)).unwrap_or_else(|e| panic!("{e}\n{}", why()));
    nc.write_all(b"{\"health\": \"check\"}\n").unwrap();
    nc.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut rest = Vec::new();
    assert_eq!(nc.read_to_end(&mut rest).unwrap(), 0, "the port closes after the line");
    let (status, body) = common::http_get(api, "/healthz").unwrap_or_else(|| panic!("no /healthz\n{}", why()));
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    let mut s = std::net::TcpStream::connect(("127.0.0.1", fwd)).unwrap();
    s.write_all(&forward_entry(
        "app-firelens-0f9c",
        "10.1.2.3 [25/Nov/2026:21:15:47 +0000] GET /index.html",
    ))
    .unwrap();
    s.write_all(&forward_entry("app-firelens-0f9c", "not an access line"))
        .unwrap();
    s.flush().unwrap();
    let mut records: Vec<serde_json::Value> = Vec::new();
    common::wait_for("two records on stdout", Duration::from_secs(60), || {
        records = std::fs::read_to_string(&stdout)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        records.len() >= 2
    });
    // The line that did not parse is counted, with the filter's id.
    let mut failed = None;
    common::wait_for("the parse_failed count", Duration::from_secs(30), || {
        let text = common::http_get(api, "/metrics").map(|(_, b)| b).unwrap_or_default();
        failed = common::metric(
            &text,
            "logferry_source_line_issues_total",
            &["component=\"filter2_parser\"", "reason=\"parse_failed\""],
        );
        failed.is_some()
    });
    assert_eq!(failed, Some(1.0));
    drop(guard);
    assert_eq!(records.len(), 2, "{records:?}");
    let parsed = &records[0];
    assert_eq!(parsed["host"], "10.1.2.3", "{parsed}");
    assert_eq!(parsed["method"], "GET");
    assert_eq!(parsed["path"], "/index.html");
    assert_eq!(parsed["container_name"], "app");
    assert_eq!(parsed["ecs_cluster"], "prod");
    assert_eq!(parsed["@timestamp"], "2026-11-25T21:15:47.000Z");
    assert!(parsed.get("log").is_none() && parsed.get("time").is_none(), "{parsed}");
    // A line the parser does not read passes unchanged.
    assert_eq!(records[1]["log"], "not an access line", "{}", records[1]);
}
