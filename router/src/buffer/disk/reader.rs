//! The reader side: the emitter turns frames into batches for the sink; the
//! acker turns the sink's acks into the saved position and deleted segments.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::frame;
use super::segment::{Position, save_position, segment_path};
use super::{Outage, Shared, blocking};
use crate::checkpoint::InOrder;
use crate::event::{Ack, AckToken, Batch};
use crate::metrics::{BufferMetrics, ComponentMetrics, io_reason};

/// How often, at most, the acked position is saved (besides at the end of
/// each segment and at exit). Losing it costs re-delivery, never data.
const PERSIST_EVERY: Duration = Duration::from_secs(1);
/// Consecutive read errors after which the rest of a segment is given up.
const READ_ATTEMPTS: u32 = 3;
const SCRATCH: usize = 64 * 1024;

/// One step of the reader, settled in order: a frame handed to the sink, a
/// damaged region stepped over, or the end of a segment (deleted once
/// everything before it is acknowledged).
#[derive(Debug)]
pub(super) struct Entry {
    end: Position,
    bytes: u64,
    records: u64,
    finished: Option<u64>,
}

pub(super) type Tracker = Arc<Mutex<InOrder<Entry>>>;

fn lock(t: &Tracker) -> std::sync::MutexGuard<'_, InOrder<Entry>> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) struct OpenSegment {
    seq: u64,
    file: Arc<File>,
    /// Set once the segment is finished (the writer moved on).
    finished_len: Option<u64>,
}

enum Flow {
    Go,
    Stop,
}

pub(super) struct Emitter {
    pub dir: PathBuf,
    pub shared: Arc<Shared>,
    pub tracker: Tracker,
    /// The buffer's own ack channel; the acker receives what it carries.
    pub ack_tx: std::sync::mpsc::Sender<Ack>,
    pub out: mpsc::Sender<Batch>,
    pub memory: Arc<Semaphore>,
    pub memory_limit: usize,
    pub gauges: BufferMetrics,
    pub m: ComponentMetrics,
    pub stop: CancellationToken,
    pub pos: Position,
    pub open: Option<OpenSegment>,
    pub read_errors: u32,
}

impl Emitter {
    /// Hands every frame to the sink in order until the writer is done and
    /// everything is read, the sink goes away, or `stop`. Returning drops the
    /// sink's sender (the sink flushes) and this side's ack sender.
    pub async fn run(mut self) {
        loop {
            if self.stop.is_cancelled() {
                break;
            }
            let st = self.shared.snapshot();
            if st.writer_done && st.gave_up {
                tracing::warn!(
                    "the sink failed a batch while draining; what it has not acknowledged stays in the disk buffer for the next start"
                );
                break;
            }
            if self.pos.segment > st.active {
                break; // past the last segment of a finished writer
            }
            let end = if self.pos.segment < st.active {
                match self.finished_len() {
                    Ok(Some(len)) => len,
                    Ok(None) => {
                        self.next_segment();
                        continue;
                    }
                    Err(e) => match self.read_error(e).await {
                        Flow::Go => continue,
                        Flow::Stop => break,
                    },
                }
            } else {
                st.durable
            };
            if self.pos.offset >= end {
                if self.pos.segment < st.active || st.writer_done {
                    self.next_segment();
                    continue;
                }
                tokio::select! {
                    biased;
                    _ = self.stop.cancelled() => break,
                    _ = self.shared.readable.notified() => continue,
                }
            }
            if let Flow::Stop = self.read(end).await {
                break;
            }
        }
    }

