//! The Docker parser (json-file logging driver):
//! `{"log":"text\n","stream":"stderr","time":"2019-04-25T10:00:00.123456789Z"}`.
//!
//! Why a visitor writing into the parser's scratch string: `log` nearly
//! always ends in an escaped `\n`, so serde_json cannot lend it as `&str`;
//! deserializing into a `String` field would allocate per line. The visitor
//! keeps borrowed text as borrowed and copies escaped text into one buffer
//! reused across lines.
//!
//! Why the trailing newline is removed: Docker stores the line terminator
//! the container wrote; it is not part of the message, and keeping it would
//! make every record end in `\n` in the index.
//!
//! Why `log` and `time` are required but `stream` is not, and unknown keys
//! (`attrs` from `--log-opt labels`) are skipped: the message and its time
//! are what make the line a Docker record; the rest is optional metadata.
//! Carrying `attrs` through is left to enrichment.
//!
//! Why an entry whose `log` lacks the newline is held (`parse_at`): Docker
//! cuts lines over 16 KiB into entries of which only the last ends in `\n`;
//! they are joined per stream into one record (see `partial.rs`).

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, Visitor};

use super::partial::slot_of;
use super::time::{TimestampFormatter, parse_rfc3339};
use super::{Parsed, Parser, Step, json, key_bit};

/// Where a string value ended up.
#[derive(Clone, Copy)]
enum Text<'de> {
    Borrowed(&'de str),
    /// In the scratch buffer.
    Scratch,
}

/// A string value, borrowed if possible, else copied into `scratch`.
struct StrSeed<'s>(&'s mut String);

impl<'de> DeserializeSeed<'de> for StrSeed<'_> {
    type Value = Text<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Text<'de>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for StrSeed<'_> {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
        Ok(Text::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
        self.0.clear();
        self.0.push_str(v);
        Ok(Text::Scratch)
    }
}

/// A time string, as Unix ms (`None` if unparseable).
struct TimeSeed;

impl<'de> DeserializeSeed<'de> for TimeSeed {
    type Value = Option<i64>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<i64>, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for TimeSeed {
    type Value = Option<i64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 time")
    }

    fn visit_str<E>(self, v: &str) -> Result<Option<i64>, E> {
        Ok(parse_rfc3339(v, false))
    }
}

#[derive(Default)]
struct Record<'de> {
    log: Option<Text<'de>>,
    stream: Option<&'de str>,
    /// Last `time` value, if it parsed.
    time: Option<i64>,
}

struct RecordVisitor<'s>(&'s mut String);

impl<'de> Visitor<'de> for RecordVisitor<'_> {
    type Value = Record<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a docker json-file record")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Record<'de>, A::Error> {
        let mut rec = Record::default();
        while let Some(key) = map.next_key::<&str>()? {
            match key {
                "log" => rec.log = Some(map.next_value_seed(StrSeed(&mut *self.0))?),
                // A stream name is never escaped; an escaped one fails here and
                // the line falls back.
                "stream" => rec.stream = Some(map.next_value::<&str>()?),
                "time" => rec.time = map.next_value_seed(TimeSeed)?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(rec)
    }
}

fn strip_newline(s: &str) -> &str {
    match s.strip_suffix('\n') {
        Some(s) => s.strip_suffix('\r').unwrap_or(s),
        None => s,
    }
}

/// Reads a record: (time, `log`, `stream`); `None` when it is not one.
fn read<'a>(scratch: &mut String, line: &'a str) -> Option<(i64, Text<'a>, Option<&'a str>)> {
    let text = line.trim_ascii();
    let mut de = serde_json::Deserializer::from_str(text);
    let rec = (&mut de).deserialize_map(RecordVisitor(scratch)).ok()?;
    de.end().ok()?;
    Some((rec.time?, rec.log?, rec.stream))
}

pub(super) fn parse(p: &mut Parser, line: &str, out: &mut Vec<u8>) -> Option<Parsed> {
    let (ts_ms, log, stream) = read(&mut p.scratch, line)?;
    let log = match log {
        Text::Borrowed(s) => s,
        Text::Scratch => p.scratch.as_str(),
    };
    let parsed = write(&mut p.fmt, p.ts_bit | p.log_bit, ts_ms, strip_newline(log), stream, out);
    p.stamped = true;
    Some(parsed)
}

