//! The disk buffer as a whole: restarts, crashes, damage, space. Waits have
//! generous limits and only guard against hangs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::segment::{self, segment_path};
use super::{DiskBuffer, spawn};
use crate::buffer::{DiskBufferConfig, WhenFull};
use crate::checkpoint::tmpfs::Tmpfs;
use crate::event::{Ack, AckToken, Batch, Records};
use crate::metrics::Metrics;

const LIMIT: Duration = Duration::from_secs(30);

/// One buffer run over `dir`, with upstream acks observed.
struct Run {
    tx: Option<mpsc::Sender<Batch>>,
    rx: mpsc::Receiver<Batch>,
    tasks: JoinSet<()>,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
    up_tx: std::sync::mpsc::Sender<Ack>,
    up_rx: std::sync::mpsc::Receiver<Ack>,
}

fn start(dir: &Path, max_size: ByteSize, when_full: WhenFull) -> Run {
    let metrics = Arc::new(Metrics::new());
    let stop = CancellationToken::new();
    let (tx, inbox) = mpsc::channel(4);
    let mut tasks = JoinSet::new();
    let rx = spawn(
        DiskBuffer {
            sink_id: "out".into(),
            dir: dir.to_path_buf(),
            config: DiskBufferConfig { max_size, when_full },
            memory: Arc::new(Semaphore::new(64 << 20)),
            memory_limit: 64 << 20,
            metrics: metrics.component("out", "blackhole"),
            gauges: metrics.buffer("out"),
            stop: stop.clone(),
        },
        inbox,
        &mut tasks,
    )
    .unwrap();
    let (up_tx, up_rx) = std::sync::mpsc::channel();
    Run {
        tx: Some(tx),
        rx,
        tasks,
        stop,
        metrics,
        up_tx,
        up_rx,
    }
}

