//! The compactor over an in-memory bucket: records come out exactly once
//! whatever write the run dies at, and however many times it is run again.

use std::collections::BTreeMap;
use std::io::Write as _;

use bytes::Bytes;
use parquet::file::reader::{FileReader, SerializedFileReader};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::store::MemoryStore;
use super::*;
use crate::config::IndexerConfig;
use std::sync::atomic::Ordering;

const BUCKET: &str = "logs-bucket";
const PREFIX: &str = "logs/2026/12/03/14/";

fn cfg(inputs: InputAction, file_input_bytes: u64) -> IndexerConfig {
    let mut c = IndexerConfig::from_lookup(&|_| None).expect("defaults");
    c.compact.inputs = inputs;
    c.compact.file_input_bytes = file_input_bytes;
    c.compact.part_bytes = 1024;
    c.compact.row_group_bytes = 16 << 10;
    c.compact.columns = crate::compacted::parse_declared("id:string,latency:double").expect("valid");
    c
}

fn job() -> Job {
    Job {
        bucket: BUCKET.into(),
        prefix: PREFIX.into(),
        hour: parse_hour("2026-12-03T14").expect("an hour"),
        source: "logs".into(),
    }
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn record(obj: usize, i: usize) -> Value {
    json!({
        "@timestamp": format!("2026-12-03T14:{:02}:{:02}.{:03}Z", obj % 60, i % 60, i % 1000),
        "level": (["info", "warn", "error"][i % 3]),
        "log": format!("object {obj} line {i} {}", "x".repeat(i % 50)),
        "ecs_task_id": format!("task-{}", obj % 3),
        "kubernetes": {"pod_name": format!("web-{obj}"), "labels": {"app": "web", "n": i.to_string()}},
        "id": format!("{obj}-{i}"),
        "latency": i as f64 + 0.25,
    })
}

/// Inputs: `objects` gzip NDJSON objects (one plain, one zstd), a bad line
/// in object 1, and one object outside the prefix.
fn inputs(objects: usize, lines: usize) -> (Vec<(String, Vec<u8>)>, Vec<Value>) {
    let mut out = Vec::new();
    let mut all = Vec::new();
    for obj in 0..objects {
        let mut text = String::new();
        for i in 0..lines {
            let r = record(obj, i);
            text.push_str(&r.to_string());
            text.push('\n');
            all.push(r);
            if obj == 1 && i == 2 {
                text.push_str("not json at all\n");
            }
        }
        let (name, body) = match obj % 5 {
            3 => (format!("{PREFIX}o-{obj:03}.ndjson"), text.into_bytes()),
            4 => (
                format!("{PREFIX}o-{obj:03}.ndjson.zst"),
                zstd::encode_all(text.as_bytes(), 3).unwrap(),
            ),
            _ => (format!("{PREFIX}o-{obj:03}.ndjson.gz"), gz(text.as_bytes())),
        };
        out.push((name, body));
    }
    out.push((
        "logs/2026/12/03/15/later.ndjson.gz".into(),
        gz(record(99, 0).to_string().as_bytes()),
    ));
    (out, all)
}

/// Every record in the partition's Parquet files, rebuilt.
fn compacted(store: &MemoryStore, cfg: &IndexerConfig) -> Vec<Value> {
    let dir = job().dir(&cfg.compact);
    let st = store.state.lock().unwrap();
    let mut out = Vec::new();
    for (k, (body, _, _)) in st.objects.range(dir.clone()..) {
        if !k.starts_with(&dir) {
            break;
        }
        if k.ends_with(".parquet") {
            let r = SerializedFileReader::new(Bytes::from(body.clone())).unwrap();
            for row in r.get_row_iter(None).unwrap() {
                out.push(crate::compacted::record_of(&row.unwrap()));
            }
        }
    }
    out
}

fn quarantined(store: &MemoryStore) -> Vec<Value> {
    let st = store.state.lock().unwrap();
    let mut out = Vec::new();
    for (k, (body, _, _)) in &st.objects {
        if k.starts_with("_quarantine/compact/") {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut text).unwrap();
            out.extend(text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()));
        }
    }
    out
}

fn sorted(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by_key(|r| r.to_string());
    v
}

/// A claim by `run` at `minute` of the test's clock, for 16 minutes.
fn at(minute: i64, run: &str) -> lease::Claim {
    let now = DateTime::from_timestamp(1_900_000_000, 0).unwrap() + chrono::TimeDelta::minutes(minute);
    lease::Claim {
        run: run.to_string(),
        now,
        until: now + chrono::TimeDelta::minutes(16),
    }
}

