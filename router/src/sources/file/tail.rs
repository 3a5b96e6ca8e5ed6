//! Splitting a byte stream into lines, across read boundaries.
//!
//! Why a separate, I/O-free piece: line boundaries decide checkpoint offsets,
//! so this is where "no line lost, none repeated" is won or lost. It is
//! property-tested against arbitrary chunkings. An over-long line is cut at
//! `max_line` bytes and the rest skipped up to its newline, so memory per file
//! is bounded by `max_line` whatever the application writes.

/// Line splitter for one file.
#[derive(Debug)]
pub struct LineSplitter {
    max_line: usize,
    /// Bytes of an unfinished line carried over from earlier chunks.
    pending: Vec<u8>,
    /// The current line exceeded `max_line`: its rest is being skipped.
    truncating: bool,
}

/// What `feed` found in a chunk.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Index just past the last newline of the chunk, if it had one: every
    /// byte before it now belongs to emitted lines.
    pub complete_to: Option<usize>,
}

impl LineSplitter {
    pub fn new(max_line: usize) -> Self {
        LineSplitter {
            max_line,
            pending: Vec::new(),
            truncating: false,
        }
    }

    /// True when bytes of an unfinished line are held.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty() || self.truncating
    }

    /// Drops held bytes (the file was truncated or replaced).
    pub fn reset(&mut self) {
        self.pending.clear();
        self.pending.shrink_to(64 * 1024);
        self.truncating = false;
    }

    /// Splits `chunk`; `emit(line, truncated, end)` gets each complete line
    /// without its `\n` (a `\r` before it is removed too) and the index in
    /// `chunk` just past that `\n` (where the next line starts). Held bytes are capped at
    /// `max_line + 1`, the extra byte leaving room for a `\r` that turns out
    /// to end the line, so chunking never changes what is truncated.
    pub fn feed(&mut self, chunk: &[u8], mut emit: impl FnMut(&[u8], bool, usize)) -> Fed {
        let mut start = 0;
        let mut fed = Fed::default();
        let cap = self.max_line + 1;
        for nl in memchr::memchr_iter(b'\n', chunk) {
            let piece = &chunk[start..nl];
            let mut emit_here = |line: &[u8], truncated: bool| emit(line, truncated, nl + 1);
            if self.pending.is_empty() && !self.truncating {
                self.emit_complete(piece, false, &mut emit_here);
            } else {
                let room = cap.saturating_sub(self.pending.len());
                let overflow = self.truncating || piece.len() > room;
                self.pending.extend_from_slice(&piece[..piece.len().min(room)]);
                let line = std::mem::take(&mut self.pending);
                self.emit_complete(&line, overflow, &mut emit_here);
                self.pending = line;
                self.pending.clear();
                self.truncating = false;
            }
            start = nl + 1;
            fed.complete_to = Some(start);
        }
        let rest = &chunk[start..];
        if !rest.is_empty() {
            let room = cap.saturating_sub(self.pending.len());
            if rest.len() > room {
                self.pending.extend_from_slice(&rest[..room]);
                self.truncating = true;
            } else {
                self.pending.extend_from_slice(rest);
            }
        }
        fed
    }

    /// `line` is a whole line, or (when `overflow`) a prefix of one.
    fn emit_complete(&self, line: &[u8], overflow: bool, emit: &mut impl FnMut(&[u8], bool)) {
        let line = if overflow { line } else { strip_cr(line) };
        if overflow || line.len() > self.max_line {
            emit(&line[..line.len().min(self.max_line)], true);
        } else {
            emit(line, false);
        }
    }

    /// Emits the held partial line (timeout or end of input).
    pub fn flush(&mut self, mut emit: impl FnMut(&[u8], bool)) -> bool {
        if !self.has_pending() {
            return false;
        }
        let line = std::mem::take(&mut self.pending);
        self.emit_complete(&line, self.truncating, &mut emit);
        self.pending = line;
        self.pending.clear();
        self.truncating = false;
        true
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Longest prefix of `bytes` that is valid UTF-8, dropping a character cut in
/// half at the end (truncation can split one).
pub fn utf8_prefix(bytes: &[u8]) -> Option<&str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Some(s),
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&bytes[..e.valid_up_to()]).ok(),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split_all(chunks: &[&[u8]], max: usize) -> (Vec<(Vec<u8>, bool)>, LineSplitter) {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |l, t, _| out.push((l.to_vec(), t)));
        }
        (out, s)
    }

    #[test]
    fn lines_across_chunks_crlf_and_partial() {
        let (out, mut s) = split_all(&[b"ab", b"c\r\nde\n\nf", b"g"], 100);
        assert_eq!(
            out,
            vec![(b"abc".to_vec(), false), (b"de".to_vec(), false), (b"".to_vec(), false)]
        );
        assert!(s.has_pending());
        let mut rest = Vec::new();
        assert!(s.flush(|l, t| rest.push((l.to_vec(), t))));
        assert_eq!(rest, vec![(b"fg".to_vec(), false)]);
        assert!(!s.has_pending());
    }

    #[test]
    fn long_lines_are_cut_and_the_rest_skipped() {
        let long = vec![b'x'; 50];
        let mut data = long.clone();
        data.extend_from_slice(b"\nok\n");
        for cut in [1, 7, 10, 49, 50, 51] {
            let (a, b) = data.split_at(cut);
            let (out, s) = split_all(&[a, b], 10);
            assert_eq!(out, vec![(vec![b'x'; 10], true), (b"ok".to_vec(), false)], "cut {cut}");
            assert!(!s.has_pending());
        }
    }

    #[test]
    fn utf8_prefix_drops_a_split_char() {
        assert_eq!(utf8_prefix("hé".as_bytes()), Some("hé"));
        assert_eq!(utf8_prefix(&"hé".as_bytes()[..2]), Some("h"));
        assert_eq!(utf8_prefix(b"a\xffb"), None);
    }

    proptest! {
        /// Any chunking of any input yields the same lines as splitting the
        /// whole input at once, and `complete_to` always lands after a newline.
        #[test]
        fn chunking_does_not_change_lines(data in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'a'), any::<u8>()], 0..400),
                                          cuts in proptest::collection::vec(0usize..400, 0..10),
                                          max in 1usize..64) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut prev = 0;
            for c in cuts { chunks.push(&data[prev..c]); prev = c; }
            chunks.push(&data[prev..]);
            let (whole, _) = split_all(&[&data], max);
            let mut s = LineSplitter::new(max);
            let mut out = Vec::new();
            let mut offset = 0;
            let mut consumed = 0;
            for c in &chunks {
                let mut ends = Vec::new();
                let fed = s.feed(c, |l, t, end| {
                    out.push((l.to_vec(), t));
                    ends.push(end);
                });
                // Each line ends at a newline, and the last at `complete_to`.
                for end in &ends {
                    prop_assert_eq!(c[end - 1], b'\n');
                }
                prop_assert_eq!(ends.last().copied(), fed.complete_to);
                if let Some(k) = fed.complete_to {
                    prop_assert_eq!(data[offset + k - 1], b'\n');
                    consumed = offset + k;
                }
                offset += c.len();
            }
            prop_assert_eq!(&out, &whole);
            prop_assert_eq!(out.len(), data.iter().filter(|b| **b == b'\n').count());
            prop_assert_eq!(s.has_pending(), consumed < data.len());
            for (line, truncated) in &out {
                prop_assert!(line.len() <= max);
                if !truncated { prop_assert!(!line.contains(&b'\n')); }
            }
        }
    }
}
