//! `logferry query`: search the archive in S3 through the indexer's documents.
//!
//! 1. list the index partitions (`<index_prefix>dt=YYYY-MM-DD/hour=HH/`) of the
//!    time range only, and read their documents;
//! 2. keep the objects that can match ([`plan::Query::verdict`]): time range,
//!    distinct values, token filter;
//! 3. fetch those in parallel (at most [`FETCH_CONCURRENCY`] at a time),
//!    stream each through the indexer's decoder line by line, and print its
//!    matching records in time order; objects in order of their first record;
//! 4. print a summary on stderr.
//!
//! Closed hours the compactor turned into Parquet are read from there
//! instead ([`parquet`]): an object that a manifest covers is never fetched;
//! its records come from the compacted file, opened when one of its objects
//! can match.

pub mod parquet;
pub mod plan;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use chrono::{DateTime, Utc};
use clap::{ArgGroup, Args, ValueEnum};
use logferry_indexer::doc::{INDEX_VERSION, IndexDoc};
use logferry_indexer::fields::{FieldSet, field_text, parse_fields};
use logferry_indexer::index::{Encoding, Line, MAX_LINE_BYTES, decoder, read_line};
use serde_json::{Map, Value};
use tokio::task::JoinHandle;
use tokio_util::io::SyncIoBridge;

use self::plan::{Query, Verdict, partitions};

/// The matching records of one object: time and the stored line.
type Matches = Vec<(DateTime<Utc>, Vec<u8>)>;

/// A scan's result: the matches and the row groups skipped by statistics.
type Scan = JoinHandle<Result<(Matches, u64), String>>;

/// Something to read: a stored object, or a compacted file.
enum Target {
    Object(Box<IndexDoc>),
    Compacted(self::parquet::CompactedFile),
}

/// Objects fetched at once.
pub const FETCH_CONCURRENCY: usize = 8;
/// Index documents fetched at once.
const DOC_CONCURRENCY: usize = 16;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    /// The records as stored, one JSON object per line.
    Ndjson,
    /// `@timestamp task-or-pod level message`, one line each.
    Text,
}

/// `logferry query` options.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("range").required(true).args(["since", "from"])))]
pub struct QueryArgs {
    /// Bucket the logs (and their index) are in.
    #[arg(long)]
    pub bucket: String,
    /// Where the indexer writes its documents (its INDEX_PREFIX).
    #[arg(long, default_value = "_index/")]
    pub index_prefix: String,
    /// Where the compactor writes Parquet and manifests (its COMPACT_PREFIX).
    #[arg(long, default_value = "compacted/")]
    pub compact_prefix: String,
    /// From this long ago until now (`2h`, `30m`, `1d`).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with_all = ["from", "until"])]
    pub since: Option<std::time::Duration>,
    /// Start of the range (RFC 3339, e.g. 2026-03-07T04:00:00Z).
    #[arg(long, value_parser = parse_time_arg)]
    pub from: Option<DateTime<Utc>>,
    /// End of the range (RFC 3339; default now).
    #[arg(long, value_parser = parse_time_arg, requires = "from")]
    pub until: Option<DateTime<Utc>>,
    /// Only records whose field (dotted path, e.g. kubernetes.pod_name) equals the value; repeatable.
    #[arg(long = "where", value_name = "FIELD=VALUE", value_parser = parse_where)]
    pub wheres: Vec<(String, String)>,
    /// Only records whose text fields (the indexer's TOKEN_FIELDS) contain TEXT as whole words, case-sensitive.
    #[arg(long, value_name = "TEXT")]
    pub grep: Option<String>,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    #[arg(long, value_enum, default_value_t = Output::Ndjson)]
    pub output: Output,
    /// S3 endpoint (LocalStack, VPC endpoint); AWS_ENDPOINT_URL works too.
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// Region; default from the environment or profile.
    #[arg(long)]
    pub region: Option<String>,
}

fn parse_time_arg(s: &str) -> Result<DateTime<Utc>, String> {
    logferry_indexer::doc::parse_time(s).ok_or_else(|| format!("{s:?} is not an RFC 3339 time (2026-03-07T04:00:00Z)"))
}

