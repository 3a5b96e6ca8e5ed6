//! Stopping through the real binary: the drain after SIGTERM and the
//! `[lifecycle.exit_when]` conditions. Every test counts record ids at the
//! destination.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

const LONG: Duration = Duration::from_secs(90);

fn lifecycle(quiet: &str, timeout: &str, extra: &str) -> String {
    format!(
        "\n[lifecycle]\ndrain_quiet = \"{quiet}\"\ndrain_timeout = \"{timeout}\"\ncheck_interval = \"100ms\"\n{extra}\n"
    )
}

#[test]
fn sigterm_while_the_app_writes_its_last_lines_delivers_them_all() {
    let env = Env::new();
    let log = env.logs().join("app.log");
    append_ids(&log, 0..500);
    let cfg = env.config("*.log", "", &lifecycle("1s", "10s", ""));
    let child = spawn(&cfg, &[]);
    wait_for("first records", LONG, || !env.records().is_empty());
    child.signal(libc::SIGTERM);
    let signalled = Instant::now();
    // The app's last 1,000 lines arrive after the signal, in bursts, and
    // the very last one has no newline yet.
    for chunk in 0..10 {
        append_ids(&log, 500 + chunk * 100..500 + (chunk + 1) * 100);
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    write!(f, "{{\"id\":1500}}").unwrap();
    drop(f);
    let (status, err) = child.wait(LONG);
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}\n{err}");
    // drain_timeout plus the sinks' settle time, with room for a slow machine.
    assert!(took < Duration::from_secs(30), "exit {took:?} after SIGTERM\n{err}");
    assert_each_once(&env.records(), 1501);
}

#[test]
fn drain_ends_at_its_timeout_when_the_app_never_goes_quiet_and_loses_nothing() {
    let env = Env::new();
    let log = env.logs().join("app.log");
    append_ids(&log, 0..1);
    let next = Arc::new(AtomicU64::new(1));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (log, next, done) = (log.clone(), next.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let from = next.load(Ordering::SeqCst);
                append_ids(&log, from..from + 50);
                next.store(from + 50, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let cfg = env.config("*.log", "", &lifecycle("1s", "3s", ""));
    let child = spawn(&cfg, &[]);
    wait_for("first records", LONG, || !env.records().is_empty());
    child.signal(libc::SIGTERM);
    let (status, err) = child.wait(LONG);
    assert!(status.success(), "{status:?}\n{err}");
    assert!(
        next.load(Ordering::SeqCst) > 0 && !done.load(Ordering::SeqCst),
        "the app was still writing when the router left"
    );
    done.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let total = next.load(Ordering::SeqCst);
    // What the drain did not deliver is behind the checkpoint: the next run
    // reads it, and nothing is delivered twice.
    run_to_eof(&cfg, &[]);
    assert_each_once(&env.records(), total);
}

#[test]
fn a_marker_file_drains_and_exits_zero() {
    let env = Env::new();
    let log = env.logs().join("app.log");
    append_ids(&log, 0..1000);
    let marker = env.path("app.done");
    let extra = format!("[lifecycle.exit_when]\nfile_exists = \"{}\"\n", marker.display());
    let cfg = env.config("*.log", "", &lifecycle("500ms", "10s", &extra));
    let child = spawn(&cfg, &[]);
    wait_for("first records", LONG, || !env.records().is_empty());
    append_ids(&log, 1000..2000);
    std::fs::write(&marker, b"").unwrap();
    let (status, err) = child.wait(LONG);
    assert!(status.success(), "{status:?}\n{err}");
    assert!(err.contains("marker file exists"), "{err}");
    assert_each_once(&env.records(), 2000);
}

#[test]
fn the_app_process_going_away_drains_and_exits_zero() {
    let env = Env::new();
    let log = env.logs().join("app.log");
    append_ids(&log, 0..1000);
    // The "application": a process with a name of its own, found in /proc.
    let app_bin = env.path("logferry-test-app");
    std::fs::copy("/bin/sleep", &app_bin).unwrap();
    let mut app = std::process::Command::new(&app_bin).arg("60").spawn().unwrap();
    let extra = "[lifecycle.exit_when]\nprocess_gone = \"logferry-test-app\"\n";
    let cfg = env.config("*.log", "", &lifecycle("500ms", "10s", extra));
    let child = spawn(&cfg, &[]);
    wait_for("first records", LONG, || !env.records().is_empty());
    wait_for("the router to see the app", LONG, || {
        child.stderr().contains("watching the application's process")
    });
    append_ids(&log, 1000..2000);
    app.kill().unwrap();
    app.wait().unwrap();
    let (status, err) = child.wait(LONG);
    assert!(status.success(), "{status:?}\n{err}");
    assert!(err.contains("process is gone"), "{err}");
    assert_each_once(&env.records(), 2000);
}

#[test]
fn validate_shows_the_lifecycle_and_rejects_a_bad_one() {
    let env = Env::new();
    let extra = "[lifecycle.exit_when]\necs_container_stopped = \"app\"\n";
    let cfg = env.config("*.log", "", &lifecycle("2s", "25s", extra));
    let (code, stdout, stderr) = validate_config(&cfg);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("lifecycle: drain_quiet 2s, drain_timeout 25s, exit when ECS container \"app\" STOPPED"),
        "{stdout}"
    );
    let cfg = env.config("*.log", "", &lifecycle("30s", "25s", ""));
    let (code, _, stderr) = validate_config(&cfg);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("`lifecycle.drain_quiet`: must be shorter than drain_timeout"),
        "{stderr}"
    );
}

