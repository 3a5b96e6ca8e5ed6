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

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, Visitor};

use super::time::parse_rfc3339;
use super::{Parsed, Parser, json, key_bit};

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

pub(super) fn parse(p: &mut Parser, line: &str, out: &mut Vec<u8>) -> Option<Parsed> {
    let text = line.trim_ascii();
    let mut de = serde_json::Deserializer::from_str(text);
    let rec = (&mut de).deserialize_map(RecordVisitor(&mut p.scratch)).ok()?;
    de.end().ok()?;
    let ts_ms = rec.time?;
    let log = match rec.log? {
        Text::Borrowed(s) => s,
        Text::Scratch => p.scratch.as_str(),
    };
    let log = strip_newline(log);
    // Field by field: `log` may borrow `p.scratch`.
    out.extend_from_slice(b"{\"@timestamp\":\"");
    p.fmt.write(ts_ms, out);
    out.extend_from_slice(b"\",\"log\":");
    json::write_str(out, log);
    let mut key_mask = p.ts_bit | p.log_bit;
    if let Some(stream) = rec.stream {
        out.extend_from_slice(b",\"stream\":");
        json::write_str(out, stream);
        key_mask |= key_bit(b"stream");
    }
    out.push(b'}');
    Some(Parsed {
        ts_ms,
        key_mask,
        fallback: false,
        time_missing: false,
    })
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
}
