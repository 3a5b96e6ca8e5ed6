use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Mutex;

use super::*;
use crate::event::{Ack, batch_of};
use crate::metrics::Metrics;

/// Name, bytes, reason and records of a delivered object.
type Delivered = (String, Vec<u8>, CloseReason, u64);

/// Objects kept in memory; `opened` counts streams given an output.
#[derive(Default, Clone)]
struct Mem {
    delivered: Arc<Mutex<Vec<Delivered>>>,
    opened: Arc<Mutex<usize>>,
    fail: bool,
    panic: bool,
}

impl Destination for Mem {
    type Out = Vec<u8>;
    type State = ();

    fn name(&self, prefix: &str, _batch: &Batch, _i: usize) -> String {
        format!("{prefix}{}", uuid::Uuid::now_v7().simple())
    }

    fn open(&mut self, _name: &str) -> io::Result<Vec<u8>> {
        *self.opened.lock().unwrap() += 1;
        Ok(Vec::new())
    }

    fn held(out: &Vec<u8>) -> usize {
        out.len()
    }

    async fn deliver(&mut self, objects: Vec<Closed<Vec<u8>, ()>>) -> Vec<Delivery> {
        assert!(!self.panic, "a destination panicked");
        let mut out = Vec::new();
        for o in objects {
            let bytes = match o.body {
                Body::Whole(b) | Body::Streamed(b) => b,
            };
            self.delivered
                .lock()
                .unwrap()
                .push((o.name, bytes, o.reason, o.records));
            out.push(if self.fail {
                Delivery::Failed
            } else {
                Delivery::Delivered
            });
        }
        out
    }

    fn error(&mut self, e: &ObjectError) {
        panic!("unexpected error: {e}");
    }
}

fn decode(c: Compression, b: &[u8]) -> Vec<u8> {
    match c {
        Compression::Gzip => {
            // GzDecoder reads one member: a second one would be missed.
            let mut s = Vec::new();
            flate2::read::GzDecoder::new(b).read_to_end(&mut s).unwrap();
            s
        }
        Compression::Zstd => {
            assert_eq!(zstd::zstd_safe::find_frame_compressed_size(b), Ok(b.len()), "one frame");
            zstd::decode_all(b).unwrap()
        }
        Compression::None => b.to_vec(),
    }
}

fn batching(c: Compression) -> Batching {
    Batching {
        key_prefix: Template::parse("{k}/").unwrap(),
        compression: c,
        compression_level: None,
        max_object_size: 50 << 20,
        flush_interval: Duration::from_secs(3600),
        format: Default::default(),
    }
}

struct Setup {
    metrics: Metrics,
    sem: Arc<Semaphore>,
    objects: ObjectBatcher<Mem>,
    dest: Mem,
}

fn setup(cfg: Batching, limit: usize) -> Setup {
    let metrics = Metrics::new();
    let sem = Arc::new(Semaphore::new(limit));
    let budget = Budget {
        memory: sem.clone(),
        memory_limit: limit,
        m: metrics.component("out", "file"),
    };
    Setup {
        objects: ObjectBatcher::new(cfg, budget),
        metrics,
        sem,
        dest: Mem::default(),
    }
}

/// `n` records for key `k`, each `pad` bytes of text, numbered from `from`.
fn records(k: &str, from: usize, n: usize, pad: usize) -> Vec<String> {
    (from..from + n)
        .map(|i| format!(r#"{{"k":"{k}","id":{i},"msg":"{}"}}"#, "x".repeat(pad)))
        .collect()
}

fn batch(lines: &[String]) -> Batch {
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    batch_of(&refs)
}

/// Pops, delivers and settles every ready object.
fn deliver_all(s: &mut Setup) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    while let Some(r) = s.objects.pop_ready() {
        let (closed, ticket) = r.unwrap();
        let out = rt.block_on(s.dest.deliver(vec![closed]));
        s.objects.settle(ticket, out == [Delivery::Delivered]);
    }
}

/// Records per key prefix over what was delivered, decoded.
fn delivered_lines(s: &Setup, c: Compression) -> BTreeMap<String, Vec<String>> {
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, bytes, ..) in s.dest.delivered.lock().unwrap().iter() {
        let key = name.split('/').next().unwrap().to_string();
        let text = String::from_utf8(decode(c, bytes)).unwrap();
        by_key.entry(key).or_default().extend(text.lines().map(str::to_string));
    }
    by_key
}

