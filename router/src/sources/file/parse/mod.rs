//! Line parsers: one log line in, one JSON object (as text) out.
//!
//! Why text out, not a `Value`: the router moves bytes (see `event.rs`). A
//! parser validates the line once, learns the few facts the pipeline needs
//! (event time, which keys exist), and writes the object the sinks will ship.
//! For JSON lines that object is the application's own bytes with
//! `@timestamp` spliced in front, so nothing is re-serialized, re-ordered or
//! re-formatted (numbers keep their exact text).
//!
//! Why every record becomes an object even when parsing fails: losing a line
//! is worse than shipping it raw. A line the configured parser cannot read is
//! emitted as `{"@timestamp":…,"log":"<line>"}` and flagged `fallback`, so the
//! caller can count it.
//!
//! Why `key_mask`: enrichment adds fields to every record and must never
//! create a duplicate key. A 64-bit Bloom filter of the record's top-level
//! keys lets it skip the exact check ([`has_top_level_key`]) in nearly all
//! cases, at the cost of one cheap hash per key while parsing.
//!
//! Why the record's own `@timestamp` wins: it was put there on purpose
//! (another shipper, or the application); overwriting or duplicating it would
//! change data the router does not own.
//!
//! Why one [`Parser`] per file: it holds reusable buffers (so steady-state
//! parsing does not allocate), the formatter's one-second cache (records of
//! one file share seconds), and the per-file state of joining partial lines
//! (`partial.rs`).

mod cri;
mod docker;
mod json;
mod logfmt;
mod partial;
mod regex_parser;
mod time;

pub use self::json::{
    FieldText, has_top_level_key, lookup_field, lookup_string, members, object_members, top_level_value, write_str,
};
pub use self::time::{TimeFormat, TimestampFormatter};

use self::time::TimeParser;

/// Which parser; deserialized from config `parser = "json" | "none" |
/// "logfmt" | "regex" | "cri" | "docker"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ParserKind {
    #[default]
    Json,
    None,
    Logfmt,
    Regex,
    Cri,
    Docker,
}

/// What a [`Parser`] is built from (the parser part of a file source's
/// configuration).
#[derive(Debug, Clone, Default)]
pub struct ParserOptions {
    pub kind: ParserKind,
    /// Pattern with named captures; required for [`ParserKind::Regex`],
    /// ignored by the other kinds.
    pub regex: Option<String>,
    /// Field that carries the event time (json, logfmt and regex records).
    pub time_key: Option<String>,
    pub time_format: TimeFormat,
    /// Bound on a joined partial line (cri, docker); `None`: 1 MiB.
    pub max_line_size: Option<usize>,
}

/// A parser configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ParserConfigError {
    #[error("parser = \"regex\" needs a `regex` with named captures")]
    MissingRegex,
    #[error("invalid regex: {0}")]
    InvalidRegex(#[from] regex::Error),
    #[error("regex `{0}` has no named capture group, e.g. (?P<message>.*); only named groups become fields")]
    NoNamedGroup(String),
    #[error("invalid time_format `{value}`: {reason}")]
    BadTimeFormat { value: String, reason: String },
    #[error("time_key must not be empty")]
    EmptyTimeKey,
}

/// Facts about the one object [`Parser::parse`] appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// Event time, Unix milliseconds.
    pub ts_ms: i64,
    /// OR of [`key_bit`] of every top-level key of the emitted object.
    pub key_mask: u64,
    /// The line did not parse with the configured parser and became
    /// `{"log": line}`.
    pub fallback: bool,
    /// `time_key` is configured (json, logfmt, regex) but was absent or
    /// unparseable in this record, fallbacks included.
    pub time_missing: bool,
}

/// What [`Parser::parse_at`] made of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// One object was appended; `cut` when it joins parts that exceeded
    /// the size bound and were truncated.
    Record { parsed: Parsed, cut: bool },
    /// A partial line, held until the part that ends it; nothing appended.
    Held,
}

