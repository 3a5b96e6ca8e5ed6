//! The writer: inbox -> frames -> segment files -> fdatasync -> acks.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::frame::{Encoder, FRAME_TARGET, FrameSpan, HEADER_LEN};
use super::segment::segment_path;
use super::{Outage, Shared, blocking};
use crate::buffer::{DiskBufferConfig, WhenFull};
use crate::event::Batch;
use crate::metrics::{BufferMetrics, ComponentMetrics, io_reason};

/// Group commit bounds: what one fsync may cover at most.
const GROUP_BYTES: u64 = 4 << 20;
const GROUP_BATCHES: usize = 64;

/// Appends frames to the newest segment; starts a new one past
/// `segment_size`. Used on a blocking thread (moved into `spawn_blocking`
/// and back for each commit).
#[derive(Debug)]
pub(super) struct SegmentWriter {
    dir: PathBuf,
    /// Segment written now or next (its file is created on first use).
    pub seq: u64,
    file: Option<File>,
    /// Durable bytes of `seq`'s file.
    pub len: u64,
    /// Written bytes of `seq`'s file (`len` plus what awaits the sync).
    end: u64,
    segment_size: u64,
    encoder: Encoder,
    out: Vec<u8>,
    spans: Vec<FrameSpan>,
    /// Written since the last sync: (bytes, records).
    unsynced: (u64, u64),
    /// Batches of the commit in progress whose frames are all written, and
    /// the records left out of them as too large.
    written: (usize, u64),
}

/// What one commit made durable.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Committed {
    pub bytes: u64,
    pub records: u64,
    /// Leading batches of the commit that are durable whole (all of them
    /// when it succeeded): they may be acknowledged upstream.
    pub batches: usize,
    /// Records too large for a frame, left out of those batches.
    pub too_large: u64,
}

impl SegmentWriter {
    pub fn new(dir: PathBuf, seq: u64, segment_size: u64) -> Self {
        SegmentWriter {
            dir,
            seq,
            file: None,
            len: 0,
            end: 0,
            segment_size,
            encoder: Encoder::new(FRAME_TARGET),
            out: Vec::new(),
            spans: Vec::new(),
            unsynced: (0, 0),
            written: (0, 0),
        }
    }

    /// Writes every batch and syncs once. On error, what was synced on the
    /// way (a segment finished in between) is still reported as durable, and
    /// the unsynced rest is cut off again, so a half-written frame is never
    /// readable and never followed by good ones; the caller may commit the
    /// batches not reported durable again.
    ///
    /// After an error a segment holding durable frames is finished, and the
    /// next commit starts a new one: once the sink has taken those frames the
    /// acker can delete the segment, which is how a disk the buffer filled
    /// itself gets room back.
    pub fn commit(&mut self, batches: &[Batch]) -> (Committed, io::Result<()>) {
        let mut done = Committed::default();
        self.written = (0, 0);
        let r = self.append(batches, &mut done).and_then(|()| self.sync(&mut done));
        if r.is_err() {
            self.unsynced = (0, 0);
            self.end = self.len;
            let restored = self
                .file
                .as_ref()
                .map(|f| f.set_len(self.len).and_then(|()| f.sync_data()).is_ok());
            match restored {
                Some(true) if self.len == 0 => {}
                // Finished with what it holds; or its end could not be
                // restored (the reader skips a damaged tail): a new one.
                Some(_) => self.next_segment(),
                // Creating it failed. If the file exists all the same (its
                // directory entry could not be synced), leave that number.
                None => {
                    if segment_path(&self.dir, self.seq).exists() {
                        self.next_segment();
                    }
                }
            }
        }
        (done, r)
    }

    fn next_segment(&mut self) {
        self.file = None;
        self.seq += 1;
        self.len = 0;
        self.end = 0;
    }

