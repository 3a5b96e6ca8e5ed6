//! The file source: tails the files an application writes to a shared volume.
//!
//! Design constraints:
//! - **One thread per source, blocking reads.** Regular files never block on
//!   read in the way sockets do, and tokio's fs layer would cost a thread hop
//!   per call. The thread hands batches to the async pipeline with
//!   `block_on(send)`, so a slow sink blocks this thread: the files are the
//!   queue, memory stays bounded.
//! - **Identity is a position that holds, never a name** (`identity.rs`). A
//!   renamed file keeps being read through its open descriptor until it has
//!   been quiet for `rotate_wait`; a file whose content no longer holds our
//!   position (copytruncate, a reused inode) restarts at 0 and leaves a
//!   [`Former`]: a new file holding that position is its copy and continues
//!   there, its checkpoint held at what was delivered of the original until
//!   the original's batches are acknowledged (a link), so a kill -9 between
//!   the truncation and those acks loses nothing.
//! - **inotify wakes, rescans decide.** `notify` only shortens the wait; the
//!   periodic rescan (`glob_interval`) is what finds files on volumes without
//!   inotify (NFS, EFS).
//! - **Checkpoints move on acks only** (see `checkpoint.rs`), **and follow
//!   them closely**: what a kill -9 repeats is what was delivered since the
//!   last save, so the idle wait ends on an ack and a long round saves
//!   between its files (at most every `checkpoint_interval`). A sink that
//!   commits a second of backlog at once would otherwise have all of it
//!   repeated by a kill in the few hundred milliseconds before the save.
//! - **Everything outside goes through [`World`]** (files, clock, checkpoint
//!   file), so `sim.rs` can crash this very code at any step over a model
//!   filesystem.

pub mod config;
pub mod identity;
pub mod kubernetes;
pub mod parse;
#[cfg(test)]
mod sim;
pub mod tail;
pub mod world;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use thiserror::Error;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

pub use config::{FileSourceConfig, KubernetesMetadata, ReadFrom};
use identity::{
    Continue, FINGERPRINT_BYTES, Former, Point, Relation, fingerprint_of, holds, read_head, relation, tail_at,
};
use parse::{Parsed, Parser, Step};
use tail::{LineSplitter, utf8_prefix};
use world::{RealWorld, Stat, World};

use crate::checkpoint::{
    self, AckTracker, Checkpoint, CheckpointError, CheckpointStore, Fingerprint, Position, SaveHealth, Saved,
};
use crate::event::{Ack, AckToken, Batch, Fields, Records};
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
    pub shutdown: CancellationToken,
    pub force: CancellationToken,
    pub exit_on_eof: bool,
    /// Drain on `shutdown` (see `lifecycle.rs`): read until quiet this long...
    pub drain_quiet: Duration,
    /// ...but stop reading this long after the stop request at the latest...
    pub drain_read_budget: Duration,
    /// ...and stop waiting for acks this long after it.
    pub drain_timeout: Duration,
    pub rt: tokio::runtime::Handle,
}

/// Starts the source on its own thread.
pub fn spawn(
    cfg: FileSourceConfig,
    cx: SourceContext,
) -> std::io::Result<std::thread::JoinHandle<Result<(), SourceError>>> {
    std::thread::Builder::new()
        .name(format!("source-{}", cx.id))
        .spawn(move || {
            let span = tracing::info_span!("source", id = %cx.id, kind = "file");
            let _g = span.enter();
            let world = RealWorld {
                store: CheckpointStore::new(&cx.data_dir, &cx.id),
            };
            let mut s = FileSource::new(cfg, cx, world, Waker::inotify())?;
            let result = s.run();
            if let Err(e) = &result {
                tracing::error!(error = %e, "source stopped");
            }
            result
        })
}

/// Wake-ups from inotify: they shorten the idle wait and ask for a rescan.
struct Waker {
    watcher: Option<notify::RecommendedWatcher>,
    rx: std_mpsc::Receiver<()>,
    /// Held so the channel stays connected even if the watcher's thread
    /// ends; a disconnected channel would make every idle wait return at once.
    _keepalive: std_mpsc::SyncSender<()>,
    rescan: Arc<AtomicBool>,
    dirs: HashSet<PathBuf>,
}

impl Waker {
    fn inotify() -> Self {
        let mut w = Waker::none();
        let (tx, rx) = std_mpsc::sync_channel(1);
        let flag = w.rescan.clone();
        w.watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                use notify::EventKind::*;
                if matches!(
                    ev.kind,
                    Create(_) | Remove(_) | Modify(notify::event::ModifyKind::Name(_))
                ) {
                    flag.store(true, Ordering::Release);
                }
                // A full channel means a wake-up is already pending.
                let _ = tx.try_send(());
            }
        })
        .map_err(|e| tracing::warn!(error = %e, "inotify unavailable; relying on rescans"))
        .ok();
        w.rx = rx;
        w
    }

    /// No watcher: only rescans find files (and the simulation steps by hand).
    fn none() -> Self {
        let (tx, rx) = std_mpsc::sync_channel(1);
        Waker {
            watcher: None,
            rx,
            _keepalive: tx,
            rescan: Arc::new(AtomicBool::new(false)),
            dirs: HashSet::new(),
        }
    }

    fn watch_dir_of(&mut self, pattern: &str) {
        let Some(watcher) = self.watcher.as_mut() else { return };
        // The longest directory prefix without glob characters.
        let mut dir = PathBuf::new();
        for comp in Path::new(pattern).components() {
            let s = comp.as_os_str().to_string_lossy();
            if s.contains(['*', '?', '[', '{']) {
                break;
            }
            dir.push(comp);
        }
        if dir.as_os_str().is_empty() || dir.is_file() {
            dir = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        }
        if dir.as_os_str().is_empty() || self.dirs.contains(&dir) || !dir.is_dir() {
            return;
        }
        use notify::Watcher;
        let mode = if pattern.contains("**") {
            notify::RecursiveMode::Recursive
        } else {
            notify::RecursiveMode::NonRecursive
        };
        if watcher.watch(&dir, mode).is_ok() {
            self.dirs.insert(dir);
        }
    }

    /// Takes a pending watcher event without waiting.
    fn woken(&self) -> bool {
        self.rx.try_recv().is_ok()
    }

    /// Waits for a watcher event or `IDLE_WAIT`. Never returns early for
    /// lack of a watcher (no inotify, or its thread ended when a watched
    /// directory went away): that would spin.
    fn idle_wait(&self) {
        match self.rx.recv_timeout(IDLE_WAIT) {
            Ok(()) | Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(IDLE_WAIT),
        }
    }
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
    /// Added to every batch of this file (`kubernetes_metadata`).
    fields: Option<Arc<Fields>>,
}