/// `parse` with entries whose `log` lacks the newline joined per stream to
/// the entry that has it; `None` when the line is not a Docker record.
pub(super) fn parse_at(
    p: &mut Parser,
    line: &str,
    start: u64,
    cut: bool,
    now_ms: i64,
    out: &mut Vec<u8>,
) -> Option<Step> {
    let (ts_ms, log, stream) = read(&mut p.scratch, line)?;
    let log = match log {
        Text::Borrowed(s) => s,
        Text::Scratch => p.scratch.as_str(),
    };
    let slot = slot_of(stream);
    let ends = log.ends_with('\n');
    if ends && !p.partials.is_open(slot) {
        let parsed = write(&mut p.fmt, p.ts_bit | p.log_bit, ts_ms, strip_newline(log), stream, out);
        p.stamped = true;
        return Some(Step::Record { parsed, cut: false });
    }
    p.partials
        .push(slot, start, ts_ms, stream, strip_newline(log), cut, now_ms);
    if !ends {
        return Some(Step::Held);
    }
    let (parsed, cut) = write_joined(p, slot, out);
    Some(Step::Record { parsed, cut })
}

/// Writes the joined line of `slot` and closes it.
pub(super) fn write_joined(p: &mut Parser, slot: usize, out: &mut Vec<u8>) -> (Parsed, bool) {
    let s = p.partials.take(slot);
    let parsed = write(
        &mut p.fmt,
        p.ts_bit | p.log_bit,
        s.ts_ms,
        &s.text,
        s.stream.as_deref(),
        out,
    );
    let cut = s.truncated;
    p.stamped = true;
    p.partials.put_back(slot, s);
    (parsed, cut)
}

