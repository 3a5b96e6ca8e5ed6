//! The compactor: every log object of one closed hour under a source prefix
//! becomes Parquet (zstd, row groups of about 128 MB, page statistics) under
//! `<COMPACT_PREFIX>dt=YYYY-MM-DD/hour=HH/source=<name>/`, so that Athena and
//! DuckDB scan a few columnar files instead of thousands of small NDJSON ones.
//!
//! Safe to crash anywhere and to run again (the crash-point test runs it over
//! a bucket that dies at every write in turn). One run of a partition:
//!
//! 1. **Recover.** A `_pending-<id>.json` without its `_manifest-<id>.json`
//!    is a run that died: its Parquet upload, if incomplete, is aborted
//!    and its Parquet and quarantine objects are deleted (they are
//!    invisible to nobody, so they must not stay). A manifest
//!    without `_done-<id>` is a run that died after its output was complete:
//!    its input action (tag or delete) is finished.
//! 2. **Find the inputs.** The index documents of the hour
//!    (`<INDEX_PREFIX>dt=.../hour=HH/`) name every object the indexer saw
//!    whose first record is in that hour; those under the prefix are taken.
//!    With no index document for the hour, a LIST of the prefix is the
//!    fallback. Inputs that a manifest already covers (same key and ETag)
//!    are skipped, so a late object gets a file of its own later.
//! 3. **Compact.** Inputs sorted by key are cut into groups of at most
//!    `COMPACT_FILE_INPUT_BYTES` stored bytes, one output file each. A
//!    group's id is a hash of its inputs' keys and ETags, so its output
//!    names are the same on every run over the same inputs. Inputs are read
//!    ahead of the decoder ([`ahead`]) and decoded in order. For each group:
//!    `_pending-<id>.json`; then `part-<id>.parquet` (a multipart upload,
//!    invisible until complete, read with `If-Match` on each input's ETag)
//!    and the quarantined lines; then `_manifest-<id>.json` (inputs with
//!    ETags and counts, outputs), written last; then the input action;
//!    then `_done-<id>` and the pending marker's removal. A group that
//!    fails aborts its multipart upload.
//!
//! Nothing is dropped: a line that cannot be a row (not a JSON object, over
//! the line limit) goes to `<QUARANTINE_PREFIX>compact/...` with its reason,
//! and an input that could not be read whole (corrupt, too large, a line too
//! long to keep) is marked incomplete in the manifest and never deleted.
//!
//! Memory: one input line, one batch of rows (8,192 rows or 8 MiB of lines),
//! the open row group's encoded pages (closed at `COMPACT_ROW_GROUP_BYTES`),
//! one upload part (16 MiB), the quarantine buffer (8 MiB) and the inputs
//! read ahead (32 MiB of stored bytes): about 200 MiB at the defaults,
//! whatever the hour's size.
//!
//! One run per partition at a time: two runs of the same hour and source at
//! once would remove each other's pending output, so a run first takes the
//! partition's lease ([`lease`], an S3 conditional write) and a second run
//! stops as busy, touching nothing.

pub mod ahead;
pub mod lease;
pub mod rows;
pub mod store;

pub use crate::compacted::{ColumnType, Declared, InputEntry, MANIFEST_VERSION, Manifest, OutputEntry};

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufReader, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding as ParquetEncoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;
use tokio_util::io::SyncIoBridge;

use crate::config::{CompactConfig, IndexerConfig, InputAction, source_name};
use crate::doc::{IndexDoc, partition};
use crate::index::{Encoding, Limited, Line, MAX_LINE_BYTES, SourceTag, decoder, read_line};
use crate::process::{FailureKind, ProcessError};
use ahead::{READ_AHEAD_BYTES, READ_AHEAD_GETS, ReadAhead};
use rows::Rows;
use store::{Store, read_all};

/// The tag put on inputs with `COMPACT_INPUTS=tag`: `logferry-compacted=true`
/// (a fixed value, so that an S3 lifecycle rule can select them; the
/// manifests say which run compacted which input).
pub const COMPACTED_TAG: (&str, &str) = ("logferry-compacted", "true");
const BATCH_ROWS: usize = 8192;
const BATCH_BYTES: usize = 8 << 20;
const QUARANTINE_OBJECT_BYTES: usize = 8 << 20;
/// Index documents read at once.
const INDEX_READS: usize = 16;