fn metric(m: &Metrics, reason: &str) -> u64 {
    let want = format!(r#"logferry_sink_objects_closed_total{{component="out",reason="{reason}"}} "#);
    m.encode()
        .lines()
        .find_map(|l| l.strip_prefix(&want).map(|v| v.parse().unwrap()))
        .unwrap_or(0)
}

#[test]
fn small_objects_compress_when_they_close_and_large_ones_stream() {
    for c in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let mut s = setup(batching(c), 64 << 20);
        let small = records("small", 0, 10, 20);
        // 2,000 records of ~150 bytes: past STAGE_LIMIT, so it gets a stream.
        let large = records("large", 0, 2_000, 120);
        let mut mixed = Vec::new();
        for (i, l) in large.iter().enumerate() {
            mixed.push(l.clone());
            if let Some(x) = small.get(i) {
                mixed.push(x.clone());
            }
        }
        for chunk in mixed.chunks(300) {
            s.objects.write_batch(batch(chunk), &mut s.dest).unwrap();
            s.objects.relieve(false);
        }
        assert_eq!(s.objects.streaming, 1, "{c:?}: only the large object streams");
        assert_eq!(*s.dest.opened.lock().unwrap(), 1);
        s.objects.close_all();
        deliver_all(&mut s);
        let got = delivered_lines(&s, c);
        assert_eq!(got["small"], small, "{c:?}");
        assert_eq!(got["large"], large, "{c:?}");
        assert_eq!(metric(&s.metrics, "shutdown"), 2);
        let kept = s.objects.one_shot.as_ref().map_or(0, |o| o.1) + s.objects.buffers.bytes;
        assert_eq!(
            s.objects.held(),
            kept,
            "only the shared context and reusable buffers are left"
        );
        assert_eq!(s.sem.available_permits() + s.objects.charged(), 64 << 20);
    }
}

#[test]
fn the_largest_objects_close_first_when_the_limit_has_no_room() {
    let limit = 8 << 20;
    let mut s = setup(batching(Compression::Gzip), limit);
    // 40 keys of 2..=80 KiB (staged, none reaches STAGE_LIMIT), written in
    // one batch per key.
    let mut written = 0;
    for k in 0..40 {
        let lines = records(&format!("k{k:02}"), 0, 4 * (k + 1), 500);
        written += lines.len();
        s.objects.write_batch(batch(&lines), &mut s.dest).unwrap();
        s.objects.relieve(false);
    }
    assert_eq!(metric(&s.metrics, "memory"), 0, "fits: nothing closed yet");
    let held = s.objects.held();
    assert_eq!(s.objects.charged(), held);
    // Everything but 100 KiB of the limit is taken elsewhere, and the
    // objects grow past what the charge covers.
    let other = s
        .sem
        .clone()
        .try_acquire_many_owned((s.sem.available_permits() - 100_000) as u32)
        .unwrap();
    let more = records("k00", 1000, 400, 500);
    written += more.len();
    s.objects.write_batch(batch(&more), &mut s.dest).unwrap();
    let mut before: Vec<(usize, u64, String)> = s
        .objects
        .open
        .iter()
        .map(|(k, o)| (o.charged, o.bytes, k.clone()))
        .collect();
    before.sort_by(|a, b| b.cmp(a));
    s.objects.relieve(false);
    let mut closed: Vec<String> = s.objects.closing.iter().map(|(k, _)| k.clone()).collect();
    assert!(
        !closed.is_empty() && closed.len() < 41,
        "some, not all: {}",
        closed.len()
    );
    let mut largest: Vec<String> = before.iter().take(closed.len()).map(|(.., k)| k.clone()).collect();
    closed.sort();
    largest.sort();
    assert_eq!(closed, largest, "the largest (then the fullest) close first");
    assert!(s.objects.closing.iter().all(|(_, r)| *r == CloseReason::Memory));
    // What they free is at least the gap plus the margin.
    let freed: usize = s.objects.closing.iter().map(|(k, _)| s.objects.open[k].charged).sum();
    assert!(freed >= held + 400 * 520 - s.objects.charged(), "freed {freed}");
    deliver_all(&mut s);
    assert_eq!(metric(&s.metrics, "memory"), closed.len() as u64);
    assert!(s.objects.charged() <= s.objects.held());
    drop(other);
    s.objects.close_all();
    deliver_all(&mut s);
    let got: usize = delivered_lines(&s, Compression::Gzip).values().map(Vec::len).sum();
    assert_eq!(got, written, "closing early loses nothing");
    assert_eq!(s.sem.available_permits() + s.objects.charged(), limit);
}

