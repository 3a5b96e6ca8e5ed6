//! The indexer's configuration, from environment variables (see lambda/README.md).

/// Options of one indexing pass (what goes into an index document).
#[derive(Clone, Debug, PartialEq)]
pub struct IndexOptions {
    /// Decompressed bytes after which an object is quarantined (gzip bombs).
    pub max_decompressed_bytes: u64,
    /// Share of unparseable lines above which an object is quarantined.
    pub max_bad_line_ratio: f64,
    /// Fields whose distinct values are recorded (dotted paths).
    pub distinct_fields: Vec<String>,
    /// Distinct values kept per field; past that the field is marked incomplete.
    pub distinct_cap: usize,
    /// Fields whose tokens go into the token filter.
    pub token_fields: Vec<String>,
    /// Target false-positive rate of the token filter.
    pub bloom_fp_rate: f64,
}

/// The whole configuration of the function.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexerConfig {
    /// Where index documents go (`_index/`); objects under it are ignored.
    pub index_prefix: String,
    /// Where bad objects are copied (`_quarantine/`); objects under it are ignored.
    pub quarantine_prefix: String,
    pub index: IndexOptions,
    pub compact: CompactConfig,
}

/// What the compactor does with its inputs once their manifest is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputAction {
    /// Tag each input `logferry-compacted=true` (for an S3 lifecycle rule).
    Tag,
    /// Delete them.
    Delete,
    /// Leave them as they are.
    Keep,
}

/// The compactor's settings (`COMPACT_*`; see lambda/README.md).
#[derive(Clone, Debug, PartialEq)]
pub struct CompactConfig {
    /// Where Parquet files and manifests go (`compacted/`).
    pub prefix: String,
    pub inputs: InputAction,
    /// A row group is closed when its encoded size reaches this.
    pub row_group_bytes: u64,
    /// Stored (compressed) input bytes per output file; a bigger hour gives several files.
    pub file_input_bytes: u64,
    /// The bucket and source prefixes the hourly schedule compacts.
    pub bucket: Option<String>,
    /// `name=template` (or a bare template; the name is its first segment),
    /// the template in strftime form (`logs/%Y/%m/%d/%H/`).
    pub sources: Vec<(String, String)>,
    /// How long after an hour ends the schedule still waits before compacting it.
    pub delay: std::time::Duration,
    /// Closed hours each scheduled run goes over (the last one and those
    /// before it): an hour a run could not finish, or a late object, is
    /// picked up by the next runs; covered inputs cost only a look.
    pub hours: u32,
    /// Bytes per upload part of a Parquet file (not a variable: S3 wants 5 MiB or more;
    /// tests use tiny parts).
    pub part_bytes: usize,
    /// Columns declared for the deployment's own fields (`COMPACT_COLUMNS`), by name.
    pub columns: Vec<crate::compacted::Declared>,
}

pub const DEFAULT_COMPACT_PREFIX: &str = "compacted/";

impl Default for CompactConfig {
    fn default() -> Self {
        CompactConfig {
            prefix: DEFAULT_COMPACT_PREFIX.into(),
            inputs: InputAction::Tag,
            row_group_bytes: 128 << 20,
            file_input_bytes: 1 << 30,
            bucket: None,
            sources: Vec::new(),
            delay: std::time::Duration::from_secs(600),
            hours: 3,
            part_bytes: 16 << 20,
            columns: Vec::new(),
        }
    }
}

/// A source's name as a path segment (`source=<name>`): letters, digits, `._-`.
pub fn source_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn size(name: &'static str, v: &str) -> Result<u64, ConfigError> {
    match v.trim().parse::<bytesize::ByteSize>() {
        Ok(s) if s.as_u64() > 0 => Ok(s.as_u64()),
        Ok(_) => Err(ConfigError {
            name,
            value: v.to_string(),
            reason: "must be > 0".into(),
        }),
        Err(e) => Err(ConfigError {
            name,
            value: v.to_string(),
            reason: format!("not a size ({e}); e.g. 128MiB"),
        }),
    }
}

