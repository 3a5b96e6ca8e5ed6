//! `type = "file"`: the S3 layout on local disk.
//!
//! The object batcher (`sinks/object/`) groups records into objects by their
//! rendered `key_prefix`, compresses them and closes them at
//! `max_object_size` (uncompressed bytes), after `flush_interval`, or early
//! when `memory_limit` is spent. This file writes a closed object to a hidden
//! temporary file beside its final name (a large object streams into it
//! while open), fsyncs it, renames it into place and fsyncs the directory;
//! only then are the acks of the batches it holds released. So a reader
//! never sees half an object, and a checkpoint never covers data that a
//! crash could lose. Names carry a UUIDv7 (time-ordered, random tail), so
//! restarts and replicas writing the same prefix never collide.
//!
//! Why objects are committed in groups: an fsync costs a disk cache flush
//! (3-6 ms on a cloud volume) whatever it writes, and closing early or a
//! thousand time slices at once close many objects together. Writing a group
//! first, then fsyncing its files from a few threads at once, lets the
//! filesystem serve them with a few flushes; measured on ext4, 0.4 ms per
//! object instead of 5.7. Each file and directory is still fsynced before
//! its object's acks are released.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;
use tempfile::NamedTempFile;
use tokio::sync::mpsc;

use super::SinkContext;
pub use super::encoding::Compression;
use super::object::{self, Batching, Body, Budget, Closed, Delivery, Destination, ObjectError};
use crate::confdiag::{Ctx, Seg};
use crate::event::Batch;
use crate::metrics::ComponentMetrics;
use crate::template::Template;

/// Files fsynced at once while committing a group.
const SYNC_THREADS: usize = 8;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// Root directory of the archive.
    pub path: PathBuf,
    /// Template of the object prefix: `{field}` and strftime of the event time.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    #[serde(default)]
    pub compression: Compression,
    /// gzip 1-9 (default 2) or zstd 1-19 (default 3).
    pub compression_level: Option<u32>,
    /// Uncompressed bytes after which an object is closed.
    #[serde(default = "default_max_object_size")]
    pub max_object_size: ByteSize,
    /// Age after which an open object is closed.
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Send only this top-level field's value instead of the whole record
    /// (Fluent Bit's `log_key`): a string as its text, anything else as JSON.
    /// Records without it are dropped and counted (`log_key_missing`).
    pub log_key: Option<String>,
    /// Key of the event time the source added: `@timestamp` (default), `""`
    /// to leave it out, or another name. The record's own keys are kept.
    pub timestamp_key: Option<String>,
}

fn default_key_prefix() -> String {
    "%Y/%m/%d/%H/".to_string()
}

fn default_max_object_size() -> ByteSize {
    ByteSize::mib(50)
}

fn default_flush_interval() -> Duration {
    Duration::from_secs(60)
}

impl FileSinkConfig {
    /// What this sink writes for one record (`log_key`, `timestamp_key`).
    pub fn record_format(&self) -> crate::sinks::encoding::RecordFormat {
        crate::sinks::encoding::RecordFormat::new(self.log_key.as_deref(), self.timestamp_key.as_deref())
    }

    pub fn validate(&self, ctx: &mut Ctx<'_>, base: &[Seg]) -> bool {
        let at = |k: &str| crate::confdiag::key(base, k);
        let mut ok = true;
        if let Err(e) = Template::parse(&self.key_prefix) {
            ctx.error(&at("key_prefix"), e.to_string());
            ok = false;
        }
        if self.key_prefix.starts_with('/') || self.key_prefix.split('/').any(|s| s == "..") {
            ctx.error(&at("key_prefix"), "must be relative to `path` and contain no `..`");
            ok = false;
        }
        if self.max_object_size.as_u64() < 1024 {
            ctx.error(&at("max_object_size"), "must be at least 1KiB");
            ok = false;
        }
        if self.flush_interval < Duration::from_millis(10) {
            ctx.error(&at("flush_interval"), "must be at least 10ms");
            ok = false;
        }
        ok &= crate::sinks::encoding::RecordFormat::validate(self.log_key.as_deref(), ctx, base);
        ok
    }
}

struct FileDest {
    cfg: FileSinkConfig,
    m: ComponentMetrics,
    /// Suppresses repeated warnings during a burst of errors.
    failing: bool,
}

pub async fn run(cfg: FileSinkConfig, input: mpsc::Receiver<Batch>, cx: SinkContext) {
    let Some(batching) = Batching::from_keys(
        &cfg.key_prefix,
        cfg.compression,
        cfg.compression_level,
        cfg.max_object_size.as_u64(),
        cfg.flush_interval,
    )
    .map(|b| b.with_format(cfg.record_format())) else {
        return;
    };
    let budget = Budget {
        memory: cx.memory,
        memory_limit: cx.memory_limit,
        m: cx.m.clone(),
    };
    let dest = FileDest {
        cfg,
        m: cx.m,
        failing: false,
    };
    object::run(dest, batching, input, budget).await;
}

/// A written object on its way into place.
struct Commit {
    tmp: NamedTempFile,
    path: PathBuf,
    records: u64,
    bytes: u64,
}

