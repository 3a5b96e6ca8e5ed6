//! The index document (one per log object) and the quarantine error document.
//!
//! Both are written by the indexer and must be byte-identical when the same
//! object is processed again: every map is ordered, nothing depends on the
//! clock or on the order events arrive in. `logferry query` reads index
//! documents back, so the format is versioned ([`INDEX_VERSION`]); a reader
//! skips (and counts) documents of a version it does not know.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bloom::BloomDoc;

/// Version of [`IndexDoc`]'s format.
pub const INDEX_VERSION: u32 = 1;

/// What the indexer knows about one object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexDoc {
    pub version: u32,
    pub bucket: String,
    pub key: String,
    /// ETag as S3 reports it (with its quotes).
    pub etag: String,
    /// Stored (compressed) size in bytes.
    pub size: u64,
    /// `gzip`, `zstd` or `none`: how the indexer decoded it.
    pub encoding: String,
    /// Records (lines that are JSON objects).
    pub records: u64,
    /// Decompressed bytes.
    pub uncompressed_bytes: u64,
    /// Lines that are not JSON objects (or too long).
    pub bad_lines: u64,
    /// Records without a parseable `@timestamp`.
    pub records_without_time: u64,
    /// Earliest and latest `@timestamp` (RFC 3339, UTC), absent without any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_time: Option<String>,
    /// Records per `level` value.
    pub levels: BTreeMap<String, u64>,
    /// Distinct values of the configured fields.
    pub distinct: BTreeMap<String, Distinct>,
    /// The token filter over the configured text fields.
    pub tokens: TokenIndex,
}

/// Distinct values of one field. `complete = false`: the field had more than
/// the cap of distinct values and `values` is empty (no pruning on it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Distinct {
    pub complete: bool,
    pub values: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenIndex {
    /// The fields whose tokens are in the filter.
    pub fields: Vec<String>,
    pub filter: BloomDoc,
}

/// Formats a time as the index stores it.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
}

impl IndexDoc {
    pub fn min_time(&self) -> Option<DateTime<Utc>> {
        self.min_time.as_deref().and_then(parse_time)
    }

    pub fn max_time(&self) -> Option<DateTime<Utc>> {
        self.max_time.as_deref().and_then(parse_time)
    }

    /// The document's JSON, as stored (compact, one trailing newline).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).expect("an IndexDoc always serializes");
        out.push(b'\n');
        out
    }
}

/// Stable id of an object version: hex SHA-256 of bucket, key and ETag.
pub fn object_id(bucket: &str, key: &str, etag: &str) -> String {
    let mut h = Sha256::new();
    for part in [bucket, key, etag] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// `dt=YYYY-MM-DD/hour=HH/` of an hour.
pub fn partition(t: DateTime<Utc>) -> String {
    t.format("dt=%Y-%m-%d/hour=%H/").to_string()
}

/// Key of an object's index document: under the hour of its earliest record
/// (or of `fallback`, the object's Last-Modified, when no record has a time).
pub fn index_key(index_prefix: &str, doc: &IndexDoc, fallback: DateTime<Utc>) -> String {
    let hour = doc.min_time().unwrap_or(fallback);
    format!(
        "{index_prefix}{}{}.json",
        partition(hour),
        object_id(&doc.bucket, &doc.key, &doc.etag)
    )
}

/// Why an object was quarantined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuarantineReason {
    /// The compressed stream is corrupt or truncated.
    Corrupt,
    /// It decompresses to more than MAX_DECOMPRESSED_BYTES.
    TooLarge,
    /// More than MAX_BAD_LINE_RATIO of its lines are not JSON objects.
    BadLines,
}

impl QuarantineReason {
    pub fn as_str(self) -> &'static str {
        match self {
            QuarantineReason::Corrupt => "corrupt",
            QuarantineReason::TooLarge => "too_large",
            QuarantineReason::BadLines => "bad_lines",
        }
    }
}

/// Written next to a quarantined copy, as `<copy key>.error.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuarantineDoc {
    pub version: u32,
    pub bucket: String,
    pub key: String,
    pub etag: String,
    pub size: u64,
    pub reason: QuarantineReason,
    pub message: String,
    /// How far the indexer got.
    pub lines_read: u64,
    pub bad_lines: u64,
    pub uncompressed_bytes_read: u64,
}

/// Keys of the quarantined copy and of its error document.
pub fn quarantine_keys(quarantine_prefix: &str, key: &str) -> (String, String) {
    let copy = format!("{quarantine_prefix}{key}");
    let error = format!("{copy}.error.json");
    (copy, error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn object_id_is_stable_and_separates_parts() {
        assert_eq!(object_id("b", "k", "\"e\""), object_id("b", "k", "\"e\""));
        assert_ne!(object_id("ab", "c", "e"), object_id("a", "bc", "e"));
        assert_eq!(object_id("b", "k", "e").len(), 64);
    }

    #[test]
    fn partition_layout() {
        let t = Utc.with_ymd_and_hms(2026, 3, 7, 4, 59, 59).single().expect("valid");
        assert_eq!(partition(t), "dt=2026-03-07/hour=04/");
        assert_eq!(format_time(t), "2026-03-07T04:59:59Z");
        assert_eq!(
            quarantine_keys("_q/", "logs/a b.gz"),
            ("_q/logs/a b.gz".into(), "_q/logs/a b.gz.error.json".into())
        );
    }
}