/// What a new file is.
enum Verdict {
    /// Maybe a copy still being written: look again later.
    Wait,
    /// Holds a position of another file's content: continue there.
    Continue(Continue),
}

/// A copy's checkpoint waits for a batch of its original: when `from` (a
/// stream and one of its batches) is released, `to`'s placeholder batch is
/// acknowledged with the same outcome.
#[derive(Debug, Clone, Copy)]
struct Link {
    from: (u64, u64),
    to: (u64, u64),
}

struct SourceCounters {
    m: ComponentMetrics,
    not_json: Counter,
    invalid_utf8: Counter,
    truncated: Counter,
    time_missing: Counter,
    kubernetes_name: Counter,
}

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
        })
    }

    fn run(&mut self) -> Result<(), SourceError> {
        self.discover(true);
        let mut last_progress = self.world.now();
        let mut drain_started: Option<Instant> = None;
        let result = loop {
            if self.cx.force.is_cancelled() {
                break Ok(());
            }
            let now = self.world.now();
            if self.cx.shutdown.is_cancelled() {
                // Draining: the app may still be writing its last lines.
                let started = *drain_started.get_or_insert_with(|| {
                    tracing::debug!("draining: reading until the files are quiet");
                    now
                });
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
        let deadline = match drain_started {
            Some(t) => t + self.cx.drain_timeout,
            None => self.world.now() + ACK_DRAIN_TIMEOUT,
        };
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

    /// Saves the checkpoints when they moved and the last save is
    /// `checkpoint_interval` old. Called after every round and between the
    /// files of a round, so a checkpoint follows its acks closely even while
    /// a backlog keeps the round long: what a kill -9 repeats is what was
    /// delivered since the last save.
    fn save_if_due(&mut self) {
        let now = self.world.now();
        if self.checkpoints_dirty && now.saturating_duration_since(self.last_checkpoint) >= self.cfg.checkpoint_interval
        {
            self.save_checkpoints();
            self.last_checkpoint = now;
        }
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

    fn drain_acks(&mut self) {
        while let Ok(ack) = self.ack_rx.try_recv() {
            self.apply_ack(ack);
        }
    }

    fn apply_ack(&mut self, ack: Ack) {
        let m = &self.counters.m;
        m.unacked_events.dec_by(i64::from(ack.records));
        if ack.delivered {
            m.acked_events.inc_by(u64::from(ack.records));
        } else {
            m.failed_events.inc_by(u64::from(ack.records));
        }
        if let Some(w) = self.files.get_mut(&ack.stream) {
            if !ack.delivered {
                tracing::warn!(file = %w.path.display(), "a batch was not delivered; this file's checkpoint stays before it");
            }
            self.settle(ack.stream, ack.seq, ack.delivered);
        }
        self.settle_links();
    }

    /// Records the outcome of a batch of `stream` with its tracker.
    fn settle(&mut self, stream: u64, seq: u64, delivered: bool) {
        let Some(w) = self.files.get_mut(&stream) else { return };
        if w.tracker.ack(seq, delivered) {
            self.checkpoints_dirty = true;
            let m = &self.cx.metrics;
            let acked = w.tracker.acked().offset;
            m.file_checkpoint_offset.get_or_create(&w.labels).set(acked as i64);
            m.file_checkpoint_lag
                .get_or_create(&w.labels)
                .set(w.size.saturating_sub(acked) as i64);
        }
    }

    /// Acknowledges the placeholders of copies whose original's batch is
    /// settled: delivered when it was released, failed when it failed.
    fn settle_links(&mut self) {
        if self.links.is_empty() {
            return;
        }
        let links = std::mem::take(&mut self.links);
        for link in links {
            match self.hold_state(link.from) {
                Some(delivered) => self.settle(link.to.0, link.to.1, delivered),
                None => self.links.push(link),
            }
        }
    }

    /// Whether batch `seq` of `stream` was delivered (`Some(true)`, also
    /// when the file is closed: it closes only with every batch delivered),
    /// failed (`Some(false)`), or is still in flight (`None`).
    fn hold_state(&self, (stream, seq): (u64, u64)) -> Option<bool> {
        match self.files.get(&stream) {
            None => Some(true),
            Some(w) if w.tracker.released(seq) => Some(true),
            Some(w) if w.tracker.failed_through(seq) => Some(false),
            Some(_) => None,
        }
    }

    /// Finds files matching the globs; notices renamed and deleted ones.
    fn discover(&mut self, initial: bool) {
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let mut found: Vec<(PathBuf, Stat)> = Vec::new();
        let patterns = self.cfg.include.clone();
        for pattern in &patterns {
            self.waker.watch_dir_of(pattern);
            let mut matched = false;
            for path in self.world.glob(pattern) {
                if self.exclude.is_match(&path) {
                    continue;
                }
                let Some(st) = self.world.stat(&path) else { continue };
                matched |= st.is_file;
                if st.is_file && seen.insert((st.dev, st.ino)) {
                    found.push((path, st));
                }
            }
            if initial && !matched {
                // Often a typo; also normal for a log the app has not created yet.
                tracing::warn!(pattern = %pattern, "no file matches this include pattern yet; files that appear later are read");
            }
        }
        let mut new = Vec::new();
        for (path, st) in found {
            let key = (st.dev, st.ino);
            match self.by_key.get(&key).and_then(|s| self.files.get_mut(s)) {
                Some(w) => {
                    if w.path != path {
                        tracing::debug!(from = %w.path.display(), to = %path.display(), "file renamed");
                        w.path = path;
                    }
                    w.gone = false;
                }
                None => new.push((path, st)),
            }
        }
        // Files with a saved checkpoint first: one that no longer holds
        // leaves the former content its copy (another new file) continues.
        new.sort_by_key(|(_, st)| !self.saved.contains_key(&(st.dev, st.ino)));
        for (path, st) in new {
            self.open(path, st, initial);
        }
        for w in self.files.values_mut() {
            if !seen.contains(&(w.dev, w.ino)) && !w.gone {
                tracing::debug!(file = %w.path.display(), "file rotated away or deleted; reading it to its end");
                w.gone = true;
            }
        }
        // Forget saved checkpoints of files that no longer exist under the globs.
        let before = self.saved.len();
        self.saved.retain(|k, _| seen.contains(k));
        self.deferred.retain(|k, _| seen.contains(k));
        if self.saved.len() != before {
            self.checkpoints_dirty = true;
        }
        self.counters.m.files_open.set(self.files.len() as i64);
    }

    fn open(&mut self, path: PathBuf, st: Stat, initial: bool) {
        let key = (st.dev, st.ino);
        let file = match self.world.open(&path) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot open file");
                return;
            }
        };
        let size = st.len;
        let head = read_head(&self.world, &file, size);
        let fp = fingerprint_of(&head);
        // Our own checkpoint of this very file comes first, if it still holds.
        let saved = self.saved.remove(&key);
        let had_checkpoint = saved.is_some();
        let held = saved
            .as_ref()
            .map(Checkpoint::position)
            .filter(|at| holds(&self.world, &file, size, at));
        let start = match held {
            Some(at) if at.offset > 0 => Some(Continue::at(at)),
            // A checkpoint at 0 says nothing was delivered from this file,
            // not that its content is new: a copy opened before it could be
            // told apart saves one (`identity_pending`), and a kill -9
            // before the decision is saved must not make it read the whole
            // copy again. It is classified like a new file.
            _ => match self.classify(key, &file, &head, size) {
                Some(Verdict::Wait) => {
                    // Keep its checkpoint until it is decided.
                    if let Some(cp) = saved {
                        self.saved.insert(key, cp);
                    }
                    return;
                }
                Some(Verdict::Continue(c)) => Some(c),
                None => held.map(Continue::at),
            },
        };
        if let Some(cp) = saved.filter(|_| start.is_none()) {
            // Same inode, other content: reused, or truncated while we were
            // down. A copy of the content it had continues where it was.
            tracing::info!(file = %path.display(), offset = cp.offset, "file no longer holds its checkpoint (truncated or replaced); reading it from the start");
            self.remember(Former {
                head: cp.fingerprint,
                head_bytes: None,
                points: vec![(cp.position(), None)],
                durable: cp.position(),
            });
        }
        let from_end = initial && !had_checkpoint && self.cfg.read_from == ReadFrom::End;
        let start = start.unwrap_or_else(|| {
            let offset = if from_end { size } else { 0 };
            Continue::at(Position {
                offset,
                head: fp,
                tail: tail_at(&self.world, &file, offset).unwrap_or(UNREADABLE),
            })
        });
        // Too few bytes to tell a new file from a copy that is being
        // written: decide when it has grown (see `read_file_inner`).
        let identity_pending = !initial && start.read_from().offset == 0 && (size as usize) < FINGERPRINT_BYTES;
        self.deferred.remove(&key);
        let parser = match Parser::new(&self.cfg.parser_options()) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "parser configuration rejected");
                return;
            }
        };
        let stream = self.next_stream;
        self.next_stream += 1;
        let labels = FileLabels {
            component: self.cx.id.clone(),
            file: path.display().to_string(),
        };
        let fields = match self.cfg.kubernetes_metadata {
            KubernetesMetadata::None => None,
            KubernetesMetadata::Path => {
                let f = kubernetes::fields_for(&path);
                if f.is_none() {
                    // Counted once per file, not per line.
                    self.counters.kubernetes_name.inc();
                    tracing::debug!(file = %path.display(), "not a kubelet container log name; no kubernetes fields");
                }
                f
            }
        };
        tracing::debug!(file = %path.display(), offset = start.read_from().offset, "tailing file");
        let now = self.world.now();
        let mut w = Watched {
            stream,
            path,
            file,
            dev: key.0,
            ino: key.1,
            fp,
            head,
            read_pos: 0,
            consumed: 0,
            mark: start.durable,
            recent: std::collections::VecDeque::new(),
            behind: Vec::new(),
            behind_end: 0,
            read_tail: None,
            lines_to: 0,
            splitter: LineSplitter::new(self.cfg.max_line_size.as_u64() as usize),
            parser,
            tracker: AckTracker::new(start.durable),
            idle_since: None,
            settled_at: now,
            gone: false,
            size,
            labels,
            identity_pending,
            fields,
        };
        self.start_at(&mut w, start);
        self.by_key.insert(key, stream);
        self.files.insert(stream, w);
        self.checkpoints_dirty = true;
    }

    /// Positions `w` at `c`: reading resumes where `c` says, the checkpoint
    /// at `c.durable`, moving through `c.pending` as the original's batches
    /// are released.
    fn start_at(&mut self, w: &mut Watched<W::File>, c: Continue) {
        let from = c.read_from().offset;
        w.read_pos = from;
        w.consumed = from;
        w.lines_to = from;
        w.tracker = AckTracker::new(c.durable);
        w.mark = c.durable;
        w.recent.clear();
        w.forget_read();
        for (at, from) in c.pending {
            let seq = w.push_mark(at);
            self.links.push(Link {
                from,
                to: (w.stream, seq),
            });
        }
    }

    fn remember(&mut self, f: Former) {
        if self.formers.iter().any(|o| o.points.last() == f.points.last()) {
            return;
        }
        if self.formers.len() >= MAX_FORMERS {
            self.formers.remove(0);
        }
        self.formers.push(f);
        self.checkpoints_dirty = true;
    }

    /// Is a new file (first bytes `head`) the copy of a former or a live
    /// file's content? `None` when it is not (read it from its start).
    fn classify(&mut self, key: (u64, u64), file: &W::File, head: &[u8], size: u64) -> Option<Verdict> {
        let mut in_progress = false;
        // A live file with the same first bytes may have been truncated
        // since we last read it (copytruncate: copy, then truncate): look
        // now, so its former content is known before deciding.
        let same_head: Vec<u64> = self
            .files
            .values()
            .filter(|w| (w.dev, w.ino) != key && relation(head, w.fp, Some(&w.head)) != Relation::Unrelated)
            .map(|w| w.stream)
            .collect();
        for stream in same_head {
            if let Some(mut w) = self.files.remove(&stream) {
                let r = if self.was_truncated(&mut w) {
                    self.on_truncated(&mut w)
                } else {
                    Ok(())
                };
                self.files.insert(stream, w);
                if r.is_err() {
                    return Some(Verdict::Wait);
                }
            }
        }
        // Former contents, newest first; then live files with the same head
        // (a copy of one not truncated yet, or ever: a plain `cp`). A copy
        // that holds an older batch end but is shorter than the newest one
        // may still be being written: wait for it to grow (continuing at the
        // older end would repeat what the original delivered since), and take
        // the older one only once the wait is over.
        let mut fallback = None;
        for i in (0..self.formers.len()).rev() {
            let f = &self.formers[i];
            match relation(head, f.head, f.head_bytes.as_deref()) {
                Relation::Unrelated => continue,
                Relation::MaybeCopy => in_progress = true,
                Relation::SameHead => {
                    let short = f.points.last().is_some_and(|p| size < p.0.offset);
                    in_progress |= short;
                    if fallback.is_none() && holds(&self.world, file, size, &f.durable) {
                        fallback = Some(i);
                    }
                    if let Some(j) = self.best_point(file, size, &f.points)
                        && (!short || !self.still_waiting(key))
                    {
                        let f = self.formers.remove(i);
                        self.checkpoints_dirty = true;
                        self.deferred.remove(&key);
                        return Some(Verdict::Continue(self.continuation(
                            file,
                            size,
                            &f.points[..=j],
                            f.durable,
                        )));
                    }
                }
            }
        }
        let live: Vec<(Vec<Point>, Position)> = self
            .files
            .values()
            .filter(|w| (w.dev, w.ino) != key && !w.gone && relation(head, w.fp, Some(&w.head)) != Relation::Unrelated)
            .map(|w| (w.points(), w.tracker.acked()))
            .collect();
        for (points, acked) in live {
            let short = points.last().is_some_and(|p| size < p.0.offset);
            in_progress |= short;
            if let Some(j) = self.best_point(file, size, &points).filter(|&j| points[j].0.offset > 0)
                && (!short || !self.still_waiting(key))
            {
                self.deferred.remove(&key);
                return Some(Verdict::Continue(self.continuation(file, size, &points[..=j], acked)));
            }
        }
        if in_progress && self.defer(key, COPY_WAIT) {
            return Some(Verdict::Wait);
        }
        self.deferred.remove(&key);
        let f = self.formers.remove(fallback?);
        self.checkpoints_dirty = true;
        tracing::info!(
            offset = f.durable.offset,
            "file is a copy of a truncated file's delivered part; continuing there"
        );
        Some(Verdict::Continue(Continue::at(f.durable)))
    }

    /// True while a file that may be a copy being written is within its wait.
    fn still_waiting(&mut self, key: (u64, u64)) -> bool {
        self.defer(key, COPY_WAIT)
    }

    /// Index of the furthest of `points` the file holds.
    fn best_point(&self, file: &W::File, size: u64, points: &[Point]) -> Option<usize> {
        (0..points.len())
            .rev()
            .filter(|&i| points[i].0.offset <= size)
            .find(|&i| holds(&self.world, file, size, &points[i].0))
    }

    /// Where a copy holding the last of `points` (batch ends of its
    /// original, oldest first) starts. Its checkpoint starts at the furthest
    /// point already released (or `durable`, the original's acknowledged
    /// position, when further and held by the copy; else 0) and follows the
    /// original's batches from there. If one of them failed, the copy reads
    /// from the checkpoint: what was not delivered is read again from it.
    fn continuation(&self, file: &W::File, size: u64, points: &[Point], durable: Position) -> Continue {
        let Some(&(at, _)) = points.last() else {
            return Continue::at(durable);
        };
        let zero = Position {
            offset: 0,
            head: at.head,
            tail: Fingerprint::default(),
        };
        let mut start = if durable.offset <= at.offset && holds(&self.world, file, size, &durable) {
            durable
        } else {
            zero
        };
        let mut pending = Vec::new();
        for &(p, hold) in points {
            match hold.map(|h| (h, self.hold_state(h))) {
                None | Some((_, Some(true))) => {
                    if p.offset >= start.offset && holds(&self.world, file, size, &p) {
                        start = p;
                    }
                    pending.clear();
                }
                Some((_, Some(false))) => {
                    tracing::info!(
                        offset = start.offset,
                        "file is a copy of undelivered content; reading it from there"
                    );
                    return Continue::at(start);
                }
                Some((h, None)) if p.offset > start.offset => pending.push((p, h)),
                Some(_) => {}
            }
        }
        tracing::info!(
            offset = at.offset,
            durable = start.offset,
            "file is a copy; continuing where its original was read to"
        );
        Continue {
            durable: start,
            pending,
        }
    }

    /// Starts or continues waiting on a file; true while it should wait.
    /// A backfill (`--exit-on-eof`) never waits: nothing is being rotated.
    fn defer(&mut self, key: (u64, u64), max: Duration) -> bool {
        if self.cx.exit_on_eof {
            return false;
        }
        let now = self.world.now();
        let since = *self.deferred.entry(key).or_insert(now);
        now.saturating_duration_since(since) < max
    }

    /// Reads a fair share of every file; true if any data was read.
    fn read_round(&mut self) -> Result<bool, SourceError> {
        let streams: Vec<u64> = self.files.keys().copied().collect();
        let mut progressed = false;
        for stream in streams {
            progressed |= self.read_file(stream)?;
            // Not inside `read_file`: the file being read is out of
            // `self.files` there, and its acks would find no file.
            self.drain_acks();
            self.save_if_due();
        }
        Ok(progressed)
    }

    fn read_file(&mut self, stream: u64) -> Result<bool, SourceError> {
        let Some(mut w) = self.files.remove(&stream) else {
            return Ok(false);
        };
        let result = self.read_file_inner(&mut w);
        self.files.insert(stream, w);
        result
    }

    fn read_file_inner(&mut self, w: &mut Watched<W::File>) -> Result<bool, SourceError> {
        let st = match self.world.fstat(&w.file) {
            Ok(st) => st,
            Err(_) => return Ok(false),
        };
        w.size = st.len;
        if st.nlink == 0 {
            w.gone = true;
        }
        if w.identity_pending {
            if w.size == 0 {
                return Ok(false);
            }
            let head = read_head(&self.world, &w.file, w.size);
            match self.classify((w.dev, w.ino), &w.file, &head, w.size) {
                Some(Verdict::Wait) => return Ok(false),
                Some(Verdict::Continue(c)) => {
                    w.head = head;
                    w.fp = fingerprint_of(&w.head);
                    self.start_at(w, c);
                }
                None => {}
            }
            w.identity_pending = false;
        }
        if self.was_truncated(w) {
            self.on_truncated(w)?;
        }
        let mut read_total = 0u64;
        let read_time = self.world.wall_ms();
        while read_total < FAIR_SHARE {
            let n = match self.world.read_at(&w.file, &mut self.chunk, w.read_pos) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(file = %w.path.display(), error = %e, "read failed");
                    break;
                }
            };
            read_total += n as u64;
            let chunk_start = w.read_pos;
            w.read_pos += n as u64;
            let chunk = std::mem::take(&mut self.chunk);
            {
                let records = &mut self.records;
                let counters = &self.counters;
                w.consumed = feed_chunk(
                    &mut w.splitter,
                    &mut w.parser,
                    &mut w.lines_to,
                    chunk_start,
                    &chunk[..n],
                    |parser, line, truncated, line_start| {
                        emit_line(records, parser, counters, line, truncated, line_start, read_time);
                    },
                );
            }
            w.note_read(chunk_start, &chunk[..n]);
            if w.head.len() < FINGERPRINT_BYTES && w.read_pos > w.head.len() as u64 {
                // The head grows from the bytes read, like the tail: read
                // again from the file it could be a truncated file's new
                // content, and the truncation would go unseen.
                let have = w.head.len();
                match (have as u64).checked_sub(chunk_start) {
                    Some(skip) => {
                        let skip = skip as usize;
                        let take = (FINGERPRINT_BYTES - have).min(n - skip);
                        w.head.extend_from_slice(&chunk[skip..skip + take]);
                    }
                    None => w.head = read_head(&self.world, &w.file, w.read_pos),
                }
                w.fp = fingerprint_of(&w.head);
            }
            self.chunk = chunk;
            if self.records.buf.len() >= BATCH_BYTES {
                self.send_batch(w)?;
            }
        }
        let now = self.world.now();
        if read_total > 0 {
            self.counters.m.received_bytes.inc_by(read_total);
            w.idle_since = None;
            self.send_batch(w)?;
        } else if w.idle_since.is_none() {
            w.idle_since = Some(now);
        }
        let m = &self.cx.metrics;
        m.file_read_offset.get_or_create(&w.labels).set(w.read_pos as i64);
        m.file_lag
            .get_or_create(&w.labels)
            .set(w.size.saturating_sub(w.read_pos) as i64);
        m.file_checkpoint_lag
            .get_or_create(&w.labels)
            .set(w.size.saturating_sub(w.tracker.acked().offset) as i64);
        if w.tracker.unsettled() == 0 {
            w.settled_at = now;
        }
        m.file_checkpoint_age
            .get_or_create(&w.labels)
            .set(now.saturating_duration_since(w.settled_at).as_secs() as i64);
        Ok(read_total > 0)
    }

    /// Does the file no longer hold what we read: shorter than the read
    /// position, other first bytes, or other bytes before the last batch's
    /// end (truncated and regrown past it with the same first bytes).
    fn was_truncated(&self, w: &mut Watched<W::File>) -> bool {
        if let Ok(st) = self.world.fstat(&w.file) {
            w.size = st.len;
        }
        let here = Position {
            offset: w.mark.offset.min(w.read_pos),
            head: w.fp,
            tail: if w.mark.offset <= w.read_pos {
                w.mark.tail
            } else {
                Fingerprint::default()
            },
        };
        w.size < w.read_pos || !holds(&self.world, &w.file, w.size, &here)
    }

    fn on_truncated(&mut self, w: &mut Watched<W::File>) -> Result<(), SourceError> {
        tracing::info!(file = %w.path.display(), was = w.read_pos, now = w.size, "file truncated; reading it from the start");
        // Lines already parsed belong to the old content: send them first.
        self.send_batch(w)?;
        self.remember(Former {
            head: w.fp,
            head_bytes: Some(std::mem::take(&mut w.head)),
            points: w.points(),
            durable: w.tracker.acked(),
        });
        w.recent.clear();
        w.forget_read();
        w.splitter.reset();
        w.parser.reset_held();
        w.read_pos = 0;
        w.consumed = 0;
        w.lines_to = 0;
        w.head = read_head(&self.world, &w.file, w.size);
        w.fp = fingerprint_of(&w.head);
        w.mark = Position {
            offset: 0,
            head: w.fp,
            tail: Fingerprint::default(),
        };
        Ok(())
    }

    /// The position at `w.consumed`: where a batch sent now ends.
    fn position_here(&self, w: &Watched<W::File>) -> Position {
        let tail = match w.read_tail {
            Some((at, tail)) if at == w.consumed => tail,
            _ => tail_at(&self.world, &w.file, w.consumed).unwrap_or(UNREADABLE),
        };
        Position {
            offset: w.consumed,
            head: w.fp,
            tail,
        }
    }

    /// Sends the records parsed so far, with an ack token covering
    /// everything up to `w.consumed`.
    fn send_batch(&mut self, w: &mut Watched<W::File>) -> Result<(), SourceError> {
        if self.records.is_empty() {
            // Lines that produced no record (empty lines) are still consumed:
            // track an empty batch so the checkpoint can pass them.
            if w.consumed != w.mark.offset {
                let at = self.position_here(w);
                let seq = w.push_mark(at);
                w.tracker.ack(seq, true);
                self.checkpoints_dirty = true;
            }
            return Ok(());
        }
        let mut records = std::mem::replace(
            &mut self.records,
            Records {
                buf: Vec::with_capacity(BATCH_BYTES + 4096),
                ..Records::default()
            },
        );
        let count = records.len() as u64;
        tracing::trace!(file = %w.path.display(), records = count, end = w.consumed, read_pos = w.read_pos, "sending batch");
        let bytes = records.buf.len().min(self.cx.memory_limit).max(1);
        let at = self.position_here(w);
        let seq = w.push_mark(at);
        let ack = AckToken::with_records(w.stream, seq, count as u32, self.ack_tx.clone());
        let memory = self.cx.memory.clone();
        let force = self.cx.force.clone();
        let outputs = self.cx.outputs.clone();
        let fields = w.fields.clone();
        let sent = self.cx.rt.block_on(async move {
            let permit = tokio::select! {
                p = memory.acquire_many_owned(bytes as u32) => p.ok(),
                _ = force.cancelled() => None,
            };
            // A batch not handed to every output is failed: dropped as is,
            // its token would report it delivered.
            let Some(permit) = permit else {
                ack.fail();
                return false;
            };
            records.permit = Some(permit);
            let mut batch = Batch::new(records, Some(ack));
            batch.fields.extend(fields);
            let n = outputs.len();
            for (i, tx) in outputs.iter().enumerate() {
                let b = if i + 1 == n { None } else { Some(batch.clone()) };
                let b = b.unwrap_or_else(|| batch.clone());
                let sent = tokio::select! {
                    r = tx.send(b) => r.is_ok(),
                    _ = force.cancelled() => false,
                };
                if !sent {
                    batch.fail();
                    return false;
                }
            }
            true
        });
        if !sent && !self.cx.force.is_cancelled() {
            return Err(SourceError::Downstream(self.cx.id.clone()));
        }
        self.counters.m.received_events.inc_by(count);
        self.counters.m.sent_events.inc_by(count);
        self.counters.m.unacked_events.inc_by(count as i64);
        Ok(())
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

    /// Emits held partial lines older than the timeout (or all, at the end).
    /// A file quiet for the timeout gets its last line and every joined part
    /// emitted; in a busy file, a joined line whose last part is that old is
    /// emitted alone (its stream went quiet mid-line while the other one
    /// writes), so the checkpoint is not held back for good.
    fn flush_partials(&mut self, all: bool) -> Result<(), SourceError> {
        let timeout = self.cfg.partial_line_timeout;
        let cutoff = if all {
            i64::MAX
        } else {
            self.world.wall_ms().saturating_sub(timeout.as_millis() as i64)
        };
        let now = self.world.now();
        let streams: Vec<(u64, bool)> = self
            .files
            .values()
            .filter_map(|w| {
                let quiet = all
                    || w.idle_since
                        .is_some_and(|t| now.saturating_duration_since(t) >= timeout);
                if quiet && (w.splitter.has_pending() || w.parser.has_held()) {
                    Some((w.stream, true))
                } else if w.parser.has_held_since(cutoff) {
                    Some((w.stream, false))
                } else {
                    None
                }
            })
            .collect();
        for (stream, whole) in streams {
            let Some(mut w) = self.files.remove(&stream) else {
                continue;
            };
            let read_time = self.world.wall_ms();
            {
                let records = &mut self.records;
                let counters = &self.counters;
                let parser = &mut w.parser;
                let line_start = w.lines_to;
                if whole {
                    // The last line first: it may be the part that completes
                    // a held partial line.
                    w.splitter.flush(|line, truncated| {
                        emit_line(records, parser, counters, line, truncated, line_start, read_time);
                    });
                }
                let cutoff = if whole { i64::MAX } else { cutoff };
                loop {
                    let start = records.buf.len();
                    let Some((parsed, cut)) = parser.flush_held(cutoff, &mut records.buf) else {
                        break;
                    };
                    push_record(records, counters, start, parsed, cut, parser.stamped());
                }
            }
            if whole {
                w.lines_to = w.read_pos;
            }
            w.consumed = w.parser.held_from().unwrap_or(w.lines_to);
            let r = self.send_batch(&mut w);
            self.files.insert(stream, w);
            r?;
        }
        Ok(())
    }

    fn save_checkpoints(&mut self) {
        let mut all: Vec<Checkpoint> = self.saved.values().cloned().collect();
        let formers = self
            .formers
            .iter()
            .filter_map(|f| f.to_saved(|h| self.hold_state(h) == Some(true)))
            .collect();
        for w in self.files.values() {
            let at = w.tracker.acked();
            all.push(Checkpoint {
                dev: w.dev,
                ino: w.ino,
                fingerprint: at.head,
                offset: at.offset,
                tail: at.tail,
                path: w.path.display().to_string(),
            });
        }
        let saved = self.world.save_checkpoints(&Saved { files: all, formers });
        // Logged, counted and reported there; retried while dirty.
        self.checkpoint_health.record(&saved);
        if saved.is_ok() {
            self.checkpoints_dirty = false;
        }
    }
}

