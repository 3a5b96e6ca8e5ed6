//! The streaming indexer: compressed bytes in, index statistics out. Pure (no
//! AWS): it reads any `Read`, so the Lambda feeds it an S3 body, the benchmark
//! a local file and `logferry query` reuses its decoder and line reader.
//!
//! Memory is bounded whatever the object: one read buffer, one line (at most
//! [`MAX_LINE_BYTES`]), the parsed record, the distinct values (capped) and
//! the token filter ([`crate::bloom::MAX_BLOCKS`] blocks of 512 bits).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::bloom::{Bloom, MAX_BLOCKS, hashes_for};
use crate::config::IndexOptions;
use crate::doc::{Distinct, INDEX_VERSION, IndexDoc, QuarantineReason, TokenIndex, format_time, parse_time};
use crate::fields::{FieldSet, field_text, indexable, parse_fields, tokens};

/// Longest line read; a longer one counts as a bad line (its bytes are read
/// and dropped, never held).
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;
/// Distinct `level` values counted; others are counted under `_other`.
pub const MAX_LEVELS: usize = 32;
const READ_BUFFER: usize = 256 * 1024;

/// How an object is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    Zstd,
    None,
}

impl Encoding {
    /// From `Content-Encoding` when it names gzip or zstd, else from the key's
    /// extension (`.gz`, `.zst`), else none.
    pub fn detect(content_encoding: Option<&str>, key: &str) -> Encoding {
        match content_encoding.map(|c| c.trim().to_ascii_lowercase()).as_deref() {
            Some("gzip" | "x-gzip") => return Encoding::Gzip,
            Some("zstd") => return Encoding::Zstd,
            _ => {}
        }
        if key.ends_with(".gz") || key.ends_with(".gzip") {
            Encoding::Gzip
        } else if key.ends_with(".zst") || key.ends_with(".zstd") {
            Encoding::Zstd
        } else {
            Encoding::None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Zstd => "zstd",
            Encoding::None => "none",
        }
    }
}

/// A decompressing reader over `r` (gzip: every member of a multi-member file).
pub fn decoder<'a, R: Read + 'a>(encoding: Encoding, r: R) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match encoding {
        Encoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
            READ_BUFFER,
            r,
        ))),
        Encoding::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
        Encoding::None => Box::new(r),
    })
}

/// Remembers that the reader below failed, so a network error while
/// streaming is told apart from a corrupt stream (retry, not quarantine;
/// for the compactor: retry, not an incomplete input).
pub(crate) struct SourceTag<R> {
    pub(crate) inner: R,
    pub(crate) failed: Arc<AtomicBool>,
}

impl<R: Read> Read for SourceTag<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .read(buf)
            .inspect_err(|_| self.failed.store(true, Ordering::Relaxed))
    }
}

/// Counts decompressed bytes and fails past a limit.
pub struct Limited<R> {
    inner: R,
    read: u64,
    limit: u64,
    exceeded: Arc<AtomicBool>,
}

impl<R> Limited<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        Limited {
            inner,
            read: 0,
            limit,
            exceeded: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn bytes_read(&self) -> u64 {
        self.read
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            self.exceeded.store(true, Ordering::Relaxed);
            return Err(io::Error::other(format!(
                "decompressed size exceeds {} bytes",
                self.limit
            )));
        }
        Ok(n)
    }
}

/// One line from [`read_line`].
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// In the buffer, without its `\n` (nor a `\r` before it).
    Complete,
    /// Longer than the limit: dropped.
    TooLong,
}

/// Reads the next line into `buf` (cleared first), holding at most `max`
/// bytes. `None` at the end of input. A last line without `\n` counts.
pub fn read_line<R: BufRead>(r: &mut R, buf: &mut Vec<u8>, max: usize) -> io::Result<Option<Line>> {
    buf.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            if !any {
                return Ok(None);
            }
            break;
        }
        any = true;
        let (chunk, used, done) = match memchr::memchr(b'\n', avail) {
            Some(i) => (&avail[..i], i + 1, true),
            None => (avail, avail.len(), false),
        };
        if !too_long {
            if buf.len() + chunk.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        r.consume(used);
        if done {
            break;
        }
    }
    if too_long {
        return Ok(Some(Line::TooLong));
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(Line::Complete))
}

/// What indexing found; with the object's identity it becomes an [`IndexDoc`].
#[derive(Clone, Debug, PartialEq)]
pub struct IndexStats {
    pub encoding: Encoding,
    pub lines: u64,
    pub records: u64,
    pub bad_lines: u64,
    pub records_without_time: u64,
    pub uncompressed_bytes: u64,
    pub min_time: Option<DateTime<Utc>>,
    pub max_time: Option<DateTime<Utc>>,
    pub levels: BTreeMap<String, u64>,
    pub distinct: BTreeMap<String, Distinct>,
    pub token_fields: Vec<String>,
    pub tokens: crate::bloom::BloomDoc,
}

