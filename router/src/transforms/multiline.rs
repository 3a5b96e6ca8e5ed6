//! `type = "multiline"`: joins the lines of one event (a stack trace, a
//! traceback, a panic) that the application wrote as several lines.
//!
//! Why groups live per stream and across batches: a file source cuts batches
//! at byte budgets, not at event boundaries, and several files (or
//! containers, or stdout and stderr of one container) interleave in one
//! transform. A group is keyed by the batch's source stream and tag plus the
//! `group_by` fields of the record, and stays open until a line that starts a
//! new event arrives for the same key, `flush_timeout` passes without a new
//! line, a limit is hit (`max_lines`, `max_bytes`, `max_groups`, or no room in
//! `memory_limit` for what the groups hold), or the input closes.
//!
//! Why acknowledgements are combined: a group holds the `AckToken` of every
//! batch it took a line from, and the batch that finally carries the joined
//! record carries one token keeping all of them alive (`AckToken::combine`).
//! So a source's checkpoint never passes a line still held here, and after a
//! crash that line is read again.
//!
//! Only records that are joined are rewritten: the first record of the group
//! keeps its other fields and time, and its `field` (decoded, joined with
//! `\n`) is re-encoded in place. A record without the field (or with a
//! non-string one) is not a line: it closes its key's open group and passes
//! as it is.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use regex::Regex;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

use crate::confdiag::{Ctx, Seg};
use crate::event::{AckToken, Batch, Fields, Records};
use crate::metrics::{ComponentMetrics, Metrics};
use crate::sources::file::parse::{key_bit, lookup_field};
use crate::topology::Fanout;
use crate::transforms::joining::Join;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultilineConfig {
    /// Top-level string field holding the line (default `log`).
    #[serde(default = "default_field")]
    pub field: String,
    /// A line matching this starts a new event; any other line continues the
    /// open one.
    #[serde(default, with = "opt_regex")]
    pub start_pattern: Option<Regex>,
    /// Built-in rules: `java`, `python` or `go`.
    pub preset: Option<Preset>,
    /// Record fields that, with the source stream and tag, tell groups apart.
    #[serde(default = "default_group_by")]
    pub group_by: Vec<String>,
    /// Lines in one joined record at most (then a new record starts).
    #[serde(default = "default_max_lines")]
    pub max_lines: usize,
    /// Bytes of joined text in one record at most.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// A group with no new line for this long is emitted.
    #[serde(default = "default_flush_timeout", with = "humantime_serde")]
    pub flush_timeout: Duration,
    /// Open groups at most; the least recently extended one is emitted to
    /// make room.
    #[serde(default = "default_max_groups")]
    pub max_groups: usize,
}

fn default_field() -> String {
    "log".to_string()
}
fn default_group_by() -> Vec<String> {
    vec!["container_id".to_string(), "stream".to_string()]
}
fn default_max_lines() -> usize {
    500
}
fn default_max_bytes() -> ByteSize {
    ByteSize::mib(1)
}
fn default_flush_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_max_groups() -> usize {
    1024
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    Java,
    Python,
    Go,
}

mod opt_regex {
    use regex::Regex;
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Regex>, D::Error> {
        let s = String::deserialize(d)?;
        Regex::new(&s).map(Some).map_err(serde::de::Error::custom)
    }
}

impl MultilineConfig {
    pub fn validate(&self, ctx: &mut Ctx<'_>, base: &[Seg]) -> bool {
        let at = |k: &str| crate::confdiag::key(base, k);
        let mut ok = true;
        if self.start_pattern.is_some() == self.preset.is_some() {
            ctx.error(base, "needs exactly one of `start_pattern` and `preset`");
            ok = false;
        }
        if self.field.is_empty() {
            ctx.error(&at("field"), "must not be empty");
            ok = false;
        }
        for (k, v) in [("max_lines", self.max_lines), ("max_groups", self.max_groups)] {
            if v == 0 {
                ctx.error(&at(k), "must be at least 1");
                ok = false;
            }
        }
        if self.max_bytes.as_u64() == 0 {
            ctx.error(&at("max_bytes"), "must be more than 0");
            ok = false;
        }
        if self.flush_timeout.is_zero() {
            ctx.error(&at("flush_timeout"), "must be more than 0");
            ok = false;
        }
        ok
    }

