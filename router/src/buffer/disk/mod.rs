//! The disk buffer of one sink: `buffer = { type = "disk", ... }`.
//!
//! ```text
//! inbox ─▶ writer ─frames─▶ NNN.seg files ─▶ emitter ─Batch{own AckToken}─▶ sink
//!            │ fdatasync, then drop the batches        ▲                     │
//!            ▼ (= upstream ack: sources checkpoint)    │ readable            │ acks
//!                                                      │                     ▼
//!                               position.json ◀── acker (in order): save position,
//!                                                 delete passed segments, free space
//! ```
//!
//! **Why it exists.** Without it a sink outage holds the sources' checkpoints,
//! and an application's files may rotate away before they were read. With it
//! a batch is acknowledged upstream as soon as it is durable in the buffer, so
//! the sources keep reading, and the sink catches up from disk.
//!
//! **The durability contract.** Upstream acknowledgement means "on stable
//! storage": the writer drops (acks) a batch only after the frames holding it
//! were written *and* `fdatasync`ed, and after the directory entry of a new
//! segment was synced. So a checkpoint never covers data a crash or power loss
//! could take back. Downstream, the buffer re-delivers everything after the
//! sink's acknowledged prefix after a restart: at least once. A batch the sink
//! failed holds that prefix (and so its segment) until a restart re-delivers
//! it, as a failed batch holds a file's checkpoint.
//!
//! **fsync policy: group commit.** The writer takes everything the inbox holds
//! (up to 4 MiB or 64 batches), writes it, and syncs once. Why not per batch:
//! one sync per batch caps throughput at the disk's sync rate. Why not on a
//! timer: a batch would wait for the timer before its source may checkpoint,
//! and an ack would have to be delayed or given before durability. With group
//! commit a lone batch waits one sync, and under load the cost of a sync is
//! shared by all that arrived while the previous one ran. `fdatasync` (not
//! `fsync`): the file size is flushed with the data, the rest of the metadata
//! does not matter here. The position file is written atomically (temp file,
//! fsync, rename) at most about once a second and at the end of each segment:
//! losing it to a crash only re-delivers, so syncing it per ack would buy
//! nothing.
//!
//! **Corruption and torn writes.** Every frame carries its length and a CRC
//! (see [`frame`]). A crash mid-write can leave a partial frame only at the
//! end of the newest segment (segments are never appended to across starts
//! and are synced before the next one begins): start-up verifies that segment
//! and cuts it back to its last valid frame (`logferry_buffer_torn_writes`);
//! nothing there was ever acknowledged upstream. Damage anywhere else (a bad
//! disk, a flipped bit) is found when reading: the reader scans forward to the
//! next valid frame header (magic, sane length, matching CRC), counts the
//! region in `logferry_buffer_corrupt_frames`, logs one warning and goes on.
//! A damaged frame is lost; nothing crashes, nothing stalls, and everything
//! after it is delivered. (A damaged *last* frame of the newest segment cannot
//! be told from a torn write and is counted as one.)
//!
//! **A full disk** (or any write error). A batch the writer could not make
//! durable is neither acknowledged (that would lose it) nor failed (its
//! source would hold its checkpoint, but read it again only after a
//! restart, while everything after it flowed on): the writer cuts the
//! half-written frame off and retries the batches until they are durable,
//! taking no new input meanwhile, which is the same backpressure as
//! `when_full = "block"`. Room comes back from outside or from the sink: a
//! segment holding durable frames is finished after an error, so once the
//! sink has taken them the acker can delete it, and it deletes delivered
//! segments even when the position file cannot be saved. Only `stop` ends
//! the retries (the batches are then failed: read again at the next start).
//!
//! **Space and memory.** `max_size` bounds the bytes on disk the sink has not
//! acknowledged. When the next batch would pass it, `block` stops taking
//! input (the sources then stop, as with a slow sink in memory) and
//! `drop_newest` drops the batch, counted as `reason="buffer_full"`. Segments
//! are `max_size / 8` (1 MiB to 128 MiB), so space comes back in steps of an
//! eighth. Replayed batches hold `memory_limit` permits like the sources'
//! batches; the reader never loads more than one frame (at most 64 MiB, about
//! 1 MiB normally) outside them.
//!
//! **Shutdown.** When the inbox closes, the writer finishes, and the reader
//! hands the sink everything left on disk, then closes the sink's channel and
//! waits for its acks, so the position file is final (and the buffer empty).
//! If the sink fails a batch while draining, the reader stops feeding it: the
//! rest stays on disk for the next start. The `stop` token (stop now) ends
//! all of it at once; the position is saved and the data stays on disk. The
//! topology waits for the drain after `--exit-on-eof`, and after a shutdown
//! (signal, app exit) only for its settle time before cancelling `stop`: what
//! is on disk is durable, so cutting the replay short loses nothing. `stop`
//! must be cancelled before a sink is torn down: a dropped batch reports
//! "delivered", and after `stop` the acker takes no acks any more.