#[test]
fn a_second_signal_stops_at_once_and_keeps_the_checkpoint_behind_undelivered_data() {
    let env = Env::new();
    let log = env.logs().join("app.log");
    append_ids(&log, 0..1000);
    // An S3 endpoint that refuses connections: the sink retries forever.
    let port = free_port();
    let cfg = env.write_config(&format!(
        r#"
[global]
data_dir = "{data}"

[lifecycle]
drain_quiet = "500ms"
drain_timeout = "60s"

[sources.app]
type = "file"
include = ["{logs}/*.log"]

[sinks.s3]
type = "s3"
inputs = ["app"]
bucket = "logferry-test"
region = "us-east-1"
endpoint_url = "http://127.0.0.1:{port}"
force_path_style = true
flush_interval = "200ms"
"#,
        data = env.path("data").display(),
        logs = env.logs().display(),
    ));
    let child = spawn(
        &cfg,
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    wait_for("the sink to fail", LONG, || child.stderr().contains("retrying"));
    child.signal(libc::SIGTERM);
    wait_for("the drain", LONG, || child.stderr().contains("stop requested"));
    std::thread::sleep(Duration::from_secs(1));
    child.signal(libc::SIGINT);
    let signalled = Instant::now();
    let (status, err) = child.wait(LONG);
    assert!(status.success(), "{status:?}\n{err}");
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "a second signal must not wait for the 60 s drain\n{err}"
    );
    let saved = std::fs::read_to_string(env.path("data/checkpoints/app.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&saved).unwrap();
    assert_eq!(doc["files"][0]["offset"], 0, "nothing was delivered: {saved}");
}

#[test]
fn a_second_router_on_the_same_data_dir_is_refused_until_the_first_is_gone() {
    let env = Env::new();
    append_ids(&env.logs().join("app.log"), 0..100);
    let cfg = env.config("*.log", "", "");
    let first = spawn(&cfg, &[]);
    wait_for("first records", LONG, || env.records().len() == 100);
    let second = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("is in use by another logferry process (pid {})", first.pid())),
        "{err}"
    );
    // kill -9 leaves no stale lock: the kernel drops it with the process.
    first.signal(libc::SIGKILL);
    let _ = first.wait(LONG);
    append_ids(&env.logs().join("app.log"), 100..200);
    run_to_eof(&cfg, &[]);
    // At least once: the kill may come before the checkpoint of the first 100.
    let counts = id_counts(&env.records());
    assert!((0..200).all(|i| counts.contains_key(&i)), "records lost: {counts:?}");
}