    pub fn describe(&self) -> String {
        let rule = match (&self.preset, &self.start_pattern) {
            (Some(p), _) => format!("preset {p:?}").to_lowercase(),
            (None, Some(r)) => format!("start_pattern {:?}", r.as_str()),
            (None, None) => "no rule".to_string(),
        };
        format!(
            "multiline: join `{}` by {rule}, grouped by stream{}{}, at most {} lines / {}, flush after {}",
            self.field,
            if self.group_by.is_empty() { "" } else { " and " },
            self.group_by.join(", "),
            self.max_lines,
            self.max_bytes,
            humantime::format_duration(self.flush_timeout),
        )
    }

    fn rule(&self) -> Rule {
        match (&self.preset, &self.start_pattern) {
            (Some(Preset::Java), _) => Rule::Java(Box::new(JavaRules::new())),
            (Some(Preset::Python), _) => Rule::Python,
            (Some(Preset::Go), _) => Rule::Go(Box::new(GoRules::new())),
            (None, Some(r)) => Rule::Start(r.clone()),
            // validate() insists on one of them; a rule-less config joins nothing.
            (None, None) => Rule::Start(Regex::new("").expect("the empty regex compiles")),
        }
    }
}

/// Where the open group of a key is in the event it reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum St {
    #[default]
    Normal,
    /// Python: inside `Traceback (most recent call last):` frames.
    PyTrace,
    /// Python: after the final `XxxError: msg` line.
    PyAfter,
    /// Python: after "During handling of the above exception ...".
    PyChain,
    /// Go: after `panic:` / `fatal error:`.
    GoPanic,
}

#[derive(Debug)]
struct JavaRules {
    /// Frames, `... N more`, `Caused by:`, `Suppressed:`.
    cont: Regex,
    /// `com.acme.FooException: message` right after the logged message.
    header: Regex,
}

impl JavaRules {
    fn new() -> Self {
        JavaRules {
            cont: Regex::new(r"^(?:\s+at |\s*\.\.\. \d+ (?:more|common frames omitted)|\s*(?:Caused by|Suppressed): )")
                .expect("constant regex"),
            header: Regex::new(r"^(?:[A-Za-z_$][\w$]*\.)+[A-Za-z_$][\w$]*(?:Exception|Error|Throwable)(?::|$)")
                .expect("constant regex"),
        }
    }
}

#[derive(Debug)]
struct GoRules {
    /// What follows `panic:` in a Go crash: goroutine headers, frames
    /// (`pkg.fn(...)` and `\t/path/file.go:NN +0x..`), signal lines.
    cont: Regex,
}

impl GoRules {
    fn new() -> Self {
        GoRules {
            cont: Regex::new(
                r"^(?:\s|goroutine \d+ \[[^\]]*\]:$|\[signal |created by |runtime stack:$|\.\.\.additional frames elided\.\.\.$|[\w$.\-/*()\[\]]+\(.*\)$)",
            )
            .expect("constant regex"),
        }
    }
}

#[derive(Debug)]
enum Rule {
    Start(Regex),
    Java(Box<JavaRules>),
    Python,
    Go(Box<GoRules>),
}

const PY_TRACEBACK: &str = "Traceback (most recent call last):";

