//! Joining partial lines: CRI `P` parts and Docker json-file entries whose
//! `log` does not end in a newline.
//!
//! Why: container runtimes cut a line longer than their buffer (16 KiB for
//! containerd, CRI-O and Docker) into several entries. Shipped as they come,
//! one application line becomes several records that no query or JSON parser
//! can put back together.
//!
//! Why per stream: stdout and stderr of a container are written into the same
//! file and their entries interleave, so a `P` part of stderr may sit between
//! two parts of a stdout line.
//!
//! Why the start offset of the oldest held part is kept: the source must never
//! checkpoint past it, or a restart would skip parts nobody shipped yet. What
//! the router read after that offset and already shipped (the other stream's
//! lines) is read again after a crash in that window: at least once.
//!
//! Why bounded: a joined line is capped at the source's `max_line_size`, like
//! a plain line; the excess is dropped and the record marked truncated. At
//! most one joined line per stream is held per file.

/// One stream's line being joined.
#[derive(Debug, Default, Clone)]
pub(super) struct Slot {
    pub active: bool,
    /// File offset of the first part's line.
    pub start: u64,
    /// Event time of the first part.
    pub ts_ms: i64,
    /// Stream name of the first part (Docker records may have none).
    pub stream: Option<Box<str>>,
    pub text: String,
    /// Parts did not fit in `max` bytes.
    pub truncated: bool,
    /// When the last part was read (Unix ms).
    pub touched_ms: i64,
}

/// The partial lines of one file, see the module docs.
#[derive(Debug, Clone)]
pub(super) struct Partials {
    max: usize,
    slots: [Slot; 3],
}

/// Slot of a stream: stdout, stderr, anything else.
pub(super) fn slot_of(stream: Option<&str>) -> usize {
    match stream {
        Some("stdout") => 0,
        Some("stderr") => 1,
        _ => 2,
    }
}

impl Partials {
    pub fn new(max: usize) -> Self {
        Partials {
            max,
            slots: Default::default(),
        }
    }

    pub fn is_open(&self, slot: usize) -> bool {
        self.slots.get(slot).is_some_and(|s| s.active)
    }

    /// Adds a part to the stream's line; the first part sets its start, time
    /// and stream. `cut`: the part was already truncated; `now_ms`: when it
    /// was read.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        slot: usize,
        start: u64,
        ts_ms: i64,
        stream: Option<&str>,
        part: &str,
        cut: bool,
        now_ms: i64,
    ) {
        let max = self.max;
        let Some(s) = self.slots.get_mut(slot) else { return };
        s.touched_ms = now_ms;
        if !s.active {
            s.active = true;
            s.start = start;
            s.ts_ms = ts_ms;
            s.stream = stream.map(Box::from);
            s.text.clear();
            s.truncated = false;
        }
        if s.truncated {
            return;
        }
        // After a cut part the rest of its line was skipped: later parts
        // would not continue the text.
        s.truncated = cut;
        let room = max.saturating_sub(s.text.len());
        if part.len() <= room {
            s.text.push_str(part);
        } else {
            s.text.push_str(&part[..part.floor_char_boundary(room)]);
            s.truncated = true;
        }
    }

    /// Takes the stream's line out (to be written); give the slot back with
    /// [`Partials::put_back`] so its buffer is reused.
    pub fn take(&mut self, slot: usize) -> Slot {
        self.slots.get_mut(slot).map(std::mem::take).unwrap_or_default()
    }

    pub fn put_back(&mut self, slot: usize, mut s: Slot) {
        s.active = false;
        s.text.clear();
        // A joined line near the limit should not stay allocated forever.
        s.text.shrink_to(64 * 1024);
        if let Some(dst) = self.slots.get_mut(slot) {
            *dst = s;
        }
    }

    /// The open slot whose first part is the oldest.
    pub fn oldest(&self) -> Option<usize> {
        self.oldest_touched_by(i64::MAX)
    }

    /// Like `oldest`, among the slots whose last part was read at or before
    /// `cutoff_ms`.
    pub fn oldest_touched_by(&self, cutoff_ms: i64) -> Option<usize> {
        (0..self.slots.len())
            .filter(|i| self.slots[*i].active && self.slots[*i].touched_ms <= cutoff_ms)
            .min_by_key(|i| self.slots[*i].start)
    }

    /// File offset of the oldest held part: nothing from there on is complete.
    pub fn held_from(&self) -> Option<u64> {
        self.oldest().map(|i| self.slots[i].start)
    }

    /// Forgets every held part (the file was truncated or replaced).
    pub fn clear(&mut self) {
        for i in 0..self.slots.len() {
            let s = self.take(i);
            self.put_back(i, s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_per_stream_and_tracks_the_oldest_start() {
        let mut p = Partials::new(100);
        assert_eq!(p.held_from(), None);
        p.push(1, 40, 7, Some("stderr"), "err-a ", false, 100);
        p.push(0, 10 + 50, 8, Some("stdout"), "out-a ", false, 100);
        p.push(0, 90, 9, Some("stdout"), "out-b", true, 200);
        assert_eq!((p.oldest_touched_by(150), p.oldest_touched_by(99)), (Some(1), None));
        assert_eq!(p.oldest_touched_by(200), Some(1));
        assert_eq!((p.held_from(), p.oldest()), (Some(40), Some(1)));
        let s = p.take(0);
        assert_eq!(
            (s.start, s.ts_ms, s.text.as_str(), s.truncated),
            (60, 8, "out-a out-b", true)
        );
        assert_eq!(s.stream.as_deref(), Some("stdout"));
        p.put_back(0, s);
        assert!(!p.is_open(0) && p.is_open(1));
        p.clear();
        assert_eq!(p.held_from(), None);
    }

    #[test]
    fn caps_at_max_on_a_char_boundary() {
        let mut p = Partials::new(5);
        p.push(0, 0, 0, None, "abcé", false, 0);
        p.push(0, 9, 0, None, "more", false, 0);
        let s = p.take(0);
        // "abcé" is 5 bytes and fits; nothing of "more" does.
        assert_eq!((s.text.as_str(), s.truncated), ("abcé", true));
        let mut p = Partials::new(4);
        p.push(2, 0, 0, Some("other"), "abcé", false, 0);
        let s = p.take(2);
        assert_eq!((s.text.as_str(), s.truncated), ("abc", true));
    }
}