impl CompactConfig {
    fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut c = CompactConfig::default();
        if let Some(v) = get("COMPACT_PREFIX") {
            c.prefix = prefix("COMPACT_PREFIX", v)?;
        }
        if let Some(v) = get("COMPACT_INPUTS") {
            c.inputs = match v.trim() {
                "tag" => InputAction::Tag,
                "delete" => InputAction::Delete,
                "keep" => InputAction::Keep,
                _ => {
                    return Err(ConfigError {
                        name: "COMPACT_INPUTS",
                        value: v,
                        reason: "must be tag, delete or keep".into(),
                    });
                }
            };
        }
        if let Some(v) = get("COMPACT_COLUMNS") {
            c.columns = crate::compacted::parse_declared(&v).map_err(|reason| ConfigError {
                name: "COMPACT_COLUMNS",
                value: v.clone(),
                reason,
            })?;
        }
        if let Some(v) = get("COMPACT_ROW_GROUP_BYTES") {
            c.row_group_bytes = size("COMPACT_ROW_GROUP_BYTES", &v)?;
        }
        if let Some(v) = get("COMPACT_FILE_INPUT_BYTES") {
            c.file_input_bytes = size("COMPACT_FILE_INPUT_BYTES", &v)?;
        }
        c.bucket = get("COMPACT_BUCKET").map(|b| b.trim().to_string());
        if let Some(v) = get("COMPACT_SOURCES") {
            for item in split_list(&v) {
                let (name, template) = match item.split_once('=') {
                    Some((n, t)) => (n.trim().to_string(), t.trim().to_string()),
                    None => (
                        item.split('/').find(|s| !s.is_empty()).unwrap_or("logs").to_string(),
                        item.clone(),
                    ),
                };
                if name.is_empty() || template.is_empty() || template.starts_with('/') {
                    return Err(ConfigError {
                        name: "COMPACT_SOURCES",
                        value: v.clone(),
                        reason: format!("{item:?}: want name=prefix-template, e.g. app=logs/%Y/%m/%d/%H/"),
                    });
                }
                if chrono::format::StrftimeItems::new(&template).parse().is_err() {
                    return Err(ConfigError {
                        name: "COMPACT_SOURCES",
                        value: v.clone(),
                        reason: format!("{template:?} is not a valid strftime template"),
                    });
                }
                c.sources.push((source_name(&name), template));
            }
            if c.bucket.is_none() {
                return Err(ConfigError {
                    name: "COMPACT_BUCKET",
                    value: String::new(),
                    reason: "COMPACT_SOURCES is set: the schedule also needs the bucket".into(),
                });
            }
        }
        if let Some(v) = get("COMPACT_HOURS") {
            c.hours = v
                .trim()
                .parse()
                .ok()
                .filter(|n| (1..=168).contains(n))
                .ok_or_else(|| ConfigError {
                    name: "COMPACT_HOURS",
                    value: v.clone(),
                    reason: "must be a whole number of hours from 1 to 168".into(),
                })?;
        }
        if let Some(v) = get("COMPACT_DELAY") {
            c.delay = humantime::parse_duration(v.trim()).map_err(|e| ConfigError {
                name: "COMPACT_DELAY",
                value: v.clone(),
                reason: format!("not a duration ({e}); e.g. 10m"),
            })?;
        }
        Ok(c)
    }
}

pub const DEFAULT_INDEX_PREFIX: &str = "_index/";
pub const DEFAULT_QUARANTINE_PREFIX: &str = "_quarantine/";
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: u64 = 2 * 1024 * 1024 * 1024;
pub const DEFAULT_MAX_BAD_LINE_RATIO: f64 = 0.1;
pub const DEFAULT_DISTINCT_FIELDS: &str =
    "ecs_cluster,ecs_task_id,container_name,kubernetes.namespace_name,kubernetes.pod_name";
pub const DEFAULT_DISTINCT_CAP: usize = 100;
pub const DEFAULT_TOKEN_FIELDS: &str = "log,msg,message,request_id,trace_id";
pub const DEFAULT_BLOOM_FP_RATE: f64 = 0.01;

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            max_decompressed_bytes: DEFAULT_MAX_DECOMPRESSED_BYTES,
            max_bad_line_ratio: DEFAULT_MAX_BAD_LINE_RATIO,
            distinct_fields: split_list(DEFAULT_DISTINCT_FIELDS),
            distinct_cap: DEFAULT_DISTINCT_CAP,
            token_fields: split_list(DEFAULT_TOKEN_FIELDS),
            bloom_fp_rate: DEFAULT_BLOOM_FP_RATE,
        }
    }
}

