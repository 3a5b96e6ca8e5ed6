//! What a query asks and which objects can hold an answer. Pure: no I/O.
//!
//! The rules mirror the indexer's (same crate functions for field paths,
//! value text and tokens), so an object skipped here holds no matching record:
//! - time: a record matches when its `@timestamp` lies in `[from, until]`; an
//!   object whose `[min_time, max_time]` misses that range is out of range;
//! - `--where f=v`: the field's text equals `v`; an object whose complete
//!   distinct values of `f` lack `v` is skipped;
//! - `--grep TEXT`: TEXT occurs on token boundaries in one of the object's
//!   token fields, case-sensitive; an object whose token filter lacks one of
//!   TEXT's tokens is skipped.

use chrono::{DateTime, Duration, DurationRound, Utc};
use logferry_indexer::bloom::Bloom;
use logferry_indexer::doc::{IndexDoc, parse_time, partition};
use logferry_indexer::fields::{contains_words, field_text, query_tokens};
use serde_json::{Map, Value};

/// Index documents live under the hour of their object's earliest record, so
/// an object that began before `from` sits in an earlier partition; the query
/// also lists this much before `from`. Objects of the S3 sink span at most
/// `flush_interval` (60 s by default) of read time.
pub const LOOKBACK: Duration = Duration::hours(1);

/// A parsed query.
#[derive(Clone, Debug)]
pub struct Query {
    pub from: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub wheres: Vec<(String, String)>,
    pub grep: Option<String>,
}

/// Why an index document was not opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Its records' times miss the range (or it has none).
    OutOfRange,
    /// In range, but the distinct values or the token filter rule it out.
    Skip,
    Open,
}

/// The hour partitions (`dt=.../hour=.../`) to list for `[from - LOOKBACK, until]`.
pub fn partitions(from: DateTime<Utc>, until: DateTime<Utc>) -> Vec<String> {
    let hour = Duration::hours(1);
    let Ok(mut t) = (from - LOOKBACK).duration_trunc(hour) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    while t <= until {
        out.push(partition(t));
        t += hour;
    }
    out
}

impl Query {
    /// Whether the object of `doc` can hold a matching record.
    pub fn verdict(&self, doc: &IndexDoc) -> Verdict {
        match (doc.min_time(), doc.max_time()) {
            (Some(min), Some(max)) if max >= self.from && min <= self.until => {}
            _ => return Verdict::OutOfRange,
        }
        for (field, value) in &self.wheres {
            if let Some(d) = doc.distinct.get(field)
                && d.complete
                && !d.values.iter().any(|v| v == value)
            {
                return Verdict::Skip;
            }
        }
        if let Some(grep) = &self.grep {
            if doc.tokens.fields.is_empty() {
                return Verdict::Skip; // no field to search in
            }
            // A filter that does not parse cannot rule anything out.
            if let Ok(filter) = Bloom::from_doc(&doc.tokens.filter)
                && query_tokens(grep).iter().any(|t| !filter.contains(t))
            {
                return Verdict::Skip;
            }
        }
        Verdict::Open
    }

