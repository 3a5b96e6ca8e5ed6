//! The object batcher: what the `s3` and `file` sinks share. Records are
//! grouped by their rendered `key_prefix` into objects, compressed, closed
//! on size or age, charged to `memory_limit` while open, and their batches'
//! acks released only once the destination has the object. A sink adds only
//! its [`Destination`]: how an object is named, where a large object's
//! compressed bytes go while it is open, and how a closed one is made
//! durable (PutObject / multipart, or fsync and rename).
//!
//! Why small objects are not compressed until they close: a streaming
//! compressor holds 0.3-2.5 MiB whatever the object holds, so a thousand
//! open minute slices (a sidecar restarting into a backlog) or a node
//! daemon's per-pod prefixes would need gigabytes. An object keeps its
//! records as plain NDJSON until it holds [`STAGE_LIMIT`] bytes, and is
//! compressed when it closes in one call through the sink's one reused
//! context ([`OneShot`]); only objects past that size get a stream of their
//! own. Either way the object is one gzip member or zstd frame.
//!
//! Why everything an open object holds is charged (plain records, the
//! stream's estimated state, output not yet written or uploaded, the key and
//! the acks): that is what grows with the number of objects, and memory the
//! limit does not see is memory a pod limit kills the process for. When the
//! limit has no room for it, or a source waits for room while this sink's
//! input is empty, the largest open objects close early: the fewest extra
//! objects for the bytes freed, and the ones most worth sending. Early
//! closes are counted as `logferry_sink_objects_closed_total{reason="memory"}`.
//! The charge is taken without waiting (`memory.rs`), so a full pipeline
//! cannot deadlock on memory the sink would free by sending.

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::encoding::{Compression, Encoder, MissingKey, OneShot, RecordFormat};
use crate::event::{AckToken, Batch};
use crate::memory::Charge;
use crate::metrics::ComponentMetrics;
use crate::template::{Renderer, Template};

/// Plain bytes an object keeps before it gets a compressor of its own.
/// About what a gzip stream costs, so staging never holds more than the
/// stream would.
pub const STAGE_LIMIT: usize = 128 * 1024;

/// The smallest staging buffer.
const MIN_STAGED: usize = 512;

/// Staging buffer sizes kept for reuse: 512 B to 256 KiB.
const BUFFER_CLASSES: usize = 10;

/// At most this share of `memory_limit` (and at most [`RESERVE_MAX`]) is
/// left free for the sources when they are waiting and this sink idles.
const RESERVE_DIVISOR: usize = 4;
const RESERVE_MAX: usize = 1024 * 1024;

/// Open objects charge at most 3/4 of `memory_limit`. Why: the rest stays
/// for the batches on their way (a source never waits for a sink that will
/// only free memory when objects age out), and it covers what the allocator
/// holds beyond what the objects use (free fragments of the heap; measured
/// at 15-30% of it with 10,000 prefixes opening and closing). An S3 object
/// still gets its multipart part: 8 MiB fits 3/4 of a 16 MiB limit.
const CAP_DIVISOR: usize = 4;
const CAP_MULTIPLIER: usize = 3;

/// Staging buffers kept for reuse: at most this share of `memory_limit`
/// and at most [`BUFFERS_MAX`].
const BUFFERS_DIVISOR: usize = 16;
const BUFFERS_MAX: usize = 2 * 1024 * 1024;

/// How often at most an info line sums up early closes.
const MEMORY_LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum ObjectError {
    #[error("cannot create object `{name}`: {source}")]
    Open { name: String, source: io::Error },
    #[error("cannot write object `{name}`: {source}")]
    Write { name: String, source: io::Error },
    #[error("cannot compress object `{name}`: {source}")]
    Compress { name: String, source: io::Error },
}

impl ObjectError {
    /// `logferry_sink_errors_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            ObjectError::Open { .. } => "create",
            ObjectError::Write { .. } => "write",
            ObjectError::Compress { .. } => "compress",
        }
    }
}