/// One partition to compact: the objects under `prefix` whose hour is `hour`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub bucket: String,
    pub prefix: String,
    /// The hour's start (UTC).
    pub hour: DateTime<Utc>,
    /// The `source=` partition value.
    pub source: String,
}

impl Job {
    /// `compacted/dt=2026-12-03/hour=14/source=logs/`
    pub fn dir(&self, cfg: &CompactConfig) -> String {
        format!("{}{}source={}/", cfg.prefix, partition(self.hour), self.source)
    }

    fn quarantine_dir(&self, quarantine_prefix: &str) -> String {
        format!(
            "{quarantine_prefix}compact/{}source={}/",
            partition(self.hour),
            self.source
        )
    }
}

/// The start of the hour an `hour` field names: `2026-12-03T14`,
/// `2026-12-03T14:00:00Z` or any RFC 3339 time within it.
pub fn parse_hour(s: &str) -> Option<DateTime<Utc>> {
    let t = DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(&format!("{s}:00:00"), "%Y-%m-%dT%H:%M:%S")
                .ok()
                .map(|n| n.and_utc())
        })?;
    Utc.with_ymd_and_hms(t.year(), t.month(), t.day(), t.hour(), 0, 0)
        .single()
}

/// The first path segment of a prefix, as a source name (`logs/2026/...` -> `logs`).
pub fn default_source(prefix: &str) -> String {
    source_name(prefix.split('/').find(|s| !s.is_empty()).unwrap_or("logs"))
}

/// What one run did (the summary log line and the EMF metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Inputs compacted now.
    pub objects: u64,
    /// Inputs a manifest already covered.
    pub covered: u64,
    pub records: u64,
    pub quarantined: u64,
    /// Stored bytes of the inputs.
    pub bytes_in: u64,
    pub uncompressed_bytes: u64,
    /// Parquet bytes written.
    pub bytes_out: u64,
    pub files: u64,
    /// Inputs tagged or deleted (now or finishing a run that died).
    pub inputs_settled: u64,
    /// Outputs of runs that died, removed.
    pub orphans_removed: u64,
    /// Where the inputs came from: `index` or `list`.
    pub found_by: &'static str,
    /// Groups not started because the invocation's deadline was near: the
    /// next run compacts them (the handler reports the run as `Incomplete`).
    pub groups_left: u64,
    /// The lease of another run, which holds the partition: this one did
    /// nothing (the handler reports it as `Busy`, to be retried).
    #[serde(skip)]
    pub busy: Option<lease::Lease>,
}

/// EMF namespace of the compactor's metrics.
pub const EMF_NAMESPACE: &str = "Logferry/Compactor";

impl Summary {
    /// One CloudWatch Embedded Metric Format line (without newline).
    pub fn emf_line(&self, function_name: &str, failed: bool, seconds: f64, timestamp_ms: i64) -> String {
        let counts = [
            ("Objects", self.objects),
            ("Records", self.records),
            ("Quarantined", self.quarantined),
            ("Files", self.files),
            ("Failed", u64::from(failed)),
        ];
        let bytes = [
            ("BytesIn", self.bytes_in),
            ("UncompressedBytes", self.uncompressed_bytes),
            ("BytesOut", self.bytes_out),
        ];
        let mut metrics: Vec<serde_json::Value> = Vec::new();
        let mut line = serde_json::Map::new();
        for (name, v) in counts {
            metrics.push(serde_json::json!({"Name": name, "Unit": "Count"}));
            line.insert(name.into(), v.into());
        }
        for (name, v) in bytes {
            metrics.push(serde_json::json!({"Name": name, "Unit": "Bytes"}));
            line.insert(name.into(), v.into());
        }
        metrics.push(serde_json::json!({"Name": "Seconds", "Unit": "Seconds"}));
        line.insert("Seconds".into(), seconds.into());
        line.insert("FunctionName".into(), function_name.into());
        line.insert(
            "_aws".into(),
            serde_json::json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{"Namespace": EMF_NAMESPACE, "Dimensions": [["FunctionName"]], "Metrics": metrics}],
            }),
        );
        serde_json::Value::Object(line).to_string()
    }
}

/// A candidate input.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Candidate {
    key: String,
    etag: String,
    size: u64,
}

fn internal(op: &'static str, job: &Job, key: &str, e: impl std::fmt::Display) -> ProcessError {
    ProcessError::new(FailureKind::Internal, op, &job.bucket, key, e.to_string())
}

