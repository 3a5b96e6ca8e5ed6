//! Compacts one hour of a local directory laid out like a bucket, with the
//! Lambda's code (`logferry_indexer::compact::compact`) over a filesystem
//! [`Store`]: what `bench/compactor.sh` measures without a network in the way.
//!
//! `compact_dir <root> <prefix> <hour>` (e.g. `data logs/2026/12/03/14/ 2026-12-03T14`);
//! prints the run's summary as JSON. Inputs are kept (`COMPACT_INPUTS=keep`).
//!
//! `COMPACT_DIR_GET_LATENCY_MS=20` sleeps that long in each GET before its
//! body is returned: S3's first-byte latency, which a local disk does not have.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use logferry_indexer::compact::store::{Got, Listed, Store};
use logferry_indexer::compact::{Job, compact, default_source, lease, parse_hour};
use logferry_indexer::config::{IndexerConfig, InputAction};
use logferry_indexer::process::{FailureKind, ProcessError};

/// A directory as a bucket: keys are paths under `root`.
struct DirStore {
    root: PathBuf,
    uploads: AtomicU64,
    get_latency: std::time::Duration,
}

fn io_err(op: &'static str, key: &str, e: std::io::Error) -> ProcessError {
    ProcessError::new(FailureKind::S3Read, op, "dir", key, e.to_string())
}

fn etag(meta: &std::fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("\"{:x}-{mtime:x}\"", meta.len())
}

fn walk(dir: &Path, root: &Path, out: &mut Vec<Listed>) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries {
        let e = e?;
        let meta = e.metadata()?;
        let path = e.path();
        if meta.is_dir() {
            if e.file_name() != ".uploads" {
                walk(&path, root, out)?;
            }
        } else {
            let key = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            out.push(Listed {
                key,
                etag: etag(&meta),
                size: meta.len(),
            });
        }
    }
    Ok(())
}

impl DirStore {
    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn write(&self, key: &str, body: &[u8]) -> Result<(), ProcessError> {
        let path = self.path(key);
        let tmp = path.with_extension("tmp-write");
        std::fs::create_dir_all(path.parent().expect("a key has a parent"))
            .and_then(|()| std::fs::write(&tmp, body))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| io_err("Put", key, e))
    }
}

