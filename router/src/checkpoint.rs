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
//! bytes), so a reused inode or a copytruncate is not mistaken for the file
//! we had read.

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
    /// Last path seen, for humans; identity does not depend on it.
    pub path: String,
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
    /// (end offset, fingerprint at that point) per batch in flight.
    pending: InOrder<(u64, Fingerprint)>,
    acked: u64,
    acked_fp: Fingerprint,
}

impl AckTracker {
    pub fn new(offset: u64, fingerprint: Fingerprint) -> Self {
        AckTracker {
            pending: InOrder::default(),
            acked: offset,
            acked_fp: fingerprint,
        }
    }

    /// Registers a batch that ends at `end`; returns its sequence number.
    pub fn push(&mut self, end: u64, fp: Fingerprint) -> u64 {
        self.pending.push((end, fp))
    }

    /// Records an outcome; returns true when the acknowledged offset moved.
    pub fn ack(&mut self, seq: u64, delivered: bool) -> bool {
        let (acked, acked_fp) = (&mut self.acked, &mut self.acked_fp);
        self.pending.ack(seq, delivered, |(end, fp)| {
            *acked = end;
            *acked_fp = fp;
        })
    }

    /// Offset (and fingerprint) every sink has made durable.
    pub fn acked(&self) -> (u64, Fingerprint) {
        (self.acked, self.acked_fp)
    }

    /// End offset of the newest batch registered, if any is in flight.
    pub fn last_pushed(&self) -> Option<u64> {
        self.pending.last().map(|e| e.0)
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

    #[test]
    fn out_of_order_acks_advance_in_order() {
        let mut t = AckTracker::new(0, FP);
        let a = t.push(10, FP);
        let b = t.push(20, FP);
        let c = t.push(30, FP);
        assert!(!t.ack(b, true));
        assert_eq!(t.acked().0, 0);
        assert!(t.ack(a, true));
        assert_eq!(t.acked().0, 20);
        assert_eq!(t.unsettled(), 1);
        t.ack(c, true);
        assert_eq!(t.acked().0, 30);
        assert_eq!(t.unsettled(), 0);
    }

    #[test]
    fn failed_batch_holds_the_offset() {
        let mut t = AckTracker::new(5, FP);
        let a = t.push(10, FP);
        let b = t.push(20, FP);
        t.ack(a, false);
        t.ack(b, true);
        assert_eq!(t.acked().0, 5);
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
            let mut t = AckTracker::new(0, FP);
            let seqs: Vec<u64> = (0..outcomes.len()).map(|i| t.push((i as u64 + 1) * 10, FP)).collect();
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
            prop_assert_eq!(t.acked().0, prefix * 10);
            prop_assert_eq!(t.unsettled(), 0);
        }
    }
}
