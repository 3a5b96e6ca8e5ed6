//! `type = "file"`: the S3 layout on local disk.
//!
//! Records are grouped into "objects" by their rendered `key_prefix`, each
//! written compressed to a hidden temporary file beside its final name. An
//! object is closed when it reaches `max_object_size` (uncompressed bytes) or
//! has been open for `flush_interval`: the encoder is finished, the file
//! fsynced and renamed into place, the directory fsynced, and only then are
//! the acks of the batches it holds released. So a reader never sees half an
//! object, and a checkpoint never covers data that a crash could lose.
//! Names carry a UUIDv7 (time-ordered, random tail), so restarts and
//! replicas writing the same prefix never collide.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::config::{Ctx, Seg};
use crate::event::{AckToken, Batch};
use crate::metrics::ComponentMetrics;
use crate::template::{Renderer, Template};

pub use super::encoding::Compression;
use super::encoding::Encoder;

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
    pub fn validate(&self, ctx: &mut Ctx<'_>, base: &[Seg]) -> bool {
        let at = |k: &str| {
            let mut p = base.to_vec();
            p.push(Seg::Key(k.into()));
            p
        };
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
        ok
    }
}

struct Object {
    tmp: PathBuf,
    path: PathBuf,
    enc: Encoder<BufWriter<File>>,
    bytes: u64,
    records: u64,
    opened: Instant,
    acks: Vec<AckToken>,
}

struct FileSink {
    cfg: FileSinkConfig,
    renderer: Renderer,
    open: HashMap<String, Object>,
    m: ComponentMetrics,
    line: Vec<u8>,
    /// Suppresses repeated warnings during a burst of errors.
    failing: bool,
}

pub async fn run(cfg: FileSinkConfig, mut input: mpsc::Receiver<Batch>, m: ComponentMetrics) {
    let template = match Template::parse(&cfg.key_prefix) {
        Ok(t) => t,
        Err(e) => {
            // validate() already rejected this; keep the process alive anyway.
            tracing::error!(error = %e, "invalid key_prefix");
            return;
        }
    };
    let tick_every = (cfg.flush_interval / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut sink = FileSink {
        renderer: Renderer::new(template),
        cfg,
        open: HashMap::new(),
        m,
        line: Vec::with_capacity(4096),
        failing: false,
    };
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            b = input.recv() => match b {
                Some(batch) => tokio::task::block_in_place(|| sink.write_batch(batch)),
                None => break,
            },
            _ = tick.tick() => tokio::task::block_in_place(|| sink.close_expired()),
        }
    }
    tokio::task::block_in_place(|| sink.close_all());
}

impl FileSink {
    fn write_batch(&mut self, batch: Batch) {
        let n = batch.len();
        self.m.received_events.inc_by(n as u64);
        self.m.received_bytes.inc_by(batch.bytes());
        let mut key = String::new();
        let mut touched: Vec<String> = Vec::new();
        self.renderer.begin_batch();
        let mut failed = false;
        for i in 0..n {
            self.renderer.render(&batch, i, &mut key);
            self.line.clear();
            batch.encode(i, &mut self.line);
            self.line.push(b'\n');
            if !self.open.contains_key(&key) {
                match self.create(&key) {
                    Ok(o) => {
                        self.open.insert(key.clone(), o);
                    }
                    Err(e) => {
                        self.error("create", &e);
                        failed = true;
                        break;
                    }
                }
            }
            let Some(obj) = self.open.get_mut(&key) else { break };
            if let Err(e) = obj.enc.write_all(&self.line) {
                self.error("write", &e);
                if let Some(o) = self.open.remove(&key) {
                    discard(o);
                }
                failed = true;
                break;
            }
            obj.bytes += self.line.len() as u64;
            obj.records += 1;
            if !touched.contains(&key) {
                touched.push(key.clone());
            }
            if obj.bytes >= self.cfg.max_object_size.as_u64() {
                // The object now holds part of this batch: it keeps the ack.
                if let (Some(ack), Some(o)) = (&batch.ack, self.open.get_mut(&key)) {
                    o.acks.push(ack.clone());
                }
                touched.retain(|k| k != &key);
                if let Some(o) = self.open.remove(&key) {
                    self.close(o);
                }
            }
        }
        if failed {
            batch.fail();
        }
        if let Some(ack) = &batch.ack {
            for k in &touched {
                if let Some(o) = self.open.get_mut(k) {
                    o.acks.push(ack.clone());
                }
            }
        }
        // `batch` drops here: its memory is released; acks live in objects.
    }

    fn create(&self, key: &str) -> std::io::Result<Object> {
        let name = format!(
            "{key}{}{}",
            uuid::Uuid::now_v7().simple(),
            self.cfg.compression.extension()
        );
        let path = self.cfg.path.join(&name);
        let dir = path.parent().unwrap_or(&self.cfg.path).to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{file_name}.tmp"));
        let f = File::create(&tmp)?;
        Ok(Object {
            enc: Encoder::new(
                self.cfg.compression,
                self.cfg.compression_level,
                BufWriter::with_capacity(64 * 1024, f),
            )?,
            tmp,
            path,
            bytes: 0,
            records: 0,
            opened: Instant::now(),
            acks: Vec::new(),
        })
    }

    fn close(&mut self, o: Object) {
        let Object {
            tmp,
            path,
            enc,
            bytes,
            records,
            acks,
            ..
        } = o;
        let result = enc
            .finish()
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .and_then(|f| f.sync_all())
            .and_then(|_| std::fs::rename(&tmp, &path))
            .and_then(|_| {
                if let Some(dir) = path.parent() {
                    File::open(dir)?.sync_all()?;
                }
                Ok(())
            });
        match result {
            Ok(()) => {
                self.m.sent_events.inc_by(records);
                self.m.sent_bytes.inc_by(bytes);
                self.m.objects_written.inc();
                self.failing = false;
                tracing::debug!(object = %path.display(), records, bytes, "object written");
            }
            Err(e) => {
                self.error("close", &e);
                for a in &acks {
                    a.fail();
                }
                let _ = std::fs::remove_file(&tmp);
            }
        }
        drop(acks);
    }

    fn close_expired(&mut self) {
        let max_age = self.cfg.flush_interval;
        let expired: Vec<String> = self
            .open
            .iter()
            .filter(|(_, o)| o.opened.elapsed() >= max_age)
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            if let Some(o) = self.open.remove(&k) {
                self.close(o);
            }
        }
    }

    fn close_all(&mut self) {
        let all: Vec<String> = self.open.keys().cloned().collect();
        for k in all {
            if let Some(o) = self.open.remove(&k) {
                self.close(o);
            }
        }
    }

    fn error(&mut self, what: &'static str, e: &std::io::Error) {
        self.m.sink_error(what);
        if !self.failing {
            tracing::warn!(path = %self.cfg.path.display(), error = %e, "file sink cannot {what}; records stay unacknowledged");
            self.failing = true;
        }
    }
}

fn discard(o: Object) {
    for a in &o.acks {
        a.fail();
    }
    let _ = std::fs::remove_file(&o.tmp);
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