/// Bit of a top-level key in [`Parsed::key_mask`].
///
/// A word-at-a-time multiplicative hash (FxHash-like, with a final mix) of
/// the raw key bytes, the top 6 bits of which pick the bit: one multiply per 8
/// bytes where FNV-1a needs one per byte, and this runs for every key of
/// every JSON line.
#[inline]
pub fn key_bit(key: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = (key.len() as u64).wrapping_mul(K);
    let mut chunks = key.chunks_exact(8);
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(23);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        if let Some(dst) = w.get_mut(..rest.len()) {
            dst.copy_from_slice(rest);
        }
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    h ^= h >> 29;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 32;
    1u64 << (h >> 58)
}

/// Key the router adds to every record that does not have it.
const TS_KEY: &str = "@timestamp";

/// Turns log lines of one file into JSON objects; see the module docs.
///
/// Cloning is cheap (a compiled regex is shared), so a source can build one
/// and clone it for each file.
#[derive(Debug, Clone)]
pub struct Parser {
    kind: ParserKind,
    time_key: Option<Box<str>>,
    /// Reads `time_key` values.
    time: TimeParser,
    regex: Option<regex_parser::RegexParser>,
    logfmt: logfmt::Logfmt,
    fmt: TimestampFormatter,
    /// Reused for unescaped strings (docker `log`, quoted logfmt values).
    scratch: String,
    ts_bit: u64,
    log_bit: u64,
    /// Partial lines being joined (cri, docker).
    partials: partial::Partials,
    /// The record the last call emitted opens with the `@timestamp` the
    /// parser spliced in (see [`Parser::stamped`]).
    stamped: bool,
}

impl Parser {
    pub fn new(opts: &ParserOptions) -> Result<Parser, ParserConfigError> {
        let time_key = match opts.time_key.as_deref() {
            Some("") => return Err(ParserConfigError::EmptyTimeKey),
            other => other.map(Box::from),
        };
        let regex = match opts.kind {
            ParserKind::Regex => {
                let pattern = opts.regex.as_deref().ok_or(ParserConfigError::MissingRegex)?;
                Some(regex_parser::RegexParser::new(pattern, time_key.as_deref())?)
            }
            _ => None,
        };
        Ok(Parser {
            kind: opts.kind,
            time_key,
            time: TimeParser::new(&opts.time_format)?,
            regex,
            logfmt: logfmt::Logfmt::default(),
            fmt: TimestampFormatter::new(),
            scratch: String::new(),
            ts_bit: key_bit(TS_KEY.as_bytes()),
            log_bit: key_bit(b"log"),
            partials: partial::Partials::new(opts.max_line_size.unwrap_or(1024 * 1024)),
            stamped: false,
        })
    }

    /// Parses one line and appends exactly one JSON object (one line of text,
    /// no trailing newline) to `out`.
    ///
    /// `line` is valid UTF-8 without its line terminator; `read_time_ms` (Unix
    /// ms) is the event time when the record carries none.
    pub fn parse(&mut self, line: &str, read_time_ms: i64, out: &mut Vec<u8>) -> Parsed {
        self.stamped = false;
        let start = out.len();
        let parsed = match self.kind {
            ParserKind::Json => json::parse(self, line, read_time_ms, out),
            ParserKind::None => None,
            ParserKind::Logfmt => logfmt::parse(self, line, read_time_ms, out),
            ParserKind::Regex => regex_parser::parse(self, line, read_time_ms, out),
            ParserKind::Cri => cri::parse(self, line, out),
            ParserKind::Docker => docker::parse(self, line, out),
        };
        match parsed {
            Some(p) => p,
            None => {
                // `none`, or the line did not parse. Parsers write only once
                // they know the line is good; the truncate is a guard.
                out.truncate(start);
                let mut p = self.write_raw(line, read_time_ms, out);
                p.fallback = self.kind != ParserKind::None;
                p
            }
        }
    }

