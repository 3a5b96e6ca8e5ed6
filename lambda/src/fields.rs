//! Field access and tokenization, shared by the indexer and `logferry query`.
//!
//! Both sides must see a record the same way, or the index would skip objects
//! that match: a field is found by the same dotted path, its value turned into
//! text by the same rule, and text split into tokens by the same function.
//!
//! - Path: `a.b` is field `b` of the object in field `a`; a top-level field
//!   whose own name contains the dot (`"a.b": ...`) is found first.
//! - Value text: a string is itself; a number or boolean is its JSON text
//!   (`42`, `true`); null, arrays and objects have no text.
//! - Tokens: maximal runs of Unicode alphanumeric characters and `_`,
//!   case kept (`Timeout` and `timeout` differ). Tokens longer than
//!   [`MAX_TOKEN_BYTES`] are not indexed.
//! - `--grep TEXT` matches a field when TEXT occurs in its text on token
//!   boundaries ([`contains_words`]): `timeout` matches `read timeout, retrying`
//!   but not `timeouts`. That is what makes pruning by the token filter exact.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};

/// Longer tokens are neither indexed nor used to prune (random blobs would only
/// fill the filter).
pub const MAX_TOKEN_BYTES: usize = 128;

/// The value at a dotted path in a JSON object.
pub fn lookup<'v>(record: &'v serde_json::Map<String, Value>, path: &str) -> Option<&'v Value> {
    if let Some(v) = record.get(path) {
        return Some(v);
    }
    let (head, rest) = path.split_once('.')?;
    match record.get(head)? {
        Value::Object(inner) => lookup(inner, rest),
        _ => None,
    }
}

/// The text of a value: strings as they are, numbers and booleans as JSON.
pub fn value_text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// The text of the field at `path`, if it has one.
pub fn field_text<'v>(record: &'v serde_json::Map<String, Value>, path: &str) -> Option<Cow<'v, str>> {
    lookup(record, path).and_then(value_text)
}

/// The top-level fields a reader needs for a set of dotted paths: each path
/// and each of its dotted prefixes (`a.b.c` needs `a`, `a.b`, `a.b.c`), so
/// that [`lookup`] on a record parsed by [`parse_fields`] finds what it would
/// find on the whole record.
#[derive(Clone, Debug, Default)]
pub struct FieldSet {
    keys: HashSet<String>,
}

impl FieldSet {
    pub fn new<'a>(paths: impl IntoIterator<Item = &'a str>) -> Self {
        let mut keys = HashSet::new();
        for path in paths {
            keys.insert(path.to_string());
            keys.extend(path.match_indices('.').map(|(i, _)| path[..i].to_string()));
        }
        FieldSet { keys }
    }
}

/// Parses one NDJSON line into the fields of `wanted` only. The whole line is
/// still checked to be one JSON object (anything else is an error), but the
/// other fields are skipped without building values. A key given twice keeps
/// its last value, as a full parse would.
pub fn parse_fields(line: &[u8], wanted: &FieldSet) -> Result<Map<String, Value>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(line);
    let record = Sparse(wanted).deserialize(&mut de)?;
    de.end()?;
    Ok(record)
}

struct Sparse<'s>(&'s FieldSet);

