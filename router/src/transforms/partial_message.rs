//! `type = "partial_message"` (and the forward source's `partial` option):
//! joins the partial messages Docker and containerd make of a line over
//! 16 KiB back into one record.
//!
//! Why: through the `fluentd`/`awsfirelens` log driver a 40 KiB JSON line
//! arrives as three records, each with a piece of it in `log` and
//! `partial_message: "true"`, `partial_id` (one id per line),
//! `partial_ordinal` (`"1"`, `"2"`, ...) and `partial_last`. Shipped as they
//! come, no query and no JSON parser can put the line back together.
//!
//! What it does, matching Fluent Bit's `multiline` filter in
//! `mode partial_message` where that is sensible:
//! - Parts are grouped by (tag, `partial_id`), so any number of containers
//!   interleave freely; a line is complete when its `partial_last` part and
//!   every ordinal below it have arrived, in whatever order they came. The
//!   joined `key` (default `log`) is the parts' values in ordinal order;
//!   every other field and the event time are those of the lowest ordinal.
//!   Fluent Bit appends in arrival order; ordinals make the order certain.
//! - On a complete line the four Docker keys (`partial_message`,
//!   `partial_id`, `partial_ordinal`, `partial_last`) are removed, as Fluent
//!   Bit does (it removes every key starting with `partial_`; we remove only
//!   these four, so an application's own `partial_*` field survives).
//! - A line that cannot be completed is never held forever nor lost: it is
//!   emitted as far as it got, keeps `partial_id` (so its pieces can be
//!   correlated) and gets `"logferry_partial": "<why>"`: `timeout` (no part
//!   within `flush_timeout`, Fluent Bit's `flush_ms`, default 2s),
//!   `max_size` (the next part would make the text longer than `max_size`:
//!   what is held goes out and the following parts continue in a new record),
//!   `memory` (no room in `memory_limit` for what is held) or `shutdown`
//!   (input closed). Each is counted in
//!   `logferry_component_line_issues_total{reason="partial_<why>"}`. Fluent
//!   Bit has no such mark; it emits silently on its timer.
//! - A part seen twice for the same id (a client resending a chunk that was
//!   not acknowledged yet) is dropped and counted (`partial_duplicate`).
//! - A record without `partial_message: "true"`, a `partial_id` and a
//!   string `key` passes through untouched, at once and in order.
//!
//! Why acknowledgements are combined: a group holds the `AckToken` of every
//! batch it took a part from, and the batch carrying the joined record gets
//! `AckToken::combine` of them (as `multiline` does). A forward client's
//! chunk is therefore answered only once the line its parts belong to is
//! delivered, and a crash before that makes the client resend.
//!
//! Why the file source's joining (`sources/file/parse/partial.rs`) is not
//! shared: it joins raw lines of one file before they are records, per
//! stream slot and in file order (the json-file and CRI formats carry no id
//! nor ordinal), and its state is a file offset the checkpoint must not pass.
//! Here parts are records that arrive with ids and ordinals, out of order and
//! across batches, and what must not be released is an ack token. The only
//! common step is appending text under a size bound, which is one line in
//! each; one core for both would need the union of the two state models.
//!
//! Length: about 640 lines of code and 400 of unit tests, which exercise
//! its private items and so stay beside them (over the ~1,000-line mark
//! only with its tests).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Deserializer};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use crate::confdiag::{Ctx, Seg};
use crate::event::{AckToken, Batch, Fields};
use crate::metrics::{ComponentMetrics, Metrics};
use crate::sources::file::parse::{key_bit, lookup_field, lookup_string, members, write_str};
use crate::topology::Fanout;
use crate::transforms::joining::Join;
use crate::transforms::multiline::{Budget, Out};