/// A run an hour after the last one: any lease an earlier run left (it was
/// killed) has lapsed, as it has for a retry.
fn later() -> lease::Claim {
    static RUNS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let n = RUNS.fetch_add(1, Ordering::SeqCst);
    at(60 * n, &format!("run-{n}"))
}

/// The partition's lease object.
fn lease_key(c: &IndexerConfig) -> String {
    format!("{}{}", job().dir(&c.compact), lease::LEASE)
}

fn run<S: Store>(store: &Arc<S>, cfg: &IndexerConfig) -> Result<Summary, ProcessError> {
    run_as(store, cfg, &later())
}

fn run_as<S: Store>(store: &Arc<S>, cfg: &IndexerConfig, claim: &lease::Claim) -> Result<Summary, ProcessError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
        .block_on(compact(store.clone(), cfg, &job(), None, claim))
}

/// What Athena reads of the partition at any moment (every Parquet file,
/// manifest or not): records of the inputs, none twice.
fn athena_view_is_sound(store: &MemoryStore, cfg: &IndexerConfig, inputs: &[Value], ctx: &str) {
    let seen = sorted(compacted(store, cfg));
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "{ctx}: a record in two Parquet files");
    let inputs: std::collections::BTreeSet<String> = inputs.iter().map(|r| r.to_string()).collect();
    assert!(
        seen.iter().all(|r| inputs.contains(&r.to_string())),
        "{ctx}: a record no input holds"
    );
}

/// Asserts the end state of a partition after a run that succeeded.
fn check(store: &MemoryStore, cfg: &IndexerConfig, want: &[Value], ctx: &str) {
    let got = compacted(store, cfg);
    assert_eq!(got.len(), want.len(), "{ctx}: record count");
    assert_eq!(sorted(got), sorted(want.to_vec()), "{ctx}: records");
    let q = quarantined(store);
    assert_eq!(q.len(), 1, "{ctx}: quarantined lines: {q:?}");
    assert_eq!(q[0]["reason"], "not_json_object");
    assert_eq!(q[0]["text"], "not json at all");
    assert_eq!(q[0]["line"], 4);
    let st = store.state.lock().unwrap();
    let dir = job().dir(&cfg.compact);
    assert!(
        !st.objects.keys().any(|k| k.starts_with(&format!("{dir}_pending-"))),
        "{ctx}: a pending marker is left"
    );
    let ids: Vec<&String> = st
        .objects
        .keys()
        .filter(|k| k.starts_with(&format!("{dir}_manifest-")))
        .collect();
    let done = st
        .objects
        .keys()
        .filter(|k| k.starts_with(&format!("{dir}_done-")))
        .count();
    assert_eq!(ids.len(), done, "{ctx}: every manifest is done");
    for (k, (_, _, tags)) in &st.objects {
        if k.starts_with(PREFIX) {
            match cfg.compact.inputs {
                InputAction::Delete => panic!("{ctx}: input {k} not deleted"),
                InputAction::Tag => assert_eq!(
                    tags.get(COMPACTED_TAG.0).map(String::as_str),
                    Some(COMPACTED_TAG.1),
                    "{ctx}: input {k} not tagged"
                ),
                InputAction::Keep => assert!(tags.is_empty()),
            }
        }
    }
    assert!(
        st.objects.contains_key("logs/2026/12/03/15/later.ndjson.gz"),
        "{ctx}: outside the prefix"
    );
    assert_eq!(
        st.incomplete_uploads(),
        Vec::<String>::new(),
        "{ctx}: incomplete uploads left"
    );
}

#[test]
fn an_hour_becomes_parquet_with_every_record_once() {
    let (objs, want) = inputs(7, 40);
    for (action, cap) in [
        (InputAction::Tag, 1 << 30),
        (InputAction::Delete, 3000),
        (InputAction::Keep, 1),
    ] {
        let store = Arc::new(MemoryStore::with(objs.clone()));
        let c = cfg(action, cap);
        let s = run(&store, &c).expect("a clean run");
        assert_eq!(s.records, want.len() as u64);
        assert_eq!(s.quarantined, 1);
        assert_eq!(s.objects, 7);
        assert_eq!(s.found_by, "list");
        check(&store, &c, &want, &format!("{action:?}"));
        // Again: nothing new, nothing doubled.
        let again = run(&store, &c).expect("a second run");
        assert_eq!((again.objects, again.records), (0, 0));
        check(&store, &c, &want, &format!("{action:?} again"));
        if cap == 1 {
            assert_eq!(s.files, 7, "one file per input at a 1-byte cap");
        }
    }
}