/// The id of a group: the first 20 hex digits of SHA-256 over its inputs.
fn group_id(inputs: &[Candidate]) -> String {
    let mut h = Sha256::new();
    for c in inputs {
        h.update(c.key.as_bytes());
        h.update([0]);
        h.update(c.etag.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().take(10).map(|b| format!("{b:02x}")).collect()
}

/// Cuts `inputs` (sorted) into consecutive groups of at most `cap` stored
/// bytes (an input bigger than `cap` is a group of its own).
fn groups(inputs: Vec<Candidate>, cap: u64) -> Vec<Vec<Candidate>> {
    let mut out: Vec<Vec<Candidate>> = Vec::new();
    let mut size = 0;
    for c in inputs {
        match out.last_mut() {
            Some(g) if size + c.size <= cap => {
                size += c.size;
                g.push(c);
            }
            _ => {
                size = c.size;
                out.push(vec![c]);
            }
        }
    }
    out
}

/// Names in a partition directory, by id.
#[derive(Default, Debug)]
struct Dir {
    manifests: BTreeSet<String>,
    pending: BTreeSet<String>,
    done: BTreeSet<String>,
    /// id -> Parquet keys.
    parts: BTreeMap<String, Vec<String>>,
}

fn read_dir(dir: &str, keys: impl IntoIterator<Item = String>) -> Dir {
    let mut d = Dir::default();
    for key in keys {
        let Some(name) = key.strip_prefix(dir) else { continue };
        if let Some(id) = name.strip_prefix("_manifest-").and_then(|n| n.strip_suffix(".json")) {
            d.manifests.insert(id.to_string());
        } else if let Some(id) = name.strip_prefix("_pending-").and_then(|n| n.strip_suffix(".json")) {
            d.pending.insert(id.to_string());
        } else if let Some(id) = name.strip_prefix("_done-") {
            d.done.insert(id.to_string());
        } else if let Some(id) = name.strip_prefix("part-").and_then(|n| n.split(['-', '.']).next()) {
            d.parts.entry(id.to_string()).or_default().push(key.clone());
        }
    }
    d
}

/// Time kept in hand at the deadline: a group starts only when at least this
/// much, and twice the longest group so far, remain.
const DEADLINE_MARGIN: std::time::Duration = std::time::Duration::from_secs(60);

/// Compacts one partition (see the module doc for the steps) under its
/// lease, claimed as `claim`; returns a summary with `busy` set, having
/// done nothing, when another run holds it. With a `deadline` (the
/// Lambda's), groups stop starting when it is near; the first group always
/// runs.
pub async fn compact<S: Store>(
    store: Arc<S>,
    cfg: &IndexerConfig,
    job: &Job,
    deadline: Option<std::time::Instant>,
    claim: &lease::Claim,
) -> Result<Summary, ProcessError> {
    let dir = job.dir(&cfg.compact);
    if let Err(busy) = lease::take(&*store, &job.bucket, &dir, claim).await? {
        tracing::warn!(partition = %dir, run = %busy.run, until = %busy.until, "another run holds the partition; this one stops");
        return Ok(Summary {
            busy: Some(busy),
            ..Summary::default()
        });
    }
    let result = compact_held(store.clone(), cfg, job, deadline).await;
    // Given up however the run ended (a killed run's lease lapses instead).
    // Failing to give it up costs a retry's wait, not the run's work.
    if let Err(e) = lease::release(&*store, &job.bucket, &dir).await {
        tracing::warn!(partition = %dir, error = %e, "the partition's lease could not be removed; it lapses at the run's deadline");
    }
    result
}

async fn compact_held<S: Store>(
    store: Arc<S>,
    cfg: &IndexerConfig,
    job: &Job,
    deadline: Option<std::time::Instant>,
) -> Result<Summary, ProcessError> {
    let cc = &cfg.compact;
    let mut summary = Summary::default();
    let dir = job.dir(cc);
    let qdir = job.quarantine_dir(&cfg.quarantine_prefix);
    let listing = store.list(&job.bucket, &dir).await?;
    let d = read_dir(&dir, listing.into_iter().map(|l| l.key));

    // 1. Recover.
    let dead: Vec<&String> = d.pending.iter().filter(|id| !d.manifests.contains(*id)).collect();
    if !dead.is_empty() {
        let quarantined = store.list(&job.bucket, &qdir).await?;
        for id in dead {
            let mut orphans: Vec<String> = d.parts.get(id).cloned().unwrap_or_default();
            orphans.extend(
                quarantined
                    .iter()
                    .filter(|l| l.key[qdir.len()..].starts_with(&format!("{id}-")))
                    .map(|l| l.key.clone()),
            );
            summary.orphans_removed += orphans.len() as u64;
            tracing::warn!(partition = %dir, id = %id, objects = orphans.len(), "removing the output of a run that did not finish");
            // Its Parquet upload, if it was killed mid-way (a group that
            // failed aborted its own). Best effort: without the permissions
            // the bucket's lifecycle rule still removes it.
            if let Err(e) = abort_uploads(&*store, &job.bucket, &format!("{dir}part-{id}")).await {
                tracing::warn!(partition = %dir, id = %id, error = %e, "the incomplete upload of a run that did not finish is left to the lifecycle rule");
            }
            store.delete(&job.bucket, &orphans).await?;
            store.delete(&job.bucket, &[format!("{dir}_pending-{id}.json")]).await?;
        }
    }
    // A run that died between its `_done` marker and removing its pending one.
    for id in d.pending.iter().filter(|id| d.done.contains(*id)) {
        store.delete(&job.bucket, &[format!("{dir}_pending-{id}.json")]).await?;
    }
    let mut covered: BTreeSet<(String, String)> = BTreeSet::new();
    for id in &d.manifests {
        let key = format!("{dir}_manifest-{id}.json");
        let Some(bytes) = read_all(&*store, &job.bucket, &key).await? else {
            continue;
        };
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| internal("read manifest", job, &key, e))?;
        covered.extend(m.inputs.iter().map(|i| (i.key.clone(), i.etag.clone())));
        if !d.done.contains(id) {
            summary.inputs_settled += settle(&*store, cc, job, &m).await?;
            finish(&*store, job, &dir, id).await?;
        }
    }

    // 2. Find the inputs.
    let (found, by) = find_inputs(&store, cfg, job).await?;
    summary.found_by = by;
    let mut inputs = Vec::new();
    for c in found {
        if covered.contains(&(c.key.clone(), c.etag.clone())) {
            summary.covered += 1;
        } else {
            inputs.push(c);
        }
    }
    // Two versions of a key (it was rewritten) both stay: the stale one reads as `gone`.
    inputs.sort_by(|a, b| (&a.key, &a.etag).cmp(&(&b.key, &b.etag)));
    inputs.dedup_by(|a, b| a.key == b.key && a.etag == b.etag);

    // 3. Compact, group by group.
    let all = groups(inputs, cc.file_input_bytes);
    let count = all.len() as u64;
    let mut longest = std::time::Duration::ZERO;
    for (n, group) in all.into_iter().enumerate() {
        let started = std::time::Instant::now();
        if n > 0
            && let Some(d) = deadline
            && d.saturating_duration_since(started) < DEADLINE_MARGIN.max(2 * longest)
        {
            summary.groups_left = count - n as u64;
            tracing::warn!(partition = %dir, left = summary.groups_left, "the invocation's deadline is near: the rest is left to the next run");
            break;
        }
        let id = group_id(&group);
        let pending = format!("{dir}_pending-{id}.json");
        let names: Vec<&str> = group.iter().map(|c| c.key.as_str()).collect();
        store
            .put(
                &job.bucket,
                &pending,
                serde_json::to_vec(&names).expect("strings serialize"),
            )
            .await?;
        let out_key = format!("{dir}part-{id}.parquet");
        let q_base = format!("{qdir}{id}");
        let (st, j, rg, pb) = (store.clone(), job.clone(), cc.row_group_bytes, cc.part_bytes);
        let (max_bytes, declared) = (cfg.index.max_decompressed_bytes, cc.columns.clone());
        let handle = Handle::current();
        // The Parquet upload while it is started and not completed.
        let open = Arc::new(std::sync::Mutex::new(None));
        let (o, key) = (open.clone(), out_key.clone());
        let written = tokio::task::spawn_blocking(move || {
            encode_group(
                &handle, &st, &j, &group, &key, &q_base, rg, pb, max_bytes, &declared, &o,
            )
        })
        .await
        .map_err(|e| internal("compact", job, &dir, format!("the compaction task died: {e}")))?;
        let written = match written {
            Ok(w) => w,
            Err(e) => {
                // A failed group aborts its upload (one killed before this
                // is left to the next run's recovery).
                let upload = open.lock().expect("not poisoned").take();
                if let Some(upload) = upload
                    && let Err(a) = store.upload_abort(&job.bucket, &out_key, &upload).await
                {
                    tracing::warn!(key = %out_key, error = %a, "the failed group's upload could not be aborted");
                }
                return Err(e);
            }
        };
        let m = Manifest {
            version: MANIFEST_VERSION,
            id: id.clone(),
            bucket: job.bucket.clone(),
            prefix: job.prefix.clone(),
            hour: job.hour.format("%Y-%m-%dT%H").to_string(),
            source: job.source.clone(),
            records: written.inputs.iter().map(|i| i.records).sum(),
            quarantined: written.inputs.iter().map(|i| i.quarantined).sum(),
            uncompressed_bytes: written.inputs.iter().map(|i| i.uncompressed_bytes).sum(),
            inputs: written.inputs,
            outputs: written.outputs,
            quarantine: written.quarantine,
        };
        let mut body = serde_json::to_vec_pretty(&m).expect("a manifest serializes");
        body.push(b'\n');
        store
            .put(&job.bucket, &format!("{dir}_manifest-{id}.json"), body)
            .await?;
        summary.objects += m.inputs.len() as u64;
        summary.records += m.records;
        summary.quarantined += m.quarantined;
        summary.uncompressed_bytes += m.uncompressed_bytes;
        summary.bytes_in += m.inputs.iter().map(|i| i.size).sum::<u64>();
        summary.bytes_out += m.outputs.iter().map(|o| o.bytes).sum::<u64>();
        summary.files += m.outputs.len() as u64;
        summary.inputs_settled += settle(&*store, cc, job, &m).await?;
        finish(&*store, job, &dir, &id).await?;
        longest = longest.max(started.elapsed());
    }
    Ok(summary)
}

/// Aborts the incomplete multipart uploads of keys under `prefix`.
async fn abort_uploads<S: Store>(store: &S, bucket: &str, prefix: &str) -> Result<(), ProcessError> {
    for (key, upload) in store.uploads_list(bucket, prefix).await? {
        store.upload_abort(bucket, &key, &upload).await?;
    }
    Ok(())
}

/// Applies the input action to a manifest's complete inputs.
async fn settle<S: Store>(store: &S, cc: &CompactConfig, job: &Job, m: &Manifest) -> Result<u64, ProcessError> {
    let done: Vec<String> = m.inputs.iter().filter(|i| i.complete).map(|i| i.key.clone()).collect();
    match cc.inputs {
        InputAction::Keep => return Ok(0),
        InputAction::Delete => store.delete(&job.bucket, &done).await?,
        InputAction::Tag => {
            for k in &done {
                store.tag(&job.bucket, k, COMPACTED_TAG).await?;
            }
        }
    }
    Ok(done.len() as u64)
}

async fn finish<S: Store>(store: &S, job: &Job, dir: &str, id: &str) -> Result<(), ProcessError> {
    store.put(&job.bucket, &format!("{dir}_done-{id}"), Vec::new()).await?;
    store.delete(&job.bucket, &[format!("{dir}_pending-{id}.json")]).await
}

/// The hour's objects under the prefix: from the index, else by LIST.
async fn find_inputs<S: Store>(
    store: &Arc<S>,
    cfg: &IndexerConfig,
    job: &Job,
) -> Result<(Vec<Candidate>, &'static str), ProcessError> {
    let index_dir = format!("{}{}", cfg.index_prefix, partition(job.hour));
    let docs = store.list(&job.bucket, &index_dir).await?;
    if !docs.is_empty() {
        let mut out = Vec::new();
        for chunk in docs.chunks(INDEX_READS) {
            let mut set = tokio::task::JoinSet::new();
            for l in chunk {
                let (st, bucket, key) = (store.clone(), job.bucket.clone(), l.key.clone());
                set.spawn(async move { read_all(&*st, &bucket, &key).await.map(|b| (key, b)) });
            }
            while let Some(r) = set.join_next().await {
                let (key, bytes) = r.map_err(|e| internal("read index", job, &index_dir, e))??;
                let Some(bytes) = bytes else { continue };
                match serde_json::from_slice::<IndexDoc>(&bytes) {
                    Ok(doc)
                        if doc.bucket == job.bucket
                            && doc.key.starts_with(&job.prefix)
                            && !cfg.is_own_key(&doc.key) =>
                    {
                        out.push(Candidate {
                            key: doc.key,
                            etag: doc.etag,
                            size: doc.size,
                        })
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(key = %key, error = %e, "an index document that cannot be read is skipped")
                    }
                }
            }
        }
        return Ok((out, "index"));
    }
    let listed = store.list(&job.bucket, &job.prefix).await?;
    let out = listed
        .into_iter()
        .filter(|l| !cfg.is_own_key(&l.key))
        .map(|l| Candidate {
            key: l.key,
            etag: l.etag,
            size: l.size,
        })
        .collect();
    Ok((out, "list"))
}

/// What one group wrote.
struct Written {
    inputs: Vec<InputEntry>,
    outputs: Vec<OutputEntry>,
    quarantine: Vec<String>,
}

/// Streams a Parquet file into a multipart upload, one part at a time.
struct PartWriter<'s, S> {
    handle: &'s Handle,
    store: &'s S,
    bucket: &'s str,
    key: &'s str,
    buf: Vec<u8>,
    part_bytes: usize,
    upload: Option<String>,
    parts: Vec<(i32, String)>,
    written: u64,
    /// The S3 error behind an `io::Error` the writer returned.
    failed: Option<ProcessError>,
    /// The upload started and not completed, to abort if the group fails.
    open: &'s std::sync::Mutex<Option<String>>,
}