impl<F> Watched<F> {
    /// Keeps what [`Watched::read_tail`] needs from a chunk just read at
    /// `start` (after `consumed` moved for it): the tail CRC at `consumed`,
    /// and the last bytes before `read_pos` for the next chunk.
    fn note_read(&mut self, start: u64, chunk: &[u8]) {
        if self.behind_end != start {
            self.behind.clear();
        }
        let unchanged = self.read_tail.is_some_and(|(at, _)| at == self.consumed);
        if !unchanged {
            let from = self.consumed.saturating_sub(FINGERPRINT_BYTES as u64);
            let behind_from = start - self.behind.len() as u64;
            let end = self
                .consumed
                .checked_sub(start)
                .map(|e| e as usize)
                .filter(|&e| e <= chunk.len());
            self.read_tail = match end {
                Some(end) if from >= start => Some(fingerprint_of(&chunk[(from - start) as usize..end])),
                Some(end) if from >= behind_from => {
                    let mut bytes = self.behind[(from - behind_from) as usize..].to_vec();
                    bytes.extend_from_slice(&chunk[..end]);
                    Some(fingerprint_of(&bytes))
                }
                _ => None,
            }
            .map(|tail| (self.consumed, tail));
        }
        if chunk.len() >= FINGERPRINT_BYTES {
            self.behind.clear();
            self.behind.extend_from_slice(&chunk[chunk.len() - FINGERPRINT_BYTES..]);
        } else {
            self.behind.extend_from_slice(chunk);
            let excess = self.behind.len().saturating_sub(FINGERPRINT_BYTES);
            self.behind.drain(..excess);
        }
        self.behind_end = start + chunk.len() as u64;
    }