    fn append(&mut self, batches: &[Batch], done: &mut Committed) -> io::Result<()> {
        let mut spans = std::mem::take(&mut self.spans);
        let mut r = Ok(());
        'batches: for b in batches {
            self.out.clear();
            spans.clear();
            let too_large = self.encoder.encode(b, &mut self.out, &mut spans);
            for s in &spans {
                r = self.write_frame(s, done);
                if r.is_err() {
                    break 'batches;
                }
            }
            self.written.0 += 1;
            self.written.1 += too_large;
        }
        self.spans = spans;
        r
    }

    fn write_frame(&mut self, s: &FrameSpan, done: &mut Committed) -> io::Result<()> {
        if self.end > 0 && self.end + s.len as u64 > self.segment_size {
            // A segment is finished once synced: the reader may then read
            // it to its end, and start-up never has to repair it.
            self.sync(done)?;
            self.next_segment();
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(self.create()?),
        };
        file.write_all_at(&self.out[s.start..s.start + s.len], self.end)?;
        self.end += s.len as u64;
        self.unsynced.0 += s.len as u64;
        self.unsynced.1 += s.records as u64;
        Ok(())
    }

    fn sync(&mut self, done: &mut Committed) -> io::Result<()> {
        if let Some(f) = &self.file
            && self.unsynced.0 > 0
        {
            f.sync_data()?;
        }
        done.bytes += self.unsynced.0;
        done.records += self.unsynced.1;
        (done.batches, done.too_large) = self.written;
        self.unsynced = (0, 0);
        self.len = self.end;
        Ok(())
    }

    /// A new segment file, its directory entry made durable before any
    /// frame in it is acknowledged.
    fn create(&self) -> io::Result<File> {
        let path = segment_path(&self.dir, self.seq);
        let f = OpenOptions::new().write(true).create_new(true).open(&path)?;
        if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
            // Not durable: take it back, so the number can be used again.
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(f)
    }
}

/// Upper bound of a batch's bytes in frames, known before encoding it.
fn estimate(b: &Batch) -> u64 {
    let records: usize = (0..b.len()).map(|i| b.approx_len(i)).sum();
    (records + 20 * b.len()) as u64 + HEADER_LEN + 4
}

/// The writer task. Takes what the inbox holds (up to a group bound),
/// admits it against `max_size`, commits it with one sync, then drops it:
/// that drop is the upstream acknowledgement.
///
/// A commit that fails (a full disk above all: ENOSPC, EDQUOT; but any
/// error) is retried, with the batches not yet durable held: unacknowledged
/// upstream, so the sources keep their checkpoints before them and, once the
/// inbox is full, stop reading. Failing them instead would hold those
/// checkpoints too, but their records would only come again after a
/// restart, while everything after them flowed on. Space comes back from
/// outside, or from the sink: segments it has taken are deleted.
pub(super) struct Writer {
    pub seg: Option<SegmentWriter>,
    pub shared: Arc<Shared>,
    pub config: DiskBufferConfig,
    pub m: ComponentMetrics,
    pub gauges: BufferMetrics,
    pub stop: CancellationToken,
    /// A burst of drops (`drop_newest`) is logged once.
    pub dropping: bool,
    /// Failing commits (logged at the start and the end).
    pub failing: Outage,
}

/// Pause before a failed commit is tried again: doubles up to the maximum.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