impl<S: Store> PartWriter<'_, S> {
    fn send_part(&mut self) -> Result<(), ProcessError> {
        let upload = match &self.upload {
            Some(u) => u.clone(),
            None => {
                let u = self.handle.block_on(self.store.upload_start(self.bucket, self.key))?;
                self.upload = Some(u.clone());
                *self.open.lock().expect("not poisoned") = Some(u.clone());
                u
            }
        };
        let n = self.parts.len() as i32 + 1;
        let body = std::mem::take(&mut self.buf);
        let etag = self
            .handle
            .block_on(self.store.upload_part(self.bucket, self.key, &upload, n, body))?;
        self.parts.push((n, etag));
        Ok(())
    }

    /// Completes the object (a plain PUT when it fits in one part).
    fn close(mut self) -> Result<u64, ProcessError> {
        if self.upload.is_none() {
            let body = std::mem::take(&mut self.buf);
            self.handle.block_on(self.store.put(self.bucket, self.key, body))?;
        } else {
            if !self.buf.is_empty() {
                self.send_part()?;
            }
            let upload = self.upload.take().expect("started");
            let parts = std::mem::take(&mut self.parts);
            self.handle
                .block_on(self.store.upload_complete(self.bucket, self.key, &upload, parts))?;
            *self.open.lock().expect("not poisoned") = None;
        }
        Ok(self.written)
    }
}

