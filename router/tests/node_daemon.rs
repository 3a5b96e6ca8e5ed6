//! Node-daemon mode through the real binary: kubelet container logs laid out
//! as on a node (`containers/*.log` symlinks into `pods/`), CRI and Docker
//! partial lines joined, `kubernetes` fields from the symlink's name, and a
//! held `P` sequence across a crash.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(90);
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/containers");
const CRI_NAME: &str =
    "web-7d4b9c8f5-x2x9z_prod_app-3f1c2a9e8b7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3928170f6e5d4c.log";
const DOCKER_NAME: &str = "worker-0_batch_main-a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1.log";

/// Puts `content` at `logs/pods/<ns>_<pod>_uid/<c>/0.log` and links
/// `logs/<dir>/<name>` to it, as the kubelet does; returns the real file.
fn install(env: &Env, dir: &str, name: &str, content: &[u8]) -> PathBuf {
    let real = env.logs().join("pods").join(name.replace(".log", "")).join("0.log");
    std::fs::create_dir_all(real.parent().unwrap()).unwrap();
    std::fs::write(&real, content).unwrap();
    let link_dir = env.logs().join(dir);
    std::fs::create_dir_all(&link_dir).unwrap();
    std::os::unix::fs::symlink(&real, link_dir.join(name)).unwrap();
    real
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(FIXTURES).join(name)).unwrap()
}

/// One file source per parser over `logs/<parser>/*.log`, with
/// `kubernetes_metadata = "path"`, into the file sink.
fn config(env: &Env, parsers: &[&str], extra: &str) -> PathBuf {
    let mut text = format!("[global]\ndata_dir = \"{}\"\n", env.path("data").display());
    for p in parsers {
        text.push_str(&format!(
            "[sources.{p}]\ntype = \"file\"\ninclude = [\"{}/*.log\"]\nparser = \"{p}\"\nkubernetes_metadata = \"path\"\nglob_interval = \"100ms\"\n{extra}\n",
            env.logs().join(p).display()
        ));
    }
    let inputs: Vec<String> = parsers.iter().map(|p| format!("\"{p}\"")).collect();
    text.push_str(&format!(
        "[sinks.out]\ntype = \"file\"\ninputs = [{}]\npath = \"{}\"\nkey_prefix = \"{{kubernetes.namespace_name}}/{{kubernetes.pod_name}}/\"\ncompression = \"none\"\nflush_interval = \"200ms\"\n",
        inputs.join(", "),
        env.path("out").display()
    ));
    env.write_config(&text)
}

fn k8s(pod: &str, ns: &str, container: &str, id: &str) -> Value {
    json!({"pod_name": pod, "namespace_name": ns, "container_name": container, "container_id": id})
}

fn sorted(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by_key(|r| r.to_string());
    v
}

