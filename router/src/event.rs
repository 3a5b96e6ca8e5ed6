//! The unit of data flow: a [`Batch`] of records read from one file, plus the
//! token that reports its delivery.
//!
//! Why batches of raw JSON text instead of a `Value` per record: the router's
//! job is to move bytes. A record is parsed once (validated, its time read) and
//! then kept as the exact text the application wrote, with `@timestamp`
//! spliced in front. Enrichment does not touch records at all: it attaches a
//! shared, pre-serialized [`Fields`] fragment to the batch, and sinks splice it
//! in when they encode. One enrichment pass costs one `Arc` clone per batch.
//!
//! Why delivery is an owned token: each batch carries an [`AckToken`]. Sinks
//! keep a clone until the data is durable (object renamed into place, bytes
//! written and flushed) and then drop it; a sink that fails calls
//! [`AckToken::fail`] first. When the last clone drops, the source learns the
//! outcome over a channel. A batch that is lost (a task panics, a channel is
//! closed) therefore still reports instead of hanging the checkpoint.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::sinks::encoding::TimestampKey;
use crate::sources::file::parse::{FieldText, has_top_level_key, key_bit, lookup_field, top_level_value, write_str};

/// The opening the sources write for the time they add:
/// `{"@timestamp":"<RFC 3339>"`, then `,` or `}`.
const STAMP_OPEN: &[u8] = b"{\"@timestamp\":\"";

/// Splits a record whose first member is the source's `@timestamp` into the
/// time's text and what follows the member (the other members and the
/// closing brace, without the separating comma). `None` if the text does not
/// open that way (it was rewritten since): the record is then kept whole.
fn split_stamp(text: &[u8]) -> Option<(&[u8], &[u8])> {
    let after_open = text.strip_prefix(STAMP_OPEN)?;
    // The value is digits, `-`, `:`, `.`, `T` and `Z`: no escapes.
    let q = memchr::memchr(b'"', after_open)?;
    let value = &after_open[..q];
    if value.contains(&b'\\') {
        return None;
    }
    match after_open.get(q + 1..)? {
        [b',', rest @ ..] => Some((value, rest)),
        rest @ [b'}', ..] => Some((value, rest)),
        _ => None,
    }
}

/// Position of one record inside [`Records::buf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    pub start: u32,
    pub len: u32,
    /// Event time, Unix milliseconds.
    pub ts_ms: i64,
    /// Bloom bits of the record's top-level keys (see `parse::key_bit`).
    pub key_mask: u64,
    /// The record's first member is the `"@timestamp"` the source added
    /// from `ts_ms` (the application's data had none). Sinks rename or
    /// leave out only this one (`timestamp_key`), never the application's.
    pub ts_added: bool,
}

