//! Object encoding shared by the object sinks (`file`, `s3`): NDJSON,
//! compressed as configured; and [`RecordFormat`], what every record sink
//! (`s3`, `file`, `cloudwatch_logs`, `firehose`, `stdout`) makes of one
//! record: the whole JSON object, or one field's value (`log_key`), with the
//! source's `@timestamp` kept, renamed or left out (`timestamp_key`).
//!
//! Why these two, and per sink: a FireLens user's Fluent Bit outputs differ
//! exactly here. `log_key log` sends the application's line as it was written
//! (CloudWatch shows the text, not `{"log":"..."}`), and each output adds the
//! event time its own way: `cloudwatch_logs` not at all (the event carries
//! it), `kinesis_firehose` under `time_key` if set, `s3` under
//! `json_date_key` (`date` by default). The router keeps the time beside the
//! record (`RecordMeta::ts_ms`) for CloudWatch's event timestamp, S3 time
//! slices and templates, so leaving the key out of the text loses nothing
//! the sinks need. Only the `@timestamp` the source added is touched
//! (`RecordMeta::ts_added`), never one the application wrote.
//!
//! Why gzip level 2 through `flate2`'s zlib-rs backend, and zstd level 3:
//! both formats are what downstream tools (Athena, `zcat`, the indexer) read
//! without options, and compression is most of the router's CPU when it
//! ships to S3. Measured with `bench/run.sh s3` (500k lines, 128 MB): miniz
//! at level 6 cost 0.026 CPU-s/MB; zlib-rs at level 6 0.013 (5.0x smaller),
//! level 4 0.011 (4.8x), level 2 0.009 (4.4x), level 1 0.008 but only 2.9x.
//! Level 2 is the knee; `compression_level` trades the other way.
//!
//! Why zstd levels 1-3 run with smaller match tables than zstd's own
//! (hash log 15, chain log 14 instead of 17 and 16 at level 3): the tables
//! are most of a zstd stream's memory and every open object has one. Measured
//! on 75 MB of the benchmark's records, level 3 with the small tables is 3%
//! smaller and takes 25% less CPU than with zstd's tables (7.26x vs 7.02x,
//! 0.0019 vs 0.0025 CPU-s/MB); on 24 MB of JSON with repeats far apart it is
//! 2% larger (16.8x vs 17.2x). The window (what a match may reach back to)
//! is left at the level's size: shrinking it cost up to a third of the ratio
//! on the second sample. The stream then holds 576 KiB less.
//!
//! Why [`OneShot`]: most open objects are small (a minute slice, a pod's
//! prefix), and a streaming compressor's state is 0.3-2.5 MiB whatever the
//! object holds. The object batcher (`sinks/object/`) keeps a small object's
//! records uncompressed and compresses it in one call when it closes, through
//! one context per sink that is reused; the result is the same single gzip
//! member or zstd frame a stream produces (a zstd frame then also records the
//! content size).

use std::io::Write;

use serde::Deserialize;

/// Where a sink writes the event time the source added to a record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TimestampKey {
    /// As `@timestamp`, the first member (the default).
    #[default]
    Keep,
    /// Not at all (`timestamp_key = ""`).
    Omit,
    /// Under another name, still first, unless the record has a member of
    /// that name itself (the record wins, as with enrichment).
    Rename(String),
}

impl TimestampKey {
    /// From the `timestamp_key` option: `@timestamp`, `""` or another name.
    pub fn from_option(key: Option<&str>) -> Self {
        match key {
            None | Some("@timestamp") => TimestampKey::Keep,
            Some("") => TimestampKey::Omit,
            Some(k) => TimestampKey::Rename(k.to_string()),
        }
    }

    /// How `validate` prints it.
    pub fn describe(&self) -> String {
        match self {
            TimestampKey::Keep => "@timestamp".into(),
            TimestampKey::Omit => "(none)".into(),
            TimestampKey::Rename(k) => k.clone(),
        }
    }
}

