//! Wires the configured components into a running pipeline, and takes it
//! down in order.
//!
//! Every edge is a bounded channel, and every batch holds a share of the
//! `memory_limit` semaphore until it is dropped, so a slow sink backs up into
//! the sources, which stop reading: the files are the queue. Shutdown runs
//! one way: sources stop and drop their senders, transforms drain and drop
//! theirs, sinks flush and release acks, sources save checkpoints. The same
//! path serves `--exit-on-eof`.
//!
//! A stop request must end the process within `drain_timeout` plus 1 s,
//! because the orchestrator kills it soon after, and a sink that pushes back
//! (a dead server, throttling, a full disk buffer) can hold any of those
//! steps indefinitely. So the deadline lives here, in one place
//! ([`enforce_deadline`] cancels `force`), and every wait after `force` is
//! bounded ([`Running::wait`]); the components only need to stop waiting on
//! `force`. Cutting the drain short loses nothing: the checkpoints stay at
//! what was acknowledged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::Health;
use crate::buffer::BufferConfig;
use crate::buffer::disk::{self, DiskBuffer};
use crate::config::Config;
use crate::dead_letter::DeadLetters;
use crate::drain::Drain;
use crate::event::Batch;
use crate::metrics::{BufferMetrics, ComponentMetrics, Metrics};
use crate::sinks::{SinkConfig, SinkContext};
use crate::sources::SourceConfig;
use crate::sources::file::{self, SourceContext, SourceError};
use crate::transforms::TransformConfig;

/// Batches queued per edge. Memory is bounded by the semaphore; this only
/// keeps consumers busy.
const CHANNEL_CAPACITY: usize = 4;
/// How long sinks may take to wind down once the sources have saved their
/// checkpoints (never past the drain deadline).
const SINK_SETTLE: Duration = Duration::from_secs(3);
/// Once `force` is cancelled (the drain deadline, or a second signal), how
/// long the sources may take to save their checkpoints and return.
const SOURCE_STOP: Duration = Duration::from_millis(400);
/// Once `force` is cancelled, how long until [`Running::wait`] returns,
/// whatever the sinks do. With [`RUNTIME_SHUTDOWN`] and the time the
/// sources take to notice, it keeps the exit within `drain_timeout` + 1 s.
const EXIT_GRACE: Duration = Duration::from_millis(700);
/// After `force`, how long tasks that end on it (disk buffers saving their
/// position) get before the rest are aborted. Only waited for when a sink
/// has a disk buffer.
const STOP_GRACE: Duration = Duration::from_millis(250);
/// What `main` gives the runtime to drop what is left once the pipeline is
/// down: a blocking write or fsync in flight, a compressor mid-batch.
pub const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(200);

/// Sends a batch to every downstream component (clones share the records).
#[derive(Clone, Debug, Default)]
pub struct Fanout {
    txs: Vec<mpsc::Sender<Batch>>,
}

#[derive(Debug)]
pub struct Closed;

impl Fanout {
    pub fn new(txs: Vec<mpsc::Sender<Batch>>) -> Self {
        Fanout { txs }
    }

    /// No component reads from this output.
    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    pub async fn send(&self, batch: Batch) -> Result<(), Closed> {
        let Some((last, rest)) = self.txs.split_last() else {
            return Ok(());
        };
        for tx in rest {
            tx.send(batch.clone()).await.map_err(|_| Closed)?;
        }
        last.send(batch).await.map_err(|_| Closed)
    }
}

pub type EnvFn = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// How to run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    pub exit_on_eof: bool,
}

/// A started pipeline.
pub struct Running {
    /// Each source's id and thread.
    sources: Vec<(String, std::thread::JoinHandle<Result<(), SourceError>>)>,
    tasks: JoinSet<()>,
    /// Stop reading, drain, save checkpoints (`begin()`).
    pub shutdown: Drain,
    /// Stop now: save checkpoints without waiting for acks.
    pub force: CancellationToken,
    /// Sinks stop retrying: the sources have saved their checkpoints.
    sinks_stop: CancellationToken,
    /// Polls `[lifecycle.exit_when]`; cancels `shutdown` when one holds.
    lifecycle: tokio::task::JoinHandle<()>,
    /// Owns the drain deadline: cancels `force` at `drain_timeout` after
    /// `shutdown` (see [`enforce_deadline`]).
    deadline: tokio::task::JoinHandle<()>,
    /// Held while running: one router per data_dir (released by the kernel
    /// when the process dies, so a kill -9 never leaves it stale).
    _data_dir_lock: std::fs::File,
    /// Samples memory use and delivery progress (see `watchdog.rs`).
    watchdog: tokio::task::JoinHandle<()>,
    health: Arc<Health>,
    /// Some sink has a disk buffer.
    disk_buffers: bool,
    /// Each sink's handles, for the report of what a stop abandoned.
    sinks: Vec<SinkHandles>,
    /// When [`Running::wait`] saw `force` while joining the sources.
    forced_seen: Option<Instant>,
}