/// The records of a batch, stored back to back in one buffer. Shared (not
/// copied) when a component fans out to several sinks.
#[derive(Debug, Default)]
pub struct Records {
    pub buf: Vec<u8>,
    pub meta: Vec<RecordMeta>,
    /// Memory accounted against `global.memory_limit`; released on drop.
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Records {
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// The JSON object text of record `i` (always a `{...}` object).
    pub fn text(&self, i: usize) -> &[u8] {
        let m = self.meta[i];
        &self.buf[m.start as usize..(m.start + m.len) as usize]
    }

    /// Appends one record produced by a parser writing at the end of `buf`.
    pub fn push_written(&mut self, start: usize, ts_ms: i64, key_mask: u64) {
        self.push_at(start, ts_ms, key_mask, false);
    }

    /// Like [`Records::push_written`], for a record whose first member is
    /// the `@timestamp` the source spliced in (see [`RecordMeta::ts_added`]).
    pub fn push_stamped(&mut self, start: usize, ts_ms: i64, key_mask: u64) {
        self.push_at(start, ts_ms, key_mask, true);
    }

    /// Appends a record written at `start` that keeps the time, keys and
    /// `@timestamp` origin of `like` (a transform copying or rewriting one).
    pub fn push_like(&mut self, start: usize, like: &RecordMeta) {
        self.push_at(start, like.ts_ms, like.key_mask, like.ts_added);
    }

    fn push_at(&mut self, start: usize, ts_ms: i64, key_mask: u64, ts_added: bool) {
        let len = self.buf.len() - start;
        self.meta.push(RecordMeta {
            start: start as u32,
            len: len as u32,
            ts_ms,
            key_mask,
            ts_added,
        });
    }
}

/// Fields added to every record of a batch (enrichment), pre-serialized once.
#[derive(Debug, Default)]
pub struct Fields {
    entries: Vec<FieldEntry>,
    /// OR of the entries' key bits.
    mask: u64,
    /// All entries joined: `"k1":v1,"k2":v2`.
    joined: Vec<u8>,
}

#[derive(Debug)]
struct FieldEntry {
    key: String,
    bit: u64,
    value: serde_json::Value,
    /// `"key":value`
    text: Vec<u8>,
}

impl Fields {
    pub fn new(fields: impl IntoIterator<Item = (String, serde_json::Value)>) -> Self {
        let mut out = Fields::default();
        for (key, value) in fields {
            if out.entries.iter().any(|e| e.key == key) {
                continue;
            }
            let mut text = Vec::with_capacity(key.len() + 16);
            serde_json::to_writer(&mut text, &key).expect("writing to a Vec cannot fail");
            text.push(b':');
            serde_json::to_writer(&mut text, &value).expect("writing to a Vec cannot fail");
            let bit = key_bit(key.as_bytes());
            out.mask |= bit;
            if !out.joined.is_empty() {
                out.joined.push(b',');
            }
            out.joined.extend_from_slice(&text);
            out.entries.push(FieldEntry { key, bit, value, text });
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// OR of the key bits of every field (see `parse::key_bit`).
    pub fn mask(&self) -> u64 {
        self.mask
    }

    /// Value of a field for templates: top-level key, or a dotted path into
    /// an object value (`kubernetes.pod_name`).
    pub fn lookup(&self, path: &str) -> Option<Cow<'_, str>> {
        let (head, rest) = match path.split_once('.') {
            Some((h, r)) => (h, Some(r)),
            None => (path, None),
        };
        let entry = self.entries.iter().find(|e| e.key == head)?;
        let mut v = &entry.value;
        if let Some(rest) = rest {
            for seg in rest.split('.') {
                v = v.get(seg)?;
            }
        }
        match v {
            serde_json::Value::String(s) => Some(Cow::Borrowed(s.as_str())),
            serde_json::Value::Number(n) => Some(Cow::Owned(n.to_string())),
            serde_json::Value::Bool(b) => Some(Cow::Owned(b.to_string())),
            _ => None,
        }
    }
}

/// Delivery outcome reported to the source when the last token clone drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub stream: u64,
    pub seq: u64,
    pub delivered: bool,
    /// Records in the batch (for the acked/unacked metrics).
    pub records: u32,
}

#[derive(Debug)]
struct AckInner {
    stream: u64,
    seq: u64,
    records: u32,
    failed: AtomicBool,
    /// `None` for a combined token: it reports through the tokens it keeps.
    tx: Option<std::sync::mpsc::Sender<Ack>>,
    /// Tokens kept alive until this one drops (see [`AckToken::combine`]).
    kept: Vec<AckToken>,
}

impl Drop for AckInner {
    fn drop(&mut self) {
        let failed = self.failed.load(Ordering::Acquire);
        if failed {
            for k in &self.kept {
                k.fail();
            }
        }
        let Some(tx) = &self.tx else { return };
        // The source may already be gone (forced exit); nothing to report then.
        let _ = tx.send(Ack {
            stream: self.stream,
            seq: self.seq,
            delivered: !self.failed.load(Ordering::Acquire),
            records: self.records,
        });
    }
}

/// Shared delivery notifier of one batch; see the module docs.
#[derive(Debug, Clone)]
pub struct AckToken(Arc<AckInner>);

impl AckToken {
    pub fn new(stream: u64, seq: u64, tx: std::sync::mpsc::Sender<Ack>) -> Self {
        Self::with_records(stream, seq, 0, tx)
    }

