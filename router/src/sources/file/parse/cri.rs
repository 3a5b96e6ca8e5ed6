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
//! Why `P` parts are joined (`parse_at`, see `partial.rs`) into one record
//! tagged `logtag: "F"`, identical to a line the runtime did not cut: queries
//! see one record per application line. A line flushed before its `F` part
//! arrived (end of input, `partial_line_timeout`) keeps `logtag: "P"`, so an
//! incomplete line is recognisable.
//!
//! Why JSON content stays a string in `log`: parsing it is a separate,
//! opt-in concern (it can fail, and its keys would mix with ours).

use super::partial::slot_of;
use super::time::parse_rfc3339;
use super::{Parsed, Parser, Step, json, key_bit};

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
    Some(write(p, l.ts_ms, l.stream, l.tag, l.content, out))
}

/// `parse` with `P` parts joined per stream; `None` when the line is not CRI.
pub(super) fn parse_at(
    p: &mut Parser,
    line: &str,
    start: u64,
    cut: bool,
    now_ms: i64,
    out: &mut Vec<u8>,
) -> Option<Step> {
    let l = split(line)?;
    let slot = slot_of(Some(l.stream));
    if l.tag == "F" && !p.partials.is_open(slot) {
        return Some(Step::Record {
            parsed: write(p, l.ts_ms, l.stream, l.tag, l.content, out),
            cut: false,
        });
    }
    p.partials
        .push(slot, start, l.ts_ms, Some(l.stream), l.content, cut, now_ms);
    if l.tag == "P" {
        return Some(Step::Held);
    }
    let (parsed, cut) = write_joined(p, slot, "F", out);
    Some(Step::Record { parsed, cut })
}

/// Writes the joined line of `slot` with `tag` and closes it.
pub(super) fn write_joined(p: &mut Parser, slot: usize, tag: &str, out: &mut Vec<u8>) -> (Parsed, bool) {
    let s = p.partials.take(slot);
    let stream = s.stream.as_deref().unwrap_or("stdout");
    let parsed = write(p, s.ts_ms, stream, tag, &s.text, out);
    let cut = s.truncated;
    p.partials.put_back(slot, s);
    (parsed, cut)
}