#[test]
fn parquet_is_zstd_with_page_statistics_and_row_groups_by_size() {
    let (objs, _) = inputs(5, 4000);
    let store = Arc::new(MemoryStore::with(objs));
    let c = cfg(InputAction::Keep, 1 << 30);
    run(&store, &c).unwrap();
    let st = store.state.lock().unwrap();
    let (key, (body, _, _)) = st.objects.iter().find(|(k, _)| k.ends_with(".parquet")).unwrap();
    assert!(
        key.starts_with("compacted/dt=2026-12-03/hour=14/source=logs/part-"),
        "{key}"
    );
    let r = SerializedFileReader::new(Bytes::from(body.clone())).unwrap();
    let meta = r.metadata();
    assert!(meta.num_row_groups() > 1, "16 KiB row groups over ~4 MB of records");
    let rg = meta.row_group(0);
    let ts = rg.column(0);
    assert!(
        matches!(ts.compression(), parquet::basic::Compression::ZSTD(_)),
        "{:?}",
        ts.compression()
    );
    assert!(
        ts.statistics().is_some_and(|s| s.min_bytes_opt().is_some()),
        "min/max on @timestamp"
    );
    assert!(
        ts.column_index_offset().is_some(),
        "page index (page statistics) written"
    );
    // The declared columns, typed, and every row's value in them (none left in `rest`).
    let schema = meta.file_metadata().schema_descr();
    let column = |name: &str| (0..schema.num_columns()).find(|&i| schema.column(i).path().string() == name);
    let (id, latency) = (column("id").expect("id"), column("latency").expect("latency"));
    assert_eq!(schema.column(id).physical_type(), parquet::basic::Type::BYTE_ARRAY);
    assert_eq!(schema.column(latency).physical_type(), parquet::basic::Type::DOUBLE);
    for g in meta.row_groups() {
        for c in [id, latency] {
            assert_eq!(g.column(c).statistics().and_then(|s| s.null_count_opt()), Some(0));
        }
    }
}

#[test]
fn the_same_inputs_give_the_same_bytes() {
    let (objs, _) = inputs(4, 30);
    let a = Arc::new(MemoryStore::with(objs.clone()));
    let b = Arc::new(MemoryStore::with(objs));
    let c = cfg(InputAction::Keep, 1 << 30);
    run(&a, &c).unwrap();
    run(&b, &c).unwrap();
    let files = |s: &MemoryStore| -> BTreeMap<String, Vec<u8>> {
        let st = s.state.lock().unwrap();
        st.objects
            .iter()
            .filter(|(k, _)| k.ends_with(".parquet"))
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect()
    };
    assert_eq!(files(&a), files(&b));
}

/// The number of writes a clean run makes.
fn writes(objs: &[(String, Vec<u8>)], c: &IndexerConfig) -> u64 {
    let store = Arc::new(MemoryStore::with(objs.to_vec()));
    run(&store, c).unwrap();
    store.state.lock().unwrap().writes
}

/// A late object under the prefix; returns its records.
fn add_late(store: &MemoryStore, n: usize) -> Vec<Value> {
    let recs: Vec<Value> = (0..7).map(|i| record(100 + n, i)).collect();
    let text: String = recs.iter().map(|r| format!("{r}\n")).collect();
    store
        .state
        .lock()
        .unwrap()
        .insert(format!("{PREFIX}z-late-{n}.ndjson.gz"), gz(text.as_bytes()));
    recs
}

/// Dies at write `k`, for every `k` a clean run makes; then runs again,
/// directly or after a late object changed the inputs (so the killed run's
/// files, named by the old input set, are not overwritten but must go).
#[test]
fn a_crash_at_any_write_then_a_rerun_loses_and_doubles_nothing() {
    let (objs, want) = inputs(6, 60);
    for (action, cap, late) in [
        (InputAction::Delete, 1200, false),
        (InputAction::Tag, 1 << 30, false),
        (InputAction::Tag, 1 << 30, true),
    ] {
        let c = cfg(action, cap);
        let total = writes(&objs, &c);
        assert!(total > 20, "{total} writes: tiny parts give many crash points");
        for k in 0..total {
            let mut want = want.clone();
            let store = Arc::new(MemoryStore::with(objs.clone()));
            store.state.lock().unwrap().crash_after = Some(k);
            // The lease's removal, the last write, is only warned about when it fails.
            assert!(run(&store, &c).is_err() || k == total - 1, "the run dies at write {k}");
            {
                let mut st = store.state.lock().unwrap();
                st.crash_after = None;
                st.crashed = false;
            }
            athena_view_is_sound(&store, &c, &want, &format!("{action:?}, killed at write {k}"));
            if late {
                want.extend(add_late(&store, 1));
            }
            run(&store, &c).unwrap_or_else(|e| panic!("rerun after a crash at write {k}: {e}"));
            check(
                &store,
                &c,
                &want,
                &format!("{action:?}, late {late}, crash at write {k} of {total}"),
            );
        }
    }
}