impl<S: Store> Write for PartWriter<'_, S> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // At most one part is held: a row group arrives in one big write.
        let n = data.len().min(self.part_bytes - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.written += n as u64;
        if self.buf.len() >= self.part_bytes {
            self.send_part().map_err(|e| {
                let io = io::Error::other(e.to_string());
                self.failed = Some(e);
                io
            })?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Quarantined lines, gzip NDJSON, in objects of about 8 MiB.
struct Quarantine<'s, S> {
    handle: &'s Handle,
    store: &'s S,
    bucket: &'s str,
    base: &'s str,
    gz: flate2::write::GzEncoder<Vec<u8>>,
    lines: u64,
    keys: Vec<String>,
}

impl<S: Store> Quarantine<'_, S> {
    fn add(&mut self, entry: serde_json::Value) -> Result<(), ProcessError> {
        let mut line = serde_json::to_vec(&entry).expect("a value serializes");
        line.push(b'\n');
        self.gz.write_all(&line).expect("writing to a Vec");
        self.lines += 1;
        if self.gz.get_ref().len() >= QUARANTINE_OBJECT_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ProcessError> {
        if self.lines == 0 {
            return Ok(());
        }
        let gz = std::mem::replace(&mut self.gz, new_gz());
        let body = gz.finish().expect("writing to a Vec");
        let key = format!("{}-{}.ndjson.gz", self.base, self.keys.len());
        self.handle.block_on(self.store.put(self.bucket, &key, body))?;
        self.keys.push(key);
        self.lines = 0;
        Ok(())
    }
}

fn new_gz() -> flate2::write::GzEncoder<Vec<u8>> {
    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default())
}

