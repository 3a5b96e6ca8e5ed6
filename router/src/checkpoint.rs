//! File checkpoints: how far each file has been delivered, kept across restarts.
//!
//! Two rules make at-least-once hold:
//! - An offset enters the checkpoint only when the batch that ends there and
//!   every batch before it (of the same file) have been acknowledged by all
//!   sinks ([`AckTracker`]). Acks may arrive out of order; the offset never
//!   passes an unacknowledged or failed batch.
//! - The file is replaced atomically (temp file, fsync, rename, fsync of the
//!   directory), so a crash leaves the old or the new checkpoint, never half.
//!
//! A file is identified by device + inode + a fingerprint (CRC32 of its first
//! bytes), and an offset applies only where the bytes just before it still
//! have the CRC they had when it was saved (`tail`), so neither a reused inode,
//! a copytruncate nor a file regrown with the same first bytes is mistaken for
//! the file we had read.
//!
//! When the disk fails under it, the checkpoint errs towards repeating:
//! - **A save that fails** (`data_dir` full or read-only) leaves the last good
//!   file as it was and no temp file behind; reading and delivery go on, the
//!   save is retried, and [`SaveHealth`] tells the operator once per outage
//!   (a warning when it starts and when it ends, a counter per attempt, and
//!   `/readyz` failing meanwhile). Why keep delivering: the checkpoint only
//!   bounds what a restart repeats; stopping would turn a full disk into an
//!   outage of every sink.
//! - **A file that cannot be parsed at start-up** means the positions are
//!   lost. They are never guessed, and never taken as "no file was seen",
//!   which `read_from = "end"` would turn into skipping data: the load
//!   reports [`CheckpointError::Corrupt`], and the file source reads every
//!   file it finds from its start (duplicates, logged and counted). The
//!   damaged file stays in place until the first good save replaces it (a
//!   copy is kept as `<source>.json.corrupt`), so a crash before that save
//!   recovers the same way again.
//! - **A temp file from a save cut short** is not a checkpoint: beside a
//!   checkpoint file it is removed unread. Alone, it is the first save of a
//!   run that crashed between writing and renaming: complete (it parses) it
//!   is renamed into place, otherwise the positions are lost as above.

use std::collections::VecDeque;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::metrics::{CheckpointMetrics, SaveFailure, io_reason};

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("cannot write checkpoints {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read checkpoints {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The positions are lost; `path` stays until the next good save.
    #[error("checkpoint file {path} is corrupt ({detail}); a copy is kept as {copy}")]
    Corrupt {
        path: PathBuf,
        copy: PathBuf,
        detail: String,
    },
}

impl CheckpointError {
    /// The `reason` label of a failed save or load.
    pub fn reason(&self) -> &'static str {
        match self {
            CheckpointError::Write { source, .. } | CheckpointError::Read { source, .. } => io_reason(source),
            CheckpointError::Corrupt { .. } => "corrupt",
        }
    }
}

/// Fingerprint of a file's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Fingerprint {
    pub crc: u32,
    pub len: u32,
}

/// Where one file stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub dev: u64,
    pub ino: u64,
    pub fingerprint: Fingerprint,
    pub offset: u64,
    /// CRC of the bytes just before `offset` (at most 1 KiB); `len` 0 (files
    /// written before it existed) checks nothing.
    #[serde(default)]
    pub tail: Fingerprint,
    /// Last path seen, for humans; identity does not depend on it.
    pub path: String,
}

impl Checkpoint {
    pub fn position(&self) -> Position {
        Position {
            offset: self.offset,
            head: self.fingerprint,
            tail: self.tail,
        }
    }
}

/// A point in one file's content: an offset, the fingerprint of the file's
/// first bytes and the CRC of the bytes just before the offset. Two files
/// holding the same position hold the same bytes up to it, as far as
/// CRC32s tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Position {
    pub offset: u64,
    pub head: Fingerprint,
    pub tail: Fingerprint,
}

/// Content a file held before it was truncated or replaced, as far as it was
/// delivered: kept across restarts because its copy may be found only after
/// a kill -9 (the file source's `Former`). Every point is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedFormer {
    /// Fingerprint of the content's first bytes.
    pub head: Fingerprint,
    /// Delivered batch ends, oldest first.
    pub points: Vec<Position>,
}