/// A bad environment variable, by name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{name}={value:?}: {reason}")]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub reason: String,
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect()
}

/// A prefix ends with `/` (or is a bare key prefix the user chose with one).
fn prefix(name: &'static str, value: String) -> Result<String, ConfigError> {
    let v = value.trim_start_matches('/').to_string();
    if v.is_empty() {
        return Err(ConfigError {
            name,
            value,
            reason: "must not be empty".into(),
        });
    }
    Ok(if v.ends_with('/') { v } else { format!("{v}/") })
}

impl IndexerConfig {
    /// Reads the configuration through `env` (the process environment in
    /// production, a map in tests).
    pub fn from_lookup(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let index_prefix = prefix(
            "INDEX_PREFIX",
            get("INDEX_PREFIX").unwrap_or_else(|| DEFAULT_INDEX_PREFIX.into()),
        )?;
        let quarantine_prefix = prefix(
            "QUARANTINE_PREFIX",
            get("QUARANTINE_PREFIX").unwrap_or_else(|| DEFAULT_QUARANTINE_PREFIX.into()),
        )?;
        if index_prefix.starts_with(&quarantine_prefix) || quarantine_prefix.starts_with(&index_prefix) {
            return Err(ConfigError {
                name: "QUARANTINE_PREFIX",
                value: quarantine_prefix,
                reason: format!("must not overlap INDEX_PREFIX {index_prefix:?}"),
            });
        }
        let mut index = IndexOptions::default();
        if let Some(v) = get("MAX_DECOMPRESSED_BYTES") {
            let size: bytesize::ByteSize = v.trim().parse().map_err(|e| ConfigError {
                name: "MAX_DECOMPRESSED_BYTES",
                value: v.clone(),
                reason: format!("not a size ({e}); e.g. 2GiB"),
            })?;
            if size.as_u64() == 0 {
                return Err(ConfigError {
                    name: "MAX_DECOMPRESSED_BYTES",
                    value: v,
                    reason: "must be > 0".into(),
                });
            }
            index.max_decompressed_bytes = size.as_u64();
        }
        if let Some(v) = get("MAX_BAD_LINE_RATIO") {
            index.max_bad_line_ratio = ratio("MAX_BAD_LINE_RATIO", &v, 0.0, 1.0)?;
        }
        if let Some(v) = get("DISTINCT_FIELDS") {
            index.distinct_fields = split_list(&v);
        }
        if let Some(v) = get("DISTINCT_CAP") {
            index.distinct_cap = v.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| ConfigError {
                name: "DISTINCT_CAP",
                value: v.clone(),
                reason: "must be a whole number > 0".into(),
            })?;
        }
        if let Some(v) = get("TOKEN_FIELDS") {
            index.token_fields = split_list(&v);
        }
        if let Some(v) = get("BLOOM_FP_RATE") {
            index.bloom_fp_rate = ratio("BLOOM_FP_RATE", &v, 1e-6, 0.5)?;
        }
        let compact = CompactConfig::from_lookup(&get)?;
        for (name, other) in [
            ("INDEX_PREFIX", &index_prefix),
            ("QUARANTINE_PREFIX", &quarantine_prefix),
        ] {
            if compact.prefix.starts_with(other.as_str()) || other.starts_with(&compact.prefix) {
                return Err(ConfigError {
                    name: "COMPACT_PREFIX",
                    value: compact.prefix.clone(),
                    reason: format!("must not overlap {name} {other:?}"),
                });
            }
        }
        Ok(IndexerConfig {
            index_prefix,
            quarantine_prefix,
            index,
            compact,
        })
    }

    /// Objects the indexer itself writes (or that are quarantined) are never indexed.
    pub fn is_own_key(&self, key: &str) -> bool {
        key.starts_with(&self.index_prefix)
            || key.starts_with(&self.quarantine_prefix)
            || key.starts_with(&self.compact.prefix)
    }
}

