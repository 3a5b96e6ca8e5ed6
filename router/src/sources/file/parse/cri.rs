//! The CRI parser (containerd and CRI-O container logs):
//! `<RFC 3339 time> <stdout|stderr> <P|F> <content>`.
//!
//! Why strict: the runtime writes this format, never a person, so anything
//! that deviates (another stream name, a tag other than `P`/`F`, a time
//! without an offset) means the file is not a CRI log, and the whole line is
//! better kept raw in a fallback record than half-parsed.
//!
//! Why the CRI time is the event time even when `time_key` is set: the
//! record has no other fields (`time_key` would apply to the content once it
//! is parsed as JSON, which is a later feature), and the runtime's time is
//! taken when the container wrote the line.
//!
//! Why `P` lines are emitted as they come: joining partial lines needs state
//! across lines and a flush timeout; until then each part is a record tagged
//! `logtag: "P"`, so nothing is lost or silently merged.

use super::time::parse_rfc3339;
use super::{Parsed, Parser, json, key_bit};

/// One CRI line, split.
#[derive(Debug, PartialEq, Eq)]
struct Line<'a> {
    ts_ms: i64,
    stream: &'a str,
    tag: &'a str,
    content: &'a str,
}

fn split(line: &str) -> Option<Line<'_>> {
    let (time, rest) = line.split_once(' ')?;
    let (stream, rest) = rest.split_once(' ')?;
    if stream != "stdout" && stream != "stderr" {
        return None;
    }
    // An empty content may come without its separating space.
    let (tag, content) = rest.split_once(' ').unwrap_or((rest, ""));
    if tag != "P" && tag != "F" {
        return None;
    }
    Some(Line {
        ts_ms: parse_rfc3339(time, false)?,
        stream,
        tag,
        content,
    })
}

pub(super) fn parse(p: &mut Parser, line: &str, out: &mut Vec<u8>) -> Option<Parsed> {
    let l = split(line)?;
    p.open_with_timestamp(l.ts_ms, out);
    out.extend_from_slice(b",\"stream\":\"");
    out.extend_from_slice(l.stream.as_bytes());
    out.extend_from_slice(b"\",\"logtag\":\"");
    out.extend_from_slice(l.tag.as_bytes());
    out.extend_from_slice(b"\",\"log\":");
    json::write_str(out, l.content);
    out.push(b'}');
    Some(Parsed {
        ts_ms: l.ts_ms,
        key_mask: p.ts_bit | p.log_bit | key_bit(b"stream") | key_bit(b"logtag"),
        fallback: false,
        time_missing: false,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{check_output, parser};
    use super::super::{ParserKind, ParserOptions};
    use super::*;
    use serde_json::json;

    const READ: i64 = 1_000_000_000_000;

    #[test]
    fn splits_cri_lines() {
        let mut p = parser(ParserKind::Cri);
        let mut out = Vec::new();
        let r = p.parse(
            "2016-10-06T00:17:09.669794202Z stdout F hello \"cri\"  world ",
            READ,
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            r#"{"@timestamp":"2016-10-06T00:17:09.669Z","stream":"stdout","logtag":"F","log":"hello \"cri\"  world "}"#
        );
        check_output(&out, &r);
        assert_eq!((r.ts_ms, r.fallback, r.time_missing), (1_475_713_029_669, false, false));

        let cases = [
            (
                "2016-10-06T02:17:09.669794202+02:00 stderr P part",
                ("stderr", "P", "part"),
            ),
            ("2016-10-06T00:17:09.669794202Z stdout F ", ("stdout", "F", "")),
            ("2016-10-06T00:17:09.669794202Z stdout F", ("stdout", "F", "")),
            ("2016-10-06T00:17:09Z stdout F {\"a\":1}", ("stdout", "F", "{\"a\":1}")),
        ];
        for (line, (stream, tag, content)) in cases {
            let l = split(line).unwrap_or_else(|| panic!("{line}"));
            assert_eq!((l.stream, l.tag, l.content), (stream, tag, content), "{line}");
            assert_eq!(l.ts_ms / 1000, 1_475_713_029);
        }
    }

    #[test]
    fn malformed_falls_back_without_time_missing() {
        // time_key does not apply to CRI records.
        let mut p = Parser::new(&ParserOptions {
            kind: ParserKind::Cri,
            time_key: Some("t".into()),
            ..Default::default()
        })
        .unwrap();
        for line in [
            "hello",
            "2016-10-06T00:17:09.669794202Z stdout",
            "2016-10-06T00:17:09.669794202Z stdin F x",
            "2016-10-06T00:17:09.669794202Z stdout X x",
            "2016-10-06T00:17:09.669794202Z stdout F:x x",
            "2016-10-06T00:17:09.669794202 stdout F x",
            "yesterday stdout F x",
            " 2016-10-06T00:17:09.669794202Z stdout F x",
        ] {
            let mut out = Vec::new();
            let r = p.parse(line, READ, &mut out);
            let m = check_output(&out, &r);
            assert!(r.fallback && !r.time_missing, "{line}");
            assert_eq!(
                serde_json::Value::Object(m),
                json!({"@timestamp": "2001-09-09T01:46:40.000Z", "log": line})
            );
        }
    }
}