/// Everything a source's checkpoint file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Saved {
    pub files: Vec<Checkpoint>,
    pub formers: Vec<SavedFormer>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointFile {
    version: u32,
    files: Vec<Checkpoint>,
    /// Absent in files written before it existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    formers: Vec<SavedFormer>,
}

/// The checkpoint file of one source: `<data_dir>/checkpoints/<source>.json`.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    path: PathBuf,
}

impl CheckpointStore {
    pub fn new(data_dir: &Path, source: &str) -> Self {
        CheckpointStore {
            path: data_dir.join("checkpoints").join(format!("{source}.json")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the saved checkpoints; a missing file is an empty set. A file
    /// that does not parse is [`CheckpointError::Corrupt`] (see the module
    /// doc for what the source makes of it); so is a lone temp file that does
    /// not parse. A temp file beside the checkpoint file is removed.
    pub fn load(&self) -> Result<Vec<Checkpoint>, CheckpointError> {
        self.load_all().map(|s| s.files)
    }

    /// [`CheckpointStore::load`], with the former contents.
    pub fn load_all(&self) -> Result<Saved, CheckpointError> {
        let tmp = tmp_path(&self.path);
        let Some(data) = self.read(&self.path)? else {
            return match self.read(&tmp)? {
                None => Ok(Saved::default()),
                Some(data) => match parse(&data) {
                    Ok(files) => {
                        // The first save of a run that crashed before its
                        // rename: finish it.
                        tracing::info!(path = %self.path.display(),
                            "completing a checkpoint save cut short by a crash (temp file complete)");
                        sync_rename(&tmp, &self.path).map_err(|source| CheckpointError::Write {
                            path: self.path.clone(),
                            source,
                        })?;
                        Ok(files)
                    }
                    Err(e) => Err(self.corrupt(
                        &tmp,
                        format!("only a temp file from a save cut short, not parsable: {e}"),
                    )),
                },
            };
        };
        if tmp.exists() {
            // A save cut short by a crash: the checkpoint file is the last
            // complete one.
            match fs::remove_file(&tmp) {
                Ok(()) => tracing::info!(path = %tmp.display(),
                    "removed the temp file of a checkpoint save cut short by a crash; the checkpoint file beside it is used"),
                Err(e) => tracing::warn!(path = %tmp.display(), error = %e,
                    "cannot remove the temp file of a checkpoint save cut short; it is ignored"),
            }
        }
        parse(&data).map_err(|e| self.corrupt(&self.path, e.to_string()))
    }

    fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, CheckpointError> {
        match fs::read(path) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CheckpointError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Keeps a copy of the damaged `found` for a post-mortem, and leaves it in
    /// place: until a good save replaces it, every start sees the loss.
    fn corrupt(&self, found: &Path, detail: String) -> CheckpointError {
        let copy = self.path.with_extension("json.corrupt");
        let _ = fs::remove_file(&copy);
        if let Err(e) = fs::hard_link(found, &copy).or_else(|_| fs::copy(found, &copy).map(|_| ())) {
            tracing::warn!(path = %copy.display(), error = %e, "cannot keep a copy of the corrupt checkpoint file");
        }
        CheckpointError::Corrupt {
            path: found.to_path_buf(),
            copy,
            detail,
        }
    }

    /// Atomically replaces the checkpoint file.
    pub fn save(&self, files: &[Checkpoint]) -> Result<(), CheckpointError> {
        self.save_all(&Saved {
            files: files.to_vec(),
            formers: Vec::new(),
        })
    }

    /// [`CheckpointStore::save`], with the former contents.
    pub fn save_all(&self, saved: &Saved) -> Result<(), CheckpointError> {
        #[derive(Serialize)]
        struct Out<'a> {
            version: u32,
            files: &'a [Checkpoint],
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            formers: &'a [SavedFormer],
        }
        let body = serde_json::to_vec(&Out {
            version: 1,
            files: &saved.files,
            formers: &saved.formers,
        })
        .expect("checkpoints always serialize");
        write_atomic(&self.path, &body).map_err(|source| CheckpointError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

fn parse(data: &[u8]) -> Result<Saved, serde_json::Error> {
    serde_json::from_slice::<CheckpointFile>(data).map(|f| Saved {
        files: f.files,
        formers: f.formers,
    })
}

/// `<path>.tmp`: where [`write_atomic`] writes before its rename.
fn tmp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// Replaces `path` with `body` so that a crash leaves the old or the new
/// content, never half: temp file beside it, fsync, rename, fsync of the
/// directory. Creates the directory if needed. A write that fails (a full
/// or read-only disk) leaves `path` as it was and removes its temp file, so
/// a failed save neither holds space nor leaves anything for a later start.
pub fn write_atomic(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = tmp_path(path);
    let written = fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(body)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir);
    Ok(())
}

/// Makes `tmp` durable and renames it to `path` (a save's last steps).
fn sync_rename(tmp: &Path, path: &Path) -> std::io::Result<()> {
    fs::File::open(tmp)?.sync_all()?;
    fs::rename(tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")));
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Whether one source's checkpoint file can be saved, told once per outage:
/// a warning at the first failed save and one at the first good save after
/// it, a counter per failed attempt (`logferry_checkpoint_write_errors_total`),
/// and the failure published for the watchdog, which fails `/readyz` while it
/// lasts and keeps `logferry_checkpoint_save_failing_seconds` current. The
/// source retries on its own (the checkpoint stays dirty).
#[derive(Debug)]
pub struct SaveHealth {
    m: CheckpointMetrics,
    failed: u64,
}

impl SaveHealth {
    pub fn new(m: CheckpointMetrics) -> Self {
        SaveHealth { m, failed: 0 }
    }

    /// Records the outcome of one save.
    pub fn record(&mut self, result: &Result<(), CheckpointError>) {
        let now = Instant::now();
        match (result, self.m.failure()) {
            (Ok(()), None) => {}
            (Ok(()), Some(f)) => {
                tracing::warn!(
                    failed_for_s = now.saturating_duration_since(f.since).as_secs(),
                    failed_attempts = self.failed,
                    "checkpoints are saved again"
                );
                self.failed = 0;
                self.m.set_failure(None);
                self.m.save_failing.set(0);
            }
            (Err(e), failing) => {
                let reason = e.reason();
                self.m.write_error(reason);
                self.failed += 1;
                let since = match failing {
                    Some(f) => f.since,
                    None => {
                        tracing::warn!(error = %e, reason,
                            "cannot save checkpoints; delivery goes on and the last good checkpoint stays (a restart now repeats what was delivered since); retrying, /readyz fails until a save succeeds");
                        now
                    }
                };
                self.m.set_failure(Some(SaveFailure { since, reason }));
                self.m
                    .save_failing
                    .set(now.saturating_duration_since(since).as_secs() as i64);
            }
        }
    }
}

/// A lost checkpoint file at start-up, as the file source recovers from it:
/// `files` files holding `bytes` bytes are read from their start (also with
/// `read_from = "end"`, which would otherwise skip what they gained since the
/// last save). Logged and counted.
pub fn report_corrupt(e: &CheckpointError, m: &CheckpointMetrics, files: usize, bytes: u64, read_from_end: bool) {
    m.corrupt.inc();
    tracing::warn!(error = %e, files, bytes, read_from_end,
        "checkpoint positions lost: every file found is read from its start (read_from notwithstanding); records delivered before are delivered again");
}

/// Outcomes of items handed out in order, settled in any order: the items
/// of the longest fully delivered prefix are released, in order. A failed
/// item holds everything after it.
#[derive(Debug)]
pub struct InOrder<T> {
    /// Sequence number of `pending[0]`.
    base: u64,
    pending: VecDeque<(T, Option<bool>)>,
    unsettled: usize,
}

impl<T> Default for InOrder<T> {
    fn default() -> Self {
        InOrder {
            base: 0,
            pending: VecDeque::new(),
            unsettled: 0,
        }
    }
}

impl<T> InOrder<T> {
    /// Registers an item; returns its sequence number.
    pub fn push(&mut self, item: T) -> u64 {
        self.pending.push_back((item, None));
        self.unsettled += 1;
        self.base + self.pending.len() as u64 - 1
    }

    /// Records an outcome and passes each newly released item to `release`;
    /// returns true when anything was released.
    pub fn ack(&mut self, seq: u64, delivered: bool, mut release: impl FnMut(T)) -> bool {
        let Some(idx) = seq.checked_sub(self.base) else {
            return false;
        };
        let Some(entry) = self.pending.get_mut(idx as usize) else {
            return false;
        };
        if entry.1.is_none() {
            self.unsettled -= 1;
        }
        entry.1 = Some(delivered);
        let mut moved = false;
        while self.pending.front().is_some_and(|e| e.1 == Some(true)) {
            if let Some((item, _)) = self.pending.pop_front() {
                release(item);
            }
            self.base += 1;
            moved = true;
        }
        moved
    }

    /// The newest item registered and not yet released.
    pub fn last(&self) -> Option<&T> {
        self.pending.back().map(|e| &e.0)
    }

    /// Sequence number of the newest item not yet released.
    pub fn last_seq(&self) -> Option<u64> {
        (!self.pending.is_empty()).then(|| self.base + self.pending.len() as u64 - 1)
    }

    /// True once item `seq` and every item before it were delivered.
    pub fn released(&self, seq: u64) -> bool {
        seq < self.base
    }

    /// True when item `seq` or one before it failed: it can no longer be
    /// released.
    pub fn failed_through(&self, seq: u64) -> bool {
        let Some(n) = seq.checked_sub(self.base) else {
            return false;
        };
        self.pending.iter().take(n as usize + 1).any(|e| e.1 == Some(false))
    }

    /// Items still waiting for an outcome.
    pub fn unsettled(&self) -> usize {
        self.unsettled
    }

    /// True when a failed item holds the ones after it.
    pub fn has_failed(&self) -> bool {
        self.pending.iter().any(|e| e.1 == Some(false))
    }
}

/// In-order acknowledgement of the batches of one file.
#[derive(Debug)]
pub struct AckTracker {
    /// Where each batch in flight ends.
    pending: InOrder<Position>,
    acked: Position,
}

impl AckTracker {
    pub fn new(at: Position) -> Self {
        AckTracker {
            pending: InOrder::default(),
            acked: at,
        }
    }

    /// Registers a batch that ends at `end`; returns its sequence number.
    pub fn push(&mut self, end: Position) -> u64 {
        self.pending.push(end)
    }

    /// Records an outcome; returns true when the acknowledged offset moved.
    pub fn ack(&mut self, seq: u64, delivered: bool) -> bool {
        let acked = &mut self.acked;
        self.pending.ack(seq, delivered, |end| *acked = end)
    }

    /// The position every sink has made durable.
    pub fn acked(&self) -> Position {
        self.acked
    }

    /// End offset of the newest batch registered, if any is in flight.
    pub fn last_pushed(&self) -> Option<u64> {
        self.pending.last().map(|e| e.offset)
    }

    /// Sequence number of the newest batch not yet released.
    pub fn last_seq(&self) -> Option<u64> {
        self.pending.last_seq()
    }

    /// True once batch `seq` and all before it were delivered.
    pub fn released(&self, seq: u64) -> bool {
        self.pending.released(seq)
    }

    /// True when batch `seq` or one before it failed.
    pub fn failed_through(&self, seq: u64) -> bool {
        self.pending.failed_through(seq)
    }

    /// Batches still waiting for an outcome.
    pub fn unsettled(&self) -> usize {
        self.pending.unsettled()
    }

    /// True when a failed batch blocks this file's checkpoint.
    pub fn has_failed(&self) -> bool {
        self.pending.has_failed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FP: Fingerprint = Fingerprint { crc: 1, len: 1 };

    fn at(offset: u64) -> Position {
        Position {
            offset,
            head: FP,
            tail: FP,
        }
    }

    #[test]
    fn out_of_order_acks_advance_in_order() {
        let mut t = AckTracker::new(at(0));
        let a = t.push(at(10));
        let b = t.push(at(20));
        let c = t.push(at(30));
        assert!(!t.ack(b, true));
        assert_eq!(t.acked().offset, 0);
        assert!(t.ack(a, true));
        assert_eq!(t.acked().offset, 20);
        assert_eq!(t.unsettled(), 1);
        t.ack(c, true);
        assert_eq!(t.acked().offset, 30);
        assert_eq!(t.unsettled(), 0);
    }

    #[test]
    fn failed_batch_holds_the_offset() {
        let mut t = AckTracker::new(at(5));
        let a = t.push(at(10));
        let b = t.push(at(20));
        t.ack(a, false);
        t.ack(b, true);
        assert_eq!(t.acked().offset, 5);
        assert!(t.has_failed());
        assert_eq!(t.unsettled(), 0);
    }

    fn cp(offset: u64) -> Checkpoint {
        Checkpoint {
            dev: 1,
            ino: 2,
            fingerprint: FP,
            offset,
            tail: FP,
            path: "/x".into(),
        }
    }

    fn tmp_of(store: &CheckpointStore) -> PathBuf {
        store.path().with_extension("json.tmp")
    }

    #[test]
    fn store_round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path(), "app");
        assert!(store.load().unwrap().is_empty());
        store.save(&[cp(99)]).unwrap();
        assert_eq!(store.load().unwrap(), vec![cp(99)]);
        assert!(!tmp_of(&store).exists());
        assert_eq!(std::fs::read_dir(dir.path().join("checkpoints")).unwrap().count(), 1);
    }

    #[test]
    fn a_corrupt_file_is_reported_and_stays_until_a_good_save() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path(), "app");
        store.save(&[cp(99)]).unwrap();
        let good = std::fs::read(store.path()).unwrap();
        // Truncated (a bad disk, a copy cut short): not parsable.
        std::fs::write(store.path(), &good[..good.len() / 2]).unwrap();
        for _ in 0..2 {
            // Every start sees it (a crash before the next save recovers
            // the same way), never an empty set.
            match store.load() {
                Err(CheckpointError::Corrupt { path, copy, .. }) => {
                    assert_eq!(path, store.path());
                    assert_eq!(std::fs::read(&copy).unwrap(), &good[..good.len() / 2]);
                }
                other => panic!("{other:?}"),
            }
        }
        store.save(&[cp(7)]).unwrap();
        assert_eq!(store.load().unwrap(), vec![cp(7)]);
    }

    #[test]
    fn a_temp_file_beside_the_checkpoint_is_ignored_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path(), "app");
        store.save(&[cp(99)]).unwrap();
        // A crash mid-write of the next save: half a newer checkpoint.
        let newer = serde_json::to_vec(&CheckpointFile {
            version: 1,
            files: vec![cp(500)],
            formers: Vec::new(),
        })
        .unwrap();
        std::fs::write(tmp_of(&store), &newer[..newer.len() / 2]).unwrap();
        assert_eq!(store.load().unwrap(), vec![cp(99)]);
        assert!(!tmp_of(&store).exists());
        // Even a complete one: the checkpoint file is what was saved.
        std::fs::write(tmp_of(&store), &newer).unwrap();
        assert_eq!(store.load().unwrap(), vec![cp(99)]);
        assert!(!tmp_of(&store).exists());
    }

    #[test]
    fn a_lone_temp_file_is_put_in_place_when_complete_and_a_loss_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path(), "app");
        std::fs::create_dir_all(store.path().parent().unwrap()).unwrap();
        let body = serde_json::to_vec(&CheckpointFile {
            version: 1,
            files: vec![cp(500)],
            formers: Vec::new(),
        })
        .unwrap();
        // The first save of a run, cut short between write and rename.
        std::fs::write(tmp_of(&store), &body).unwrap();
        assert_eq!(store.load().unwrap(), vec![cp(500)]);
        assert!(!tmp_of(&store).exists());
        assert_eq!(std::fs::read(store.path()).unwrap(), body);
        // Cut short mid-write: the positions are lost, and stay reported
        // as lost until a save succeeds.
        std::fs::remove_file(store.path()).unwrap();
        std::fs::write(tmp_of(&store), &body[..body.len() - 3]).unwrap();
        for _ in 0..2 {
            assert!(matches!(store.load(), Err(CheckpointError::Corrupt { .. })));
        }
        store.save(&[cp(1)]).unwrap();
        assert_eq!(store.load().unwrap(), vec![cp(1)]);
        assert!(!tmp_of(&store).exists());
    }