    /// Reading moves elsewhere (a new start, a truncation): what was read
    /// before says nothing about the bytes there.
    fn forget_read(&mut self) {
        self.behind.clear();
        self.read_tail = None;
    }

    /// Registers a batch ending at `at` with the tracker.
    fn push_mark(&mut self, at: Position) -> u64 {
        let seq = self.tracker.push(at);
        self.mark = at;
        if self.recent.len() >= MAX_POINTS {
            self.recent.pop_front();
        }
        self.recent.push_back((at, seq));
        seq
    }

    /// The recent batch ends, each with the batch to wait for unless it is
    /// already released; with none, the acknowledged position.
    fn points(&self) -> Vec<Point> {
        let mut points: Vec<Point> = self
            .recent
            .iter()
            .map(|&(at, seq)| (at, (!self.tracker.released(seq)).then_some((self.stream, seq))))
            .collect();
        if points.is_empty() {
            points.push((self.mark, None));
        }
        points
    }
}

/// Splits a chunk read at file offset `chunk_start` into lines, hands each
/// to `emit(parser, line, truncated, line_start)`, advances `lines_to` past
/// the last complete line, and returns the offset a batch may end at: never
/// past the first part of a partial line the parser holds.
fn feed_chunk(
    splitter: &mut LineSplitter,
    parser: &mut Parser,
    lines_to: &mut u64,
    chunk_start: u64,
    chunk: &[u8],
    mut emit: impl FnMut(&mut Parser, &[u8], bool, u64),
) -> u64 {
    let mut line_start = *lines_to;
    let fed = splitter.feed(chunk, |line, truncated, end| {
        emit(parser, line, truncated, line_start);
        line_start = chunk_start + end as u64;
    });
    if let Some(k) = fed.complete_to {
        *lines_to = chunk_start + k as u64;
    }
    parser.held_from().unwrap_or(*lines_to)
}