/// What a record sink writes for one record; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordFormat {
    /// Send only this top-level field's value (`log_key`): a string raw,
    /// anything else as its JSON text. Enrichment is not added (unless the
    /// key names an enrichment field, whose value is then sent).
    pub log_key: Option<String>,
    pub timestamp: TimestampKey,
}

impl RecordFormat {
    pub fn new(log_key: Option<&str>, timestamp_key: Option<&str>) -> Self {
        RecordFormat {
            log_key: log_key.map(str::to_string),
            timestamp: TimestampKey::from_option(timestamp_key),
        }
    }

    /// Writes record `i` of `batch` as this format says (no newline). False,
    /// with nothing written, when `log_key` is set and the record lacks it:
    /// the caller drops the record and counts it (`reason="log_key_missing"`),
    /// as Fluent Bit skips it with "Could not find log_key".
    pub fn encode(&self, batch: &crate::event::Batch, i: usize, out: &mut Vec<u8>) -> bool {
        match &self.log_key {
            Some(key) => batch.encode_field(i, key, out),
            None => {
                batch.encode_stamped(i, &self.timestamp, out);
                true
            }
        }
    }

    /// `validate` of the options: a `log_key` is a non-empty field name.
    pub fn validate(log_key: Option<&str>, ctx: &mut crate::confdiag::Ctx<'_>, base: &[crate::confdiag::Seg]) -> bool {
        if log_key == Some("") {
            ctx.error(
                &crate::confdiag::key(base, "log_key"),
                "must name a field (leave it out to send whole records)",
            );
            return false;
        }
        true
    }

    /// `, log_key x, timestamp_key y` for `validate`'s pipeline listing;
    /// empty for the defaults.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(k) = &self.log_key {
            s.push_str(&format!(", log_key {k}"));
        } else if self.timestamp != TimestampKey::Keep {
            s.push_str(&format!(", timestamp_key {}", self.timestamp.describe()));
        }
        s
    }
}

/// Records a sink dropped for lacking its `log_key`: counted per batch
/// (`reason="log_key_missing"`) and warned about once, naming the key, never
/// the record.
#[derive(Debug, Default)]
pub struct MissingKey {
    pending: u64,
    warned: bool,
}

impl MissingKey {
    pub fn record(&mut self) {
        self.pending += 1;
    }

    /// Counts what `record` noted since the last call.
    pub fn flush(&mut self, m: &crate::metrics::ComponentMetrics, format: &RecordFormat) {
        if self.pending == 0 {
            return;
        }
        m.discarded("log_key_missing", self.pending);
        if !self.warned {
            tracing::warn!(
                log_key = format.log_key.as_deref().unwrap_or_default(),
                count = self.pending,
                "records without the log_key field are dropped (as Fluent Bit does), counted as reason=\"log_key_missing\""
            );
            self.warned = true;
        }
        self.pending = 0;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    None,
}

impl Compression {
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Gzip => ".ndjson.gz",
            Compression::Zstd => ".ndjson.zst",
            Compression::None => ".ndjson",
        }
    }

    /// `Content-Encoding` of an object, if compressed.
    pub fn content_encoding(self) -> Option<&'static str> {
        match self {
            Compression::Gzip => Some("gzip"),
            Compression::Zstd => Some("zstd"),
            Compression::None => None,
        }
    }
}

pub const GZIP_DEFAULT_LEVEL: u32 = 2;
pub const ZSTD_DEFAULT_LEVEL: u32 = 3;

/// `Content-Type` of NDJSON objects.
pub const CONTENT_TYPE: &str = "application/x-ndjson";

/// Largest zstd match tables (log2 of entries) at levels 1-3; see the module docs.
const ZSTD_SMALL_HASH_LOG: u32 = 15;
const ZSTD_SMALL_CHAIN_LOG: u32 = 14;