    /// Like [`Parser::parse`], but joins partial lines (`cri` and `docker`):
    /// a part is [`Step::Held`] until the part that ends its line arrives,
    /// then the joined line is one record with the first part's time.
    /// `start` is the file offset of the line's first byte, reported back by
    /// [`Parser::held_from`] while the line is held; `truncated` says the
    /// line was already cut (it marks the joined record).
    pub fn parse_at(&mut self, line: &str, start: u64, truncated: bool, read_time_ms: i64, out: &mut Vec<u8>) -> Step {
        self.stamped = false;
        let step = match self.kind {
            ParserKind::Cri => cri::parse_at(self, line, start, truncated, read_time_ms, out),
            ParserKind::Docker => docker::parse_at(self, line, start, truncated, read_time_ms, out),
            _ => None,
        };
        step.unwrap_or_else(|| Step::Record {
            parsed: self.parse(line, read_time_ms, out),
            cut: false,
        })
    }

    /// File offset of the first byte of the oldest held partial line.
    pub fn held_from(&self) -> Option<u64> {
        self.partials.held_from()
    }

    pub fn has_held(&self) -> bool {
        self.partials.held_from().is_some()
    }

    /// Is a partial line held whose last part was read at or before `cutoff_ms`?
    pub fn has_held_since(&self, cutoff_ms: i64) -> bool {
        self.partials.oldest_touched_by(cutoff_ms).is_some()
    }

    /// Appends the oldest held partial line whose last part was read at or
    /// before `cutoff_ms` (`i64::MAX`: any), as joined so far, as a record
    /// (end of input, or the partial-line timeout); `None` when none is.
    pub fn flush_held(&mut self, cutoff_ms: i64, out: &mut Vec<u8>) -> Option<(Parsed, bool)> {
        self.stamped = false;
        let i = self.partials.oldest_touched_by(cutoff_ms)?;
        Some(match self.kind {
            ParserKind::Docker => docker::write_joined(self, i, out),
            _ => cri::write_joined(self, i, "P", out),
        })
    }

    /// Does the record the last `parse`, `parse_at` or `flush_held` emitted
    /// open with the `@timestamp` this parser added (rather than one of the
    /// line's own)? Sources register such records with
    /// [`crate::event::Records::push_stamped`], so sinks can rename or leave
    /// out that member (`timestamp_key`) and nothing the application wrote.
    pub fn stamped(&self) -> bool {
        self.stamped
    }

    /// Forgets held partial lines (the file was truncated or replaced).
    pub fn reset_held(&mut self) {
        self.partials.clear();
    }

    /// Does `time_key` apply to this parser's records (and so can be missing)?
    fn time_key_applies(&self) -> bool {
        self.time_key.is_some() && matches!(self.kind, ParserKind::Json | ParserKind::Logfmt | ParserKind::Regex)
    }

    /// `{"@timestamp":"…","log":"<line>"}`.
    fn write_raw(&mut self, line: &str, read_time_ms: i64, out: &mut Vec<u8>) -> Parsed {
        let ts_ms = time::clamp_ms(read_time_ms);
        self.open_with_timestamp(ts_ms, out);
        out.extend_from_slice(b",\"log\":");
        json::write_str(out, line);
        out.push(b'}');
        Parsed {
            ts_ms,
            key_mask: self.ts_bit | self.log_bit,
            fallback: false,
            time_missing: self.time_key_applies(),
        }
    }

    /// `{"@timestamp":"…"` (no closing brace).
    #[inline]
    fn open_with_timestamp(&mut self, ts_ms: i64, out: &mut Vec<u8>) {
        self.stamped = true;
        out.extend_from_slice(b"{\"@timestamp\":\"");
        self.fmt.write(ts_ms, out);
        out.push(b'"');
    }
}

