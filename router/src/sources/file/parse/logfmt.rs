//! The logfmt parser: `key=value key="quoted \" value" bare`.
//!
//! Why two passes (tokenize into spans, then write): the event time may be
//! the last pair of the line but `@timestamp` must be the first member
//! written, and whether the line has any `key=value` at all (else it falls
//! back) is only known at its end. Spans into the line, kept in a `Vec` the
//! parser reuses, make the first pass allocation-free.
//!
//! Why every value is a string (bare keys `true`): logfmt has no types;
//! `status=200` may be a code or a label, and guessing would give a field
//! different JSON types from line to line, which breaks index mappings
//! downstream.
//!
//! Why the first duplicate key wins: it can be decided while writing, in
//! order, with the key mask as a quick filter, and no JSON object may carry a
//! key twice.
//!
//! Why a malformed line falls back whole instead of being half-parsed: a
//! stray quote or `=` usually means the line is not logfmt (or is truncated),
//! and `{"log": line}` keeps every byte of it.

use super::time::{self, TimeParser};
use super::{Parsed, Parser, TS_KEY, json, key_bit, write_key};

#[derive(Debug, Default, Clone)]
pub(super) struct Logfmt {
    fields: Vec<Field>,
}

#[derive(Debug, Clone, Copy)]
struct Field {
    key: (usize, usize),
    value: Value,
}

#[derive(Debug, Clone, Copy)]
enum Value {
    /// A key without `=`.
    Bare,
    /// Unquoted text, possibly empty.
    Plain(usize, usize),
    /// Text between quotes; `true` if it has backslash escapes.
    Quoted(usize, usize, bool),
}

fn is_space(b: u8) -> bool {
    b.is_ascii_whitespace()
}

/// Splits `line` into `fields`; `None` if it is malformed or has no
/// `key=value` pair.
fn tokenize(line: &str, fields: &mut Vec<Field>) -> Option<()> {
    fields.clear();
    let b = line.as_bytes();
    let mut i = 0;
    let mut pairs = 0usize;
    loop {
        while b.get(i).copied().is_some_and(is_space) {
            i += 1;
        }
        let Some(&c) = b.get(i) else { break };
        if c == b'=' || c == b'"' {
            return None;
        }
        let key_start = i;
        while b.get(i).is_some_and(|&c| !is_space(c) && c != b'=' && c != b'"') {
            i += 1;
        }
        let key = (key_start, i);
        let value = match b.get(i) {
            Some(b'=') => {
                i += 1;
                pairs += 1;
                if b.get(i) == Some(&b'"') {
                    i += 1;
                    let start = i;
                    let mut escaped = false;
                    loop {
                        let at = memchr::memchr2(b'"', b'\\', b.get(i..)?)?;
                        i += at;
                        if b.get(i) == Some(&b'\\') {
                            escaped = true;
                            i += 2;
                        } else {
                            break;
                        }
                    }
                    let value = Value::Quoted(start, i, escaped);
                    i += 1;
                    // The closing quote must end the token.
                    if b.get(i).is_some_and(|&c| !is_space(c)) {
                        return None;
                    }
                    value
                } else {
                    let start = i;
                    while b.get(i).is_some_and(|&c| !is_space(c)) {
                        i += 1;
                    }
                    Value::Plain(start, i)
                }
            }
            Some(b'"') => return None,
            _ => Value::Bare,
        };
        fields.push(Field { key, value });
    }
    (pairs > 0).then_some(())
}

/// Unescapes a quoted value's content into `out`: `\"`, `\\`, `\/`, `\b`,
/// `\f`, `\n`, `\r`, `\t`, `\uXXXX` (surrogate pairs joined); any other
/// backslash is kept as text.
fn unescape_into(raw: &str, out: &mut String) {
    out.clear();
    let mut rest = raw;
    while let Some(at) = rest.find('\\') {
        let (head, tail) = rest.split_at(at);
        out.push_str(head);
        let mut chars = tail.chars();
        chars.next(); // the backslash
        let decoded = match chars.next() {
            Some('"') => Some(('"', 2)),
            Some('\\') => Some(('\\', 2)),
            Some('/') => Some(('/', 2)),
            Some('b') => Some(('\u{8}', 2)),
            Some('f') => Some(('\u{c}', 2)),
            Some('n') => Some(('\n', 2)),
            Some('r') => Some(('\r', 2)),
            Some('t') => Some(('\t', 2)),
            Some('u') => unicode_escape(tail),
            _ => None,
        };
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = tail.get(len..).unwrap_or_default();
            }
            None => {
                out.push('\\');
                rest = tail.get(1..).unwrap_or_default();
            }
        }
    }
    out.push_str(rest);
}