/// zstd 1.5.7's parameters for inputs of unknown size (`clevels.h`):
/// window log, chain log, hash log, and whether the strategy is `fast`
/// (which has no chain table), for levels 1-19.
const ZSTD_LEVELS: [(u32, u32, u32, bool); 19] = [
    (19, 13, 14, true),
    (20, 15, 16, true),
    (21, 16, 17, false),
    (21, 18, 18, false),
    (21, 18, 19, false),
    (21, 18, 19, false),
    (21, 19, 20, false),
    (21, 19, 20, false),
    (22, 20, 21, false),
    (22, 21, 22, false),
    (22, 21, 22, false),
    (22, 22, 23, false),
    (22, 22, 22, false),
    (22, 22, 23, false),
    (22, 23, 23, false),
    (22, 22, 22, false),
    (23, 23, 22, false),
    (23, 23, 22, false),
    (23, 24, 22, false),
];

/// Memory of a gzip stream besides its input, whatever the level: zlib-rs
/// allocates a 64 KiB window, 64 KiB of chain links, a 128 KiB hash head,
/// 64 KiB of pending output and 48 KiB of symbols; flate2 adds a 32 KiB
/// output buffer. An RSS measurement of 200 streams gave 316-350 KiB each.
const GZIP_STATE: usize = 402 * 1024;

/// Memory of a zstd stream besides its tables and window: the input block
/// (128 KiB), the sequence store, the output buffers (zstd's and the crate's
/// 32 KiB). Measured 85-90 KiB once a 1 MiB object went through, rounded up.
const ZSTD_BUFFERS: usize = 256 * 1024;

fn zstd_level(level: Option<u32>) -> i32 {
    level.unwrap_or(ZSTD_DEFAULT_LEVEL).clamp(1, 19) as i32
}

/// (window log, chain table bytes + hash table bytes) of a zstd stream.
fn zstd_shape(level: i32) -> (u32, usize) {
    let i = usize::try_from(level - 1).unwrap_or(0).min(ZSTD_LEVELS.len() - 1);
    let (w, mut c, mut h, fast) = ZSTD_LEVELS[i];
    if level <= 3 {
        c = c.min(ZSTD_SMALL_CHAIN_LOG);
        h = h.min(ZSTD_SMALL_HASH_LOG);
    }
    let chain = if fast { 0 } else { 4usize << c };
    (w, chain + (4usize << h))
}

/// Applies the small tables of levels 1-3 to a zstd context.
fn zstd_small_tables(
    level: i32,
    mut set: impl FnMut(zstd::stream::raw::CParameter) -> std::io::Result<()>,
) -> std::io::Result<()> {
    use zstd::stream::raw::CParameter;
    if level > 3 {
        return Ok(());
    }
    let i = usize::try_from(level - 1).unwrap_or(0);
    let (_, c, h, _) = ZSTD_LEVELS[i.min(2)];
    if h > ZSTD_SMALL_HASH_LOG {
        set(CParameter::HashLog(ZSTD_SMALL_HASH_LOG))?;
    }
    if c > ZSTD_SMALL_CHAIN_LOG {
        set(CParameter::ChainLog(ZSTD_SMALL_CHAIN_LOG))?;
    }
    Ok(())
}

impl Compression {
    /// Estimated bytes a streaming [`Encoder`] of this kind holds once
    /// `bytes_in` bytes went through it (its output excluded): the figure
    /// the object batcher charges to `memory_limit` for an open stream.
    pub fn stream_state(self, level: Option<u32>, bytes_in: u64) -> usize {
        match self {
            Compression::Gzip => GZIP_STATE,
            Compression::Zstd => {
                let (window_log, tables) = zstd_shape(zstd_level(level));
                let window = usize::try_from(bytes_in)
                    .unwrap_or(usize::MAX)
                    .min(1usize << window_log);
                tables + window + ZSTD_BUFFERS
            }
            Compression::None => 0,
        }
    }
}

/// A compressing writer over `W`.
pub enum Encoder<W: Write> {
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::Encoder<'static, W>),
    Plain(W),
}

