use super::*;
use proptest::prelude::*;
use serde_json::{Value, json};

fn redactor(toml_text: &str) -> Redactor {
    let cfg: RedactConfig = toml::from_str(toml_text).unwrap();
    Redactor::new(&cfg).unwrap()
}

/// The record after redaction (`None`: passed untouched) and the counts.
fn run_one(r: &Redactor, record: &str) -> (Option<Value>, Vec<u64>) {
    let mut out = Vec::new();
    let mut counts = vec![0; r.dets.len()];
    let changed = r.redact_into(record.as_bytes(), &mut out, &mut counts).unwrap();
    assert_eq!(changed, !out.is_empty());
    (changed.then(|| serde_json::from_slice(&out).unwrap()), counts)
}

fn msg(r: &Redactor, text: &str) -> String {
    let rec = serde_json::to_string(&json!({ "msg": text })).unwrap();
    match run_one(r, &rec).0 {
        Some(v) => v["msg"].as_str().unwrap().to_string(),
        None => text.to_string(),
    }
}

#[test]
fn email() {
    let r = redactor("detectors = [\"email\"]");
    assert_eq!(
        msg(&r, "mail jane.doe+x@mail.example.co.uk now"),
        "mail [REDACTED:email] now"
    );
    assert_eq!(
        msg(&r, "<a@b.io>, c_d@e-f.org."),
        "<[REDACTED:email]>, [REDACTED:email]."
    );
    for miss in ["user@localhost", "@handle", "a@b", "x@1.2", "name at example.com"] {
        assert_eq!(msg(&r, miss), miss);
    }
}

#[test]
fn credit_cards_are_luhn_checked_and_near_misses_untouched() {
    let r = redactor("detectors = [\"credit_card\"]");
    for card in [
        "4111111111111111",
        "4111 1111 1111 1111",
        "5500-0000-0000-0004",
        "378282246310005",
        "6011 0009 9013 9424",
        "4222222222222",
    ] {
        assert_eq!(
            msg(&r, &format!("card {card}.")),
            "card [REDACTED:credit_card].",
            "{card}"
        );
    }
    for miss in [
        "4111111111111112",        // Luhn fails
        "4111 1111 1111 1112",     // Luhn fails, grouped
        "411111111111",            // 12 digits
        "1700000000000",           // epoch ms, passes Luhn but starts with 1
        "order 17000000000007",    // id starting with 1
        "2024-01-15 10:22:33.123", // a timestamp
        "x4111111111111111",       // glued to a word
        "41111111111111111111111", // too long
        "1.4111111111111111",      // part of a decimal
    ] {
        assert_eq!(msg(&r, miss), miss, "{miss}");
    }
    assert_eq!(
        msg(&r, "ref 12 4111 1111 1111 1111 ok"),
        "ref 12 [REDACTED:credit_card] ok",
        "leading digit groups that break the check are left out"
    );
}

#[test]
fn luhn_known_values() {
    let d = |s: &str| s.bytes().map(|b| u32::from(b - b'0')).collect::<Vec<_>>().into_iter();
    assert!(luhn(d("79927398713")));
    assert!(!luhn(d("79927398710")));
    assert!(luhn(d("4111111111111111")));
}

#[test]
fn aws_access_key_ids() {
    let r = redactor("detectors = [\"aws_access_key_id\"]");
    assert_eq!(
        msg(&r, "key=AKIAIOSFODNN7EXAMPLE;"),
        "key=[REDACTED:aws_access_key_id];"
    );
    assert_eq!(msg(&r, "ASIAY34FZKBOKMUTVV7A"), "[REDACTED:aws_access_key_id]");
    for miss in [
        "AKIAIOSFODNN7EXAMPLEX", // longer word
        "XAKIAIOSFODNN7EXAMPLE", // inside a word
        "AKIAIOSFODNN7EXAMPL",   // 15 after the prefix
        "AKIAIOSFODNN0EXAMPLE",  // 0 is not base32
        "ABCDIOSFODNN7EXAMPLE",  // unknown prefix
    ] {
        assert_eq!(msg(&r, miss), miss, "{miss}");
    }
}

#[test]
fn ipv4() {
    let r = redactor("detectors = [\"ipv4\"]");
    assert_eq!(
        msg(&r, "from 10.0.0.1:8080 to 255.255.255.255."),
        "from [REDACTED:ipv4]:8080 to [REDACTED:ipv4]."
    );
    assert_eq!(msg(&r, "(192.168.1.20)"), "([REDACTED:ipv4])");
    for miss in [
        "1.2.3.4.5",
        "v1.2.3.4",
        "256.1.1.1",
        "1.2.3",
        "version 10.0.0.1.2",
        "1234.1.2.3",
        "0.1.2.3a",
    ] {
        assert_eq!(msg(&r, miss), miss, "{miss}");
    }
}