/// Why an object was closed (`logferry_sink_objects_closed_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// `max_object_size` reached.
    Size,
    /// Open for `flush_interval`.
    Age,
    /// Closed early to stay within `memory_limit`.
    Memory,
    /// The input ended (drain, `--exit-on-eof`).
    Shutdown,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Size => "size",
            CloseReason::Age => "age",
            CloseReason::Memory => "memory",
            CloseReason::Shutdown => "shutdown",
        }
    }

    const ALL: [CloseReason; 4] = [
        CloseReason::Size,
        CloseReason::Age,
        CloseReason::Memory,
        CloseReason::Shutdown,
    ];
}

/// How objects are batched: the object sinks' shared options.
#[derive(Debug, Clone)]
pub struct Batching {
    pub key_prefix: Template,
    pub compression: Compression,
    pub compression_level: Option<u32>,
    /// Uncompressed bytes after which an object is closed.
    pub max_object_size: u64,
    pub flush_interval: Duration,
    /// What each record becomes (`log_key`, `timestamp_key`).
    pub format: RecordFormat,
}

impl Batching {
    /// The same batching writing records as `format` says.
    pub fn with_format(self, format: RecordFormat) -> Batching {
        Batching { format, ..self }
    }

    /// The batching of an object sink from its keys; `None` (logged) for a
    /// `key_prefix` that `validate` rejects, so the process stays up.
    pub fn from_keys(
        key_prefix: &str,
        compression: Compression,
        compression_level: Option<u32>,
        max_object_size: u64,
        flush_interval: Duration,
    ) -> Option<Batching> {
        match Template::parse(key_prefix) {
            Ok(key_prefix) => Some(Batching {
                key_prefix,
                compression,
                compression_level,
                max_object_size,
                flush_interval,
                format: RecordFormat::default(),
            }),
            Err(e) => {
                tracing::error!(error = %e, "invalid key_prefix");
                None
            }
        }
    }
}

/// A closed object, handed to [`Destination::deliver`].
#[derive(Debug)]
pub struct Closed<O, S> {
    pub name: String,
    pub records: u64,
    /// Uncompressed bytes.
    pub bytes: u64,
    /// Event time range, Unix milliseconds.
    pub min_ts: i64,
    pub max_ts: i64,
    pub reason: CloseReason,
    pub body: Body<O>,
    pub state: S,
}

/// A closed object's bytes.
#[derive(Debug)]
pub enum Body<O> {
    /// A small object, compressed whole when it closed.
    Whole(Vec<u8>),
    /// A large object's output, its stream finished: what was not written
    /// or uploaded yet is still in it.
    Streamed(O),
}

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Durable: the object's batches may be acknowledged.
    Delivered,
    /// Not delivered; the sink goes on (its records stay unacknowledged).
    Failed,
    /// Not delivered, and the sink was told to stop: nothing more is sent.
    Stopped,
}

/// The sink was told to stop while sending.
#[derive(Debug, Clone, Copy)]
pub struct Stopped;

/// What an object sink adds to the batcher.
pub trait Destination: Send + Sized + 'static {
    /// Where a large object's compressed bytes go while it is open.
    type Out: io::Write + Send;
    /// What the sink keeps per open object (S3: the multipart upload).
    type State: Default + Send;
    /// Objects handed to one [`Destination::deliver`] call at most.
    const GROUP: usize = 1;

    /// The object's name, for its first record (`i` of `batch`) under the
    /// rendered `prefix`.
    fn name(&self, prefix: &str, batch: &Batch, i: usize) -> String;

    /// The output of an object that outgrew [`STAGE_LIMIT`].
    fn open(&mut self, name: &str) -> io::Result<Self::Out>;

    /// Bytes of `out` held in memory (charged to `memory_limit`).
    fn held(out: &Self::Out) -> usize;

    /// Makes the objects durable; one [`Delivery`] per object, in order.
    fn deliver(&mut self, objects: Vec<Closed<Self::Out, Self::State>>) -> impl Future<Output = Vec<Delivery>> + Send;

    /// Work between batches (S3: upload the parts that are full).
    fn between_batches(
        &mut self,
        objects: &mut ObjectBatcher<Self>,
    ) -> impl Future<Output = Result<(), Stopped>> + Send {
        let _ = objects;
        async { Ok(()) }
    }

    /// A batch could not be written; its records stay unacknowledged.
    fn error(&mut self, e: &ObjectError);
}

