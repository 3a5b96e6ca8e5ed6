//! The compacted archive's format, as readers need it: the Parquet columns,
//! the manifest, and how a row gives its record back. Only the `parquet`
//! crate's own reader is needed (no Arrow), so `logferry query` reads the
//! archive without carrying the compactor's writer.
//!
//! A row is its record: the typed columns, then `rest` (a JSON object of
//! every other field, as the text it had) laid over them, deep for
//! `kubernetes`. `@timestamp` is the column `timestamp`, written back in the
//! router's millisecond form (`rest` keeps any other form of it).

use chrono::{DateTime, SecondsFormat, Utc};
use parquet::record::{Field, Row};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Top-level string columns, in schema order.
pub const STRING_COLUMNS: &[&str] = &[
    "level",
    "log",
    "message",
    "msg",
    // ECS
    "ecs_cluster",
    "ecs_task_arn",
    "ecs_task_id",
    "ecs_task_definition",
    "container_name",
    "container_id",
    "aws_region",
    "availability_zone",
    "launch_type",
    // EC2
    "ec2_instance_id",
    "ec2_instance_type",
    "az",
    "private_ip",
    "ami_id",
    "account_id",
    "hostname",
];

/// String fields of the `kubernetes` struct (Fluent Bit's names).
pub const KUBERNETES_STRINGS: &[&str] = &[
    "pod_name",
    "namespace_name",
    "pod_id",
    "host",
    "container_name",
    "container_id",
    "container_image",
    "container_hash",
    "docker_id",
];

/// Map fields of the `kubernetes` struct.
pub const KUBERNETES_MAPS: &[&str] = &["labels", "annotations"];

/// The record's event time field...
pub const TIMESTAMP: &str = "@timestamp";
/// ...and its column: Athena and Glue allow no `@` in a column name, and the
/// Glue table over the NDJSON objects already calls it `timestamp`. A
/// record's own `timestamp` field is not typed (it stays in `rest`).
pub const TIMESTAMP_COLUMN: &str = "timestamp";
pub const KUBERNETES: &str = "kubernetes";
pub const REST: &str = "rest";

/// The router's form of a time: RFC 3339, UTC, milliseconds.
pub fn canonical_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Version of [`Manifest`]'s format.
pub const MANIFEST_VERSION: u32 = 1;

/// One input as the manifest records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputEntry {
    pub key: String,
    pub etag: String,
    /// Stored size.
    pub size: u64,
    /// Rows written from it.
    pub records: u64,
    /// Lines sent to the quarantine.
    pub quarantined: u64,
    /// Decompressed bytes read.
    pub uncompressed_bytes: u64,
    /// Read to its end with every line kept (as a row or quarantined whole).
    /// An incomplete input is never deleted.
    pub complete: bool,
    /// Why it is incomplete; `gone` when it was deleted or replaced before it was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An output file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputEntry {
    pub key: String,
    pub records: u64,
    pub bytes: u64,
    pub row_groups: u64,
}

/// Written last: the proof that a group's output is complete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub id: String,
    pub bucket: String,
    pub prefix: String,
    pub hour: String,
    pub source: String,
    pub inputs: Vec<InputEntry>,
    pub outputs: Vec<OutputEntry>,
    pub quarantine: Vec<String>,
    pub records: u64,
    pub quarantined: u64,
    pub uncompressed_bytes: u64,
}

/// A string or map field's value as JSON; `None` for a null.
fn value_of(f: &Field) -> Option<Value> {
    match f {
        Field::Null => None,
        Field::Str(s) => Some(Value::String(s.clone())),
        Field::MapInternal(m) => {
            let mut out = Map::new();
            for (k, v) in m.entries() {
                if let (Field::Str(k), Some(v)) = (k, value_of(v)) {
                    out.insert(k.clone(), v);
                }
            }
            Some(Value::Object(out))
        }
        // Not in the schema; kept rather than lost.
        other => Some(Value::String(other.to_string())),
    }
}

/// The record a row of a compacted file stands for (read with the
/// `parquet` crate's record API: `SerializedFileReader::get_row_iter`).
pub fn record_of(row: &Row) -> Value {
    let mut out = Map::new();
    let mut rest = None;
    for (name, field) in row.get_column_iter() {
        match (name.as_str(), field) {
            (_, Field::Null) => {}
            (TIMESTAMP_COLUMN, Field::TimestampMicros(us)) => {
                if let Some(t) = DateTime::<Utc>::from_timestamp_micros(*us) {
                    out.insert(TIMESTAMP.into(), Value::String(canonical_time(t)));
                }
            }
            (KUBERNETES, Field::Group(k8s)) => {
                let mut k = Map::new();
                for (n, f) in k8s.get_column_iter() {
                    if let Some(v) = value_of(f) {
                        k.insert(n.clone(), v);
                    }
                }
                out.insert(KUBERNETES.into(), Value::Object(k));
            }
            (REST, Field::Str(text)) => rest = Some(text.as_str()),
            (name, f) => {
                if let Some(v) = value_of(f) {
                    out.insert(name.to_string(), v);
                }
            }
        }
    }
    if let Some(text) = rest {
        // Written as an object by the compactor; anything else is not ours and stays as text.
        let r = match serde_json::from_str(text) {
            Ok(Value::Object(r)) => r,
            _ => Map::from_iter([(REST.to_string(), Value::String(text.to_string()))]),
        };
        for (k, v) in r {
            match (out.get_mut(&k), v) {
                (Some(Value::Object(typed)), Value::Object(more)) if k == KUBERNETES => typed.extend(more),
                (_, v) => {
                    out.insert(k, v);
                }
            }
        }
    }
    Value::Object(out)
}