fn parse_where(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((f, v)) if !f.is_empty() => Ok((f.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not FIELD=VALUE")),
    }
}

/// What the query did, printed on stderr.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub partitions: u64,
    pub index_documents: u64,
    /// Index documents that could not be read (other version, malformed).
    pub unreadable_documents: u64,
    /// Objects whose records' times overlap the range.
    pub objects_in_range: u64,
    pub opened: u64,
    pub skipped_by_index: u64,
    pub records_matched: u64,
    /// Objects that could not be fetched or decoded.
    pub failed: u64,
    /// Compacted (Parquet) files read, and their row groups skipped by statistics.
    pub compacted_files: u64,
    pub row_groups_skipped: u64,
    /// Manifests that could not be read (their objects are read as stored).
    pub unreadable_manifests: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "query: {} objects in range, {} opened, {} skipped by index, {} records matched \
             ({} partitions, {} index documents",
            self.objects_in_range,
            self.opened,
            self.skipped_by_index,
            self.records_matched,
            self.partitions,
            self.index_documents
        )?;
        if self.unreadable_documents > 0 {
            write!(f, ", {} unreadable", self.unreadable_documents)?;
        }
        if self.compacted_files > 0 {
            write!(
                f,
                ", {} compacted files read, {} row groups skipped",
                self.compacted_files, self.row_groups_skipped
            )?;
        }
        if self.unreadable_manifests > 0 {
            write!(f, ", {} manifests unreadable", self.unreadable_manifests)?;
        }
        if self.failed > 0 {
            write!(f, ", {} objects failed", self.failed)?;
        }
        write!(f, ")")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("listing s3://{bucket}/{prefix}: {message}")]
    List {
        bucket: String,
        prefix: String,
        message: String,
    },
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
}