/// Writes `"key":` preceded by a comma unless it is the object's first member.
#[inline]
fn write_key(out: &mut Vec<u8>, first: &mut bool, key: &str) {
    if !std::mem::take(first) {
        out.push(b',');
    }
    json::write_str(out, key);
    out.push(b':');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    pub(super) fn parser(kind: ParserKind) -> Parser {
        Parser::new(&ParserOptions {
            kind,
            regex: (kind == ParserKind::Regex).then(|| r"^(?P<level>\w+) (?P<msg>.*)$".to_string()),
            ..ParserOptions::default()
        })
        .unwrap()
    }

    const ALL: [ParserKind; 6] = [
        ParserKind::Json,
        ParserKind::None,
        ParserKind::Logfmt,
        ParserKind::Regex,
        ParserKind::Cri,
        ParserKind::Docker,
    ];

    /// Checks what holds for every output: one line of JSON, an object, the
    /// mask covers its keys; returns it.
    pub(super) fn check_output(out: &[u8], p: &Parsed) -> serde_json::Map<String, Value> {
        assert!(
            !out.contains(&b'\n') && !out.contains(&b'\r'),
            "not one line: {}",
            String::from_utf8_lossy(out)
        );
        let v: Value = serde_json::from_slice(out)
            .unwrap_or_else(|e| panic!("invalid output {e}: {}", String::from_utf8_lossy(out)));
        let Value::Object(m) = v else { panic!("not an object") };
        for k in m.keys() {
            assert_ne!(p.key_mask & key_bit(k.as_bytes()), 0, "mask misses {k:?}");
            assert!(has_top_level_key(out, k), "has_top_level_key misses {k:?}");
        }
        m
    }

    #[test]
    fn parse_options_and_errors() {
        let e = Parser::new(&ParserOptions {
            kind: ParserKind::Regex,
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(e, ParserConfigError::MissingRegex));
        let e = Parser::new(&ParserOptions {
            kind: ParserKind::Regex,
            regex: Some("(".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().starts_with("invalid regex"), "{e}");
        let e = Parser::new(&ParserOptions {
            kind: ParserKind::Regex,
            regex: Some("(a)(b)".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("no named capture"), "{e}");
        let e = Parser::new(&ParserOptions {
            time_key: Some(String::new()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(e, ParserConfigError::EmptyTimeKey));
        let e = Parser::new(&ParserOptions {
            time_format: TimeFormat::Strftime("%Q".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(e, ParserConfigError::BadTimeFormat { .. }), "{e}");
        // A regex given to another kind is the config's business, not an error here.
        assert!(
            Parser::new(&ParserOptions {
                regex: Some("(".into()),
                ..Default::default()
            })
            .is_ok()
        );
    }

    #[test]
    fn parser_kind_deserializes_lowercase() {
        #[derive(serde::Deserialize)]
        struct C {
            parser: ParserKind,
        }
        for (s, k) in [
            ("json", ParserKind::Json),
            ("none", ParserKind::None),
            ("logfmt", ParserKind::Logfmt),
            ("regex", ParserKind::Regex),
            ("cri", ParserKind::Cri),
            ("docker", ParserKind::Docker),
        ] {
            let c: C = serde_json::from_value(json!({ "parser": s })).unwrap();
            assert_eq!(c.parser, k);
        }
        assert!(serde_json::from_value::<C>(json!({"parser": "JSON"})).is_err());
        assert_eq!(ParserKind::default(), ParserKind::Json);
    }

    #[test]
    fn parser_is_send() {
        fn is_send<T: Send>() {}
        is_send::<Parser>();
    }

    #[test]
    fn none_wraps_the_line() {
        let mut p = parser(ParserKind::None);
        let mut out = b"previous".to_vec();
        let r = p.parse("plain \"text\"\t\u{1}", 1_795_641_347_123, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"previous{"@timestamp":"2026-11-25T21:15:47.123Z","log":"plain \"text\"\t\u0001"}"#
        );
        assert_eq!(
            r,
            Parsed {
                ts_ms: 1_795_641_347_123,
                key_mask: key_bit(b"@timestamp") | key_bit(b"log"),
                fallback: false,
                time_missing: false,
            }
        );
    }

    /// ECS-logging style lines open with their own `@timestamp`, in exactly
    /// the form the router writes: byte-identical to a stamped record, yet
    /// the application's, so never `stamped` (a sink must not drop it).
    #[test]
    fn a_lines_own_leading_timestamp_is_not_stamped() {
        let own = r#"{"@timestamp":"2026-11-25T21:15:47.123Z","log.level":"info","message":"x"}"#;
        let mut p = parser(ParserKind::Json);
        let mut out = Vec::new();
        p.parse(own, 1_795_641_347_123, &mut out);
        assert_eq!(out, own.as_bytes());
        assert!(!p.stamped());
        out.clear();
        p.parse(r#"{"message":"x"}"#, 1_795_641_347_123, &mut out);
        assert!(p.stamped());
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            r#"{"@timestamp":"2026-11-25T21:15:47.123Z","message":"x"}"#
        );
        // The flag is per record: the next own-timestamp line clears it.
        out.clear();
        p.parse(own, 0, &mut out);
        assert!(!p.stamped());

        let mut p = parser(ParserKind::Logfmt);
        out.clear();
        p.parse("@timestamp=2026-11-25T21:15:47.123Z msg=x", 0, &mut out);
        assert!(out.starts_with(b"{\"@timestamp\":\"2026-11-25T21:15:47.123Z\""));
        assert!(!p.stamped());
        for (kind, line) in [
            (
                ParserKind::Docker,
                r#"{"log":"x\n","stream":"stdout","time":"2019-04-25T10:00:00.123Z"}"#,
            ),
            (ParserKind::Cri, "2016-10-06T00:17:09.669794202Z stdout F x"),
            (ParserKind::None, r#"{"@timestamp":"2026-11-25T21:15:47.123Z"}"#),
        ] {
            let mut p = parser(kind);
            out.clear();
            p.parse(line, 0, &mut out);
            assert!(p.stamped(), "{kind:?}");
        }
    }

    #[test]
    fn read_time_is_clamped_to_writable_range() {
        let mut p = parser(ParserKind::None);
        let mut out = Vec::new();
        let r = p.parse("x", i64::MAX, &mut out);
        assert_eq!(r.ts_ms, time::MAX_MS);
        assert!(String::from_utf8(out).unwrap().contains("9999-12-31T23:59:59.999Z"));
    }

    #[test]
    fn key_bits_spread_over_all_64() {
        let mut seen = 0u64;
        let mut counts = [0u32; 64];
        for i in 0..6400 {
            let k = format!("field_{i}");
            let b = key_bit(k.as_bytes());
            assert_eq!(b.count_ones(), 1);
            seen |= b;
            counts[b.trailing_zeros() as usize] += 1;
        }
        assert_eq!(seen, u64::MAX);
        // 100 expected per bit; a decent hash stays well inside 50..150.
        assert!(counts.iter().all(|&c| (50..150).contains(&c)), "{counts:?}");
        assert_ne!(key_bit(b"ab"), key_bit(b"ab\0")); // length is hashed (can collide, not here)
        assert_eq!(key_bit(b"kubernetes"), key_bit("kubernetes".as_bytes()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn every_parser_emits_one_valid_object(
            line in prop_oneof![
                "\\PC{1,80}",
                "[ -~]{1,80}",
                ".{1,40}",
                any::<String>().prop_filter("lines are never empty", |s| !s.is_empty()),
            ]
        ) {
            for kind in ALL {
                let mut p = parser(kind);
                let mut out = Vec::new();
                let r = p.parse(&line, 1_795_641_347_123, &mut out);
                let m = check_output(&out, &r);
                // `stamped` says the first member is ours, so sinks may drop it.
                if p.stamped() {
                    prop_assert!(out.starts_with(b"{\"@timestamp\":\""), "{kind:?} {line:?}");
                }
                if r.fallback || kind == ParserKind::None {
                    prop_assert!(p.stamped(), "{kind:?} {line:?}");
                }
                if out.starts_with(b"{\"@timestamp\":\"") {
                    prop_assert!(m.get("@timestamp").is_some_and(Value::is_string), "{kind:?} {line:?}");
                } else {
                    // Only a record that brought its own @timestamp is left without ours.
                    prop_assert!(!r.fallback && matches!(kind, ParserKind::Json | ParserKind::Logfmt), "{kind:?} {line:?}");
                    prop_assert!(m.contains_key("@timestamp"));
                }
                if r.fallback || kind == ParserKind::None {
                    prop_assert_eq!(m.get("log").and_then(Value::as_str), Some(line.as_str()));
                    prop_assert_eq!(m.len(), 2);
                    prop_assert_eq!(r.ts_ms, 1_795_641_347_123);
                }
            }
        }
    }
}
