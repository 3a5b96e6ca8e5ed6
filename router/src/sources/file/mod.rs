//! The file source: tails the files an application writes to a shared volume.
//!
//! Design constraints:
//! - **One thread per source, blocking reads.** Regular files never block on
//!   read in the way sockets do, and tokio's fs layer would cost a thread hop
//!   per call. The thread hands batches to the async pipeline with
//!   `block_on(send)`, so a slow sink blocks this thread: the files are the
//!   queue, memory stays bounded.
//! - **Identity is device + inode + fingerprint**, never the name. A renamed
//!   file keeps being read through its open descriptor until it has been
//!   quiet for `rotate_wait`; a new file at the old name is read from 0; a
//!   truncated file (copytruncate) restarts at 0; and a new file whose first
//!   bytes equal those of a file just truncated is the copy and continues at
//!   the offset already delivered (no repeats, no loss).
//! - **inotify wakes, rescans decide.** `notify` only shortens the wait; the
//!   periodic rescan (`glob_interval`) is what finds files on volumes without
//!   inotify (NFS, EFS).
//! - **Checkpoints move on acks only** (see `checkpoint.rs`).

pub mod config;
pub mod kubernetes;
pub mod parse;
pub mod tail;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
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
use parse::{Parsed, Parser, Step};
use tail::{LineSplitter, utf8_prefix};

use crate::checkpoint::{AckTracker, Checkpoint, CheckpointError, CheckpointStore, Fingerprint};
use crate::event::{Ack, AckToken, Batch, Fields, Records};
use crate::metrics::{ComponentMetrics, FileLabels, Metrics};

/// Bytes of a file's start that identify it.
const FINGERPRINT_BYTES: usize = 1024;
/// A copy is recognised only on a fingerprint at least this long.
const MIN_COPY_FINGERPRINT: u32 = 64;
/// How long a file that may be a copy in progress is left unread.
const COPY_WAIT: Duration = Duration::from_secs(10);
/// How long a copy of a live file waits for that file's truncation.
const LIVE_COPY_WAIT: Duration = Duration::from_secs(1);
/// Read size per call.
const CHUNK: usize = 64 * 1024;
/// A batch is sent once its records reach this many bytes.
const BATCH_BYTES: usize = 256 * 1024;
/// Bytes read from one file before the others get a turn.
const FAIR_SHARE: u64 = 1024 * 1024;
/// Idle wait when nothing was read (inotify usually ends it earlier).
const IDLE_WAIT: Duration = Duration::from_millis(250);
/// How often the checkpoint file is rewritten when something changed. What
/// is delivered but not yet saved is delivered again after a crash, so this
/// bounds the duplicates of a kill -9; one small fsynced write five times a
/// second costs nothing next to the data path.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// Upper bound on waiting for outstanding acks at shutdown.
const ACK_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

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
            let mut s = FileSource::new(cfg, cx)?;
            let result = s.run();
            if let Err(e) = &result {
                tracing::error!(error = %e, "source stopped");
            }
            result
        })
}