fn ratio(name: &'static str, v: &str, min: f64, max: f64) -> Result<f64, ConfigError> {
    match v.trim().parse::<f64>() {
        Ok(x) if (min..=max).contains(&x) => Ok(x),
        _ => Err(ConfigError {
            name,
            value: v.to_string(),
            reason: format!("must be a number in [{min}, {max}]"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<IndexerConfig, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        IndexerConfig::from_lookup(&move |k: &str| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = cfg(&[]).expect("defaults are valid");
        assert_eq!(c.index_prefix, "_index/");
        assert_eq!(c.quarantine_prefix, "_quarantine/");
        assert_eq!(c.index.max_decompressed_bytes, 2 << 30);
        assert_eq!(c.index.distinct_fields.len(), 5);
        assert_eq!(
            c.index.token_fields,
            ["log", "msg", "message", "request_id", "trace_id"]
        );
        assert!(c.is_own_key("_index/dt=2026-01-01/hour=00/x.json"));
        assert!(c.is_own_key("_quarantine/logs/a.gz"));
        assert!(!c.is_own_key("logs/_index/a.gz"));
        assert!(c.is_own_key("compacted/dt=2026-01-01/hour=00/source=logs/part-1.parquet"));
        assert_eq!(c.compact, CompactConfig::default());
    }

    #[test]
    fn parses_and_names_bad_values() {
        let c = cfg(&[
            ("INDEX_PREFIX", "idx"),
            ("MAX_DECOMPRESSED_BYTES", "64KiB"),
            ("DISTINCT_FIELDS", " a , b.c ,"),
            ("BLOOM_FP_RATE", "0.001"),
        ])
        .expect("valid");
        assert_eq!(c.index_prefix, "idx/");
        assert_eq!(c.index.max_decompressed_bytes, 65536);
        assert_eq!(c.index.distinct_fields, ["a", "b.c"]);
        let c = cfg(&[
            ("COMPACT_BUCKET", "b"),
            ("COMPACT_SOURCES", "logs/%Y/%m/%d/%H/, web=web logs/%Y/%m/%d/%H/"),
            ("COMPACT_INPUTS", "delete"),
            ("COMPACT_DELAY", "5m"),
            ("COMPACT_COLUMNS", " trace_id:string, latency_ms : double,"),
        ])
        .expect("valid");
        let declared: Vec<(&str, &str)> = c.compact.columns.iter().map(|d| (&*d.name, d.ty.as_str())).collect();
        assert_eq!(declared, [("latency_ms", "double"), ("trace_id", "string")]);
        assert_eq!(
            c.compact.sources,
            [
                ("logs".into(), "logs/%Y/%m/%d/%H/".into()),
                ("web".into(), "web logs/%Y/%m/%d/%H/".into())
            ]
        );
        assert_eq!(c.compact.inputs, InputAction::Delete);
        assert_eq!(c.compact.delay.as_secs(), 300);
        assert_eq!(
            cfg(&[("MAX_DECOMPRESSED_BYTES", "1000")])
                .expect("plain number")
                .index
                .max_decompressed_bytes,
            1000
        );
        for (name, bad) in [
            ("MAX_DECOMPRESSED_BYTES", "lots"),
            ("MAX_BAD_LINE_RATIO", "1.5"),
            ("DISTINCT_CAP", "0"),
            ("BLOOM_FP_RATE", "0"),
            ("QUARANTINE_PREFIX", "_index/q/"),
            ("COMPACT_PREFIX", "_index/c/"),
            ("COMPACT_INPUTS", "shred"),
            ("COMPACT_ROW_GROUP_BYTES", "0"),
            ("COMPACT_SOURCES", "=logs/"),
            ("COMPACT_DELAY", "soon"),
            ("COMPACT_HOURS", "0"),
            ("COMPACT_COLUMNS", "trace_id"),
            ("COMPACT_COLUMNS", "trace_id:uuid"),
            ("COMPACT_COLUMNS", "Trace:string"),
            ("COMPACT_COLUMNS", "1a:string"),
            ("COMPACT_COLUMNS", "msg:string"),
            ("COMPACT_COLUMNS", "hour:bigint"),
            ("COMPACT_COLUMNS", "rest:string"),
            ("COMPACT_COLUMNS", "a:string,a:bigint"),
        ] {
            let e = cfg(&[(name, bad)]).expect_err(bad);
            assert_eq!(e.name, name);
        }
    }
}