    /// The record's time when it matches (`token_fields`: where `--grep` looks).
    pub fn matches(&self, record: &Map<String, Value>, token_fields: &[String]) -> Option<DateTime<Utc>> {
        let t = record.get("@timestamp").and_then(Value::as_str).and_then(parse_time)?;
        if t < self.from || t > self.until {
            return None;
        }
        for (field, value) in &self.wheres {
            if field_text(record, field).as_deref() != Some(value.as_str()) {
                return None;
            }
        }
        if let Some(grep) = &self.grep
            && !token_fields
                .iter()
                .any(|f| field_text(record, f).is_some_and(|text| contains_words(&text, grep)))
        {
            return None;
        }
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use logferry_indexer::config::IndexOptions;
    use logferry_indexer::index::{Encoding, index_stream};
    use serde_json::json;

    fn t(s: &str) -> DateTime<Utc> {
        parse_time(s).expect("valid time")
    }

    fn doc(lines: &[Value]) -> IndexDoc {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        index_stream(text.as_bytes(), Encoding::None, &IndexOptions::default())
            .expect("indexes")
            .into_doc("b", "k", "e", 1)
    }

    fn q(wheres: &[(&str, &str)], grep: Option<&str>) -> Query {
        Query {
            from: t("2026-03-07T04:00:00Z"),
            until: t("2026-03-07T05:00:00Z"),
            wheres: wheres.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            grep: grep.map(str::to_string),
        }
    }

    #[test]
    fn partitions_cover_the_range_and_the_lookback() {
        let p = partitions(t("2026-03-07T04:30:00Z"), t("2026-03-07T06:00:00Z"));
        assert_eq!(
            p,
            [
                "dt=2026-03-07/hour=03/",
                "dt=2026-03-07/hour=04/",
                "dt=2026-03-07/hour=05/",
                "dt=2026-03-07/hour=06/"
            ]
        );
        assert_eq!(
            partitions(t("2026-03-08T00:10:00Z"), t("2026-03-08T00:20:00Z"))[0],
            "dt=2026-03-07/hour=23/"
        );
    }

    #[test]
    fn verdicts() {
        let d = doc(&[
            json!({"@timestamp": "2026-03-07T04:10:00Z", "ecs_task_id": "a", "msg": "read timeout, retrying"}),
            json!({"@timestamp": "2026-03-07T04:20:00Z", "ecs_task_id": "a", "msg": "order 1 processed"}),
        ]);
        assert_eq!(q(&[], None).verdict(&d), Verdict::Open);
        assert_eq!(q(&[("ecs_task_id", "a")], Some("timeout")).verdict(&d), Verdict::Open);
        assert_eq!(q(&[("ecs_task_id", "b")], None).verdict(&d), Verdict::Skip);
        assert_eq!(q(&[], Some("nonexistentword")).verdict(&d), Verdict::Skip);
        // A field the index does not track never prunes.
        assert_eq!(q(&[("user", "x")], None).verdict(&d), Verdict::Open);
        let mut late = q(&[], None);
        late.from = t("2026-03-07T04:30:00Z");
        assert_eq!(late.verdict(&d), Verdict::OutOfRange);
        let untimed = doc(&[json!({"msg": "x"})]);
        assert_eq!(q(&[], None).verdict(&untimed), Verdict::OutOfRange);
    }

    mod soundness {
        use super::*;
        use proptest::prelude::*;

        // Small vocabularies so that matches, near-misses (`time` in
        // `timeout`) and misses all happen.
        const WORDS: &[&str] = &[
            "timeout", "timeouts", "time", "out", "Timeout", "ok", "café", "a_b", "42",
        ];
        const SEPS: &[&str] = &[" ", ", ", "-", "=", "/", ""];
        const TASKS: &[&str] = &["t1", "t2", "t3"];

        fn text() -> impl Strategy<Value = String> {
            proptest::collection::vec((0..WORDS.len(), 0..SEPS.len()), 0..6).prop_map(|parts| {
                parts
                    .into_iter()
                    .map(|(w, s)| format!("{}{}", WORDS[w], SEPS[s]))
                    .collect()
            })
        }

        fn record() -> impl Strategy<Value = Value> {
            (0..TASKS.len(), text(), proptest::option::of(text()), 0u32..120).prop_map(|(task, msg, log, minute)| {
                let mut r = json!({
                    "@timestamp": format!("2026-03-07T{:02}:{:02}:00Z", 3 + minute / 60, minute % 60),
                    "ecs_task_id": TASKS[task],
                    "msg": msg,
                });
                if let Some(l) = log {
                    r["log"] = json!(l);
                }
                r
            })
        }

        proptest! {
            /// An object the index skips holds no record the query would print.
            #[test]
            fn a_skipped_object_never_holds_a_match(
                records in proptest::collection::vec(record(), 1..20),
                task in proptest::option::of(0..TASKS.len()),
                grep in proptest::option::of(text()),
            ) {
                let d = doc(&records);
                let wheres: Vec<(&str, &str)> = task.map(|t| ("ecs_task_id", TASKS[t])).into_iter().collect();
                let query = q(&wheres, grep.as_deref().filter(|g| !g.is_empty()));
                let any_match = records.iter().any(|r| match r {
                    Value::Object(m) => query.matches(m, &d.tokens.fields).is_some(),
                    _ => false,
                });
                if any_match {
                    prop_assert_eq!(query.verdict(&d), Verdict::Open);
                }
            }
        }
    }

    #[test]
    fn record_matching() {
        let fields = vec!["msg".to_string(), "log".to_string()];
        let rec = |v: Value| match v {
            Value::Object(m) => m,
            _ => unreachable!("objects"),
        };
        let r =
            rec(json!({"@timestamp": "2026-03-07T04:10:00.123Z", "ecs_task_id": "a", "n": 5, "msg": "read timeout"}));
        assert_eq!(
            q(&[("ecs_task_id", "a"), ("n", "5")], Some("timeout")).matches(&r, &fields),
            Some(t("2026-03-07T04:10:00.123Z"))
        );
        assert_eq!(q(&[], Some("time")).matches(&r, &fields), None);
        assert_eq!(q(&[("ecs_task_id", "b")], None).matches(&r, &fields), None);
        assert_eq!(q(&[], Some("timeout")).matches(&r, &["log".to_string()]), None);
        let outside = rec(json!({"@timestamp": "2026-03-07T05:00:00.001Z", "msg": "read timeout"}));
        assert_eq!(q(&[], None).matches(&outside, &fields), None);
        assert_eq!(q(&[], None).matches(&rec(json!({"msg": "no time"})), &fields), None);
    }
}
