//! `type = "parse"`: parse one string field of each record (a JSON, logfmt
//! or regex payload in `log`, typically) into fields of the record.
//!
//! This is Fluent Bit's `parser` filter, which FireLens setups use to turn an
//! application's JSON or access-log line into fields. Why it reuses the file
//! source's parsers (`sources/file/parse`): one implementation of each format
//! and of `time_key`/`time_format`, so a line parses the same whether a file
//! source or this transform reads it.
//!
//! What a record becomes (as Fluent Bit does it):
//! - `reserve_data = false` (default): the parsed fields only, plus the
//!   original field when `keep_original` (Fluent Bit's `Preserve_Key`).
//! - `reserve_data = true`: the record's other fields too; a parsed field
//!   wins over a record field of the same name.
//! - The event time comes from `time_key` when it is set and parses (the
//!   field is then removed unless `keep_time_key`, Fluent Bit's `Time_Keep`);
//!   otherwise the record keeps its time and `@timestamp`.
//!
//! `fallback` parsers are tried in order when the ones before do not read the
//! field, all inside this one transform: Fluent Bit's filter with several
//! `Parser` lines tries them on the same field value, while a chain of
//! transforms would let the second parse the first one's output and count
//! a miss for every line only a later parser reads.
//!
//! A record whose field is missing or does not parse passes unchanged, as in
//! Fluent Bit, and is counted in `logferry_source_line_issues_total` with
//! reason `parse_field_missing` or `parse_failed`; nothing is dropped. Record
//! contents are never logged.
//!
//! Memory: a rewritten batch can be larger than the one that came in
//! (`keep_original` keeps both forms). The owned batch's permit moves to the
//! new one and the difference is taken from `memory_limit` when the limit has
//! room. It never waits for room: the batches queued upstream of this
//! transform may hold the whole limit and only this transform frees them, so
//! waiting could deadlock. The excess is then at most one batch's growth.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc};

use crate::confdiag::{Ctx, Seg};
use crate::event::{Batch, Records};
use crate::metrics::Metrics;
use crate::sources::file::parse::{
    Parser, ParserKind, ParserOptions, TimeFormat, has_top_level_key, key_bit, lookup_field, object_members,
};
use crate::topology::Fanout;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParseConfig {
    /// The field holding the text to parse (default `log`).
    #[serde(default = "default_field")]
    pub field: String,
    /// `json`, `logfmt` or `regex` (with `pattern`).
    pub parser: ParseKind,
    /// Regex with named groups (`(?P<name>...)`), for `parser = "regex"`.
    pub pattern: Option<String>,
    /// Parsed field that carries the event time.
    pub time_key: Option<String>,
    /// How `time_key` is written: as the file source's `time_format`
    /// (`auto`, `rfc3339`, `epoch_*`, or a strftime pattern).
    #[serde(default = "default_time_format")]
    pub time_format: String,
    /// Keep `time_key` among the parsed fields (Fluent Bit's `Time_Keep`).
    #[serde(default = "default_true")]
    pub keep_time_key: bool,
    /// Keep the original field next to the parsed ones (`Preserve_Key`).
    #[serde(default)]
    pub keep_original: bool,
    /// Keep the record's other fields (`Reserve_Data`).
    #[serde(default)]
    pub reserve_data: bool,
    /// Parsers tried in order when `parser` does not read the field (a
    /// Fluent Bit `parser` filter with several `Parser` lines): the first
    /// that reads it wins; a record passes unchanged, counted once, only
    /// when none does.
    #[serde(default)]
    pub fallback: Vec<FallbackParser>,
}

/// One more way to read the field; same keys as the transform's own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackParser {
    pub parser: ParseKind,
    pub pattern: Option<String>,
    pub time_key: Option<String>,
    #[serde(default = "default_time_format")]
    pub time_format: String,
    #[serde(default = "default_true")]
    pub keep_time_key: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParseKind {
    Json,
    Logfmt,
    Regex,
}

fn default_field() -> String {
    "log".into()
}