/// The Docker keys of a partial message.
const MESSAGE: &str = "partial_message";
const ID: &str = "partial_id";
const ORDINAL: &str = "partial_ordinal";
const LAST: &str = "partial_last";
/// The mark of a record that does not hold its whole line.
pub const MARK: &str = "logferry_partial";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialMessageConfig {
    /// Top-level string field holding the pieces (Fluent Bit's
    /// `multiline.key_content`).
    #[serde(default = "default_key")]
    pub key: String,
    /// Bytes of joined text in one record at most.
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
    /// A line with no new part for this long is emitted as it is, marked
    /// (Fluent Bit's `flush_ms`).
    #[serde(default = "default_flush_timeout", with = "humantime_serde")]
    pub flush_timeout: Duration,
}

fn default_key() -> String {
    "log".to_string()
}
fn default_max_size() -> ByteSize {
    ByteSize::mib(1)
}
fn default_flush_timeout() -> Duration {
    Duration::from_secs(2)
}

impl Default for PartialMessageConfig {
    fn default() -> Self {
        PartialMessageConfig {
            key: default_key(),
            max_size: default_max_size(),
            flush_timeout: default_flush_timeout(),
        }
    }
}

impl PartialMessageConfig {
    pub fn validate(&self, ctx: &mut Ctx<'_>, base: &[Seg]) -> bool {
        let at = |k: &str| crate::confdiag::key(base, k);
        let mut ok = true;
        if self.key.is_empty() {
            ctx.error(&at("key"), "must not be empty");
            ok = false;
        }
        if self.max_size.as_u64() == 0 {
            ctx.error(&at("max_size"), "must be more than 0");
            ok = false;
        }
        if self.flush_timeout.is_zero() {
            ctx.error(&at("flush_timeout"), "must be more than 0");
            ok = false;
        }
        ok
    }

    pub fn describe(&self) -> String {
        format!(
            "partial_message: join Docker partial messages by partial_id into `{}`, at most {}, flush after {}",
            self.key,
            self.max_size,
            humantime::format_duration(self.flush_timeout),
        )
    }
}

/// `partial = true`, `partial = false` or `partial = { key = ..., ... }`
/// (the forward source's option).
pub fn deserialize_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PartialMessageConfig>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<PartialMessageConfig>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("true, false, or a table with key, max_size, flush_timeout")
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(v.then(PartialMessageConfig::default))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            PartialMessageConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    d.deserialize_any(V)
}

/// Why a record does not hold its whole line (the value of [`MARK`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    Timeout,
    MaxSize,
    Memory,
    Shutdown,
}

impl Cut {
    fn name(self) -> &'static str {
        match self {
            Cut::Timeout => "timeout",
            Cut::MaxSize => "max_size",
            Cut::Memory => "memory",
            Cut::Shutdown => "shutdown",
        }
    }
}

/// One part as read from a record.
struct Part {
    id: String,
    ordinal: Option<u64>,
    last: bool,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    tag: Option<Arc<str>>,
    id: String,
}

#[derive(Debug)]
struct Group {
    /// The record of the lowest ordinal held: its other fields and time
    /// are the joined record's.
    template: Vec<u8>,
    template_ord: u64,
    ts_ms: i64,
    key_mask: u64,
    fields: Vec<Arc<Fields>>,
    tag: Option<Arc<str>>,
    /// Pieces held, by ordinal.
    parts: BTreeMap<u64, String>,
    /// Bytes of `parts`.
    bytes: usize,
    /// Every ordinal taken for this id (emitted or held).
    seen: BTreeSet<u64>,
    last: Option<u64>,
    /// Some pieces already went out (`max_size`): the rest is marked too.
    cut: bool,
    acks: Vec<AckToken>,
    touched: Instant,
}

impl Group {
    fn complete(&self) -> bool {
        self.last
            .is_some_and(|l| self.seen.len() as u64 == l && self.seen.last() == Some(&l))
    }
}

/// Counters of incomplete records, by cause.
struct Counters {
    timeout: Counter,
    max_size: Counter,
    memory: Counter,
    shutdown: Counter,
}

