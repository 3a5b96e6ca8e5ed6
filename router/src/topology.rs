//! Wires the configured components into a running pipeline, and takes it
//! down in order.
//!
//! Every edge is a bounded channel, and every batch holds a share of the
//! `memory_limit` semaphore until it is dropped, so a slow sink backs up into
//! the sources, which stop reading: the files are the queue. Shutdown runs
//! one way: sources stop and drop their senders, transforms drain and drop
//! theirs, sinks flush and release acks, sources save checkpoints. The same
//! path serves `--exit-on-eof`.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::Health;
use crate::buffer::BufferConfig;
use crate::buffer::disk::{self, DiskBuffer};
use crate::config::Config;
use crate::dead_letter::DeadLetters;
use crate::event::Batch;
use crate::metrics::Metrics;
use crate::sinks::{SinkConfig, SinkContext};
use crate::sources::SourceConfig;
use crate::sources::file::{self, SourceContext, SourceError};
use crate::transforms::TransformConfig;

/// Batches queued per edge. Memory is bounded by the semaphore; this only
/// keeps consumers busy.
const CHANNEL_CAPACITY: usize = 4;
/// How long sinks may take to wind down once the sources have saved their
/// checkpoints.
const SINK_SETTLE: std::time::Duration = std::time::Duration::from_secs(3);

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
    sources: Vec<std::thread::JoinHandle<Result<(), SourceError>>>,
    tasks: JoinSet<()>,
    /// Stop reading, drain, save checkpoints.
    pub shutdown: CancellationToken,
    /// Stop now: save checkpoints without waiting for acks.
    pub force: CancellationToken,
    /// Sinks stop retrying: the sources have saved their checkpoints.
    sinks_stop: CancellationToken,
    /// Polls `[lifecycle.exit_when]`; cancels `shutdown` when one holds.
    lifecycle: tokio::task::JoinHandle<()>,
    /// Held while running: one router per data_dir (released by the kernel
    /// when the process dies, so a kill -9 never leaves it stale).
    _data_dir_lock: std::fs::File,
    /// Samples memory use and delivery progress (see `watchdog.rs`).
    watchdog: tokio::task::JoinHandle<()>,
    health: Arc<Health>,
    /// Some sink has a disk buffer.
    disk_buffers: bool,
    /// When `shutdown` was cancelled, and how long the whole drain may take.
    drain_started: Arc<std::sync::OnceLock<std::time::Instant>>,
    drain_timeout: std::time::Duration,
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
    let shutdown = CancellationToken::new();
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
    for c in &config.sinks {
        let Some(rx) = receivers.remove(&c.id) else { continue };
        let m = metrics.component(&c.id, c.inner.kind());
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
            SinkConfig::Stdout(_) => Box::pin(crate::sinks::stdout::run(rx, m)),
            SinkConfig::Blackhole(_) => Box::pin(crate::sinks::blackhole::run(rx, m)),
            SinkConfig::S3(cfg) => Box::pin(crate::sinks::s3::run(cfg.clone(), rx, cx)),
            SinkConfig::CloudWatchLogs(cfg) => Box::pin(crate::sinks::cloudwatch_logs::run(cfg.clone(), rx, cx)),
            SinkConfig::Firehose(cfg) => Box::pin(crate::sinks::firehose::run(cfg.clone(), rx, cx)),
            SinkConfig::Forward(cfg) => Box::pin(crate::sinks::forward::run(cfg.clone(), rx, cx)),
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
            shutdown: shutdown.clone(),
            force: force.clone(),
            exit_on_eof: opts.exit_on_eof,
            drain_quiet: config.lifecycle.drain_quiet,
            drain_read_budget: config.lifecycle.read_budget(),
            drain_timeout: config.lifecycle.drain_timeout,
            rt: tokio::runtime::Handle::current(),
        };
        match &c.inner {
            SourceConfig::File(cfg) => {
                let h = file::spawn(cfg.clone(), cx).map_err(|source| StartError::Source {
                    id: c.id.clone(),
                    source,
                })?;
                sources.push(h);
            }
            SourceConfig::Forward(cfg) => {
                let h = crate::sources::forward::spawn(cfg.clone(), cx).map_err(|source| StartError::Source {
                    id: c.id.clone(),
                    source,
                })?;
                sources.push(h);
            }
        }
    }
    // Only upstream components hold senders now, so closing propagates.
    drop(senders);
    let drain_started = Arc::new(std::sync::OnceLock::new());
    let lifecycle = if opts.exit_on_eof {
        tokio::spawn(async {})
    } else {
        let (watch, started, stop) = (
            crate::lifecycle::watch(config.lifecycle.clone(), env, shutdown.clone()),
            drain_started.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            let note = async move {
                stop.cancelled().await;
                let _ = started.set(std::time::Instant::now());
            };
            tokio::join!(watch, note);
        })
    };
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
        drain_started,
        drain_timeout: config.lifecycle.drain_timeout,
        disk_buffers: config.sinks.iter().any(|c| c.buffer != BufferConfig::Memory),
        lifecycle,
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

impl Running {
    /// Waits until every source has finished (end of input with
    /// `--exit-on-eof`, or after `shutdown`) and the pipeline has drained.
    /// Returns the first source error.
    pub async fn wait(mut self) -> Result<(), SourceError> {
        let sources = std::mem::take(&mut self.sources);
        let joined = tokio::task::spawn_blocking(move || {
            let mut first = Ok(());
            for h in sources {
                let r = h
                    .join()
                    .unwrap_or_else(|_| Err(SourceError::Downstream("a source thread panicked".into())));
                if first.is_ok() {
                    first = r;
                }
            }
            first
        });
        let result = joined.await.unwrap_or(Ok(()));
        // Sources only finish once every batch settled or they gave up
        // waiting; whatever a sink still retries is not checkpointed.
        self.health.stopping.store(true, std::sync::atomic::Ordering::Release);
        self.sinks_stop.cancel();
        self.lifecycle.abort();
        self.watchdog.abort();
        if self.force.is_cancelled() {
            self.tasks.abort_all();
        }
        // A sink in the middle of a request gets a moment to finish it; its
        // records are not in any checkpoint, so cutting it short loses nothing.
        let settle = async { while self.tasks.join_next().await.is_some() {} };
        // At the end of `--exit-on-eof` (no shutdown asked) a disk buffer
        // still hands its backlog to its sink: delivery, not a stuck request,
        // so it is waited for (it ends when drained or when the sink fails).
        // After a stop request the backlog is worth the rest of the drain
        // time: on Fargate the buffer's volume goes away with the task.
        let settle_for = match (self.disk_buffers, self.drain_started.get()) {
            (true, _) if !self.shutdown.is_cancelled() => std::time::Duration::MAX,
            (true, Some(t)) if !self.force.is_cancelled() => (*t + self.drain_timeout)
                .saturating_duration_since(std::time::Instant::now())
                .max(SINK_SETTLE),
            _ => SINK_SETTLE,
        };
        if tokio::time::timeout(settle_for, settle).await.is_err() {
            tracing::warn!("sinks still busy after the sources stopped; aborting them");
            // Disk buffers first: an aborted sink drops its batches, and
            // those drops must not count as acks (see `buffer::disk`).
            self.force.cancel();
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        result
    }
}
