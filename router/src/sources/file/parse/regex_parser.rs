//! The regex parser: named captures become string fields.
//!
//! Why only named groups, and a regex without one is refused: unnamed groups
//! are how users group alternatives (`(GET|POST)`); turning them into fields
//! named `1`, `2` would be noise, and a regex that yields no field at all is
//! a configuration mistake best caught at start-up.
//!
//! Why unmatched optional groups are omitted rather than `null` or `""`: an
//! absent field is what the line said (nothing), and it keeps a field's JSON
//! type constant (always a string when present).
//!
//! Why `captures_read` with `CaptureLocations` kept in the parser: it reuses
//! one slot buffer for every line instead of allocating `Captures` per line,
//! and the per-group key bits and names are computed once at construction.
//!
//! Why the match is unanchored: that is the `regex` crate's (and most log
//! tools') meaning; users anchor with `^…$` when they mean the whole line.

use regex::{CaptureLocations, Regex};

use super::time::{self, TimeParser};
use super::{Parsed, Parser, ParserConfigError, TS_KEY, json, key_bit, write_key};

#[derive(Debug, Clone)]
struct Group {
    /// Capture index in the regex.
    index: usize,
    name: Box<str>,
    bit: u64,
}

#[derive(Debug, Clone)]
pub(super) struct RegexParser {
    re: Regex,
    locs: CaptureLocations,
    groups: Vec<Group>,
    /// Capture index of the group named like `time_key`.
    time_group: Option<usize>,
    /// Capture index of a group named `@timestamp` (the regex crate forbids
    /// `@` in names today; kept so the rule holds if that changes).
    ts_group: Option<usize>,
}

impl RegexParser {
    pub(super) fn new(pattern: &str, time_key: Option<&str>) -> Result<Self, ParserConfigError> {
        let re = Regex::new(pattern)?;
        let groups: Vec<Group> = re
            .capture_names()
            .enumerate()
            .filter_map(|(index, name)| {
                name.map(|name| Group {
                    index,
                    name: name.into(),
                    bit: key_bit(name.as_bytes()),
                })
            })
            .collect();
        if groups.is_empty() {
            return Err(ParserConfigError::NoNamedGroup(pattern.to_string()));
        }
        let index_of = |want: &str| groups.iter().find(|g| &*g.name == want).map(|g| g.index);
        Ok(RegexParser {
            locs: re.capture_locations(),
            time_group: time_key.and_then(index_of),
            ts_group: index_of(TS_KEY),
            groups,
            re,
        })
    }
}