/// `\uXXXX` or a `\uXXXX\uXXXX` surrogate pair at the start of `s`: the char
/// and the bytes it took.
fn unicode_escape(s: &str) -> Option<(char, usize)> {
    let hex = |at: usize| -> Option<u32> {
        let h = s.get(at..at + 4)?;
        if !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(h, 16).ok()
    };
    let hi = hex(2)?;
    if (0xD800..=0xDBFF).contains(&hi) {
        if s.get(6..8)? != "\\u" {
            return None;
        }
        let lo = hex(8)?;
        if !(0xDC00..=0xDFFF).contains(&lo) {
            return None;
        }
        return Some((char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))?, 12));
    }
    Some((char::from_u32(hi)?, 6))
}

/// The value's text as a string; escaped values go through `scratch`.
fn value_text<'a>(line: &'a str, value: Value, scratch: &'a mut String) -> Option<&'a str> {
    match value {
        Value::Bare => None,
        Value::Plain(s, e) | Value::Quoted(s, e, false) => line.get(s..e),
        Value::Quoted(s, e, true) => {
            unescape_into(line.get(s..e)?, scratch);
            Some(scratch.as_str())
        }
    }
}

pub(super) fn parse(p: &mut Parser, line: &str, read_time_ms: i64, out: &mut Vec<u8>) -> Option<Parsed> {
    static AUTO: TimeParser = TimeParser::auto();
    let Parser {
        logfmt,
        time_key,
        time,
        scratch,
        ..
    } = p;
    let fields = &mut logfmt.fields;
    tokenize(line, fields)?;

    // First occurrence wins, for the time as for the output.
    let key_of = |f: &Field| line.get(f.key.0..f.key.1).unwrap_or_default();
    let mut key_time = None;
    let mut key_seen = false;
    let mut own_ts = None;
    let mut has_ts = false;
    for f in fields.iter() {
        let key = key_of(f);
        if !key_seen && time_key.as_deref() == Some(key) {
            key_seen = true;
            key_time = value_text(line, f.value, scratch).and_then(|v| time.parse_str(v));
        }
        if !has_ts && key == TS_KEY {
            has_ts = true;
            own_ts = value_text(line, f.value, scratch).and_then(|v| AUTO.parse_str(v));
        }
    }
    let ts_ms = time::clamp_ms(key_time.or(own_ts).unwrap_or(read_time_ms));
    let time_missing = time_key.is_some() && key_time.is_none();

    let mut mask = 0u64;
    let mut first = true;
    if has_ts {
        out.push(b'{');
    } else {
        p.open_with_timestamp(ts_ms, out);
        mask = p.ts_bit;
        first = false;
    }
    let fields = &p.logfmt.fields;
    for (n, f) in fields.iter().enumerate() {
        let key = key_of(f);
        let bit = key_bit(key.as_bytes());
        if mask & bit != 0 && fields.iter().take(n).any(|earlier| key_of(earlier) == key) {
            continue;
        }
        mask |= bit;
        write_key(out, &mut first, key);
        match value_text(line, f.value, &mut p.scratch) {
            Some(v) => json::write_str(out, v),
            None => out.extend_from_slice(b"true"),
        }
    }
    out.push(b'}');
    Some(Parsed {
        ts_ms,
        key_mask: mask,
        fallback: false,
        time_missing,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::check_output;
    use super::super::{ParserKind, ParserOptions, TimeFormat};
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    const READ: i64 = 1_000_000_000_000;
    const T: i64 = 1_795_641_347_123;

    fn run_with(time_key: Option<&str>, line: &str) -> (Value, Parsed) {
        let mut p = Parser::new(&ParserOptions {
            kind: ParserKind::Logfmt,
            time_key: time_key.map(String::from),
            time_format: TimeFormat::Auto,
            ..Default::default()
        })
        .unwrap();
        let mut out = Vec::new();
        let r = p.parse(line, READ, &mut out);
        let m = check_output(&out, &r);
        (Value::Object(m), r)
    }

    fn run(line: &str) -> Value {
        run_with(None, line).0
    }

    #[test]
    fn pairs_quotes_and_bare_keys() {
        let (v, r) = run_with(
            Some("ts"),
            r#"ts=2026-11-25T21:15:47.123Z level=info msg="hello \"world\" \\ \n\t\u00e9\ud83d\ude00 \q" empty= q="" done path=/a=b é=ü"#,
        );
        assert_eq!(
            v,
            json!({
                "@timestamp": "2026-11-25T21:15:47.123Z",
                "ts": "2026-11-25T21:15:47.123Z",
                "level": "info",
                "msg": "hello \"world\" \\ \n\té😀 \\q",
                "empty": "",
                "q": "",
                "done": true,
                "path": "/a=b",
                "é": "ü",
            })
        );
        assert_eq!((r.ts_ms, r.time_missing, r.fallback), (T, false, false));
    }

    #[test]
    fn timestamp_comes_first() {
        let mut p = Parser::new(&ParserOptions {
            kind: ParserKind::Logfmt,
            time_key: Some("t".into()),
            ..Default::default()
        })
        .unwrap();
        let mut out = Vec::new();
        let r = p.parse("a=1 t=1795641347123", READ, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"@timestamp":"2026-11-25T21:15:47.123Z","a":"1","t":"1795641347123"}"#
        );
        assert_eq!(r.ts_ms, T);
    }

    #[test]
    fn first_duplicate_wins() {
        assert_eq!(
            run("a=1 b=2 a=3 a b"),
            json!({"@timestamp": "2001-09-09T01:46:40.000Z", "a": "1", "b": "2"})
        );
    }

    #[test]
    fn own_timestamp_is_kept() {
        let (v, r) = run_with(None, "msg=x @timestamp=2026-11-25T21:15:47.123Z @timestamp=late");
        assert_eq!(v, json!({"msg": "x", "@timestamp": "2026-11-25T21:15:47.123Z"}));
        assert_eq!(r.ts_ms, T);
        let (v, r) = run_with(None, "@timestamp msg=x");
        assert_eq!(v, json!({"@timestamp": true, "msg": "x"}));
        assert_eq!(r.ts_ms, READ);
    }

    #[test]
    fn missing_or_bad_time() {
        let (_, r) = run_with(Some("ts"), "a=1");
        assert_eq!((r.ts_ms, r.time_missing), (READ, true));
        let (_, r) = run_with(Some("ts"), "ts=soon a=1");
        assert_eq!((r.ts_ms, r.time_missing), (READ, true));
        let (_, r) = run_with(Some("ts"), r#"ts="2026-11-25 21:15:47.123""#);
        assert_eq!((r.ts_ms, r.time_missing), (T, false));
    }

    #[test]
    fn not_logfmt_falls_back() {
        for line in [
            "just words here",
            "   ",
            "a=\"unterminated",
            "a=\"x\"y",
            "=x a=1",
            "a=1 \"q\"",
            "k\"=1",
            "a=\"ends with \\\"",
        ] {
            let (v, r) = run_with(Some("ts"), line);
            assert!(r.fallback, "{line}");
            assert!(r.time_missing);
            assert_eq!(
                v,
                json!({"@timestamp": "2001-09-09T01:46:40.000Z", "log": line}),
                "{line}"
            );
        }
    }

    /// Encodes a value the way logfmt writers do.
    fn encode(v: &str) -> String {
        if !v.is_empty()
            && !v
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b == b'"' || b == b'\\' || b < 0x20)
        {
            return v.to_string();
        }
        let mut s = String::from("\"");
        for c in v.chars() {
            match c {
                '"' => s.push_str("\\\""),
                '\\' => s.push_str("\\\\"),
                '\n' => s.push_str("\\n"),
                '\t' => s.push_str("\\t"),
                c if (c as u32) < 0x20 => s.push_str(&format!("\\u{:04x}", c as u32)),
                c => s.push(c),
            }
        }
        s.push('"');
        s
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn round_trips(
            pairs in prop::collection::vec(("[a-zA-Z_][a-zA-Z0-9_.\\-/:]{0,10}", any::<String>()), 1..8),
            bare in prop::collection::vec("[a-z]{1,5}", 0..3),
            sep in "[ \t]{1,3}",
        ) {
            let mut line = String::new();
            for (k, v) in &pairs {
                line.push_str(&format!("{k}={}{sep}", encode(v)));
            }
            for k in &bare {
                line.push_str(&format!("{k}{sep}"));
            }
            let mut want = serde_json::Map::new();
            want.insert(TS_KEY.into(), json!("2001-09-09T01:46:40.000Z"));
            for (k, v) in &pairs {
                want.entry(k.clone()).or_insert(json!(v));
            }
            for k in &bare {
                want.entry(k.clone()).or_insert(json!(true));
            }
            let (v, r) = run_with(None, &line);
            prop_assert!(!r.fallback);
            prop_assert_eq!(v, Value::Object(want));
        }
    }
}