/// The joining state; see the module docs.
pub struct PartialJoiner {
    cfg: PartialMessageConfig,
    key_bit: u64,
    message_bit: u64,
    max: usize,
    groups: HashMap<Key, Group>,
    held: usize,
    m: Option<ComponentMetrics>,
    counters: Option<Counters>,
    budget: Option<Budget>,
}

impl PartialJoiner {
    pub fn new(cfg: PartialMessageConfig, m: Option<ComponentMetrics>, memory: Option<Arc<Semaphore>>) -> Self {
        PartialJoiner {
            key_bit: key_bit(cfg.key.as_bytes()),
            message_bit: key_bit(MESSAGE.as_bytes()),
            max: usize::try_from(cfg.max_size.as_u64()).unwrap_or(usize::MAX),
            groups: HashMap::new(),
            held: 0,
            counters: m.as_ref().map(|m| Counters {
                timeout: m.line_issue("partial_timeout"),
                max_size: m.line_issue("partial_max_size"),
                memory: m.line_issue("partial_memory"),
                shutdown: m.line_issue("partial_shutdown"),
            }),
            m,
            cfg,
            budget: memory.map(Budget::new),
        }
    }

    /// Bytes the open lines hold.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Bytes of `memory_limit` held for them.
    pub fn charged(&self) -> usize {
        self.budget.as_ref().map_or(0, Budget::bytes)
    }

    /// Lines being joined.
    pub fn open(&self) -> usize {
        self.groups.len()
    }

    /// The part record `text` is, if it is one.
    fn part(&self, text: &[u8], key_mask: u64) -> Option<Part> {
        if key_mask & self.message_bit == 0 || key_mask & self.key_bit == 0 {
            return None;
        }
        let is = |k: &str| lookup_field(text, k).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if !is(MESSAGE) {
            return None;
        }
        let id = lookup_field(text, ID).filter(|v| !v.is_empty())?.into_owned();
        // Only a string is a piece of a line.
        let piece = lookup_string(text, &self.cfg.key)?.into_owned();
        Some(Part {
            id,
            ordinal: lookup_field(text, ORDINAL)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|o| *o >= 1),
            last: is(LAST),
            text: piece,
        })
    }

    fn settle_budget(&mut self) {
        let held = self.held;
        if let Some(b) = self.budget.as_mut() {
            b.resize(held, None);
        }
    }

    fn take_where(&mut self, out: &mut Out, why: Cut, due: impl Fn(&Group) -> bool) {
        let mut keys: Vec<(Instant, Key)> = self
            .groups
            .iter()
            .filter(|(_, g)| due(g))
            .map(|(k, g)| (g.touched, k.clone()))
            .collect();
        // Oldest first, so lines leave in the order they went quiet.
        keys.sort_by_key(|(t, _)| *t);
        for (_, k) in keys {
            if let Some(mut g) = self.groups.remove(&k) {
                if !g.parts.is_empty() {
                    emit(&self.cfg, &mut g, Some(why), out, &mut self.held, self.m.as_ref());
                    bump(&self.counters, why);
                }
                self.held -= g.template.len();
            }
        }
    }
}

fn bump(c: &Option<Counters>, why: Cut) {
    if let Some(c) = c {
        match why {
            Cut::Timeout => c.timeout.inc(),
            Cut::MaxSize => c.max_size.inc(),
            Cut::Memory => c.memory.inc(),
            Cut::Shutdown => c.shutdown.inc(),
        };
    }
}