    /// Length of the current (finished) segment; `None` if it is missing.
    fn finished_len(&mut self) -> io::Result<Option<u64>> {
        if let Some(o) = &self.open
            && o.seq == self.pos.segment
            && let Some(len) = o.finished_len
        {
            return Ok(Some(len));
        }
        let file = match self.file() {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        if let Some(o) = &mut self.open {
            o.finished_len = Some(len);
        }
        Ok(Some(len))
    }

    fn file(&mut self) -> io::Result<Arc<File>> {
        if let Some(o) = &self.open
            && o.seq == self.pos.segment
        {
            return Ok(o.file.clone());
        }
        let file = Arc::new(File::open(segment_path(&self.dir, self.pos.segment))?);
        self.open = Some(OpenSegment {
            seq: self.pos.segment,
            file: file.clone(),
            finished_len: None,
        });
        Ok(file)
    }

    /// The current segment is read to its end: move on, and have it deleted
    /// once everything in it is acknowledged.
    fn next_segment(&mut self) {
        let done = self.pos.segment;
        self.pos = Position {
            segment: done + 1,
            offset: 0,
        };
        self.open = None;
        self.read_errors = 0;
        self.settled_now(Entry {
            end: self.pos,
            bytes: 0,
            records: 0,
            finished: Some(done),
        });
    }

    /// Registers a step that needs no sink acknowledgement, in order with
    /// the others: its token is dropped at once.
    fn settled_now(&self, entry: Entry) {
        let seq = lock(&self.tracker).push(entry);
        drop(AckToken::new(0, seq, self.ack_tx.clone()));
    }

    async fn read(&mut self, end: u64) -> Flow {
        let file = match self.file() {
            Ok(f) => f,
            Err(e) => return self.read_error(e).await,
        };
        let off = self.pos.offset;
        let read = {
            let file = file.clone();
            blocking(move || frame::read_at(&file, off, end)).await
        };
        match read {
            None => Flow::Stop,
            Some(Ok(Some((frame, len)))) => {
                self.read_errors = 0;
                self.emit(frame, len).await
            }
            Some(Ok(None)) => {
                self.skip_damage(file, end).await;
                Flow::Go
            }
            Some(Err(e)) => self.read_error(e).await,
        }
    }

    async fn emit(&mut self, frame: frame::Frame, len: u64) -> Flow {
        let frame::Frame { mut records, tag } = frame;
        let want = records
            .buf
            .len()
            .clamp(1, self.memory_limit.max(1))
            .min(u32::MAX as usize) as u32;
        let Some(permit) = self.acquire(want).await else {
            return Flow::Stop;
        };
        records.permit = permit;
        let slot = tokio::select! {
            biased;
            _ = self.stop.cancelled() => return Flow::Stop,
            s = self.out.reserve() => s,
        };
        let Ok(slot) = slot else {
            tracing::warn!("the sink is gone; the disk buffer keeps its data for the next start");
            return Flow::Stop;
        };
        let end = Position {
            segment: self.pos.segment,
            offset: self.pos.offset + len,
        };
        let seq = lock(&self.tracker).push(Entry {
            end,
            bytes: len,
            records: records.len() as u64,
            finished: None,
        });
        let mut batch = Batch::new(records, Some(AckToken::new(0, seq, self.ack_tx.clone())));
        batch.tag = tag;
        slot.send(batch);
        self.pos = end;
        Flow::Go
    }

    /// A memory permit for a frame's bytes, like a source takes one for a
    /// batch. When nothing this reader sent is still at the sink, the frame
    /// goes out without waiting: the memory may all be held by batches
    /// waiting for this buffer's own writer, which waits for this sink's
    /// acks. One frame over the budget is the price of never deadlocking.
    async fn acquire(&self, n: u32) -> Option<Option<OwnedSemaphorePermit>> {
        loop {
            if let Ok(p) = self.memory.clone().try_acquire_many_owned(n) {
                return Some(Some(p));
            }
            if lock(&self.tracker).unsettled() == 0 {
                return Some(None);
            }
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return None,
                p = self.memory.clone().acquire_many_owned(n) => return Some(p.ok()),
                _ = self.shared.settled.notified() => {}
            }
        }
    }

    /// No valid frame at the current offset: step to the next one, count it.
    async fn skip_damage(&mut self, file: Arc<File>, end: u64) {
        let off = self.pos.offset;
        let next = blocking(move || {
            let mut scratch = vec![0u8; SCRATCH];
            frame::next_valid(&file, off + 1, end, &mut scratch)
        })
        .await;
        let next = match next {
            Some(Ok(n)) => n.unwrap_or(end),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the disk buffer past a damaged frame; skipping to the end of the segment");
                end
            }
            None => return,
        };
        self.skip_to(next);
    }

    fn skip_to(&mut self, next: u64) {
        let off = self.pos.offset;
        self.gauges.corrupt_frames.inc();
        tracing::warn!(
            segment = %segment_path(&self.dir, self.pos.segment).display(),
            offset = off,
            skipped_bytes = next - off,
            "damaged data in the disk buffer (bad length or checksum) skipped; the records in it are lost"
        );
        self.pos.offset = next;
        self.settled_now(Entry {
            end: self.pos,
            bytes: next - off,
            records: 0,
            finished: None,
        });
    }

    /// Reading failed: retry after a pause; after a few failures in a row
    /// give the rest of the segment up rather than stall the sink forever.
    async fn read_error(&mut self, e: io::Error) -> Flow {
        self.m.sink_error("buffer_read");
        self.read_errors += 1;
        tracing::warn!(error = %e, segment = %segment_path(&self.dir, self.pos.segment).display(),
            attempt = self.read_errors, "cannot read the disk buffer");
        if self.read_errors >= READ_ATTEMPTS {
            self.read_errors = 0;
            let end = self
                .open
                .as_ref()
                .and_then(|o| o.file.metadata().ok())
                .map_or(self.pos.offset, |m| m.len().max(self.pos.offset));
            if end > self.pos.offset {
                self.skip_to(end);
            } else {
                self.next_segment();
            }
            return Flow::Go;
        }
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => Flow::Stop,
            _ = tokio::time::sleep(Duration::from_secs(1)) => Flow::Go,
        }
    }
}

