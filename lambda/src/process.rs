//! One object end to end: GetObject (streamed), index, PutObject of the index
//! document; or, for a bad object, a copy under the quarantine prefix with an
//! error document next to it.

use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use chrono::{DateTime, Utc};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tokio_util::io::SyncIoBridge;

use crate::config::IndexerConfig;
use crate::doc::{INDEX_VERSION, QuarantineDoc, QuarantineReason, index_key, quarantine_keys};
use crate::index::{Encoding, IndexError, index_stream};

/// An object named by an event (key already URL-decoded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRef {
    pub bucket: String,
    pub key: String,
}

/// What happened to one object.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Indexed {
        records: u64,
        uncompressed_bytes: u64,
        index_key: String,
    },
    Quarantined {
        reason: QuarantineReason,
        uncompressed_bytes: u64,
    },
    /// Under the index or quarantine prefix: never indexed (no loops).
    Ignored,
    /// Deleted before it could be read: nothing to index.
    Missing,
}

/// A failure a retry may fix (S3 unreachable, throttled, access denied until
/// a policy is fixed). The object is reported failed, never quarantined.
#[derive(Debug, thiserror::Error)]
#[error("{op} s3://{bucket}/{key}: {message}")]
pub struct ProcessError {
    pub op: &'static str,
    pub bucket: String,
    pub key: String,
    pub message: String,
}

/// Characters escaped in a CopyObject source (everything but unreserved and `/`).
const COPY_SOURCE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn err(op: &'static str, obj: &ObjectRef, message: impl Into<String>) -> ProcessError {
    ProcessError {
        op,
        bucket: obj.bucket.clone(),
        key: obj.key.clone(),
        message: message.into(),
    }
}

/// Indexes (or quarantines, or ignores) one object.
pub async fn process_object(s3: &Client, cfg: &IndexerConfig, obj: &ObjectRef) -> Result<Outcome, ProcessError> {
    if cfg.is_own_key(&obj.key) {
        tracing::debug!(bucket = %obj.bucket, key = %obj.key, "ignored: under the index or quarantine prefix");
        return Ok(Outcome::Ignored);
    }
    let got = match s3.get_object().bucket(&obj.bucket).key(&obj.key).send().await {
        Ok(g) => g,
        Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
            tracing::warn!(bucket = %obj.bucket, key = %obj.key, "object no longer exists; nothing to index");
            return Ok(Outcome::Missing);
        }
        Err(e) => return Err(err("GetObject", obj, DisplayErrorContext(&e).to_string())),
    };
    let etag = got.e_tag().unwrap_or_default().to_string();
    let size = got.content_length().unwrap_or_default().max(0) as u64;
    let encoding = Encoding::detect(got.content_encoding(), &obj.key);
    let last_modified = got
        .last_modified()
        .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos()))
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    let body = SyncIoBridge::new(got.body.into_async_read());
    let opts = cfg.index.clone();
    let indexed = tokio::task::spawn_blocking(move || index_stream(body, encoding, &opts))
        .await
        .map_err(|e| err("index", obj, format!("indexing task failed: {e}")))?;
    match indexed {
        Ok(stats) => {
            let (records, uncompressed_bytes) = (stats.records, stats.uncompressed_bytes);
            let doc = stats.into_doc(&obj.bucket, &obj.key, &etag, size);
            let key = index_key(&cfg.index_prefix, &doc, last_modified);
            s3.put_object()
                .bucket(&obj.bucket)
                .key(&key)
                .content_type("application/json")
                .body(ByteStream::from(doc.to_bytes()))
                .send()
                .await
                .map_err(|e| err("PutObject (index)", obj, DisplayErrorContext(&e).to_string()))?;
            tracing::info!(bucket = %obj.bucket, key = %obj.key, index_key = %key, records, uncompressed_bytes, "indexed");
            Ok(Outcome::Indexed {
                records,
                uncompressed_bytes,
                index_key: key,
            })
        }
        Err(IndexError::Source(e)) => Err(err("GetObject (body)", obj, e.to_string())),
        Err(IndexError::Bad {
            reason,
            message,
            lines,
            bad_lines,
            uncompressed_bytes,
        }) => {
            let doc = QuarantineDoc {
                version: INDEX_VERSION,
                bucket: obj.bucket.clone(),
                key: obj.key.clone(),
                etag,
                size,
                reason,
                message,
                lines_read: lines,
                bad_lines,
                uncompressed_bytes_read: uncompressed_bytes,
            };
            quarantine(s3, cfg, obj, &doc).await?;
            Ok(Outcome::Quarantined {
                reason,
                uncompressed_bytes,
            })
        }
    }
}

async fn quarantine(
    s3: &Client,
    cfg: &IndexerConfig,
    obj: &ObjectRef,
    doc: &QuarantineDoc,
) -> Result<(), ProcessError> {
    let (copy_key, error_key) = quarantine_keys(&cfg.quarantine_prefix, &obj.key);
    let source = format!("{}/{}", obj.bucket, utf8_percent_encode(&obj.key, COPY_SOURCE));
    s3.copy_object()
        .bucket(&obj.bucket)
        .key(&copy_key)
        .copy_source(source)
        .send()
        .await
        .map_err(|e| err("CopyObject (quarantine)", obj, DisplayErrorContext(&e).to_string()))?;
    let mut body = serde_json::to_vec(doc).expect("a QuarantineDoc always serializes");
    body.push(b'\n');
    s3.put_object()
        .bucket(&obj.bucket)
        .key(&error_key)
        .content_type("application/json")
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|e| err("PutObject (quarantine error)", obj, DisplayErrorContext(&e).to_string()))?;
    tracing::warn!(
        bucket = %obj.bucket, key = %obj.key, quarantine_key = %copy_key,
        reason = doc.reason.as_str(), message = %doc.message, "quarantined"
    );
    Ok(())
}