impl Rule {
    /// Does `line` continue the open group (of `lines` lines, in state
    /// `st`; `None`: no open group)? When it does not, `st` becomes the state
    /// of the group the line starts.
    fn step(&self, st: &mut St, open: Option<usize>, line: &str) -> bool {
        let cont = match (self, open) {
            (_, None) => false,
            (Rule::Start(re), Some(_)) => !re.is_match(line),
            (Rule::Java(j), Some(lines)) => j.cont.is_match(line) || (lines == 1 && j.header.is_match(line)),
            (Rule::Python, Some(lines)) => match *st {
                St::PyTrace => {
                    if !line.starts_with([' ', '\t']) {
                        // The final `XxxError: message` line ends the traceback.
                        *st = St::PyAfter;
                    }
                    true
                }
                St::PyAfter
                    if line.starts_with("During handling of the above exception")
                        || line.starts_with("The above exception was the direct cause") =>
                {
                    *st = St::PyChain;
                    true
                }
                St::PyChain | St::Normal if line.starts_with(PY_TRACEBACK) && (*st == St::PyChain || lines == 1) => {
                    *st = St::PyTrace;
                    true
                }
                _ => false,
            },
            (Rule::Go(g), Some(_)) => *st == St::GoPanic && g.cont.is_match(line),
        };
        if !cont {
            *st = match self {
                Rule::Python if line.starts_with(PY_TRACEBACK) => St::PyTrace,
                Rule::Go(_) if line.starts_with("panic: ") || line.starts_with("fatal error: ") => St::GoPanic,
                _ => St::Normal,
            };
        }
        cont
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    stream: Option<u64>,
    tag: Option<Arc<str>>,
    by: Vec<Option<String>>,
}

#[derive(Debug)]
struct Group {
    /// The first record's text, emitted with `joined` in place of its field.
    first: Vec<u8>,
    /// The first record's time, keys and `@timestamp` origin.
    meta: crate::event::RecordMeta,
    fields: Vec<Arc<Fields>>,
    tag: Option<Arc<str>>,
    joined: String,
    lines: usize,
    /// Tokens of the batches the lines came from.
    acks: Vec<AckToken>,
    st: St,
    touched: Instant,
}

impl Group {
    fn held(&self) -> usize {
        self.first.len() + self.joined.len()
    }
}

/// Batches being built: one per distinct (fields, tag) of the records in them.
#[derive(Default)]
pub(crate) struct Out {
    slots: Vec<Slot>,
}

pub(crate) struct Slot {
    fields: Vec<Arc<Fields>>,
    tag: Option<Arc<str>>,
    pub(crate) records: Records,
    pub(crate) acks: Vec<AckToken>,
}

fn same_fields(a: &[Arc<Fields>], b: &[Arc<Fields>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
}

impl Out {
    pub(crate) fn slot(&mut self, fields: &[Arc<Fields>], tag: &Option<Arc<str>>) -> &mut Slot {
        let at = self
            .slots
            .iter()
            .position(|s| same_fields(&s.fields, fields) && s.tag == *tag);
        let at = match at {
            Some(at) => at,
            None => {
                self.slots.push(Slot {
                    fields: fields.to_vec(),
                    tag: tag.clone(),
                    records: Records::default(),
                    acks: Vec::new(),
                });
                self.slots.len() - 1
            }
        };
        &mut self.slots[at]
    }

    pub(crate) fn into_batches(self) -> impl Iterator<Item = Batch> {
        self.slots.into_iter().filter(|s| !s.records.is_empty()).map(|s| {
            let ack = (!s.acks.is_empty()).then(|| AckToken::combine(s.acks));
            Batch {
                records: Arc::new(s.records),
                fields: s.fields,
                ack,
                tag: s.tag,
            }
        })
    }
}

/// The joining state of one transform; see the module docs.
pub struct Joiner {
    cfg: MultilineConfig,
    rule: Rule,
    field_bit: u64,
    by_bits: Vec<u64>,
    groups: HashMap<Key, Group>,
    held: usize,
    /// Counters: groups cut by a limit, lines lost to a non-string field.
    split: Option<prometheus_client::metrics::counter::Counter>,
    m: Option<ComponentMetrics>,
    /// `memory_limit` share of what the groups hold (`None`: not limited).
    budget: Option<Budget>,
}

/// Bytes of `memory_limit` the open groups hold. Taken first from the permit
/// of the batch the lines came from (its bytes moved here), then from the
/// limit without waiting; a full pipeline therefore does not keep the
/// transform from joining, and one with no room at all gets the groups
/// emitted instead of waiting for memory.
#[derive(Debug)]
pub(crate) struct Budget {
    sem: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
}

impl Budget {
    pub(crate) fn new(sem: Arc<Semaphore>) -> Self {
        Budget { sem, held: None }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Sets the share to `bytes`; false when it cannot grow that far.
    pub(crate) fn resize(&mut self, bytes: usize, donor: Option<&mut OwnedSemaphorePermit>) -> bool {
        let have = self.bytes();
        if bytes <= have {
            if let Some(p) = self.held.as_mut() {
                drop(p.split(have - bytes));
            }
            return true;
        }
        let mut need = bytes - have;
        let add = |more: OwnedSemaphorePermit, held: &mut Option<OwnedSemaphorePermit>| match held {
            Some(p) => p.merge(more),
            None => *held = Some(more),
        };
        if let Some(d) = donor
            && let Some(part) = d.split(need.min(d.num_permits()))
        {
            need -= part.num_permits();
            add(part, &mut self.held);
        }
        if need == 0 {
            return true;
        }
        let Ok(want) = u32::try_from(need) else { return false };
        match self.sem.clone().try_acquire_many_owned(want) {
            Ok(more) => {
                add(more, &mut self.held);
                true
            }
            Err(_) => false,
        }
    }
}

impl Joiner {
    pub fn new(cfg: MultilineConfig, m: Option<ComponentMetrics>, memory: Option<Arc<Semaphore>>) -> Self {
        Joiner {
            rule: cfg.rule(),
            field_bit: key_bit(cfg.field.as_bytes()),
            by_bits: cfg.group_by.iter().map(|f| key_bit(f.as_bytes())).collect(),
            groups: HashMap::new(),
            held: 0,
            split: m.as_ref().map(|m| m.line_issue("multiline_split")),
            m,
            cfg,
            budget: memory.map(|sem| Budget { sem, held: None }),
        }
    }

    /// Bytes the open groups hold.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Bytes of `memory_limit` held for them.
    pub fn charged(&self) -> usize {
        self.budget.as_ref().map_or(0, Budget::bytes)
    }

    pub fn open_groups(&self) -> usize {
        self.groups.len()
    }

    fn take_where(&mut self, due: impl Fn(&Group) -> bool) -> Vec<Batch> {
        let keys: Vec<Key> = self
            .groups
            .iter()
            .filter(|(_, g)| due(g))
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Out::default();
        for k in keys {
            if let Some(g) = self.groups.remove(&k) {
                self.emit(g, &mut out);
            }
        }
        let held = self.held;
        if let Some(b) = self.budget.as_mut() {
            b.resize(held, None);
        }
        out.into_batches().collect()
    }

    /// Writes group `g` as one record into its slot of `out`.
    fn emit(&mut self, g: Group, out: &mut Out) {
        self.held = self.held.saturating_sub(g.held());
        let slot = out.slot(&g.fields, &g.tag);
        for a in g.acks {
            if !slot.acks.iter().any(|h| h.same(&a)) {
                slot.acks.push(a);
            }
        }
        let buf = &mut slot.records.buf;
        let start = buf.len();
        if g.lines > 1 {
            let field = self.cfg.field.as_str();
            let mut joined = Some(g.joined);
            let replaced = crate::transforms::redact::rewrite_string_values(&g.first, buf, |path, _| {
                if path.len() == 1 && path[0] == field {
                    joined.take()
                } else {
                    None
                }
            });
            if !matches!(replaced, Ok(true)) {
                // The field was not a string after all: the continuation
                // lines cannot be put back; counted, never silent.
                buf.truncate(start);
                buf.extend_from_slice(&g.first);
                if let Some(m) = &self.m {
                    m.discarded("multiline_not_string", (g.lines - 1) as u64);
                }
            }
        } else {
            buf.extend_from_slice(&g.first);
        }
        slot.records.push_like(start, &g.meta);
    }
}

impl Join for Joiner {
    /// Takes in the records of `batch`; returns the batches to send now
    /// (completed groups and records that are not lines). The first one
    /// carries `batch`'s memory permit when the batch was not shared.
    fn push(&mut self, batch: Batch, now: Instant) -> Vec<Batch> {
        let mut out = Out::default();
        {
            let own = out.slot(&batch.fields, &batch.tag);
            own.acks.extend(batch.ack.clone());
        }
        let stream = batch.ack.as_ref().and_then(AckToken::stream);
        let records = &batch.records;
        for i in 0..records.len() {
            let text = records.text(i);
            let meta = records.meta[i];
            let key = Key {
                stream,
                tag: batch.tag.clone(),
                by: if meta.key_mask & self.by_bits.iter().fold(0, |m, b| m | b) == 0 {
                    Vec::new()
                } else {
                    self.cfg
                        .group_by
                        .iter()
                        .zip(&self.by_bits)
                        .map(|(f, b)| {
                            (meta.key_mask & b != 0)
                                .then(|| lookup_field(text, f).map(|v| v.into_owned()))
                                .flatten()
                        })
                        .collect()
                },
            };
            let line = if meta.key_mask & self.field_bit != 0 {
                lookup_field(text, &self.cfg.field)
            } else {
                None
            };
            let Some(line) = line else {
                // Not a line: it ends its key's event and passes as it is.
                if let Some(g) = self.groups.remove(&key) {
                    self.emit(g, &mut out);
                }
                let slot = out.slot(&batch.fields, &batch.tag);
                let start = slot.records.buf.len();
                slot.records.buf.extend_from_slice(text);
                slot.records.push_like(start, &meta);
                continue;
            };
            let max_bytes = usize::try_from(self.cfg.max_bytes.as_u64()).unwrap_or(usize::MAX);
            let mut st = St::Normal;
            if let Some(g) = self.groups.get_mut(&key) {
                let cont = self.rule.step(&mut g.st, Some(g.lines), &line);
                if cont && g.lines < self.cfg.max_lines && g.joined.len() + 1 + line.len() <= max_bytes {
                    g.joined.push('\n');
                    g.joined.push_str(&line);
                    g.lines += 1;
                    self.held += 1 + line.len();
                    if let Some(a) = &batch.ack
                        && !g.acks.iter().any(|h| h.same(a))
                    {
                        g.acks.push(a.clone());
                    }
                    g.touched = now;
                    continue;
                }
                if cont && let Some(c) = &self.split {
                    c.inc();
                }
                st = g.st;
                if let Some(g) = self.groups.remove(&key) {
                    self.emit(g, &mut out);
                }
            } else {
                self.rule.step(&mut st, None, &line);
                if self.groups.len() >= self.cfg.max_groups
                    && let Some(oldest) = self
                        .groups
                        .iter()
                        .min_by_key(|(_, g)| g.touched)
                        .map(|(k, _)| k.clone())
                    && let Some(g) = self.groups.remove(&oldest)
                {
                    self.emit(g, &mut out);
                }
            }
            let g = Group {
                first: text.to_vec(),
                meta,
                fields: batch.fields.clone(),
                tag: batch.tag.clone(),
                joined: line.into_owned(),
                lines: 1,
                acks: batch.ack.iter().cloned().collect(),
                st,
                touched: now,
            };
            self.held += g.held();
            self.groups.insert(key, g);
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
            // No room in memory_limit: the groups go now rather than wait.
            b.resize(0, None);
            let keys: Vec<Key> = self.groups.keys().cloned().collect();
            for k in keys {
                if let Some(g) = self.groups.remove(&k) {
                    self.emit(g, &mut out);
                }
            }
        }
        out.slot(&fields, &tag).records.permit = permit;
        out.into_batches().collect()
    }

    /// Emits the groups whose last line is older than `flush_timeout`.
    fn expire(&mut self, now: Instant) -> Vec<Batch> {
        let timeout = self.cfg.flush_timeout;
        self.take_where(|g| g.touched + timeout <= now)
    }

    /// Emits every open group (shutdown, or no room in the memory limit).
    fn flush_all(&mut self) -> Vec<Batch> {
        self.take_where(|_| true)
    }

    /// When the oldest open group is due.
    fn next_deadline(&self) -> Option<Instant> {
        self.groups.values().map(|g| g.touched + self.cfg.flush_timeout).min()
    }
}

pub async fn run(
    id: String,
    cfg: MultilineConfig,
    input: mpsc::Receiver<Batch>,
    output: Fanout,
    metrics: Arc<Metrics>,
    memory: Arc<Semaphore>,
) {
    let m = metrics.component(&id, "multiline");
    let joiner = Joiner::new(cfg, Some(m.clone()), Some(memory));
    crate::transforms::joining::run(joiner, input, output, m, true).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Ack;
    use serde_json::{Value, json};

    fn cfg(toml_text: &str) -> MultilineConfig {
        toml::from_str(toml_text).unwrap()
    }

    /// A batch of records (JSON object lines) read from stream `stream`.
    fn batch(lines: &[String], stream: u64, seq: u64, tx: &std::sync::mpsc::Sender<Ack>) -> Batch {
        let mut b = crate::event::batch_of(&lines.iter().map(String::as_str).collect::<Vec<_>>());
        b.ack = Some(AckToken::new(stream, seq, tx.clone()));
        b
    }

    /// `{"log": line}` for each non-empty line, as the `none` parser emits.
    fn log_records(text: &str) -> Vec<String> {
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| json!({ "log": l }).to_string())
            .collect()
    }

    fn values(batches: &[Batch]) -> Vec<Value> {
        batches
            .iter()
            .flat_map(|b| (0..b.len()).map(move |i| serde_json::from_slice(b.records.text(i)).unwrap()))
            .collect()
    }

    fn logs(batches: &[Batch]) -> Vec<String> {
        values(batches)
            .iter()
            .map(|v| v["log"].as_str().unwrap().to_string())
            .collect()
    }

    /// Every record of `text` through a joiner in batches of `per`, then a
    /// final flush; the `log` values out.
    fn join_fixture(c: &str, text: &str, per: usize) -> Vec<String> {
        let (tx, _rx) = std::sync::mpsc::channel();
        let mut j = Joiner::new(cfg(c), None, None);
        let now = Instant::now();
        let mut out = Vec::new();
        for (n, chunk) in log_records(text).chunks(per).enumerate() {
            out.extend(j.push(batch(chunk, 1, n as u64, &tx), now));
        }
        out.extend(j.flush_all());
        assert_eq!(j.held(), 0);
        logs(&out)
    }

    /// The non-empty lines `from..=to` (1-based, as in the file) joined.
    fn lines(text: &str, from: usize, to: usize) -> String {
        text.lines()
            .skip(from - 1)
            .take(to + 1 - from)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    }

    const JAVA: &str = include_str!("../../tests/fixtures/multiline/java.log");
    const PYTHON: &str = include_str!("../../tests/fixtures/multiline/python.log");
    const GO: &str = include_str!("../../tests/fixtures/multiline/go.log");

    #[test]
    fn java_preset_joins_message_exception_frames_and_causes() {
        let want = vec![
            lines(JAVA, 1, 1),
            lines(JAVA, 2, 11),
            lines(JAVA, 12, 12),
            lines(JAVA, 13, 15),
            lines(JAVA, 16, 16),
        ];
        for per in [1, 3, 100] {
            assert_eq!(join_fixture("preset = \"java\"", JAVA, per), want, "batches of {per}");
        }
    }

    #[test]
    fn python_preset_keeps_the_final_error_line_and_chained_tracebacks() {
        let want = vec![
            lines(PYTHON, 1, 1),
            lines(PYTHON, 2, 17),
            lines(PYTHON, 18, 22),
            lines(PYTHON, 23, 23),
        ];
        assert!(want[1].ends_with("payments.PaymentError: gateway unreachable: timed out"));
        assert!(want[2].starts_with("2024-05-02 10:20:02,000 ERROR app: job 7 crashed\nTraceback"));
        for per in [1, 4, 100] {
            assert_eq!(
                join_fixture("preset = \"python\"", PYTHON, per),
                want,
                "batches of {per}"
            );
        }
    }

    #[test]
    fn go_preset_joins_panics_and_fatal_errors() {
        let want = vec![
            lines(GO, 1, 1),
            lines(GO, 2, 10),
            lines(GO, 11, 11),
            lines(GO, 12, 12),
            lines(GO, 13, 17),
            lines(GO, 18, 18),
        ];
        for per in [1, 5, 100] {
            assert_eq!(join_fixture("preset = \"go\"", GO, per), want, "batches of {per}");
        }
    }

    #[test]
    fn start_pattern_max_lines_and_max_bytes() {
        let text = "S1\na\nb\nc\nd\nS2\ne\n";
        let c = "start_pattern = \"^S\"";
        assert_eq!(join_fixture(c, text, 2), ["S1\na\nb\nc\nd", "S2\ne"]);
        assert_eq!(
            join_fixture(&format!("{c}\nmax_lines = 2"), text, 2),
            ["S1\na", "b\nc", "d", "S2\ne"]
        );
        // "S1\na\nb" is 6 bytes; adding "\nc" would make 8.
        assert_eq!(
            join_fixture(&format!("{c}\nmax_bytes = \"7B\""), text, 10),
            ["S1\na\nb", "c\nd", "S2\ne"]
        );
    }

    #[test]
    fn the_first_record_keeps_its_fields_and_escapes_survive() {
        let (tx, _rx) = std::sync::mpsc::channel();
        let mut j = Joiner::new(cfg("start_pattern = \"^\\\\d\""), None, None);
        let recs = vec![
            r#"{"@timestamp":"2024-01-01T00:00:00.000Z","log":"1 \"quoted\" \u00e9","level":"error"}"#.to_string(),
            r#"{"@timestamp":"2024-01-01T00:00:01.000Z","log":"\tat x\\y","level":"other"}"#.to_string(),
            r#"{"msg":"no log field"}"#.to_string(),
            r#"{"log":"2 next"}"#.to_string(),
        ];
        let mut out = j.push(batch(&recs, 1, 0, &tx), Instant::now());
        out.extend(j.flush_all());
        assert_eq!(
            values(&out),
            [
                json!({"@timestamp":"2024-01-01T00:00:00.000Z","log":"1 \"quoted\" é\n\tat x\\y","level":"error"}),
                json!({"msg":"no log field"}),
                json!({"log":"2 next"}),
            ]
        );
        let text = std::str::from_utf8(out[0].records.text(0)).unwrap();
        assert!(
            text.starts_with(r#"{"@timestamp":"2024-01-01T00:00:00.000Z","log":"#),
            "{text}"
        );
    }

    #[test]
    fn streams_and_group_by_fields_keep_interleaved_groups_apart() {
        let (tx, _rx) = std::sync::mpsc::channel();
        let mut j = Joiner::new(cfg("start_pattern = \"^S\""), None, None);
        let rec = |log: &str, stream: &str| json!({ "log": log, "stream": stream }).to_string();
        let now = Instant::now();
        let mut out = j.push(
            batch(
                &[
                    rec("S out", "stdout"),
                    rec("S err", "stderr"),
                    rec("e1", "stderr"),
                    rec("o1", "stdout"),
                ],
                1,
                0,
                &tx,
            ),
            now,
        );
        // Another file (stream 2) continues nothing of stream 1.
        out.extend(j.push(batch(&[rec("x2", "stdout")], 2, 0, &tx), now));
        out.extend(j.push(batch(&[rec("o2", "stdout"), rec("e2", "stderr")], 1, 1, &tx), now));
        assert_eq!(j.open_groups(), 3);
        out.extend(j.flush_all());
        let mut got = logs(&out);
        got.sort();
        assert_eq!(got, ["S err\ne1\ne2", "S out\no1\no2", "x2"]);
    }

    #[test]
    fn a_group_held_across_batches_holds_their_acks_until_delivered() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut j = Joiner::new(cfg("preset = \"java\""), None, None);
        let now = Instant::now();
        let first = log_records("done\nERROR failed\njava.lang.IllegalStateException: x\n\tat a.B.c(B.java:1)");
        let out1 = j.push(batch(&first, 1, 1, &tx), now);
        assert_eq!(logs(&out1), ["done"]);
        drop(out1);
        assert!(rx.try_recv().is_err(), "batch 1 has lines in the open group");
        let out2 = j.push(batch(&log_records("\tat a.B.d(B.java:2)\nINFO next"), 1, 2, &tx), now);
        assert_eq!(
            logs(&out2),
            ["ERROR failed\njava.lang.IllegalStateException: x\n\tat a.B.c(B.java:1)\n\tat a.B.d(B.java:2)"]
        );
        assert!(rx.try_recv().is_err());
        // The sink fails the batch carrying the joined record: both source
        // batches are reported failed, so no checkpoint passes them.
        out2[0].fail();
        drop(out2);
        let mut acks: Vec<Ack> = rx.try_iter().collect();
        acks.sort_by_key(|a| a.seq);
        assert_eq!(
            acks.iter().map(|a| (a.seq, a.delivered)).collect::<Vec<_>>(),
            [(1, false)]
        );
        // Batch 2's last line ("INFO next") is still open: its ack waits.
        let out3 = j.flush_all();
        assert_eq!(logs(&out3), ["INFO next"]);
        drop(out3);
        let acks: Vec<Ack> = rx.try_iter().collect();
        assert_eq!(
            acks.iter().map(|a| (a.seq, a.delivered)).collect::<Vec<_>>(),
            [(2, false)]
        );
    }

    #[test]
    fn idle_groups_are_emitted_after_flush_timeout() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut j = Joiner::new(cfg("start_pattern = \"^S\"\nflush_timeout = \"2s\""), None, None);
        let t0 = Instant::now();
        assert!(j.push(batch(&log_records("S1\na"), 1, 0, &tx), t0).is_empty());
        assert_eq!(j.next_deadline(), Some(t0 + Duration::from_secs(2)));
        assert!(j.expire(t0 + Duration::from_millis(1999)).is_empty());
        let out = j.expire(t0 + Duration::from_secs(2));
        assert_eq!(logs(&out), ["S1\na"]);
        assert_eq!(j.next_deadline(), None);
        drop(out);
        assert!(rx.try_recv().unwrap().delivered);
    }

    #[test]
    fn max_groups_emits_the_least_recently_extended_group() {
        let (tx, _rx) = std::sync::mpsc::channel();
        let mut j = Joiner::new(
            cfg("start_pattern = \"^S\"\nmax_groups = 2\ngroup_by = [\"c\"]"),
            None,
            None,
        );
        let t0 = Instant::now();
        let rec = |log: &str, c: &str| json!({ "log": log, "c": c }).to_string();
        assert!(j.push(batch(&[rec("S a", "a")], 1, 0, &tx), t0).is_empty());
        assert!(
            j.push(batch(&[rec("S b", "b")], 1, 1, &tx), t0 + Duration::from_millis(1))
                .is_empty()
        );
        let out = j.push(batch(&[rec("S c", "c")], 1, 2, &tx), t0 + Duration::from_millis(2));
        assert_eq!(logs(&out), ["S a"]);
        assert_eq!(j.open_groups(), 2);
    }

    #[test]
    fn held_lines_take_their_memory_share_from_their_batch_or_are_emitted() {
        let sem = Arc::new(Semaphore::new(10_000));
        let (tx, _rx) = std::sync::mpsc::channel();
        let mut j = Joiner::new(cfg("start_pattern = \"^S\""), None, Some(sem.clone()));
        let now = Instant::now();
        let mut b = batch(&log_records("S1\na\nS2\nb"), 1, 0, &tx);
        let bytes = b.records.buf.len();
        Arc::get_mut(&mut b.records).unwrap().permit = Some(sem.clone().try_acquire_many_owned(bytes as u32).unwrap());
        let out = j.push(b, now);
        assert_eq!(logs(&out), ["S1\na"]);
        assert!(j.held() > 0);
        assert_eq!(j.charged(), j.held());
        let passed_on = out[0].records.permit.as_ref().map_or(0, |p| p.num_permits());
        assert_eq!(
            passed_on + j.charged(),
            bytes,
            "the batch's share was split, nothing new taken"
        );
        assert_eq!(sem.available_permits(), 10_000 - bytes);
        drop(out);
        // No room left and no share of its own: the groups go out at once.
        let _rest = sem
            .clone()
            .try_acquire_many_owned(sem.available_permits() as u32)
            .unwrap();
        let out = j.push(batch(&log_records("c\nS3 is a longer line\nd"), 1, 1, &tx), now);
        assert_eq!(logs(&out), ["S2\nb\nc", "S3 is a longer line\nd"]);
        assert_eq!((j.open_groups(), j.held(), j.charged()), (0, 0, 0));
    }
}