#[test]
fn container_logs_are_joined_and_carry_their_pod() {
    let env = Env::new();
    install(&env, "cri", CRI_NAME, &fixture(CRI_NAME));
    install(&env, "docker", DOCKER_NAME, &fixture(DOCKER_NAME));
    install(
        &env,
        "cri",
        "not-a-kubelet-name.log",
        &fixture("not-a-kubelet-name.log"),
    );
    // A 100 KiB line cut into 16 KiB parts, crossing the 64 KiB read size.
    let big: String = (0..100 * 1024).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let mut parts = Vec::new();
    for (n, chunk) in big.as_bytes().chunks(16 * 1024).enumerate() {
        let tag = if (n + 1) * 16 * 1024 >= big.len() { "F" } else { "P" };
        parts.extend_from_slice(format!("2026-11-26T02:00:00.{n:09}Z stdout {tag} ").as_bytes());
        parts.extend_from_slice(chunk);
        parts.push(b'\n');
    }
    let big_name = format!("big-0_prod_gen-{}.log", "e".repeat(64));
    install(&env, "cri", &big_name, &parts);

    run_to_eof(&config(&env, &["cri", "docker"], ""), &[]);
    let records = env.records();

    let web = k8s(
        "web-7d4b9c8f5-x2x9z",
        "prod",
        "app",
        "3f1c2a9e8b7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3928170f6e5d4c",
    );
    let cri = |ts: &str, stream: &str, log: &str| json!({"@timestamp": ts, "stream": stream, "logtag": "F", "log": log, "kubernetes": web.clone()});
    let of = |pod: &str| -> Vec<Value> {
        records
            .iter()
            .filter(|r| r["kubernetes"]["pod_name"] == pod)
            .cloned()
            .collect()
    };
    assert_eq!(
        sorted(of("web-7d4b9c8f5-x2x9z")),
        sorted(vec![
            cri("2026-11-26T01:00:00.000Z", "stdout", "plain line"),
            cri("2026-11-26T01:00:01.100Z", "stderr", "err part, err end"),
            cri(
                "2026-11-26T01:00:01.000Z",
                "stdout",
                "first part, second part, last part"
            ),
            cri(
                "2026-11-26T01:00:02.000Z",
                "stdout",
                r#"{"level":"info","msg":"json content"}"#
            ),
            cri("2026-11-26T00:00:03.000Z", "stderr", "offset time"),
        ])
    );

    let worker = k8s(
        "worker-0",
        "batch",
        "main",
        "a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1",
    );
    let docker = |ts: &str, stream: &str, log: &str| json!({"@timestamp": ts, "log": log, "stream": stream, "kubernetes": worker.clone()});
    assert_eq!(
        sorted(of("worker-0")),
        sorted(vec![
            docker("2026-11-26T01:00:00.500Z", "stdout", "docker whole"),
            docker("2026-11-26T01:00:03.000Z", "stdout", "aaaabbbbcccc"),
            docker("2026-11-26T01:00:03.050Z", "stderr", "err \"quoted\" done"),
        ])
    );

    let big_records = of("big-0");
    assert_eq!(big_records.len(), 1);
    assert_eq!(big_records[0]["log"].as_str().map(str::len), Some(big.len()));
    assert!(big_records[0]["log"] == big.as_str(), "joined bytes differ");
    assert_eq!(big_records[0]["@timestamp"], "2026-11-26T02:00:00.000Z");

    // The file whose name is not a kubelet name: shipped, without fields.
    let plain: Vec<&Value> = records.iter().filter(|r| r.get("kubernetes").is_none()).collect();
    assert_eq!(plain.len(), 1);
    assert_eq!(plain[0]["log"], "no pod");
    assert_eq!(records.len(), 5 + 3 + 1 + 1);

    // The key prefix templates read the per-file fields.
    assert!(env.path("out/prod/web-7d4b9c8f5-x2x9z").is_dir());
    assert!(env.path("out/batch/worker-0").is_dir());
}