fn writer_properties(row_group_bytes: u64, declared: &[Declared]) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("a valid level")))
        .set_statistics_enabled(EnabledStatistics::Page)
        // Row groups close by encoded size, as `parquet.block.size` does, not by count.
        .set_max_row_group_row_count(None)
        .set_max_row_group_bytes(Some(row_group_bytes.try_into().unwrap_or(usize::MAX)))
        .set_created_by(format!("logferry-compactor (row groups of {row_group_bytes} bytes)"))
        // Times rise through a file: deltas take about a byte a row where a
        // dictionary of unique instants takes eight.
        .set_column_dictionary_enabled(ColumnPath::from(rows::TIMESTAMP_COLUMN), false)
        .set_column_encoding(
            ColumnPath::from(rows::TIMESTAMP_COLUMN),
            ParquetEncoding::DELTA_BINARY_PACKED,
        )
        // `rest` is nearly unique per row: a dictionary would only cost hashing.
        .set_column_dictionary_enabled(ColumnPath::from(rows::REST), false);
    // Free text (a message with a user id or a path in it) is rarely one of a
    // few values: zstd at level 9 takes 6% off it for about 1 s of CPU in
    // 13 on the benchmark's hour. Levels above 9 cost far more; the other
    // columns gain little from any.
    for name in ["log", "message", "msg"] {
        b = b.set_column_compression(
            ColumnPath::from(name),
            Compression::ZSTD(ZstdLevel::try_new(9).expect("a valid level")),
        );
    }
    // Declared columns keep the dictionary (a status, a route), but an id
    // overflows it: a string column gives up at 64 KiB of dictionary. What
    // follows is better than PLAIN: string bytes without their length
    // prefixes in between (17.7 against 20.5 bytes a row for two 64-bit hex
    // ids), doubles split by byte, integers as deltas.
    for d in declared {
        let col = || ColumnPath::from(d.name.as_str());
        match d.ty {
            ColumnType::String => {
                b = b
                    .set_column_encoding(col(), ParquetEncoding::DELTA_LENGTH_BYTE_ARRAY)
                    .set_column_dictionary_page_size_limit(col(), 64 << 10);
            }
            ColumnType::Double => b = b.set_column_encoding(col(), ParquetEncoding::BYTE_STREAM_SPLIT),
            ColumnType::Bigint => b = b.set_column_encoding(col(), ParquetEncoding::DELTA_BINARY_PACKED),
            ColumnType::Boolean => {}
        }
    }
    b.build()
}

