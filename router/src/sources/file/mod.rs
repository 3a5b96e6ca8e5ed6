//! The file source: tails the files an application writes to a shared volume.
//!
//! Design constraints:
//! - **One thread per source, blocking reads.** Regular files never block on
//!   read in the way sockets do, and tokio's fs layer would cost a thread hop
//!   per call. The thread hands batches to the async pipeline with
//!   `block_on(send)`, so a slow sink blocks this thread: the files are the
//!   queue, memory stays bounded.
//! - **Identity is a position that holds, never a name** (`identity.rs`,
//!   `rotation.rs`).
//! - **inotify wakes, rescans decide** (`waker.rs`).
//! - **Checkpoints move on acks only, and follow them closely** (`acks.rs`).
//! - **Everything outside goes through [`World`]** (files, clock, checkpoint
//!   file), so `sim.rs` can crash this very code at any step over a model
//!   filesystem.
//!
//! Where the [`FileSource`] loop's parts live: this file holds its state and
//! the round (`run`, `step`, the idle wait, housekeeping); `discover.rs`
//! finds and opens files, `rotation.rs` tells a copy or a truncation,
//! `read.rs` reads, parses and sends batches, `acks.rs` settles acks and
//! saves checkpoints, `waker.rs` holds the inotify wake-ups.

mod acks;
pub mod config;
mod discover;
pub mod identity;
pub mod kube_api;
pub mod kubernetes;
pub mod parse;
mod read;
mod rotation;
#[cfg(test)]
mod sim;
pub mod tail;
mod waker;
pub mod world;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use thiserror::Error;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use acks::Link;
pub use config::{FileSourceConfig, KubernetesMetadata, ReadFrom};
use identity::Former;
use parse::Parser;
use tail::LineSplitter;
use waker::Waker;
use world::{RealWorld, World};

use crate::checkpoint::{
    self, AckTracker, Checkpoint, CheckpointError, CheckpointStore, Fingerprint, Position, SaveHealth, Saved,
};
use crate::drain::Drain;
use crate::event::{Ack, Batch, Fields, Records};
use crate::metrics::{ComponentMetrics, FileLabels, Metrics};

/// How long a file that may be a copy still being written is left unread.
const COPY_WAIT: Duration = Duration::from_secs(10);
/// Read size per call.
const CHUNK: usize = 64 * 1024;
/// A batch is sent once its records reach this many bytes.
const BATCH_BYTES: usize = 256 * 1024;
/// Bytes read from one file before the others get a turn.
const FAIR_SHARE: u64 = 1024 * 1024;
/// Idle wait when nothing was read (inotify usually ends it earlier).
const IDLE_WAIT: Duration = Duration::from_millis(250);
/// While batches are in flight, the idle wait listens for acks and looks
/// for watcher events this often.
const ACK_WAIT_SLICE: Duration = Duration::from_millis(10);
/// Upper bound on waiting for outstanding acks at shutdown.
const ACK_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Formers remembered (a copy shows up within seconds of its truncation).
const MAX_FORMERS: usize = 64;
/// Batch ends remembered per file: a copy made before the router read that
/// far continues at the last one it holds (at most one batch repeated).
const MAX_POINTS: usize = 64;
/// The tail of a position whose bytes could not be read back: it never
/// holds, so such a checkpoint is never trusted (read again, never skipped).
const UNREADABLE: Fingerprint = Fingerprint { crc: 0, len: u32::MAX };

#[derive(Debug, Error)]
pub enum SourceError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("the pipeline after source `{0}` stopped")]
    Downstream(String),
}

/// What the topology hands a source.
pub struct SourceContext {
    pub id: String,
    pub data_dir: PathBuf,
    pub outputs: Vec<mpsc::Sender<Batch>>,
    pub memory: Arc<Semaphore>,
    pub memory_limit: usize,
    pub metrics: Arc<Metrics>,
    /// The stop request, its instant and `drain_timeout` (see `drain.rs`).
    pub drain: Drain,
    pub force: CancellationToken,
    pub exit_on_eof: bool,
    /// Drain (see `lifecycle.rs`): read until quiet this long...
    pub drain_quiet: Duration,
    /// ...but stop reading this long after the stop request at the latest,
    /// and stop waiting for acks at `drain.deadline()`.
    pub drain_read_budget: Duration,
    pub rt: tokio::runtime::Handle,
}