/// A batch of records `{"id":N,"pad":"..."}` for ids `ids`, each about `pad` bytes.
fn batch(ids: std::ops::Range<u64>, pad: usize, ack: Option<AckToken>) -> Batch {
    let mut r = Records::default();
    let padding = "x".repeat(pad);
    for id in ids {
        let start = r.buf.len();
        r.buf
            .extend_from_slice(format!(r#"{{"id":{id},"pad":"{padding}"}}"#).as_bytes());
        r.push_written(start, id as i64, 0);
    }
    Batch::new(r, ack)
}

fn ids(b: &Batch) -> Vec<u64> {
    (0..b.len())
        .map(|i| {
            let v: serde_json::Value = serde_json::from_slice(b.records.text(i)).unwrap();
            v["id"].as_u64().unwrap()
        })
        .collect()
}

impl Run {
    /// Sends batches `0..n` of `per` records each (batch `k` has ids
    /// `k*per..(k+1)*per`, upstream ack seq `k`) from a task of its own.
    fn producer(&self, n: u64, per: u64, pad: usize) -> tokio::task::JoinHandle<()> {
        let tx = self.tx.clone().unwrap();
        let up = self.up_tx.clone();
        tokio::spawn(async move {
            for k in 0..n {
                let b = batch(k * per..(k + 1) * per, pad, Some(AckToken::new(0, k, up.clone())));
                tx.send(b).await.unwrap();
            }
        })
    }

    async fn send_n(&self, n: u64, per: u64, pad: usize) {
        self.producer(n, per, pad).await.unwrap();
    }

    async fn recv(&mut self) -> Option<Batch> {
        tokio::time::timeout(LIMIT, self.rx.recv())
            .await
            .expect("a batch within the limit")
    }

    /// Upstream acks received so far (all must be `delivered`).
    fn upstream_acked(&self) -> usize {
        let mut n = 0;
        while let Ok(a) = self.up_rx.try_recv() {
            assert!(a.delivered, "{a:?}");
            n += 1;
        }
        n
    }

    fn metric(&self, name: &str) -> f64 {
        let text = self.metrics.encode();
        text.lines()
            .find(|l| l.starts_with(name) && l.contains(r#"component="out""#))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    /// A counter that may not exist yet (0 then).
    fn count(&self, name: &str) -> f64 {
        let text = self.metrics.encode();
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Closes the inbox, drains the sink side (acknowledging each batch),
    /// waits for every task; returns the ids delivered.
    async fn finish(mut self) -> Vec<u64> {
        self.tx = None;
        let mut got = Vec::new();
        while let Some(b) = self.recv().await {
            got.extend(ids(&b));
        }
        self.join().await;
        got
    }

    /// Waits for every buffer task to end.
    async fn join(&mut self) {
        tokio::time::timeout(LIMIT, async { while self.tasks.join_next().await.is_some() {} })
            .await
            .expect("buffer tasks end");
    }

    /// Stops now (as on a forced exit) and waits for the tasks.
    async fn stop(mut self) {
        self.stop.cancel();
        self.tx = None;
        self.join().await;
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

/// Bytes the frames of `b` take on disk.
fn framed_len(b: &Batch) -> u64 {
    let (mut out, mut spans) = (Vec::new(), Vec::new());
    super::frame::Encoder::new(super::frame::FRAME_TARGET).encode(b, &mut out, &mut spans);
    out.len() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_in_order_and_removes_acked_segments() {
    let dir = tempfile::tempdir().unwrap();
    // 1 MiB segments; ~6 MiB of records.
    let mut run = start(dir.path(), ByteSize::mib(8), WhenFull::Block);
    let producer = run.producer(100, 100, 600);
    let mut got = Vec::new();
    while got.len() < 10_000 {
        let b = run.recv().await.unwrap();
        got.extend(ids(&b));
    }
    producer.await.unwrap();
    assert_eq!(got, (0..10_000).collect::<Vec<_>>());
    // Everything acknowledged: finished segments go, the gauges return to 0.
    wait_for("bytes gauge at 0", || run.metric("logferry_buffer_bytes") == 0.0).await;
    assert_eq!(run.metric("logferry_buffer_records"), 0.0);
    wait_for("only the active segment left", || {
        segment::list(dir.path()).unwrap().len() == 1
    })
    .await;
    assert_eq!(run.upstream_acked(), 100);
    assert!(run.finish().await.is_empty());
    // A clean end leaves no segment, and the position says where to go on.
    assert_eq!(files(dir.path()), vec![dir.path().join("position.json")]);
    let pos = segment::load_position(dir.path()).unwrap().unwrap();
    assert_eq!(pos.offset, 0);
    assert!(pos.segment >= 6, "{pos:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tag_survives_the_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = start(dir.path(), ByteSize::mib(8), WhenFull::Block);
    let tx = run.tx.clone().unwrap();
    for (k, tag) in [Some("app-firelens-1"), None, Some("worker-firelens-1")]
        .into_iter()
        .enumerate()
    {
        let mut b = batch(k as u64 * 10..(k as u64 + 1) * 10, 10, None);
        b.tag = tag.map(std::sync::Arc::from);
        tx.send(b).await.unwrap();
    }
    drop(tx);
    let mut got = Vec::new();
    while got.len() < 3 {
        let b = run.recv().await.unwrap();
        got.push((ids(&b)[0], b.tag.as_deref().map(str::to_string)));
    }
    assert_eq!(
        got,
        vec![
            (0, Some("app-firelens-1".to_string())),
            (10, None),
            (20, Some("worker-firelens-1".to_string()))
        ]
    );
    assert_eq!(run.finish().await, Vec::<u64>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_at_the_acked_position() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = start(dir.path(), ByteSize::mib(64), WhenFull::Block);
    run.send_n(10, 10, 50).await;
    wait_for("all buffered", || run.metric("logferry_buffer_records") == 100.0).await;
    let mut held = Vec::new();
    for k in 0..10u64 {
        let b = run.recv().await.unwrap();
        assert_eq!(ids(&b), (k * 10..k * 10 + 10).collect::<Vec<_>>());
        held.push(b);
    }
    // The sink makes batches 0..4 durable, and 6 (out of order: not passed).
    drop(held.drain(0..4));
    held.remove(2);
    wait_for("acks applied", || run.metric("logferry_buffer_records") == 60.0).await;
    run.stop().await;
    drop(held);

    // Batches 4.. come again, nothing before.
    let run = start(dir.path(), ByteSize::mib(64), WhenFull::Block);
    assert_eq!(run.metric("logferry_buffer_records"), 60.0);
    assert_eq!(run.finish().await, (40..100).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_sink_fails_while_draining_stays_for_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = start(dir.path(), ByteSize::mib(64), WhenFull::Block);
    run.send_n(10, 10, 50).await;
    run.tx = None;
    drop(run.recv().await.unwrap());
    let failed = run.recv().await.unwrap();
    failed.fail();
    drop(failed);
    // The reader stops feeding the sink (when it learns of the failure:
    // how many it sent before is a race) and closes the sink's channel.
    while let Some(b) = run.recv().await {
        assert!(ids(&b)[0] >= 20);
    }
    run.join().await;
    // The position stays before the failed batch.
    let run = start(dir.path(), ByteSize::mib(64), WhenFull::Block);
    assert_eq!(run.finish().await, (10..100).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_then_torn_tail_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = start(dir.path(), ByteSize::mib(64), WhenFull::Block);
    run.send_n(20, 10, 50).await;
    wait_for("upstream acks", || run.metric("logferry_buffer_records") == 200.0).await;
    for _ in 0..5 {
        drop(run.recv().await.unwrap());
    }
    // The position reaches disk within about a second.
    let acked: u64 = (0..5).map(|k| framed_len(&batch(k * 10..k * 10 + 10, 50, None))).sum();
    wait_for("position saved", || {
        segment::load_position(dir.path())
            .unwrap()
            .is_some_and(|p| p.offset == acked)
    })
    .await;
    let saved = segment::load_position(dir.path()).unwrap().unwrap();
    // kill -9: no task gets to save anything more.
    run.tasks.abort_all();
    while run.tasks.join_next().await.is_some() {}
    drop(run);
    // ... and the crash hit the writer mid-frame: half a frame at the end.
    let seg = segment_path(dir.path(), saved.segment);
    let len = std::fs::metadata(&seg).unwrap().len();
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut f, &super::frame::MAGIC).unwrap();
    std::io::Write::write_all(&mut f, &[200, 0, 0, 0, 1, 2, 3, 4, 5, 6]).unwrap();
    drop(f);

    let run = start(dir.path(), ByteSize::mib(64), WhenFull::Block);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len, "torn tail cut");
    assert_eq!(run.metric("logferry_buffer_torn_writes_total"), 1.0);
    // Everything after the saved position, in order, each once.
    assert_eq!(run.finish().await, (50..200).collect::<Vec<_>>(), "saved at {saved:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_frames_are_skipped_counted_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let run = start(dir.path(), ByteSize::mib(64), WhenFull::Block);
    run.send_n(40, 10, 200).await;
    wait_for("all buffered", || run.metric("logferry_buffer_records") == 400.0).await;
    run.stop().await;
    let segs = segment::list(dir.path()).unwrap();
    assert_eq!(segs.len(), 1);
    let path = segment_path(dir.path(), segs[0]);
    let mut data = std::fs::read(&path).unwrap();
    // One frame per batch; JSON and these metas never hold the magic's 0xFE.
    let headers: Vec<usize> = memchr::memmem::find_iter(&data, &super::frame::MAGIC).collect();
    assert_eq!(headers.len(), 40);
    // Flipped bytes inside frame 13's payload, a damaged length in frame 27.
    for b in &mut data[headers[13] + 40..headers[13] + 48] {
        *b ^= 0xA5;
    }
    data[headers[27] + 4] ^= 0x10;
    std::fs::write(&path, &data).unwrap();

    let run = start(dir.path(), ByteSize::mib(64), WhenFull::Block);
    let metrics = run.metrics.clone();
    let got = run.finish().await;
    let text = metrics.encode();
    assert!(
        text.contains(r#"logferry_buffer_corrupt_frames_total{component="out"} 2"#),
        "{text}"
    );
    let want: Vec<u64> = (0..400)
        .filter(|i| !(130..140).contains(i) && !(270..280).contains(i))
        .collect();
    assert_eq!(got, want);
    assert!(text.contains(r#"logferry_buffer_bytes{component="out"} 0"#), "{text}");
    assert_eq!(files(dir.path()), vec![dir.path().join("position.json")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_stops_taking_input_at_max_size_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = start(dir.path(), ByteSize::mib(1), WhenFull::Block);
    // 40 batches of ~100 KiB: four times max_size.
    let producer = run.producer(40, 100, 1000);
    // The sink takes nothing: about max_size is taken in, then the inbox
    // fills and stays full.
    let tx = run.tx.clone().unwrap();
    let mut acked = 0;
    wait_for("the buffer full", || {
        acked += run.upstream_acked();
        acked >= 10 && tx.capacity() == 0
    })
    .await;
    // Give a buffer that does not block the time to show it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    acked += run.upstream_acked();
    assert!(acked <= 11, "{acked} batches taken in");
    let bytes = run.metric("logferry_buffer_bytes");
    assert!(bytes <= 1024.0 * 1024.0, "{bytes}");
    assert!(!producer.is_finished());
    // The sink catches up: everything flows.
    let mut got = Vec::new();
    while got.len() < 4000 {
        got.extend(ids(&run.recv().await.unwrap()));
    }
    producer.await.unwrap();
    assert_eq!(got, (0..4000).collect::<Vec<_>>());
    drop(tx);
    wait_for("every upstream ack", || {
        acked += run.upstream_acked();
        acked == 40
    })
    .await;
    assert!(run.finish().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_newest_drops_counts_and_releases_acks() {
    let dir = tempfile::tempdir().unwrap();
    let run = start(dir.path(), ByteSize::mib(1), WhenFull::DropNewest);
    // The sink takes nothing while 40 batches of ~100 KiB arrive.
    run.send_n(40, 100, 1000).await;
    let mut acked = 0;
    wait_for("every upstream ack", || {
        acked += run.upstream_acked();
        acked == 40
    })
    .await;
    let dropped = run.metric(r#"logferry_component_discarded_events_total{component="out",reason="buffer_full""#);
    assert!(dropped >= 2900.0, "{dropped}");
    let got = run.finish().await;
    assert_eq!(got.len() as f64 + dropped, 4000.0);
    assert_eq!(got, (0..got.len() as u64).collect::<Vec<_>>(), "the oldest are kept");
}

#[test]
fn an_outage_is_warned_once_and_flapping_within_a_minute_only_counted() {
    let mut o = super::Outage::default();
    assert!(o.failed(), "the first failure is told");
    assert!(!o.failed());
    assert_eq!(o.ok().map(|(_, attempts)| attempts), Some(2), "and its end");
    assert_eq!(o.ok(), None);
    // Failing again right after: counted by the caller, not told, and
    // neither is its end.
    assert!(!o.failed());
    assert_eq!(o.ok(), None);
}

/// A multi-threaded runtime built on this thread, after a [`Tmpfs`] mount:
/// its threads see the mount (`#[tokio::test]` builds one before).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Leaves `free` bytes of the tmpfs free (a frame is then cut short by the
/// disk, not refused whole); returns the filler.
fn fill_but(fs: &Tmpfs, free: u64) -> PathBuf {
    let filler = fs.fill();
    let f = std::fs::OpenOptions::new().write(true).open(&filler).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(free)).unwrap();
    filler
}

const NO_SPACE: &str = r#"logferry_buffer_write_errors_total{component="out",reason="no_space"}"#;

#[test]
fn a_full_disk_holds_batches_unacknowledged_and_resumes_when_space_returns() {
    let Some(fs) = Tmpfs::mount("4m") else { return };
    runtime().block_on(async {
        let dir = fs.path().join("buf");
        let mut run = start(&dir, ByteSize::mib(64), WhenFull::Block);
        let filler = fill_but(&fs, 8192);
        // 20 batches of ~100 KiB: none fits.
        let producer = run.producer(20, 100, 1000);
        wait_for("failed writes", || run.count(NO_SPACE) >= 3.0).await;
        // Nothing acknowledged upstream (a failed ack would panic here too),
        // nothing readable.
        assert_eq!(run.upstream_acked(), 0);
        assert!(run.rx.try_recv().is_err());
        std::fs::remove_file(filler).unwrap();
        // Room again: everything, in order, once.
        let mut got = Vec::new();
        while got.len() < 2000 {
            got.extend(ids(&run.recv().await.unwrap()));
        }
        producer.await.unwrap();
        assert_eq!(got, (0..2000).collect::<Vec<_>>());
        let mut acked = 0;
        wait_for("every upstream ack", || {
            acked += run.upstream_acked();
            acked == 20
        })
        .await;
        assert_eq!(run.metric("logferry_buffer_corrupt_frames_total"), 0.0);
        assert!(run.finish().await.is_empty());
        // A later start finds nothing torn, damaged or left over.
        let run = start(&dir, ByteSize::mib(64), WhenFull::Block);
        assert_eq!(run.metric("logferry_buffer_torn_writes_total"), 0.0);
        let metrics = run.metrics.clone();
        assert!(run.finish().await.is_empty());
        assert!(
            metrics
                .encode()
                .contains(r#"logferry_buffer_corrupt_frames_total{component="out"} 0"#)
        );
    });
}

#[test]
fn a_disk_the_buffer_filled_itself_gets_room_back_as_the_sink_catches_up() {
    let Some(fs) = Tmpfs::mount("3m") else { return };
    runtime().block_on(async {
        let dir = fs.path().join("buf");
        // Segments of 8 MiB: larger than the disk, which the buffer fills
        // before max_size; the position file cannot be saved either.
        let mut run = start(&dir, ByteSize::mib(64), WhenFull::Block);
        let producer = run.producer(40, 100, 1000);
        wait_for("the disk full", || run.count(NO_SPACE) >= 1.0).await;
        // Only the sink frees space: the segment it has taken must go even
        // though the position cannot be saved.
        let mut got = Vec::new();
        while got.len() < 4000 {
            got.extend(ids(&run.recv().await.unwrap()));
        }
        producer.await.unwrap();
        assert_eq!(got, (0..4000).collect::<Vec<_>>());
        let mut acked = 0;
        wait_for("every upstream ack", || {
            acked += run.upstream_acked();
            acked == 40
        })
        .await;
        assert!(run.finish().await.is_empty());
    });
}

#[test]
fn delivered_segments_are_deleted_even_when_the_position_cannot_be_saved() {
    let Some(fs) = Tmpfs::mount("6m") else { return };
    runtime().block_on(async {
        let dir = fs.path().join("buf");
        // Segments of 1 MiB; ~3 MiB of records: three or four of them.
        let mut run = start(&dir, ByteSize::mib(8), WhenFull::Block);
        run.send_n(30, 100, 1000).await;
        wait_for("all durable", || run.metric("logferry_buffer_records") == 3000.0).await;
        let before = segment::list(&dir).unwrap();
        assert!(before.len() >= 3, "{before:?}");
        let filler = fs.fill();
        // The sink takes everything; the position cannot be saved.
        let mut got = Vec::new();
        while got.len() < 3000 {
            got.extend(ids(&run.recv().await.unwrap()));
        }
        assert_eq!(got, (0..3000).collect::<Vec<_>>());
        wait_for("the finished segments deleted", || {
            segment::list(&dir).unwrap().len() == 1
        })
        .await;
        assert!(
            run.count(NO_SPACE) >= 1.0,
            "the position was saved: the disk was not full"
        );
        std::fs::remove_file(filler).unwrap();
        run.send_n(5, 100, 1000).await;
        let mut got = Vec::new();
        while got.len() < 500 {
            got.extend(ids(&run.recv().await.unwrap()));
        }
        assert_eq!(got, (0..500).collect::<Vec<_>>());
        assert!(run.finish().await.is_empty());
    });
}

#[test]
fn a_stop_while_the_disk_is_full_fails_what_was_not_written_and_keeps_what_was() {
    let Some(fs) = Tmpfs::mount("4m") else { return };
    runtime().block_on(async {
        let dir = fs.path().join("buf");
        let run = start(&dir, ByteSize::mib(64), WhenFull::Block);
        run.send_n(5, 100, 1000).await;
        wait_for("five batches durable", || {
            run.metric("logferry_buffer_records") == 500.0
        })
        .await;
        let filler = fill_but(&fs, 8192);
        let tx = run.tx.clone().unwrap();
        for k in 5..10u64 {
            let b = batch(
                k * 100..(k + 1) * 100,
                1000,
                Some(AckToken::new(0, k, run.up_tx.clone())),
            );
            tx.send(b).await.unwrap();
        }
        drop(tx);
        wait_for("failed writes", || run.count(NO_SPACE) >= 2.0).await;
        // Stop now (a forced exit): what is not written is failed upstream,
        // so its source reads it again; what was written stays.
        let mut run = run;
        run.stop.cancel();
        run.tx = None;
        run.join().await;
        let mut outcomes: Vec<(u64, bool)> = run.up_rx.try_iter().map(|a| (a.seq, a.delivered)).collect();
        drop(run);
        outcomes.sort_unstable();
        let want: Vec<(u64, bool)> = (0..10).map(|k| (k, k < 5)).collect();
        assert_eq!(outcomes, want);
        std::fs::remove_file(filler).unwrap();
        let run = start(&dir, ByteSize::mib(64), WhenFull::Block);
        // The frame the disk cut short was cut off before the retry: nothing
        // torn, nothing damaged, each acknowledged record once.
        assert_eq!(run.metric("logferry_buffer_torn_writes_total"), 0.0);
        let metrics = run.metrics.clone();
        assert_eq!(run.finish().await, (0..500).collect::<Vec<_>>());
        assert!(
            metrics
                .encode()
                .contains(r#"logferry_buffer_corrupt_frames_total{component="out"} 0"#)
        );
    });
}

/// Throughput through the buffer (writer fsync included), for the record:
/// `cargo test --release -p logferry --lib buffer_throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn buffer_throughput() {
    let dir = tempfile::tempdir_in(std::env::var("BUFFER_BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let mut run = start(dir.path(), ByteSize::mib(256), WhenFull::Block);
    // Batches like the file source's: 256 KiB of ~200-byte records.
    let (batches, per) = (800u64, 1300u64);
    let started = std::time::Instant::now();
    let producer = run.producer(batches, per, 170);
    let (mut records, mut bytes) = (0u64, 0u64);
    while records < batches * per {
        let b = run.recv().await.unwrap();
        records += b.len() as u64;
        bytes += b.records.buf.len() as u64;
    }
    producer.await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "disk buffer: {records} records, {:.0} MiB in {secs:.2}s: {:.0} MiB/s, {:.0} records/s",
        bytes as f64 / 1048576.0,
        bytes as f64 / 1048576.0 / secs,
        records as f64 / secs
    );
    assert!(run.finish().await.is_empty());
}