impl IndexStats {
    /// The index document of object `bucket`/`key` with `etag` and stored `size`.
    pub fn into_doc(self, bucket: &str, key: &str, etag: &str, size: u64) -> IndexDoc {
        IndexDoc {
            version: INDEX_VERSION,
            bucket: bucket.to_string(),
            key: key.to_string(),
            etag: etag.to_string(),
            size,
            encoding: self.encoding.as_str().to_string(),
            records: self.records,
            uncompressed_bytes: self.uncompressed_bytes,
            bad_lines: self.bad_lines,
            records_without_time: self.records_without_time,
            min_time: self.min_time.map(format_time),
            max_time: self.max_time.map(format_time),
            levels: self.levels,
            distinct: self.distinct,
            tokens: TokenIndex {
                fields: self.token_fields,
                filter: self.tokens,
            },
        }
    }
}

/// Why an object could not be indexed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Reading the stored bytes failed (network): retry later.
    #[error("reading the object failed: {0}")]
    Source(#[source] io::Error),
    /// The object itself is bad: quarantine it.
    #[error("{message}")]
    Bad {
        reason: QuarantineReason,
        message: String,
        lines: u64,
        bad_lines: u64,
        uncompressed_bytes: u64,
    },
}

struct DistinctAcc {
    values: BTreeSet<String>,
    complete: bool,
}

/// Accumulates the statistics of one object, record by record.
struct Builder<'o> {
    opts: &'o IndexOptions,
    /// The fields read from each record (the others are only validated).
    wanted: FieldSet,
    lines: u64,
    records: u64,
    bad_lines: u64,
    no_time: u64,
    min: Option<DateTime<Utc>>,
    max: Option<DateTime<Utc>>,
    levels: BTreeMap<String, u64>,
    distinct: Vec<DistinctAcc>,
    bloom: Bloom,
    token_items: u64,
}

impl<'o> Builder<'o> {
    fn new(opts: &'o IndexOptions) -> Self {
        let wanted = ["@timestamp", "level"]
            .into_iter()
            .chain(opts.distinct_fields.iter().map(String::as_str))
            .chain(opts.token_fields.iter().map(String::as_str));
        Builder {
            opts,
            wanted: FieldSet::new(wanted),
            lines: 0,
            records: 0,
            bad_lines: 0,
            no_time: 0,
            min: None,
            max: None,
            levels: BTreeMap::new(),
            distinct: opts
                .distinct_fields
                .iter()
                .map(|_| DistinctAcc {
                    values: BTreeSet::new(),
                    complete: true,
                })
                .collect(),
            bloom: Bloom::new(MAX_BLOCKS, hashes_for(opts.bloom_fp_rate)),
            token_items: 0,
        }
    }

    fn add_line(&mut self, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return; // blank lines are neither records nor errors
        }
        self.lines += 1;
        let Ok(record) = parse_fields(line, &self.wanted) else {
            self.bad_lines += 1;
            return;
        };
        self.add_record(&record);
    }

    fn add_record(&mut self, record: &Map<String, Value>) {
        self.records += 1;
        match record.get("@timestamp").and_then(Value::as_str).and_then(parse_time) {
            Some(t) => {
                self.min = Some(self.min.map_or(t, |m| m.min(t)));
                self.max = Some(self.max.map_or(t, |m| m.max(t)));
            }
            None => self.no_time += 1,
        }
        if let Some(level) = field_text(record, "level") {
            let level = if self.levels.len() < MAX_LEVELS || self.levels.contains_key(level.as_ref()) {
                level.into_owned()
            } else {
                "_other".to_string()
            };
            *self.levels.entry(level).or_default() += 1;
        }
        for (acc, field) in self.distinct.iter_mut().zip(&self.opts.distinct_fields) {
            if !acc.complete {
                continue;
            }
            if let Some(v) = field_text(record, field)
                && !acc.values.contains(v.as_ref())
            {
                if acc.values.len() >= self.opts.distinct_cap {
                    acc.complete = false;
                    acc.values.clear();
                } else {
                    acc.values.insert(v.into_owned());
                }
            }
        }
        for field in &self.opts.token_fields {
            if let Some(text) = field_text(record, field) {
                for t in tokens(&text).filter(|t| indexable(t)) {
                    self.token_items += u64::from(self.bloom.insert(t));
                }
            }
        }
    }

    fn bad(&self, reason: QuarantineReason, message: String, uncompressed_bytes: u64) -> IndexError {
        IndexError::Bad {
            reason,
            message,
            lines: self.lines,
            bad_lines: self.bad_lines,
            uncompressed_bytes,
        }
    }

    fn finish(mut self, encoding: Encoding, uncompressed_bytes: u64) -> Result<IndexStats, IndexError> {
        if self.lines > 0 && self.bad_lines as f64 / self.lines as f64 > self.opts.max_bad_line_ratio {
            let msg = format!(
                "{} of {} lines are not JSON objects (more than MAX_BAD_LINE_RATIO {})",
                self.bad_lines, self.lines, self.opts.max_bad_line_ratio
            );
            return Err(self.bad(QuarantineReason::BadLines, msg, uncompressed_bytes));
        }
        self.bloom.shrink_to_fit(self.token_items, self.opts.bloom_fp_rate);
        let distinct = self
            .opts
            .distinct_fields
            .iter()
            .zip(self.distinct)
            .map(|(f, acc)| {
                (
                    f.clone(),
                    Distinct {
                        complete: acc.complete,
                        values: acc.values.into_iter().collect(),
                    },
                )
            })
            .collect();
        Ok(IndexStats {
            encoding,
            lines: self.lines,
            records: self.records,
            bad_lines: self.bad_lines,
            records_without_time: self.no_time,
            uncompressed_bytes,
            min_time: self.min,
            max_time: self.max,
            levels: self.levels,
            distinct,
            token_fields: self.opts.token_fields.clone(),
            tokens: self.bloom.to_doc(self.token_items),
        })
    }
}

