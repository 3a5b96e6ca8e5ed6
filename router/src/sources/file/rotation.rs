//! What a file's content is: a copy, a truncation, or new.
//!
//! **Identity is a position that holds, never a name** (`identity.rs`). A
//! renamed file keeps being read through its open descriptor until it has
//! been quiet for `rotate_wait`; a file whose content no longer holds our
//! position (copytruncate, a reused inode) restarts at 0 and leaves a
//! [`Former`]: a new file holding that position is its copy and continues
//! there, its checkpoint held at what was delivered of the original until
//! the original's batches are acknowledged (a link), so a kill -9 between
//! the truncation and those acks loses nothing.

use super::identity::{Continue, Former, Point, Relation, fingerprint_of, holds, read_head, relation};
use super::world::World;
use super::{CHUNK, COPY_WAIT, FileSource, MAX_FORMERS, SourceError, Watched};
use crate::checkpoint::{Fingerprint, Position};

/// What a new file is.
pub(super) enum Verdict {
    /// Maybe a copy still being written: look again later.
    Wait,
    /// Holds a position of another file's content: continue there.
    Continue(Continue),
}

impl<W: World> FileSource<W> {
    pub(super) fn remember(&mut self, f: Former) {
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
    pub(super) fn classify(&mut self, key: (u64, u64), file: &W::File, head: &[u8], size: u64) -> Option<Verdict> {
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
        let live: Vec<(u64, Vec<Point>, Position)> = self
            .files
            .values()
            .filter(|w| (w.dev, w.ino) != key && !w.gone && relation(head, w.fp, Some(&w.head)) != Relation::Unrelated)
            .map(|w| (w.stream, w.points(), w.tracker.acked()))
            .collect();
        for (stream, points, acked) in live {
            let short = points.last().is_some_and(|p| size < p.0.offset);
            in_progress |= short;
            if let Some(j) = self.best_point(file, size, &points).filter(|&j| points[j].0.offset > 0)
                && (!short || !self.still_waiting(key))
            {
                // Head and tail are samples: a file spliced from two contents
                // of the original (a copy that went on reading after the
                // original was truncated and regrew) holds both yet differs
                // between them, and continuing would skip its first part. The
                // original is still open and holds the point: compare the
                // bytes, and continue only as far as they are the same.
                let same = self.same_bytes_to(file, stream, points[j].0.offset);
                let Some(j) = self
                    .best_point(file, size.min(same), &points[..=j])
                    .filter(|&j| points[j].0.offset > 0)
                else {
                    tracing::info!(
                        differs_at = same,
                        "file starts like a live file and holds its position, but its bytes differ before it; not a copy"
                    );
                    continue;
                };
                self.deferred.remove(&key);
                return Some(Verdict::Continue(self.continuation(
                    file,
                    size.min(same),
                    &points[..=j],
                    acked,
                )));
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
    pub(super) fn still_waiting(&mut self, key: (u64, u64)) -> bool {
        self.defer(key, COPY_WAIT)
    }

    /// How far (up to `upto`) `file` has the same bytes as the live file
    /// `stream`: the offset of the first difference, or `upto`.
    pub(super) fn same_bytes_to(&self, file: &W::File, stream: u64, upto: u64) -> u64 {
        let Some(w) = self.files.get(&stream) else {
            return 0;
        };
        let mut a = vec![0u8; CHUNK];
        let mut b = vec![0u8; CHUNK];
        let mut at = 0;
        while at < upto {
            let want = ((upto - at) as usize).min(CHUNK);
            let (Ok(n), Ok(m)) = (
                self.world.read_at(file, &mut a[..want], at),
                self.world.read_at(&w.file, &mut b[..want], at),
            ) else {
                return at;
            };
            let n = n.min(m);
            // Equal chunks are the rule: `==` is a memcmp, the byte loop
            // only runs on the chunk that differs.
            if a[..n] != b[..n]
                && let Some(k) = a[..n].iter().zip(&b[..n]).position(|(x, y)| x != y)
            {
                return at + k as u64;
            }
            if n == 0 {
                return at;
            }
            at += n as u64;
        }
        upto
    }

    /// Index of the furthest of `points` the file holds.
    pub(super) fn best_point(&self, file: &W::File, size: u64, points: &[Point]) -> Option<usize> {
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
    pub(super) fn continuation(&self, file: &W::File, size: u64, points: &[Point], durable: Position) -> Continue {
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

    /// Does the file no longer hold what we read: shorter than the read
    /// position, other first bytes, or other bytes before the last batch's
    /// end (truncated and regrown past it with the same first bytes).
    pub(super) fn was_truncated(&self, w: &mut Watched<W::File>) -> bool {
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

    pub(super) fn on_truncated(&mut self, w: &mut Watched<W::File>) -> Result<(), SourceError> {
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
}