/// Turns one line into a record at the end of `records` (or hands it to the
/// parser to hold, when it is part of a partial line). `line_start` is its
/// offset in the file.
fn emit_line(
    records: &mut Records,
    parser: &mut Parser,
    counters: &SourceCounters,
    line: &[u8],
    truncated: bool,
    line_start: u64,
    read_time: i64,
) {
    if line.is_empty() || line.iter().all(|b| b.is_ascii_whitespace()) {
        counters.m.discarded("empty_line", 1);
        return;
    }
    let lossy;
    let text = match std::str::from_utf8(line) {
        Ok(s) => s,
        Err(_) => match utf8_prefix(line).filter(|_| truncated) {
            Some(s) => s,
            None => {
                counters.invalid_utf8.inc();
                lossy = String::from_utf8_lossy(line);
                &lossy
            }
        },
    };
    let start = records.buf.len();
    match parser.parse_at(text, line_start, truncated, read_time, &mut records.buf) {
        Step::Record { parsed, cut } => {
            let stamped = parser.stamped();
            push_record(records, counters, start, parsed, truncated || cut, stamped)
        }
        Step::Held => {}
    }
}

/// Counts what the parser reported about the record it wrote at `start`,
/// marks it if truncated, and registers it.
fn push_record(
    records: &mut Records,
    counters: &SourceCounters,
    start: usize,
    parsed: Parsed,
    truncated: bool,
    stamped: bool,
) {
    let mut mask = parsed.key_mask;
    if parsed.fallback {
        counters.not_json.inc();
    }
    if parsed.time_missing {
        counters.time_missing.inc();
    }
    if truncated {
        counters.truncated.inc();
        const MARK: &str = "logferry_truncated";
        let bit = parse::key_bit(MARK.as_bytes());
        let rec = &records.buf[start..];
        if rec.last() == Some(&b'}') && (mask & bit == 0 || !parse::has_top_level_key(rec, MARK)) {
            records.buf.pop();
            records.buf.extend_from_slice(b",\"logferry_truncated\":true}");
            mask |= bit;
        }
    }
    if stamped {
        records.push_stamped(start, parsed.ts_ms, mask);
    } else {
        records.push_written(start, parsed.ts_ms, mask);
    }
}