    /// A token that also reports how many records its batch holds.
    pub fn with_records(stream: u64, seq: u64, records: u32, tx: std::sync::mpsc::Sender<Ack>) -> Self {
        AckToken(Arc::new(AckInner {
            stream,
            seq,
            records,
            failed: AtomicBool::new(false),
            tx: Some(tx),
            kept: Vec::new(),
        }))
    }

    /// One token standing for several batches' tokens: it reports nothing
    /// itself, keeps `parts` alive until it drops, and fails them all if it
    /// was failed. A transform that moves records between batches (multiline
    /// joins lines read in several batches) gives the batch carrying them
    /// such a token, so no source offset passes a line before the record
    /// holding it is delivered.
    pub fn combine(parts: Vec<AckToken>) -> AckToken {
        let mut uniq: Vec<AckToken> = Vec::with_capacity(parts.len());
        for p in parts {
            if !uniq.iter().any(|u| u.same(&p)) {
                uniq.push(p);
            }
        }
        let mut parts = uniq;
        if parts.len() == 1
            && let Some(one) = parts.pop()
        {
            return one;
        }
        AckToken(Arc::new(AckInner {
            stream: 0,
            seq: 0,
            records: 0,
            failed: AtomicBool::new(false),
            tx: None,
            kept: parts,
        }))
    }

    /// Are both clones of one token?
    pub fn same(&self, other: &AckToken) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The source stream (file) the batch was read from; `None` for a
    /// combined token.
    pub fn stream(&self) -> Option<u64> {
        self.0.tx.as_ref().map(|_| self.0.stream)
    }

