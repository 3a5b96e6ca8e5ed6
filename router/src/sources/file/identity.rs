//! File identity: when two files (or one path at two moments) hold the same
//! bytes, so an offset read in one applies to the other.
//!
//! A name says nothing (rotation moves names), an inode says little (inodes
//! are reused, copytruncate keeps the inode and replaces the content), so a
//! position in a file is an offset plus two CRCs: of the file's first bytes
//! (`head`) and of the bytes just before the offset (`tail`). A position
//! *holds* in a file when the file is at least that long and both CRCs match
//! there. Every decision that skips bytes (resuming a checkpoint, continuing
//! a copy where its original was read to) requires the position to hold;
//! anything else reads from the start, which may repeat lines but never
//! loses one. The tail check is what tells a file regrown with the same
//! first bytes (a fixed header, a reused inode) from the file we had read.

use super::world::World;
use crate::checkpoint::{Fingerprint, Position, SavedFormer};

/// Bytes of a file's start that identify it, and of the window before an
/// offset that `tail` covers.
pub const FINGERPRINT_BYTES: usize = 1024;
/// A copy is recognised only on a head at least this long: shorter heads
/// (one short line) are too likely to be shared by unrelated files.
pub const MIN_COPY_FINGERPRINT: u32 = 64;

/// First bytes of a file (up to `FINGERPRINT_BYTES`); empty when unreadable.
pub fn read_head<W: World>(world: &W, file: &W::File, size: u64) -> Vec<u8> {
    let len = (size as usize).min(FINGERPRINT_BYTES);
    let mut buf = vec![0u8; len];
    if read_exact_at(world, file, &mut buf, 0) {
        buf
    } else {
        Vec::new()
    }
}

pub fn fingerprint_of(bytes: &[u8]) -> Fingerprint {
    Fingerprint {
        crc: crc32fast::hash(bytes),
        len: bytes.len() as u32,
    }
}

/// CRC of the bytes just before `offset` (at most `FINGERPRINT_BYTES`);
/// `None` when the file no longer has them.
pub fn tail_at<W: World>(world: &W, file: &W::File, offset: u64) -> Option<Fingerprint> {
    let len = offset.min(FINGERPRINT_BYTES as u64) as usize;
    let mut buf = vec![0u8; len];
    read_exact_at(world, file, &mut buf, offset - len as u64).then(|| fingerprint_of(&buf))
}

/// Does a file of `size` bytes hold `pos` (same first bytes, same bytes
/// before the offset)? A fingerprint of length 0 checks nothing.
pub fn holds<W: World>(world: &W, file: &W::File, size: u64, pos: &Position) -> bool {
    pos.offset <= size
        && window_matches(world, file, size, 0, pos.head)
        && window_matches(
            world,
            file,
            size,
            pos.offset.saturating_sub(u64::from(pos.tail.len)),
            pos.tail,
        )
}

/// Do the `fp.len` bytes at `start` have CRC `fp.crc`?
fn window_matches<W: World>(world: &W, file: &W::File, size: u64, start: u64, fp: Fingerprint) -> bool {
    if fp.len == 0 {
        return true;
    }
    if size < start + u64::from(fp.len) {
        return false;
    }
    let mut buf = vec![0u8; fp.len as usize];
    read_exact_at(world, file, &mut buf, start) && crc32fast::hash(&buf) == fp.crc
}