#[cfg(test)]
mod tests {
    use super::parse::{ParserKind, ParserOptions};
    use super::*;
    use proptest::prelude::*;

    /// A CRI line: (stream, is P, content).
    fn cri_line((stdout, p, text): &(bool, bool, String)) -> String {
        let stream = if *stdout { "stdout" } else { "stderr" };
        let tag = if *p { "P" } else { "F" };
        format!("2026-11-26T00:00:00Z {stream} {tag} {text}\n")
    }

    /// Reads `data` in chunks cut at `cuts`; returns the joined `log` values
    /// and the batch end offset after each chunk.
    fn read(data: &[u8], cuts: &[usize]) -> (Vec<String>, Vec<u64>, Parser) {
        let mut splitter = LineSplitter::new(1 << 20);
        let mut parser = Parser::new(&ParserOptions {
            kind: ParserKind::Cri,
            ..Default::default()
        })
        .unwrap();
        let (mut logs, mut ends, mut lines_to, mut prev) = (Vec::new(), Vec::new(), 0u64, 0usize);
        for &cut in cuts.iter().chain([data.len()].iter()) {
            let cut = cut.clamp(prev, data.len());
            let end = feed_chunk(
                &mut splitter,
                &mut parser,
                &mut lines_to,
                prev as u64,
                &data[prev..cut],
                |p, line, t, start| {
                    let mut out = Vec::new();
                    if let Step::Record { .. } = p.parse_at(std::str::from_utf8(line).unwrap(), start, t, 0, &mut out) {
                        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
                        logs.push(v["log"].as_str().unwrap().to_string());
                    }
                },
            );
            ends.push(end);
            prev = cut;
        }
        (logs, ends, parser)
    }