/// Starts the source on its own thread.
pub fn spawn(
    cfg: FileSourceConfig,
    cx: SourceContext,
) -> std::io::Result<std::thread::JoinHandle<Result<(), SourceError>>> {
    let pods = match (cfg.kubernetes_metadata, &cfg.kubernetes_api) {
        (KubernetesMetadata::Api, api) => {
            let api = api.clone().unwrap_or_default();
            let watch = {
                let _rt = cx.rt.enter();
                kube_api::Watch::new(&api).map_err(std::io::Error::other)?
            };
            // A quarter of the limit at most: batches always find room.
            let max = cx.memory_limit / 4;
            let cache = Arc::new(kube_api::PodCache::new(cx.memory.clone(), max, &cx.metrics, &cx.id));
            // The watch ends with the source (`force`) or when the process stops.
            let stop = cx.force.child_token();
            cx.rt
                .spawn(watch.run(cache.clone(), cx.metrics.clone(), cx.id.clone(), stop));
            Some((cache, api.sync_wait))
        }
        _ => None,
    };
    std::thread::Builder::new()
        .name(format!("source-{}", cx.id))
        .spawn(move || {
            let span = tracing::info_span!("source", id = %cx.id, kind = "file");
            let _g = span.enter();
            let world = RealWorld {
                store: CheckpointStore::new(&cx.data_dir, &cx.id),
            };
            let mut s = FileSource::new(cfg, cx, world, Waker::inotify())?;
            s.pods = pods;
            let result = s.run();
            if let Err(e) = &result {
                tracing::error!(error = %e, "source stopped");
            }
            result
        })
}

/// A file being tailed.
struct Watched<F> {
    stream: u64,
    path: PathBuf,
    file: F,
    dev: u64,
    ino: u64,
    fp: Fingerprint,
    /// The bytes `fp` was computed from (to spot a copy still being written).
    head: Vec<u8>,
    /// Next byte to read.
    read_pos: u64,
    /// Just past the last byte that belongs to a batch already sent: the
    /// end of the last complete line, or the start of the oldest partial
    /// line the parser holds (CRI `P` parts), whichever is first.
    consumed: u64,
    /// Where the last batch registered with the tracker ends (a copy of this
    /// file continues there).
    mark: Position,
    /// The last batch ends with their sequence numbers, oldest first.
    recent: std::collections::VecDeque<(Position, u64)>,
    /// Up to `FINGERPRINT_BYTES` read just before `read_pos`, so a batch
    /// end's tail CRC comes from the bytes that were read, not from the
    /// file when the batch is sent: a copytruncate between the two would
    /// leave a tail no copy holds (and the copy read again from an older
    /// batch end).
    behind: Vec<u8>,
    /// The offset `behind` ends at.
    behind_end: u64,
    /// The tail CRC at `consumed` as read, when `behind` and the last chunk
    /// covered it.
    read_tail: Option<(u64, Fingerprint)>,
    /// Just past the last complete line read (its `\n`).
    lines_to: u64,
    splitter: LineSplitter,
    parser: Parser,
    tracker: AckTracker,
    /// Since when the file has had nothing new to read.
    idle_since: Option<Instant>,
    /// Last time every batch sent from this file was settled (the
    /// checkpoint age is measured from it).
    settled_at: Instant,
    /// Renamed away or deleted: read to the end, then close.
    gone: bool,
    size: u64,
    labels: FileLabels,
    /// Opened before it had enough bytes to be told apart from a copy.
    identity_pending: bool,
    /// Added to every batch of this file (`kubernetes_metadata = "path"`).
    fields: Option<Arc<Fields>>,
    /// The file's pod, resolved at batch time (`kubernetes_metadata = "api"`).
    k8s: Option<kube_api::FileMeta>,
}

struct SourceCounters {
    m: ComponentMetrics,
    not_json: Counter,
    invalid_utf8: Counter,
    truncated: Counter,
    time_missing: Counter,
    kubernetes_name: Counter,
}

/// Records of excluded pods are dropped with this reason.
const KUBERNETES_EXCLUDED: &str = "kubernetes_excluded";

struct FileSource<W: World> {
    cfg: FileSourceConfig,
    cx: SourceContext,
    world: W,
    exclude: globset::GlobSet,
    /// Saved checkpoints of files not open now, by (dev, ino).
    saved: HashMap<(u64, u64), Checkpoint>,
    /// Contents files held before they were truncated or replaced, newest
    /// last: a new file holding one of their positions is their copy.
    formers: Vec<Former>,
    /// New files that may be a copy still being written, since when.
    deferred: HashMap<(u64, u64), Instant>,
    files: BTreeMap<u64, Watched<W::File>>,
    by_key: HashMap<(u64, u64), u64>,
    links: Vec<Link>,
    next_stream: u64,
    ack_tx: std_mpsc::Sender<Ack>,
    ack_rx: std_mpsc::Receiver<Ack>,
    waker: Waker,
    counters: SourceCounters,
    chunk: Vec<u8>,
    records: Records,
    checkpoints_dirty: bool,
    last_checkpoint: Instant,
    /// Failed saves, told once per outage and to `/readyz`.
    checkpoint_health: SaveHealth,
    last_scan: Instant,
    /// This node's pods and how long to wait for their first list
    /// (`kubernetes_metadata = "api"`).
    pods: Option<(Arc<kube_api::PodCache>, Duration)>,
    /// Parsers the pods' `logferry.io/parser` annotations pick.
    annotated: Option<Box<kube_api::AnnotatedParsers>>,
}