fn write(p: &mut Parser, ts_ms: i64, stream: &str, tag: &str, content: &str, out: &mut Vec<u8>) -> Parsed {
    p.open_with_timestamp(ts_ms, out);
    out.extend_from_slice(b",\"stream\":\"");
    out.extend_from_slice(stream.as_bytes());
    out.extend_from_slice(b"\",\"logtag\":\"");
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(b"\",\"log\":");
    json::write_str(out, content);
    out.push(b'}');
    Parsed {
        ts_ms,
        key_mask: p.ts_bit | p.log_bit | key_bit(b"stream") | key_bit(b"logtag"),
        fallback: false,
        time_missing: false,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::tests::{check_output, parser};
    use super::super::{ParserKind, ParserOptions};
    use super::*;
    use serde_json::{Value, json};

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

    /// Feeds lines as one file would (offsets of each line's start); returns
    /// the records (with their `cut` flag) and the parser.
    pub(in super::super) fn feed(kind: ParserKind, max: usize, lines: &[&str]) -> (Vec<(Value, bool)>, Parser) {
        let mut p = Parser::new(&ParserOptions {
            kind,
            max_line_size: Some(max),
            ..Default::default()
        })
        .unwrap();
        let mut out = Vec::new();
        let mut offset = 0u64;
        for line in lines {
            let mut buf = Vec::new();
            if let Step::Record { parsed, cut } = p.parse_at(line, offset, false, READ, &mut buf) {
                out.push((Value::Object(check_output(&buf, &parsed)), cut));
            }
            offset += line.len() as u64 + 1;
        }
        (out, p)
    }

    fn rec(v: &(Value, bool)) -> (&str, &str, &str, &str, bool) {
        let s = |k: &str| v.0[k].as_str().unwrap_or("-");
        (s("@timestamp"), s("stream"), s("logtag"), s("log"), v.1)
    }

    const T1: &str = "2016-10-06T00:17:09.669794202Z";
    const T2: &str = "2016-10-06T00:17:10.5Z";

    #[test]
    fn joins_p_parts_up_to_f_with_the_first_time() {
        let lines = [
            format!("{T1} stdout P hello "),
            format!("{T2} stdout P big "),
            format!("{T2} stdout F world"),
            format!("{T2} stdout F alone"),
        ];
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let (out, p) = feed(ParserKind::Cri, 1024, &lines);
        assert_eq!(out.len(), 2);
        assert_eq!(
            rec(&out[0]),
            ("2016-10-06T00:17:09.669Z", "stdout", "F", "hello big world", false)
        );
        assert_eq!(
            rec(&out[1]),
            ("2016-10-06T00:17:10.500Z", "stdout", "F", "alone", false)
        );
        assert_eq!(out[0].0.as_object().unwrap().len(), 4);
        assert_eq!(p.held_from(), None);
        // An F alone is exactly what `parse` writes.
        let mut a = Vec::new();
        let mut b = Vec::new();
        let mut p = parser(ParserKind::Cri);
        p.parse(lines[3], READ, &mut a);
        assert!(matches!(
            p.parse_at(lines[3], 0, false, READ, &mut b),
            Step::Record { cut: false, .. }
        ));
        assert_eq!(a, b);
    }

    #[test]
    fn interleaved_streams_are_joined_separately() {
        let lines = [
            format!("{T1} stdout P out-1 "),
            format!("{T2} stderr P err-1 "),
            "not cri at all".to_string(),
            format!("{T2} stderr F err-2"),
            format!("{T2} stdout F out-2"),
        ];
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let (out, p) = feed(ParserKind::Cri, 1024, &lines[..2]);
        assert!(out.is_empty());
        assert_eq!(p.held_from(), Some(0));
        let (out, p) = feed(ParserKind::Cri, 1024, &lines);
        let got: Vec<_> = out.iter().map(rec).collect();
        assert_eq!(
            got,
            vec![
                ("2001-09-09T01:46:40.000Z", "-", "-", "not cri at all", false),
                ("2016-10-06T00:17:10.500Z", "stderr", "F", "err-1 err-2", false),
                ("2016-10-06T00:17:09.669Z", "stdout", "F", "out-1 out-2", false),
            ]
        );
        assert_eq!(p.held_from(), None);
    }

    #[test]
    fn open_parts_are_held_from_their_first_line_and_flush_as_p() {
        let lines = [
            format!("{T1} stdout F done"),
            format!("{T1} stdout P open-1 "),
            format!("{T2} stdout P open-2"),
        ];
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let (out, mut p) = feed(ParserKind::Cri, 1024, &lines);
        assert_eq!(out.len(), 1);
        assert_eq!(p.held_from(), Some(lines[0].len() as u64 + 1));
        let mut buf = Vec::new();
        let (parsed, cut) = p.flush_held(i64::MAX, &mut buf).unwrap();
        let v = (Value::Object(check_output(&buf, &parsed)), cut);
        assert_eq!(
            rec(&v),
            ("2016-10-06T00:17:09.669Z", "stdout", "P", "open-1 open-2", false)
        );
        assert_eq!((p.held_from(), p.flush_held(i64::MAX, &mut buf)), (None, None));
        // reset_held forgets (truncated file).
        let (_, mut p) = feed(ParserKind::Cri, 1024, &lines[1..]);
        p.reset_held();
        assert!(!p.has_held());
    }

    #[test]
    fn joined_line_over_the_limit_is_cut_and_flagged() {
        let lines = [
            format!("{T1} stderr P 0123456789"),
            format!("{T1} stderr P abcdefghij"),
            format!("{T1} stderr F XYZ"),
        ];
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let (out, _) = feed(ParserKind::Cri, 15, &lines);
        assert_eq!(out.len(), 1);
        assert_eq!(rec(&out[0]).3, "0123456789abcde");
        assert!(out[0].1);
    }
}