    /// A full and a read-only disk (a real tmpfs): the save fails with the
    /// right reason, the last good file stays whole, no temp file is left,
    /// and saving works again once the disk does.
    #[test]
    fn a_failed_save_keeps_the_last_good_file_and_leaves_no_temp_file() {
        let Some(mut fs) = tmpfs::Tmpfs::mount("256k") else {
            return;
        };
        let store = CheckpointStore::new(fs.path(), "app");
        store.save(&[cp(99)]).unwrap();
        let good = std::fs::read(store.path()).unwrap();
        let files: Vec<Checkpoint> = (0..50).map(cp).collect();

        let filler = fs.fill();
        let err = store.save(&files).unwrap_err();
        assert_eq!(err.reason(), "no_space", "{err}");
        assert_eq!(std::fs::read(store.path()).unwrap(), good);
        assert!(!tmp_of(&store).exists(), "a failed save left its temp file");
        assert_eq!(store.load().unwrap(), vec![cp(99)]);
        std::fs::remove_file(filler).unwrap();
        store.save(&files).unwrap();
        assert_eq!(store.load().unwrap(), files);

        let good = std::fs::read(store.path()).unwrap();
        fs.read_only();
        let err = store.save(&[cp(3)]).unwrap_err();
        assert_eq!(err.reason(), "read_only", "{err}");
        assert_eq!(std::fs::read(store.path()).unwrap(), good);
        fs.writable();
        store.save(&[cp(3)]).unwrap();
        assert_eq!(store.load().unwrap(), vec![cp(3)]);
        assert!(!tmp_of(&store).exists());
    }

