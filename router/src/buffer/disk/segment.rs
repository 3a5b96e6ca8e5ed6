//! Segment files, the position file, and what start-up makes of them.
//!
//! ```text
//! <data_dir>/buffers/<sink>/00000000000000000007.seg   frames, append-only
//! <data_dir>/buffers/<sink>/00000000000000000008.seg
//! <data_dir>/buffers/<sink>/position.json              {"version":1,"segment":7,"offset":1048588}
//! ```
//!
//! Segment numbers only grow (a start never reuses one), so "older" is
//! "smaller". The position is where the sink's acknowledged prefix ends:
//! everything before it may be gone, everything from it on is re-delivered
//! after a restart.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::frame;
use crate::checkpoint::write_atomic;

/// A place in the buffer: a segment and a byte offset in it (a frame start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct PositionFile {
    version: u32,
    segment: u64,
    offset: u64,
}

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

fn position_path(dir: &Path) -> PathBuf {
    dir.join("position.json")
}

/// Segment numbers present in `dir`, oldest first.
pub fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .filter(|n| n.len() == 20)
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push(seq);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The saved position; `None` when there is none. A damaged file is moved
/// aside and the buffer is read from its oldest segment: re-delivering is
/// better than skipping.
pub fn load_position(dir: &Path) -> io::Result<Option<Position>> {
    let path = position_path(dir);
    let data = match fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match serde_json::from_slice::<PositionFile>(&data) {
        Ok(p) => Ok(Some(Position {
            segment: p.segment,
            offset: p.offset,
        })),
        Err(e) => {
            let aside = path.with_extension("json.corrupt");
            tracing::warn!(path = %path.display(), error = %e, moved_to = %aside.display(),
                "disk buffer position file is corrupt; the buffer is re-read from its oldest segment");
            let _ = fs::rename(&path, &aside);
            Ok(None)
        }
    }
}

/// Atomically replaces the position file.
pub fn save_position(dir: &Path, pos: Position) -> io::Result<()> {
    let body = serde_json::to_vec(&PositionFile {
        version: 1,
        segment: pos.segment,
        offset: pos.offset,
    })
    .expect("a position always serializes");
    write_atomic(&position_path(dir), &body)
}

/// What start-up found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Where the reader starts.
    pub position: Position,
    /// The first segment the writer may create.
    pub next_segment: u64,
    /// Unacknowledged bytes and records on disk (records: best effort, a
    /// damaged frame's count is unknown).
    pub bytes: u64,
    pub records: u64,
    /// Bytes cut from the end of the newest segment (a torn write).
    pub torn_bytes: u64,
}

/// Makes the directory consistent before the writer and the reader start:
/// removes segments the position has passed (a crash between saving the
/// position and deleting them), points the position at a segment that
/// exists, and cuts a torn frame off the newest segment.
///
/// Only the newest segment can end in a torn write: the writer never
/// appends to a segment from an earlier run, and it syncs a segment before
/// starting the next. So only that one is read whole (checksums verified);
/// the others are walked header to header to count their records.
pub fn recover(dir: &Path) -> io::Result<Recovered> {
    fs::create_dir_all(dir)?;
    // A position save cut short by a crash; `position.json` is the last whole one.
    let _ = fs::remove_file(position_path(dir).with_extension("json.tmp"));
    let mut pos = load_position(dir)?.unwrap_or_default();
    let mut segs = list(dir)?;
    for &s in segs.iter().filter(|s| **s < pos.segment) {
        fs::remove_file(segment_path(dir, s))?;
    }
    segs.retain(|s| *s >= pos.segment);
    match segs.first() {
        Some(&first) if first == pos.segment => {}
        Some(&first) => {
            pos = Position {
                segment: first,
                offset: 0,
            }
        }
        None => pos.offset = 0,
    }
    let next_segment = segs.last().map_or(pos.segment, |l| l + 1).max(pos.segment).max(1);
    if segs.is_empty() {
        pos.segment = next_segment;
    }
    let mut scratch = vec![0u8; 64 * 1024];
    let (mut bytes, mut records, mut torn_bytes) = (0, 0, 0);
    for (i, &s) in segs.iter().enumerate() {
        let newest = i + 1 == segs.len();
        let path = segment_path(dir, s);
        let file = OpenOptions::new().read(true).write(newest).open(&path)?;
        let len = file.metadata()?.len();
        let mut from = if s == pos.segment { pos.offset } else { 0 };
        if from > len {
            tracing::warn!(segment = %path.display(), offset = from, len,
                "disk buffer position is past the end of its segment; re-reading the segment");
            pos.offset = 0;
            from = 0;
        }
        let (end, n) = walk(&file, from, len, newest, &mut scratch)?;
        if newest && end < len {
            file.set_len(end)?;
            file.sync_all()?;
            torn_bytes = len - end;
        }
        bytes += if newest { end } else { len } - from;
        records += n;
    }
    Ok(Recovered {
        position: pos,
        next_segment,
        bytes,
        records,
        torn_bytes,
    })
}

