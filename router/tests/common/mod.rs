//! Helpers for tests that run the real `logferry` binary.
#![allow(dead_code)]

pub mod tls;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_logferry");

/// A scratch directory with `logs/`, `out/` and `data/`.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["logs", "out", "data"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        Env { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn logs(&self) -> PathBuf {
        self.path("logs")
    }

    /// A config: file source over `include` -> (source opts) -> file sink
    /// without compression, flushing fast.
    pub fn config(&self, include: &str, source_extra: &str, tail: &str) -> PathBuf {
        let text = format!(
            r#"
[global]
data_dir = "{data}"

[sources.app]
type = "file"
include = ["{include}"]
glob_interval = "100ms"
rotate_wait = "1s"
{source_extra}

[sinks.out]
type = "file"
inputs = ["app"]
path = "{out}"
key_prefix = "%Y/%m/%d/"
compression = "none"
flush_interval = "200ms"
{tail}
"#,
            data = self.path("data").display(),
            include = self.logs().join(include).display(),
            out = self.path("out").display(),
        );
        let p = self.path("logferry.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `[global]` (and `[api]` on `api`), the file source `app` over
    /// `logs/*.log` with `source_extra`, and a forward sink `fw` with
    /// `sink` (host and port or servers, options; `flush_interval` 100ms
    /// unless it says otherwise).
    pub fn file_to_forward(&self, api: Option<u16>, source_extra: &str, sink: &str) -> PathBuf {
        let flush = if sink.contains("flush_interval") {
            ""
        } else {
            "flush_interval = \"100ms\""
        };
        self.write_config(&format!(
            r#"{head}
[sources.app]
type = "file"
include = ["{logs}/*.log"]
glob_interval = "100ms"
{source_extra}

[sinks.fw]
type = "forward"
inputs = ["app"]
{flush}
{sink}
"#,
            head = self.head(api),
            logs = self.logs().display(),
        ))
    }

    /// `[global]` (and `[api]`), the forward source `in` with `source`
    /// (its address, options), into a file sink under `out/{tag}/`
    /// (uncompressed, flushing every 100ms), or a blackhole.
    pub fn forward_to(&self, api: Option<u16>, source: &str, into: ForwardInto) -> PathBuf {
        let sink = match into {
            ForwardInto::Files => format!(
                "type = \"file\"\npath = \"{}\"\nkey_prefix = \"{{tag}}/\"\ncompression = \"none\"\nflush_interval = \"100ms\"",
                self.path("out").display()
            ),
            ForwardInto::Blackhole => "type = \"blackhole\"".to_string(),
        };
        self.write_config(&format!(
            r#"{head}
[sources.in]
type = "forward"
{source}

[sinks.out]
inputs = ["in"]
{sink}
"#,
            head = self.head(api),
        ))
    }

    fn head(&self, api: Option<u16>) -> String {
        let api = api
            .map(|p| format!("[api]\naddress = \"127.0.0.1:{p}\"\n"))
            .unwrap_or_default();
        format!("[global]\ndata_dir = \"{}\"\n{api}", self.path("data").display())
    }

    pub fn write_config(&self, text: &str) -> PathBuf {
        let p = self.path("logferry.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Every record written under `out/` (finished objects only).
    pub fn records(&self) -> Vec<serde_json::Value> {
        read_records(&self.path("out"))
    }
}

pub fn read_records(root: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for p in logferry::sinks::file::list_objects(root) {
        let mut raw = Vec::new();
        std::fs::File::open(&p).unwrap().read_to_end(&mut raw).unwrap();
        let name = p.to_string_lossy().to_string();
        let text = if name.ends_with(".gz") {
            let mut s = Vec::new();
            flate2::read::MultiGzDecoder::new(&raw[..]).read_to_end(&mut s).unwrap();
            s
        } else if name.ends_with(".zst") {
            zstd::decode_all(&raw[..]).unwrap()
        } else {
            raw
        };
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            out.push(
                serde_json::from_slice(line)
                    .unwrap_or_else(|e| panic!("invalid JSON in {name}: {e}: {}", String::from_utf8_lossy(line))),
            );
        }
    }
    out
}

/// Runs `logferry run --config C --exit-on-eof` to completion.
pub fn run_to_eof(config: &Path, envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"]).arg(config).arg("--exit-on-eof");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run logferry");
    assert!(
        out.status.success(),
        "logferry failed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Writes ids `0..n` to `logs/app.log`, runs the router with `config`,
/// kills it with SIGKILL once some output exists, runs it again to the end
/// and checks that no id was lost. Returns how many records were repeated
/// (allowed: at least once).
pub fn kill_9_then_restart_loses_nothing(env: &Env, config: &Path, n: u64) -> usize {
    append_ids(&env.logs().join("app.log"), 0..n);
    let child = spawn(config, &[]);
    wait_for("some output", Duration::from_secs(90), || env.records().len() > 1000);
    child.signal(libc::SIGKILL);
    let _ = child.wait(Duration::from_secs(90));
    run_to_eof(config, &[]);
    let counts = id_counts(&env.records());
    let missing = (0..n).filter(|i| !counts.contains_key(i)).count();
    assert_eq!(missing, 0, "records lost after kill -9");
    counts.values().map(|c| c - 1).sum()
}

/// A router running in the background; killed on drop so a failing test
/// leaves no process behind.
pub struct Router {
    child: Option<Child>,
    stderr: PathBuf,
}

/// Starts `logferry run --config C` in the background.
pub fn spawn(config: &Path, envs: &[(&str, &str)]) -> Router {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"]).arg(config);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    // stderr goes to a file beside the config, so a failing test can show it.
    let stderr = config.with_extension("stderr");
    let log = std::fs::File::create(&stderr).expect("stderr file");
    cmd.stdout(Stdio::null()).stderr(log);
    Router {
        child: Some(cmd.spawn().expect("spawn logferry")),
        stderr,
    }
}

impl Router {
    pub fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().map_or(0, |c| c.id() as i32);
        // SAFETY: plain kill(2) on our own child's pid.
        let r = unsafe { libc::kill(pid, sig) };
        assert_eq!(r, 0, "kill failed");
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for exit (a hang guard only); returns the status and stderr.
    pub fn wait(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let start = Instant::now();
        let mut child = self.child.take().expect("running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, self.stderr());
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                panic!("logferry did not exit within {limit:?}\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
            if std::thread::panicking() {
                eprintln!("--- logferry stderr ---\n{}", self.stderr());
            }
        }
    }
}

/// Where [`Env::forward_to`] delivers.
#[derive(Debug, Clone, Copy)]
pub enum ForwardInto {
    Files,
    Blackhole,
}

/// Waits until something accepts TCP connections on `port` (a hang guard).
pub fn wait_listening(port: u16) {
    wait_for(&format!("a listener on port {port}"), Duration::from_secs(90), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// Polls `cond` until true; panics after `limit` (a hang guard, not a timing assertion).
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > limit {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Counts of each `id` field over the records.
pub fn id_counts(records: &[serde_json::Value]) -> BTreeMap<u64, usize> {
    let mut m = BTreeMap::new();
    for r in records {
        if let Some(id) = r.get("id").and_then(|v| v.as_u64()) {
            *m.entry(id).or_insert(0) += 1;
        }
    }
    m
}

/// Appends JSON lines with ids `range` to `path`.
pub fn append_ids(path: &Path, range: std::ops::Range<u64>) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let mut buf = String::new();
    for i in range {
        buf.push_str(&format!(
            "{{\"id\":{i},\"level\":\"info\",\"msg\":\"line number {i} with some padding to look like a real log\"}}\n"
        ));
    }
    f.write_all(buf.as_bytes()).unwrap();
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Minimal HTTP GET against loopback.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Value of a metric line `name{labels} value` whose labels contain all `want`.
pub fn metric(text: &str, name: &str, want: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && want.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .next()
}

/// Every id in `0..n` exactly once, and nothing else.
pub fn assert_each_once(records: &[serde_json::Value], n: u64) {
    let counts = id_counts(records);
    let missing: Vec<u64> = (0..n).filter(|i| !counts.contains_key(i)).take(10).collect();
    let repeated: Vec<(&u64, &usize)> = counts.iter().filter(|(_, c)| **c > 1).take(10).collect();
    assert!(missing.is_empty(), "missing ids (first 10): {missing:?}");
    assert!(repeated.is_empty(), "repeated ids (first 10): {repeated:?}");
    assert_eq!(counts.len() as u64, n);
}

/// `logferry validate --config <path>`: (exit code, stdout, stderr).
pub fn validate_config(path: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(path)
        .output()
        .expect("run logferry validate");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