#[derive(Clone, Debug)]
enum Step {
    /// Run, dying after this many writes (None: to the end).
    Run(Option<u64>),
    /// A late object arrives under the prefix.
    Late,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    /// Runs that die anywhere, late objects in between, then one clean run:
    /// every record of every input exactly once.
    #[test]
    fn crashes_and_late_objects_in_any_order(
        steps in prop::collection::vec(prop_oneof![
            4 => (0u64..120).prop_map(|k| Step::Run(Some(k))),
            1 => Just(Step::Run(None)),
            1 => Just(Step::Late),
        ], 1..6),
        delete in any::<bool>(),
        cap in prop_oneof![Just(1000u64), Just(1u64 << 30)],
    ) {
        let (objs, mut want) = inputs(5, 30);
        let c = cfg(if delete { InputAction::Delete } else { InputAction::Tag }, cap);
        let store = Arc::new(MemoryStore::with(objs));
        let mut late = 0;
        for step in steps.iter().chain([&Step::Run(None)]) {
            match step {
                Step::Run(crash) => {
                    {
                        let mut st = store.state.lock().unwrap();
                        st.crash_after = crash.map(|k| st.writes + k);
                        st.crashed = false;
                    }
                    let r = run(&store, &c);
                    if crash.is_none() {
                        prop_assert!(r.is_ok(), "{:?}", r.err());
                    }
                    store.state.lock().unwrap().crashed = false;
                    athena_view_is_sound(&store, &c, &want, &format!("{steps:?}"));
                }
                Step::Late => {
                    late += 1;
                    want.extend(add_late(&store, late));
                }
            }
        }
        check(&store, &c, &want, &format!("{steps:?}"));
    }
}

#[test]
fn index_documents_name_the_inputs() {
    let (mut objs, _) = inputs(3, 10);
    // An object in the index of another prefix and one not indexed at all.
    objs.push(("other/x.ndjson.gz".into(), gz(record(50, 0).to_string().as_bytes())));
    objs.push((
        format!("{PREFIX}unindexed.ndjson.gz"),
        gz(record(51, 0).to_string().as_bytes()),
    ));
    let store = Arc::new(MemoryStore::with(objs.clone()));
    let c = cfg(InputAction::Keep, 1 << 30);
    {
        let mut st = store.state.lock().unwrap();
        let keys: Vec<String> = st.objects.keys().cloned().collect();
        for key in keys.iter().filter(|k| !k.contains("unindexed") && !k.contains("/15/")) {
            let (body, etag, _) = st.objects[key].clone();
            let stats =
                crate::index::index_stream(&body[..], crate::index::Encoding::detect(None, key), &c.index).unwrap();
            let doc = stats.into_doc(BUCKET, key, &etag, body.len() as u64);
            let ikey = crate::doc::index_key(&c.index_prefix, &doc, Utc::now());
            st.insert(ikey, doc.to_bytes());
        }
    }
    let s = run(&store, &c).unwrap();
    assert_eq!(s.found_by, "index");
    assert_eq!(s.objects, 3, "the three indexed objects under the prefix");
    assert_eq!(s.records, 30);
}

#[test]
fn incomplete_inputs_are_never_deleted() {
    let (mut objs, _) = inputs(2, 10);
    let mut corrupt = gz(b"{\"a\":1}\n{\"a\":2}\n");
    corrupt.truncate(corrupt.len() - 6);
    objs.push((format!("{PREFIX}corrupt.ndjson.gz"), corrupt));
    let store = Arc::new(MemoryStore::with(objs));
    let mut c = cfg(InputAction::Delete, 1 << 30);
    c.index.max_decompressed_bytes = 1 << 20;
    run(&store, &c).unwrap();
    let st = store.state.lock().unwrap();
    assert!(st.objects.contains_key(&format!("{PREFIX}corrupt.ndjson.gz")), "kept");
    assert!(!st.objects.contains_key(&format!("{PREFIX}o-000.ndjson.gz")), "deleted");
    let dir = job().dir(&c.compact);
    let (_, (m, _, _)) = st
        .objects
        .iter()
        .find(|(k, _)| k.starts_with(&format!("{dir}_manifest-")))
        .unwrap();
    let m: Manifest = serde_json::from_slice(m).unwrap();
    let bad = m.inputs.iter().find(|i| i.key.ends_with("corrupt.ndjson.gz")).unwrap();
    assert!(!bad.complete);
    assert!(bad.error.is_some());
}

