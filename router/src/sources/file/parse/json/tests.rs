use super::super::tests::check_output;
use super::super::{ParserKind, ParserOptions, TimeFormat};
use super::*;
use proptest::prelude::*;
use serde_json::{Value, json};

const READ: i64 = 1_000_000_000_000; // 2001-09-09T01:46:40.000Z
const T: i64 = 1_795_641_347_123; // 2026-11-25T21:15:47.123Z

#[test]
fn members_give_unescaped_keys_and_whole_member_spans() {
    let obj = br#"{ "a":1, "l\u006fg" : "x,}\"y" ,"o":{"p":[1,{"q":2}]},"n":null}"#;
    let m = members(obj).unwrap();
    let got: Vec<(String, &str)> = m
        .iter()
        .map(|(k, r)| (k.to_string(), std::str::from_utf8(&obj[r.clone()]).unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("a".to_string(), r#""a":1"#),
            ("log".to_string(), r#""l\u006fg" : "x,}\"y""#),
            ("o".to_string(), r#""o":{"p":[1,{"q":2}]}"#),
            ("n".to_string(), r#""n":null"#),
        ]
    );
    assert_eq!(members(b"{}").unwrap().len(), 0);
    assert!(members(br#"{"a":1"#).is_none());
    assert!(members(br#"["a"]"#).is_none());
}

fn parser(time_key: Option<&str>, time_format: TimeFormat) -> Parser {
    Parser::new(&ParserOptions {
        kind: ParserKind::Json,
        time_key: time_key.map(String::from),
        time_format,
        ..Default::default()
    })
    .unwrap()
}

fn run(p: &mut Parser, line: &str) -> (String, Parsed) {
    let mut out = Vec::new();
    let r = p.parse(line, READ, &mut out);
    check_output(&out, &r);
    (String::from_utf8(out).unwrap(), r)
}

#[test]
fn splices_timestamp_and_keeps_bytes() {
    let mut p = parser(Some("ts"), TimeFormat::Auto);
    let line = r#"  {"ts":"2026-11-25T21:15:47.123Z", "n" : 1.50e0,"s":"a\"b\u00e9"}	"#;
    let (out, r) = run(&mut p, line);
    assert_eq!(
        out,
        r#"{"@timestamp":"2026-11-25T21:15:47.123Z","ts":"2026-11-25T21:15:47.123Z", "n" : 1.50e0,"s":"a\"b\u00e9"}"#
    );
    assert_eq!(r.ts_ms, T);
    assert!(!r.fallback && !r.time_missing);
    let want = [TS_KEY, "ts", "n", "s"]
        .iter()
        .fold(0, |m, k| m | key_bit(k.as_bytes()));
    assert_eq!(r.key_mask, want);
}

#[test]
fn empty_object_gets_no_dangling_comma() {
    let mut p = parser(None, TimeFormat::Auto);
    assert_eq!(run(&mut p, "{}").0, r#"{"@timestamp":"2001-09-09T01:46:40.000Z"}"#);
    assert_eq!(run(&mut p, "{ \t }").0, r#"{"@timestamp":"2001-09-09T01:46:40.000Z"}"#);
}

#[test]
fn own_timestamp_is_kept_and_used() {
    let mut p = parser(None, TimeFormat::Auto);
    let line = r#"{"msg":"x","@timestamp":"2026-11-25T21:15:47.123Z"}"#;
    let (out, r) = run(&mut p, line);
    assert_eq!(out, line);
    assert_eq!(r.ts_ms, T);
    // Unparseable: kept as is, read time used.
    let line = r#"{"@timestamp":"yesterday"}"#;
    let (out, r) = run(&mut p, line);
    assert_eq!((out.as_str(), r.ts_ms), (line, READ));
    // Escaped spelling of the same key is the same key.
    let line = r#"{"\u0040timestamp":1795641347123}"#;
    let (out, r) = run(&mut p, line);
    assert_eq!((out.as_str(), r.ts_ms), (line, T));
    // time_key beats @timestamp.
    let mut p = parser(Some("t"), TimeFormat::EpochS);
    let (_, r) = run(&mut p, r#"{"@timestamp":"2026-11-25T21:15:47.123Z","t":5}"#);
    assert_eq!(r.ts_ms, 5000);
    let (_, r) = run(&mut p, r#"{"@timestamp":"2026-11-25T21:15:47.123Z","t":"x"}"#);
    assert_eq!((r.ts_ms, r.time_missing), (T, true));
    // time_key may be @timestamp itself.
    let mut p = parser(Some("@timestamp"), TimeFormat::EpochMs);
    let (out, r) = run(&mut p, r#"{"@timestamp":1795641347123}"#);
    assert_eq!(
        (out.as_str(), r.ts_ms, r.time_missing),
        (r#"{"@timestamp":1795641347123}"#, T, false)
    );
}

#[test]
fn time_key_shapes() {
    let mut p = parser(Some("ts"), TimeFormat::Auto);
    for (line, ts, missing) in [
        (r#"{"ts":1795641347.123}"#, T, false),
        (r#"{"ts":1795641347123}"#, T, false),
        (r#"{"ts":"1795641347123456"}"#, T, false),
        (r#"{"ts":"2026-11-25 21:15:47.123"}"#, T, false),
        (r#"{"ts":"2026-11-25T21:15:47.123\u005a"}"#, T, false),
        (r#"{"ts":null}"#, READ, true),
        (r#"{"ts":{"a":[1,{"b":2}]}}"#, READ, true),
        (r#"{"ts":[1795641347123]}"#, READ, true),
        (r#"{"ts":true}"#, READ, true),
        (r#"{"other":1795641347123}"#, READ, true),
        (r#"{"ts":"junk","ts":1795641347123}"#, T, false),
    ] {
        let (_, r) = run(&mut p, line);
        assert_eq!((r.ts_ms, r.time_missing, r.fallback), (ts, missing, false), "{line}");
    }
    // The time value is read for real, not skipped, so serde_json's range
    // check applies to it.
    assert!(run(&mut p, r#"{"ts":-1e400}"#).1.fallback);
    let mut p = parser(Some("when"), TimeFormat::Strftime("%d/%m/%Y %H:%M:%S%.3f".into()));
    let (_, r) = run(&mut p, r#"{"when":"25/11/2026 21:15:47.123"}"#);
    assert_eq!(r.ts_ms, T);
}

#[test]
fn non_objects_fall_back() {
    let mut p = parser(Some("ts"), TimeFormat::Auto);
    for line in [
        "not json",
        "[1,2]",
        "42",
        r#""str""#,
        "null",
        "{",
        r#"{"a":1} x"#,
        r#"{"a":1}{"b":2}"#,
        r#"{"a":1,}"#,
        r#"{"a":"b	c"}"#,
        "{\"a\":\"\0\"}",
        "{\"a\":1\0}",
        r#"{"a":"\x"}"#,
        r#"{"a":"\ud800"}"#,
        r#"{"a":"\udc00\ud800"}"#,
        r#"{"\ud800":1}"#,
        r#"{a:1}"#,
        r#"{"a":tru}"#,
        r#"{"a":01}"#,
    ] {
        let (out, r) = run(&mut p, line);
        assert!(r.fallback, "{line}");
        assert!(r.time_missing);
        assert_eq!(r.ts_ms, READ);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v, json!({"@timestamp": "2001-09-09T01:46:40.000Z", "log": line}));
    }
    // A valid surrogate pair is fine.
    let (_, r) = run(&mut p, r#"{"a":"\ud83d\ude00 \\ud800"}"#);
    assert!(!r.fallback);
}

#[test]
fn depth_limit() {
    let nest = |d: usize| format!("{}{{{}", "{\"a\":".repeat(d - 1), "}".repeat(d));
    let arr = |d: usize| format!("{{\"a\":{}1{}}}", "[".repeat(d - 1), "]".repeat(d - 1));
    let mut p = parser(None, TimeFormat::Auto);
    for (line, deep) in [
        (nest(MAX_DEPTH), false),
        (nest(MAX_DEPTH + 1), true),
        (arr(MAX_DEPTH), false),
        (arr(MAX_DEPTH + 1), true),
        (nest(5000), true),
    ] {
        let (_, r) = run(&mut p, &line);
        assert_eq!(r.fallback, deep, "{}", line.len());
    }
    // Brackets inside strings do not count.
    let line = format!("{{\"a\":\"{}\\\"{}\"}}", "[".repeat(300), "{".repeat(300));
    assert!(!run(&mut p, &line).1.fallback);
}

#[test]
fn carriage_returns_between_tokens_become_spaces() {
    let mut p = parser(None, TimeFormat::Auto);
    let (out, r) = run(&mut p, "{\"a\":1,\r\"b\":\"x\\r\"\r\n}");
    assert!(!r.fallback);
    assert!(out.ends_with(r#""a":1, "b":"x\r"  }"#), "{out}");
}

#[test]
fn write_str_escapes() {
    let mut out = Vec::new();
    write_str(&mut out, "a\"\\\u{0}\u{1f}\u{8}\u{c}\n\r\té\u{7f}\u{2028}");
    assert_eq!(
        String::from_utf8(out.clone()).unwrap(),
        "\"a\\\"\\\\\\u0000\\u001f\\b\\f\\n\\r\\té\u{7f}\u{2028}\""
    );
    let back: String = serde_json::from_slice(&out).unwrap();
    assert_eq!(back, "a\"\\\u{0}\u{1f}\u{8}\u{c}\n\r\té\u{7f}\u{2028}");
}

#[test]
fn scanner_reads_emitted_objects() {
    let obj = br#" { "a" : "x" , "n":-1.5E+3,"t":true,"f":false,"z":null,"arr":[1,"}",{"q":1}],
        "k":{"pod_name":"p\u00e9","deep":{"x":7},"s":"a]b"},"a\"b":1,"dup":1,"dup":"two","":"empty"} "#;
    assert!(has_top_level_key(obj, "a"));
    assert!(has_top_level_key(obj, "a\"b"));
    assert!(has_top_level_key(obj, ""));
    assert!(!has_top_level_key(obj, "q"));
    assert!(!has_top_level_key(obj, "pod_name"));
    assert!(!has_top_level_key(obj, "a\\\"b"));
    assert_eq!(lookup_field(obj, "a").as_deref(), Some("x"));
    assert!(matches!(lookup_field(obj, "a"), Some(Cow::Borrowed(_))));
    assert_eq!(lookup_field(obj, "n").as_deref(), Some("-1.5E+3"));
    assert_eq!(lookup_field(obj, "t").as_deref(), Some("true"));
    assert_eq!(lookup_field(obj, "f").as_deref(), Some("false"));
    assert_eq!(lookup_field(obj, "z"), None);
    assert_eq!(lookup_field(obj, "arr"), None);
    assert_eq!(lookup_field(obj, "k"), None);
    assert_eq!(lookup_field(obj, "k.pod_name").as_deref(), Some("pé"));
    assert_eq!(lookup_field(obj, "k.deep.x").as_deref(), Some("7"));
    assert_eq!(lookup_field(obj, "k.s").as_deref(), Some("a]b"));
    assert_eq!(lookup_field(obj, "k.missing"), None);
    assert_eq!(lookup_field(obj, "a.b"), None);
    assert_eq!(lookup_field(obj, "dup").as_deref(), Some("two"));
    assert_eq!(lookup_field(obj, "").as_deref(), Some("empty"));
    assert_eq!(lookup_field(obj, "a\"b").as_deref(), Some("1"));
    for bad in [
        &b""[..],
        b"[]",
        b"{",
        b"{\"a\"",
        b"{\"a\":",
        b"{\"a\":1",
        b"{\"a\":\"x",
        b"{\"a\":[1",
        b"{\"a\":\"\\u12\"}",
    ] {
        assert!(!has_top_level_key(bad, "b"));
        assert_eq!(lookup_field(bad, "a"), None, "{}", String::from_utf8_lossy(bad));
    }
    assert!(!has_top_level_key(b"{}", ""));
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[a-z\"\\\\\u{0}-\u{1f}é😀]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(arb_key(), inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_]{1,6}",
        any::<String>(),
        Just("@timestamp".to_string()),
        Just("ts".to_string()),
        Just("k\"ey".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn keeps_every_field(
        fields in prop::collection::btree_map(arb_key(), arb_value(), 0..8),
        pretty in any::<bool>(),
        probe in arb_key(),
    ) {
        let input = Value::Object(fields.into_iter().collect());
        let line = if pretty { serde_json::to_string_pretty(&input) } else { serde_json::to_string(&input) }.unwrap();
        let reference: Value = serde_json::from_str(&line).unwrap();
        let mut p = parser(Some("ts"), TimeFormat::Auto);
        let mut out = Vec::new();
        let r = p.parse(&line, READ, &mut out);
        prop_assert!(!r.fallback, "{}", line);
        let mut m = check_output(&out, &r);
        let Value::Object(want) = &reference else { unreachable!() };
        if !want.contains_key(TS_KEY) {
            prop_assert!(m.remove(TS_KEY).is_some_and(|v| v.is_string()));
        }
        prop_assert_eq!(&Value::Object(m.clone()), &reference);
        for (k, v) in want {
            prop_assert!(has_top_level_key(&out, k));
            let expect = match v {
                Value::String(s) => Some(s.clone()),
                Value::Bool(b) => Some(b.to_string()),
                Value::Number(_) => Some(v.to_string()),
                _ => None,
            };
            if k.contains('.') {
                continue; // a path, not a key, to lookup_field
            }
            let got = lookup_field(&out, k).map(|c| c.into_owned());
            match (&expect, &got, v) {
                // Numbers: same value, text as written.
                (Some(_), Some(g), Value::Number(_)) => prop_assert_eq!(&serde_json::from_str::<Value>(g).unwrap(), v),
                _ => prop_assert_eq!(&got, &expect, "{}", k),
            }
            if let Value::Object(inner) = v {
                {
                    for (k2, v2) in inner {
                        if k2.contains('.') { continue; }
                        let got = lookup_field(&out, &format!("{k}.{k2}")).map(|c| c.into_owned());
                        let expect = match v2 {
                            Value::String(s) => Some(s.clone()),
                            Value::Bool(b) => Some(b.to_string()),
                            Value::Number(_) => Some(v2.to_string()),
                            _ => None,
                        };
                        if !matches!(v2, Value::Number(_)) {
                            prop_assert_eq!(got, expect);
                        } else {
                            prop_assert!(got.is_some());
                        }
                    }
                }
            }
        }
        prop_assert_eq!(has_top_level_key(&out, &probe), m.contains_key(&probe) || (probe == TS_KEY));
    }

    #[test]
    fn json_ish_garbage(line in "[{}\\[\\]\":,a-fln-u0-9 \\\\.-]{1,40}") {
        // The one known difference: f64-overflowing numbers are valid JSON
        // (kept as written) but serde_json's Value refuses them.
        prop_assume!(!regex::Regex::new("[0-9]e[+]?[0-9]{3}").unwrap().is_match(&line));
        let mut p = parser(Some("a"), TimeFormat::Auto);
        let mut out = Vec::new();
        let r = p.parse(&line, READ, &mut out);
        let m = check_output(&out, &r);
        let reference = serde_json::from_str::<Value>(line.trim_ascii()).ok().filter(Value::is_object);
        prop_assert_eq!(r.fallback, reference.is_none(), "{}", line);
        if r.fallback {
            prop_assert_eq!(m.get("log").and_then(Value::as_str), Some(line.as_str()));
        }
    }
}

/// Throughput of the hot path: `cargo test --release -- --ignored --nocapture json_throughput`.
#[test]
#[ignore = "benchmark: run with --release"]
fn json_throughput() {
    let line = r#"{"ts":"2026-11-25T10:00:00.123Z","level":"info","logger":"http.server","msg":"request completed","request_id":"0f8fad5b-d9cb-469f-a165-70867728950e","user_id":48213,"latency_ms":12.5,"path":"/api/v1/orders"}"#;
    let long = r#"{"ts":"2026-11-25T10:00:00.123Z","level":"info","logger":"http.server","msg":"request \"completed\"","request_id":"0f8fad5b-d9cb-469f-a165-70867728950e","user_id":48213,"latency_ms":12.5,"path":"/api/v1/orders","ua":"Mozilla/5.0 (X11; Linux x86_64)","tags":["a","b"]}"#;
    for line in [line, long] {
        let rate = throughput(line);
        println!(
            "json parse: {rate:.0} lines/s ({} bytes/line, {:.0} MB/s)",
            line.len(),
            rate * line.len() as f64 / 1e6
        );
    }
}

fn throughput(line: &str) -> f64 {
    let mut p = parser(Some("ts"), TimeFormat::Auto);
    let mut out = Vec::with_capacity(1 << 20);
    let n = 4_000_000;
    let mut best = 0.0f64;
    for _ in 0..3 {
        let start = std::time::Instant::now();
        let mut mask = 0;
        for i in 0..n {
            if out.len() > (1 << 20) - 512 {
                out.clear();
            }
            let r = p.parse(std::hint::black_box(line), READ + i, &mut out);
            assert!(!r.fallback);
            mask |= r.key_mask;
        }
        std::hint::black_box(mask);
        best = best.max(n as f64 / start.elapsed().as_secs_f64());
    }
    best
}