impl<W: World> FileSource<W> {
    fn new(mut cfg: FileSourceConfig, cx: SourceContext, mut world: W, waker: Waker) -> Result<Self, SourceError> {
        let checkpoint_metrics = cx.metrics.checkpoint(&cx.id);
        let loaded = match world.load_checkpoints() {
            Ok(saved) => saved,
            // Lost positions are never taken for "nothing seen" (which
            // `read_from = "end"` would turn into skipping): every file
            // found now is read from its start (see `checkpoint.rs`).
            Err(e @ CheckpointError::Corrupt { .. }) => {
                let exclude = cfg.exclude_set();
                let mut seen = HashSet::new();
                let (mut files, mut bytes) = (0, 0);
                for path in cfg.include.iter().flat_map(|p| world.glob(p)) {
                    if let Some(st) = world
                        .stat(&path)
                        .filter(|st| st.is_file && !exclude.is_match(&path) && seen.insert((st.dev, st.ino)))
                    {
                        files += 1;
                        bytes += st.len;
                    }
                }
                checkpoint::report_corrupt(&e, &checkpoint_metrics, files, bytes, cfg.read_from == ReadFrom::End);
                cfg.read_from = ReadFrom::Beginning;
                Saved::default()
            }
            Err(e) => return Err(e.into()),
        };
        let saved = loaded.files.into_iter().map(|c| ((c.dev, c.ino), c)).collect();
        let formers = loaded.formers.iter().filter_map(Former::from_saved).collect();
        let (ack_tx, ack_rx) = std_mpsc::channel();
        let m = cx.metrics.component(&cx.id, "file");
        let counters = SourceCounters {
            not_json: m.line_issue("not_json"),
            invalid_utf8: m.line_issue("invalid_utf8"),
            truncated: m.line_issue("truncated"),
            time_missing: m.line_issue("time_missing"),
            kubernetes_name: m.line_issue("kubernetes_name"),
            m,
        };
        let now = world.now();
        Ok(FileSource {
            exclude: cfg.exclude_set(),
            cfg,
            cx,
            world,
            saved,
            formers,
            deferred: HashMap::new(),
            files: BTreeMap::new(),
            by_key: HashMap::new(),
            links: Vec::new(),
            next_stream: 0,
            ack_tx,
            ack_rx,
            waker,
            counters,
            chunk: vec![0; CHUNK],
            records: Records::default(),
            checkpoints_dirty: false,
            last_checkpoint: now,
            checkpoint_health: SaveHealth::new(checkpoint_metrics),
            last_scan: now,
            pods: None,
            annotated: None,
        })
    }

    fn run(&mut self) -> Result<(), SourceError> {
        self.wait_for_pods();
        self.discover(true);
        let mut last_progress = self.world.now();
        let result = loop {
            if self.cx.force.is_cancelled() {
                break Ok(());
            }
            let now = self.world.now();
            if let Some(started) = self.cx.drain.started() {
                // Draining: the app may still be writing its last lines.
                let quiet_since = last_progress.max(started);
                if now.saturating_duration_since(quiet_since) >= self.cx.drain_quiet
                    || now.saturating_duration_since(started) >= self.cx.drain_read_budget
                {
                    if let Err(e) = self.flush_partials(true) {
                        break Err(e);
                    }
                    break Ok(());
                }
            }
            let due = now.saturating_duration_since(self.last_scan) >= self.cfg.glob_interval;
            let scan = !self.cx.exit_on_eof && (due || self.waker.rescan.swap(false, Ordering::AcqRel));
            let progressed = match self.step(scan) {
                Ok(p) => p,
                Err(e) => break Err(e),
            };
            if progressed {
                last_progress = self.world.now();
            }
            if self.cx.exit_on_eof && !progressed {
                // Everything read: emit held partial lines, then finish.
                if let Err(e) = self.flush_partials(true) {
                    break Err(e);
                }
                break Ok(());
            }
            if !progressed {
                self.idle_wait();
            }
        };
        // Closing our senders lets the pipeline drain; then wait for the acks.
        self.cx.outputs.clear();
        let deadline = self
            .cx
            .drain
            .deadline()
            .unwrap_or_else(|| self.world.now() + ACK_DRAIN_TIMEOUT);
        while self.files.values().any(|w| w.tracker.unsettled() > 0)
            && !self.cx.force.is_cancelled()
            && self.world.now() < deadline
        {
            if let Ok(ack) = self.ack_rx.recv_timeout(Duration::from_millis(50)) {
                self.apply_ack(ack);
            }
            self.drain_acks();
        }
        // Also after `force`: acks that came while a send was blocked are
        // real outcomes (nothing is torn down before the sources return, and
        // a batch a forced stop kept from its outputs reports failed).
        self.drain_acks();
        let unsettled: usize = self.files.values().map(|w| w.tracker.unsettled()).sum();
        if unsettled > 0 {
            tracing::warn!(
                batches = unsettled,
                "stopping with batches not yet delivered; the checkpoint stays before them, so they are read again at the next start"
            );
        }
        self.save_checkpoints();
        result
    }