impl<'de> DeserializeSeed<'de> for Sparse<'_> {
    type Value = Map<String, Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Sparse<'_> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Map::new();
        while let Some(Key(key)) = map.next_key()? {
            if self.0.keys.contains(key.as_ref()) {
                out.insert(key.into_owned(), map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

/// A key (or a string value), borrowed from the line unless it has escapes.
pub(crate) struct Key<'de>(pub(crate) Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

#[inline]
fn is_token_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The tokens of `text`, in order, repeats included.
pub fn tokens(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !is_token_char(c)).filter(|t| !t.is_empty())
}

/// Whether a token goes into (and may be looked up in) the token filter.
#[inline]
pub fn indexable(token: &str) -> bool {
    token.len() <= MAX_TOKEN_BYTES
}

/// The tokens of a `--grep` text that the token filter must contain for a
/// record to match: every token of `needle` that is indexable.
pub fn query_tokens(needle: &str) -> Vec<&str> {
    let mut out: Vec<&str> = tokens(needle).filter(|t| indexable(t)).collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether `needle` occurs in `haystack` on token boundaries: the character
/// before an occurrence is not a token character when `needle` starts with
/// one, and likewise after its end. Case-sensitive.
pub fn contains_words(haystack: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return true;
    }
    let starts_word = needle.chars().next().is_some_and(is_token_char);
    let ends_word = needle.chars().next_back().is_some_and(is_token_char);
    for (at, _) in haystack.match_indices(needle) {
        let before_ok = !starts_word || !haystack[..at].chars().next_back().is_some_and(is_token_char);
        let after_ok = !ends_word || !haystack[at + needle.len()..].chars().next().is_some_and(is_token_char);
        if before_ok && after_ok {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> serde_json::Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test objects are objects"),
        }
    }

    #[test]
    fn lookup_by_path_and_literal_dotted_name() {
        let r = obj(json!({"kubernetes": {"pod_name": "web-1"}, "a.b": 1, "n": 3.5, "t": true, "z": null}));
        assert_eq!(field_text(&r, "kubernetes.pod_name").as_deref(), Some("web-1"));
        assert_eq!(field_text(&r, "a.b").as_deref(), Some("1"));
        assert_eq!(field_text(&r, "n").as_deref(), Some("3.5"));
        assert_eq!(field_text(&r, "t").as_deref(), Some("true"));
        assert_eq!(field_text(&r, "z"), None);
        assert_eq!(field_text(&r, "kubernetes"), None);
        assert_eq!(field_text(&r, "kubernetes.nope"), None);
    }

    #[test]
    fn sparse_parse_sees_what_a_full_parse_sees() {
        let paths = ["@timestamp", "kubernetes.pod_name", "a.b", "msg"];
        let set = FieldSet::new(paths);
        let lines: [&[u8]; 6] = [
            br#"{"@timestamp":"t","kubernetes":{"pod_name":"p","x":[1,{"y":2}]},"a.b":3,"zz":{"q":"\u00e9"},"msg":"m"}"#,
            br#"{"m\u0073g":"escaped key","msg":"last wins","msg":"really"}"#,
            br#"  {"a":{"b":true}}  "#,
            br#"{}"#,
            br#"{"kubernetes":"not an object"}"#,
            br#"{"other":[1,2,3],"n":1e3}"#,
        ];
        for line in lines {
            let full: Map<String, Value> = serde_json::from_slice(line).expect("valid");
            let sparse = parse_fields(line, &set).expect("valid");
            for p in paths {
                assert_eq!(
                    field_text(&sparse, p),
                    field_text(&full, p),
                    "{p} in {}",
                    String::from_utf8_lossy(line)
                );
            }
            assert!(!sparse.contains_key("zz") && !sparse.contains_key("other"));
        }
        for bad in [&b"[1,2]"[..], b"{\"a\":1} x", b"{\"a\":", b"nope", b"{\"a\":tru}"] {
            assert!(parse_fields(bad, &set).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn tokens_split_on_non_word_characters_and_keep_unicode() {
        let t: Vec<_> = tokens("GET /items?id=txt-000001 took 12ms; naïve Grüße 東京_1").collect();
        assert_eq!(
            t,
            [
                "GET", "items", "id", "txt", "000001", "took", "12ms", "naïve", "Grüße", "東京_1"
            ]
        );
        assert_eq!(tokens("  --  ").count(), 0);
    }

    #[test]
    fn grep_matches_on_token_boundaries_only() {
        assert!(contains_words("read timeout, retrying", "timeout"));
        assert!(!contains_words("read timeouts", "timeout"));
        assert!(!contains_words("readtimeout", "timeout"));
        assert!(contains_words("x-timeout", "-timeout"));
        assert!(
            contains_words("a timeouts timeout", "timeout"),
            "a later occurrence counts"
        );
        assert!(contains_words("order 12 processed", "order 12"));
        assert!(!contains_words("order 123 processed", "order 12"));
        assert!(!contains_words("Timeout", "timeout"), "case-sensitive");
        assert!(contains_words("Grüße aus", "Grüße"));
    }

    #[test]
    fn query_tokens_are_sound_for_grep() {
        // Every query token of a needle that matches must be a token of the haystack.
        let cases = [
            ("connection reset by peer", "reset by"),
            ("id=txt-000001 ok", "txt-000001"),
            ("a.b.c", ".b."),
        ];
        for (hay, needle) in cases {
            assert!(contains_words(hay, needle));
            let hay_tokens: Vec<_> = tokens(hay).collect();
            for t in query_tokens(needle) {
                assert!(hay_tokens.contains(&t), "{t} of {needle:?} not a token of {hay:?}");
            }
        }
        assert!(query_tokens(&"x".repeat(MAX_TOKEN_BYTES + 1)).is_empty());
    }
}