fn write(
    fmt: &mut TimestampFormatter,
    mut key_mask: u64,
    ts_ms: i64,
    log: &str,
    stream: Option<&str>,
    out: &mut Vec<u8>,
) -> Parsed {
    out.extend_from_slice(b"{\"@timestamp\":\"");
    fmt.write(ts_ms, out);
    out.extend_from_slice(b"\",\"log\":");
    json::write_str(out, log);
    if let Some(stream) = stream {
        out.extend_from_slice(b",\"stream\":");
        json::write_str(out, stream);
        key_mask |= key_bit(b"stream");
    }
    out.push(b'}');
    Parsed {
        ts_ms,
        key_mask,
        fallback: false,
        time_missing: false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{check_output, parser};
    use super::super::{ParserKind, ParserOptions};
    use super::*;
    use serde_json::{Value, json};

    const READ: i64 = 1_000_000_000_000;

    fn run(p: &mut Parser, line: &str) -> (Value, Parsed) {
        let mut out = Vec::new();
        let r = p.parse(line, READ, &mut out);
        (Value::Object(check_output(&out, &r)), r)
    }

    #[test]
    fn reads_json_file_records() {
        let mut p = parser(ParserKind::Docker);
        let mut out = Vec::new();
        let r = p.parse(
            r#"{"log":"text \"q\"\n","stream":"stderr","time":"2019-04-25T10:00:00.123456789Z"}"#,
            READ,
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"@timestamp":"2019-04-25T10:00:00.123Z","log":"text \"q\"","stream":"stderr"}"#
        );
        assert_eq!((r.ts_ms, r.fallback, r.time_missing), (1_556_186_400_123, false, false));
        assert_eq!(
            r.key_mask,
            key_bit(b"@timestamp") | key_bit(b"log") | key_bit(b"stream")
        );

        for (line, want) in [
            (
                r#"{"log":"crlf\r\n","stream":"stdout","time":"2019-04-25T10:00:00Z"}"#,
                json!({"log": "crlf", "stream": "stdout"}),
            ),
            (
                r#"{"log":"no newline","stream":"stdout","time":"2019-04-25T10:00:00Z"}"#,
                json!({"log": "no newline", "stream": "stdout"}),
            ),
            (
                r#"{"log":"two\n\n","stream":"stdout","time":"2019-04-25T10:00:00Z"}"#,
                json!({"log": "two\n", "stream": "stdout"}),
            ),
            (
                r#"{"log":"\n","stream":"stdout","time":"2019-04-25T10:00:00Z"}"#,
                json!({"log": "", "stream": "stdout"}),
            ),
            (
                r#" {"time":"2019-04-25T12:00:00+02:00","attrs":{"tag":"x"},"log":"{\"a\":1}\n"} "#,
                json!({"log": "{\"a\":1}"}),
            ),
        ] {
            let (mut v, r) = run(&mut p, line);
            assert!(!r.fallback, "{line}");
            assert_eq!(r.ts_ms / 1000, 1_556_186_400);
            v.as_object_mut().unwrap().remove("@timestamp");
            assert_eq!(v, want, "{line}");
        }
    }

    #[test]
    fn malformed_falls_back() {
        let mut p = Parser::new(&ParserOptions {
            kind: ParserKind::Docker,
            time_key: Some("time".into()),
            ..Default::default()
        })
        .unwrap();
        for line in [
            "plain text",
            r#"{"log":"x\n","stream":"stdout"}"#,
            r#"{"stream":"stdout","time":"2019-04-25T10:00:00Z"}"#,
            r#"{"log":"x","time":"yesterday"}"#,
            r#"{"log":"x","time":"2019-04-25T10:00:00"}"#,
            r#"{"log":1,"time":"2019-04-25T10:00:00Z"}"#,
            r#"{"log":"x","stream":2,"time":"2019-04-25T10:00:00Z"}"#,
            r#"{"log":"x","time":"2019-04-25T10:00:00Z"} trailing"#,
            r#"["log"]"#,
        ] {
            let (v, r) = run(&mut p, line);
            assert!(r.fallback && !r.time_missing, "{line}");
            assert_eq!(v, json!({"@timestamp": "2001-09-09T01:46:40.000Z", "log": line}));
        }
    }

    #[test]
    fn scratch_is_reused_across_lines() {
        let mut p = parser(ParserKind::Docker);
        let (a, _) = run(&mut p, r#"{"log":"first\tline\n","time":"2019-04-25T10:00:00Z"}"#);
        let (b, _) = run(&mut p, r#"{"log":"2nd\n","time":"2019-04-25T10:00:00Z"}"#);
        assert_eq!(
            (a["log"].as_str(), b["log"].as_str()),
            (Some("first\tline"), Some("2nd"))
        );
    }

    #[test]
    fn entries_without_newline_are_joined_per_stream() {
        use super::super::cri::tests::feed;
        let lines = [
            r#"{"log":"aaaa","stream":"stdout","time":"2019-04-25T10:00:00.1Z"}"#,
            r#"{"log":"eeee","stream":"stderr","time":"2019-04-25T10:00:00.2Z"}"#,
            r#"{"log":"bb\"b","stream":"stdout","time":"2019-04-25T10:00:00.3Z"}"#,
            r#"{"log":"cc\n","stream":"stdout","time":"2019-04-25T10:00:00.4Z"}"#,
            r#"{"log":"whole\n","stream":"stdout","time":"2019-04-25T10:00:00.5Z"}"#,
            r#"{"log":"ff\n","stream":"stderr","time":"2019-04-25T10:00:00.6Z"}"#,
            r#"{"log":"x","time":"2019-04-25T10:00:00.7Z"}"#,
        ];
        let (out, mut p) = feed(ParserKind::Docker, 1024, &lines);
        let got: Vec<Value> = out
            .iter()
            .map(|(v, cut)| {
                assert!(!cut);
                v.clone()
            })
            .collect();
        assert_eq!(
            got,
            vec![
                json!({"@timestamp": "2019-04-25T10:00:00.100Z", "log": "aaaabb\"bcc", "stream": "stdout"}),
                json!({"@timestamp": "2019-04-25T10:00:00.500Z", "log": "whole", "stream": "stdout"}),
                json!({"@timestamp": "2019-04-25T10:00:00.200Z", "log": "eeeeff", "stream": "stderr"}),
            ]
        );
        // The last entry has no stream and no newline: held from its line.
        let start: usize = lines[..6].iter().map(|l| l.len() + 1).sum();
        assert_eq!(p.held_from(), Some(start as u64));
        let mut buf = Vec::new();
        let (parsed, cut) = p.flush_held(i64::MAX, &mut buf).unwrap();
        assert!(!cut);
        assert_eq!(
            Value::Object(check_output(&buf, &parsed)),
            json!({"@timestamp": "2019-04-25T10:00:00.700Z", "log": "x"})
        );
    }

    #[test]
    fn joined_entries_over_the_limit_are_cut() {
        use super::super::cri::tests::feed;
        let part = r#"{"log":"0123456789","stream":"stdout","time":"2019-04-25T10:00:00Z"}"#;
        let last = r#"{"log":"end\n","stream":"stdout","time":"2019-04-25T10:00:00Z"}"#;
        let (out, p) = feed(
            ParserKind::Docker,
            64,
            &[part; 10].iter().copied().chain([last]).collect::<Vec<_>>(),
        );
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].0["log"].as_str().unwrap(),
            "0123456789".repeat(7).get(..64).unwrap()
        );
        assert!(out[0].1);
        assert!(!p.has_held());
    }
}