/// Indexes one object read from `stored` (its stored bytes, compressed as
/// `encoding`), line by line.
pub fn index_stream<R: Read>(stored: R, encoding: Encoding, opts: &IndexOptions) -> Result<IndexStats, IndexError> {
    let source_failed = Arc::new(AtomicBool::new(false));
    let tagged = SourceTag {
        inner: stored,
        failed: source_failed.clone(),
    };
    let mut b = Builder::new(opts);
    let corrupt = |b: &Builder, e: io::Error, n: u64| {
        b.bad(
            QuarantineReason::Corrupt,
            format!("cannot decode the {} stream: {e}", encoding.as_str()),
            n,
        )
    };
    let decoded = match decoder(encoding, tagged) {
        Ok(d) => d,
        Err(e) if source_failed.load(Ordering::Relaxed) => return Err(IndexError::Source(e)),
        Err(e) => return Err(corrupt(&b, e, 0)),
    };
    let limited = Limited::new(decoded, opts.max_decompressed_bytes);
    let exceeded = limited.exceeded.clone();
    let mut lines = BufReader::with_capacity(READ_BUFFER, limited);
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        match read_line(&mut lines, &mut buf, MAX_LINE_BYTES) {
            Ok(Some(Line::Complete)) => b.add_line(&buf),
            Ok(Some(Line::TooLong)) => {
                b.lines += 1;
                b.bad_lines += 1;
            }
            Ok(None) => break,
            Err(e) => {
                let n = lines.get_ref().bytes_read();
                if source_failed.load(Ordering::Relaxed) {
                    return Err(IndexError::Source(e));
                }
                if exceeded.load(Ordering::Relaxed) {
                    let msg = format!(
                        "decompresses to more than MAX_DECOMPRESSED_BYTES ({} bytes)",
                        opts.max_decompressed_bytes
                    );
                    return Err(b.bad(QuarantineReason::TooLarge, msg, n));
                }
                return Err(corrupt(&b, e, n));
            }
        }
        // Release a buffer that one huge line grew.
        if buf.capacity() > 1024 * 1024 {
            buf = Vec::with_capacity(64 * 1024);
        }
    }
    let n = lines.get_ref().bytes_read();
    b.finish(encoding, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn read_line_bounds_and_trailing_line() {
        let mut r = BufReader::with_capacity(4, Cursor::new(b"ab\r\n0123456789\nlast".to_vec()));
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut r, &mut buf, 8).expect("io"), Some(Line::Complete));
        assert_eq!(buf, b"ab");
        assert_eq!(read_line(&mut r, &mut buf, 8).expect("io"), Some(Line::TooLong));
        assert_eq!(read_line(&mut r, &mut buf, 8).expect("io"), Some(Line::Complete));
        assert_eq!(buf, b"last");
        assert_eq!(read_line(&mut r, &mut buf, 8).expect("io"), None);
    }

    #[test]
    fn encoding_detection() {
        assert_eq!(Encoding::detect(Some("gzip"), "a.ndjson"), Encoding::Gzip);
        assert_eq!(Encoding::detect(Some("zstd"), "a.ndjson.gz"), Encoding::Zstd);
        assert_eq!(Encoding::detect(None, "a.ndjson.zst"), Encoding::Zstd);
        assert_eq!(Encoding::detect(Some("identity"), "a.ndjson.gz"), Encoding::Gzip);
        assert_eq!(Encoding::detect(None, "a.ndjson"), Encoding::None);
    }

    #[test]
    fn a_failing_source_is_not_corruption() {
        struct Broken(usize);
        impl Read for Broken {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"));
                }
                let line = b"{\"a\":1}\n";
                let n = line.len().min(buf.len());
                buf[..n].copy_from_slice(&line[..n]);
                self.0 -= 1;
                Ok(n)
            }
        }
        let err = index_stream(Broken(3), Encoding::None, &IndexOptions::default()).expect_err("source fails");
        assert!(matches!(err, IndexError::Source(_)), "{err:?}");
    }
}
