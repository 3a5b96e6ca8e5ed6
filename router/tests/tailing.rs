//! The file source through the real binary: restarts, crashes, rotation and
//! odd input. Every test counts record ids at the destination.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(90);

#[test]
fn sigterm_mid_file_then_restart_loses_and_repeats_nothing() {
    let env = Env::new();
    let log = env.logs().join("app.log");
    append_ids(&log, 0..200_000);
    let cfg = env.config("*.log", "", "");
    let child = spawn(&cfg, &[]);
    wait_for("some output", LONG, || !env.records().is_empty());
    child.signal(libc::SIGTERM);
    let (status, err) = child.wait(LONG);
    assert!(status.success(), "{status:?}\n{err}");
    let first = env.records().len();
    run_to_eof(&cfg, &[]);
    let records = env.records();
    assert!(first > 0);
    assert_each_once(&records, 200_000);
}

#[test]
fn kill_9_mid_file_then_restart_loses_nothing() {
    let env = Env::new();
    let cfg = env.config("*.log", "", "");
    let repeats = kill_9_then_restart_loses_nothing(&env, &cfg, 300_000);
    eprintln!("kill -9: {repeats} repeated records (allowed: at least once)");
}

/// A writer thread appends ids; `rotate` is called between writes with the
/// writer paused (as logrotate does between two lines).
fn with_writer(env: &Env, total: u64, rotations: u64, rotate: impl Fn(&std::path::Path, u64) + Send + 'static) {
    let log = env.logs().join("app.log");
    append_ids(&log, 0..1);
    let next = Arc::new(AtomicU64::new(1));
    let lock = Arc::new(Mutex::new(()));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (log, next, lock, done) = (log.clone(), next.clone(), lock.clone(), done.clone());
        std::thread::spawn(move || {
            while next.load(Ordering::SeqCst) < total {
                let _g = lock.lock().unwrap();
                let from = next.load(Ordering::SeqCst);
                let to = (from + 500).min(total);
                append_ids(&log, from..to);
                next.store(to, Ordering::SeqCst);
                drop(_g);
                std::thread::sleep(Duration::from_millis(2));
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    for r in 0..rotations {
        let target = total * (r + 1) / (rotations + 1);
        wait_for("writer progress", LONG, || next.load(Ordering::SeqCst) >= target);
        let _g = lock.lock().unwrap();
        rotate(&log, r);
    }
    writer.join().unwrap();
    assert!(done.load(Ordering::SeqCst));
}

#[test]
fn rename_and_create_rotation_while_writing() {
    let env = Env::new();
    let cfg = env.config("*.log", "", "");
    let child = spawn(&cfg, &[]);
    with_writer(&env, 60_000, 4, |log, r| {
        std::fs::rename(log, log.with_extension(format!("log.{r}"))).unwrap();
        std::fs::File::create(log).unwrap();
    });
    wait_for("all records", LONG, || id_counts(&env.records()).len() == 60_000);
    child.signal(libc::SIGTERM);
    let (status, err) = child.wait(LONG);
    assert!(status.success(), "{err}");
    assert_each_once(&env.records(), 60_000);
}

#[test]
fn copytruncate_rotation_while_writing() {
    // The glob also matches the copies: the copy must be recognised by its
    // fingerprint and continue where the original was, not be re-read.
    let env = Env::new();
    let cfg = env.config("app.log*", "", "");
    let child = spawn(&cfg, &[]);
    with_writer(&env, 60_000, 3, |log, r| {
        std::fs::copy(log, log.with_extension(format!("log.{r}"))).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(log)
            .unwrap()
            .set_len(0)
            .unwrap();
    });
    wait_for("all records", LONG, || id_counts(&env.records()).len() == 60_000);
    // Let rescans settle, then stop.
    std::thread::sleep(Duration::from_millis(1500));
    child.signal(libc::SIGTERM);
    let (status, err) = child.wait(LONG);
    assert!(status.success(), "{err}");
    assert_each_once(&env.records(), 60_000);
}

#[test]
fn copytruncate_with_unmatched_copy_restarts_at_zero() {
    let env = Env::new();
    let log = env.logs().join("app.log");
    let cfg = env.config("*.log", "", "");
    append_ids(&log, 0..1000);
    let child = spawn(&cfg, &[]);
    wait_for("first lines", LONG, || id_counts(&env.records()).len() == 1000);
    std::fs::copy(&log, env.logs().join("app.log.1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    append_ids(&log, 1000..1100);
    wait_for("lines after truncation", LONG, || {
        id_counts(&env.records()).len() == 1100
    });
    child.signal(libc::SIGTERM);
    let (status, _) = child.wait(LONG);
    assert!(status.success());
    assert_each_once(&env.records(), 1100);
}

#[test]
fn deleted_while_open_is_read_to_its_end() {
    let env = Env::new();
    let log = env.logs().join("app.log");
    append_ids(&log, 0..300_000);
    let cfg = env.config("*.log", "", "");
    let port = free_port();
    let cfg_text = std::fs::read_to_string(&cfg).unwrap() + &format!("\n[api]\naddress = \"127.0.0.1:{port}\"\n");
    let cfg = env.write_config(&cfg_text);
    let child = spawn(&cfg, &[]);
    wait_for("the file to be open", LONG, || {
        http_get(port, "/metrics")
            .and_then(|(_, b)| metric(&b, "logferry_file_read_offset_bytes", &["app.log"]))
            .is_some_and(|v| v > 0.0)
    });
    std::fs::remove_file(&log).unwrap();
    wait_for("all records", LONG, || id_counts(&env.records()).len() == 300_000);
    child.signal(libc::SIGTERM);
    let (status, _) = child.wait(LONG);
    assert!(status.success());
    assert_each_once(&env.records(), 300_000);
}

#[test]
fn inode_reuse_is_not_mistaken_for_the_old_file() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let log = env.logs().join("app.log");
    append_ids(&log, 0..500);
    let cfg = env.config("*.log", "", "");
    run_to_eof(&cfg, &[]);
    assert_each_once(&env.records(), 500);
    // Replace the file; then make the saved checkpoint claim the new file's
    // inode (what a reused inode looks like) with the old offset.
    std::fs::remove_file(&log).unwrap();
    let mut f = std::fs::File::create(&log).unwrap();
    use std::io::Write;
    for i in 500..800 {
        writeln!(
            f,
            "{{\"id\":{i},\"msg\":\"a different file that happens to get the same inode\"}}"
        )
        .unwrap();
    }
    drop(f);
    let meta = std::fs::metadata(&log).unwrap();
    let cp_path = env.path("data/checkpoints/app.json");
    let mut cp: serde_json::Value = serde_json::from_slice(&std::fs::read(&cp_path).unwrap()).unwrap();
    let files = cp["files"].as_array_mut().unwrap();
    assert_eq!(files.len(), 1, "{cp:?}");
    files[0]["dev"] = meta.dev().into();
    files[0]["ino"] = meta.ino().into();
    assert!(files[0]["offset"].as_u64().unwrap() > 100);
    std::fs::write(&cp_path, serde_json::to_vec(&cp).unwrap()).unwrap();
    run_to_eof(&cfg, &[]);
    let counts = id_counts(&env.records());
    assert!(
        (500..800).all(|i| counts.get(&i) == Some(&1)),
        "new file not read from its start"
    );
    assert!((0..500).all(|i| counts.get(&i) == Some(&1)));
}

#[test]
fn partial_last_line_is_held_until_completed() {
    let env = Env::new();
    let log = env.logs().join("app.log");
    std::fs::write(&log, "{\"id\":0}\n{\"id\":1,\"msg\":\"first half").unwrap();
    let cfg = env.config("*.log", "partial_line_timeout = \"30s\"", "");
    let child = spawn(&cfg, &[]);
    wait_for("first line", LONG, || env.records().len() == 1);
    std::thread::sleep(Duration::from_millis(500));
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    use std::io::Write;
    f.write_all(b" and second half\"}\n").unwrap();
    wait_for("second line", LONG, || env.records().len() == 2);
    child.signal(libc::SIGTERM);
    child.wait(LONG);
    let r = env.records();
    assert_eq!(r[1]["msg"], "first half and second half");
}

#[test]
fn partial_last_line_is_emitted_after_timeout_and_at_eof() {
    let env = Env::new();
    let log = env.logs().join("app.log");
    std::fs::write(&log, "{\"id\":0}\n{\"id\":1}").unwrap();
    let cfg = env.config("*.log", "partial_line_timeout = \"300ms\"", "");
    let child = spawn(&cfg, &[]);
    wait_for("both lines", LONG, || env.records().len() == 2);
    child.signal(libc::SIGTERM);
    child.wait(LONG);

    let env = Env::new();
    std::fs::write(env.logs().join("a.log"), "{\"id\":0}\n{\"id\":1}").unwrap();
    run_to_eof(&env.config("*.log", "", ""), &[]);
    assert_each_once(&env.records(), 2);
}

#[test]
fn odd_bytes_long_lines_and_empty_lines() {
    let env = Env::new();
    let log = env.logs().join("app.log");
    let mut data = Vec::new();
    data.extend_from_slice(b"{\"id\":0}\r\n");
    data.extend_from_slice(b"\n\n   \n");
    data.extend_from_slice(b"bad \xff\xfe utf8 \xc3\x28 here\n");
    data.extend_from_slice(b"nul \x00 byte\n");
    data.extend_from_slice(b"{\"id\":1,\"nul\":\"a\x00b\"}\n");
    let mut long = b"{\"id\":2,\"big\":\"".to_vec();
    long.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
    long.extend_from_slice(b"\"}\n");
    data.extend_from_slice(&long);
    data.extend_from_slice(b"{\"id\":3}\n");
    std::fs::write(&log, &data).unwrap();
    let port = free_port();
    let cfg = env.config("*.log", "", &format!("\n[api]\naddress = \"127.0.0.1:{port}\"\n"));
    let child = spawn(&cfg, &[]);
    wait_for("records", LONG, || env.records().len() == 6);
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    child.signal(libc::SIGTERM);
    child.wait(LONG);
    let r = env.records();
    assert_eq!(r[0]["id"], 0);
    assert_eq!(r[1]["log"], "bad \u{fffd}\u{fffd} utf8 \u{fffd}( here");
    assert_eq!(r[2]["log"], "nul \u{0} byte");
    // A raw NUL is not valid inside a JSON string: kept as text.
    assert_eq!(r[3]["log"], "{\"id\":1,\"nul\":\"a\u{0}b\"}");
    assert_eq!(r[4]["logferry_truncated"], true);
    let cut = r[4]["log"].as_str().unwrap();
    assert!(cut.len() <= 1024 * 1024 && cut.starts_with("{\"id\":2,\"big\":\"xxx"));
    assert_eq!(r[5]["id"], 3);
    assert_eq!(
        metric(
            &metrics,
            "logferry_component_discarded_events_total",
            &["reason=\"empty_line\""]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "logferry_source_line_issues_total",
            &["reason=\"invalid_utf8\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "logferry_source_line_issues_total", &["reason=\"truncated\""]),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "logferry_source_line_issues_total", &["reason=\"not_json\""]),
        Some(4.0)
    );
}

#[test]
fn file_created_after_start_and_200_files() {
    let env = Env::new();
    for f in 0..200u64 {
        append_ids(&env.logs().join(format!("f{f:03}.log")), f * 10..f * 10 + 10);
    }
    let cfg = env.config("*.log", "", "");
    let child = spawn(&cfg, &[]);
    wait_for("200 files", LONG, || id_counts(&env.records()).len() == 2000);
    append_ids(&env.logs().join("late.log"), 2000..2100);
    wait_for("the late file", LONG, || id_counts(&env.records()).len() == 2100);
    child.signal(libc::SIGTERM);
    let (status, _) = child.wait(LONG);
    assert!(status.success());
    assert_each_once(&env.records(), 2100);
}

#[test]
fn metrics_count_every_line_written() {
    let env = Env::new();
    append_ids(&env.logs().join("app.log"), 0..5000);
    append_ids(&env.logs().join("other.log"), 5000..7500);
    let port = free_port();
    let cfg = env.config("*.log", "", &format!("\n[api]\naddress = \"127.0.0.1:{port}\"\n"));
    let child = spawn(&cfg, &[]);
    wait_for("all records", LONG, || env.records().len() == 7500);
    let get = |name: &str, labels: &[&str]| {
        let (status, body) = http_get(port, "/metrics").unwrap();
        assert_eq!(status, 200);
        metric(&body, name, labels)
    };
    assert_eq!(
        get("logferry_component_received_events_total", &["component=\"app\""]),
        Some(7500.0)
    );
    wait_for("sink counters", LONG, || {
        get("logferry_component_sent_events_total", &["component=\"out\""]) == Some(7500.0)
    });
    let size = std::fs::metadata(env.logs().join("app.log")).unwrap().len() as f64;
    assert_eq!(get("logferry_file_read_offset_bytes", &["app.log"]), Some(size));
    assert_eq!(get("logferry_file_lag_bytes", &["app.log"]), Some(0.0));
    wait_for("checkpoint", LONG, || {
        get("logferry_file_checkpoint_offset_bytes", &["app.log"]) == Some(size)
    });
    assert_eq!(get("logferry_file_checkpoint_lag_bytes", &["app.log"]), Some(0.0));
    wait_for("every record acknowledged", LONG, || {
        get("logferry_source_acked_events_total", &["component=\"app\""]) == Some(7500.0)
    });
    assert_eq!(get("logferry_source_unacked_events", &["component=\"app\""]), Some(0.0));
    assert_eq!(
        get("logferry_source_failed_events_total", &["component=\"app\""]),
        Some(0.0)
    );
    assert_eq!(http_get(port, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(port, "/readyz").unwrap().0, 200);
    child.signal(libc::SIGTERM);
    let (status, _) = child.wait(LONG);
    assert!(status.success());
}

#[test]
fn read_from_end_skips_existing_lines_but_not_new_files() {
    let env = Env::new();
    append_ids(&env.logs().join("app.log"), 0..100);
    let cfg = env.config("*.log", "read_from = \"end\"", "");
    let child = spawn(&cfg, &[]);
    // The file is open once its offset shows up in the checkpoint file.
    wait_for("the checkpoint", LONG, || {
        env.path("data/checkpoints/app.json").exists()
    });
    append_ids(&env.logs().join("app.log"), 100..110);
    append_ids(&env.logs().join("new.log"), 110..120);
    wait_for("new lines", LONG, || env.records().len() == 20);
    child.signal(libc::SIGTERM);
    let (status, _) = child.wait(LONG);
    assert!(status.success());
    let counts = id_counts(&env.records());
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (100..120).collect::<Vec<_>>()
    );
}

#[test]
fn files_with_identical_beginnings_are_both_read() {
    // Two files present at start-up that share their first kilobytes are
    // two files, not a file and its copy.
    let env = Env::new();
    let banner: String = (0..40)
        .map(|i| format!("{{\"banner\":{i},\"text\":\"starting up, same on every file\"}}\n"))
        .collect();
    for (name, ids) in [("a.log", 0..100), ("b.log", 100..200)] {
        std::fs::write(env.logs().join(name), &banner).unwrap();
        append_ids(&env.logs().join(name), ids);
    }
    let cfg = env.config("*.log", "", "");
    let child = spawn(&cfg, &[]);
    wait_for("both files", LONG, || id_counts(&env.records()).len() == 200);
    child.signal(libc::SIGTERM);
    child.wait(LONG);
    assert_each_once(&env.records(), 200);
    let env2 = Env::new();
    for (name, ids) in [("a.log", 0..100), ("b.log", 100..200)] {
        std::fs::write(env2.logs().join(name), &banner).unwrap();
        append_ids(&env2.logs().join(name), ids);
    }
    run_to_eof(&env2.config("*.log", "", ""), &[]);
    assert_each_once(&env2.records(), 200);
}

#[test]
fn a_closed_stderr_does_not_stop_the_router() {
    // A container runtime may close the router's log pipe; logging must not
    // panic and SIGTERM must still drain and exit 0.
    let env = Env::new();
    append_ids(&env.logs().join("app.log"), 0..100);
    let cfg = env.config("*.log", "", "");
    let mut child = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("LOGFERRY_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("records", LONG, || env.records().len() == 100);
    drop(child.stderr.take());
    append_ids(&env.logs().join("app.log"), 100..200);
    wait_for("records after stderr closed", LONG, || env.records().len() == 200);
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > LONG {
            let _ = child.kill();
            panic!("router did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert_each_once(&env.records(), 200);
}