pub(super) fn parse(p: &mut Parser, line: &str, read_time_ms: i64, out: &mut Vec<u8>) -> Option<Parsed> {
    static AUTO: TimeParser = TimeParser::auto();
    let rp = p.regex.as_mut()?;
    rp.re.captures_read(&mut rp.locs, line)?;
    let capture = |index: Option<usize>| -> Option<&str> {
        let (s, e) = rp.locs.get(index?)?;
        line.get(s..e)
    };
    let key_time = capture(rp.time_group).and_then(|v| p.time.parse_str(v));
    let has_ts = capture(rp.ts_group).is_some();
    let own_ts = capture(rp.ts_group).and_then(|v| AUTO.parse_str(v));
    let ts_ms = time::clamp_ms(key_time.or(own_ts).unwrap_or(read_time_ms));
    let time_missing = p.time_key.is_some() && key_time.is_none();

    let mut mask = 0u64;
    let mut first = true;
    if has_ts {
        out.push(b'{');
    } else {
        p.open_with_timestamp(ts_ms, out);
        mask = p.ts_bit;
        first = false;
    }
    let rp = p.regex.as_ref()?;
    for g in &rp.groups {
        let Some(value) = rp.locs.get(g.index).and_then(|(s, e)| line.get(s..e)) else {
            continue;
        };
        mask |= g.bit;
        write_key(out, &mut first, &g.name);
        json::write_str(out, value);
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

    fn parser(re: &str, time_key: Option<&str>, time_format: TimeFormat) -> Parser {
        Parser::new(&ParserOptions {
            kind: ParserKind::Regex,
            regex: Some(re.to_string()),
            time_key: time_key.map(String::from),
            time_format,
            max_line_size: None,
        })
        .unwrap()
    }

    fn run(p: &mut Parser, line: &str) -> (Value, Parsed) {
        let mut out = Vec::new();
        let r = p.parse(line, READ, &mut out);
        (Value::Object(check_output(&out, &r)), r)
    }

    const NGINX: &str = r#"^(?P<remote>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "(?P<method>\S+) (?P<path>\S+)(?: (?P<proto>[^"]+))?" (?P<status>\d{3}) (?P<size>\d+|-)"#;

    #[test]
    fn access_log() {
        let mut p = parser(NGINX, Some("time"), TimeFormat::Strftime("%d/%b/%Y:%H:%M:%S %z".into()));
        let (v, r) = run(
            &mut p,
            r#"10.0.0.1 - bob [25/Nov/2026:22:15:47 +0100] "GET /a\"b HTTP/1.1" 200 512 "-" "curl""#,
        );
        assert_eq!(
            v,
            json!({
                "@timestamp": "2026-11-25T21:15:47.000Z",
                "remote": "10.0.0.1",
                "user": "bob",
                "time": "25/Nov/2026:22:15:47 +0100",
                "method": "GET",
                "path": "/a\\\"b",
                "proto": "HTTP/1.1",
                "status": "200",
                "size": "512",
            })
        );
        assert_eq!((r.ts_ms, r.time_missing, r.fallback), (1_795_641_347_000, false, false));
        // Unmatched optional group: omitted.
        let (v, _) = run(&mut p, r#"10.0.0.1 - - [25/Nov/2026:22:15:47 +0100] "GET /" 404 -"#);
        assert!(v.get("proto").is_none());
        assert_eq!(v["size"], "-");
    }

    #[test]
    fn order_is_group_order_and_timestamp_first() {
        let mut p = parser(r"(?P<b>\d+)-(?P<a>\w+)", None, TimeFormat::Auto);
        let mut out = Vec::new();
        let r = p.parse("xx 12-ab yy", READ, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"@timestamp":"2001-09-09T01:46:40.000Z","b":"12","a":"ab"}"#
        );
        assert_eq!(r.key_mask, key_bit(b"@timestamp") | key_bit(b"a") | key_bit(b"b"));
        assert!(!r.time_missing);
    }

    #[test]
    fn no_match_falls_back_and_bad_time_is_missing() {
        let mut p = parser(r"^(?P<ts>\S+) (?P<msg>.*)$", Some("ts"), TimeFormat::Auto);
        let (v, r) = run(&mut p, "nospace");
        assert!(r.fallback && r.time_missing);
        assert_eq!(v, json!({"@timestamp": "2001-09-09T01:46:40.000Z", "log": "nospace"}));
        let (v, r) = run(&mut p, "later hello");
        assert!(!r.fallback && r.time_missing);
        assert_eq!(v["msg"], "hello");
        let (_, r) = run(&mut p, "1795641347.123 hello");
        assert_eq!((r.ts_ms, r.time_missing), (1_795_641_347_123, false));
    }

    #[test]
    fn construction_errors() {
        assert!(matches!(
            RegexParser::new("(", None),
            Err(ParserConfigError::InvalidRegex(_))
        ));
        assert!(matches!(
            RegexParser::new("(a)|b", None),
            Err(ParserConfigError::NoNamedGroup(_))
        ));
        assert!(RegexParser::new("(?<a>x)", None).is_ok());
    }

    proptest! {
        #[test]
        fn any_line_gives_valid_output(line in "\\PC{1,60}|.{1,30}") {
            let mut p = parser(r#"(?P<word>\w+)(?:\s+(?P<rest>.*))?|(?P<quote>")"#, None, TimeFormat::Auto);
            let (v, r) = run(&mut p, &line);
            prop_assert!(v.get("@timestamp").is_some_and(Value::is_string));
            if !r.fallback {
                for (k, val) in v.as_object().unwrap() {
                    prop_assert!(val.is_string(), "{}", k);
                }
            }
        }
    }
}
