//! Index documents computed from the fixtures in `tests/fixtures/`: the same
//! records stored plain, gzip and zstd; an empty object; bad lines; corrupt,
//! truncated and oversized streams.

use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;

use logferry_indexer::bloom::Bloom;
use logferry_indexer::config::IndexOptions;
use logferry_indexer::doc::{IndexDoc, QuarantineReason, index_key};
use logferry_indexer::fields::query_tokens;
use logferry_indexer::index::{Encoding, IndexError, IndexStats, index_stream};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn index(name: &str, opts: &IndexOptions) -> Result<IndexStats, IndexError> {
    let f = File::open(fixture(name)).expect("fixture exists");
    index_stream(f, Encoding::detect(None, name), opts)
}

fn doc(name: &str) -> IndexDoc {
    let size = std::fs::metadata(fixture(name)).expect("fixture").len();
    index(name, &IndexOptions::default())
        .expect("indexes")
        .into_doc("logs", &format!("app/{name}"), "\"etag\"", size)
}

fn filter(d: &IndexDoc) -> Bloom {
    Bloom::from_doc(&d.tokens.filter).expect("valid filter")
}

#[test]
fn plain_gzip_and_zstd_give_the_same_statistics() {
    let plain = doc("records.ndjson");
    assert_eq!(plain.version, 1);
    assert_eq!(plain.encoding, "none");
    assert_eq!(plain.records, 26);
    assert_eq!(plain.bad_lines, 0);
    assert_eq!(plain.records_without_time, 1);
    assert_eq!(
        plain.uncompressed_bytes,
        std::fs::metadata(fixture("records.ndjson")).expect("f").len()
    );
    assert_eq!(plain.min_time.as_deref(), Some("2026-03-07T04:10:00Z"));
    assert_eq!(plain.max_time.as_deref(), Some("2026-03-07T04:59:00Z"));
    assert_eq!(plain.levels.get("info"), Some(&8));
    assert_eq!(plain.levels.get("warn"), Some(&8));
    assert_eq!(plain.levels.get("error"), Some(&8));
    let d = &plain.distinct;
    assert_eq!(d["ecs_task_id"].values, ["task-a", "task-b"]);
    assert!(d["ecs_task_id"].complete);
    assert_eq!(d["ecs_cluster"].values, ["prod"]);
    assert_eq!(d["container_name"].values, ["app"]);
    assert_eq!(d["kubernetes.namespace_name"].values, ["shop"]);
    assert_eq!(d["kubernetes.pod_name"].values, ["web-0", "web-1"]);
    let f = filter(&plain);
    for word in [
        "timeout",
        "retrying",
        "req",
        "0007",
        "Grüße",
        "txt",
        "000001",
        "processed",
    ] {
        assert!(f.contains(word), "{word} not in the filter");
    }
    assert!(!query_tokens("upstream timeout").iter().any(|t| !f.contains(t)));

    for compressed in ["records.ndjson.gz", "records.ndjson.zst"] {
        let c = doc(compressed);
        assert_eq!(c.encoding, if compressed.ends_with(".gz") { "gzip" } else { "zstd" });
        let normalize = |mut d: IndexDoc| {
            d.key.clear();
            d.size = 0;
            d.encoding.clear();
            d
        };
        assert_eq!(normalize(c), normalize(plain.clone()), "{compressed}");
    }
}

#[test]
fn same_object_same_key_and_bytes() {
    let a = doc("records.ndjson.gz");
    let b = doc("records.ndjson.gz");
    assert_eq!(a.to_bytes(), b.to_bytes());
    let fallback = chrono::DateTime::UNIX_EPOCH;
    let key = index_key("_index/", &a, fallback);
    assert_eq!(key, index_key("_index/", &b, fallback));
    assert!(key.starts_with("_index/dt=2026-03-07/hour=04/"), "{key}");
    assert!(key.ends_with(".json"));
    // The document reads back as it was written.
    let back: IndexDoc = serde_json::from_slice(&a.to_bytes()).expect("parses");
    assert_eq!(back, a);
}