    /// Records read before the first list of pods is in would carry only
    /// the path's fields: wait for it a little (an API that is down does
    /// not hold the logs back for longer than `sync_wait`).
    fn wait_for_pods(&self) {
        let Some((cache, wait)) = &self.pods else { return };
        let deadline = Instant::now() + *wait;
        while !cache.synced() && Instant::now() < deadline && !self.cx.drain.is_started() {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !cache.synced() {
            tracing::warn!(waited = ?wait, "no pod list from the Kubernetes API yet; reading anyway, with the path's fields until it comes");
        }
    }

    /// One round: acks in, new files found (when `scan`), a fair share of
    /// every file read, housekeeping, checkpoints saved when due. True if
    /// any data was read.
    fn step(&mut self, scan: bool) -> Result<bool, SourceError> {
        self.drain_acks();
        if scan {
            self.discover(false);
            self.last_scan = self.world.now();
        }
        let progressed = self.read_round()?;
        self.housekeeping()?;
        self.save_if_due();
        Ok(progressed)
    }

    /// Waits for new data. With batches in flight their acks end the wait
    /// too, so the checkpoint is saved right after a delivery rather than up
    /// to `IDLE_WAIT` later (a kill -9 in between would repeat it all).
    fn idle_wait(&mut self) {
        if self.files.values().all(|w| w.tracker.unsettled() == 0) {
            self.waker.idle_wait();
            return;
        }
        let deadline = Instant::now() + IDLE_WAIT;
        loop {
            match self.ack_rx.recv_timeout(ACK_WAIT_SLICE) {
                Ok(ack) => {
                    self.apply_ack(ack);
                    self.drain_acks();
                    return;
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                // We hold a sender: it cannot disconnect, but never spin.
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    self.waker.idle_wait();
                    return;
                }
            }
            if self.waker.woken() || Instant::now() >= deadline {
                return;
            }
        }
    }

    /// Partial-line timeouts, closing of finished rotated files.
    fn housekeeping(&mut self) -> Result<(), SourceError> {
        self.flush_partials(false)?;
        let rotate_wait = self.cfg.rotate_wait;
        let exit = self.cx.exit_on_eof;
        let now = self.world.now();
        let done: Vec<u64> = self
            .files
            .values()
            .filter(|w| {
                w.gone
                    && !w.splitter.has_pending()
                    && !w.parser.has_held()
                    && w.tracker.unsettled() == 0
                    // A failed batch keeps the file (and its checkpoint)
                    // until the next start reads it again.
                    && !w.tracker.has_failed()
                    && w.idle_since.is_some_and(|t| exit || now.saturating_duration_since(t) >= rotate_wait)
            })
            .map(|w| w.stream)
            .collect();
        for stream in done {
            if let Some(w) = self.files.remove(&stream) {
                tracing::debug!(file = %w.path.display(), "closing rotated file");
                self.by_key.remove(&(w.dev, w.ino));
                let m = &self.cx.metrics;
                m.file_read_offset.remove(&w.labels);
                m.file_lag.remove(&w.labels);
                m.file_checkpoint_offset.remove(&w.labels);
                m.file_checkpoint_lag.remove(&w.labels);
                m.file_checkpoint_age.remove(&w.labels);
                self.checkpoints_dirty = true;
            }
        }
        self.settle_links();
        self.counters.m.files_open.set(self.files.len() as i64);
        Ok(())
    }
}
