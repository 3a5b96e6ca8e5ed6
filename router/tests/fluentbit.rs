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
lifecycle: drain_quiet 2s, drain_timeout 25s
source input1_forward (forward: unix /var/run/fluent.sock (mode 0666), no handshake, max_frame_size 16.0 MiB, max_record_size 1.0 MiB, max_connections 256)
source input2_forward (forward: tcp 127.0.0.1:24224, no handshake, max_frame_size 16.0 MiB, max_record_size 1.0 MiB, max_connections 256)
transform filter1_record_modifier (enrich: ecs Disabled, ec2 Disabled, kubernetes Disabled, 3 static field(s)) <- input1_forward, input2_forward
transform output2_cloudwatch_logs_match (filter: keep records matching all of 1 condition(s)) <- filter1_record_modifier
sink output2_cloudwatch_logs (cloudwatch_logs: group /ecs/web, stream app-{tag}, create_missing true) <- output2_cloudwatch_logs_match
fluent-bit: FB/cloudwatch.conf:11: [INPUT] tcp tagged firelens-healthcheck (the FireLens health check) dropped: use `logferry healthcheck` with [api]
fluent-bit: FB/cloudwatch.conf:24: [OUTPUT] null for firelens-healthcheck dropped with its input
config OK
";
    assert_eq!(out, expected);
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
        "sink output2_firehose (firehose: demo-stream, max_record_size 1000.0 KiB, flush_interval 1s) <- output2_firehose_match\n",
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
        "sink output3_s3 (s3: s3://acme-api-logs/firelens/{tag}/%Y/%m/%d/%H/*.ndjson.gz, max_object_size 47.7 MiB, flush_interval 5m) <- output3_s3_match\n",
        "fluent-bit: FB/extra.conf:26: `Retry_Limit` of [OUTPUT] stdout accepted, no effect in Logferry\n",
        "fluent-bit: FB/s3.conf:36: s3_key_format: the object name `%M-$UUID.gz` is Logferry's own",
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
        "logferry: invalid configuration:\n  FB/conf.d/lua.conf:1:1: filter plugin `lua` is not supported by --fluent-bit-config (supported: record_modifier, grep, multiline (Mode partial_message))\n"
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