#[test]
fn hours_and_schedules() {
    let h = parse_hour("2026-12-03T14").unwrap();
    assert_eq!(parse_hour("2026-12-03T14:59:59.9Z"), Some(h));
    assert_eq!(parse_hour("2026-12-03T16:30:00+02:00"), Some(h));
    assert_eq!(parse_hour("yesterday"), None);
    let mut cc = crate::config::CompactConfig {
        bucket: Some("b".into()),
        sources: vec![("app".into(), "logs/app/%Y/%m/%d/%H/".into())],
        hours: 1,
        ..Default::default()
    };
    let now = parse_hour("2026-12-03T15").unwrap() + chrono::Duration::minutes(15);
    let jobs = scheduled_jobs(&cc, now);
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].prefix, "logs/app/2026/12/03/14/");
    assert_eq!(jobs[0].hour, h);
    cc.delay = std::time::Duration::from_secs(20 * 60);
    assert_eq!(
        scheduled_jobs(&cc, now)[0].prefix,
        "logs/app/2026/12/03/13/",
        "hour 14 not yet closed long enough"
    );
    assert_eq!(default_source("logs/2026/12/"), "logs");
    cc.hours = 3;
    let jobs = scheduled_jobs(&cc, now);
    let prefixes: Vec<&str> = jobs.iter().map(|j| j.prefix.as_str()).collect();
    assert_eq!(
        prefixes,
        [
            "logs/app/2026/12/03/11/",
            "logs/app/2026/12/03/12/",
            "logs/app/2026/12/03/13/"
        ]
    );
}

#[test]
fn the_emf_line_names_every_metric() {
    let s = Summary {
        objects: 3,
        records: 10,
        bytes_out: 99,
        ..Summary::default()
    };
    let v: Value = serde_json::from_str(&s.emf_line("fn", false, 1.5, 7)).unwrap();
    let metrics = &v["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(metrics["Namespace"], EMF_NAMESPACE);
    for m in metrics["Metrics"].as_array().unwrap() {
        let name = m["Name"].as_str().unwrap();
        assert!(v.get(name).is_some(), "{name} has no value");
    }
    assert_eq!(
        (v["Objects"].as_u64(), v["BytesOut"].as_u64(), v["Failed"].as_u64()),
        (Some(3), Some(99), Some(0))
    );
    assert_eq!(v["Seconds"], 1.5);
}

#[test]
fn a_near_deadline_leaves_groups_to_the_next_run() {
    let (objs, want) = inputs(6, 30);
    let store = Arc::new(MemoryStore::with(objs));
    let c = cfg(InputAction::Delete, 1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let soon = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let first = rt
        .block_on(compact(store.clone(), &c, &job(), Some(soon), &later()))
        .unwrap();
    assert_eq!((first.files, first.groups_left), (1, 5), "the first group always runs");
    let rest = rt.block_on(compact(store.clone(), &c, &job(), None, &later())).unwrap();
    assert_eq!((rest.files, rest.groups_left), (5, 0));
    check(&store, &c, &want, "after a run cut short by its deadline");
}

/// How [`Shaky`] fails a GET.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fail {
    /// GetObject returns an error.
    Get,
    /// The body breaks after a few bytes.
    Body,
}

/// A [`MemoryStore`] whose GETs take a while (a delay from a hash of the key,
/// so later GETs often finish first), can fail one key, and count what they
/// hand out: bodies' bytes read, GETs at once, uploads started.
#[derive(Default)]
struct Shaky {
    inner: MemoryStore,
    max_delay_ms: u64,
    fail: std::sync::Mutex<Option<(String, Fail)>>,
    handed_out: Arc<std::sync::atomic::AtomicU64>,
    gets_now: std::sync::atomic::AtomicU64,
    gets_max: std::sync::atomic::AtomicU64,
    uploads_started: std::sync::atomic::AtomicU64,
}

/// A body that counts the bytes read out of it.
struct Counted<R> {
    inner: R,
    count: Arc<std::sync::atomic::AtomicU64>,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.count.fetch_add(n, Ordering::SeqCst);
        r
    }
}

/// A body that fails when read.
struct Broken;

impl tokio::io::AsyncRead for Broken {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Err(io::Error::other("connection reset")))
    }
}