/// Reads a group's inputs into one Parquet file (runs on a blocking thread).
/// `open` holds the Parquet upload while it is started and not completed,
/// for the caller to abort if the group fails.
#[allow(clippy::too_many_arguments)]
fn encode_group<S: Store>(
    handle: &Handle,
    store: &Arc<S>,
    job: &Job,
    group: &[Candidate],
    out_key: &str,
    q_base: &str,
    row_group_bytes: u64,
    part_bytes: usize,
    max_decompressed: u64,
    declared: &[Declared],
    open: &std::sync::Mutex<Option<String>>,
) -> Result<Written, ProcessError> {
    let mut ahead = ReadAhead::new(
        handle,
        store.clone(),
        &job.bucket,
        group.to_vec(),
        READ_AHEAD_GETS,
        READ_AHEAD_BYTES,
    );
    let store = &**store;
    let sink = PartWriter {
        handle,
        store,
        bucket: &job.bucket,
        key: out_key,
        buf: Vec::new(),
        part_bytes,
        upload: None,
        parts: Vec::new(),
        written: 0,
        failed: None,
        open,
    };
    let schema = Rows::schema(declared);
    let mut writer = ArrowWriter::try_new(sink, schema, Some(writer_properties(row_group_bytes, declared)))
        .map_err(|e| internal("parquet", job, out_key, e))?;
    let mut q = Quarantine {
        handle,
        store,
        bucket: &job.bucket,
        base: q_base,
        gz: new_gz(),
        lines: 0,
        keys: Vec::new(),
    };
    let mut rows = Rows::new(declared);
    let mut inputs = Vec::with_capacity(group.len());
    let mut total_rows = 0u64;

    // A write error from the Parquet writer: the S3 error behind it, if any.
    let write_err = |w: &mut ArrowWriter<PartWriter<S>>, e: parquet::errors::ParquetError| -> ProcessError {
        w.inner_mut()
            .failed
            .take()
            .unwrap_or_else(|| internal("parquet", job, out_key, e))
    };

    for c in group {
        let mut entry = InputEntry {
            key: c.key.clone(),
            etag: c.etag.clone(),
            size: c.size,
            records: 0,
            quarantined: 0,
            uncompressed_bytes: 0,
            complete: true,
            error: None,
        };
        // Held until this input is decoded: its share of the read-ahead budget.
        let mut read = ahead.next(c)?;
        let Some(got) = read.got.take() else {
            tracing::warn!(key = %c.key, "input gone or replaced before it was read; not compacted");
            entry.complete = false;
            entry.error = Some("gone".into());
            inputs.push(entry);
            continue;
        };
        let failed = Arc::new(AtomicBool::new(false));
        let body = SourceTag {
            inner: SyncIoBridge::new_with_handle(got.body, handle.clone()),
            failed: failed.clone(),
        };
        let encoding = Encoding::detect(got.content_encoding.as_deref(), &c.key);
        let mut limited = Limited::new(
            decoder(encoding, body).map_err(|e| internal("decode", job, &c.key, e))?,
            max_decompressed,
        );
        let mut reader = BufReader::with_capacity(256 << 10, &mut limited);
        let mut line = Vec::new();
        let mut n = 0u64;
        loop {
            let got = read_line(&mut reader, &mut line, MAX_LINE_BYTES);
            n += 1;
            match got {
                Ok(None) => break,
                Ok(Some(Line::TooLong)) => {
                    // Not kept: the input stays where it is (never deleted).
                    entry.complete = false;
                    entry
                        .error
                        .get_or_insert_with(|| format!("line {n} is over {MAX_LINE_BYTES} bytes"));
                    entry.quarantined += 1;
                    q.add(serde_json::json!({"reason": "too_long", "key": c.key, "etag": c.etag, "line": n}))?;
                }
                Ok(Some(Line::Complete)) => {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match rows.push(&line) {
                        Ok(()) => entry.records += 1,
                        Err(reason) => {
                            entry.quarantined += 1;
                            let mut e = serde_json::json!({
                                "reason": reason.as_str(), "key": c.key, "etag": c.etag, "line": n,
                                "text": String::from_utf8_lossy(&line),
                            });
                            if std::str::from_utf8(&line).is_err() {
                                use base64::Engine as _;
                                e["base64"] = base64::engine::general_purpose::STANDARD.encode(&line).into();
                            }
                            q.add(e)?;
                        }
                    }
                    if rows.len() >= BATCH_ROWS || rows.bytes() >= BATCH_BYTES {
                        total_rows += rows.len() as u64;
                        writer.write(&rows.finish()).map_err(|e| write_err(&mut writer, e))?;
                    }
                }
                Err(e) if failed.load(Ordering::Relaxed) => {
                    return Err(ProcessError::new(
                        FailureKind::S3Read,
                        "GetObject (body)",
                        &job.bucket,
                        &c.key,
                        e.to_string(),
                    ));
                }
                Err(e) => {
                    // Corrupt or too large: the rows before stay; the input is kept.
                    tracing::warn!(key = %c.key, error = %e, "input cannot be read to its end; kept, marked incomplete");
                    entry.complete = false;
                    entry.error = Some(e.to_string());
                    break;
                }
            }
        }
        drop(reader);
        entry.uncompressed_bytes = limited.bytes_read();
        inputs.push(entry);
    }
    if !rows.is_empty() {
        total_rows += rows.len() as u64;
        writer.write(&rows.finish()).map_err(|e| write_err(&mut writer, e))?;
    }
    q.flush()?;
    let mut outputs = Vec::new();
    if total_rows > 0 {
        writer.flush().map_err(|e| write_err(&mut writer, e))?;
        let row_groups = writer.flushed_row_groups().len() as u64;
        // Writes the footer.
        let sink = writer.into_inner().map_err(|e| internal("parquet", job, out_key, e))?;
        let bytes = sink.close()?;
        outputs.push(OutputEntry {
            key: out_key.to_string(),
            records: total_rows,
            bytes,
            row_groups,
        });
    }
    Ok(Written {
        inputs,
        outputs,
        quarantine: q.keys,
    })
}

/// The partitions a scheduled run compacts: every configured source, for
/// the last hour that ended at least `delay` before `now` and the
/// `hours - 1` before it (oldest first).
pub fn scheduled_jobs(cc: &CompactConfig, now: DateTime<Utc>) -> Vec<Job> {
    let Some(bucket) = &cc.bucket else { return Vec::new() };
    let Some(last) = parse_hour(&(now - cc.delay).to_rfc3339()).map(|h| h - chrono::Duration::hours(1)) else {
        return Vec::new();
    };
    (0..i64::from(cc.hours.max(1)))
        .rev()
        .map(|back| last - chrono::Duration::hours(back))
        .flat_map(|hour| {
            cc.sources.iter().map(move |(name, template)| Job {
                bucket: bucket.clone(),
                prefix: hour.format(template).to_string(),
                hour,
                source: name.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
