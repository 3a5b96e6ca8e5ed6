//! Faults on the file source's path, through the real binary: a `data_dir`
//! that fills up or turns read-only while running, a checkpoint file damaged
//! or cut short between runs, and a disk buffer whose disk fills up. The
//! disks are real (a small tmpfs in a private mount namespace, see
//! `common/tmpfs.rs`); the tests that need one skip, saying why, where this
//! process may not mount.
//!
//! Every test counts records by id at the destination: nothing may be lost,
//! and where a fault costs duplicates the test pins how many.

mod common;
#[path = "common/tmpfs.rs"]
mod tmpfs;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use tmpfs::Tmpfs;

const LONG: Duration = Duration::from_secs(90);

/// `env.config` over `logs/app.log` with `[api]` on `port` and `data_dir`
/// moved to `data_dir`.
fn config(env: &Env, data_dir: &Path, port: u16, source_extra: &str, sink_extra: &str) -> PathBuf {
    let cfg = env.config(
        "app.log",
        source_extra,
        &format!("{sink_extra}\n[api]\naddress = \"127.0.0.1:{port}\"\n"),
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&env.path("data").display().to_string(), &data_dir.display().to_string());
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// The offset saved for `app.log` in a checkpoint file, if it parses.
fn saved_offset(checkpoints: &Path) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(checkpoints).ok()?).ok()?;
    v["files"]
        .as_array()?
        .iter()
        .find(|f| f["path"].as_str().is_some_and(|p| p.ends_with("app.log")))?["offset"]
        .as_u64()
}

fn len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

fn metrics(port: u16) -> String {
    http_get(port, "/metrics").map(|(_, b)| b).unwrap_or_default()
}

fn readyz(port: u16) -> (u16, String) {
    http_get(port, "/readyz").unwrap_or_default()
}

