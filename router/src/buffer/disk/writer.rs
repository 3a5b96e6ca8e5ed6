//! The writer: inbox -> frames -> segment files -> fdatasync -> acks.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::frame::{Encoder, FRAME_TARGET, FrameSpan, HEADER_LEN};
use super::segment::segment_path;
use super::{Shared, blocking};
use crate::buffer::{DiskBufferConfig, WhenFull};
use crate::event::Batch;
use crate::metrics::ComponentMetrics;

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
}

/// What one commit made durable.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Committed {
    pub bytes: u64,
    pub records: u64,
    /// Records too large for a frame, left out.
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
        }
    }

    /// Writes every batch and syncs once. On error, what was synced on the
    /// way (a segment finished in between) is still reported as durable, and
    /// the unsynced rest is cut off again, so a half-written frame is never
    /// readable and never followed by good ones.
    pub fn commit(&mut self, batches: &[Batch]) -> (Committed, io::Result<()>) {
        let mut done = Committed::default();
        let r = self.append(batches, &mut done).and_then(|()| self.sync(&mut done));
        if r.is_err() {
            self.unsynced = (0, 0);
            self.end = self.len;
            let restored = self.file.as_ref().is_some_and(|f| f.set_len(self.len).is_ok());
            if !restored {
                // No open segment whose end could be restored (creating it
                // failed, or cutting it did): leave that number (the reader
                // skips a missing segment, and a damaged tail) and go on in a
                // new one.
                self.file = None;
                self.seq += 1;
                self.len = 0;
                self.end = 0;
            }
        }
        (done, r)
    }

    fn append(&mut self, batches: &[Batch], done: &mut Committed) -> io::Result<()> {
        let mut spans = std::mem::take(&mut self.spans);
        let mut r = Ok(());
        'batches: for b in batches {
            self.out.clear();
            spans.clear();
            done.too_large += self.encoder.encode(b, &mut self.out, &mut spans);
            for s in &spans {
                r = self.write_frame(s, done);
                if r.is_err() {
                    break 'batches;
                }
            }
        }
        self.spans = spans;
        r
    }

    fn write_frame(&mut self, s: &FrameSpan, done: &mut Committed) -> io::Result<()> {
        if self.end > 0 && self.end + s.len as u64 > self.segment_size {
            // A segment is finished once synced: the reader may then read
            // it to its end, and start-up never has to repair it.
            self.sync(done)?;
            self.file = None;
            self.seq += 1;
            self.len = 0;
            self.end = 0;
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
        self.unsynced = (0, 0);
        self.len = self.end;
        Ok(())
    }

    /// A new segment file, its directory entry made durable before any
    /// frame in it is acknowledged.
    fn create(&self) -> io::Result<File> {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(segment_path(&self.dir, self.seq))?;
        File::open(&self.dir)?.sync_all()?;
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
pub(super) struct Writer {
    pub seg: Option<SegmentWriter>,
    pub shared: Arc<Shared>,
    pub config: DiskBufferConfig,
    pub m: ComponentMetrics,
    pub stop: CancellationToken,
    /// A burst of drops (`drop_newest`) or of write errors is logged once.
    pub dropping: bool,
    pub failing: bool,
}

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

    async fn commit(&mut self, group: &mut Vec<Batch>) {
        let Some(mut seg) = self.seg.take() else {
            // Lost to a runtime shutting down: nothing can be written.
            group.drain(..).for_each(|b| b.fail());
            return;
        };
        let batches = std::mem::take(group);
        let joined = blocking(move || {
            let (done, r) = seg.commit(&batches);
            (seg, batches, done, r)
        })
        .await;
        // Only when the process is exiting; the sources are gone by then.
        let Some((seg, batches, done, r)) = joined else { return };
        self.shared.committed(seg.seq, seg.len, done.bytes, done.records);
        self.seg = Some(seg);
        if done.too_large > 0 {
            self.m.discarded("too_large", done.too_large);
        }
        match r {
            Ok(()) => self.failing = false,
            Err(e) => {
                self.m.sink_error("buffer_write");
                if !self.failing {
                    tracing::warn!(error = %e, "cannot write to the disk buffer; batches are failed and will be read again after a restart");
                    self.failing = true;
                }
                for b in &batches {
                    b.fail();
                }
            }
        }
        // Durable (or failed): this drop releases the upstream acks.
        let mut batches = batches;
        batches.clear();
        *group = batches;
    }
}