impl Store for DirStore {
    async fn list(&self, _bucket: &str, prefix: &str) -> Result<Vec<Listed>, ProcessError> {
        // Walk the deepest directory the prefix names, then filter by the whole prefix.
        let dir = match prefix.rfind('/') {
            Some(i) => self.root.join(&prefix[..i]),
            None => self.root.clone(),
        };
        let mut out = Vec::new();
        walk(&dir, &self.root, &mut out).map_err(|e| io_err("List", prefix, e))?;
        out.retain(|l| l.key.starts_with(prefix));
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn get(&self, _bucket: &str, key: &str, if_match: Option<&str>) -> Result<Option<Got>, ProcessError> {
        let path = self.path(key);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("Get", key, e)),
        };
        let tag = etag(&meta);
        if if_match.is_some_and(|m| m != tag) {
            return Ok(None);
        }
        let file = tokio::fs::File::open(&path).await.map_err(|e| io_err("Get", key, e))?;
        if !self.get_latency.is_zero() {
            tokio::time::sleep(self.get_latency).await;
        }
        Ok(Some(Got {
            etag: tag,
            content_encoding: None,
            body: Box::new(file),
        }))
    }

    async fn put(&self, _bucket: &str, key: &str, body: Vec<u8>) -> Result<(), ProcessError> {
        self.write(key, &body)
    }

    async fn put_if(
        &self,
        _bucket: &str,
        key: &str,
        body: Vec<u8>,
        expected: Option<&str>,
    ) -> Result<Option<String>, ProcessError> {
        // One process writes the directory: checking, then writing, is enough here.
        let now = std::fs::metadata(self.path(key)).ok().map(|m| etag(&m));
        if now.as_deref() != expected {
            return Ok(None);
        }
        self.write(key, &body)?;
        let meta = std::fs::metadata(self.path(key)).map_err(|e| io_err("Put", key, e))?;
        Ok(Some(etag(&meta)))
    }

    async fn delete(&self, _bucket: &str, keys: &[String]) -> Result<(), ProcessError> {
        for k in keys {
            match std::fs::remove_file(self.path(k)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err("Delete", k, e)),
                _ => {}
            }
        }
        Ok(())
    }

    async fn tag(&self, _bucket: &str, _key: &str, _tag: (&str, &str)) -> Result<(), ProcessError> {
        Ok(())
    }

    async fn upload_start(&self, _bucket: &str, key: &str) -> Result<String, ProcessError> {
        let id = self.uploads.fetch_add(1, Ordering::Relaxed).to_string();
        let dir = self.root.join(".uploads").join(&id);
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(dir.join("key"), key))
            .map_err(|e| io_err("UploadStart", key, e))?;
        Ok(id)
    }

    async fn upload_part(
        &self,
        _bucket: &str,
        key: &str,
        upload: &str,
        n: i32,
        body: Vec<u8>,
    ) -> Result<String, ProcessError> {
        std::fs::write(self.root.join(".uploads").join(upload).join(n.to_string()), body)
            .map_err(|e| io_err("UploadPart", key, e))?;
        Ok(n.to_string())
    }

    async fn upload_complete(
        &self,
        _bucket: &str,
        key: &str,
        upload: &str,
        parts: Vec<(i32, String)>,
    ) -> Result<(), ProcessError> {
        let dir = self.root.join(".uploads").join(upload);
        let path = self.path(key);
        let run = || -> std::io::Result<()> {
            std::fs::create_dir_all(path.parent().expect("a key has a parent"))?;
            let mut out = std::fs::File::create(&path)?;
            for (n, _) in &parts {
                let part = dir.join(n.to_string());
                std::io::copy(&mut std::fs::File::open(&part)?, &mut out)?;
                std::fs::remove_file(part)?;
            }
            std::fs::remove_dir_all(&dir)
        };
        run().map_err(|e| io_err("UploadComplete", key, e))
    }

    async fn upload_abort(&self, _bucket: &str, key: &str, upload: &str) -> Result<(), ProcessError> {
        match std::fs::remove_dir_all(self.root.join(".uploads").join(upload)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("UploadAbort", key, e)),
            _ => Ok(()),
        }
    }

    async fn uploads_list(&self, _bucket: &str, prefix: &str) -> Result<Vec<(String, String)>, ProcessError> {
        let Ok(entries) = std::fs::read_dir(self.root.join(".uploads")) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            if let Ok(key) = std::fs::read_to_string(e.path().join("key"))
                && key.starts_with(prefix)
            {
                out.push((key, e.file_name().to_string_lossy().into_owned()));
            }
        }
        Ok(out)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, root, prefix, hour] = args.as_slice() else {
        return Err("usage: compact_dir <root> <prefix> <hour, e.g. 2026-12-03T14>".into());
    };
    let mut cfg = IndexerConfig::from_lookup(&|k| std::env::var(k).ok())?;
    cfg.compact.inputs = InputAction::Keep;
    let job = Job {
        bucket: "dir".into(),
        prefix: prefix.clone(),
        hour: parse_hour(hour).ok_or("hour: like 2026-12-03T14")?,
        source: default_source(prefix),
    };
    let store = Arc::new(DirStore {
        root: PathBuf::from(root),
        uploads: AtomicU64::new(0),
        get_latency: std::time::Duration::from_millis(match std::env::var("COMPACT_DIR_GET_LATENCY_MS") {
            Ok(v) => v.parse().map_err(|e| format!("COMPACT_DIR_GET_LATENCY_MS={v}: {e}"))?,
            Err(_) => 0,
        }),
    });
    let summary = compact(store, &cfg, &job, None, &lease::Claim::new("compact_dir", None)).await?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