/// The saved offset of the (only) file of source `cri`, if saved yet.
fn checkpoint_offset(env: &Env) -> Option<u64> {
    let text = std::fs::read_to_string(env.path("data/checkpoints/cri.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v["files"].get(0)?["offset"].as_u64()
}

#[test]
fn open_p_sequence_holds_the_checkpoint_across_a_crash() {
    let env = Env::new();
    let first = "2026-11-26T03:00:00.000000000Z stdout F before\n";
    let open = "2026-11-26T03:00:01.000000000Z stdout P held-1 \n2026-11-26T03:00:01.500000000Z stdout P held-2 \n";
    let real = install(&env, "cri", CRI_NAME, format!("{first}{open}").as_bytes());
    // A long partial-line timeout: only completion (or the end of a
    // backfill) may emit the held parts.
    let cfg = config(&env, &["cri"], "partial_line_timeout = \"1h\"");
    let router = spawn(&cfg, &[]);
    wait_for("the complete line", LONG, || env.records().len() == 1);
    wait_for("a checkpoint", LONG, || checkpoint_offset(&env).is_some_and(|o| o > 0));
    assert_eq!(
        checkpoint_offset(&env),
        Some(first.len() as u64),
        "the checkpoint must stop at the first held part"
    );
    router.signal(libc::SIGKILL);
    let _ = router.wait(LONG);
    assert_eq!(env.records().len(), 1);

    let mut f = std::fs::OpenOptions::new().append(true).open(&real).unwrap();
    f.write_all(b"2026-11-26T03:00:02.000000000Z stdout F end\n").unwrap();
    drop(f);
    run_to_eof(&cfg, &[]);
    let logs: Vec<(String, String)> = env
        .records()
        .iter()
        .map(|r| {
            (
                r["log"].as_str().unwrap().to_string(),
                r["@timestamp"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        sorted_pairs(logs),
        sorted_pairs(vec![
            ("before".into(), "2026-11-26T03:00:00.000Z".into()),
            ("held-1 held-2 end".into(), "2026-11-26T03:00:01.000Z".into()),
        ])
    );
    let total = std::fs::metadata(&real).unwrap().len();
    assert_eq!(checkpoint_offset(&env), Some(total));
}

fn sorted_pairs(mut v: Vec<(String, String)>) -> Vec<(String, String)> {
    v.sort();
    v
}

#[test]
fn held_parts_complete_live_and_the_rest_is_flushed_at_the_drain() {
    let env = Env::new();
    let real = install(
        &env,
        "cri",
        CRI_NAME,
        b"2026-11-26T03:00:00Z stderr P live-1 \n2026-11-26T03:00:00Z stdout F other\n",
    );
    let cfg = config(&env, &["cri"], "partial_line_timeout = \"1h\"");
    let router = spawn(&cfg, &[]);
    wait_for("the stdout line", LONG, || env.records().len() == 1);
    let mut f = std::fs::OpenOptions::new().append(true).open(&real).unwrap();
    f.write_all(b"2026-11-26T03:00:01Z stderr F live-2\n2026-11-26T03:00:02Z stderr P tail\n")
        .unwrap();
    drop(f);
    wait_for("the joined line", LONG, || env.records().len() == 2);
    router.signal(libc::SIGTERM);
    let (status, err) = router.wait(LONG);
    assert!(status.success(), "{err}");
    // The drain flushes the open `tail` part as an incomplete line (logtag P).
    let mut got: Vec<(String, String, String)> = env
        .records()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
            (s("log"), s("stream"), s("logtag"))
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("live-1 live-2".into(), "stderr".into(), "F".into()),
            ("other".into(), "stdout".into(), "F".into()),
            ("tail".into(), "stderr".into(), "P".into()),
        ]
    );
}

#[test]
fn kubernetes_metadata_rejects_unknown_values() {
    let env = Env::new();
    let cfg = config(&env, &["cri"], "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("kubernetes_metadata = \"path\"", "kubernetes_metadata = \"kubelet\"");
    let cfg = env.write_config(&text);
    let (code, _, err) = validate_config(&cfg);
    assert_ne!(code, Some(0));
    assert!(err.contains("kubernetes_metadata"), "{err}");
    assert!(err.contains("path") && err.contains("api"), "{err}");
}

#[test]
fn a_stream_quiet_mid_line_is_flushed_while_the_other_keeps_writing() {
    let env = Env::new();
    let real = install(&env, "cri", CRI_NAME, b"2026-11-26T03:00:00Z stderr P never finished\n");
    let cfg = config(&env, &["cri"], "partial_line_timeout = \"300ms\"");
    let router = spawn(&cfg, &[]);
    // stdout keeps the file busy (never idle for the timeout); the stderr
    // part must still come out, marked incomplete, and the checkpoint pass it.
    let mut n = 0;
    wait_for("the stale stderr part", LONG, || {
        let mut f = std::fs::OpenOptions::new().append(true).open(&real).unwrap();
        f.write_all(format!("2026-11-26T03:00:01Z stdout F busy {n}\n").as_bytes())
            .unwrap();
        n += 1;
        std::thread::sleep(Duration::from_millis(50));
        env.records().iter().any(|r| r["stream"] == "stderr")
    });
    let size = std::fs::metadata(&real).unwrap().len();
    wait_for("the checkpoint past the part", LONG, || {
        checkpoint_offset(&env).is_some_and(|o| o >= size)
    });
    router.signal(libc::SIGTERM);
    let (status, err) = router.wait(LONG);
    assert!(status.success(), "{err}");
    let records = env.records();
    let stderr: Vec<&Value> = records.iter().filter(|r| r["stream"] == "stderr").collect();
    assert_eq!(stderr.len(), 1);
    assert_eq!(
        (&stderr[0]["log"], &stderr[0]["logtag"]),
        (&json!("never finished"), &json!("P"))
    );
    assert_eq!(records.len(), n + 1, "every busy line once, plus the flushed part");
}