/// Applies acks in order: moves the position, releases space, saves the
/// position and deletes finished segments.
pub(super) struct Acker {
    pub dir: PathBuf,
    pub shared: Arc<Shared>,
    pub tracker: Tracker,
    pub stop: CancellationToken,
    /// End of the acknowledged prefix, and what was last saved.
    pub pos: Position,
    pub saved: Position,
    /// A burst of failed batches is logged once.
    pub failing: bool,
    /// Failing position saves (logged at the start and the end).
    pub saving: Outage,
    pub gauges: BufferMetrics,
}

impl Acker {
    /// Runs until every ack sender is gone (the emitter finished and the
    /// sink dropped every batch) or `stop`; saves the position last.
    pub async fn run(mut self, mut acks: mpsc::UnboundedReceiver<Ack>) {
        let mut tick = tokio::time::interval(PERSIST_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut finished = Vec::new();
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                a = acks.recv() => {
                    let Some(a) = a else { break };
                    self.apply(a, &mut finished);
                    for _ in 0..1024 {
                        let Ok(a) = acks.try_recv() else { break };
                        self.apply(a, &mut finished);
                    }
                    if !finished.is_empty() {
                        self.persist(std::mem::take(&mut finished)).await;
                    }
                }
                _ = tick.tick() => {
                    if self.pos != self.saved {
                        self.persist(Vec::new()).await;
                    }
                }
            }
        }
        if self.pos != self.saved || !finished.is_empty() {
            self.persist(finished).await;
        }
    }

    fn apply(&mut self, ack: Ack, finished: &mut Vec<u64>) {
        // After `stop` the sink may be torn down, dropping batches it never
        // wrote: those drops are no acknowledgements.
        if self.stop.is_cancelled() {
            return;
        }
        if !ack.delivered {
            if !self.failing {
                tracing::warn!(
                    "the sink failed a batch from the disk buffer; it stays there and is re-delivered after a restart"
                );
                self.failing = true;
            }
            self.shared.sink_failed();
        }
        let (mut bytes, mut records, mut pos) = (0, 0, self.pos);
        let unsettled = {
            let mut t = lock(&self.tracker);
            t.ack(ack.seq, ack.delivered, |e| {
                bytes += e.bytes;
                records += e.records;
                pos = e.end;
                finished.extend(e.finished);
            });
            t.unsettled()
        };
        self.pos = pos;
        if bytes > 0 || records > 0 {
            self.shared.released(bytes, records);
        }
        if unsettled == 0 {
            self.shared.settled.notify_one();
        }
    }

    /// Saves the position, then deletes the segments it has passed (in that
    /// order: a crash in between leaves a segment start-up removes).
    ///
    /// They are deleted even when the position cannot be saved (a full or
    /// read-only disk): what they hold is delivered, and their space is what
    /// a full disk needs back (the writer is waiting for it). A start that
    /// finds the older position's segment gone begins at the oldest segment
    /// left: at least once.
    async fn persist(&mut self, finished: Vec<u64>) {
        let (dir, pos) = (self.dir.clone(), self.pos);
        let r = blocking(move || -> (io::Result<()>, io::Result<()>) {
            let saved = save_position(&dir, pos);
            let mut deleted = Ok(());
            for s in finished {
                match std::fs::remove_file(segment_path(&dir, s)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => deleted = Err(e),
                    _ => {}
                }
            }
            (saved, deleted)
        })
        .await;
        let Some((saved, deleted)) = r else { return };
        if let Err(e) = &deleted {
            self.gauges.write_error(io_reason(e));
            tracing::warn!(error = %e, dir = %self.dir.display(),
                "cannot delete a delivered disk buffer segment; the next start removes it");
        }
        match saved {
            Ok(()) => {
                self.saved = pos;
                if let Some((seconds, attempts)) = self.saving.ok() {
                    tracing::warn!(failed_for_s = seconds, failed_attempts = attempts, dir = %self.dir.display(),
                        "disk buffer position saved again");
                }
            }
            Err(e) => {
                self.gauges.write_error(io_reason(&e));
                if self.saving.failed() {
                    tracing::warn!(error = %e, dir = %self.dir.display(),
                        "cannot save the disk buffer position (retried each second); delivered segments are still deleted, and what was acknowledged since the last save may be re-delivered after a restart");
                }
            }
        }
    }
}
