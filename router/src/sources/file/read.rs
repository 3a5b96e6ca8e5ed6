//! The tailer: reading each file's fair share, splitting lines, parsing
//! them into records and sending batches whose ack tokens cover exactly
//! the bytes they came from.

use super::identity::{FINGERPRINT_BYTES, Point, fingerprint_of, read_head, tail_at};
use super::kube_api;
use super::parse::{self, Parsed, Parser, Step};
use super::rotation::Verdict;
use super::tail::{LineSplitter, utf8_prefix};
use super::world::World;
use super::{BATCH_BYTES, FAIR_SHARE, FileSource, MAX_POINTS, SourceCounters, SourceError, UNREADABLE, Watched};
use crate::checkpoint::Position;
use crate::event::{AckToken, Batch, Records};

impl<W: World> FileSource<W> {
    /// Reads a fair share of every file; true if any data was read.
    pub(super) fn read_round(&mut self) -> Result<bool, SourceError> {
        let streams: Vec<u64> = self.files.keys().copied().collect();
        let mut progressed = false;
        for stream in streams {
            progressed |= self.read_file(stream)?;
            // Not inside `read_file`: the file being read is out of
            // `self.files` there, and its acks would find no file.
            self.drain_acks();
            self.save_if_due();
        }
        Ok(progressed)
    }

    pub(super) fn read_file(&mut self, stream: u64) -> Result<bool, SourceError> {
        let Some(mut w) = self.files.remove(&stream) else {
            return Ok(false);
        };
        let result = self.read_file_inner(&mut w);
        self.files.insert(stream, w);
        result
    }