/// Walks frames from `from`. Verifying: checksums are checked, damage in
/// the middle is stepped over (the reader will count it), and the result is
/// the end of the last valid frame. Not verifying: headers only, stopping at
/// the first bad one (the count is then a lower bound).
fn walk(file: &File, from: u64, len: u64, verify: bool, scratch: &mut [u8]) -> io::Result<(u64, u64)> {
    let (mut off, mut valid_end, mut records) = (from, from, 0u64);
    while off < len {
        match frame::inspect_at(file, off, len, verify, scratch)? {
            Some((flen, n)) => {
                off += flen;
                valid_end = off;
                records += n as u64;
            }
            None if verify => match frame::next_valid(file, off + 1, len, scratch)? {
                Some(next) => off = next,
                None => break,
            },
            None => return Ok((len, records)),
        }
    }
    Ok((if verify { valid_end } else { len }, records))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_round_trips_and_a_damaged_one_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_position(dir.path()).unwrap(), None);
        let p = Position {
            segment: 7,
            offset: 1234,
        };
        save_position(dir.path(), p).unwrap();
        assert_eq!(load_position(dir.path()).unwrap(), Some(p));
        fs::write(position_path(dir.path()), b"{\"seg").unwrap();
        assert_eq!(load_position(dir.path()).unwrap(), None);
        assert!(dir.path().join("position.json.corrupt").exists());
    }

    #[test]
    fn listing_ignores_other_files() {
        let dir = tempfile::tempdir().unwrap();
        for s in [3u64, 1, 20] {
            fs::write(segment_path(dir.path(), s), b"").unwrap();
        }
        fs::write(dir.path().join("position.json"), b"{}").unwrap();
        fs::write(dir.path().join("7.seg"), b"").unwrap();
        assert_eq!(list(dir.path()).unwrap(), vec![1, 3, 20]);
    }

    #[test]
    fn recover_drops_passed_segments_and_moves_a_stale_position() {
        let dir = tempfile::tempdir().unwrap();
        for s in [2u64, 3, 5] {
            fs::write(segment_path(dir.path(), s), b"").unwrap();
        }
        save_position(dir.path(), Position { segment: 4, offset: 99 }).unwrap();
        let r = recover(dir.path()).unwrap();
        assert_eq!(r.position, Position { segment: 5, offset: 0 });
        assert_eq!(r.next_segment, 6);
        assert_eq!(list(dir.path()).unwrap(), vec![5]);

        let empty = tempfile::tempdir().unwrap();
        let r = recover(empty.path()).unwrap();
        assert_eq!((r.position, r.next_segment), (Position { segment: 1, offset: 0 }, 1));
        save_position(empty.path(), Position { segment: 9, offset: 0 }).unwrap();
        let r = recover(empty.path()).unwrap();
        assert_eq!((r.position, r.next_segment), (Position { segment: 9, offset: 0 }, 9));
    }
}