impl Destination for FileDest {
    type Out = BufWriter<NamedTempFile>;
    type State = ();
    const GROUP: usize = 64;

    fn name(&self, prefix: &str, _batch: &Batch, _i: usize) -> String {
        format!(
            "{prefix}{}{}",
            uuid::Uuid::now_v7().simple(),
            self.cfg.compression.extension()
        )
    }

    fn open(&mut self, name: &str) -> std::io::Result<Self::Out> {
        Ok(BufWriter::with_capacity(32 * 1024, self.create(name)?))
    }

    fn held(out: &Self::Out) -> usize {
        out.capacity()
    }

    async fn deliver(&mut self, objects: Vec<Closed<Self::Out, ()>>) -> Vec<Delivery> {
        self.commit(objects)
    }

    fn error(&mut self, e: &ObjectError) {
        let reason = e.reason();
        self.warn(reason, e);
    }
}

impl FileDest {
    /// The hidden temporary file of object `name` (removed if dropped
    /// before it is renamed into place).
    fn create(&self, name: &str) -> std::io::Result<NamedTempFile> {
        let path = self.cfg.path.join(name);
        let dir = path.parent().unwrap_or(&self.cfg.path);
        std::fs::create_dir_all(dir)?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        tempfile::Builder::new()
            .prefix(&format!(".{file_name}"))
            .suffix(".tmp")
            .rand_bytes(0)
            .tempfile_in(dir)
    }

    /// Writes, fsyncs and renames a group of objects, then fsyncs their
    /// directories.
    fn commit(&mut self, objects: Vec<Closed<BufWriter<NamedTempFile>, ()>>) -> Vec<Delivery> {
        let mut out = vec![Delivery::Failed; objects.len()];
        let mut written: Vec<(usize, Commit)> = Vec::with_capacity(objects.len());
        for (i, o) in objects.into_iter().enumerate() {
            let path = self.cfg.path.join(&o.name);
            let tmp = match o.body {
                Body::Whole(bytes) => self.create(&o.name).and_then(|mut t| t.write_all(&bytes).map(|()| t)),
                Body::Streamed(w) => w.into_inner().map_err(|e| e.into_error()),
            };
            match tmp {
                Ok(tmp) => written.push((
                    i,
                    Commit {
                        tmp,
                        path,
                        records: o.records,
                        bytes: o.bytes,
                    },
                )),
                Err(e) => self.warn("close", &e),
            }
        }
        let synced = parallel(&written, |(_, c)| c.tmp.as_file().sync_all());
        let mut placed: Vec<(usize, PathBuf, u64, u64)> = Vec::with_capacity(written.len());
        for ((i, c), r) in written.into_iter().zip(synced) {
            let r = r.and_then(|()| c.tmp.persist(&c.path).map_err(|e| e.error));
            match r {
                Ok(_) => placed.push((i, c.path, c.records, c.bytes)),
                Err(e) => self.warn("close", &e),
            }
        }
        let mut dirs: Vec<&Path> = placed.iter().filter_map(|(_, p, ..)| p.parent()).collect();
        dirs.sort_unstable();
        dirs.dedup();
        let dir_results = parallel(&dirs, |d| File::open(d)?.sync_all());
        let mut failed_dirs = Vec::new();
        for (d, r) in dirs.iter().zip(dir_results) {
            if let Err(e) = r {
                self.warn("close", &e);
                failed_dirs.push(*d);
            }
        }
        for (i, path, records, bytes) in &placed {
            if path.parent().is_some_and(|d| failed_dirs.contains(&d)) {
                continue;
            }
            if let Some(slot) = out.get_mut(*i) {
                *slot = Delivery::Delivered;
            }
            self.failing = false;
            tracing::debug!(object = %path.display(), records, bytes, "object written");
        }
        out
    }

    fn warn(&mut self, what: &'static str, e: &dyn std::fmt::Display) {
        self.m.sink_error(what);
        if !self.failing {
            tracing::warn!(path = %self.cfg.path.display(), error = %e, "file sink cannot {what}; records stay unacknowledged");
            self.failing = true;
        }
    }
}

/// `f` over `items`, from up to [`SYNC_THREADS`] threads at once; results
/// in order.
fn parallel<T: Sync>(items: &[T], f: impl Fn(&T) -> std::io::Result<()> + Sync) -> Vec<std::io::Result<()>> {
    if items.len() <= 1 {
        return items.iter().map(&f).collect();
    }
    let per = items.len().div_ceil(SYNC_THREADS);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(per)
            .map(|chunk| (chunk.len(), s.spawn(|| chunk.iter().map(&f).collect::<Vec<_>>())))
            .collect();
        handles
            .into_iter()
            .flat_map(|(n, h)| {
                h.join().unwrap_or_else(|_| {
                    (0..n)
                        .map(|_| Err(std::io::Error::other("fsync thread panicked")))
                        .collect()
                })
            })
            .collect()
    })
}

/// Paths of finished objects under `root` (tests and tools).
pub fn list_objects(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if !e.file_name().to_string_lossy().starts_with('.') {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