#[test]
fn an_idle_sink_frees_room_for_a_waiting_source_only_when_it_holds_most() {
    let limit = 4 << 20;
    let mut s = setup(batching(Compression::None), limit);
    // 18 staged objects of ~100 KiB (128 KiB buffers): over half the limit,
    // under the 3/4 the objects may hold.
    for k in 0..18 {
        s.objects
            .write_batch(batch(&records(&format!("k{k}"), 0, 190, 500)), &mut s.dest)
            .unwrap();
        s.objects.relieve(false);
    }
    assert!(s.objects.held() >= limit / 2 && s.objects.closing.is_empty());
    let rest = s.sem.available_permits();
    let waiting = s.sem.clone().try_acquire_many_owned(rest as u32).unwrap();
    s.objects.relieve(false);
    assert!(s.objects.closing.is_empty(), "input pending: it will bring memory");
    s.objects.relieve(true);
    deliver_all(&mut s);
    assert!(metric(&s.metrics, "memory") > 0, "idle with no room left: closes");
    assert!(
        s.sem.available_permits() >= 2 * s.objects.reserve,
        "{}",
        s.sem.available_permits()
    );

    // Holding less than half: the memory is someone else's to free.
    let mut small = setup(batching(Compression::None), limit);
    small
        .objects
        .write_batch(batch(&records("a", 0, 100, 500)), &mut small.dest)
        .unwrap();
    small.objects.relieve(false);
    let all = small.sem.available_permits();
    let _taken = small.sem.clone().try_acquire_many_owned(all as u32).unwrap();
    small.objects.relieve(true);
    assert!(small.objects.closing.is_empty());
    drop(waiting);
}

#[test]
fn a_batch_permit_pays_for_the_records_it_leaves_behind() {
    let limit = 1 << 20;
    let mut s = setup(batching(Compression::Gzip), limit);
    let mut b = batch(&records("a", 0, 100, 100));
    // A permit larger than what the records become (buffer, entry, the
    // smaller buffers kept for reuse).
    let permit = 64 * 1024;
    Arc::get_mut(&mut b.records).unwrap().permit = Some(s.sem.clone().try_acquire_many_owned(permit).unwrap());
    // The rest of the limit is taken: only the batch's permit can pay.
    let rest = s.sem.available_permits();
    let _rest = s.sem.clone().try_acquire_many_owned(rest as u32).unwrap();
    s.objects.write_batch(b, &mut s.dest).unwrap();
    s.objects.relieve(false);
    let held = s.objects.held();
    assert!(held > 0 && held < permit as usize, "{held}");
    assert_eq!(s.objects.charged(), held, "paid from the batch's permit");
    assert_eq!(
        s.sem.available_permits(),
        permit as usize - held,
        "its rest is given back"
    );
    assert!(s.objects.closing.is_empty(), "nothing closed");
}

#[test]
fn objects_close_at_max_object_size_and_after_flush_interval() {
    let mut cfg = batching(Compression::Gzip);
    cfg.max_object_size = 10_000;
    let mut s = setup(cfg, 64 << 20);
    let lines = records("a", 0, 100, 200);
    s.objects.write_batch(batch(&lines), &mut s.dest).unwrap();
    let full = metric(&s.metrics, "size");
    assert!(full >= 2, "{full}");
    s.objects.cfg.flush_interval = Duration::ZERO;
    s.objects.expire();
    deliver_all(&mut s);
    assert_eq!(metric(&s.metrics, "age"), 1, "the last, partial object");
    assert_eq!(delivered_lines(&s, Compression::Gzip)["a"], lines);
    for (_, bytes, reason, records) in s.dest.delivered.lock().unwrap().iter() {
        let plain = decode(Compression::Gzip, bytes).len() as u64;
        if *reason == CloseReason::Size {
            assert!((10_000..10_300).contains(&plain), "{plain} bytes, {records} records");
        }
    }
}