/// Runs an object sink until its input closes; then closes and delivers
/// every object.
///
/// Why on a thread of its own (with a current-thread runtime for its
/// requests): compression and file I/O block, and the batcher allocates and
/// frees object buffers by the thousand. Run through `block_in_place` on the
/// shared runtime, that work hops between threads, each with its own malloc
/// arena, and memory freed in one arena is not found by the next thread:
/// with 10,000 prefixes the heap's free part grew to 47 MB over a run. On
/// one thread it stays at a few.
pub async fn run<D: Destination>(dest: D, cfg: Batching, input: mpsc::Receiver<Batch>, cx: Budget) {
    let span = tracing::Span::current();
    let (done, finished) = tokio::sync::oneshot::channel();
    // The topology aborts a sink task at the drain deadline; the thread must
    // stop with it (its unfinished objects fail their acks, which nothing
    // checkpoints any more) rather than go on uploading past the deadline.
    let aborted = tokio_util::sync::CancellationToken::new();
    let _abort_with_task = aborted.clone().drop_guard();
    let spawned = std::thread::Builder::new()
        .name("logferry-objects".into())
        .spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt.block_on(async {
                        tokio::select! {
                            _ = tracing::Instrument::instrument(run_here(dest, cfg, input, cx), span) => {}
                            _ = aborted.cancelled() => {}
                        }
                    }),
                    Err(e) => tracing::error!(error = %e, "cannot start the object sink's runtime"),
                }
            }));
            let _ = done.send(outcome);
        });
    match spawned {
        Ok(_) => {
            // A panic on the sink's thread is the sink task's panic, as if
            // it had run on the shared runtime (the health guard sees it).
            if let Ok(Err(panic)) = finished.await {
                std::panic::resume_unwind(panic);
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot start the object sink's thread"),
    }
}

async fn run_here<D: Destination>(mut dest: D, cfg: Batching, mut input: mpsc::Receiver<Batch>, cx: Budget) {
    let tick_every = (cfg.flush_interval / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut objects = ObjectBatcher::new(cfg, cx);
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopped = false;
    loop {
        tokio::select! {
            b = input.recv() => match b {
                Some(batch) => {
                    if let Err(e) = objects.write_batch(batch, &mut dest) {
                        dest.error(&e);
                    }
                }
                None => break,
            },
            _ = tick.tick() => objects.expire(),
        }
        if dest.between_batches(&mut objects).await.is_err() || deliver_ready(&mut objects, &mut dest).await.is_err() {
            stopped = true;
            break;
        }
        objects.relieve(input.is_empty());
        if deliver_ready(&mut objects, &mut dest).await.is_err() {
            stopped = true;
            break;
        }
    }
    objects.close_all();
    if !stopped {
        stopped = deliver_ready(&mut objects, &mut dest).await.is_err();
    }
    if stopped {
        let left = objects.open.len() + objects.ready.len();
        if left > 0 {
            tracing::warn!(
                objects = left,
                "sink stopped before these objects were delivered; their records stay unacknowledged"
            );
        }
    }
    // Whatever is left drops here, failing its acks.
}

/// Delivers the closed objects, [`Destination::GROUP`] at a time.
async fn deliver_ready<D: Destination>(objects: &mut ObjectBatcher<D>, dest: &mut D) -> Result<(), Stopped> {
    loop {
        let mut group = Vec::new();
        let mut tickets = Vec::new();
        while group.len() < D::GROUP {
            match objects.pop_ready() {
                None => break,
                Some(Err(e)) => dest.error(&e),
                Some(Ok((closed, ticket))) => {
                    group.push(closed);
                    tickets.push(ticket);
                }
            }
        }
        if group.is_empty() {
            return Ok(());
        }
        let outcomes = dest.deliver(group).await;
        let mut stopped = false;
        for (i, ticket) in tickets.into_iter().enumerate() {
            let outcome = outcomes.get(i).copied().unwrap_or(Delivery::Failed);
            stopped |= outcome == Delivery::Stopped;
            objects.settle(ticket, outcome == Delivery::Delivered);
        }
        if stopped {
            return Err(Stopped);
        }
    }
}

/// The memory an object sink may charge, and its counters.
pub struct Budget {
    pub memory: Arc<Semaphore>,
    pub memory_limit: usize,
    pub m: ComponentMetrics,
}

/// The acks of the batches an object holds. Dropped without
/// [`Acks::release`] (the object was not delivered), they fail their
/// batches, so no checkpoint passes records that were never written.
#[derive(Debug, Default)]
struct Acks(Vec<AckToken>);

impl Acks {
    fn release(mut self) {
        self.0.clear();
    }
}

impl Drop for Acks {
    fn drop(&mut self) {
        for a in &self.0 {
            a.fail();
        }
    }
}

/// A closed object to deliver, and its ticket.
pub type Ready<D> = (Closed<<D as Destination>::Out, <D as Destination>::State>, Ticket);

/// An object's charge and acks while it is delivered.
pub struct Ticket {
    charged: usize,
    records: u64,
    bytes: u64,
    acks: Acks,
}

enum Stage<O: io::Write> {
    /// Plain NDJSON, compressed when the object closes.
    Staged(Vec<u8>),
    /// Boxed: most objects never stream, and every map slot is as large
    /// as its largest variant.
    Streaming(Box<Encoder<O>>),
}

/// One open object.
pub struct OpenObject<D: Destination> {
    name: String,
    stage: Stage<D::Out>,
    state: D::State,
    bytes: u64,
    records: u64,
    min_ts: i64,
    max_ts: i64,
    opened: Instant,
    acks: Acks,
    /// The last batch whose ack `acks` holds.
    last_batch: u64,
    /// Bytes of `memory_limit` counted for this object in `ObjectBatcher::held`.
    charged: usize,
}

impl<D: Destination> OpenObject<D> {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A large object's output (`None` while it is staged).
    pub fn output_mut(&mut self) -> Option<&mut D::Out> {
        match &mut self.stage {
            Stage::Streaming(e) => Some(e.get_mut()),
            Stage::Staged(_) => None,
        }
    }

    pub fn state_mut(&mut self) -> &mut D::State {
        &mut self.state
    }

    /// Bytes of memory this object holds, by estimate.
    fn charge(&self, key: &str, c: Compression, level: Option<u32>) -> usize {
        let body = match &self.stage {
            Stage::Staged(v) => v.capacity(),
            Stage::Streaming(e) => c.stream_state(level, self.bytes) + D::held(e.get_ref()),
        };
        // The map entry (with the table's slack), the key, the name, the acks.
        2 * std::mem::size_of::<(String, Self)>()
            + key.len()
            + self.name.capacity()
            + self.acks.0.capacity() * std::mem::size_of::<AckToken>()
            + body
    }
}

/// Staging buffers of closed (or grown) objects, by power-of-two size, for
/// the next objects. Why: objects open and close by the thousand, and
/// buffers of every size freed to malloc leave the heap in free pieces the
/// next sizes do not fit. Measured with 10,000 prefixes at a 32 MiB limit:
/// 18 MB of free heap without reuse, 12 MB with. At most `max` bytes are
/// kept, charged like the objects.
#[derive(Default)]
struct Buffers {
    free: [Vec<Vec<u8>>; BUFFER_CLASSES],
    bytes: usize,
    max: usize,
}

impl Buffers {
    fn class(cap: usize) -> Option<usize> {
        let c = (cap / MIN_STAGED).checked_ilog2()? as usize;
        (cap.is_power_of_two() && cap >= MIN_STAGED && c < BUFFER_CLASSES).then_some(c)
    }

    /// An empty buffer of capacity `cap` (a power of two of at least
    /// [`MIN_STAGED`]), reused if one is kept.
    fn take(&mut self, cap: usize) -> Vec<u8> {
        if let Some(v) = Self::class(cap).and_then(|c| self.free.get_mut(c)).and_then(Vec::pop) {
            self.bytes -= v.capacity();
            return v;
        }
        Vec::with_capacity(cap)
    }

    fn give(&mut self, mut v: Vec<u8>) {
        let cap = v.capacity();
        if self.bytes + cap > self.max {
            return;
        }
        if let Some(slot) = Self::class(cap).and_then(|c| self.free.get_mut(c)) {
            v.clear();
            self.bytes += cap;
            slot.push(v);
        }
    }
}

/// Open objects by rendered prefix, and the ones closed but not delivered.
pub struct ObjectBatcher<D: Destination> {
    cfg: Batching,
    renderer: Renderer,
    open: HashMap<String, OpenObject<D>>,
    /// Closed objects, out of `open` (their prefix may have a new object).
    ready: VecDeque<(OpenObject<D>, CloseReason)>,
    /// Objects to close, still in `open`: taken out one at a time as they
    /// are delivered, so closing thousands does not copy them all at once.
    closing: VecDeque<(String, CloseReason)>,
    /// Objects with a stream of their own (open ones).
    streaming: usize,
    /// Estimated bytes of open, ready and in-delivery objects and of the
    /// one-shot context: what `charge` should hold.
    held: usize,
    charge: Charge,
    /// Free bytes this sink leaves the sources when it idles.
    reserve: usize,
    /// The most this sink charges: see [`CAP_MULTIPLIER`].
    cap: usize,
    memory_limit: usize,
    /// The batch permit of the last batch written, moved into `charge`.
    donor: Option<OwnedSemaphorePermit>,
    one_shot: Option<(OneShot, usize)>,
    buffers: Buffers,
    line: Vec<u8>,
    /// Records dropped for lacking `log_key`.
    missing: MissingKey,
    batch_seq: u64,
    m: ComponentMetrics,
    closed: [Counter; 4],
    early: EarlyCloses,
}

/// Sums of early closes for the info line.
#[derive(Default)]
struct EarlyCloses {
    objects: u64,
    bytes: u64,
    logged: Option<Instant>,
}

impl<D: Destination> ObjectBatcher<D> {
    pub fn new(cfg: Batching, cx: Budget) -> Self {
        let closed = CloseReason::ALL.map(|r| cx.m.objects_closed(r.as_str()));
        ObjectBatcher {
            renderer: Renderer::new(cfg.key_prefix.clone()),
            cfg,
            open: HashMap::new(),
            ready: VecDeque::new(),
            closing: VecDeque::new(),
            streaming: 0,
            held: 0,
            charge: Charge::new(cx.memory),
            reserve: (cx.memory_limit / RESERVE_DIVISOR).min(RESERVE_MAX),
            cap: cx.memory_limit / CAP_DIVISOR * CAP_MULTIPLIER,
            memory_limit: cx.memory_limit,
            donor: None,
            one_shot: None,
            buffers: Buffers {
                max: (cx.memory_limit / BUFFERS_DIVISOR).min(BUFFERS_MAX),
                ..Buffers::default()
            },
            line: Vec::with_capacity(4096),
            missing: MissingKey::default(),
            batch_seq: 0,
            m: cx.m,
            closed,
            early: EarlyCloses::default(),
        }
    }

    /// Bytes charged to `memory_limit` right now.
    pub fn charged(&self) -> usize {
        self.charge.bytes()
    }

    /// Estimated bytes the objects hold, with the buffers kept for reuse.
    pub fn held(&self) -> usize {
        self.held + self.buffers.bytes
    }

    /// Writes a batch's records into their objects. Objects that reach
    /// `max_object_size` are closed. On an error the object it hit is
    /// dropped, the batch fails and its remaining records are not written.
    pub fn write_batch(&mut self, batch: Batch, dest: &mut D) -> Result<(), ObjectError> {
        let n = batch.len();
        self.m.received_events.inc_by(n as u64);
        self.m.received_bytes.inc_by(batch.bytes());
        self.batch_seq += 1;
        self.renderer.begin_batch();
        let (c, level, max) = (
            self.cfg.compression,
            self.cfg.compression_level,
            self.cfg.max_object_size,
        );
        let mut key = String::new();
        let mut result = Ok(());
        for i in 0..n {
            self.renderer.render(&batch, i, &mut key);
            self.line.clear();
            if !self.cfg.format.encode(&batch, i, &mut self.line) {
                self.missing.record();
                continue;
            }
            self.line.push(b'\n');
            if !self.open.contains_key(&key) {
                let o = OpenObject {
                    name: dest.name(&key, &batch, i),
                    stage: Stage::Staged(Vec::new()),
                    state: D::State::default(),
                    bytes: 0,
                    records: 0,
                    min_ts: i64::MAX,
                    max_ts: i64::MIN,
                    opened: Instant::now(),
                    acks: Acks::default(),
                    last_batch: 0,
                    charged: 0,
                };
                self.open.insert(key.clone(), o);
            }
            let Some(o) = self.open.get_mut(&key) else { continue };
            if o.last_batch != self.batch_seq {
                o.last_batch = self.batch_seq;
                if let Some(ack) = &batch.ack {
                    o.acks.0.push(ack.clone());
                }
            }
            let written = match &mut o.stage {
                Stage::Staged(plain) => {
                    // Powers of two, so that the buffers kept for reuse
                    // (`Buffers`) fit the next objects.
                    let need = plain.len() + self.line.len();
                    if need > plain.capacity() {
                        let mut bigger = self.buffers.take(need.next_power_of_two().max(MIN_STAGED));
                        bigger.extend_from_slice(plain);
                        self.buffers.give(std::mem::replace(plain, bigger));
                    }
                    plain.extend_from_slice(&self.line);
                    if plain.len() >= STAGE_LIMIT && (o.bytes + self.line.len() as u64) < max {
                        promote(o, dest, c, level, &mut self.buffers).map(|()| true)
                    } else {
                        Ok(false)
                    }
                }
                Stage::Streaming(e) => e
                    .write_all(&self.line)
                    .map(|()| false)
                    .map_err(|source| ObjectError::Write {
                        name: o.name.clone(),
                        source,
                    }),
            };
            match written {
                Ok(promoted) => self.streaming += usize::from(promoted),
                Err(e) => {
                    if let Some(o) = self.open.remove(&key) {
                        self.held -= o.charged;
                        self.streaming -= usize::from(matches!(o.stage, Stage::Streaming(_)));
                    }
                    result = Err(e);
                    break;
                }
            }
            let ts = batch.ts_ms(i);
            o.bytes += self.line.len() as u64;
            o.records += 1;
            o.min_ts = o.min_ts.min(ts);
            o.max_ts = o.max_ts.max(ts);
            let now = o.charge(&key, c, level);
            self.held = self.held + now - o.charged;
            o.charged = now;
            if o.bytes >= max
                && let Some(o) = self.open.remove(&key)
            {
                self.close(o, CloseReason::Size);
            }
        }
        self.missing.flush(&self.m, &self.cfg.format);
        if result.is_err() {
            batch.fail();
        }
        // The records now live in the objects: the batch's share of the
        // limit pays for them (when no other sink shares the batch).
        let Batch { records, .. } = batch;
        self.donor = Arc::try_unwrap(records).ok().and_then(|mut r| r.permit.take());
        result
    }

    /// Closes the objects open for `flush_interval`.
    pub fn expire(&mut self) {
        let max_age = self.cfg.flush_interval;
        let closing = &mut self.closing;
        for (k, o) in &self.open {
            if o.opened.elapsed() >= max_age {
                closing.push_back((k.clone(), CloseReason::Age));
            }
        }
    }

    /// Closes every open object (the input ended).
    pub fn close_all(&mut self) {
        let closing = &mut self.closing;
        for k in self.open.keys() {
            closing.push_back((k.clone(), CloseReason::Shutdown));
        }
    }

    /// Brings the charge up to what the objects hold, closing the largest
    /// ones early when `memory_limit` has no room for it, or when a source
    /// is waiting for room while this sink's input is empty (`idle`) and
    /// holds half the limit or more: then nothing else would free memory
    /// until objects age out. (With less, the memory is held elsewhere, e.g.
    /// by batches queued for a slower sink, and closing would only make
    /// objects small.)
    pub fn relieve(&mut self, idle: bool) {
        let held = self.held();
        let fits = self.charge.resize_from(held.min(self.cap), self.donor.as_mut()) && held <= self.cap;
        self.donor = None;
        let available = self.charge.available();
        let free = if !fits {
            // Bring what is open down to what the charge covers, and leave
            // a margin so the next batch does not start this again.
            held.saturating_sub(self.charge.bytes()) + self.reserve
        } else if idle && available < self.reserve && held >= self.memory_limit / 2 {
            2 * self.reserve - available
        } else {
            return;
        };
        // Closed objects' buffers may refill the reusable ones first.
        self.close_largest(free + self.buffers.max - self.buffers.bytes);
    }

    /// Closes the largest open objects until they free `bytes`.
    fn close_largest(&mut self, bytes: usize) {
        // Ties (staged buffers grow in powers of two) go to the fuller object.
        let mut sizes: Vec<(usize, u64, &String)> = self.open.iter().map(|(k, o)| (o.charged, o.bytes, k)).collect();
        sizes.sort_unstable_by_key(|s| std::cmp::Reverse((s.0, s.1)));
        let mut freed = 0;
        let mut keys = Vec::new();
        for (size, _, k) in sizes {
            if freed >= bytes {
                break;
            }
            freed += size;
            keys.push(k.clone());
        }
        if keys.is_empty() {
            return;
        }
        let open = self.open.len();
        if tracing::enabled!(tracing::Level::DEBUG) {
            for o in keys.iter().filter_map(|k| self.open.get(k)) {
                tracing::debug!(object = %o.name, records = o.records, bytes = o.bytes, held = o.charged,
                    "memory_limit reached: closing an object early");
            }
        }
        self.early.objects += keys.len() as u64;
        self.early.bytes += freed as u64;
        self.closing.extend(keys.into_iter().map(|k| (k, CloseReason::Memory)));
        if self.early.logged.is_none_or(|t| t.elapsed() >= MEMORY_LOG_EVERY) {
            tracing::info!(
                objects = self.early.objects,
                freed = self.early.bytes,
                open,
                "memory_limit reached: closed the largest open objects early (smaller objects); more memory_limit keeps them open longer"
            );
            self.early = EarlyCloses {
                logged: Some(Instant::now()),
                ..EarlyCloses::default()
            };
        }
    }

    fn close(&mut self, o: OpenObject<D>, reason: CloseReason) {
        self.streaming -= usize::from(matches!(o.stage, Stage::Streaming(_)));
        self.closed[reason as usize].inc();
        self.ready.push_back((o, reason));
    }

    /// The next object to deliver: closed ones first, then the next one
    /// marked for closing that is still open.
    fn next_closed(&mut self) -> Option<(OpenObject<D>, CloseReason)> {
        if let Some(next) = self.ready.pop_front() {
            return Some(next);
        }
        loop {
            let (k, reason) = self.closing.pop_front()?;
            if let Some(o) = self.open.remove(&k) {
                self.streaming -= usize::from(matches!(o.stage, Stage::Streaming(_)));
                self.closed[reason as usize].inc();
                return Some((o, reason));
            }
        }
    }

    /// The next closed object, compressed and ready to deliver, with the
    /// ticket to [`ObjectBatcher::settle`] once delivered (or not). An error
    /// fails the object's batches.
    pub fn pop_ready(&mut self) -> Option<Result<Ready<D>, ObjectError>> {
        let (o, reason) = self.next_closed()?;
        let OpenObject {
            name,
            stage,
            state,
            bytes,
            records,
            min_ts,
            max_ts,
            acks,
            mut charged,
            ..
        } = o;
        let body = match stage {
            Stage::Streaming(e) => (*e).finish().map(Body::Streamed),
            Stage::Staged(plain) => {
                let whole = self.one_shot().and_then(|s| s.compress(&plain));
                // Moved from the object's charge to the buffers'.
                self.held -= plain.capacity().min(charged);
                charged -= plain.capacity().min(charged);
                self.buffers.give(plain);
                whole.map(Body::Whole)
            }
        };
        if let Some((s, counted)) = self.one_shot.as_mut() {
            let now = s.state_bytes();
            self.held = self.held + now - *counted;
            *counted = now;
        }
        let body = match body {
            Ok(b) => b,
            Err(source) => {
                self.held -= charged;
                drop(acks);
                return Some(Err(ObjectError::Compress { name, source }));
            }
        };
        let closed = Closed {
            name,
            records,
            bytes,
            min_ts,
            max_ts,
            reason,
            body,
            state,
        };
        let ticket = Ticket {
            charged,
            records,
            bytes,
            acks,
        };
        Some(Ok((closed, ticket)))
    }

    fn one_shot(&mut self) -> io::Result<&mut OneShot> {
        if self.one_shot.is_none() {
            self.one_shot = Some((OneShot::new(self.cfg.compression, self.cfg.compression_level)?, 0));
        }
        match self.one_shot.as_mut() {
            Some((s, _)) => Ok(s),
            None => Err(io::Error::other("no compressor")),
        }
    }

    /// Ends a delivery: releases the object's acks (delivered) or fails
    /// them, and its share of the limit.
    pub fn settle(&mut self, t: Ticket, delivered: bool) {
        self.held -= t.charged;
        if delivered {
            self.m.sent_events.inc_by(t.records);
            self.m.sent_bytes.inc_by(t.bytes);
            self.m.objects_written.inc();
            t.acks.release();
        }
        // Shrinking never fails.
        self.charge.resize(self.held().min(self.charge.bytes()));
    }

    /// Keys of open objects whose output holds at least `bytes`.
    pub fn outputs_at_least(&self, bytes: usize) -> Vec<String> {
        if self.streaming == 0 {
            return Vec::new();
        }
        self.open
            .iter()
            .filter(|(_, o)| matches!(&o.stage, Stage::Streaming(e) if D::held(e.get_ref()) >= bytes))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Takes an open object out to work on its output; give it back with
    /// [`ObjectBatcher::checkin`]. It stays charged meanwhile.
    pub fn checkout(&mut self, key: &str) -> Option<OpenObject<D>> {
        self.open.remove(key)
    }

    pub fn checkin(&mut self, key: String, mut o: OpenObject<D>) {
        let now = o.charge(&key, self.cfg.compression, self.cfg.compression_level);
        self.held = self.held + now - o.charged;
        o.charged = now;
        self.open.insert(key, o);
    }
}

/// Gives a staged object a stream of its own, fed what it staged.
fn promote<D: Destination>(
    o: &mut OpenObject<D>,
    dest: &mut D,
    c: Compression,
    level: Option<u32>,
    buffers: &mut Buffers,
) -> Result<(), ObjectError> {
    let name = &o.name;
    let out = dest.open(name).map_err(|source| ObjectError::Open {
        name: name.clone(),
        source,
    })?;
    let mut enc = Encoder::new(c, level, out).map_err(|source| ObjectError::Compress {
        name: name.clone(),
        source,
    })?;
    if let Stage::Staged(plain) = &o.stage {
        enc.write_all(plain).map_err(|source| ObjectError::Write {
            name: name.clone(),
            source,
        })?;
    }
    if let Stage::Staged(plain) = std::mem::replace(&mut o.stage, Stage::Streaming(Box::new(enc))) {
        buffers.give(plain);
    }
    Ok(())
}