    /// Marks the batch as not delivered; the source's offset will not pass it.
    pub fn fail(&self) {
        self.0.failed.store(true, Ordering::Release);
    }
}

/// An ack clone a sink keeps for records it holds past the batch (packed
/// into a Firehose record, a forward chunk). Dropped without
/// [`HeldAck::release`] (the records were not accepted), it marks its batch
/// failed, so an abandoned sink never passes for a delivered one.
#[derive(Debug, Clone)]
pub struct HeldAck(pub Option<AckToken>);

impl HeldAck {
    /// The records are delivered: drop the clone as such.
    pub fn release(mut self) {
        self.0 = None;
    }
}

impl Drop for HeldAck {
    fn drop(&mut self) {
        if let Some(a) = &self.0 {
            a.fail();
        }
    }
}

/// A batch of records on its way from a source to the sinks.
#[derive(Debug, Clone)]
pub struct Batch {
    pub records: Arc<Records>,
    /// Enrichment fragments, applied in order at encoding time.
    pub fields: Vec<Arc<Fields>>,
    pub ack: Option<AckToken>,
    /// The Fluent tag the records arrived with (forward source). Not written
    /// into records: it is there for templates (`{tag}`) and conditions
    /// (`field = "tag"`), after the record's own `tag` field and the
    /// enrichment fragments.
    pub tag: Option<Arc<str>>,
}

impl Batch {
    pub fn new(records: Records, ack: Option<AckToken>) -> Self {
        Batch {
            records: Arc::new(records),
            fields: Vec::new(),
            ack,
            tag: None,
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn ts_ms(&self, i: usize) -> i64 {
        self.records.meta[i].ts_ms
    }

    /// Appends record `i`, with the batch's fields spliced in, to `out` as one
    /// line of JSON (without the newline). A record's own field wins over an
    /// added field of the same name: the application's data is never
    /// overwritten, and no object ever carries a key twice.
    pub fn encode(&self, i: usize, out: &mut Vec<u8>) {
        self.encode_stamped(i, &TimestampKey::Keep, out);
    }

    /// [`Batch::encode`], with the `@timestamp` the source added (and only
    /// that one, see [`RecordMeta::ts_added`]) kept, left out or renamed.
    pub fn encode_stamped(&self, i: usize, ts: &TimestampKey, out: &mut Vec<u8>) {
        let meta = self.records.meta[i];
        let text = self.records.text(i);
        let stamp = match ts {
            TimestampKey::Keep => None,
            _ if !meta.ts_added => None,
            _ => split_stamp(text),
        };
        let mut seen_mask = meta.key_mask;
        let mut renamed: Option<&str> = None;
        let mut need_comma;
        match stamp {
            None => {
                if self.fields.is_empty() {
                    out.extend_from_slice(text);
                    return;
                }
                // Parsers emit objects whose last byte is `}`.
                let body = &text[..text.len().saturating_sub(1)];
                out.extend_from_slice(body);
                need_comma = body.iter().rev().find(|b| !b.is_ascii_whitespace()) != Some(&b'{');
            }
            Some((value, rest)) => {
                out.push(b'{');
                need_comma = false;
                if let TimestampKey::Rename(key) = ts {
                    let bit = key_bit(key.as_bytes());
                    if meta.key_mask & bit == 0 || !has_top_level_key(text, key) {
                        write_str(out, key);
                        out.extend_from_slice(b":\"");
                        out.extend_from_slice(value);
                        out.push(b'"');
                        need_comma = true;
                        seen_mask |= bit;
                        renamed = Some(key);
                    }
                }
                // `rest` is the members after the stamp and the closing `}`.
                let body = &rest[..rest.len().saturating_sub(1)];
                if body.iter().any(|b| !b.is_ascii_whitespace()) {
                    if need_comma {
                        out.push(b',');
                    }
                    out.extend_from_slice(body);
                    need_comma = true;
                }
            }
        }
        for (n, fields) in self.fields.iter().enumerate() {
            if fields.entries.is_empty() {
                continue;
            }
            // Fast path: no key of this fragment can collide.
            if seen_mask & fields.mask == 0 {
                if need_comma {
                    out.push(b',');
                }
                out.extend_from_slice(&fields.joined);
                need_comma = true;
                seen_mask |= fields.mask;
                continue;
            }
            for e in &fields.entries {
                if seen_mask & e.bit != 0 && (self.key_taken(text, &e.key, n) || renamed == Some(e.key.as_str())) {
                    continue;
                }
                if need_comma {
                    out.push(b',');
                }
                out.extend_from_slice(&e.text);
                need_comma = true;
                seen_mask |= e.bit;
            }
        }
        out.push(b'}');
    }

    /// Appends the value of top-level field `key` of record `i` as encoded
    /// (the record's own field first, then the first fragment that has it):
    /// a string as its raw text, unescaped; any other value as its JSON text.
    /// False, with nothing written, when the record has no such field.
    pub fn encode_field(&self, i: usize, key: &str, out: &mut Vec<u8>) -> bool {
        let meta = self.records.meta[i];
        if meta.key_mask & key_bit(key.as_bytes()) != 0
            && let Some(v) = top_level_value(self.records.text(i), key)
        {
            match v {
                FieldText::Str(s) => out.extend_from_slice(s.as_bytes()),
                FieldText::Json(raw) => out.extend_from_slice(raw),
            }
            return true;
        }
        let Some(e) = self.fields.iter().find_map(|f| f.entries.iter().find(|e| e.key == key)) else {
            return false;
        };
        match &e.value {
            serde_json::Value::String(s) => out.extend_from_slice(s.as_bytes()),
            v => serde_json::to_writer(&mut *out, v).expect("writing to a Vec cannot fail"),
        }
        true
    }

    /// Is `key` already present in the record or in a fragment before `upto`?
    fn key_taken(&self, text: &[u8], key: &str, upto: usize) -> bool {
        has_top_level_key(text, key)
            || self.fields[..upto]
                .iter()
                .any(|f| f.entries.iter().any(|e| e.key == key))
    }

    /// Does record `i`, as `encode` writes it, have a top-level field `path`
    /// (of any type)? A dotted path is present when it holds a scalar.
    pub fn has_field(&self, i: usize, path: &str) -> bool {
        if path.contains('.') {
            return self.lookup(i, path).is_some();
        }
        let meta = self.records.meta[i];
        (meta.key_mask & key_bit(path.as_bytes()) != 0 && has_top_level_key(self.records.text(i), path))
            || self.fields.iter().any(|f| f.entries.iter().any(|e| e.key == path))
            || (path == "tag" && self.tag.is_some())
    }

    /// Value of a field of record `i` for templates, resolved as `encode`
    /// writes it: the record's own field first, then the first fragment that
    /// has it.
    pub fn lookup(&self, i: usize, path: &str) -> Option<Cow<'_, str>> {
        let meta = self.records.meta[i];
        let head = path.split('.').next().unwrap_or(path);
        if meta.key_mask & key_bit(head.as_bytes()) != 0
            && let Some(v) = lookup_field(self.records.text(i), path)
        {
            return Some(v);
        }
        self.fields
            .iter()
            .find_map(|f| f.lookup(path))
            .or_else(|| match &self.tag {
                Some(tag) if path == "tag" => Some(Cow::Borrowed(&**tag)),
                _ => None,
            })
    }

    /// Bytes of record `i` as encoded, without computing it exactly: used
    /// for size-based flushing.
    pub fn approx_len(&self, i: usize) -> usize {
        self.records.meta[i].len as usize + self.fields.iter().map(|f| f.joined.len() + 1).sum::<usize>()
    }

    /// Bytes of the batch as encoded (records plus the fields spliced into
    /// each), without encoding it: exact unless a field collides with a
    /// record's own key. What the per-component byte counters count.
    pub fn bytes(&self) -> u64 {
        let per_record: usize = self
            .fields
            .iter()
            .filter(|f| !f.is_empty())
            .map(|f| f.joined.len() + 1)
            .sum();
        (self.records.buf.len() + per_record * self.len()) as u64
    }

    /// Marks the batch failed (see [`AckToken::fail`]).
    pub fn fail(&self) {
        if let Some(ack) = &self.ack {
            ack.fail();
        }
    }
}

/// A batch of JSON object lines, as a parser would emit them (tests).
#[cfg(test)]
pub(crate) fn batch_of(lines: &[&str]) -> Batch {
    let mut r = Records::default();
    for l in lines {
        let start = r.buf.len();
        r.buf.extend_from_slice(l.as_bytes());
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let mask = v.as_object().unwrap().keys().fold(0, |m, k| m | key_bit(k.as_bytes()));
        r.push_written(start, 0, mask);
    }
    Batch::new(r, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bytes_counts_the_encoded_records_without_encoding_them() {
        let mut b = batch_of(&[r#"{"log":"a"}"#, r#"{"log":"bc"}"#]);
        b.fields.push(Arc::new(Fields::new([("k".to_string(), json!("v"))])));
        b.fields.push(Arc::new(Fields::default()));
        let encoded: usize = (0..b.len())
            .map(|i| {
                let mut out = Vec::new();
                b.encode(i, &mut out);
                out.len()
            })
            .sum();
        assert_eq!(b.bytes(), encoded as u64);
    }

    #[test]
    fn tag_is_looked_up_after_record_and_fields_but_never_written() {
        let mut b = batch_of(&[r#"{"log":"a"}"#, r#"{"log":"b","tag":"own"}"#]);
        assert_eq!(b.lookup(0, "tag"), None);
        assert!(!b.has_field(0, "tag"));
        b.tag = Some(Arc::from("app-firelens-1"));
        assert_eq!(b.lookup(0, "tag").as_deref(), Some("app-firelens-1"));
        assert!(b.has_field(0, "tag"));
        assert_eq!(b.lookup(1, "tag").as_deref(), Some("own"));
        assert_eq!(
            encode_all(&b),
            vec![json!({"log": "a"}), json!({"log": "b", "tag": "own"})]
        );
    }

    fn encode_all(b: &Batch) -> Vec<serde_json::Value> {
        (0..b.len())
            .map(|i| {
                let mut out = Vec::new();
                b.encode(i, &mut out);
                serde_json::from_slice(&out).unwrap()
            })
            .collect()
    }

    #[test]
    fn fields_are_spliced_and_record_wins() {
        let mut b = batch_of(&[r#"{"a":1,"ecs_cluster":"mine"}"#, r#"{}"#, r#"{ "x" : "y" }"#]);
        b.fields.push(Arc::new(Fields::new([
            ("ecs_cluster".to_string(), json!("prod")),
            ("kubernetes".to_string(), json!({"pod_name": "p1"})),
        ])));
        b.fields
            .push(Arc::new(Fields::new([("ecs_cluster".to_string(), json!("late"))])));
        let out = encode_all(&b);
        assert_eq!(
            out[0],
            json!({"a":1,"ecs_cluster":"mine","kubernetes":{"pod_name":"p1"}})
        );
        assert_eq!(out[1], json!({"ecs_cluster":"prod","kubernetes":{"pod_name":"p1"}}));
        assert_eq!(
            out[2],
            json!({"x":"y","ecs_cluster":"prod","kubernetes":{"pod_name":"p1"}})
        );
        assert_eq!(b.lookup(0, "ecs_cluster").as_deref(), Some("mine"));
        assert_eq!(b.lookup(1, "ecs_cluster").as_deref(), Some("prod"));
        assert_eq!(b.lookup(1, "kubernetes.pod_name").as_deref(), Some("p1"));
        assert_eq!(b.lookup(1, "missing"), None);
    }

    #[test]
    fn last_token_drop_reports_once_with_worst_status() {
        let (tx, rx) = std::sync::mpsc::channel();
        let t = AckToken::new(7, 3, tx);
        let t2 = t.clone();
        drop(t);
        assert!(rx.try_recv().is_err());
        t2.fail();
        drop(t2);
        assert_eq!(
            rx.try_recv().unwrap(),
            Ack {
                stream: 7,
                seq: 3,
                delivered: false,
                records: 0,
            }
        );
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_combined_token_keeps_its_parts_until_it_drops_and_fails_them() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (a, b) = (AckToken::new(1, 1, tx.clone()), AckToken::new(1, 2, tx));
        assert_eq!(a.stream(), Some(1));
        let both = AckToken::combine(vec![a.clone(), b.clone(), a.clone()]);
        assert_eq!(both.stream(), None);
        assert!(AckToken::combine(vec![a.clone(), a.clone()]).same(&a));
        drop((a, b));
        assert!(rx.try_recv().is_err(), "the combined token keeps both alive");
        let again = AckToken::combine(vec![both.clone()]);
        drop(both);
        assert!(rx.try_recv().is_err());
        again.fail();
        drop(again);
        let mut got: Vec<Ack> = rx.try_iter().collect();
        got.sort_by_key(|a| a.seq);
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|a| !a.delivered), "{got:?}");
        assert_eq!(got.iter().map(|a| a.seq).collect::<Vec<_>>(), [1, 2]);
    }

    /// Members of a JSON object in order, duplicates kept (serde_json's
    /// `Value` would hide a key written twice).
    struct Pairs(Vec<(String, serde_json::Value)>);

    impl<'de> serde::Deserialize<'de> for Pairs {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Pairs;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Pairs, A::Error> {
                    let mut v = Vec::new();
                    while let Some(kv) = m.next_entry()? {
                        v.push(kv);
                    }
                    Ok(Pairs(v))
                }
            }
            d.deserialize_map(V)
        }
    }

    const TS: &str = "2026-01-02T03:04:05.678Z";

    /// A batch of records; `stamped` ones get the source's `@timestamp`
    /// spliced in front, as parsers write it.
    fn stamped_batch(records: &[(bool, &str)]) -> Batch {
        let mut r = Records::default();
        for (stamped, body) in records {
            let start = r.buf.len();
            let text = if *stamped {
                let inner = body.trim().strip_prefix('{').unwrap().trim_start();
                if inner.starts_with('}') {
                    format!("{{\"@timestamp\":\"{TS}\"}}")
                } else {
                    format!("{{\"@timestamp\":\"{TS}\",{inner}")
                }
            } else {
                body.to_string()
            };
            r.buf.extend_from_slice(text.as_bytes());
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            let mask = v.as_object().unwrap().keys().fold(0, |m, k| m | key_bit(k.as_bytes()));
            if *stamped {
                r.push_stamped(start, 1, mask);
            } else {
                r.push_written(start, 1, mask);
            }
        }
        Batch::new(r, None)
    }

    fn encode_ts(b: &Batch, i: usize, ts: &TimestampKey) -> Vec<(String, serde_json::Value)> {
        let mut out = Vec::new();
        b.encode_stamped(i, ts, &mut out);
        serde_json::from_slice::<Pairs>(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
            .0
    }

    fn keys(p: &[(String, serde_json::Value)]) -> Vec<&str> {
        p.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn timestamp_key_renames_or_omits_only_the_added_stamp() {
        let mut b = stamped_batch(&[
            (true, r#"{"log":"a"}"#),
            (true, r#"{ }"#),
            // The application's own, byte-identical to a stamp: kept.
            (false, &format!(r#"{{"@timestamp":"{TS}","log":"b"}}"#)),
            // The record has its own `date`: it wins over the renamed stamp.
            (true, r#"{"date":"mine","log":"c"}"#),
        ]);
        let omit = TimestampKey::Omit;
        let date = TimestampKey::Rename("date".into());
        assert_eq!(keys(&encode_ts(&b, 0, &omit)), ["log"]);
        assert_eq!(encode_ts(&b, 1, &omit), vec![]);
        assert_eq!(keys(&encode_ts(&b, 2, &omit)), ["@timestamp", "log"]);
        assert_eq!(keys(&encode_ts(&b, 3, &omit)), ["date", "log"]);
        assert_eq!(
            encode_ts(&b, 0, &date),
            vec![("date".into(), json!(TS)), ("log".into(), json!("a"))]
        );
        assert_eq!(encode_ts(&b, 1, &date), vec![("date".into(), json!(TS))]);
        assert_eq!(keys(&encode_ts(&b, 2, &date)), ["@timestamp", "log"]);
        assert_eq!(
            encode_ts(&b, 3, &date),
            vec![("date".into(), json!("mine")), ("log".into(), json!("c"))]
        );
        // Enrichment after the stamp: a field named like the renamed stamp
        // is not added twice; one named `@timestamp` is not added by omission.
        b.fields.push(Arc::new(Fields::new([
            ("date".to_string(), json!("enriched")),
            ("@timestamp".to_string(), json!("enriched")),
            ("ecs_cluster".to_string(), json!("prod")),
        ])));
        assert_eq!(
            encode_ts(&b, 0, &date),
            vec![
                ("date".into(), json!(TS)),
                ("log".into(), json!("a")),
                ("ecs_cluster".into(), json!("prod"))
            ]
        );
        assert_eq!(keys(&encode_ts(&b, 1, &omit)), ["date", "ecs_cluster"]);
        assert_eq!(keys(&encode_ts(&b, 1, &date)), ["date", "ecs_cluster"]);
        for i in 0..b.len() {
            let mut want = Vec::new();
            b.encode(i, &mut want);
            let mut got = Vec::new();
            b.encode_stamped(i, &TimestampKey::Keep, &mut got);
            assert_eq!(got, want, "Keep is encode");
        }
    }

    #[test]
    fn a_rewritten_stamp_is_kept_whole() {
        // A transform rewrote the stamp (a custom redact pattern): the text no
        // longer opens with a plain stamp, so nothing is cut.
        let mut r = Records::default();
        r.buf
            .extend_from_slice(br#"{"@timestamp":"[REDACTED:x\"y]","log":"a"}"#);
        r.push_stamped(0, 1, key_bit(b"@timestamp") | key_bit(b"log"));
        let b = Batch::new(r, None);
        assert_eq!(keys(&encode_ts(&b, 0, &TimestampKey::Omit)), ["@timestamp", "log"]);
    }

    #[test]
    fn log_key_sends_the_value_alone() {
        let mut b = batch_of(&[
            r#"{"log":"line \"quoted\"\tté\u00e9 \ud83d\ude00\n","n":1}"#,
            r#"{"log":12.50e1}"#,
            r#"{"log": {"a":[1, "x"]} ,"z":0}"#,
            r#"{"log":[1,2]}"#,
            r#"{"log":null}"#,
            r#"{"log":true}"#,
            r#"{"other":"x","nested":{"log":"no"}}"#,
            r#"{"log":"first","log":"last"}"#,
            r#"{"log":""}"#,
        ]);
        b.fields
            .push(Arc::new(Fields::new([("ecs_task_id".to_string(), json!({"id": 7}))])));
        let get = |i: usize, key: &str| {
            let mut out = b"keep".to_vec();
            let found = b.encode_field(i, key, &mut out);
            (found, String::from_utf8(out[4..].to_vec()).unwrap())
        };
        assert_eq!(get(0, "log"), (true, "line \"quoted\"\ttéé 😀\n".to_string()));
        assert_eq!(get(1, "log"), (true, "12.50e1".to_string()));
        assert_eq!(get(2, "log"), (true, r#"{"a":[1, "x"]}"#.to_string()));
        assert_eq!(get(3, "log"), (true, "[1,2]".to_string()));
        assert_eq!(get(4, "log"), (true, "null".to_string()));
        assert_eq!(get(5, "log"), (true, "true".to_string()));
        assert_eq!(
            get(6, "log"),
            (false, String::new()),
            "a nested key is not a top-level one"
        );
        assert_eq!(get(7, "log"), (true, "last".to_string()));
        assert_eq!(get(8, "log"), (true, String::new()));
        assert_eq!(
            get(6, "ecs_task_id"),
            (true, r#"{"id":7}"#.to_string()),
            "an enrichment field"
        );
        let format = crate::sinks::encoding::RecordFormat::new(Some("log"), Some(""));
        let mut out = Vec::new();
        assert!(!format.encode(&b, 6, &mut out));
        assert!(out.is_empty(), "nothing written for a record without the key");
    }

    proptest::proptest! {
        /// Whatever the record, stamp and enrichment: every option writes one
        /// JSON object without a duplicate key; `Omit` is `encode` without
        /// the stamp, `Rename` puts the stamp's time under the new key unless
        /// the record has that key, and unstamped records are never changed.
        #[test]
        fn timestamp_key_never_loses_or_duplicates_a_member(
            members in proptest::collection::btree_map("(@timestamp|date|log|[a-c])", "[a-z\"\\\\]{0,4}", 0..5),
            stamped in proptest::bool::ANY,
            fields in proptest::collection::btree_map("(@timestamp|date|log|[a-c])", "[a-z]{0,3}", 0..4),
            rename in "(date|log|a|x)",
        ) {
            let mut members = members;
            if stamped {
                members.remove("@timestamp");
            }
            let body = serde_json::to_string(&members).unwrap();
            let mut b = stamped_batch(&[(stamped, &body)]);
            if !fields.is_empty() {
                b.fields.push(Arc::new(Fields::new(fields.iter().map(|(k, v)| (k.clone(), json!(v))))));
            }
            let mut full = Vec::new();
            b.encode(0, &mut full);
            let full = serde_json::from_slice::<Pairs>(&full).unwrap().0;
            for ts in [TimestampKey::Omit, TimestampKey::Rename(rename.clone())] {
                let got = encode_ts(&b, 0, &ts);
                let mut ks = keys(&got);
                ks.sort_unstable();
                let n = ks.len();
                ks.dedup();
                proptest::prop_assert_eq!(ks.len(), n, "duplicate key in {:?}", got);
                if !stamped {
                    proptest::prop_assert_eq!(&got, &full);
                    continue;
                }
                let without: Vec<_> = full.iter().filter(|(k, _)| k != "@timestamp").cloned().collect();
                match &ts {
                    TimestampKey::Omit => proptest::prop_assert_eq!(&got, &without),
                    TimestampKey::Rename(k) => {
                        let own = members.get(k.as_str());
                        let v = got.iter().find(|(gk, _)| gk == k).map(|(_, v)| v.clone());
                        match own {
                            Some(own) => proptest::prop_assert_eq!(v, Some(json!(own))),
                            None => proptest::prop_assert_eq!(v, Some(json!(TS))),
                        }
                        proptest::prop_assert!(got.iter().all(|(gk, _)| gk != "@timestamp"));
                        // Everything else is as encode wrote it.
                        let rest: Vec<_> = got.iter().filter(|(gk, _)| gk != k).cloned().collect();
                        let want: Vec<_> = without.iter().filter(|(wk, _)| wk != k).cloned().collect();
                        proptest::prop_assert_eq!(rest, want);
                    }
                    TimestampKey::Keep => unreachable!(),
                }
            }
        }
    }
}