#[test]
fn acks_are_released_only_for_delivered_objects() {
    let (tx, rx) = std::sync::mpsc::channel::<Ack>();
    let mut s = setup(batching(Compression::Gzip), 64 << 20);
    let mut b1 = batch(&[records("a", 0, 2, 5), records("b", 0, 1, 5)].concat());
    b1.ack = Some(AckToken::new(1, 1, tx.clone()));
    s.objects.write_batch(b1, &mut s.dest).unwrap();
    let mut b2 = batch(&records("c", 0, 1, 5));
    b2.ack = Some(AckToken::new(1, 2, tx.clone()));
    s.objects.write_batch(b2, &mut s.dest).unwrap();
    assert!(rx.try_recv().is_err(), "held while the objects are open");
    s.objects.close_all();
    // Deliver a and b (the first two closed may be in any order): batch 1
    // is acknowledged once both are; c fails.
    let mut fails = s.dest.clone();
    fails.fail = true;
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    while let Some(r) = s.objects.pop_ready() {
        let (closed, ticket) = r.unwrap();
        let c = closed.name.starts_with("c/");
        let dest = if c { &mut fails } else { &mut s.dest };
        let out = rt.block_on(dest.deliver(vec![closed]));
        s.objects.settle(ticket, out == [Delivery::Delivered]);
    }
    let mut acks: Vec<(u64, bool)> = rx.try_iter().map(|a| (a.seq, a.delivered)).collect();
    acks.sort();
    assert_eq!(acks, [(1, true), (2, false)]);

    // Objects dropped undelivered (the sink stopped) fail their batches.
    let mut b3 = batch(&records("d", 0, 1, 5));
    b3.ack = Some(AckToken::new(1, 3, tx));
    s.objects.write_batch(b3, &mut s.dest).unwrap();
    drop(s);
    assert_eq!(
        rx.try_iter().map(|a| (a.seq, a.delivered)).collect::<Vec<_>>(),
        [(3, false)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_loop_delivers_everything_and_gives_the_memory_back() {
    let metrics = Metrics::new();
    let limit = 2 << 20;
    let sem = Arc::new(Semaphore::new(limit));
    let dest = Mem::default();
    let (tx, rx) = mpsc::channel(4);
    let task = tokio::spawn(run(
        dest.clone(),
        batching(Compression::Zstd),
        rx,
        Budget {
            memory: sem.clone(),
            memory_limit: limit,
            m: metrics.component("out", "file"),
        },
    ));
    // 300 keys interleaved, 20 records each: more than the limit holds.
    let mut want = 0;
    for round in 0..20 {
        let lines: Vec<String> = (0..300)
            .flat_map(|k| records(&format!("k{k}"), round, 1, 400))
            .collect();
        want += lines.len();
        let mut b = batch(&lines);
        let bytes = b.records.buf.len() as u32;
        Arc::get_mut(&mut b.records).unwrap().permit = Some(sem.clone().acquire_many_owned(bytes).await.unwrap());
        tx.send(b).await.unwrap();
    }
    drop(tx);
    task.await.unwrap();
    let got: u64 = dest.delivered.lock().unwrap().iter().map(|d| d.3).sum();
    assert_eq!(got, want as u64);
    assert!(metric(&metrics, "memory") > 0, "the limit forced early closes");
    assert_eq!(sem.available_permits(), limit, "all memory given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_on_the_sinks_thread_is_the_sink_tasks_panic() {
    let metrics = Metrics::new();
    let dest = Mem {
        panic: true,
        ..Mem::default()
    };
    let (tx, rx) = mpsc::channel(1);
    let task = tokio::spawn(run(
        dest,
        batching(Compression::Gzip),
        rx,
        Budget {
            memory: Arc::new(Semaphore::new(1 << 20)),
            memory_limit: 1 << 20,
            m: metrics.component("out", "file"),
        },
    ));
    tx.send(batch(&records("a", 0, 1, 5))).await.unwrap();
    drop(tx);
    let joined = task.await;
    assert!(joined.is_err_and(|e| e.is_panic()), "the task ends in the panic");
}