/// A file being tailed.
struct Watched {
    stream: u64,
    path: PathBuf,
    file: File,
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

/// What a new file is, when it looks like a copy.
enum Identity {
    /// Still being written: look again later.
    Wait,
    /// A copy: continue at this offset.
    Start(u64),
}

struct SourceCounters {
    m: ComponentMetrics,
    not_json: Counter,
    invalid_utf8: Counter,
    truncated: Counter,
    time_missing: Counter,
    kubernetes_name: Counter,
}

struct FileSource {
    cfg: FileSourceConfig,
    cx: SourceContext,
    exclude: globset::GlobSet,
    store: CheckpointStore,
    /// Saved checkpoints of files not open now, by (dev, ino).
    saved: HashMap<(u64, u64), Checkpoint>,
    /// Fingerprint, delivered offset and first bytes (when known) of files
    /// that were truncated or replaced: a new file starting with the same
    /// bytes is their copy.
    truncated: Vec<(Fingerprint, u64, Option<Vec<u8>>)>,
    /// New files that look like a copy of a live file: wait for its truncation.
    deferred: HashMap<(u64, u64), Instant>,
    files: BTreeMap<u64, Watched>,
    by_key: HashMap<(u64, u64), u64>,
    next_stream: u64,
    ack_tx: std_mpsc::Sender<Ack>,
    ack_rx: std_mpsc::Receiver<Ack>,
    wake_rx: std_mpsc::Receiver<()>,
    _wake_keepalive: std_mpsc::SyncSender<()>,
    rescan_flag: Arc<AtomicBool>,
    _watcher: Option<notify::RecommendedWatcher>,
    watched_dirs: HashSet<PathBuf>,
    counters: SourceCounters,
    chunk: Vec<u8>,
    records: Records,
    checkpoints_dirty: bool,
}

impl FileSource {
    fn new(cfg: FileSourceConfig, cx: SourceContext) -> Result<Self, SourceError> {
        let store = CheckpointStore::new(&cx.data_dir, &cx.id);
        let saved = store.load()?.into_iter().map(|c| ((c.dev, c.ino), c)).collect();
        let (ack_tx, ack_rx) = std_mpsc::channel();
        let (wake_tx, wake_rx) = std_mpsc::sync_channel(1);
        // Held so the channel stays connected even if the watcher's thread
        // ends; a disconnected channel would make every idle wait return at once.
        let wake_keepalive = wake_tx.clone();
        let rescan_flag = Arc::new(AtomicBool::new(false));
        let flag = rescan_flag.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                use notify::EventKind::*;
                if matches!(
                    ev.kind,
                    Create(_) | Remove(_) | Modify(notify::event::ModifyKind::Name(_))
                ) {
                    flag.store(true, Ordering::Release);
                }
                // A full channel means a wake-up is already pending.
                let _ = wake_tx.try_send(());
            }
        })
        .map_err(|e| tracing::warn!(error = %e, "inotify unavailable; relying on rescans"))
        .ok();
        let m = cx.metrics.component(&cx.id, "file");
        let counters = SourceCounters {
            not_json: m.line_issue("not_json"),
            invalid_utf8: m.line_issue("invalid_utf8"),
            truncated: m.line_issue("truncated"),
            time_missing: m.line_issue("time_missing"),
            kubernetes_name: m.line_issue("kubernetes_name"),
            m,
        };
        Ok(FileSource {
            exclude: cfg.exclude_set(),
            cfg,
            cx,
            store,
            saved,
            truncated: Vec::new(),
            deferred: HashMap::new(),
            files: BTreeMap::new(),
            by_key: HashMap::new(),
            next_stream: 0,
            ack_tx,
            ack_rx,
            wake_rx,
            _wake_keepalive: wake_keepalive,
            rescan_flag,
            _watcher: watcher,
            watched_dirs: HashSet::new(),
            counters,
            chunk: vec![0; CHUNK],
            records: Records::default(),
            checkpoints_dirty: false,
        })
    }

    fn run(&mut self) -> Result<(), SourceError> {
        self.discover(true);
        let mut last_scan = Instant::now();
        let mut last_checkpoint = Instant::now();
        let mut last_progress = Instant::now();
        let mut drain_started: Option<Instant> = None;
        let result = loop {
            if self.cx.force.is_cancelled() {
                break Ok(());
            }
            if self.cx.shutdown.is_cancelled() {
                // Draining: the app may still be writing its last lines.
                let started = *drain_started.get_or_insert_with(|| {
                    tracing::debug!("draining: reading until the files are quiet");
                    Instant::now()
                });
                let quiet_since = last_progress.max(started);
                if quiet_since.elapsed() >= self.cx.drain_quiet || started.elapsed() >= self.cx.drain_read_budget {
                    if let Err(e) = self.flush_partials(true) {
                        break Err(e);
                    }
                    break Ok(());
                }
            }
            self.drain_acks();
            let due = last_scan.elapsed() >= self.cfg.glob_interval;
            if !self.cx.exit_on_eof && (due || self.rescan_flag.swap(false, Ordering::AcqRel)) {
                self.discover(false);
                last_scan = Instant::now();
            }
            let progressed = match self.read_round() {
                Ok(p) => p,
                Err(e) => break Err(e),
            };
            if let Err(e) = self.housekeeping() {
                break Err(e);
            }
            if self.checkpoints_dirty && last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                self.save_checkpoints();
                last_checkpoint = Instant::now();
            }
            if progressed {
                last_progress = Instant::now();
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
            None => Instant::now() + ACK_DRAIN_TIMEOUT,
        };
        while self.files.values().any(|w| w.tracker.unsettled() > 0)
            && !self.cx.force.is_cancelled()
            && Instant::now() < deadline
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

    /// Waits for a watcher event or `IDLE_WAIT`. Never returns early for
    /// lack of a watcher (no inotify, or its thread ended when a watched
    /// directory went away): that would spin.
    fn idle_wait(&self) {
        match self.wake_rx.recv_timeout(IDLE_WAIT) {
            Ok(()) | Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(IDLE_WAIT),
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
            if w.tracker.ack(ack.seq, ack.delivered) {
                self.checkpoints_dirty = true;
                let m = &self.cx.metrics;
                let acked = w.tracker.acked().0;
                m.file_checkpoint_offset.get_or_create(&w.labels).set(acked as i64);
                m.file_checkpoint_lag
                    .get_or_create(&w.labels)
                    .set(w.size.saturating_sub(acked) as i64);
            }
        }
    }

    /// Finds files matching the globs; notices renamed and deleted ones.
    fn discover(&mut self, initial: bool) {
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let patterns = self.cfg.include.clone();
        for pattern in &patterns {
            self.watch_dir_of(pattern);
            let Ok(paths) = glob::glob(pattern) else { continue };
            for path in paths.flatten() {
                if self.exclude.is_match(&path) {
                    continue;
                }
                let Ok(meta) = std::fs::metadata(&path) else { continue };
                if !meta.is_file() {
                    continue;
                }
                let key = (meta.dev(), meta.ino());
                if !seen.insert(key) {
                    continue;
                }
                if let Some(stream) = self.by_key.get(&key) {
                    if let Some(w) = self.files.get_mut(stream) {
                        if w.path != path {
                            tracing::debug!(from = %w.path.display(), to = %path.display(), "file renamed");
                            w.path = path;
                        }
                        w.gone = false;
                    }
                    continue;
                }
                self.open(path, key, meta.len(), initial);
            }
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

    fn watch_dir_of(&mut self, pattern: &str) {
        let Some(watcher) = self._watcher.as_mut() else { return };
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
        if dir.as_os_str().is_empty() || self.watched_dirs.contains(&dir) || !dir.is_dir() {
            return;
        }
        use notify::Watcher;
        let mode = if pattern.contains("**") {
            notify::RecursiveMode::Recursive
        } else {
            notify::RecursiveMode::NonRecursive
        };
        if watcher.watch(&dir, mode).is_ok() {
            self.watched_dirs.insert(dir);
        }
    }

    fn open(&mut self, path: PathBuf, key: (u64, u64), size: u64, initial: bool) {
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot open file");
                return;
            }
        };
        let head = read_head(&file, size);
        let fp = fingerprint_of(&head);
        // Our own checkpoint of this very file comes first; copy detection
        // only applies to files we have no record of.
        let saved = self.saved.remove(&key);
        let start = match saved {
            Some(cp) if cp.offset <= size && fingerprint_matches(&file, size, cp.fingerprint) => cp.offset,
            saved => match self.classify_copy(key, &head, size, &path, initial) {
                Some(Identity::Wait) => return,
                Some(Identity::Start(offset)) => offset,
                None => match saved {
                    Some(cp) => {
                        // Same inode, other content: reused inode or truncated
                        // while we were down. Its copy, if any, continues the
                        // old offset.
                        self.truncated.push((cp.fingerprint, cp.offset, None));
                        0
                    }
                    None if initial && self.cfg.read_from == ReadFrom::End => size,
                    None => 0,
                },
            },
        };
        // Too few bytes to tell a new file from a copy that is being
        // written: decide when it has grown (see `read_file_inner`).
        let identity_pending = !initial && start == 0 && (size as usize) < FINGERPRINT_BYTES;
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
        tracing::debug!(file = %path.display(), offset = start, "tailing file");
        self.by_key.insert(key, stream);
        self.files.insert(
            stream,
            Watched {
                stream,
                path,
                file,
                dev: key.0,
                ino: key.1,
                fp,
                head,
                read_pos: start,
                consumed: start,
                lines_to: start,
                splitter: LineSplitter::new(self.cfg.max_line_size.as_u64() as usize),
                parser,
                tracker: AckTracker::new(start, fp),
                idle_since: None,
                settled_at: Instant::now(),
                gone: false,
                size,
                labels,
                identity_pending,
                fields,
            },
        );
        self.checkpoints_dirty = true;
    }

    /// Is a new file (first bytes `head`) a copy of a truncated or a live
    /// file? `None` when it is not.
    fn classify_copy(
        &mut self,
        key: (u64, u64),
        head: &[u8],
        size: u64,
        path: &Path,
        initial: bool,
    ) -> Option<Identity> {
        if self.cx.exit_on_eof {
            // A backfill reads what is there; nothing is being rotated.
            return None;
        }
        let truncated = self
            .truncated
            .iter()
            .enumerate()
            .map(|(i, (t, _, h))| (i, relation(head, *t, h.as_deref())))
            .find(|(_, r)| *r != Relation::Unrelated);
        if let Some((i, rel)) = truncated {
            let offset = self.truncated[i].1;
            if (rel == Relation::MaybeCopy || size < offset) && self.defer(key, COPY_WAIT) {
                return Some(Identity::Wait);
            }
            self.deferred.remove(&key);
            if rel != Relation::Copy {
                return None;
            }
            self.truncated.swap_remove(i);
            tracing::info!(file = %path.display(), offset, "file is the copy of a truncated file; continuing where it was");
            return Some(Identity::Start(offset.min(size)));
        }
        if initial {
            // Files present at start-up are not copies in progress.
            return None;
        }
        let live = self
            .files
            .values()
            .filter(|w| !w.gone && (w.dev, w.ino) != key)
            .map(|w| (w.consumed, relation(head, w.fp, Some(&w.head))))
            .find(|(_, r)| *r != Relation::Unrelated);
        if let Some((consumed, rel)) = live {
            // A copy of a live file (copytruncate in progress): give the
            // truncation time to show, then continue from the live file's
            // position (a plain `cp` of a live log).
            let wait = if rel == Relation::Copy {
                LIVE_COPY_WAIT
            } else {
                COPY_WAIT
            };
            if self.defer(key, wait) {
                return Some(Identity::Wait);
            }
            self.deferred.remove(&key);
            return (rel == Relation::Copy).then(|| Identity::Start(consumed.min(size)));
        }
        self.deferred.remove(&key);
        None
    }

    /// Starts or continues waiting on a file; true while it should wait.
    fn defer(&mut self, key: (u64, u64), max: Duration) -> bool {
        self.deferred.entry(key).or_insert_with(Instant::now).elapsed() < max
    }

    /// Reads a fair share of every file; true if any data was read.
    fn read_round(&mut self) -> Result<bool, SourceError> {
        let streams: Vec<u64> = self.files.keys().copied().collect();
        let mut progressed = false;
        for stream in streams {
            progressed |= self.read_file(stream)?;
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

    fn read_file_inner(&mut self, w: &mut Watched) -> Result<bool, SourceError> {
        let meta = match w.file.metadata() {
            Ok(m) => m,
            Err(_) => return Ok(false),
        };
        w.size = meta.len();
        if meta.nlink() == 0 {
            w.gone = true;
        }
        if w.identity_pending {
            if w.size == 0 {
                return Ok(false);
            }
            let head = read_head(&w.file, w.size);
            match self.classify_copy((w.dev, w.ino), &head, w.size, &w.path, false) {
                Some(Identity::Wait) => return Ok(false),
                Some(Identity::Start(offset)) => {
                    w.head = head;
                    w.fp = fingerprint_of(&w.head);
                    w.read_pos = offset;
                    w.consumed = offset;
                    w.lines_to = offset;
                    w.tracker = AckTracker::new(offset, w.fp);
                }
                None => {}
            }
            w.identity_pending = false;
        }
        if w.size < w.read_pos || !self.same_start(w) {
            self.on_truncated(w)?;
        }
        let mut read_total = 0u64;
        let read_time = now_ms();
        while read_total < FAIR_SHARE {
            let n = match w.file.read_at(&mut self.chunk, w.read_pos) {
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
            self.chunk = chunk;
            if w.fp.len < FINGERPRINT_BYTES as u32 && w.read_pos > w.fp.len as u64 {
                w.head = read_head(&w.file, w.read_pos);
                w.fp = fingerprint_of(&w.head);
            }
            if self.records.buf.len() >= BATCH_BYTES {
                self.send_batch(w)?;
            }
        }
        if read_total > 0 {
            self.counters.m.received_bytes.inc_by(read_total);
            w.idle_since = None;
            self.send_batch(w)?;
        } else if w.idle_since.is_none() {
            w.idle_since = Some(Instant::now());
        }
        let m = &self.cx.metrics;
        m.file_read_offset.get_or_create(&w.labels).set(w.read_pos as i64);
        m.file_lag
            .get_or_create(&w.labels)
            .set(w.size.saturating_sub(w.read_pos) as i64);
        m.file_checkpoint_lag
            .get_or_create(&w.labels)
            .set(w.size.saturating_sub(w.tracker.acked().0) as i64);
        let now = Instant::now();
        if w.tracker.unsettled() == 0 {
            w.settled_at = now;
        }
        m.file_checkpoint_age
            .get_or_create(&w.labels)
            .set(now.saturating_duration_since(w.settled_at).as_secs() as i64);
        Ok(read_total > 0)
    }

    /// Does the file still start with the bytes we fingerprinted?
    fn same_start(&self, w: &Watched) -> bool {
        w.fp.len == 0 || fingerprint_matches(&w.file, w.size, w.fp)
    }

    fn on_truncated(&mut self, w: &mut Watched) -> Result<(), SourceError> {
        tracing::info!(file = %w.path.display(), was = w.read_pos, now = w.size, "file truncated; reading it from the start");
        // Lines already parsed belong to the old content: send them first.
        self.send_batch(w)?;
        self.truncated
            .push((w.fp, w.consumed, Some(std::mem::take(&mut w.head))));
        if self.truncated.len() > 64 {
            self.truncated.remove(0);
        }
        w.splitter.reset();
        w.parser.reset_held();
        w.read_pos = 0;
        w.consumed = 0;
        w.lines_to = 0;
        w.head = read_head(&w.file, w.size);
        w.fp = fingerprint_of(&w.head);
        Ok(())
    }

    /// Sends the records parsed so far, with an ack token covering
    /// everything up to `w.consumed`.
    fn send_batch(&mut self, w: &mut Watched) -> Result<(), SourceError> {
        if self.records.is_empty() {
            // Lines that produced no record (empty lines) are still consumed:
            // track an empty batch so the checkpoint can pass them.
            if w.consumed != w.tracker_end() {
                let seq = w.tracker.push(w.consumed, w.fp);
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
        let seq = w.tracker.push(w.consumed, w.fp);
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
        let done: Vec<u64> = self
            .files
            .values()
            .filter(|w| {
                w.gone
                    && !w.splitter.has_pending()
                    && !w.parser.has_held()
                    && w.tracker.unsettled() == 0
                    && w.idle_since.is_some_and(|t| exit || t.elapsed() >= rotate_wait)
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
            now_ms().saturating_sub(timeout.as_millis() as i64)
        };
        let streams: Vec<(u64, bool)> = self
            .files
            .values()
            .filter_map(|w| {
                let quiet = all || w.idle_since.is_some_and(|t| t.elapsed() >= timeout);
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
            let read_time = now_ms();
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
                    push_record(records, counters, start, parsed, cut);
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
        for w in self.files.values() {
            let (offset, fingerprint) = w.tracker.acked();
            all.push(Checkpoint {
                dev: w.dev,
                ino: w.ino,
                fingerprint,
                offset,
                path: w.path.display().to_string(),
            });
        }
        match self.store.save(&all) {
            Ok(()) => self.checkpoints_dirty = false,
            Err(e) => tracing::warn!(error = %e, "cannot save checkpoints; will retry"),
        }
    }
}

impl Watched {
    /// End offset of the last batch registered with the tracker.
    fn tracker_end(&self) -> u64 {
        self.tracker.last_pushed().unwrap_or(self.tracker.acked().0)
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
        Step::Record { parsed, cut } => push_record(records, counters, start, parsed, truncated || cut),
        Step::Held => {}
    }
}

/// Counts what the parser reported about the record it wrote at `start`,
/// marks it if truncated, and registers it.
fn push_record(records: &mut Records, counters: &SourceCounters, start: usize, parsed: Parsed, truncated: bool) {
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
    records.push_written(start, parsed.ts_ms, mask);
}

/// First bytes of a file (up to `FINGERPRINT_BYTES`).
fn read_head(file: &File, size: u64) -> Vec<u8> {
    let len = (size as usize).min(FINGERPRINT_BYTES);
    let mut buf = vec![0u8; len];
    if read_exact_at(file, &mut buf) { buf } else { Vec::new() }
}

fn fingerprint_of(head: &[u8]) -> Fingerprint {
    Fingerprint {
        crc: crc32fast::hash(head),
        len: head.len() as u32,
    }
}

/// How a new file's first bytes relate to a known file's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relation {
    /// Starts with the same (long enough) bytes: a copy.
    Copy,
    /// Shorter than the known head and equal so far: maybe a copy in progress.
    MaybeCopy,
    Unrelated,
}

fn relation(new_head: &[u8], fp: Fingerprint, known_head: Option<&[u8]>) -> Relation {
    if fp.len < MIN_COPY_FINGERPRINT || new_head.is_empty() {
        return Relation::Unrelated;
    }
    let n = fp.len as usize;
    if new_head.len() >= n {
        return if crc32fast::hash(&new_head[..n]) == fp.crc {
            Relation::Copy
        } else {
            Relation::Unrelated
        };
    }
    match known_head {
        Some(h) if h.starts_with(new_head) => Relation::MaybeCopy,
        _ => Relation::Unrelated,
    }
}

fn fingerprint_matches(file: &File, size: u64, fp: Fingerprint) -> bool {
    if fp.len == 0 {
        return true;
    }
    if size < fp.len as u64 {
        return false;
    }
    let mut buf = vec![0u8; fp.len as usize];
    read_exact_at(file, &mut buf) && crc32fast::hash(&buf) == fp.crc
}

fn read_exact_at(file: &File, buf: &mut [u8]) -> bool {
    let mut off = 0;
    while off < buf.len() {
        match file.read_at(&mut buf[off..], off as u64) {
            Ok(0) => return false,
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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
