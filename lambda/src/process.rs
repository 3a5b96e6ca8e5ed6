//! One object end to end: GetObject (streamed), index, PutObject of the index
//! document; or, for a bad object, a copy under the quarantine prefix with an
//! error document next to it.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
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
    pub kind: FailureKind,
    pub op: &'static str,
    pub bucket: String,
    pub key: String,
    pub message: String,
}

impl ProcessError {
    pub fn new(kind: FailureKind, op: &'static str, bucket: &str, key: &str, message: impl Into<String>) -> Self {
        ProcessError {
            kind,
            op,
            bucket: bucket.to_string(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// A failed S3 call: its kind by [`FailureKind::classify`] (`otherwise`
    /// when the error says neither throttling nor access), and its full message.
    pub fn from_sdk<E>(
        otherwise: FailureKind,
        op: &'static str,
        bucket: &str,
        key: &str,
        e: &SdkError<E, HttpResponse>,
    ) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let code = e.as_service_error().and_then(|s| s.code());
        let status = e.raw_response().map(|r| r.status().as_u16());
        Self::new(
            FailureKind::classify(code, status, otherwise),
            op,
            bucket,
            key,
            DisplayErrorContext(e).to_string(),
        )
    }
}

/// What failed, as operators filter and alarm on it: the invocation's
/// `errorType` (see `handler`). A retry may fix every one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// S3 asked us to slow down (`SlowDown`, `Throttling`, HTTP 503).
    Throttled,
    /// The function's role may not read or write there (until a policy is fixed).
    AccessDenied,
    /// Reading the object failed (GetObject, or its body mid-stream).
    S3Read,
    /// Writing the index document or the quarantine copy failed.
    S3Write,
    /// The indexing task itself died (a panic): a bug, reported as such.
    Internal,
}

impl FailureKind {
    /// The name Lambda reports as `errorType`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Throttled => "Throttled",
            Self::AccessDenied => "AccessDenied",
            Self::S3Read => "S3Read",
            Self::S3Write => "S3Write",
            Self::Internal => "Internal",
        }
    }

    /// Sorts an S3 error by its error code and HTTP status; `otherwise` when
    /// neither says throttling or access.
    pub fn classify(code: Option<&str>, status: Option<u16>, otherwise: Self) -> Self {
        match (code, status) {
            (
                Some(
                    "SlowDown"
                    | "Throttling"
                    | "ThrottlingException"
                    | "RequestLimitExceeded"
                    | "TooManyRequestsException"
                    | "RequestThrottled",
                ),
                _,
            )
            | (_, Some(429 | 503)) => Self::Throttled,
            (Some("AccessDenied" | "AllAccessDisabled" | "InvalidAccessKeyId" | "SignatureDoesNotMatch"), _)
            | (_, Some(403)) => Self::AccessDenied,
            _ => otherwise,
        }
    }
}

fn sdk_err<E>(otherwise: FailureKind, op: &'static str, obj: &ObjectRef, e: &SdkError<E, HttpResponse>) -> ProcessError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    ProcessError::from_sdk(otherwise, op, &obj.bucket, &obj.key, e)
}

/// Characters escaped in a CopyObject source (everything but unreserved and `/`).
const COPY_SOURCE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn err(kind: FailureKind, op: &'static str, obj: &ObjectRef, message: impl Into<String>) -> ProcessError {
    ProcessError::new(kind, op, &obj.bucket, &obj.key, message)
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
        Err(e) => return Err(sdk_err(FailureKind::S3Read, "GetObject", obj, &e)),
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
        .map_err(|e| {
            err(
                FailureKind::Internal,
                "index",
                obj,
                format!("indexing task failed: {e}"),
            )
        })?;
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
                .map_err(|e| sdk_err(FailureKind::S3Write, "PutObject (index)", obj, &e))?;
            tracing::info!(bucket = %obj.bucket, key = %obj.key, index_key = %key, records, uncompressed_bytes, "indexed");
            Ok(Outcome::Indexed {
                records,
                uncompressed_bytes,
                index_key: key,
            })
        }
        Err(IndexError::Source(e)) => Err(err(FailureKind::S3Read, "GetObject (body)", obj, e.to_string())),
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
        .map_err(|e| sdk_err(FailureKind::S3Write, "CopyObject (quarantine)", obj, &e))?;
    let mut body = serde_json::to_vec(doc).expect("a QuarantineDoc always serializes");
    body.push(b'\n');
    s3.put_object()
        .bucket(&obj.bucket)
        .key(&error_key)
        .content_type("application/json")
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|e| sdk_err(FailureKind::S3Write, "PutObject (quarantine error)", obj, &e))?;
    tracing::warn!(
        bucket = %obj.bucket, key = %obj.key, quarantine_key = %copy_key,
        reason = doc.reason.as_str(), message = %doc.message, "quarantined"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::FailureKind::{self, *};

    #[test]
    fn failures_are_sorted_by_code_then_status() {
        let c = FailureKind::classify;
        assert_eq!(c(Some("SlowDown"), Some(503), S3Read), Throttled);
        assert_eq!(c(None, Some(503), S3Write), Throttled);
        assert_eq!(c(Some("ThrottlingException"), Some(400), S3Write), Throttled);
        assert_eq!(c(Some("AccessDenied"), Some(403), S3Read), AccessDenied);
        assert_eq!(c(None, Some(403), S3Write), AccessDenied);
        assert_eq!(c(Some("NoSuchBucket"), Some(404), S3Read), S3Read);
        assert_eq!(c(Some("InternalError"), Some(500), S3Write), S3Write);
        // A timeout or a refused connection has neither.
        assert_eq!(c(None, None, S3Read), S3Read);
        let names: Vec<_> = [Throttled, AccessDenied, S3Read, S3Write, Internal]
            .map(FailureKind::as_str)
            .into();
        assert_eq!(names, ["Throttled", "AccessDenied", "S3Read", "S3Write", "Internal"]);
    }
}