impl Store for Shaky {
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<store::Listed>, ProcessError> {
        self.inner.list(bucket, prefix).await
    }

    async fn get(&self, bucket: &str, key: &str, if_match: Option<&str>) -> Result<Option<store::Got>, ProcessError> {
        let now = self.gets_now.fetch_add(1, Ordering::SeqCst) + 1;
        self.gets_max.fetch_max(now, Ordering::SeqCst);
        if self.max_delay_ms > 0 {
            let ms = xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % (self.max_delay_ms + 1);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        let fail = self.fail.lock().unwrap().clone();
        let r = match fail {
            Some((ref k, Fail::Get)) if k == key => Err(ProcessError::new(
                FailureKind::S3Read,
                "GetObject",
                bucket,
                key,
                "503 SlowDown",
            )),
            _ => self.inner.get(bucket, key, if_match).await,
        };
        self.gets_now.fetch_sub(1, Ordering::SeqCst);
        let mut got = match r? {
            Some(g) => g,
            None => return Ok(None),
        };
        if fail.is_some_and(|(k, f)| k == key && f == Fail::Body) {
            use tokio::io::AsyncReadExt as _;
            got.body = Box::new(got.body.take(10).chain(Broken));
        }
        got.body = Box::new(Counted {
            inner: got.body,
            count: self.handed_out.clone(),
        });
        Ok(Some(got))
    }

    async fn put(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<(), ProcessError> {
        self.inner.put(bucket, key, body).await
    }

    async fn put_if(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        expected: Option<&str>,
    ) -> Result<Option<String>, ProcessError> {
        self.inner.put_if(bucket, key, body, expected).await
    }

    async fn delete(&self, bucket: &str, keys: &[String]) -> Result<(), ProcessError> {
        self.inner.delete(bucket, keys).await
    }

    async fn tag(&self, bucket: &str, key: &str, tag: (&str, &str)) -> Result<(), ProcessError> {
        self.inner.tag(bucket, key, tag).await
    }

    async fn upload_start(&self, bucket: &str, key: &str) -> Result<String, ProcessError> {
        self.uploads_started.fetch_add(1, Ordering::SeqCst);
        self.inner.upload_start(bucket, key).await
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload: &str,
        n: i32,
        body: Vec<u8>,
    ) -> Result<String, ProcessError> {
        self.inner.upload_part(bucket, key, upload, n, body).await
    }

    async fn upload_complete(
        &self,
        bucket: &str,
        key: &str,
        upload: &str,
        parts: Vec<(i32, String)>,
    ) -> Result<(), ProcessError> {
        self.inner.upload_complete(bucket, key, upload, parts).await
    }

    async fn upload_abort(&self, bucket: &str, key: &str, upload: &str) -> Result<(), ProcessError> {
        self.inner.upload_abort(bucket, key, upload).await
    }

    async fn uploads_list(&self, bucket: &str, prefix: &str) -> Result<Vec<(String, String)>, ProcessError> {
        self.inner.uploads_list(bucket, prefix).await
    }
}

fn shaky(objs: Vec<(String, Vec<u8>)>, max_delay_ms: u64) -> Arc<Shaky> {
    Arc::new(Shaky {
        inner: MemoryStore::with(objs),
        max_delay_ms,
        ..Shaky::default()
    })
}

fn parquet_files(s: &MemoryStore) -> BTreeMap<String, Vec<u8>> {
    let st = s.state.lock().unwrap();
    st.objects
        .iter()
        .filter(|(k, _)| k.ends_with(".parquet") || k.contains("_manifest-"))
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

/// GETs that finish in another order than they started: rows come out in
/// input order, and the files and manifests are the bytes a store without
/// delays gives.
#[test]
fn read_ahead_keeps_the_input_order_whatever_order_gets_finish_in() {
    let (objs, want) = inputs(24, 50);
    let c = cfg(InputAction::Keep, 1 << 30);
    let plain = Arc::new(MemoryStore::with(objs.clone()));
    run(&plain, &c).unwrap();
    let slow = shaky(objs, 15);
    let s = run(&slow, &c).unwrap();
    assert_eq!(s.objects, 24);
    assert_eq!(compacted(&slow.inner, &c), want, "rows in input order");
    check(&slow.inner, &c, &want, "delayed GETs");
    assert_eq!(parquet_files(&slow.inner), parquet_files(&plain));
    let gets = slow.gets_max.load(Ordering::SeqCst);
    assert!(gets > 1, "GETs overlapped ({gets} at most)");
    assert!(gets <= READ_AHEAD_GETS as u64 + 1, "{gets} GETs at once");
}

/// A GET that fails mid-pipeline (the call or its body) fails the group as
/// before: no manifest, the started upload aborted; a re-run then gives
/// every record once.
#[test]
fn a_failing_get_mid_pipeline_fails_the_group_and_a_rerun_gives_every_record_once() {
    for fail in [Fail::Get, Fail::Body] {
        // Over 8,192 rows before the seventh: a row group is under way.
        let (objs, want) = inputs(10, 1400);
        let c = cfg(InputAction::Delete, 1 << 30);
        let store = shaky(objs, 5);
        *store.fail.lock().unwrap() = Some((format!("{PREFIX}o-007.ndjson.gz"), fail));
        let e = run(&store, &c).expect_err("the seventh input cannot be read");
        assert_eq!(e.kind, FailureKind::S3Read, "{fail:?}: {e}");
        assert!(e.to_string().contains("o-007"), "{fail:?}: {e}");
        {
            let st = store.inner.state.lock().unwrap();
            assert!(
                !st.objects.keys().any(|k| k.contains("_manifest-")),
                "{fail:?}: no manifest"
            );
            assert_eq!(
                st.objects.keys().filter(|k| k.starts_with(PREFIX)).count(),
                10,
                "{fail:?}: inputs kept"
            );
            assert_eq!(
                st.incomplete_uploads(),
                Vec::<String>::new(),
                "{fail:?}: the upload is aborted"
            );
        }
        assert!(
            store.uploads_started.load(Ordering::SeqCst) > 0,
            "{fail:?}: an upload was under way"
        );
        *store.fail.lock().unwrap() = None;
        run(&store, &c).unwrap();
        check(&store.inner, &c, &want, &format!("{fail:?}: re-run"));
    }
}

/// The read-ahead buffers no more than its budget: stored bytes handed out
/// by the store and not yet consumed stay within the budget plus one object
/// (an object over the budget streams), with sizes the listing got wrong
/// and GETs finishing out of order.
#[test]
fn read_ahead_stays_within_its_byte_budget() {
    use tokio::io::AsyncReadExt as _;
    const BUDGET: u64 = 3000;
    const GETS: usize = 16;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut objs = Vec::new();
    let mut cands = Vec::new();
    for i in 0..60u64 {
        // Mostly small, a few over the budget.
        let len = if i % 17 == 5 {
            4000
        } else {
            (xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()) % 2500) as usize
        };
        let body: Vec<u8> = (0..len).map(|j| (j as u64 * 31 + i) as u8).collect();
        objs.push((format!("{PREFIX}b-{i:03}"), body));
    }
    let store = shaky(objs.clone(), 3);
    {
        let st = store.inner.state.lock().unwrap();
        for (i, (k, b)) in objs.iter().enumerate() {
            // Every seventh listed at half its size.
            let size = if i % 7 == 3 { b.len() as u64 / 2 } else { b.len() as u64 };
            cands.push(Candidate {
                key: k.clone(),
                etag: st.objects[k].1.clone(),
                size,
            });
        }
    }
    let biggest = objs.iter().map(|(_, b)| b.len() as u64).max().unwrap();
    let mut ra = ahead::ReadAhead::new(rt.handle(), store.clone(), BUCKET, cands.clone(), GETS, BUDGET);
    let mut consumed = 0u64;
    let mut most = 0u64;
    for (n, c) in cands.iter().enumerate() {
        // Let the read-ahead run ahead of a slow decoder now and then.
        if n % 5 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let outstanding = store.handed_out.load(Ordering::SeqCst) - consumed;
        most = most.max(outstanding);
        assert!(outstanding <= BUDGET + biggest, "input {n}: {outstanding} bytes held");
        let mut read = ra.next(c).unwrap();
        let mut got = read.got.take().expect("present");
        let mut body = Vec::new();
        rt.block_on(got.body.read_to_end(&mut body)).unwrap();
        assert_eq!(body, objs[n].1, "input {n}: its own bytes");
        consumed += body.len() as u64;
        drop(read);
    }
    assert_eq!(store.handed_out.load(Ordering::SeqCst), consumed);
    assert!(most > 1000, "inputs were buffered ahead ({most} bytes at most)");
    let gets = store.gets_max.load(Ordering::SeqCst);
    assert!((2..=GETS as u64 + 1).contains(&gets), "{gets} GETs at once");
}

/// A run killed in the middle of its upload leaves an incomplete upload;
/// the next run's recovery aborts it.
#[test]
fn recovery_aborts_the_upload_a_killed_run_left() {
    let (objs, want) = inputs(6, 300);
    let c = cfg(InputAction::Tag, 1 << 30);
    let store = Arc::new(MemoryStore::with(objs));
    // Dies at the fourth write: lease, pending marker, upload start, first part.
    store.state.lock().unwrap().crash_after = Some(3);
    run(&store, &c).expect_err("killed");
    {
        let mut st = store.state.lock().unwrap();
        assert_eq!(st.incomplete_uploads().len(), 1, "the killed run's upload is left");
        st.crash_after = None;
        st.crashed = false;
    }
    run(&store, &c).unwrap();
    check(&store, &c, &want, "after recovery");
}

/// A run killed at each of its writes leaves its lease (unless it died
/// writing it). A second run while that lease lives stops as busy and
/// writes nothing at all, whatever the killed run left; one after the lease
/// lapsed takes it over and leaves every record exactly once, and no lease.
#[test]
fn a_live_lease_keeps_a_second_run_out_and_a_lapsed_one_is_taken_over() {
    let (objs, want) = inputs(4, 40);
    let c = cfg(InputAction::Delete, 1000);
    let total = {
        let store = Arc::new(MemoryStore::with(objs.clone()));
        run_as(&store, &c, &at(0, "clean")).unwrap();
        store.state.lock().unwrap().writes
    };
    let lease_key = lease_key(&c);
    for k in 1..total {
        let store = Arc::new(MemoryStore::with(objs.clone()));
        store.state.lock().unwrap().crash_after = Some(k);
        let _ = run_as(&store, &c, &at(0, "killed"));
        let before = {
            let mut st = store.state.lock().unwrap();
            st.crash_after = None;
            st.crashed = false;
            st.clone()
        };
        if k < total - 1 {
            assert!(
                before.objects.contains_key(&lease_key),
                "killed at write {k}: its lease stays"
            );
        }
        // Ten minutes later, the lease (16 minutes) still lives.
        let busy = run_as(&store, &c, &at(10, "second")).unwrap();
        if k < total - 1 {
            let b = busy.busy.expect("busy");
            assert_eq!(b.run, "killed", "write {k}");
            assert_eq!(busy.files + busy.objects + busy.orphans_removed, 0);
            let after = store.state.lock().unwrap().clone();
            assert_eq!(
                after.objects, before.objects,
                "killed at write {k}: a busy run changes nothing"
            );
            assert_eq!(after.incomplete_uploads(), before.incomplete_uploads());
        }
        // Twenty minutes later it has lapsed.
        let done = run_as(&store, &c, &at(20, "third")).unwrap();
        assert!(done.busy.is_none(), "write {k}: {done:?}");
        check(
            &store,
            &c,
            &want,
            &format!("after a run killed at write {k} of {total}"),
        );
        let st = store.state.lock().unwrap();
        assert!(!st.objects.contains_key(&lease_key), "write {k}: the lease is given up");
        assert_eq!(st.incomplete_uploads(), Vec::<String>::new(), "write {k}");
    }
}

/// Two runs started together over the same partition (GETs slowed, so
/// the first is mid-way when the second asks): exactly one holds the lease,
/// the other is busy, and every record is there once.
#[test]
fn two_runs_at_once_one_compacts_the_other_is_busy() {
    let (objs, want) = inputs(5, 30);
    let c = cfg(InputAction::Delete, 1000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for round in 0..5 {
        let store = shaky(objs.clone(), 3);
        let (a, b) = rt.block_on(async {
            let (j, a, b) = (job(), at(round, "a"), at(round, "b"));
            let one = compact(store.clone(), &c, &j, None, &a);
            let two = compact(store.clone(), &c, &j, None, &b);
            tokio::join!(one, two)
        });
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(
            a.busy.is_some() != b.busy.is_some(),
            "round {round}: exactly one is busy: {a:?} {b:?}"
        );
        check(&store.inner, &c, &want, &format!("round {round}"));
    }
}

/// A lease that is not JSON (written by hand, another version) does not
/// hold the partition for ever: it counts as lapsed.
#[test]
fn a_lease_that_does_not_parse_counts_as_lapsed() {
    let (objs, want) = inputs(2, 10);
    let c = cfg(InputAction::Tag, 1 << 30);
    let store = Arc::new(MemoryStore::with(objs));
    let key = lease_key(&c);
    store.state.lock().unwrap().insert(key.clone(), b"not a lease".to_vec());
    let s = run_as(&store, &c, &at(0, "a")).unwrap();
    assert!(s.busy.is_none());
    check(&store, &c, &want, "over a lease that does not parse");
    assert!(!store.state.lock().unwrap().objects.contains_key(&key));
}
