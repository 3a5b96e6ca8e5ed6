//! What the file source sees of the outside world: the files under its
//! globs, the clock, and its checkpoint file.
//!
//! Why a trait: the promises of the file source (no line lost across
//! rotation, copytruncate, inode reuse and kill -9) live in its identity and
//! checkpoint logic, and the interleavings that break them are too rare to
//! meet by running the real thing. `sim.rs` runs the very same `FileSource`
//! over a model filesystem and a model clock, crashing it at any step, so
//! proptest can search those interleavings and shrink a failure to a short
//! sequence. Production uses [`RealWorld`], a thin layer over `std::fs`,
//! `glob` and [`CheckpointStore`].

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::checkpoint::{CheckpointError, CheckpointStore, Saved};

/// What `stat` tells about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub nlink: u64,
    pub is_file: bool,
}

pub trait World {
    /// An open file: reads keep working after it is renamed or unlinked.
    type File;
    /// Paths matching `pattern`, in a stable order; unreadable entries skipped.
    fn glob(&self, pattern: &str) -> Vec<PathBuf>;
    /// `stat` of a path (following symlinks), `None` when it is gone.
    fn stat(&self, path: &Path) -> Option<Stat>;
    fn open(&self, path: &Path) -> std::io::Result<Self::File>;
    /// `fstat` of an open file.
    fn fstat(&self, file: &Self::File) -> std::io::Result<Stat>;
    fn read_at(&self, file: &Self::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
    /// Monotonic time: every wait and timeout of the source is measured on it.
    fn now(&self) -> Instant;
    /// Wall-clock milliseconds since the epoch (read times of records).
    fn wall_ms(&self) -> i64;
    fn load_checkpoints(&mut self) -> Result<Saved, CheckpointError>;
    fn save_checkpoints(&mut self, saved: &Saved) -> Result<(), CheckpointError>;
}

/// The real filesystem and clock.
pub struct RealWorld {
    pub store: CheckpointStore,
}

fn stat_of(meta: &std::fs::Metadata) -> Stat {
    Stat {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        nlink: meta.nlink(),
        is_file: meta.is_file(),
    }
}

impl World for RealWorld {
    type File = File;

    fn glob(&self, pattern: &str) -> Vec<PathBuf> {
        match glob::glob(pattern) {
            Ok(paths) => paths.flatten().collect(),
            Err(_) => Vec::new(),
        }
    }

    fn stat(&self, path: &Path) -> Option<Stat> {
        std::fs::metadata(path).ok().map(|m| stat_of(&m))
    }

    fn open(&self, path: &Path) -> std::io::Result<File> {
        File::open(path)
    }

    fn fstat(&self, file: &File) -> std::io::Result<Stat> {
        file.metadata().map(|m| stat_of(&m))
    }

    fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        file.read_at(buf, offset)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    fn load_checkpoints(&mut self) -> Result<Saved, CheckpointError> {
        self.store.load_all()
    }

    fn save_checkpoints(&mut self, saved: &Saved) -> Result<(), CheckpointError> {
        self.store.save_all(saved)
    }
}