/// How many ids of `0..n` are missing, and how many deliveries repeat one.
fn missing_and_repeats(env: &Env, n: u64) -> (usize, usize) {
    let counts = id_counts(&env.records());
    let missing = (0..n).filter(|i| !counts.contains_key(i)).count();
    (missing, counts.values().map(|c| c - 1).sum())
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Delivers ids `0..1000` with the router running and waits until their
/// checkpoint is saved; returns the saved file's bytes.
fn deliver_first_thousand(env: &Env, checkpoints: &Path) -> Vec<u8> {
    let log = env.logs().join("app.log");
    wait_for("ids 0..1000 delivered and checkpointed", LONG, || {
        env.records().len() == 1000 && saved_offset(checkpoints) == Some(len(&log))
    });
    std::fs::read(checkpoints).unwrap()
}

#[test]
fn a_full_data_dir_keeps_delivering_keeps_the_last_good_checkpoint_and_recovers() {
    let Some(fs) = Tmpfs::mount("1m") else { return };
    let env = Env::new();
    let port = free_port();
    let cfg = config(&env, fs.path(), port, "", "");
    let log = env.logs().join("app.log");
    let checkpoints = fs.path().join("checkpoints").join("app.json");
    append_ids(&log, 0..1000);
    let router = spawn(&cfg, &[]);
    let good = deliver_first_thousand(&env, &checkpoints);
    assert_eq!(readyz(port).0, 200);

    let filler = fs.fill();
    append_ids(&log, 1000..3000);
    // Delivery goes on...
    wait_for("ids 1000..3000 delivered", LONG, || {
        id_counts(&env.records()).len() == 3000
    });
    // ... the outage is reported ...
    wait_for("/readyz failing with the reason", LONG, || {
        let (status, body) = readyz(port);
        status == 503 && body.contains("checkpoints of source app not saved") && body.contains("no_space")
    });
    wait_for("several failed saves", LONG, || {
        metric(
            &metrics(port),
            "logferry_checkpoint_write_errors_total",
            &["component=\"app\"", "reason=\"no_space\""],
        )
        .is_some_and(|n| n >= 5.0)
    });
    let m = metrics(port);
    assert!(
        metric(&m, "logferry_checkpoint_save_failing_seconds", &["component=\"app\""]).is_some(),
        "{m}"
    );
    // ... once in the log, not once per attempt ...
    assert_eq!(
        router.stderr().matches("cannot save checkpoints").count(),
        1,
        "{}",
        router.stderr()
    );
    // ... and the last good checkpoint is there, whole.
    assert_eq!(std::fs::read(&checkpoints).unwrap(), good);

    std::fs::remove_file(filler).unwrap();
    let end = len(&log);
    wait_for("saves resumed and /readyz back", LONG, || {
        saved_offset(&checkpoints) == Some(end) && readyz(port).0 == 200
    });
    let m = metrics(port);
    assert_eq!(
        metric(&m, "logferry_checkpoint_save_failing_seconds", &["component=\"app\""]),
        Some(0.0),
        "{m}"
    );
    assert_eq!(router.stderr().matches("checkpoints are saved again").count(), 1);
    router.signal(libc::SIGTERM);
    let (status, err) = router.wait(LONG);
    assert!(status.success(), "{err}");
    // No failed save left a temp file behind.
    assert_eq!(names_in(&fs.path().join("checkpoints")), vec!["app.json".to_string()]);
    assert_each_once(&env.records(), 3000);
}

#[test]
fn a_read_only_data_dir_then_kill_9_repeats_only_what_came_after_the_last_good_checkpoint() {
    let Some(mut fs) = Tmpfs::mount("4m") else { return };
    let env = Env::new();
    let port = free_port();
    let cfg = config(&env, fs.path(), port, "", "");
    let log = env.logs().join("app.log");
    let checkpoints = fs.path().join("checkpoints").join("app.json");
    append_ids(&log, 0..1000);
    let router = spawn(&cfg, &[]);
    let good = deliver_first_thousand(&env, &checkpoints);

    fs.read_only();
    append_ids(&log, 1000..3000);
    wait_for("ids 1000..3000 delivered", LONG, || {
        id_counts(&env.records()).len() == 3000
    });
    wait_for("/readyz failing with the reason", LONG, || {
        let (status, body) = readyz(port);
        status == 503 && body.contains("checkpoints of source app not saved") && body.contains("read_only")
    });
    assert!(
        metric(
            &metrics(port),
            "logferry_checkpoint_write_errors_total",
            &["component=\"app\"", "reason=\"read_only\""]
        )
        .is_some_and(|n| n >= 1.0)
    );
    assert_eq!(std::fs::read(&checkpoints).unwrap(), good);

    // A crash while it lasts; then the disk is fixed and the router restarts.
    router.signal(libc::SIGKILL);
    let _ = router.wait(LONG);
    fs.writable();
    let out = run_to_eof(&cfg, &[]);
    let (missing, repeats) = missing_and_repeats(&env, 3000);
    assert_eq!(missing, 0, "{}", String::from_utf8_lossy(&out.stderr));
    // Exactly what was delivered after the last good save comes again.
    assert_eq!(repeats, 2000);
    assert_eq!(saved_offset(&checkpoints), Some(len(&log)));
}

/// Run 1 (running, `read_from`): ids 100..1100 appended after start-up to a
/// file already holding 0..100 (history). Then the checkpoint file is cut
/// in half, ids 1100..2100 are appended, and run 2 reads to the end.
fn corrupt_checkpoint_between_runs(read_from: &str) -> (Env, Vec<u8>, String) {
    let env = Env::new();
    let port = free_port();
    let data = env.path("data");
    let cfg = config(&env, &data, port, &format!("read_from = \"{read_from}\""), "");
    let log = env.logs().join("app.log");
    let checkpoints = data.join("checkpoints").join("app.json");
    append_ids(&log, 0..100);
    let router = spawn(&cfg, &[]);
    wait_for("the file opened", LONG, || {
        metric(&metrics(port), "logferry_files_open", &["component=\"app\""]) == Some(1.0)
    });
    append_ids(&log, 100..1100);
    let want = if read_from == "end" { 1000 } else { 1100 };
    wait_for("run 1 delivered and checkpointed", LONG, || {
        env.records().len() == want && saved_offset(&checkpoints) == Some(len(&log))
    });
    router.signal(libc::SIGTERM);
    let (status, err) = router.wait(LONG);
    assert!(status.success(), "{err}");

    let whole = std::fs::read(&checkpoints).unwrap();
    std::fs::write(&checkpoints, &whole[..whole.len() / 2]).unwrap();
    append_ids(&log, 1100..2100);
    let out = run_to_eof(&cfg, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        saved_offset(&checkpoints),
        Some(len(&log)),
        "a good checkpoint replaced it"
    );
    let copy = std::fs::read(data.join("checkpoints").join("app.json.corrupt")).unwrap();
    assert_eq!(copy, &whole[..whole.len() / 2], "the damaged file is kept for a look");
    (env, whole, stderr)
}

#[test]
fn a_corrupt_checkpoint_with_read_from_end_reads_every_file_from_its_start() {
    let (env, _, stderr) = corrupt_checkpoint_between_runs("end");
    let counts = id_counts(&env.records());
    // Nothing appended since the last save is skipped...
    let missing: Vec<u64> = (0..2100).filter(|i| !counts.contains_key(i)).take(10).collect();
    assert!(missing.is_empty(), "missing (first 10): {missing:?}\n{stderr}");
    // ... at the price of reading the file again from its start: the
    // history (0..100, never sent in run 1) once, run 1's ids twice.
    assert!((0..100).all(|i| counts[&i] == 1));
    assert!((100..1100).all(|i| counts[&i] == 2));
    assert!((1100..2100).all(|i| counts[&i] == 1));
    assert_eq!(stderr.matches("checkpoint positions lost").count(), 1, "{stderr}");
    assert!(stderr.contains("app.json is corrupt"), "the file is named: {stderr}");
}

#[test]
fn a_corrupt_checkpoint_with_read_from_beginning_reads_every_file_from_its_start() {
    let (env, _, stderr) = corrupt_checkpoint_between_runs("beginning");
    let counts = id_counts(&env.records());
    let missing: Vec<u64> = (0..2100).filter(|i| !counts.contains_key(i)).take(10).collect();
    assert!(missing.is_empty(), "missing (first 10): {missing:?}\n{stderr}");
    assert!((0..1100).all(|i| counts[&i] == 2));
    assert!((1100..2100).all(|i| counts[&i] == 1));
    assert_eq!(stderr.matches("checkpoint positions lost").count(), 1, "{stderr}");
}

#[test]
fn a_checkpoint_temp_file_left_by_a_crash_is_ignored_beside_the_checkpoint_and_used_alone() {
    let env = Env::new();
    let cfg = env.config("app.log", "", "");
    let log = env.logs().join("app.log");
    let dir = env.path("data").join("checkpoints");
    append_ids(&log, 0..1000);
    run_to_eof(&cfg, &[]);
    // A whole save that would send everything again: offset 0 (which holds
    // in any file: no tail to check).
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("app.json")).unwrap()).unwrap();
    v["files"][0]["offset"] = 0.into();
    v["files"][0]["tail"] = serde_json::json!({"crc": 0, "len": 0});
    let rewind = serde_json::to_vec(&v).unwrap();

    // Beside the checkpoint file: a save cut short, not a checkpoint.
    std::fs::write(dir.join("app.json.tmp"), &rewind).unwrap();
    append_ids(&log, 1000..2000);
    let out = run_to_eof(&cfg, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_each_once(&env.records(), 2000);
    assert_eq!(names_in(&dir), vec!["app.json".to_string()], "{stderr}");
    assert!(!stderr.contains("positions lost"), "{stderr}");

    // Alone and whole (a run's first save, cut short between write and
    // rename): it is the checkpoint, put in place. Ignoring it would read
    // the file from its start again (or, with read_from = "end", skip).
    let good = std::fs::read(dir.join("app.json")).unwrap();
    std::fs::remove_file(dir.join("app.json")).unwrap();
    std::fs::write(dir.join("app.json.tmp"), &good).unwrap();
    append_ids(&log, 2000..3000);
    let out = run_to_eof(&cfg, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("completing a checkpoint save cut short"), "{stderr}");
    assert_each_once(&env.records(), 3000);
    assert_eq!(names_in(&dir), vec!["app.json".to_string()], "{stderr}");
}