/// Entry point from `main`: runs the query, prints the summary, picks the exit code.
pub fn main(args: QueryArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "logferry: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = rt.block_on(run(&args, &mut out));
    let flushed = out.flush();
    match result {
        Ok(summary) => {
            let _ = writeln!(std::io::stderr(), "{summary}");
            if summary.failed > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        // `logferry query ... | head`: the reader left, which is not an error.
        Err(QueryError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            let _ = flushed;
            let _ = writeln!(std::io::stderr(), "logferry query: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn client(args: &QueryArgs) -> Client {
    let sdk = crate::sinks::aws::sdk_config(args.region.as_deref(), args.endpoint_url.as_deref()).await;
    let endpoint_set = args.endpoint_url.is_some()
        || ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"]
            .iter()
            .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()));
    // Custom endpoints (LocalStack, MinIO) want path-style addressing.
    Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(endpoint_set)
            .build(),
    )
}

/// Runs a query, writing matching records to `out`.
pub async fn run(args: &QueryArgs, out: &mut dyn Write) -> Result<Summary, QueryError> {
    let until = args.until.unwrap_or_else(Utc::now);
    let from = match (args.since, args.from) {
        (Some(since), _) => until - chrono::Duration::from_std(since).unwrap_or(chrono::Duration::MAX),
        (None, Some(from)) => from,
        (None, None) => unreachable!("clap requires --since or --from"),
    };
    let query = Query {
        from,
        until,
        wheres: args.wheres.clone(),
        grep: args.grep.clone(),
    };
    let s3 = client(args).await;
    let mut summary = Summary::default();
    let slash = |p: &str| match p.trim_start_matches('/') {
        p if p.ends_with('/') => p.to_string(),
        p => format!("{p}/"),
    };
    let (prefix, compact_prefix) = (slash(&args.index_prefix), slash(&args.compact_prefix));

    // 1. Index documents and compaction manifests of the range.
    let mut doc_keys = Vec::new();
    let mut manifest_keys = Vec::new();
    for part in partitions(from, until) {
        summary.partitions += 1;
        doc_keys.extend(list(&s3, &args.bucket, &format!("{prefix}{part}")).await?);
        manifest_keys.extend(
            list(&s3, &args.bucket, &format!("{compact_prefix}{part}"))
                .await?
                .into_iter()
                .filter(|k| k.rsplit('/').next().is_some_and(|n| n.starts_with("_manifest-"))),
        );
    }
    summary.index_documents = doc_keys.len() as u64;
    let (docs, unreadable) = fetch_json(
        &s3,
        &args.bucket,
        doc_keys,
        "index document",
        |d: &IndexDoc| d.version,
        INDEX_VERSION,
    )
    .await;
    summary.unreadable_documents += unreadable;
    // A manifest that cannot be read leaves its objects to be read as stored.
    let (manifests, unreadable) = fetch_json(
        &s3,
        &args.bucket,
        manifest_keys,
        "manifest",
        |m: &logferry_indexer::compacted::Manifest| m.version,
        logferry_indexer::compacted::MANIFEST_VERSION,
    )
    .await;
    summary.unreadable_manifests += unreadable;
    // (key, ETag) of every compacted object -> its manifest.
    let mut covered: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, m) in manifests.iter().enumerate() {
        for input in self::parquet::covered(m) {
            covered.insert(input, i);
        }
    }
    // Per manifest: open it?, the earliest time of its objects that can match,
    // how many of its objects have a document here, and --grep's fields.
    let mut open = vec![false; manifests.len()];
    let mut first: Vec<Option<DateTime<Utc>>> = vec![None; manifests.len()];
    let mut documented = vec![0usize; manifests.len()];
    let mut token_fields: Vec<Option<Vec<String>>> = vec![None; manifests.len()];

    // 2. Prune.
    let mut candidates = Vec::new();
    let mut seen = HashSet::new();
    for doc in docs {
        // The same key indexed twice (rewritten object): one copy is enough.
        if !seen.insert((doc.bucket.clone(), doc.key.clone())) {
            continue;
        }
        let compacted = covered.get(&(doc.key.as_str(), doc.etag.as_str())).copied();
        if let Some(m) = compacted {
            documented[m] += 1;
            token_fields[m].get_or_insert_with(|| doc.tokens.fields.clone());
        }
        match query.verdict(&doc) {
            Verdict::OutOfRange => {}
            Verdict::Skip => {
                summary.objects_in_range += 1;
                summary.skipped_by_index += 1;
            }
            Verdict::Open => {
                summary.objects_in_range += 1;
                match compacted {
                    // Counted as opened: its records are read, from the compacted file.
                    Some(m) => {
                        summary.opened += 1;
                        open[m] = true;
                        first[m] = match (first[m], doc.min_time()) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                    }
                    None => candidates.push((doc.min_time(), doc.key.clone(), Target::Object(Box::new(doc)))),
                }
            }
        }
    }
    for (i, m) in manifests.iter().enumerate() {
        // An object without a document here cannot be ruled out.
        if open[i] || documented[i] < self::parquet::covered(m).count() {
            for out in &m.outputs {
                let file = self::parquet::CompactedFile {
                    bucket: m.bucket.clone(),
                    key: out.key.clone(),
                    token_fields: token_fields[i]
                        .clone()
                        .unwrap_or_else(|| logferry_indexer::config::IndexOptions::default().token_fields),
                };
                candidates.push((first[i].or(Some(from)), out.key.clone(), Target::Compacted(file)));
            }
        }
    }
    candidates.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let candidates: Vec<Target> = candidates.into_iter().map(|(_, _, t)| t).collect();
    tracing::debug!(candidates = candidates.len(), "objects and compacted files to open");

    // 3. Fetch, match, print.
    let progress = progress_bar(candidates.len() as u64);
    // (compacted?, its scan)
    let mut pending: VecDeque<(bool, Scan)> = VecDeque::new();
    let mut next = candidates.into_iter();
    let per_object_limit = args.limit.unwrap_or(u64::MAX);
    let mut remaining = args.limit.unwrap_or(u64::MAX);
    let mut text_line = String::new();
    'objects: loop {
        while pending.len() < FETCH_CONCURRENCY {
            let Some(target) = next.next() else { break };
            let (s3, q) = (s3.clone(), query.clone());
            let compacted = matches!(target, Target::Compacted(_));
            pending.push_back((
                compacted,
                tokio::spawn(async move {
                    match target {
                        Target::Object(doc) => scan_object(&s3, &doc, &q, per_object_limit).await.map(|m| (m, 0)),
                        Target::Compacted(f) => scan_compacted(&s3, &f, &q, per_object_limit).await,
                    }
                }),
            ));
        }
        let Some((compacted, handle)) = pending.pop_front() else {
            break;
        };
        if compacted {
            summary.compacted_files += 1;
        } else {
            summary.opened += 1;
        }
        let matches = match handle.await {
            Ok(Ok((m, skipped))) => {
                summary.row_groups_skipped += skipped;
                m
            }
            Ok(Err(e)) => {
                tracing::error!("{e}");
                summary.failed += 1;
                Vec::new()
            }
            Err(e) => {
                tracing::error!("object task failed: {e}");
                summary.failed += 1;
                Vec::new()
            }
        };
        if let Some(p) = &progress {
            p.inc(1);
        }
        for (_, line) in matches {
            if remaining == 0 {
                break 'objects;
            }
            match args.output {
                Output::Ndjson => {
                    out.write_all(&line)
                        .and_then(|()| out.write_all(b"\n"))
                        .map_err(QueryError::Output)?;
                }
                Output::Text => {
                    text_line.clear();
                    format_text(&line, &mut text_line);
                    writeln!(out, "{text_line}").map_err(QueryError::Output)?;
                }
            }
            summary.records_matched += 1;
            remaining -= 1;
        }
        if remaining == 0 {
            break;
        }
    }
    for (_, h) in pending {
        h.abort();
    }
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    Ok(summary)
}