fn read_exact_at<W: World>(world: &W, file: &W::File, buf: &mut [u8], at: u64) -> bool {
    let mut off = 0;
    while off < buf.len() {
        match world.read_at(file, &mut buf[off..], at + off as u64) {
            Ok(0) => return false,
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// How a new file's first bytes relate to a known file's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// Starts with the same (long enough) bytes: may be a copy, if a
    /// position of the known file holds in it.
    SameHead,
    /// Shorter than the known head and equal so far: maybe a copy in progress.
    MaybeCopy,
    Unrelated,
}

pub fn relation(new_head: &[u8], fp: Fingerprint, known_head: Option<&[u8]>) -> Relation {
    if fp.len < MIN_COPY_FINGERPRINT || new_head.is_empty() {
        return Relation::Unrelated;
    }
    let n = fp.len as usize;
    if let Some(prefix) = new_head.get(..n) {
        return if crc32fast::hash(prefix) == fp.crc {
            Relation::SameHead
        } else {
            Relation::Unrelated
        };
    }
    match known_head {
        Some(h) if h.starts_with(new_head) => Relation::MaybeCopy,
        _ => Relation::Unrelated,
    }
}

/// Content a file held before it was truncated or replaced (copytruncate, a
/// reused inode, a checkpoint that no longer holds): a new file holding one
/// of its `points` is its copy and continues there.
#[derive(Debug, Clone)]
pub struct Former {
    /// Its head when it was read.
    pub head: Fingerprint,
    /// The first bytes, when known (to wait for a copy still being written).
    pub head_bytes: Option<Vec<u8>>,
    /// Ends of its recent batches, oldest first, each with the (stream,
    /// batch) that must be released before a copy's checkpoint may pass it
    /// (`None`: durable already). The newest is how far it was read; older
    /// ones serve a copy made before the router read that far.
    pub points: Vec<Point>,
    /// How far the content is durable in every sink.
    pub durable: Position,
}

/// Delivered points of a former content kept in the checkpoint file: a copy
/// shorter than the newest still holds one of the older ones.
pub const SAVED_FORMER_POINTS: usize = 4;

impl Former {
    /// What survives a restart: the points already durable (`released`
    /// tells which batches are), the newest `SAVED_FORMER_POINTS`. `None`
    /// when nothing of it is durable beyond its start.
    pub fn to_saved(&self, released: impl Fn((u64, u64)) -> bool) -> Option<SavedFormer> {
        let mut points: Vec<Position> = self
            .points
            .iter()
            .filter(|(_, hold)| hold.is_none_or(&released))
            .map(|(p, _)| *p)
            .chain(std::iter::once(self.durable))
            .filter(|p| p.offset > 0)
            .collect();
        points.sort_by_key(|p| p.offset);
        points.dedup();
        let skip = points.len().saturating_sub(SAVED_FORMER_POINTS);
        points.drain(..skip);
        (!points.is_empty()).then_some(SavedFormer {
            head: self.head,
            points,
        })
    }

    /// A former content read back from the checkpoint file: every point is
    /// durable, the newest is how far it was delivered.
    pub fn from_saved(s: &SavedFormer) -> Option<Former> {
        let durable = *s.points.last()?;
        Some(Former {
            head: s.head,
            head_bytes: None,
            points: s.points.iter().map(|&p| (p, None)).collect(),
            durable,
        })
    }
}

/// A batch end of a file, and the batch to wait for before it is durable.
pub type Point = (Position, Option<(u64, u64)>);

/// Where a file that continues another one starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continue {
    /// The checkpoint starts here...
    pub durable: Position,
    /// ...and moves through these batch ends of the original, oldest first,
    /// each once that (stream, batch) of the original is released; reading
    /// starts at the last one (or at `durable` when there are none).
    pub pending: Vec<(Position, (u64, u64))>,
}

impl Continue {
    /// Read and checkpoint from `at`.
    pub fn at(at: Position) -> Self {
        Continue {
            durable: at,
            pending: Vec::new(),
        }
    }

    /// Where reading starts.
    pub fn read_from(&self) -> Position {
        self.pending.last().map_or(self.durable, |p| p.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_needs_a_long_enough_equal_head() {
        let known: Vec<u8> = (0..200u8).collect();
        let fp = fingerprint_of(&known);
        assert_eq!(relation(&known, fp, None), Relation::SameHead);
        let mut longer = known.clone();
        longer.extend_from_slice(b"more");
        assert_eq!(relation(&longer, fp, None), Relation::SameHead);
        assert_eq!(relation(&known[..100], fp, Some(&known)), Relation::MaybeCopy);
        assert_eq!(relation(&known[..100], fp, None), Relation::Unrelated);
        let mut other = known.clone();
        other[150] ^= 1;
        assert_eq!(relation(&other, fp, Some(&known)), Relation::Unrelated);
        let short = fingerprint_of(&known[..10]);
        assert_eq!(relation(&known, short, None), Relation::Unrelated);
    }
}
