//! One run per partition at a time, across invocations.
//!
//! Two runs of the same hour and source can overlap: an SQS message
//! delivered twice, a backfill sent while the schedule runs. Each would
//! take the other's `_pending` marker for a dead run's and delete output
//! the other is about to name in its manifest; with `COMPACT_INPUTS=delete`
//! records would then be lost. So a run first claims the partition with
//! `_lease.json`, written with S3's conditional writes: `If-None-Match: *`
//! where there is none, or `If-Match` on the ETag of a lease that has
//! expired. Only one writer wins either race; the other finds the lease
//! live and stops as `Busy`, leaving everything as it was, and is retried.
//!
//! A lease lasts until its run's own deadline (Lambda's, or the longest
//! invocation without one) plus a margin, so a run never outlives it and a
//! killed run's lease lapses by itself. A run that ends, well or not,
//! removes its lease; a run that is killed cannot, and the next run after
//! expiry takes it over. The lease's times come from the Lambda clock,
//! which is the same AWS clock for every invocation.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::store::{Store, read_tagged};
use crate::process::ProcessError;

/// The lease's name in the partition's directory (Athena skips `_` names).
pub const LEASE: &str = "_lease.json";

/// Kept beyond a run's deadline: Lambda stops the run by then.
pub const MARGIN: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// The longest Lambda invocation, for a run without a deadline.
pub const LONGEST_RUN: chrono::TimeDelta = chrono::TimeDelta::minutes(15);

/// What a run claims: who it is, the time now, and until when it may write.
#[derive(Clone, Debug)]
pub struct Claim {
    pub run: String,
    pub now: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

impl Claim {
    /// A claim for a run that ends by `deadline`, or within the longest
    /// invocation without one.
    pub fn new(run: impl Into<String>, deadline: Option<std::time::Instant>) -> Claim {
        let now = Utc::now();
        let left = deadline
            .map(|d| d.saturating_duration_since(std::time::Instant::now()))
            .and_then(|d| chrono::TimeDelta::from_std(d).ok())
            .unwrap_or(LONGEST_RUN);
        Claim {
            run: run.into(),
            now,
            until: now + left + MARGIN,
        }
    }
}

/// The lease object's content: the partition is `run`'s until `until`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub run: String,
    pub until: DateTime<Utc>,
}

/// Takes the partition's lease: `Ok(Ok(()))` when this run holds it now,
/// `Ok(Err(lease))` with the live lease of another run.
pub async fn take<S: Store>(
    store: &S,
    bucket: &str,
    dir: &str,
    claim: &Claim,
) -> Result<Result<(), Lease>, ProcessError> {
    let key = format!("{dir}{LEASE}");
    let body = serde_json::to_vec(&Lease {
        run: claim.run.clone(),
        until: claim.until,
    })
    .expect("a lease serializes");
    // A lease removed between our two calls sends us round once more; a
    // third loss means other runs are taking turns on it.
    for _ in 0..3 {
        if store.put_if(bucket, &key, body.clone(), None).await?.is_some() {
            return Ok(Ok(()));
        }
        let Some((etag, text)) = read_tagged(store, bucket, &key).await? else {
            continue;
        };
        // A lease that does not parse (written by hand, or by another
        // version) must not hold the partition for ever: it counts as lapsed.
        if let Ok(held) = serde_json::from_slice::<Lease>(&text)
            && held.until > claim.now
        {
            return Ok(Err(held));
        }
        if store.put_if(bucket, &key, body.clone(), Some(&etag)).await?.is_some() {
            tracing::warn!(partition = %dir, "took over the lapsed lease of a run that did not finish");
            return Ok(Ok(()));
        }
    }
    Ok(Err(Lease {
        run: "(contended)".to_string(),
        until: claim.now,
    }))
}

/// Gives the lease up.
pub async fn release<S: Store>(store: &S, bucket: &str, dir: &str) -> Result<(), ProcessError> {
    store.delete(bucket, &[format!("{dir}{LEASE}")]).await
}