mod frame;
mod reader;
mod segment;
mod writer;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::DiskBufferConfig;
use crate::checkpoint::InOrder;
use crate::event::Batch;
use crate::metrics::{BufferMetrics, ComponentMetrics};

/// Batches queued between the reader and the sink.
const OUT_CAPACITY: usize = 4;
const MIN_SEGMENT: u64 = 1 << 20;
const MAX_SEGMENT: u64 = 128 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DiskBufferError {
    #[error("cannot open the disk buffer {dir}: {source}")]
    Open { dir: PathBuf, source: std::io::Error },
    #[error("cannot start the disk buffer's ack thread: {0}")]
    Thread(std::io::Error),
}

/// Everything a disk buffer needs; see [`spawn`].
pub struct DiskBuffer {
    pub sink_id: String,
    /// `<data_dir>/buffers/<sink_id>/`
    pub dir: PathBuf,
    pub config: DiskBufferConfig,
    /// The global `memory_limit` semaphore (bytes) and its size.
    pub memory: Arc<Semaphore>,
    pub memory_limit: usize,
    /// The sink's handles (drops are counted on the sink).
    pub metrics: ComponentMetrics,
    pub gauges: BufferMetrics,
    /// Stop now: stop emitting, save the position, leave the data on disk.
    pub stop: CancellationToken,
}

/// What the writer and the reader share.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Writer -> emitter: durable frames, or the writer finished.
    readable: Notify,
    /// Acker -> writer: acknowledged bytes were released.
    space: Notify,
    /// Acker -> emitter: nothing of the emitter's is at the sink any more.
    settled: Notify,
    gauges: BufferMetrics,
}

#[derive(Debug, Clone, Copy, Default)]
struct State {
    /// Segment the writer appends to (or creates next).
    active: u64,
    /// Durable length of `active`.
    durable: u64,
    /// The inbox closed (or `stop`) and the writer has returned.
    writer_done: bool,
    /// The sink failed a batch after the writer was done: stop draining.
    gave_up: bool,
    /// On disk and not acknowledged by the sink.
    unacked: u64,
    records: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn snapshot(&self) -> State {
        *self.lock()
    }

    fn unacked(&self) -> u64 {
        self.lock().unacked
    }

    fn publish(&self, st: &State) {
        self.gauges.bytes.set(st.unacked as i64);
        self.gauges.records.set(st.records as i64);
    }

    /// The writer made `bytes` durable; `active` is `len` bytes long.
    fn committed(&self, active: u64, len: u64, bytes: u64, records: u64) {
        let mut st = self.lock();
        st.active = active;
        st.durable = len;
        st.unacked += bytes;
        st.records += records;
        self.publish(&st);
        drop(st);
        self.readable.notify_one();
    }

    fn finish_writing(&self) {
        self.lock().writer_done = true;
        self.readable.notify_one();
    }

    /// The sink acknowledged `bytes` (and `records`).
    fn released(&self, bytes: u64, records: u64) {
        let mut st = self.lock();
        st.unacked = st.unacked.saturating_sub(bytes);
        // Records in damaged frames are never released: resync when empty.
        st.records = if st.unacked == 0 {
            0
        } else {
            st.records.saturating_sub(records)
        };
        self.publish(&st);
        drop(st);
        self.space.notify_one();
    }

    fn sink_failed(&self) {
        let mut st = self.lock();
        if st.writer_done {
            st.gave_up = true;
            drop(st);
            self.readable.notify_one();
        }
    }
}

/// Failures of one kind of write (segments, the position file), told once
/// per outage and at most once a minute: a disk the sink frees bit by bit
/// fails and recovers again each time the writer has used up the room a
/// deleted segment gave back. Every failed attempt is counted all the same
/// (`logferry_buffer_write_errors_total`).
#[derive(Debug, Default)]
struct Outage {
    /// Since when writes fail, and how many attempts failed.
    failing: Option<(Instant, u64)>,
    /// This outage's start was logged.
    warned: bool,
    last_warned: Option<Instant>,
}

const WARN_EVERY: Duration = Duration::from_secs(60);