/// What the exit report reads of one sink.
struct SinkHandles {
    m: ComponentMetrics,
    buffer: Option<BufferMetrics>,
}

/// Why [`Running::wait`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A source thread did not return within [`SOURCE_STOP`] of `force`
    /// (blocked in the kernel: a hung disk or network file system). Its
    /// last periodic checkpoint stands; the caller must exit at once,
    /// without tearing the pipeline down: a sink's dropped batches report
    /// "delivered", and that source could still apply them.
    #[error(
        "sources {0:?} did not stop within {SOURCE_STOP:?} of the drain deadline; exiting without their final checkpoints (the last saved ones stand, so what follows them is read again)"
    )]
    SourcesStuck(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data_dir {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error(
        "data_dir {path} is in use by another logferry process{holder}: two routers sharing checkpoints and buffers would deliver twice or lose records; give each its own data_dir"
    )]
    DataDirLocked { path: String, holder: String },
    #[error("cannot start source `{id}`: {source}")]
    Source { id: String, source: std::io::Error },
    #[error("cannot start the buffer of sink `{id}`: {source}")]
    Buffer { id: String, source: disk::DiskBufferError },
}

/// Starts every component. Must be called inside a multi-threaded runtime.
pub fn start(
    config: &Config,
    opts: RunOptions,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    env: EnvFn,
) -> Result<Running, StartError> {
    std::fs::create_dir_all(&config.global.data_dir).map_err(|source| StartError::DataDir {
        path: config.global.data_dir.display().to_string(),
        source,
    })?;
    let data_dir_lock = lock_data_dir(&config.global.data_dir)?;
    let limit = (config.global.memory_limit.as_u64() as usize).min(u32::MAX as usize);
    let memory = Arc::new(Semaphore::new(limit));
    let shutdown = Drain::new(config.lifecycle.drain_timeout);
    let force = CancellationToken::new();
    let sinks_stop = CancellationToken::new();

    // One inbox per transform and sink; upstreams hold clones of its sender.
    let mut senders: HashMap<String, mpsc::Sender<Batch>> = HashMap::new();
    let mut receivers: HashMap<String, mpsc::Receiver<Batch>> = HashMap::new();
    for id in config
        .transforms
        .iter()
        .map(|c| &c.id)
        .chain(config.sinks.iter().map(|c| &c.id))
    {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        senders.insert(id.clone(), tx);
        receivers.insert(id.clone(), rx);
    }
    // `id` is a component or one named output of it (`route.errors`): the
    // inboxes of every component whose `inputs` name it exactly.
    let outputs_of = |id: &str| -> Vec<mpsc::Sender<Batch>> {
        let mut out = Vec::new();
        for (cid, inputs) in config
            .transforms
            .iter()
            .map(|c| (&c.id, &c.inputs))
            .chain(config.sinks.iter().map(|c| (&c.id, &c.inputs)))
        {
            if inputs.iter().any(|i| i == id)
                && let Some(tx) = senders.get(cid)
            {
                out.push(tx.clone());
            }
        }
        out
    };

    let mut tasks = JoinSet::new();
    let mut sink_handles = Vec::new();
    for c in &config.sinks {
        let Some(rx) = receivers.remove(&c.id) else { continue };
        let m = metrics.component(&c.id, c.inner.kind());
        sink_handles.push(SinkHandles {
            m: m.clone(),
            buffer: (c.buffer != BufferConfig::Memory).then(|| metrics.buffer(&c.id)),
        });
        // A disk buffer takes the inbox; the sink reads what it replays.
        let rx = match c.buffer {
            BufferConfig::Memory => rx,
            BufferConfig::Disk(b) => {
                let buffer = DiskBuffer {
                    sink_id: c.id.clone(),
                    dir: config.global.data_dir.join("buffers").join(&c.id),
                    config: b,
                    memory: memory.clone(),
                    memory_limit: limit,
                    metrics: m.clone(),
                    gauges: metrics.buffer(&c.id),
                    // Not `sinks_stop`: that fires once the sources are done,
                    // which a disk buffer makes early; it drains first.
                    stop: force.clone(),
                };
                let id = c.id.clone();
                disk::spawn(buffer, rx, &mut tasks).map_err(|source| StartError::Buffer { id, source })?
            }
        };
        let span = tracing::info_span!("sink", id = %c.id, kind = c.inner.kind());
        let cx = SinkContext {
            id: c.id.clone(),
            dead: Arc::new(DeadLetters::new(
                config.global.dead_letter_dir.as_deref(),
                &c.id,
                m.clone(),
            )),
            m: m.clone(),
            health: health.clone(),
            stop: sinks_stop.clone(),
            memory: memory.clone(),
            memory_limit: limit,
        };
        let task: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = match &c.inner {
            SinkConfig::File(cfg) => Box::pin(crate::sinks::file::run(cfg.clone(), rx, cx)),
            SinkConfig::Stdout(cfg) => Box::pin(crate::sinks::stdout::run(cfg.clone(), rx, m)),
            SinkConfig::Blackhole(_) => Box::pin(crate::sinks::blackhole::run(rx, m)),
            SinkConfig::S3(cfg) => Box::pin(crate::sinks::s3::run(cfg.clone(), rx, cx)),
            SinkConfig::CloudWatchLogs(cfg) => Box::pin(crate::sinks::cloudwatch_logs::run(cfg.clone(), rx, cx)),
            SinkConfig::Firehose(cfg) => Box::pin(crate::sinks::firehose::run(cfg.clone(), rx, cx)),
            SinkConfig::Forward(cfg) => Box::pin(crate::sinks::forward::run(cfg.clone(), rx, cx)),
            SinkConfig::Http(cfg) => Box::pin(crate::sinks::http::run(cfg.clone(), rx, cx)),
            SinkConfig::Kinesis(cfg) => Box::pin(crate::sinks::kinesis::run(cfg.clone(), rx, cx)),
        };
        let guard = health.guard(&c.id);
        tasks.spawn(tracing::Instrument::instrument(
            async move {
                let _guard = guard;
                task.await
            },
            span,
        ));
    }
    for c in &config.transforms {
        let Some(rx) = receivers.remove(&c.id) else { continue };
        let out = Fanout::new(outputs_of(&c.id));
        let span = tracing::info_span!("transform", id = %c.id, kind = c.inner.kind());
        let task: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = match &c.inner {
            TransformConfig::Enrich(cfg) => Box::pin(crate::transforms::enrich::run(
                c.id.clone(),
                (**cfg).clone(),
                rx,
                out,
                metrics.clone(),
                env.clone(),
            )),
            TransformConfig::Filter(cfg) => Box::pin(crate::transforms::filter::run(
                c.id.clone(),
                cfg.clone(),
                rx,
                out,
                metrics.clone(),
            )),
            TransformConfig::Route(cfg) => {
                // Each named output is its own fanout, read as `id.output`.
                let outs = cfg
                    .outputs()
                    .map(|o| Fanout::new(outputs_of(&format!("{}.{o}", c.id))))
                    .collect();
                Box::pin(crate::transforms::route::run(
                    c.id.clone(),
                    cfg.clone(),
                    rx,
                    outs,
                    metrics.clone(),
                ))
            }
            TransformConfig::Throttle(cfg) => Box::pin(crate::transforms::throttle::run(
                c.id.clone(),
                cfg.clone(),
                rx,
                out,
                metrics.clone(),
            )),
            TransformConfig::Redact(cfg) => Box::pin(crate::transforms::redact::run(
                c.id.clone(),
                (**cfg).clone(),
                rx,
                out,
                metrics.clone(),
            )),
            TransformConfig::Multiline(cfg) => Box::pin(crate::transforms::multiline::run(
                c.id.clone(),
                (**cfg).clone(),
                rx,
                out,
                metrics.clone(),
                memory.clone(),
            )),
            TransformConfig::Parse(cfg) => Box::pin(crate::transforms::parse::run(
                c.id.clone(),
                (**cfg).clone(),
                rx,
                out,
                metrics.clone(),
                memory.clone(),
                limit,
            )),
            TransformConfig::PartialMessage(cfg) => Box::pin(crate::transforms::partial_message::run(
                c.id.clone(),
                cfg.clone(),
                rx,
                out,
                metrics.clone(),
                memory.clone(),
            )),
        };
        let guard = health.guard(&c.id);
        tasks.spawn(tracing::Instrument::instrument(
            async move {
                let _guard = guard;
                task.await
            },
            span,
        ));
    }
    let mut sources = Vec::new();
    for c in &config.sources {
        let cx = SourceContext {
            id: c.id.clone(),
            data_dir: config.global.data_dir.clone(),
            outputs: outputs_of(&c.id),
            memory: memory.clone(),
            memory_limit: limit,
            metrics: metrics.clone(),
            drain: shutdown.clone(),
            force: force.clone(),
            exit_on_eof: opts.exit_on_eof,
            drain_quiet: config.lifecycle.drain_quiet,
            drain_read_budget: config.lifecycle.read_budget(),
            rt: tokio::runtime::Handle::current(),
        };
        match &c.inner {
            SourceConfig::File(cfg) => {
                let h = file::spawn(cfg.clone(), cx).map_err(|source| StartError::Source {
                    id: c.id.clone(),
                    source,
                })?;
                sources.push((c.id.clone(), h));
            }
            SourceConfig::Forward(cfg) => {
                let h = crate::sources::forward::spawn(cfg.clone(), cx).map_err(|source| StartError::Source {
                    id: c.id.clone(),
                    source,
                })?;
                sources.push((c.id.clone(), h));
            }
        }
    }
    // Only upstream components hold senders now, so closing propagates.
    drop(senders);
    let lifecycle = if opts.exit_on_eof {
        tokio::spawn(async {})
    } else {
        tokio::spawn(crate::lifecycle::watch(config.lifecycle.clone(), env, shutdown.token()))
    };
    // Also with `--exit-on-eof`: a signal there starts the same drain.
    let deadline = tokio::spawn(enforce_deadline(shutdown.clone(), force.clone()));
    let watchdog = tokio::spawn(crate::watchdog::run(
        crate::config::ApiConfig::thresholds(config.api.as_ref()),
        metrics,
        health.clone(),
        memory,
        limit,
    ));
    Ok(Running {
        _data_dir_lock: data_dir_lock,
        watchdog,
        health,
        disk_buffers: config.sinks.iter().any(|c| c.buffer != BufferConfig::Memory),
        sinks: sink_handles,
        forced_seen: None,
        lifecycle,
        deadline,
        sources,
        tasks,
        shutdown,
        force,
        sinks_stop,
    })
}