fn default_time_format() -> String {
    "auto".into()
}

fn default_true() -> bool {
    true
}

impl ParseConfig {
    pub fn validate(&self, ctx: &mut Ctx<'_>, base: &[Seg]) -> bool {
        let at = |k: &str| crate::confdiag::key(base, k);
        let mut ok = true;
        if self.field.is_empty() {
            ok = false;
            ctx.error(&at("field"), "must not be empty");
        }
        for (i, alt) in self.alternatives().iter().enumerate() {
            let key = |k: &str| {
                let mut p = base.to_vec();
                if i > 0 {
                    p.push(Seg::Key("fallback".into()));
                    p.push(Seg::Index(i - 1));
                }
                p.push(Seg::Key(k.into()));
                p
            };
            if alt.pattern.is_some() && alt.parser != ParseKind::Regex {
                ok = false;
                ctx.error(&key("pattern"), "only used with parser = \"regex\"");
            }
            if let Err(e) = alt.time_format.parse::<TimeFormat>() {
                ok = false;
                ctx.error(&key("time_format"), e.to_string());
            } else if let Err(e) = Parser::new(&alt.options()) {
                ok = false;
                let k = match alt.parser {
                    ParseKind::Regex => "pattern",
                    _ => "time_key",
                };
                ctx.error(&key(k), e.to_string());
            }
        }
        ok
    }

    /// The transform's own parser, then its fallbacks, in the order tried.
    fn alternatives(&self) -> Vec<FallbackParser> {
        let own = FallbackParser {
            parser: self.parser,
            pattern: self.pattern.clone(),
            time_key: self.time_key.clone(),
            time_format: self.time_format.clone(),
            keep_time_key: self.keep_time_key,
        };
        std::iter::once(own).chain(self.fallback.iter().cloned()).collect()
    }

    pub fn describe(&self) -> String {
        format!(
            "parse: field `{}` as {:?}{}{}{}",
            self.field,
            self.parser,
            self.fallback
                .iter()
                .map(|f| format!(", else {:?}", f.parser))
                .collect::<String>(),
            if self.reserve_data { ", other fields kept" } else { "" },
            if self.keep_original { ", original kept" } else { "" }
        )
    }
}

impl FallbackParser {
    fn options(&self) -> ParserOptions {
        ParserOptions {
            kind: match self.parser {
                ParseKind::Json => ParserKind::Json,
                ParseKind::Logfmt => ParserKind::Logfmt,
                ParseKind::Regex => ParserKind::Regex,
            },
            regex: self.pattern.clone(),
            time_key: self.time_key.clone(),
            time_format: self.time_format.parse().unwrap_or(TimeFormat::Auto),
            max_line_size: None,
        }
    }
}

/// Why a record passed unparsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unparsed {
    FieldMissing,
    Failed,
}

/// Parses records of one configuration; reusable buffers inside.
pub struct Reparser {
    cfg: ParseConfig,
    /// Tried in order: the transform's parser, then its fallbacks.
    parsers: Vec<(FallbackParser, Parser)>,
    parsed: Vec<u8>,
}