impl Outage {
    /// A failed attempt; true when it starts an outage worth a warning.
    fn failed(&mut self) -> bool {
        let now = Instant::now();
        match &mut self.failing {
            Some((_, attempts)) => {
                *attempts += 1;
                false
            }
            None => {
                self.failing = Some((now, 1));
                self.warned = self
                    .last_warned
                    .is_none_or(|t| now.saturating_duration_since(t) >= WARN_EVERY);
                if self.warned {
                    self.last_warned = Some(now);
                }
                self.warned
            }
        }
    }

    /// A good write; `(seconds, failed attempts)` of the outage it ends,
    /// when its start was logged.
    fn ok(&mut self) -> Option<(u64, u64)> {
        let (since, attempts) = self.failing.take()?;
        std::mem::take(&mut self.warned).then(|| (since.elapsed().as_secs(), attempts))
    }
}

/// Runs file I/O off the async workers. `None` only when the runtime is
/// shutting down (the process is exiting); a panic in `f` is resumed.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => Some(v),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => None,
    }
}

/// Starts the disk buffer in front of a sink: recovers the directory (cuts a
/// torn tail, finds the position), spawns the writer, the reader and the
/// acker into `tasks`, and returns the receiver the sink reads instead of
/// `input`. Blocking I/O here is start-up only (one segment verified).
pub fn spawn(
    b: DiskBuffer,
    input: mpsc::Receiver<Batch>,
    tasks: &mut JoinSet<()>,
) -> Result<mpsc::Receiver<Batch>, DiskBufferError> {
    let open_err = |source| DiskBufferError::Open {
        dir: b.dir.clone(),
        source,
    };
    let found = segment::recover(&b.dir).map_err(open_err)?;
    if found.torn_bytes > 0 {
        b.gauges.torn_writes.inc();
        tracing::warn!(sink = %b.sink_id, bytes = found.torn_bytes,
            "disk buffer: cut an incomplete frame (a crash mid-write) off the newest segment; it was never acknowledged");
    }
    let segment_size = (b.config.max_size.as_u64() / 8).clamp(MIN_SEGMENT, MAX_SEGMENT);
    let state = State {
        active: found.next_segment,
        unacked: found.bytes,
        records: found.records,
        ..State::default()
    };
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        readable: Notify::new(),
        space: Notify::new(),
        settled: Notify::new(),
        gauges: b.gauges.clone(),
    });
    shared.publish(&state);
    if found.bytes > 0 {
        tracing::info!(sink = %b.sink_id, bytes = found.bytes, records = found.records,
            "disk buffer: resuming delivery of buffered data");
    }

    let (out_tx, out_rx) = mpsc::channel(OUT_CAPACITY);
    let (ack_tx, ack_rx) = std::sync::mpsc::channel();
    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    // Acks arrive on a std channel (tokens are dropped anywhere, also off the
    // runtime); a small thread hands them to the acker. It ends when every
    // token and the emitter's sender are gone. The channel is bounded by the
    // batches in flight, which `memory_limit` bounds.
    std::thread::Builder::new()
        .name("logferry-bufack".into())
        .spawn(move || {
            while let Ok(a) = ack_rx.recv() {
                if acks_tx.send(a).is_err() {
                    break;
                }
            }
        })
        .map_err(DiskBufferError::Thread)?;
    let tracker = Arc::new(Mutex::new(InOrder::default()));
    let span = tracing::info_span!("buffer", sink = %b.sink_id);

    let writer = writer::Writer {
        seg: Some(writer::SegmentWriter::new(
            b.dir.clone(),
            found.next_segment,
            segment_size,
        )),
        shared: shared.clone(),
        config: b.config,
        m: b.metrics.clone(),
        gauges: b.gauges.clone(),
        stop: b.stop.clone(),
        dropping: false,
        failing: Outage::default(),
    };
    tasks.spawn(writer.run(input).instrument(span.clone()));
    let gauges_for_acker = b.gauges.clone();
    let emitter = reader::Emitter {
        dir: b.dir.clone(),
        shared: shared.clone(),
        tracker: tracker.clone(),
        ack_tx,
        out: out_tx,
        memory: b.memory,
        memory_limit: b.memory_limit,
        gauges: b.gauges,
        m: b.metrics,
        stop: b.stop.clone(),
        pos: found.position,
        open: None,
        read_errors: 0,
    };
    tasks.spawn(emitter.run().instrument(span.clone()));
    let acker = reader::Acker {
        dir: b.dir,
        shared,
        tracker,
        stop: b.stop,
        pos: found.position,
        saved: found.position,
        failing: false,
        saving: Outage::default(),
        gauges: gauges_for_acker,
    };
    tasks.spawn(acker.run(acks_rx).instrument(span));
    Ok(out_rx)
}

#[cfg(test)]
mod tests;