#[test]
fn a_full_disk_buffer_holds_the_checkpoint_and_resumes_when_space_returns() {
    let Some(fs) = Tmpfs::mount("2m") else { return };
    let env = Env::new();
    let port = free_port();
    // Only the buffers are on the small disk; segments (8 MiB) are larger
    // than it.
    std::os::unix::fs::symlink(fs.path(), env.path("data").join("buffers")).unwrap();
    let cfg = config(
        &env,
        &env.path("data"),
        port,
        "",
        r#"buffer = { type = "disk", max_size = "64MiB" }"#,
    );
    let log = env.logs().join("app.log");
    append_ids(&log, 0..1000);
    let router = spawn(&cfg, &[]);
    wait_for("ids 0..1000 delivered", LONG, || env.records().len() == 1000);

    let filler = fs.fill();
    append_ids(&log, 1000..21_000);
    wait_for("failed buffer writes", LONG, || {
        metric(
            &metrics(port),
            "logferry_buffer_write_errors_total",
            &["component=\"out\"", "reason=\"no_space\""],
        )
        .is_some_and(|n| n >= 3.0)
    });
    // Nothing acknowledged past what is on disk: the file's checkpoint
    // stays before the batches the buffer could not write.
    let held = metric(&metrics(port), "logferry_file_checkpoint_offset_bytes", &["app.log"]).unwrap_or(0.0);
    assert!(held < len(&log) as f64, "checkpoint at {held} of {}", len(&log));
    assert_eq!(router.stderr().matches("cannot write to the disk buffer").count(), 1);

    std::fs::remove_file(filler).unwrap();
    wait_for("everything delivered and checkpointed", LONG, || {
        id_counts(&env.records()).len() == 21_000
            && metric(&metrics(port), "logferry_file_checkpoint_offset_bytes", &["app.log"]) == Some(len(&log) as f64)
    });
    assert_eq!(router.stderr().matches("disk buffer: writing again").count(), 1);
    router.signal(libc::SIGTERM);
    let (status, err) = router.wait(LONG);
    assert!(status.success(), "{err}");
    // The segments took no damage: a later start finds nothing to skip or
    // cut, and nothing more to send.
    let out = run_to_eof(&cfg, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("damaged data") && !stderr.contains("incomplete frame"),
        "{stderr}"
    );
    assert_each_once(&env.records(), 21_000);
}