fn progress_bar(len: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() || len == 0 {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {pos}/{len} objects {wide_bar} {elapsed}") {
        bar.set_style(style);
    }
    Some(bar)
}

async fn list(s3: &Client, bucket: &str, prefix: &str) -> Result<Vec<String>, QueryError> {
    let mut keys = Vec::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| QueryError::List {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            message: DisplayErrorContext(&e).to_string(),
        })?;
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key())
                .filter(|k| k.ends_with(".json"))
                .map(str::to_string),
        );
    }
    Ok(keys)
}

async fn get_object(s3: &Client, bucket: &str, key: &str) -> Result<GetObjectOutput, String> {
    s3.get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| format!("GetObject s3://{bucket}/{key}: {}", DisplayErrorContext(&e)))
}

async fn get_bytes(s3: &Client, bucket: &str, key: &str) -> Result<Vec<u8>, String> {
    let body = get_object(s3, bucket, key)
        .await?
        .body
        .collect()
        .await
        .map_err(|e| format!("reading s3://{bucket}/{key}: {e}"))?;
    Ok(body.into_bytes().to_vec())
}

/// Reads the versioned JSON documents at `keys`, [`DOC_CONCURRENCY`] at a
/// time (index documents, compaction manifests). One that cannot be read,
/// or has another version, is warned about and counted in the second value.
async fn fetch_json<T>(
    s3: &Client,
    bucket: &str,
    keys: Vec<String>,
    what: &'static str,
    version: fn(&T) -> u32,
    want: u32,
) -> (Vec<T>, u64)
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    let (mut out, mut unreadable) = (Vec::with_capacity(keys.len()), 0);
    let mut pending = VecDeque::new();
    let mut next = keys.into_iter();
    loop {
        while pending.len() < DOC_CONCURRENCY {
            let Some(key) = next.next() else { break };
            let (s3, bucket) = (s3.clone(), bucket.to_string());
            pending.push_back(tokio::spawn(async move {
                let bytes = get_bytes(&s3, &bucket, &key).await?;
                let doc: T = serde_json::from_slice(&bytes).map_err(|e| format!("{what} s3://{bucket}/{key}: {e}"))?;
                match version(&doc) {
                    v if v == want => Ok(doc),
                    v => Err(format!("{what} s3://{bucket}/{key} has version {v}")),
                }
            }));
        }
        let Some(h) = pending.pop_front() else { break };
        match h.await {
            Ok(Ok(doc)) => out.push(doc),
            Ok(Err(e)) => {
                tracing::warn!("{e}");
                unreadable += 1;
            }
            Err(e) => {
                tracing::warn!("{what} task failed: {e}");
                unreadable += 1;
            }
        }
    }
    (out, unreadable)
}

/// Downloads a compacted file to a temporary file (row groups are read from
/// it, one at a time) and returns its matching records in time order.
async fn scan_compacted(
    s3: &Client,
    f: &self::parquet::CompactedFile,
    q: &Query,
    limit: u64,
) -> Result<(Matches, u64), String> {
    let got = get_object(s3, &f.bucket, &f.key).await?;
    let mut body = SyncIoBridge::new(got.body.into_async_read());
    let (q, fields, name) = (
        q.clone(),
        f.token_fields.clone(),
        format!("s3://{}/{}", f.bucket, f.key),
    );
    tokio::task::spawn_blocking(move || {
        let mut tmp = tempfile::tempfile().map_err(|e| format!("{name}: a temporary file: {e}"))?;
        std::io::copy(&mut body, &mut tmp).map_err(|e| format!("{name}: {e}"))?;
        self::parquet::scan_file(tmp, &q, &fields, limit).map_err(|e| format!("{name}: {e}"))
    })
    .await
    .map_err(|e| format!("scanning task failed: {e}"))?
}