impl<W: Write> Encoder<W> {
    /// `level`: gzip 1-9 (default 2), zstd 1-19 (default 3).
    pub fn new(c: Compression, level: Option<u32>, w: W) -> std::io::Result<Self> {
        Ok(match c {
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                w,
                flate2::Compression::new(level.unwrap_or(GZIP_DEFAULT_LEVEL).clamp(1, 9)),
            )),
            Compression::Zstd => {
                let level = zstd_level(level);
                let mut e = zstd::Encoder::new(w, level)?;
                zstd_small_tables(level, |p| e.set_parameter(p))?;
                Encoder::Zstd(e)
            }
            Compression::None => Encoder::Plain(w),
        })
    }

    pub fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(b),
            Encoder::Zstd(e) => e.write_all(b),
            Encoder::Plain(e) => e.write_all(b),
        }
    }

    /// The sink the compressed bytes go to (e.g. to take what is ready).
    pub fn get_mut(&mut self) -> &mut W {
        match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
            Encoder::Plain(w) => w,
        }
    }

    pub fn get_ref(&self) -> &W {
        match self {
            Encoder::Gzip(e) => e.get_ref(),
            Encoder::Zstd(e) => e.get_ref(),
            Encoder::Plain(w) => w,
        }
    }

    /// Ends the stream and returns the inner writer.
    pub fn finish(self) -> std::io::Result<W> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
            Encoder::Plain(w) => Ok(w),
        }
    }
}

/// Compresses whole objects, one call each, through one reused context.
pub struct OneShot {
    kind: OneShotKind,
}

enum OneShotKind {
    /// Raw deflate; the gzip header and trailer are written around it.
    Gzip(flate2::Compress, u32),
    Zstd(zstd::bulk::Compressor<'static>),
    None,
}

impl OneShot {
    /// `level` as for [`Encoder::new`].
    pub fn new(c: Compression, level: Option<u32>) -> std::io::Result<Self> {
        let kind = match c {
            Compression::Gzip => {
                let level = level.unwrap_or(GZIP_DEFAULT_LEVEL).clamp(1, 9);
                OneShotKind::Gzip(flate2::Compress::new(flate2::Compression::new(level), false), level)
            }
            Compression::Zstd => {
                let level = zstd_level(level);
                let mut z = zstd::bulk::Compressor::new(level)?;
                zstd_small_tables(level, |p| z.set_parameter(p))?;
                OneShotKind::Zstd(z)
            }
            Compression::None => OneShotKind::None,
        };
        Ok(OneShot { kind })
    }

    /// One complete gzip member or zstd frame holding `plain` (or a copy
    /// of `plain`, uncompressed).
    pub fn compress(&mut self, plain: &[u8]) -> std::io::Result<Vec<u8>> {
        match &mut self.kind {
            OneShotKind::Gzip(c, level) => gzip_member(c, *level, plain),
            OneShotKind::Zstd(z) => z.compress(plain),
            OneShotKind::None => Ok(plain.to_vec()),
        }
    }

