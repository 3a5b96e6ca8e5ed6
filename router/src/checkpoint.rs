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

use std::collections::VecDeque;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("cannot write checkpoints {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read checkpoints {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub offset: u64,
    pub head: Fingerprint,
    pub tail: Fingerprint,
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointFile {
    version: u32,
    files: Vec<Checkpoint>,
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

    /// Loads the saved checkpoints; a missing file is an empty set. A corrupt
    /// file is moved aside (and reported) rather than stopping the router:
    /// re-reading is safer than not reading.
    pub fn load(&self) -> Result<Vec<Checkpoint>, CheckpointError> {
        let data = match fs::read(&self.path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(CheckpointError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        match serde_json::from_slice::<CheckpointFile>(&data) {
            Ok(f) => Ok(f.files),
            Err(e) => {
                let aside = self.path.with_extension("json.corrupt");
                tracing::warn!(path = %self.path.display(), error = %e, moved_to = %aside.display(),
                    "checkpoint file is corrupt; files will be read from their start");
                let _ = fs::rename(&self.path, &aside);
                Ok(Vec::new())
            }
        }
    }

    /// Atomically replaces the checkpoint file.
    pub fn save(&self, files: &[Checkpoint]) -> Result<(), CheckpointError> {
        let body = serde_json::to_vec(&CheckpointFile {
            version: 1,
            files: files.to_vec(),
        })
        .expect("checkpoints always serialize");
        write_atomic(&self.path, &body).map_err(|source| CheckpointError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

/// Replaces `path` with `body` so that a crash leaves the old or the new
/// content, never half: temp file beside it, fsync, rename, fsync of the
/// directory. Creates the directory if needed.
pub fn write_atomic(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
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

    #[test]
    fn store_round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path(), "app");
        assert!(store.load().unwrap().is_empty());
        let cp = Checkpoint {
            dev: 1,
            ino: 2,
            fingerprint: FP,
            offset: 99,
            tail: FP,
            path: "/x".into(),
        };
        store.save(std::slice::from_ref(&cp)).unwrap();
        assert_eq!(store.load().unwrap(), vec![cp]);
        assert!(!store.path().with_extension("json.tmp").exists());
        assert_eq!(std::fs::read_dir(dir.path().join("checkpoints")).unwrap().count(), 1);
        std::fs::write(store.path(), b"{not json").unwrap();
        assert!(store.load().unwrap().is_empty());
        assert!(store.path().with_extension("json.corrupt").exists());
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