#[test]
fn json_escaped_values_nested_fields_and_keys() {
    let r = redactor("");
    let rec = r#"{"@timestamp":"2024-01-01T00:00:00Z","user":{"mail":"a\u0040b.io","list":["x 10.1.2.3","\"q\" 4111111111111111\n"]},"10.0.0.1":1,"n":4111111111111111}"#;
    let (out, counts) = run_one(&r, rec);
    assert_eq!(
        out.unwrap(),
        json!({"@timestamp":"2024-01-01T00:00:00Z","user":{"mail":"[REDACTED:email]","list":["x [REDACTED:ipv4]","\"q\" [REDACTED:credit_card]\n"]},"10.0.0.1":1,"n":4111111111111111u64})
    );
    assert_eq!(counts, [1, 1, 0, 1], "email, card, aws, ipv4");
    // Key order and untouched bytes are kept.
    let mut out = Vec::new();
    let rec = r#"{"z": 1, "a" : "ip 1.2.3.4",  "m":[1,2]}"#;
    assert!(r.redact_into(rec.as_bytes(), &mut out, &mut [0; 4]).unwrap());
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"z": 1, "a" : "ip [REDACTED:ipv4]",  "m":[1,2]}"#
    );
}

#[test]
fn records_without_candidates_are_untouched() {
    let r = redactor("");
    let (out, counts) = run_one(&r, r#"{"log":"GET /health 200 12ms","ts":1700000000000}"#);
    assert_eq!(out, None);
    assert_eq!(counts, [0; 4]);
}

#[test]
fn fields_limit_where_redaction_happens() {
    let r = redactor("fields = [\"user\", \"log\"]");
    let (out, _) = run_one(&r, r#"{"log":"a@b.io","user":{"ip":"1.2.3.4"},"other":"c@d.io"}"#);
    assert_eq!(
        out.unwrap(),
        json!({"log":"[REDACTED:email]","user":{"ip":"[REDACTED:ipv4]"},"other":"c@d.io"})
    );
}

#[test]
fn custom_patterns_and_masks() {
    let r = redactor(
        "detectors = []\nmask = \"***\"\ncustom = [{ name = \"token\", pattern = \"tok_[a-z0-9]{8}\" }, { name = \"tab\", pattern = \"a\\tb\" }]",
    );
    assert_eq!(msg(&r, "use tok_abcd1234 now"), "use *** now");
    assert_eq!(msg(&r, "x a\tb y"), "x *** y", "matched on the decoded string");
}

#[test]
fn hash_is_stable_salted_and_joinable() {
    let r = redactor("mode = \"hash\"\nsalt = \"s1\"");
    let a = msg(&r, "from a@b.io");
    let expected = format!("from {}", hash("s1", "a@b.io"));
    assert_eq!(a, expected);
    assert!(
        a.starts_with("from sha256:") && a.len() == "from sha256:".len() + 16,
        "{a}"
    );
    assert_eq!(msg(&r, "again a@b.io").replace("again ", "from "), a);
    let other = redactor("mode = \"hash\"\nsalt = \"s2\"");
    assert_ne!(msg(&other, "from a@b.io"), a);
}

#[test]
fn scanner_rejects_what_is_not_one_object() {
    for bad in ["", "[1]", "\"s\"", "{\"a\":1", "{\"a\":\"x}", "{} {}", "{\"a\":[1}"] {
        let mut out = b"keep".to_vec();
        assert_eq!(
            rewrite_string_values(bad.as_bytes(), &mut out, |_, _| None),
            Err(Malformed),
            "{bad}"
        );
        assert_eq!(out, b"keep");
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "\\PC{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,6}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn upper_strings(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(format!("<{}>", s.to_uppercase())),
        Value::Array(a) => Value::Array(a.iter().map(upper_strings).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), upper_strings(v))).collect()),
        other => other.clone(),
    }
}

proptest! {
    /// The scanner sees exactly the string values of any object (never
    /// its keys) and leaves the rest as it was.
    #[test]
    fn scanner_rewrites_exactly_the_string_values(
        m in prop::collection::btree_map("\\PC{0,6}", json_value(), 0..5),
        pretty in any::<bool>(),
    ) {
        let v = Value::Object(m.into_iter().collect());
        let text = if pretty { serde_json::to_string_pretty(&v).unwrap() } else { serde_json::to_string(&v).unwrap() };
        let mut out = Vec::new();
        rewrite_string_values(text.as_bytes(), &mut out, |_, s| Some(format!("<{}>", s.to_uppercase()))).unwrap();
        let back: Value = serde_json::from_slice(&out).unwrap();
        prop_assert_eq!(back, upper_strings(&v));
        let mut same = Vec::new();
        prop_assert!(!rewrite_string_values(text.as_bytes(), &mut same, |_, _| None).unwrap());
        prop_assert_eq!(same, text.as_bytes());
    }
}