impl Reparser {
    pub fn new(cfg: ParseConfig) -> Result<Reparser, String> {
        let parsers = cfg
            .alternatives()
            .into_iter()
            .map(|a| Parser::new(&a.options()).map(|p| (a, p)).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        Ok(Reparser {
            cfg,
            parsers,
            parsed: Vec::new(),
        })
    }

    /// Appends the rewritten `record` (a JSON object) to `out` and returns
    /// its time and key mask; `Err` (nothing appended) when it passes as is.
    pub fn rewrite(&mut self, record: &[u8], ts_ms: i64, out: &mut Vec<u8>) -> Result<(i64, u64), Unparsed> {
        let field = self.cfg.field.as_str();
        let value = lookup_field(record, field).ok_or(Unparsed::FieldMissing)?;
        let mut read = None;
        for (k, (_, parser)) in self.parsers.iter_mut().enumerate() {
            self.parsed.clear();
            let p = parser.parse(&value, ts_ms, &mut self.parsed);
            if !p.fallback {
                read = Some((k, p));
                break;
            }
        }
        let (k, p) = read.ok_or(Unparsed::Failed)?;
        let alt = &self.parsers[k].0;
        let parsed = object_members(&self.parsed).ok_or(Unparsed::Failed)?;
        let original = object_members(record).ok_or(Unparsed::Failed)?;
        // The parser writes `@timestamp` first unless the payload has its own.
        let own_ts = alt.parser == ParseKind::Json && has_top_level_key(value.as_bytes(), "@timestamp");
        let time_key = alt.time_key.as_deref();
        let timed = time_key.is_some() && !p.time_missing;
        let ts_ms = if timed { p.ts_ms } else { ts_ms };
        let spliced = |i: usize, k: &str| i == 0 && !own_ts && k == "@timestamp";

        let start = out.len();
        let mut mask = 0u64;
        let mut first = true;
        let mut push = |out: &mut Vec<u8>, k: &str, raw: &[u8]| {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            out.extend_from_slice(raw);
            mask |= key_bit(k.as_bytes());
        };
        out.push(b'{');
        if timed && let Some((k, raw)) = parsed.first().filter(|(k, _)| spliced(0, k)) {
            push(out, k, raw);
        }
        let in_parsed = |key: &str| parsed.iter().enumerate().any(|(i, (k, _))| k == key && !spliced(i, k));
        for (k, raw) in &original {
            let keep = if k == field {
                self.cfg.keep_original
            } else if k == "@timestamp" {
                !timed && !own_ts
            } else {
                self.cfg.reserve_data
            };
            if keep && (k == field || !in_parsed(k)) {
                push(out, k, raw);
            }
        }
        for (i, (k, raw)) in parsed.iter().enumerate() {
            if spliced(i, k) || (timed && !alt.keep_time_key && time_key.is_some_and(|t| k == t)) {
                continue;
            }
            if k == field && self.cfg.keep_original {
                // The original keeps its name; Fluent Bit does the same.
                continue;
            }
            push(out, k, raw);
        }
        out.push(b'}');
        debug_assert!(out.len() > start);
        Ok((ts_ms, mask))
    }

    /// Every record of `old` rewritten, or as it was when it does not parse
    /// (counted in `missing` or `failed`); the result holds no permit.
    pub fn rewrite_all(&mut self, old: &Records, missing: &Counter, failed: &Counter) -> Records {
        let mut r = Records {
            buf: Vec::with_capacity(old.buf.len() + old.buf.len() / 2),
            meta: Vec::with_capacity(old.len()),
            permit: None,
        };
        for i in 0..old.len() {
            let start = r.buf.len();
            let meta = old.meta[i];
            match self.rewrite(old.text(i), meta.ts_ms, &mut r.buf) {
                Ok((ts_ms, mask)) => r.push_written(start, ts_ms, mask),
                Err(why) => {
                    match why {
                        Unparsed::FieldMissing => missing.inc(),
                        Unparsed::Failed => failed.inc(),
                    };
                    r.buf.truncate(start);
                    r.buf.extend_from_slice(old.text(i));
                    r.push_written(start, meta.ts_ms, meta.key_mask);
                }
            }
        }
        r
    }
}

pub async fn run(
    id: String,
    cfg: ParseConfig,
    mut input: mpsc::Receiver<Batch>,
    output: Fanout,
    metrics: Arc<Metrics>,
    memory: Arc<Semaphore>,
    memory_limit: usize,
) {
    let m = metrics.component(&id, "parse");
    let missing = m.line_issue("parse_field_missing");
    let failed = m.line_issue("parse_failed");
    let mut reparser = Reparser::new(cfg).expect("the parser was built by validate");
    while let Some(batch) = input.recv().await {
        let n = batch.len();
        m.received_events.inc_by(n as u64);
        m.received_bytes.inc_by(batch.bytes());
        let Batch {
            records,
            fields,
            ack,
            tag,
        } = batch;
        let (old, mut permit) = match Arc::try_unwrap(records) {
            Ok(mut owned) => {
                let permit = owned.permit.take();
                (Arc::new(owned), permit)
            }
            Err(shared) => (shared, None),
        };
        let mut r = reparser.rewrite_all(&old, &missing, &failed);
        drop(old);
        // Charge what the new records hold beyond the permit they inherit.
        let held = permit.as_ref().map_or(0, |p| p.num_permits());
        let extra = r.buf.len().saturating_sub(held).min(memory_limit);
        if extra > 0
            && let Ok(want) = u32::try_from(extra)
            && let Ok(more) = memory.clone().try_acquire_many_owned(want)
        {
            match permit.as_mut() {
                Some(p) => p.merge(more),
                None => permit = Some(more),
            }
        }
        r.permit = permit;
        let batch = Batch {
            records: Arc::new(r),
            fields,
            ack,
            tag,
        };
        let bytes = batch.bytes();
        if output.send(batch).await.is_err() {
            break;
        }
        m.sent_events.inc_by(n as u64);
        m.sent_bytes.inc_by(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn cfg(text: &str) -> ParseConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn fallbacks_are_tried_in_order_and_a_miss_is_counted_once() {
        let c = r#"
parser = "regex"
pattern = '^(?P<lvl>[A-Z]+) (?P<msg>.*)$'
reserve_data = true
fallback = [
  { parser = "json", time_key = "ts", time_format = "epoch_ms", keep_time_key = false },
  { parser = "logfmt" },
]
"#;
        let (v, ts) = one(c, json!({"log": "WARN disk full", "k": 1})).unwrap();
        assert_eq!(v, json!({"k": 1, "lvl": "WARN", "msg": "disk full"}));
        assert_eq!(ts, 7_000);
        // The second parser's own time settings apply when it is the one that reads.
        let (v, ts) = one(c, json!({"log": "{\"ts\":1795641347250,\"a\":true}", "k": 1})).unwrap();
        assert_eq!(ts, 1_795_641_347_250);
        assert_eq!(v["a"], true);
        assert!(v.get("ts").is_none(), "keep_time_key = false of that parser: {v}");
        let (v, _) = one(c, json!({"log": "a=1 b=two"})).unwrap();
        assert_eq!((v["a"].clone(), v["b"].clone()), (json!("1"), json!("two")));
        // The last one, logfmt, reads almost anything with `=`; without it, a miss:
        let two = c.replace("  { parser = \"logfmt\" },\n", "");
        assert_eq!(one(&two, json!({"log": "plain words"})), Err(Unparsed::Failed));

        let lookup = |_: &str| None;
        let mut ctx = crate::confdiag::Ctx::for_tests(&lookup);
        let bad: ParseConfig =
            toml::from_str("parser = \"json\"\nfallback = [{ parser = \"regex\", pattern = \"(\" }]").unwrap();
        assert!(!bad.validate(&mut ctx, &crate::confdiag::path(&["transforms", "p"])));
        let m = ctx.messages();
        assert!(m[0].contains("transforms.p.fallback[0].pattern"), "{m:?}");
    }

    /// The record after `rewrite` (`None`: passed unchanged) and its time.
    fn one(c: &str, record: Value) -> Result<(Value, i64), Unparsed> {
        let mut r = Reparser::new(cfg(c)).unwrap();
        let text = serde_json::to_vec(&record).unwrap();
        let mut out = b"junk".to_vec();
        let (ts, mask) = r.rewrite(&text, 7_000, &mut out)?;
        let v: Value = serde_json::from_slice(&out[4..]).unwrap();
        for k in v.as_object().unwrap().keys() {
            assert_ne!(mask & key_bit(k.as_bytes()), 0, "mask misses {k}");
        }
        Ok((v, ts))
    }

    #[test]
    fn json_payload_replaces_the_record_unless_reserve_data() {
        let rec = json!({"@timestamp": "1970-01-01T00:00:07.000Z", "log": "{\"level\":\"warn\",\"n\":3}", "container_name": "app"});
        let (v, ts) = one(r#"parser = "json""#, rec.clone()).unwrap();
        assert_eq!(
            v,
            json!({"@timestamp": "1970-01-01T00:00:07.000Z", "level": "warn", "n": 3})
        );
        assert_eq!(ts, 7_000);
        let (v, _) = one("parser = \"json\"\nreserve_data = true\nkeep_original = true", rec).unwrap();
        assert_eq!(
            v,
            json!({"@timestamp": "1970-01-01T00:00:07.000Z", "log": "{\"level\":\"warn\",\"n\":3}", "container_name": "app", "level": "warn", "n": 3})
        );
    }

    #[test]
    fn parsed_fields_win_and_no_key_appears_twice() {
        let rec = json!({"@timestamp": "x", "level": "old", "log": "{\"level\":\"new\",\"log\":\"inner\"}"});
        let (v, _) = one("parser = \"json\"\nreserve_data = true", rec.clone()).unwrap();
        assert_eq!(v, json!({"@timestamp": "x", "level": "new", "log": "inner"}));
        // keep_original: the original `log` stays, the parsed one yields.
        let mut r = Reparser::new(cfg("parser = \"json\"\nreserve_data = true\nkeep_original = true")).unwrap();
        let mut out = Vec::new();
        r.rewrite(&serde_json::to_vec(&rec).unwrap(), 0, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("\"log\"").count(), 1, "{text}");
        assert_eq!(text.matches("\"level\"").count(), 1, "{text}");
    }

    #[test]
    fn regex_with_time_key_sets_the_time_and_drops_the_key_unless_kept() {
        let c = "parser = \"regex\"\npattern = '^(?P<host>\\S+) \\[(?P<time>[^\\]]+)\\] (?P<msg>.*)$'\ntime_key = \"time\"\ntime_format = \"%d/%b/%Y:%H:%M:%S %z\"\nkeep_time_key = false";
        let rec = json!({"@timestamp": "old", "log": "10.0.0.1 [25/Nov/2026:21:15:47 +0000] GET /"});
        let (v, ts) = one(c, rec.clone()).unwrap();
        assert_eq!(ts, 1_795_641_347_000);
        assert_eq!(
            v,
            json!({"@timestamp": "2026-11-25T21:15:47.000Z", "host": "10.0.0.1", "msg": "GET /"})
        );
        let (v, _) = one(&c.replace("keep_time_key = false", "keep_time_key = true"), rec).unwrap();
        assert_eq!(v["time"], "25/Nov/2026:21:15:47 +0000");
    }

    #[test]
    fn logfmt_and_failures_pass_unchanged() {
        let (v, _) = one(r#"parser = "logfmt""#, json!({"log": "a=1 b=\"two words\""})).unwrap();
        assert_eq!(v["b"], "two words");
        assert_eq!(
            one(r#"parser = "json""#, json!({"log": "not json {"})).unwrap_err(),
            Unparsed::Failed
        );
        assert_eq!(
            one(r#"parser = "json""#, json!({"message": "{}"})).unwrap_err(),
            Unparsed::FieldMissing
        );
        let c = "parser = \"regex\"\npattern = '^(?P<a>\\d+)$'";
        assert_eq!(one(c, json!({"log": "abc"})).unwrap_err(), Unparsed::Failed);
        // A dotted field reaches into an object.
        let c = "parser = \"json\"\nfield = \"k8s.raw\"\nreserve_data = true";
        let (v, _) = one(c, json!({"k8s": {"raw": "{\"z\":1}"}, "y": 2})).unwrap();
        assert_eq!(v, json!({"k8s": {"raw": "{\"z\":1}"}, "y": 2, "z": 1}));
    }

    #[test]
    fn escaped_payloads_round_trip() {
        let inner = json!({"msg": "quote \" backslash \\ tab \t é \u{1F600}", "nested": {"a": [1, 2]}});
        let rec = json!({"log": inner.to_string()});
        let (v, _) = one(r#"parser = "json""#, rec).unwrap();
        assert_eq!(v["msg"], inner["msg"]);
        assert_eq!(v["nested"], inner["nested"]);
    }

    fn batch_of(n: usize) -> Batch {
        let mut r = Records::default();
        for i in 0..n {
            let start = r.buf.len();
            r.buf
                .extend_from_slice(format!(r#"{{"log":"{{\"i\":{i},\"pad\":\"xxxxxxxxxx\"}}"}}"#).as_bytes());
            r.push_written(start, 0, 0);
        }
        Batch::new(r, None)
    }

    /// Growth is charged to `memory_limit` when there is room; with none, the
    /// batch still goes on (waiting could deadlock on what is queued
    /// upstream), and every permit is given back.
    #[tokio::test]
    async fn run_charges_growth_when_there_is_room_and_never_waits_for_it() {
        const LIMIT: usize = 10_000;
        let sem = Arc::new(Semaphore::new(LIMIT));
        let c = cfg("parser = \"json\"\nreserve_data = true\nkeep_original = true");
        let (in_tx, in_rx) = mpsc::channel(4);
        let (out_tx, mut out_rx) = mpsc::channel(4);
        let metrics = Arc::new(Metrics::new());
        let task = tokio::spawn(run(
            "p".into(),
            c,
            in_rx,
            Fanout::new(vec![out_tx]),
            metrics,
            sem.clone(),
            LIMIT,
        ));
        let mut b = batch_of(10);
        let bytes = b.records.buf.len();
        Arc::get_mut(&mut b.records).unwrap().permit = Some(sem.clone().try_acquire_many_owned(bytes as u32).unwrap());
        in_tx.send(b).await.unwrap();
        let out = out_rx.recv().await.unwrap();
        let held = out.records.permit.as_ref().map_or(0, |p| p.num_permits());
        assert!(out.records.buf.len() > bytes, "keep_original grows the records");
        assert_eq!(held, out.records.buf.len());
        assert_eq!(sem.available_permits(), LIMIT - held);
        let v: Value = serde_json::from_slice(out.records.text(3)).unwrap();
        assert_eq!((v["i"].as_u64(), v["pad"].as_str()), (Some(3), Some("xxxxxxxxxx")));
        drop(out);
        assert_eq!(sem.available_permits(), LIMIT);

        let all = sem.clone().try_acquire_many_owned(LIMIT as u32).unwrap();
        in_tx.send(batch_of(10)).await.unwrap();
        let out = tokio::time::timeout(std::time::Duration::from_secs(60), out_rx.recv())
            .await
            .expect("the transform waited for memory")
            .unwrap();
        assert_eq!(out.len(), 10);
        assert!(out.records.permit.is_none());
        drop((out, all));
        drop(in_tx);
        task.await.unwrap();
        assert_eq!(sem.available_permits(), LIMIT);
    }

    proptest::proptest! {
        /// Whatever the field holds, the output is one JSON object (or the
        /// record passes unchanged) and no key appears twice.
        #[test]
        fn always_one_object_without_duplicate_keys(payload in ".{0,40}", other in "[a-z]{1,3}", reserve in proptest::bool::ANY, keep in proptest::bool::ANY) {
            let c = format!("parser = \"logfmt\"\nreserve_data = {reserve}\nkeep_original = {keep}");
            let mut rec = serde_json::Map::new();
            rec.insert("@timestamp".into(), json!("t"));
            rec.insert("log".into(), json!(payload));
            rec.insert(other.clone(), json!("x"));
            let mut r = Reparser::new(cfg(&c)).unwrap();
            let mut out = Vec::new();
            if r.rewrite(&serde_json::to_vec(&rec).unwrap(), 0, &mut out).is_ok() {
                let members = object_members(&out).expect("an object");
                let mut keys: Vec<_> = members.iter().map(|(k, _)| k.to_string()).collect();
                let n = keys.len();
                keys.sort();
                keys.dedup();
                proptest::prop_assert_eq!(keys.len(), n, "{}", String::from_utf8_lossy(&out));
                serde_json::from_slice::<Value>(&out).expect("valid JSON");
            }
        }
    }
}