/// Takes `<data_dir>/lock` (an advisory `flock`) and writes our pid into it.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, StartError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("lock");
    let err = |source| StartError::DataDir {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(StartError::DataDirLocked {
                path: dir.display().to_string(),
                holder: if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
    }
    file.set_len(0).map_err(err)?;
    file.seek(std::io::SeekFrom::Start(0)).map_err(err)?;
    writeln!(file, "{}", std::process::id()).map_err(err)?;
    Ok(file)
}

/// The drain deadline: `drain_timeout` after `shutdown` (a signal or an
/// `exit_when` condition), `force` is cancelled, whatever the drain is
/// waiting for. From there every wait in the stop is bounded (see
/// [`Running::wait`]), so the process exits within `drain_timeout` plus
/// [`EXIT_GRACE`] and [`RUNTIME_SHUTDOWN`]. Nothing is lost by it: the
/// sources save checkpoints at what was acknowledged, and what was not is
/// read again at the next start (or stays in a disk buffer).
async fn enforce_deadline(drain: Drain, force: CancellationToken) {
    tokio::select! {
        _ = force.cancelled() => {}
        _ = drain.begun() => {
            tokio::select! {
                _ = force.cancelled() => {}
                _ = crate::timer::sleep_until(drain.deadline()) => {
                    tracing::warn!(
                        "drain_timeout reached: saving checkpoints at what was delivered and stopping the sinks"
                    );
                    force.cancel();
                }
            }
        }
    }
}

impl Running {
    /// Waits until every source has finished (end of input with
    /// `--exit-on-eof`, or after `shutdown`) and the pipeline has drained.
    /// After `force` (the drain deadline or a second signal) it returns
    /// within [`EXIT_GRACE`], whatever the sinks do.
    pub async fn wait(mut self) -> Result<(), StopError> {
        let result = match self.join_sources().await {
            Err(stuck @ StopError::SourcesStuck(_)) => return Err(stuck),
            r => r,
        };
        // Counted from when `force` was first seen, not from here: the
        // sources' stop is part of the grace.
        let mut exit_by = self
            .force
            .is_cancelled()
            .then(|| self.forced_seen.unwrap_or_else(Instant::now) + EXIT_GRACE);
        // Sources only finish once every batch settled or they gave up
        // waiting; whatever a sink still retries is not checkpointed.
        self.health.stopping.store(true, std::sync::atomic::Ordering::Release);
        self.sinks_stop.cancel();
        self.lifecycle.abort();
        self.watchdog.abort();
        // A sink in the middle of a request gets a moment to finish it; its
        // records are not in any checkpoint, so cutting it short loses nothing.
        // At the end of `--exit-on-eof` (no shutdown asked) a disk buffer
        // still hands its backlog to its sink: delivery, not a stuck request,
        // so it is waited for (it ends when drained or when the sink fails).
        // After a stop request the backlog is worth the rest of the drain
        // time (`force` comes at its deadline): on Fargate the buffer's volume
        // goes away with the task.
        let settle_for = (!self.disk_buffers).then_some(SINK_SETTLE);
        let settled = exit_by.is_none() && {
            let force = self.force.clone();
            let all = async { while self.tasks.join_next().await.is_some() {} };
            tokio::select! {
                _ = all => true,
                _ = force.cancelled() => false,
                _ = sleep_for(settle_for) => false,
            }
        };
        if !settled {
            let exit_by = *exit_by.get_or_insert_with(|| Instant::now() + EXIT_GRACE);
            if !self.force.is_cancelled() {
                tracing::warn!("sinks still busy after the sources stopped; stopping them");
            }
            // Disk buffers first: an aborted sink drops its batches, and
            // those drops must not count as acks (see `buffer::disk`).
            self.force.cancel();
            if self.disk_buffers {
                // They end on `force` after saving their position.
                let stop_by = exit_by.min(Instant::now() + STOP_GRACE);
                let _ = tokio::time::timeout_at(stop_by.into(), async {
                    while self.tasks.join_next().await.is_some() {}
                })
                .await;
            }
            self.tasks.abort_all();
            let ended = tokio::time::timeout_at(exit_by.into(), async {
                while self.tasks.join_next().await.is_some() {}
            })
            .await;
            if ended.is_err() {
                // Stuck in blocking code (a write or fsync that does not
                // return); the runtime's shutdown leaves it behind.
                tracing::warn!(
                    tasks = self.tasks.len(),
                    "pipeline tasks did not end when aborted; exiting without them"
                );
            }
        }
        self.deadline.abort();
        self.report_abandoned();
        result
    }

    /// Joins the source threads. Once `force` is cancelled they have
    /// [`SOURCE_STOP`] to save their checkpoints and return.
    async fn join_sources(&mut self) -> Result<(), StopError> {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let mut waiting = Vec::new();
        for (i, (id, h)) in std::mem::take(&mut self.sources).into_iter().enumerate() {
            waiting.push((i, id));
            let tx = done_tx.clone();
            tokio::task::spawn_blocking(move || {
                let r = h
                    .join()
                    .unwrap_or_else(|_| Err(SourceError::Downstream("a source thread panicked".into())));
                let _ = tx.send((i, r));
            });
        }
        drop(done_tx);
        let mut first = Ok(());
        let mut give_up: Option<Instant> = None;
        while !waiting.is_empty() {
            tokio::select! {
                biased;
                done = done_rx.recv() => {
                    // `None`: a join task was dropped (the runtime is going
                    // away); nothing more will come.
                    let Some((i, r)) = done else { break };
                    waiting.retain(|(w, _)| *w != i);
                    if first.is_ok() {
                        first = r;
                    }
                }
                _ = self.force.cancelled(), if give_up.is_none() => {
                    let now = Instant::now();
                    self.forced_seen = Some(now);
                    give_up = Some(now + SOURCE_STOP);
                }
                _ = crate::timer::sleep_until(give_up), if give_up.is_some() => {
                    return Err(StopError::SourcesStuck(waiting.into_iter().map(|(_, id)| id).collect()));
                }
            }
        }
        Ok(first?)
    }

    /// One warning per sink that stopped with records it had not delivered,
    /// and per disk buffer that still holds some. Counts only, never
    /// contents.
    fn report_abandoned(&self) {
        for s in &self.sinks {
            if let Some(b) = &s.buffer {
                let records = b.records.get();
                if records > 0 {
                    tracing::warn!(
                        sink = %s.m.id,
                        records,
                        bytes = b.bytes.get(),
                        "stopped with records in the disk buffer not yet delivered; they are kept there and delivered after the next start"
                    );
                }
                continue;
            }
            let done = s.m.sent_events.get().saturating_add(s.m.discarded_total.get());
            let pending = s.m.received_events.get().saturating_sub(done);
            if pending > 0 {
                tracing::warn!(
                    sink = %s.m.id,
                    kind = %s.m.kind,
                    records = pending,
                    "stopped with records not delivered; no checkpoint passes them, so they are read again at the next start (or sent again by forward clients)"
                );
            }
        }
    }
}

async fn sleep_for(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