    /// Bytes the context holds between calls (its allocation for zstd; the
    /// deflate state for gzip).
    pub fn state_bytes(&mut self) -> usize {
        match &mut self.kind {
            OneShotKind::Gzip(..) => GZIP_STATE,
            OneShotKind::Zstd(z) => z.context_mut().sizeof(),
            OneShotKind::None => 0,
        }
    }
}

/// The gzip member `flate2::write::GzEncoder` writes for `plain`, with a
/// deflate state that is reset rather than allocated again.
fn gzip_member(c: &mut flate2::Compress, level: u32, plain: &[u8]) -> std::io::Result<Vec<u8>> {
    // RFC 1952 header as flate2 writes it: no name, no mtime, XFL from the
    // level, OS 255 (unknown).
    let xfl = match level {
        9.. => 2,
        ..=1 => 4,
        _ => 0,
    };
    let mut out = Vec::with_capacity(plain.len() / 3 + 64);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255]);
    c.reset();
    loop {
        let done = usize::try_from(c.total_in()).unwrap_or(usize::MAX).min(plain.len());
        if out.capacity() - out.len() < 1024 {
            out.reserve((plain.len() - done) / 2 + 4096);
        }
        let status = c
            .compress_vec(&plain[done..], &mut out, flate2::FlushCompress::Finish)
            .map_err(std::io::Error::other)?;
        if status == flate2::Status::StreamEnd {
            break;
        }
    }
    out.extend_from_slice(&crc32fast::hash(plain).to_le_bytes());
    // ISIZE is the length modulo 2^32 (RFC 1952).
    out.extend_from_slice(&(plain.len() as u32).to_le_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(lines: usize) -> Vec<u8> {
        let mut want = Vec::new();
        for i in 0..lines {
            want.extend_from_slice(format!("{{\"n\":{i},\"msg\":\"some log text {}\"}}\n", i * 7919 % 1000).as_bytes());
        }
        want
    }

    #[test]
    fn one_shot_writes_what_a_stream_writes_in_one_member_or_frame() {
        let mut gz = OneShot::new(Compression::Gzip, None).unwrap();
        let mut zs = OneShot::new(Compression::Zstd, None).unwrap();
        // The context is reused: several objects, small and large, in turn.
        for lines in [1, 3_000, 0, 40_000, 17] {
            let want = sample(lines);
            let g = gz.compress(&want).unwrap();
            let mut stream = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(GZIP_DEFAULT_LEVEL));
            stream.write_all(&want).unwrap();
            let s = stream.finish().unwrap();
            assert_eq!(g[..10], s[..10], "same header as flate2's");
            // GzDecoder stops after one member: a second one would be lost.
            let mut got = Vec::new();
            flate2::read::GzDecoder::new(&g[..]).read_to_end(&mut got).unwrap();
            assert_eq!(got, want, "gzip, {lines} lines");

            let z = zs.compress(&want).unwrap();
            assert_eq!(
                zstd::zstd_safe::find_frame_compressed_size(&z),
                Ok(z.len()),
                "one frame"
            );
            assert_eq!(zstd::decode_all(&z[..]).unwrap(), want, "zstd, {lines} lines");
        }
        let mut none = OneShot::new(Compression::None, None).unwrap();
        assert_eq!(none.compress(&sample(5)).unwrap(), sample(5));
    }

    #[test]
    fn small_zstd_tables_only_up_to_level_3() {
        // Level 3: 2^15 hash + 2^14 chain entries of 4 bytes, 2 MiB window.
        assert_eq!(zstd_shape(3), (21, (4 << 15) + (4 << 14)));
        // Level 1 is smaller than the cap already; level 4 keeps zstd's.
        assert_eq!(zstd_shape(1), (19, 4 << 14));
        assert_eq!(zstd_shape(4), (21, (4 << 18) + (4 << 18)));
        let small = Compression::Zstd.stream_state(None, 1000);
        let full = Compression::Zstd.stream_state(None, 100 << 20);
        assert_eq!(
            full - small,
            (2 << 20) - 1000,
            "the window is charged as it fills, up to its size"
        );
    }

    #[test]
    fn round_trips_even_when_output_is_taken_midway() {
        for c in [Compression::Gzip, Compression::Zstd, Compression::None] {
            let mut e = Encoder::new(c, None, Vec::new()).unwrap();
            let mut taken = Vec::new();
            let mut want = Vec::new();
            for i in 0..20_000 {
                let line = format!("{{\"n\":{i},\"msg\":\"some log text {}\"}}\n", i * 7919 % 1000);
                want.extend_from_slice(line.as_bytes());
                e.write_all(line.as_bytes()).unwrap();
                if i % 5000 == 0 {
                    taken.append(e.get_mut());
                }
            }
            taken.extend(e.finish().unwrap());
            let got = match c {
                Compression::Gzip => {
                    let mut s = Vec::new();
                    flate2::read::GzDecoder::new(&taken[..]).read_to_end(&mut s).unwrap();
                    s
                }
                Compression::Zstd => zstd::decode_all(&taken[..]).unwrap(),
                Compression::None => taken,
            };
            assert_eq!(got, want, "{c:?}");
        }
    }
}