impl Writer {
    pub async fn run(mut self, mut input: mpsc::Receiver<Batch>) {
        let max = self.config.max_size.as_u64();
        let mut group: Vec<Batch> = Vec::new();
        'run: loop {
            let first = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break 'run,
                b = input.recv() => b,
            };
            let Some(first) = first else { break };
            let mut taken = vec![first];
            let mut taken_bytes = estimate(&taken[0]);
            while taken_bytes < GROUP_BYTES && taken.len() < GROUP_BATCHES {
                let Ok(b) = input.try_recv() else { break };
                taken_bytes += estimate(&b);
                taken.push(b);
            }
            let mut admitted = 0u64;
            let mut taken = taken.into_iter();
            while let Some(b) = taken.next() {
                let need = estimate(&b);
                loop {
                    let unacked = self.shared.unacked() + admitted;
                    if unacked == 0 || unacked + need <= max {
                        admitted += need;
                        group.push(b);
                        self.dropping = false;
                        break;
                    }
                    if self.config.when_full == WhenFull::DropNewest {
                        self.drop_newest(b);
                        break;
                    }
                    if !group.is_empty() {
                        self.commit(&mut group).await;
                        admitted = 0;
                        continue;
                    }
                    // Block: take nothing more until the sink acknowledges.
                    let space = self.shared.space.notified();
                    let unacked = self.shared.unacked();
                    if unacked == 0 || unacked + need <= max {
                        continue;
                    }
                    tokio::select! {
                        biased;
                        _ = self.stop.cancelled() => {
                            b.fail();
                            taken.for_each(|b| b.fail());
                            break 'run;
                        }
                        _ = space => {}
                    }
                }
            }
            if !group.is_empty() {
                self.commit(&mut group).await;
            }
        }
        if self.stop.is_cancelled() {
            // Not written: the sources must not checkpoint past these.
            group.drain(..).for_each(|b| b.fail());
            input.close();
            while let Ok(b) = input.try_recv() {
                b.fail();
            }
        }
        self.shared.finish_writing();
    }

    fn drop_newest(&mut self, b: Batch) {
        if !self.dropping {
            tracing::warn!(
                max_size = %self.config.max_size.display().iec(),
                "disk buffer full: dropping new records (when_full = \"drop_newest\") until the sink catches up"
            );
            self.dropping = true;
        }
        self.m.discarded("buffer_full", b.len() as u64);
        // Dropped on purpose and counted: its acknowledgement is released.
        drop(b);
    }

    /// Commits `group` until it is durable (then drops it: the upstream
    /// acks), retrying failures; only `stop` gives up, failing the batches
    /// not written.
    async fn commit(&mut self, group: &mut Vec<Batch>) {
        let mut batches = std::mem::take(group);
        let mut pause = RETRY_FIRST;
        while !batches.is_empty() {
            let Some(mut seg) = self.seg.take() else {
                // Lost to a runtime shutting down: nothing can be written.
                batches.drain(..).for_each(|b| b.fail());
                break;
            };
            let joined = blocking(move || {
                let (done, r) = seg.commit(&batches);
                (seg, batches, done, r)
            })
            .await;
            // Only when the process is exiting; the sources are gone by then.
            let Some((seg, b, done, r)) = joined else { return };
            batches = b;
            self.shared.committed(seg.seq, seg.len, done.bytes, done.records);
            self.seg = Some(seg);
            if done.too_large > 0 {
                self.m.discarded("too_large", done.too_large);
            }
            // Durable: this drop releases their upstream acks.
            batches.drain(..done.batches.min(batches.len()));
            match r {
                Ok(()) => {
                    if let Some((seconds, attempts)) = self.failing.ok() {
                        tracing::warn!(
                            failed_for_s = seconds,
                            failed_attempts = attempts,
                            "disk buffer: writing again; the batches held are acknowledged"
                        );
                    }
                }
                Err(e) => {
                    let reason = io_reason(&e);
                    self.m.sink_error("buffer_write");
                    self.gauges.write_error(reason);
                    if self.failing.failed() {
                        tracing::warn!(error = %e, reason, batches = batches.len(),
                            "cannot write to the disk buffer; its batches stay unacknowledged (the sources keep their checkpoints and stop reading when it is full) and the write is retried until it works (further outages within a minute are only counted)");
                    } else {
                        tracing::debug!(error = %e, reason, "disk buffer write failed again");
                    }
                    tokio::select! {
                        biased;
                        _ = self.stop.cancelled() => {
                            // Not written: the sources must not checkpoint past these.
                            batches.drain(..).for_each(|b| b.fail());
                        }
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
        *group = batches;
    }
}
