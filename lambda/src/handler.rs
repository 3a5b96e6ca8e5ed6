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

use std::sync::Arc;

use crate::compact::store::S3Store;
use crate::compact::{self, Job, Summary};
use crate::config::IndexerConfig;
use crate::emf::Totals;
use crate::process::{FailureKind, ObjectRef, ProcessError, process_object};
use crate::trigger::{self, Invocation, TriggerError, Work};

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
    #[error(
        "compacting s3://{bucket}/{prefix} ({hour}) stopped at the invocation's deadline with {left} \
         groups left; a retry compacts them"
    )]
    Incomplete {
        bucket: String,
        prefix: String,
        hour: String,
        left: u64,
    },
    #[error(
        "s3://{bucket}/{prefix} ({hour}) is being compacted by another run ({run}, until {until} at the \
         latest); a retry finds it done or takes it over"
    )]
    Busy {
        bucket: String,
        prefix: String,
        hour: String,
        run: String,
        until: String,
    },
    #[error("compacting s3://{bucket}/{prefix} ({hour}) failed and will be retried: {error}")]
    Compact {
        bucket: String,
        prefix: String,
        hour: String,
        error: ProcessError,
    },
}

impl HandlerError {
    /// What Lambda reports as `errorType` (and CloudWatch alarms filter on):
    /// `InvalidEvent` for an event this function cannot read; for a
    /// compaction, `Incomplete` (stopped at the deadline) or `Busy` (another
    /// run holds the partition); else the first failure's [`FailureKind`]
    /// (`Throttled`, `AccessDenied`, `S3Read`, `S3Write`, `Internal`).
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::Event(_) => "InvalidEvent",
            Self::Objects { kind, .. } => kind.as_str(),
            Self::Compact { error, .. } => error.kind.as_str(),
            Self::Incomplete { .. } => "Incomplete",
            Self::Busy { .. } => "Busy",
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
    deadline: Option<std::time::Instant>,
) -> Result<Value, HandlerError> {
    let mut totals = Totals::default();
    let result = run(event, s3, cfg, &mut totals, function_name, deadline).await;
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

/// Compacts one partition; logs the summary line and prints its EMF line.
async fn compact_one(
    s3: &Client,
    cfg: &IndexerConfig,
    job: &Job,
    function_name: &str,
    deadline: Option<std::time::Instant>,
) -> Result<Summary, HandlerError> {
    let started = std::time::Instant::now();
    let store = Arc::new(S3Store(s3.clone()));
    let claim = compact::lease::Claim::new(format!("{function_name}/{}", run_id()), deadline);
    let result = compact::compact(store, cfg, job, deadline, &claim).await;
    let seconds = started.elapsed().as_secs_f64();
    let hour = job.hour.format("%Y-%m-%dT%H").to_string();
    let summary = result.as_ref().cloned().unwrap_or_default();
    {
        use std::io::Write as _;
        let now = chrono::Utc::now().timestamp_millis();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "{}",
            summary.emf_line(function_name, result.is_err() || summary.busy.is_some(), seconds, now)
        );
        let _ = out.flush();
    }
    match result {
        Ok(Summary { busy: Some(busy), .. }) => Err(HandlerError::Busy {
            bucket: job.bucket.clone(),
            prefix: job.prefix.clone(),
            hour,
            run: busy.run,
            until: crate::compacted::canonical_time(busy.until),
        }),
        Ok(s) => {
            tracing::info!(
                bucket = %job.bucket, prefix = %job.prefix, hour = %hour, source = %job.source,
                objects = s.objects, covered = s.covered, records = s.records, quarantined = s.quarantined,
                bytes_in = s.bytes_in, uncompressed_bytes = s.uncompressed_bytes, bytes_out = s.bytes_out,
                files = s.files, inputs_settled = s.inputs_settled, orphans_removed = s.orphans_removed,
                found_by = s.found_by, seconds, "compacted"
            );
            if s.groups_left > 0 {
                return Err(HandlerError::Incomplete {
                    bucket: job.bucket.clone(),
                    prefix: job.prefix.clone(),
                    hour,
                    left: s.groups_left,
                });
            }
            Ok(s)
        }
        Err(error) => {
            tracing::error!(bucket = %job.bucket, prefix = %job.prefix, hour = %hour, error = %error, "compaction failed; will be retried");
            Err(HandlerError::Compact {
                bucket: job.bucket.clone(),
                prefix: job.prefix.clone(),
                hour,
                error,
            })
        }
    }
}

/// Names this invocation's run in the leases it takes (for people reading
/// them; the lease's safety rests on S3's conditional writes alone).
fn run_id() -> String {
    let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
    format!("{:x}-{nanos:x}", std::process::id())
}

/// The jobs of a compaction or schedule event.
fn jobs_of(work: Work, cfg: &IndexerConfig) -> Vec<Job> {
    match work {
        Work::Compact(job) => vec![job],
        Work::Scheduled(now) => {
            let jobs = compact::scheduled_jobs(&cfg.compact, now);
            if jobs.is_empty() {
                tracing::warn!(
                    "a scheduled event, but COMPACT_BUCKET and COMPACT_SOURCES are not set: nothing to compact"
                );
            }
            jobs
        }
        Work::Objects(_) => Vec::new(),
    }
}

async fn run(
    event: Value,
    s3: &Client,
    cfg: &IndexerConfig,
    totals: &mut Totals,
    function_name: &str,
    deadline: Option<std::time::Instant>,
) -> Result<Value, HandlerError> {
    let mut first = None;
    match trigger::parse(event)? {
        Invocation::Direct(work @ (Work::Compact(_) | Work::Scheduled(_))) => {
            let mut done = Vec::new();
            // A partition another run holds does not keep the schedule from the others.
            let mut busy = None;
            for job in jobs_of(work, cfg) {
                match compact_one(s3, cfg, &job, function_name, deadline).await {
                    Ok(s) => done
                        .push(json!({"bucket": job.bucket, "prefix": job.prefix, "source": job.source, "summary": s})),
                    Err(e @ HandlerError::Busy { .. }) => busy = busy.or(Some(e)),
                    Err(e) => return Err(e),
                }
            }
            match busy {
                Some(e) => Err(e),
                None => Ok(json!({ "compacted": done })),
            }
        }
        Invocation::Sqs(items) => {
            let mut response = SqsBatchResponse::default();
            for item in items {
                let ok = match item.work {
                    Ok(Work::Objects(ref objects)) => process_all(s3, cfg, objects, totals, &mut first).await,
                    Ok(work) => {
                        let mut ok = true;
                        for job in jobs_of(work, cfg) {
                            ok &= compact_one(s3, cfg, &job, function_name, deadline).await.is_ok();
                        }
                        ok
                    }
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
        Invocation::Direct(Work::Objects(objects)) => {
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
