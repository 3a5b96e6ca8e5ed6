//! multiline and redact through the real binary: file source -> multiline ->
//! redact -> file sink.

mod common;

use std::time::Duration;

use common::*;

const JAVA: &str = include_str!("fixtures/multiline/java.log");

fn config(env: &Env, flush_timeout: &str, redact: &str, api_port: u16) -> std::path::PathBuf {
    env.write_config(&format!(
        r#"
[global]
data_dir = "{data}"

[api]
address = "127.0.0.1:{api_port}"

[sources.app]
type = "file"
include = ["{logs}/*.log"]
parser = "none"
glob_interval = "100ms"

[transforms.join]
type = "multiline"
inputs = ["app"]
preset = "java"
flush_timeout = "{flush_timeout}"

[transforms.scrub]
type = "redact"
inputs = ["join"]
{redact}

[sinks.out]
type = "file"
inputs = ["scrub"]
path = "{out}"
key_prefix = "x/"
compression = "none"
flush_interval = "100ms"
"#,
        data = env.path("data").display(),
        logs = env.logs().display(),
        out = env.path("out").display(),
    ))
}

fn logs_out(env: &Env) -> Vec<String> {
    env.records()
        .iter()
        .map(|r| {
            let keys: Vec<&String> = r.as_object().unwrap().keys().collect();
            assert_eq!(keys, ["@timestamp", "log"], "{r}");
            r["log"].as_str().unwrap().to_string()
        })
        .collect()
}

fn checkpoint(env: &Env) -> Option<u64> {
    let text = std::fs::read_to_string(env.path("data/checkpoints/app.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["files"][0]["offset"].as_u64()
}

fn java_lines(from: usize, to: usize) -> String {
    JAVA.lines()
        .skip(from - 1)
        .take(to + 1 - from)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn joined_and_redacted_records_and_the_checkpoint_waits_for_the_last_group() {
    let env = Env::new();
    let port = free_port();
    let cfg = config(&env, "1h", "", port);
    let file = env.logs().join("app.log");
    // Part 1 ends inside a stack trace (lines 13-15 of the fixture).
    let part1: String = JAVA.lines().take(15).map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, &part1).unwrap();
    let router = spawn(&cfg, &[]);
    wait_for("the groups part 1 completes", Duration::from_secs(60), || {
        env.records().len() >= 3
    });
    // Part 2 closes that trace and opens one more, held for `flush_timeout`.
    let part2 = format!(
        "{}\n2024-05-02 10:15:06.000 ERROR [main] c.a.Job - failed for 192.168.7.1\njava.lang.RuntimeException: key AKIAIOSFODNN7EXAMPLE rejected\n\tat c.a.Job.run(Job.java:9)\n",
        java_lines(16, 16)
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap()
        .write_all(part2.as_bytes())
        .unwrap();
    let size = (part1.len() + part2.len()) as u64;
    wait_for("part 2's completed records", Duration::from_secs(60), || {
        env.records().len() >= 5
    });
    // Every record before the open group is durable; the batch holding the
    // open group's lines is not, so the checkpoint stops where part 2 began.
    wait_for("the checkpoint of part 1", Duration::from_secs(60), || {
        checkpoint(&env) == Some(part1.len() as u64)
    });
    assert_eq!(logs_out(&env).len(), 5);
    assert_eq!(
        checkpoint(&env),
        Some(part1.len() as u64),
        "the held group keeps the checkpoint back"
    );
    let metrics = http_get(port, "/metrics").map(|(_, b)| b).unwrap_or_default();
    assert_eq!(
        metric(
            &metrics,
            "logferry_redactions_total",
            &["component=\"scrub\"", "detector=\"email\""]
        ),
        Some(1.0),
        "{metrics}"
    );
    // A stop drains: the held group is emitted, delivered, then checkpointed.
    router.signal(libc::SIGTERM);
    let (status, stderr) = router.wait(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("jane@example.com"), "no record contents in logs");
    assert_eq!(
        logs_out(&env),
        [
            java_lines(1, 1),
            java_lines(2, 11)
                .replace("jane@example.com", "[REDACTED:email]")
                .replace("10.0.3.7", "[REDACTED:ipv4]"),
            java_lines(12, 12),
            java_lines(13, 15),
            java_lines(16, 16),
            "2024-05-02 10:15:06.000 ERROR [main] c.a.Job - failed for [REDACTED:ipv4]\njava.lang.RuntimeException: key [REDACTED:aws_access_key_id] rejected\n\tat c.a.Job.run(Job.java:9)".to_string(),
        ]
    );
    assert_eq!(checkpoint(&env), Some(size));
}

use std::io::Write;

#[test]
fn hashes_are_the_same_across_runs_with_the_same_salt() {
    let run = |salt: &str| {
        let env = Env::new();
        let cfg = config(&env, "1s", "mode = \"hash\"\nsalt = \"${REDACT_SALT}\"", free_port());
        std::fs::write(
            env.logs().join("app.log"),
            "INFO login jane@example.com from 10.1.2.3\nINFO card 4111 1111 1111 1111\nINFO nothing here\n",
        )
        .unwrap();
        run_to_eof(&cfg, &[("REDACT_SALT", salt)]);
        logs_out(&env)
    };
    let a = run("pepper");
    let b = run("pepper");
    assert_eq!(a, b);
    assert_eq!(a.len(), 3);
    assert!(
        !a.iter()
            .any(|l| l.contains("jane@") || l.contains("10.1.2.3") || l.contains("4111")),
        "{a:?}"
    );
    assert_eq!(a[2], "INFO nothing here");
    let hashed: Vec<&str> = a[0].split(' ').filter(|w| w.starts_with("sha256:")).collect();
    assert_eq!(hashed.len(), 2, "{a:?}");
    assert!(hashed.iter().all(|h| h.len() == 7 + 16), "{hashed:?}");
    assert_ne!(run("salt2")[0], a[0], "another salt, other hashes");
}

#[test]
fn validate_describes_both_and_names_bad_keys() {
    let env = Env::new();
    let cfg = config(&env, "1s", "", free_port());
    let (code, stdout, stderr) = validate_config(&cfg);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("transform join (multiline: join `log` by preset java"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "transform scrub (redact: email, credit_card, aws_access_key_id, ipv4 (mask) in every string field) <- join"
        ),
        "{stdout}"
    );
    let cfg = config(&env, "1s", "mode = \"hash\"\nlines = 3", free_port());
    let (code, _, stderr) = validate_config(&cfg);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("lines"), "{stderr}");
}