/// Streams one object and returns its matching records (the stored lines),
/// in time order, at most `limit`.
async fn scan_object(s3: &Client, doc: &IndexDoc, q: &Query, limit: u64) -> Result<Matches, String> {
    let (bucket, key) = (&doc.bucket, &doc.key);
    let got = get_object(s3, bucket, key).await?;
    let encoding = Encoding::detect(got.content_encoding(), key);
    let body = SyncIoBridge::new(got.body.into_async_read());
    let (q, fields, name) = (q.clone(), doc.tokens.fields.clone(), format!("s3://{bucket}/{key}"));
    // Only the fields a match looks at are built; the line is printed as stored.
    let wanted = FieldSet::new(
        std::iter::once("@timestamp")
            .chain(q.wheres.iter().map(|(f, _)| f.as_str()))
            .chain(fields.iter().map(String::as_str)),
    );
    tokio::task::spawn_blocking(move || {
        let mut reader =
            std::io::BufReader::with_capacity(256 * 1024, decoder(encoding, body).map_err(|e| format!("{name}: {e}"))?);
        let mut buf = Vec::new();
        let mut matches = Vec::new();
        while let Some(line) = read_line(&mut reader, &mut buf, MAX_LINE_BYTES).map_err(|e| format!("{name}: {e}"))? {
            if line != Line::Complete {
                continue;
            }
            let Ok(record) = parse_fields(&buf, &wanted) else {
                continue;
            };
            if let Some(t) = q.matches(&record, &fields) {
                matches.push((t, buf.clone()));
                if matches.len() as u64 >= limit {
                    break;
                }
            }
        }
        matches.sort_by_key(|(t, _)| *t);
        Ok(matches)
    })
    .await
    .map_err(|e| format!("scanning task failed: {e}"))?
}

/// `--output text`: `@timestamp task-or-pod level message`.
fn format_text(line: &[u8], out: &mut String) {
    let Ok(r) = serde_json::from_slice::<Map<String, Value>>(line) else {
        out.push_str(&String::from_utf8_lossy(line));
        return;
    };
    let get = |f: &str| field_text(&r, f).map(|c| c.into_owned());
    let ts = get("@timestamp").unwrap_or_else(|| "-".into());
    let who = get("ecs_task_id")
        .or_else(|| get("kubernetes.pod_name"))
        .or_else(|| get("hostname"))
        .unwrap_or_else(|| "-".into());
    let level = get("level").unwrap_or_else(|| "-".into());
    let msg = get("log")
        .or_else(|| get("msg"))
        .or_else(|| get("message"))
        .unwrap_or_else(|| String::from_utf8_lossy(line).into_owned());
    use std::fmt::Write as _;
    let _ = write!(out, "{ts} {who} {level} {msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_and_time_arguments() {
        assert_eq!(
            parse_where("kubernetes.pod_name=web=1"),
            Ok(("kubernetes.pod_name".into(), "web=1".into()))
        );
        assert!(parse_where("=x").is_err());
        assert!(parse_where("novalue").is_err());
        assert!(parse_time_arg("2026-03-07T04:00:00Z").is_ok());
        assert!(parse_time_arg("yesterday").is_err());
    }

    #[test]
    fn text_output() {
        let mut s = String::new();
        format_text(
            br#"{"@timestamp":"2026-03-07T04:00:00.000Z","ecs_task_id":"t1","level":"warn","msg":"slow"}"#,
            &mut s,
        );
        assert_eq!(s, "2026-03-07T04:00:00.000Z t1 warn slow");
        s.clear();
        format_text(
            br#"{"@timestamp":"x","kubernetes":{"pod_name":"web"},"log":"hi"}"#,
            &mut s,
        );
        assert_eq!(s, "x web - hi");
    }

    #[test]
    fn summary_line_names_every_count() {
        let s = Summary {
            objects_in_range: 5,
            opened: 2,
            skipped_by_index: 3,
            records_matched: 7,
            ..Summary::default()
        };
        let line = s.to_string();
        assert!(
            line.contains("5 objects in range, 2 opened, 3 skipped by index, 7 records matched"),
            "{line}"
        );
    }
}
