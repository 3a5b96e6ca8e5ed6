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

use crate::sources::file::parse::{has_top_level_key, key_bit, lookup_field};

/// Position of one record inside [`Records::buf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    pub start: u32,
    pub len: u32,
    /// Event time, Unix milliseconds.
    pub ts_ms: i64,
    /// Bloom bits of the record's top-level keys (see `parse::key_bit`).
    pub key_mask: u64,
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
        let len = self.buf.len() - start;
        self.meta.push(RecordMeta {
            start: start as u32,
            len: len as u32,
            ts_ms,
            key_mask,
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
        let meta = self.records.meta[i];
        let text = self.records.text(i);
        if self.fields.is_empty() {
            out.extend_from_slice(text);
            return;
        }
        // Parsers emit objects whose last byte is `}`.
        let body = &text[..text.len().saturating_sub(1)];
        out.extend_from_slice(body);
        let mut need_comma = body.iter().rev().find(|b| !b.is_ascii_whitespace()) != Some(&b'{');
        let mut seen_mask = meta.key_mask;
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
                if seen_mask & e.bit != 0 && self.key_taken(text, &e.key, n) {
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
}
