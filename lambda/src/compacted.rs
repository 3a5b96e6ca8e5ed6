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

/// Partition columns of the compacted layout (`dt=…/hour=…/source=…/`).
pub const PARTITION_COLUMNS: &[&str] = &["dt", "hour", "source"];

/// Most columns a deployment may declare.
pub const MAX_DECLARED: usize = 32;

/// The type of a declared column (`COMPACT_COLUMNS`), by its Athena name.
///
/// A field takes its declared column only when its JSON value is of that
/// type exactly: `string` a JSON string, `bigint` an integer written as one
/// (`12`, not `12.0`), `double` a number written with a fraction or an
/// exponent (`12.5`, `1e3`, not `12`), `boolean` `true` or `false`. Any
/// other value stays in `rest` as it was, so a record always comes back
/// unchanged, number forms included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    String,
    Bigint,
    Double,
    Boolean,
}

impl ColumnType {
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnType::String => "string",
            ColumnType::Bigint => "bigint",
            ColumnType::Double => "double",
            ColumnType::Boolean => "boolean",
        }
    }
}

/// A column the deployment declared for one of its own top-level fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declared {
    pub name: String,
    pub ty: ColumnType,
}

/// Parses `COMPACT_COLUMNS` (`request_id:string,latency_ms:double`):
/// names are lower case (Athena folds them) `[a-z_][a-z0-9_]*` of at most
/// 64 characters, unique, neither a fixed nor a partition column. The
/// columns come back sorted by name, so the schema does not depend on how
/// the list was written.
pub fn parse_declared(s: &str) -> Result<Vec<Declared>, String> {
    let mut out: Vec<Declared> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, ty) = item
            .split_once(':')
            .map(|(n, t)| (n.trim(), t.trim()))
            .ok_or_else(|| format!("`{item}` is not name:type"))?;
        let ty = match ty {
            "string" => ColumnType::String,
            "bigint" => ColumnType::Bigint,
            "double" => ColumnType::Double,
            "boolean" => ColumnType::Boolean,
            other => {
                return Err(format!(
                    "`{name}`: unknown type `{other}` (string, bigint, double or boolean)"
                ));
            }
        };
        let valid = name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(format!(
                "`{name}` is not a column name: lower-case letters, digits and _, not starting with a digit, at most 64"
            ));
        }
        let fixed = STRING_COLUMNS.iter().chain(&[TIMESTAMP_COLUMN, KUBERNETES, REST]);
        if fixed.chain(PARTITION_COLUMNS).any(|f| *f == name) {
            return Err(format!("`{name}` is already a column of the compacted layout"));
        }
        if out.iter().any(|d| d.name == name) {
            return Err(format!("`{name}` is declared twice"));
        }
        out.push(Declared {
            name: name.to_string(),
            ty,
        });
    }
    if out.len() > MAX_DECLARED {
        return Err(format!("{} columns declared; at most {MAX_DECLARED}", out.len()));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

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
        // Declared columns.
        Field::Long(n) => Some(Value::from(*n)),
        Field::Double(d) => serde_json::Number::from_f64(*d).map(Value::Number),
        Field::Bool(b) => Some(Value::Bool(*b)),
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