    proptest! {
        /// Whatever the chunking: the same joined records; batch ends never
        /// decrease and stop at the first byte of a held sequence; restarting
        /// from the last end and completing the held sequences yields exactly
        /// the records that were held (nothing lost, nothing twice).
        #[test]
        fn joined_records_and_batch_ends_do_not_depend_on_chunking(
            lines in proptest::collection::vec((any::<bool>(), any::<bool>(), "[a-z]{0,12}"), 0..40),
            cuts in proptest::collection::vec(0usize..2000, 0..8),
        ) {
            let text: String = lines.iter().map(cri_line).collect();
            let data = text.as_bytes();
            let mut cuts = cuts;
            cuts.sort_unstable();
            let (whole, _, _) = read(data, &[]);
            let (logs, ends, parser) = read(data, &cuts);
            prop_assert_eq!(&logs, &whole);
            prop_assert!(ends.windows(2).all(|w| w[0] <= w[1]), "{:?}", ends);
            // The first line of the oldest open sequence starts at the last end.
            let last = *ends.last().unwrap();
            let mut offset = 0u64;
            let mut open: [Option<u64>; 2] = [None, None];
            for l in &lines {
                let i = usize::from(!l.0);
                if l.1 { open[i].get_or_insert(offset); } else { open[i] = None; }
                offset += cri_line(l).len() as u64;
            }
            let first_held = open.iter().flatten().min().copied();
            prop_assert_eq!(last, first_held.unwrap_or(data.len() as u64));
            prop_assert_eq!(parser.held_from(), first_held);
            // Restart at `last`, with every open sequence completed: every
            // record of the completed file arrives (some twice: at least once).
            let mut completion = String::new();
            for (i, o) in open.iter().enumerate() {
                if o.is_some() {
                    completion.push_str(&cri_line(&(i == 0, false, "END".into())));
                }
            }
            let (again, _, p2) = read(format!("{}{completion}", &text[last as usize..]).as_bytes(), &[]);
            prop_assert!(!p2.has_held());
            let (reference, _, _) = read(format!("{text}{completion}").as_bytes(), &[]);
            let mut delivered: Vec<&String> = logs.iter().chain(&again).collect();
            for r in &reference {
                let pos = delivered.iter().position(|d| *d == r);
                prop_assert!(pos.is_some(), "lost {:?}", r);
                if let Some(pos) = pos {
                    delivered.swap_remove(pos);
                }
            }
            // Each held sequence arrives once, completed.
            prop_assert_eq!(again.iter().filter(|l| l.ends_with("END")).count(), open.iter().flatten().count());
        }
    }
}
