//! One invocation: parse the event, process each object in turn, report.
//!
//! SQS batches answer with `batchItemFailures` naming only the messages whose
//! objects hit a retryable error (or whose body cannot be understood); bad
//! objects are quarantined and count as handled. Direct S3 and EventBridge
//! invocations fail as a whole only when an object hit a retryable error
//! (Lambda's own retry then reprocesses it; indexing is idempotent).

use aws_lambda_events::sqs::SqsBatchResponse;
use aws_sdk_s3::Client;
use serde_json::{Value, json};

use crate::config::IndexerConfig;
use crate::emf::Totals;
use crate::process::{FailureKind, ObjectRef, process_object};
use crate::trigger::{self, Invocation, TriggerError};

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error(transparent)]
    Event(#[from] TriggerError),
    #[error("{failed} of {objects} objects failed and will be retried; first: {first}")]
    Objects {
        failed: u64,
        objects: u64,
        /// The first failure's kind names the whole invocation's error.
        kind: FailureKind,
        first: String,
    },
}

impl HandlerError {
    /// What Lambda reports as `errorType` (and CloudWatch alarms filter on):
    /// `InvalidEvent` for an event this function cannot read, else the first
    /// failed object's [`FailureKind`] (`Throttled`, `AccessDenied`,
    /// `S3Read`, `S3Write`, `Internal`).
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::Event(_) => "InvalidEvent",
            Self::Objects { kind, .. } => kind.as_str(),
        }
    }
}

/// Processes `objects`; true when every one is done (indexed, quarantined,
/// ignored or missing), false when any must be retried.
async fn process_all(
    s3: &Client,
    cfg: &IndexerConfig,
    objects: &[ObjectRef],
    totals: &mut Totals,
    first: &mut Option<(FailureKind, String)>,
) -> bool {
    let mut ok = true;
    for obj in objects {
        match process_object(s3, cfg, obj).await {
            Ok(outcome) => totals.add(&outcome),
            Err(e) => {
                tracing::error!(error = %e, "object not indexed; will be retried");
                totals.add_failed();
                first.get_or_insert_with(|| (e.kind, e.to_string()));
                ok = false;
            }
        }
    }
    ok
}

/// Handles one event; returns the response payload. Prints the EMF line.
pub async fn handle(
    event: Value,
    s3: &Client,
    cfg: &IndexerConfig,
    function_name: &str,
) -> Result<Value, HandlerError> {
    let mut totals = Totals::default();
    let result = run(event, s3, cfg, &mut totals).await;
    let now = chrono::Utc::now().timestamp_millis();
    // Lambda sends stdout to the function's log group, where EMF becomes metrics.
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", totals.emf_line(function_name, now));
        let _ = out.flush();
    }
    result
}

async fn run(event: Value, s3: &Client, cfg: &IndexerConfig, totals: &mut Totals) -> Result<Value, HandlerError> {
    let mut first = None;
    match trigger::parse(event)? {
        Invocation::Sqs(items) => {
            let mut response = SqsBatchResponse::default();
            for item in items {
                let ok = match &item.objects {
                    Ok(objects) => process_all(s3, cfg, objects, totals, &mut first).await,
                    Err(e) => {
                        tracing::error!(message_id = %item.message_id, error = %e, "cannot understand an SQS message");
                        totals.add_failed();
                        false
                    }
                };
                if !ok {
                    response.add_failure(item.message_id.clone());
                }
            }
            Ok(serde_json::to_value(&response).expect("an SqsBatchResponse always serializes"))
        }
        Invocation::Direct(objects) => {
            if process_all(s3, cfg, &objects, totals, &mut first).await {
                Ok(json!({
                    "objects": totals.objects, "indexed": totals.indexed, "quarantined": totals.quarantined,
                    "ignored": totals.ignored, "missing": totals.missing,
                }))
            } else {
                let (kind, first) = first.unwrap_or((FailureKind::Internal, String::new()));
                Err(HandlerError::Objects {
                    failed: totals.failed,
                    objects: totals.objects,
                    kind,
                    first,
                })
            }
        }
    }
}
