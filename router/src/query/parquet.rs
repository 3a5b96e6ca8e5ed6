//! The compacted side of the archive: closed hours that the compactor turned
//! into Parquet (`<compact_prefix>dt=.../hour=HH/source=<name>/`).
//!
//! A manifest names the objects its file holds (key and ETag). The query
//! reads those records from the Parquet file instead of the objects, so a
//! record is printed once whether its object was compacted or not, and
//! whether or not the object itself still exists (`COMPACT_INPUTS=delete`).
//! A file is opened only when one of its objects' index documents says it
//! can hold a match (or an object has no document in the range); inside it,
//! row groups whose `timestamp` statistics miss the range, or whose min/max
//! of a `--where` column rule the value out, are not read.
//!
//! Each row is rebuilt into its record (the archive's own rule:
//! `logferry_indexer::compacted::record_of`, with the `parquet` crate's
//! record API: the router carries no Arrow) and matched exactly as a stored
//! line is, so both sides give the same set of records.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use logferry_indexer::compacted::{Manifest, REST, TIMESTAMP_COLUMN, record_of};
use parquet::file::metadata::RowGroupMetaData;
use parquet::file::reader::FileReader;
use parquet::file::serialized_reader::{ReadOptionsBuilder, SerializedFileReader};
use parquet::file::statistics::Statistics;
use serde_json::Value;

use super::Matches;
use super::plan::Query;

/// One compacted file to read.
#[derive(Clone, Debug)]
pub struct CompactedFile {
    pub bucket: String,
    pub key: String,
    /// Where `--grep` looks (the indexer's token fields).
    pub token_fields: Vec<String>,
}

/// The objects a manifest covers: every input with its ETag, except those
/// that were gone before they could be read.
pub fn covered(m: &Manifest) -> impl Iterator<Item = (&str, &str)> {
    m.inputs
        .iter()
        .filter(|i| i.error.as_deref() != Some("gone"))
        .map(|i| (i.key.as_str(), i.etag.as_str()))
}

/// Whether a row group can hold a match, by its column statistics.
fn row_group_can_match(rg: &RowGroupMetaData, q: &Query) -> bool {
    let column = |name: &str| rg.columns().iter().find(|c| c.column_path().string() == name);
    if let Some(Statistics::Int64(s)) = column(TIMESTAMP_COLUMN).and_then(|c| c.statistics())
        && let (Some(min), Some(max)) = (s.min_opt(), s.max_opt())
        && (*max < q.from.timestamp_micros() || *min > q.until.timestamp_micros())
    {
        return false;
    }
    for (field, value) in &q.wheres {
        // A top-level string column: a fixed one or one the deployment declared.
        if field == REST || field.contains('.') {
            continue;
        }
        // A row whose column is null may still carry the field in `rest` (a number, a
        // duplicated key), so only a column without nulls can rule a value out.
        if let Some(Statistics::ByteArray(s)) = column(field).and_then(|c| c.statistics())
            && let (Some(min), Some(max)) = (s.min_opt(), s.max_opt())
            && s.null_count_opt() == Some(0)
            && (value.as_bytes() < min.data() || value.as_bytes() > max.data())
        {
            return false;
        }
    }
    true
}

