//! A `file` sink behind a disk buffer, through the real binary: exact
//! delivery, and damage in a segment between two runs.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(90);
const BUFFER: &str = r#"buffer = { type = "disk", max_size = "8MiB" }"#;

fn buffer_dir(env: &Env) -> PathBuf {
    env.path("data").join("buffers").join("out")
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

fn metrics(port: u16) -> String {
    http_get(port, "/metrics").map(|(_, b)| b).unwrap_or_default()
}

#[test]
fn file_sink_behind_a_disk_buffer_delivers_every_record_once() {
    let env = Env::new();
    append_ids(&env.logs().join("app.log"), 0..50_000);
    let cfg = env.config("*.log", "", BUFFER);
    let out = run_to_eof(&cfg, &[]);
    let counts = id_counts(&env.records());
    assert_eq!(counts.len(), 50_000, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(counts.values().all(|c| *c == 1), "repeated records");
    // Drained: no segment left, only where to go on.
    let dir = buffer_dir(&env);
    assert!(segments(&dir).is_empty());
    assert!(dir.join("position.json").exists());
}

#[test]
fn damaged_segment_between_runs_is_skipped_counted_and_the_rest_delivered() {
    let env = Env::new();
    let log = env.logs().join("app.log");
    append_ids(&log, 0..20_000);
    let size = std::fs::metadata(&log).unwrap().len() as f64;
    // Run 1: the sink never completes an object, so everything stays in the
    // buffer; the source's checkpoint still reaches the end of the file.
    let port = free_port();
    let api = format!("\n[api]\naddress = \"127.0.0.1:{port}\"\n");
    let cfg = env.config("*.log", "", &format!("{BUFFER}\nflush_interval = \"1h\"\n{api}"));
    let cfg_text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("flush_interval = \"200ms\"\n", "");
    std::fs::write(&cfg, cfg_text).unwrap();
    let router = spawn(&cfg, &[]);
    wait_for("everything durable in the buffer", LONG, || {
        let m = metrics(port);
        metric(&m, "logferry_file_checkpoint_offset_bytes", &["app.log"]) == Some(size)
            && metric(&m, "logferry_buffer_records", &["component=\"out\""]) == Some(20_000.0)
    });
    router.signal(libc::SIGKILL);
    let _ = router.wait(LONG);
    assert!(env.records().is_empty());

    // Bytes flipped in the middle of the first segment.
    let segs = segments(&buffer_dir(&env));
    assert!(!segs.is_empty());
    let mut data = std::fs::read(&segs[0]).unwrap();
    let mid = data.len() / 2;
    for b in &mut data[mid..mid + 16] {
        *b ^= 0x5A;
    }
    std::fs::write(&segs[0], &data).unwrap();

    // Run 2 reads no file (the buffer is the test) and flushes quickly.
    let port = free_port();
    let api = format!("\n[api]\naddress = \"127.0.0.1:{port}\"\n");
    let cfg = env.config("*.none", "", &format!("{BUFFER}\n{api}"));
    let router = spawn(&cfg, &[]);
    wait_for("the buffer drained", LONG, || {
        metric(&metrics(port), "logferry_buffer_bytes", &["component=\"out\""]) == Some(0.0)
    });
    let m = metrics(port);
    assert_eq!(
        metric(&m, "logferry_buffer_corrupt_frames_total", &["component=\"out\""]),
        Some(1.0),
        "{m}"
    );
    router.signal(libc::SIGTERM);
    let (status, err) = router.wait(LONG);
    assert!(status.success(), "{err}");
    assert_eq!(err.matches("damaged data in the disk buffer").count(), 1, "{err}");

    // Every record but those of the one damaged frame (one source batch:
    // a contiguous run of ids), each once.
    let counts = id_counts(&env.records());
    assert!(counts.values().all(|c| *c == 1), "repeated records");
    let missing: Vec<u64> = (0..20_000).filter(|i| !counts.contains_key(i)).collect();
    assert!(
        !missing.is_empty() && missing.len() < 5_000,
        "{} missing",
        missing.len()
    );
    assert_eq!(
        missing.last().unwrap() - missing.first().unwrap() + 1,
        missing.len() as u64,
        "missing ids are not one run: {missing:?}"
    );
    assert_eq!(counts.len() + missing.len(), 20_000);
}

#[test]
fn kill_9_with_a_disk_buffer_then_restart_loses_nothing() {
    let env = Env::new();
    let cfg = env.config("*.log", "", BUFFER);
    let repeats = kill_9_then_restart_loses_nothing(&env, &cfg, 300_000);
    eprintln!("kill -9 with a disk buffer: {repeats} repeated records (allowed: at least once)");
    assert!(segments(&buffer_dir(&env)).is_empty());
}