    #[test]
    fn save_health_counts_every_failure_and_publishes_the_outage() {
        let metrics = crate::metrics::Metrics::new();
        let m = metrics.checkpoint("app");
        let mut h = SaveHealth::new(m.clone());
        let full = || {
            Err(CheckpointError::Write {
                path: "/d/checkpoints/app.json".into(),
                source: std::io::Error::from(std::io::ErrorKind::StorageFull),
            })
        };
        h.record(&Ok(()));
        assert!(m.failure().is_none());
        h.record(&full());
        let first = m.failure().expect("failing");
        h.record(&full());
        let f = m.failure().expect("failing");
        assert_eq!(
            (f.since, f.reason),
            (first.since, "no_space"),
            "the outage started at the first failure"
        );
        let text = metrics.encode();
        assert!(
            text.contains(r#"logferry_checkpoint_write_errors_total{component="app",reason="no_space"} 2"#),
            "{text}"
        );
        h.record(&Ok(()));
        assert!(m.failure().is_none());
        assert!(metrics.checkpoints().iter().all(|c| c.failure().is_none()));
        assert!(
            metrics
                .encode()
                .contains(r#"logferry_checkpoint_save_failing_seconds{component="app"} 0"#)
        );
    }

    proptest! {
        /// Whatever the ack order, the offset is the end of the longest fully
        /// delivered prefix of batches.
        #[test]
        fn offset_is_longest_delivered_prefix(outcomes in proptest::collection::vec(any::<bool>(), 1..40), seed in any::<u64>()) {
            let mut t = AckTracker::new(at(0));
            let seqs: Vec<u64> = (0..outcomes.len()).map(|i| t.push(at((i as u64 + 1) * 10))).collect();
            let mut order: Vec<usize> = (0..outcomes.len()).collect();
            let mut s = seed;
            for i in (1..order.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                order.swap(i, (s >> 33) as usize % (i + 1));
            }
            for &i in &order {
                t.ack(seqs[i], outcomes[i]);
            }
            let prefix = outcomes.iter().take_while(|d| **d).count() as u64;
            prop_assert_eq!(t.acked().offset, prefix * 10);
            prop_assert_eq!(t.unsettled(), 0);
        }
    }
}

#[cfg(test)]
#[path = "../tests/common/tmpfs.rs"]
pub(crate) mod tmpfs;