/// Reads the matching records of a downloaded compacted file, in time order,
/// at most `limit`. Returns them and the row groups skipped by statistics.
pub fn scan_file(file: File, q: &Query, token_fields: &[String], limit: u64) -> Result<(Matches, u64), String> {
    let skipped = Arc::new(AtomicU64::new(0));
    let (query, counter) = (q.clone(), skipped.clone());
    let options = ReadOptionsBuilder::new()
        .with_predicate(Box::new(move |rg, _| {
            let keep = row_group_can_match(rg, &query);
            if !keep {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            keep
        }))
        .build();
    let reader = SerializedFileReader::new_with_options(file, options).map_err(|e| e.to_string())?;
    let mut matches = Vec::new();
    for row in reader.get_row_iter(None).map_err(|e| e.to_string())? {
        let row = row.map_err(|e| e.to_string())?;
        let Value::Object(record) = record_of(&row) else {
            continue;
        };
        if let Some(t) = q.matches(&record, token_fields) {
            let line = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
            matches.push((t, line));
            if matches.len() as u64 >= limit {
                break;
            }
        }
    }
    matches.sort_by_key(|(t, _): &(DateTime<Utc>, Vec<u8>)| *t);
    Ok((matches, skipped.load(Ordering::Relaxed)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use logferry_indexer::compact::rows::Rows;
    use logferry_indexer::doc::parse_time;
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::{EnabledStatistics, WriterProperties};
    use serde_json::json;

    fn records() -> Vec<Value> {
        (0..3000)
            .map(|i| {
                let mut r = json!({
                    "@timestamp": format!("2026-03-07T04:{:02}:{:02}.000Z", i / 60 % 60, i % 60),
                    "ecs_task_id": format!("t{}", i % 3),
                    "msg": if i % 10 == 0 { format!("read timeout {i}") } else { format!("ok {i}") },
                    "n": i,
                    "req": format!("r{i:05}"),
                });
                if i % 500 == 7 {
                    r["ecs_task_id"] = json!(5); // a number: in `rest`, not in the column
                }
                r
            })
            .collect()
    }

    /// The records as the compactor writes them: small row groups, page statistics.
    fn file(records: &[Value]) -> File {
        let declared = logferry_indexer::compacted::parse_declared("n:bigint,req:string").unwrap();
        let mut rows = Rows::new(&declared);
        let props = WriterProperties::builder()
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(250))
            .build();
        let tmp = tempfile::tempfile().unwrap();
        let mut w = ArrowWriter::try_new(tmp.try_clone().unwrap(), Rows::schema(&declared), Some(props)).unwrap();
        for chunk in records.chunks(100) {
            for r in chunk {
                rows.push(r.to_string().as_bytes()).unwrap();
            }
            w.write(&rows.finish()).unwrap();
        }
        w.close().unwrap();
        tmp
    }

    fn q(from: &str, until: &str, wheres: &[(&str, &str)], grep: Option<&str>) -> Query {
        Query {
            from: parse_time(from).unwrap(),
            until: parse_time(until).unwrap(),
            wheres: wheres.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            grep: grep.map(str::to_string),
        }
    }

    /// What the NDJSON side gives for the same records: every record through `matches`.
    fn expected(records: &[Value], q: &Query, fields: &[String]) -> Vec<Value> {
        let mut out: Vec<(DateTime<Utc>, Value)> = records
            .iter()
            .filter_map(|r| q.matches(r.as_object().unwrap(), fields).map(|t| (t, r.clone())))
            .collect();
        out.sort_by_key(|(t, _)| *t);
        out.into_iter().map(|(_, r)| r).collect()
    }

    #[test]
    fn the_same_records_as_the_objects_and_row_groups_pruned() {
        let recs = records();
        let fields = vec!["msg".to_string()];
        for (query, min_skipped) in [
            (q("2026-03-07T04:10:00Z", "2026-03-07T04:20:00Z", &[], None), 8),
            (
                q(
                    "2026-03-07T04:00:00Z",
                    "2026-03-07T05:00:00Z",
                    &[("ecs_task_id", "t1")],
                    Some("timeout"),
                ),
                0,
            ),
            (
                q(
                    "2026-03-07T04:00:00Z",
                    "2026-03-07T05:00:00Z",
                    &[("ecs_task_id", "5")],
                    None,
                ),
                0,
            ),
            // 6 row groups have a number in `rest` (a null in the column): not pruned.
            (
                q(
                    "2026-03-07T04:00:00Z",
                    "2026-03-07T05:00:00Z",
                    &[("ecs_task_id", "zz")],
                    None,
                ),
                6,
            ),
            (q("2026-03-07T05:00:01Z", "2026-03-07T06:00:00Z", &[], None), 12),
            // A declared column prunes too: one row group can hold r00042.
            (
                q(
                    "2026-03-07T04:00:00Z",
                    "2026-03-07T05:00:00Z",
                    &[("req", "r00042")],
                    None,
                ),
                11,
            ),
        ] {
            let (got, skipped) = scan_file(file(&recs), &query, &fields, u64::MAX).unwrap();
            let got: Vec<Value> = got.iter().map(|(_, l)| serde_json::from_slice(l).unwrap()).collect();
            let want = expected(&recs, &query, &fields);
            assert_eq!(got.len(), want.len(), "{query:?}");
            assert_eq!(got, want, "{query:?}");
            assert!(skipped >= min_skipped, "{skipped} row groups skipped for {query:?}");
        }
        // The number stored in `rest` still matches `--where ecs_task_id=5` (6 of them).
        let (got, _) = scan_file(
            file(&recs),
            &q(
                "2026-03-07T04:00:00Z",
                "2026-03-07T05:00:00Z",
                &[("ecs_task_id", "5")],
                None,
            ),
            &fields,
            u64::MAX,
        )
        .unwrap();
        assert_eq!(got.len(), 6);
        let (got, _) = scan_file(
            file(&recs),
            &q("2026-03-07T04:00:00Z", "2026-03-07T05:00:00Z", &[], None),
            &fields,
            10,
        )
        .unwrap();
        assert_eq!(got.len(), 10, "limit");
    }
}
