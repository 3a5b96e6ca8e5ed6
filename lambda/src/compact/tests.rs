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

fn run(store: &Arc<MemoryStore>, cfg: &IndexerConfig) -> Result<Summary, ProcessError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
        .block_on(compact(store.clone(), cfg, &job(), None))
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

/// Dies at write `k`, for every `k` a clean run makes; then runs again.
#[test]
fn a_crash_at_any_write_then_a_rerun_loses_and_doubles_nothing() {
    let (objs, want) = inputs(6, 60);
    for (action, cap) in [(InputAction::Delete, 1200), (InputAction::Tag, 1 << 30)] {
        let c = cfg(action, cap);
        let total = writes(&objs, &c);
        assert!(total > 20, "{total} writes: tiny parts give many crash points");
        for k in 0..total {
            let store = Arc::new(MemoryStore::with(objs.clone()));
            store.state.lock().unwrap().crash_after = Some(k);
            assert!(run(&store, &c).is_err(), "the run dies at write {k}");
            {
                let mut st = store.state.lock().unwrap();
                st.crash_after = None;
                st.crashed = false;
            }
            run(&store, &c).unwrap_or_else(|e| panic!("rerun after a crash at write {k}: {e}"));
            check(&store, &c, &want, &format!("{action:?}, crash at write {k} of {total}"));
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
                }
                Step::Late => {
                    late += 1;
                    let recs: Vec<Value> = (0..7).map(|i| record(100 + late, i)).collect();
                    let text: String = recs.iter().map(|r| format!("{r}\n")).collect();
                    want.extend(recs);
                    store.state.lock().unwrap().insert(format!("{PREFIX}z-late-{late}.ndjson.gz"), gz(text.as_bytes()));
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
    let first = rt.block_on(compact(store.clone(), &c, &job(), Some(soon))).unwrap();
    assert_eq!((first.files, first.groups_left), (1, 5), "the first group always runs");
    let rest = rt.block_on(compact(store.clone(), &c, &job(), None)).unwrap();
    assert_eq!((rest.files, rest.groups_left), (5, 0));
    check(&store, &c, &want, "after a run cut short by its deadline");
}