/// Writes the pieces `g` holds as one record into its slot of `out`, moves
/// its acks there, and empties it of them (its template stays, for the
/// pieces still to come after a `max_size` cut).
fn emit(
    cfg: &PartialMessageConfig,
    g: &mut Group,
    cut: Option<Cut>,
    out: &mut Out,
    held: &mut usize,
    m: Option<&ComponentMetrics>,
) {
    *held -= g.bytes;
    let mut joined = String::with_capacity(g.bytes);
    for p in std::mem::take(&mut g.parts).into_values() {
        joined.push_str(&p);
    }
    g.bytes = 0;
    if cut.is_some() {
        g.cut = true;
    }
    let template = &g.template;
    let slot = out.slot(&g.fields, &g.tag);
    for a in std::mem::take(&mut g.acks) {
        if !slot.acks.iter().any(|h| h.same(&a)) {
            slot.acks.push(a);
        }
    }
    let buf = &mut slot.records.buf;
    let start = buf.len();
    let mut mask = g.key_mask;
    match members(template) {
        Some(ms) => {
            buf.push(b'{');
            let mut first = true;
            let mut sep = |buf: &mut Vec<u8>| {
                if !std::mem::take(&mut first) {
                    buf.push(b',');
                }
            };
            for (k, r) in &ms {
                let k: &str = k;
                if k == cfg.key {
                    sep(buf);
                    write_str(buf, k);
                    buf.push(b':');
                    write_str(buf, &joined);
                } else if k == MESSAGE || k == ORDINAL || k == LAST || (k == ID && cut.is_none()) || k == MARK {
                    continue;
                } else {
                    sep(buf);
                    buf.extend_from_slice(template.get(r.clone()).unwrap_or_default());
                }
            }
            if let Some(c) = cut {
                sep(buf);
                write_str(buf, MARK);
                buf.push(b':');
                write_str(buf, c.name());
                mask |= key_bit(MARK.as_bytes());
            }
            buf.push(b'}');
        }
        None => {
            // The template parsed as a record before; if it does not now,
            // keep it whole rather than lose it (counted, never silent).
            buf.extend_from_slice(template);
            if let Some(m) = m {
                m.discarded("partial_unjoinable", 1);
            }
        }
    }
    slot.records.push_written(start, g.ts_ms, mask);
}