    pub(super) fn read_file_inner(&mut self, w: &mut Watched<W::File>) -> Result<bool, SourceError> {
        let st = match self.world.fstat(&w.file) {
            Ok(st) => st,
            Err(_) => return Ok(false),
        };
        w.size = st.len;
        if st.nlink == 0 {
            w.gone = true;
        }
        if w.identity_pending {
            if w.size == 0 {
                return Ok(false);
            }
            let head = read_head(&self.world, &w.file, w.size);
            match self.classify((w.dev, w.ino), &w.file, &head, w.size) {
                Some(Verdict::Wait) => return Ok(false),
                Some(Verdict::Continue(c)) => {
                    w.head = head;
                    w.fp = fingerprint_of(&w.head);
                    self.start_at(w, c);
                }
                None => {}
            }
            w.identity_pending = false;
        }
        if self.was_truncated(w) {
            self.on_truncated(w)?;
        }
        let mut read_total = 0u64;
        let read_time = self.world.wall_ms();
        while read_total < FAIR_SHARE {
            let n = match self.world.read_at(&w.file, &mut self.chunk, w.read_pos) {
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
            w.note_read(chunk_start, &chunk[..n]);
            if w.head.len() < FINGERPRINT_BYTES && w.read_pos > w.head.len() as u64 {
                // The head grows from the bytes read, like the tail: read
                // again from the file it could be a truncated file's new
                // content, and the truncation would go unseen.
                let have = w.head.len();
                match (have as u64).checked_sub(chunk_start) {
                    Some(skip) => {
                        let skip = skip as usize;
                        let take = (FINGERPRINT_BYTES - have).min(n - skip);
                        w.head.extend_from_slice(&chunk[skip..skip + take]);
                    }
                    None => w.head = read_head(&self.world, &w.file, w.read_pos),
                }
                w.fp = fingerprint_of(&w.head);
            }
            self.chunk = chunk;
            if self.records.buf.len() >= BATCH_BYTES {
                self.send_batch(w)?;
            }
        }
        let now = self.world.now();
        if read_total > 0 {
            self.counters.m.received_bytes.inc_by(read_total);
            w.idle_since = None;
            self.send_batch(w)?;
        } else if w.idle_since.is_none() {
            w.idle_since = Some(now);
        }
        let m = &self.cx.metrics;
        m.file_read_offset.get_or_create(&w.labels).set(w.read_pos as i64);
        m.file_lag
            .get_or_create(&w.labels)
            .set(w.size.saturating_sub(w.read_pos) as i64);
        m.file_checkpoint_lag
            .get_or_create(&w.labels)
            .set(w.size.saturating_sub(w.tracker.acked().offset) as i64);
        if w.tracker.unsettled() == 0 {
            w.settled_at = now;
        }
        m.file_checkpoint_age
            .get_or_create(&w.labels)
            .set(now.saturating_duration_since(w.settled_at).as_secs() as i64);
        Ok(read_total > 0)
    }

    /// The position at `w.consumed`: where a batch sent now ends.
    pub(super) fn position_here(&self, w: &Watched<W::File>) -> Position {
        let tail = match w.read_tail {
            Some((at, tail)) if at == w.consumed => tail,
            _ => tail_at(&self.world, &w.file, w.consumed).unwrap_or(UNREADABLE),
        };
        Position {
            offset: w.consumed,
            head: w.fp,
            tail,
        }
    }

    /// Sends the records parsed so far, with an ack token covering
    /// everything up to `w.consumed`.
    /// Lets the checkpoint pass what was consumed without a batch (empty
    /// lines, an excluded pod's records): an empty batch, acked at once.
    fn pass_consumed(&mut self, w: &mut Watched<W::File>) {
        let at = self.position_here(w);
        let seq = w.push_mark(at);
        w.tracker.ack(seq, true);
        self.checkpoints_dirty = true;
    }

    pub(super) fn send_batch(&mut self, w: &mut Watched<W::File>) -> Result<(), SourceError> {
        if self.records.is_empty() {
            // Lines that produced no record (empty lines) are still consumed:
            // track an empty batch so the checkpoint can pass them.
            if w.consumed != w.mark.offset {
                self.pass_consumed(w);
            }
            return Ok(());
        }
        let mut k8s_fields = None;
        let mut parser = None;
        if let (Some(meta), Some((cache, _))) = (w.k8s.as_mut(), self.pods.as_ref()) {
            meta.refresh(cache);
            if meta.exclude {
                // Dropped on purpose: counted, and the checkpoint passes them.
                let count = self.records.len() as u64;
                self.records.buf.clear();
                self.records.meta.clear();
                self.counters.m.received_events.inc_by(count);
                self.counters.m.discarded(super::KUBERNETES_EXCLUDED, count);
                self.pass_consumed(w);
                return Ok(());
            }
            k8s_fields = Some(meta.fields.clone());
            parser = meta.parser;
        }
        let mut records = std::mem::replace(
            &mut self.records,
            Records {
                buf: Vec::with_capacity(BATCH_BYTES + 4096),
                ..Records::default()
            },
        );
        if let Some(p) = parser {
            let m = &self.counters.m;
            let parsers = self
                .annotated
                .get_or_insert_with(|| Box::new(kube_api::AnnotatedParsers::new(m)));
            records = parsers.apply(p, records);
        }
        let count = records.len() as u64;
        tracing::trace!(file = %w.path.display(), records = count, end = w.consumed, read_pos = w.read_pos, "sending batch");
        let bytes = records.buf.len().min(self.cx.memory_limit).max(1);
        let at = self.position_here(w);
        let seq = w.push_mark(at);
        let ack = AckToken::with_records(w.stream, seq, count as u32, self.ack_tx.clone());
        let memory = self.cx.memory.clone();
        let force = self.cx.force.clone();
        let outputs = self.cx.outputs.clone();
        let fields = w.fields.clone().or(k8s_fields);
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
            for tx in outputs.iter() {
                let sent = tokio::select! {
                    r = tx.send(batch.clone()) => r.is_ok(),
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

    /// Emits held partial lines older than the timeout (or all, at the end).
    /// A file quiet for the timeout gets its last line and every joined part
    /// emitted; in a busy file, a joined line whose last part is that old is
    /// emitted alone (its stream went quiet mid-line while the other one
    /// writes), so the checkpoint is not held back for good.
    pub(super) fn flush_partials(&mut self, all: bool) -> Result<(), SourceError> {
        let timeout = self.cfg.partial_line_timeout;
        let cutoff = if all {
            i64::MAX
        } else {
            self.world.wall_ms().saturating_sub(timeout.as_millis() as i64)
        };
        let now = self.world.now();
        let streams: Vec<(u64, bool)> = self
            .files
            .values()
            .filter_map(|w| {
                let quiet = all
                    || w.idle_since
                        .is_some_and(|t| now.saturating_duration_since(t) >= timeout);
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
            let read_time = self.world.wall_ms();
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
                    push_record(records, counters, start, parsed, cut, parser.stamped());
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
}

impl<F> Watched<F> {
    /// Keeps what [`Watched::read_tail`] needs from a chunk just read at
    /// `start` (after `consumed` moved for it): the tail CRC at `consumed`,
    /// and the last bytes before `read_pos` for the next chunk.
    pub(super) fn note_read(&mut self, start: u64, chunk: &[u8]) {
        if self.behind_end != start {
            self.behind.clear();
        }
        let unchanged = self.read_tail.is_some_and(|(at, _)| at == self.consumed);
        if !unchanged {
            let from = self.consumed.saturating_sub(FINGERPRINT_BYTES as u64);
            let behind_from = start - self.behind.len() as u64;
            let end = self
                .consumed
                .checked_sub(start)
                .map(|e| e as usize)
                .filter(|&e| e <= chunk.len());
            self.read_tail = match end {
                Some(end) if from >= start => Some(fingerprint_of(&chunk[(from - start) as usize..end])),
                Some(end) if from >= behind_from => {
                    let mut bytes = self.behind[(from - behind_from) as usize..].to_vec();
                    bytes.extend_from_slice(&chunk[..end]);
                    Some(fingerprint_of(&bytes))
                }
                _ => None,
            }
            .map(|tail| (self.consumed, tail));
        }
        if chunk.len() >= FINGERPRINT_BYTES {
            self.behind.clear();
            self.behind.extend_from_slice(&chunk[chunk.len() - FINGERPRINT_BYTES..]);
        } else {
            self.behind.extend_from_slice(chunk);
            let excess = self.behind.len().saturating_sub(FINGERPRINT_BYTES);
            self.behind.drain(..excess);
        }
        self.behind_end = start + chunk.len() as u64;
    }

    /// Reading moves elsewhere (a new start, a truncation): what was read
    /// before says nothing about the bytes there.
    pub(super) fn forget_read(&mut self) {
        self.behind.clear();
        self.read_tail = None;
    }

    /// Registers a batch ending at `at` with the tracker.
    pub(super) fn push_mark(&mut self, at: Position) -> u64 {
        let seq = self.tracker.push(at);
        self.mark = at;
        if self.recent.len() >= MAX_POINTS {
            self.recent.pop_front();
        }
        self.recent.push_back((at, seq));
        seq
    }

    /// The recent batch ends, each with the batch to wait for unless it is
    /// already released; with none, the acknowledged position.
    pub(super) fn points(&self) -> Vec<Point> {
        let mut points: Vec<Point> = self
            .recent
            .iter()
            .map(|&(at, seq)| (at, (!self.tracker.released(seq)).then_some((self.stream, seq))))
            .collect();
        if points.is_empty() {
            points.push((self.mark, None));
        }
        points
    }
}

/// Splits a chunk read at file offset `chunk_start` into lines, hands each
/// to `emit(parser, line, truncated, line_start)`, advances `lines_to` past
/// the last complete line, and returns the offset a batch may end at: never
/// past the first part of a partial line the parser holds.
pub(super) fn feed_chunk(
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
pub(super) fn emit_line(
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
        Step::Record { parsed, cut } => {
            let stamped = parser.stamped();
            push_record(records, counters, start, parsed, truncated || cut, stamped)
        }
        Step::Held => {}
    }
}

/// Counts what the parser reported about the record it wrote at `start`,
/// marks it if truncated, and registers it.
pub(super) fn push_record(
    records: &mut Records,
    counters: &SourceCounters,
    start: usize,
    parsed: Parsed,
    truncated: bool,
    stamped: bool,
) {
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
    if stamped {
        records.push_stamped(start, parsed.ts_ms, mask);
    } else {
        records.push_written(start, parsed.ts_ms, mask);
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse::{ParserKind, ParserOptions};
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