#[test]
fn empty_object() {
    let d = doc("empty.ndjson.gz");
    assert_eq!((d.records, d.bad_lines, d.uncompressed_bytes), (0, 0, 0));
    assert_eq!(d.min_time, None);
    assert!(d.distinct.values().all(|v| v.complete && v.values.is_empty()));
    // No record time: the index document goes under the fallback hour.
    let t = chrono::DateTime::from_timestamp(1_772_856_000, 0).expect("valid");
    assert!(index_key("_index/", &d, t).starts_with("_index/dt=2026-03-07/hour=04/"));
    assert!(!filter(&d).contains("anything"));
}

#[test]
fn a_few_bad_lines_are_counted_too_many_quarantine() {
    let d = doc("some-bad-lines.ndjson");
    assert_eq!((d.records, d.bad_lines), (26, 1));
    match index("bad-lines.ndjson", &IndexOptions::default()) {
        Err(IndexError::Bad {
            reason: QuarantineReason::BadLines,
            lines,
            bad_lines,
            ..
        }) => {
            assert_eq!((lines, bad_lines), (13, 3));
        }
        other => panic!("expected bad_lines, got {other:?}"),
    }
    let lenient = IndexOptions {
        max_bad_line_ratio: 0.5,
        ..IndexOptions::default()
    };
    let ok = index("bad-lines.ndjson", &lenient).expect("within the ratio");
    assert_eq!((ok.records, ok.bad_lines), (10, 3));
}

#[test]
fn corrupt_and_truncated_streams_are_quarantined() {
    for name in ["corrupt.ndjson.gz", "truncated.ndjson.gz"] {
        match index(name, &IndexOptions::default()) {
            Err(IndexError::Bad {
                reason: QuarantineReason::Corrupt,
                ..
            }) => {}
            other => panic!("{name}: expected corrupt, got {other:?}"),
        }
    }
    let mut truncated_zstd = std::fs::read(fixture("records.ndjson.zst")).expect("fixture");
    truncated_zstd.truncate(truncated_zstd.len() / 2);
    match index_stream(&truncated_zstd[..], Encoding::Zstd, &IndexOptions::default()) {
        Err(IndexError::Bad {
            reason: QuarantineReason::Corrupt,
            ..
        }) => {}
        other => panic!("truncated zstd: expected corrupt, got {other:?}"),
    }
}

#[test]
fn gzip_bomb_stops_at_the_limit() {
    // 64 MiB of one repeated JSON line compresses to ~100 KiB.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let line = b"{\"log\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}\n";
    let mut written = 0;
    while written < 64 << 20 {
        gz.write_all(line).expect("mem");
        written += line.len();
    }
    let bomb = gz.finish().expect("mem");
    assert!(bomb.len() < 1 << 20);
    let opts = IndexOptions {
        max_decompressed_bytes: 8 << 20,
        ..IndexOptions::default()
    };
    match index_stream(&bomb[..], Encoding::Gzip, &opts) {
        Err(IndexError::Bad {
            reason: QuarantineReason::TooLarge,
            uncompressed_bytes,
            ..
        }) => {
            assert!(
                uncompressed_bytes > 8 << 20 && uncompressed_bytes < 9 << 20,
                "{uncompressed_bytes}"
            );
        }
        other => panic!("expected too_large, got {other:?}"),
    }
}

#[test]
fn distinct_values_past_the_cap_are_incomplete() {
    let opts = IndexOptions {
        distinct_cap: 1,
        ..IndexOptions::default()
    };
    let s = index("records.ndjson", &opts).expect("indexes");
    assert!(!s.distinct["ecs_task_id"].complete);
    assert!(s.distinct["ecs_task_id"].values.is_empty());
    assert!(s.distinct["ecs_cluster"].complete);
}