impl Join for PartialJoiner {
    /// Takes in the records of `batch`; returns the batches to send now
    /// (completed lines, cut lines and records that are no parts). The
    /// first one carries `batch`'s memory permit when the batch was not
    /// shared.
    fn push(&mut self, batch: Batch, now: Instant) -> Vec<Batch> {
        let mut out = Out::default();
        out.slot(&batch.fields, &batch.tag).acks.extend(batch.ack.clone());
        let records = &batch.records;
        let mut duplicates = 0u64;
        for i in 0..records.len() {
            let text = records.text(i);
            let meta = records.meta[i];
            let Some(part) = self.part(text, meta.key_mask) else {
                let slot = out.slot(&batch.fields, &batch.tag);
                let start = slot.records.buf.len();
                slot.records.buf.extend_from_slice(text);
                slot.records.push_written(start, meta.ts_ms, meta.key_mask);
                continue;
            };
            let key = Key {
                tag: batch.tag.clone(),
                id: part.id,
            };
            let g = match self.groups.entry(key.clone()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    self.held += text.len();
                    v.insert(Group {
                        template: text.to_vec(),
                        template_ord: u64::MAX,
                        ts_ms: meta.ts_ms,
                        key_mask: meta.key_mask,
                        fields: batch.fields.clone(),
                        tag: batch.tag.clone(),
                        parts: BTreeMap::new(),
                        bytes: 0,
                        seen: BTreeSet::new(),
                        last: None,
                        cut: false,
                        acks: Vec::new(),
                        touched: now,
                    })
                }
            };
            // Without an ordinal (older Docker), parts come in order.
            let ord = part
                .ordinal
                .unwrap_or_else(|| g.seen.last().map_or(1, |l| l.saturating_add(1)));
            if g.seen.contains(&ord) {
                duplicates += 1;
                continue;
            }
            if !g.parts.is_empty() && g.bytes + part.text.len() > self.max {
                // The held pieces go out now; this one starts the next record.
                emit(
                    &self.cfg,
                    g,
                    Some(Cut::MaxSize),
                    &mut out,
                    &mut self.held,
                    self.m.as_ref(),
                );
                bump(&self.counters, Cut::MaxSize);
            }
            if ord < g.template_ord {
                if g.template_ord != u64::MAX {
                    self.held = self.held - g.template.len() + text.len();
                    g.template = text.to_vec();
                    g.ts_ms = meta.ts_ms;
                    g.key_mask = meta.key_mask;
                }
                g.template_ord = ord;
            }
            g.seen.insert(ord);
            if part.last {
                g.last = Some(ord);
            }
            g.bytes += part.text.len();
            self.held += part.text.len();
            g.parts.insert(ord, part.text);
            if let Some(a) = &batch.ack
                && !g.acks.iter().any(|h| h.same(a))
            {
                g.acks.push(a.clone());
            }
            g.touched = now;
            if g.complete() {
                let cut = g.cut.then_some(Cut::MaxSize);
                emit(&self.cfg, g, cut, &mut out, &mut self.held, self.m.as_ref());
                if cut.is_some() {
                    bump(&self.counters, Cut::MaxSize);
                }
                if let Some(g) = self.groups.remove(&key) {
                    self.held -= g.template.len();
                }
            } else if g.bytes > self.max {
                // One part alone over max_size: out as it is.
                emit(
                    &self.cfg,
                    g,
                    Some(Cut::MaxSize),
                    &mut out,
                    &mut self.held,
                    self.m.as_ref(),
                );
                bump(&self.counters, Cut::MaxSize);
            }
        }
        if duplicates > 0
            && let Some(m) = &self.m
        {
            m.discarded("partial_duplicate", duplicates);
        }
        let Batch {
            records, fields, tag, ..
        } = batch;
        // The records were copied out; an owned batch's memory share moves on
        // with what it became.
        let mut permit = Arc::try_unwrap(records).ok().and_then(|mut r| r.permit.take());
        let held = self.held;
        if let Some(b) = self.budget.as_mut()
            && !b.resize(held, permit.as_mut())
        {
            // No room in memory_limit: the lines go now rather than wait.
            b.resize(0, None);
            self.take_where(&mut out, Cut::Memory, |_| true);
        }
        out.slot(&fields, &tag).records.permit = permit;
        out.into_batches().collect()
    }

    /// Emits the lines with no new part for `flush_timeout`.
    fn expire(&mut self, now: Instant) -> Vec<Batch> {
        let timeout = self.cfg.flush_timeout;
        let mut out = Out::default();
        self.take_where(&mut out, Cut::Timeout, |g| g.touched + timeout <= now);
        self.settle_budget();
        out.into_batches().collect()
    }

    /// Emits every open line (input closed).
    fn flush_all(&mut self) -> Vec<Batch> {
        let mut out = Out::default();
        self.take_where(&mut out, Cut::Shutdown, |_| true);
        self.settle_budget();
        out.into_batches().collect()
    }

    /// When the oldest open line is due.
    fn next_deadline(&self) -> Option<Instant> {
        self.groups.values().map(|g| g.touched + self.cfg.flush_timeout).min()
    }
}

/// The transform's task.
pub async fn run(
    id: String,
    cfg: PartialMessageConfig,
    input: mpsc::Receiver<Batch>,
    output: Fanout,
    metrics: Arc<Metrics>,
    memory: Arc<Semaphore>,
) {
    let m = metrics.component(&id, "partial_message");
    join(cfg, input, output, m, true, memory).await
}

/// Joins what comes in on `input` into `output` until `input` closes, then
/// emits every open line. `count`: bump `m`'s received/sent counters (a
/// transform does; a source whose batches pass through here already did).
pub async fn join(
    cfg: PartialMessageConfig,
    input: mpsc::Receiver<Batch>,
    output: Fanout,
    m: ComponentMetrics,
    count: bool,
    memory: Arc<Semaphore>,
) {
    let joiner = PartialJoiner::new(cfg, Some(m.clone()), Some(memory));
    crate::transforms::joining::run(joiner, input, output, m, count).await
}

#[cfg(test)]
mod tests;
