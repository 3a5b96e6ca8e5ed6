//! What the record-batch AWS sinks share: Firehose `PutRecordBatch` and
//! Kinesis `PutRecords` take up to 500 records per call under a byte limit
//! and answer per record, so a call can half succeed.
//!
//! Why one module: the rules that keep data (only the rejected records are
//! sent again, after a capped jittered backoff; a record rejected past
//! `max_record_retries` goes to the dead letters; whole-call errors are
//! retried until the sink is told to stop; a response that does not line up
//! with the request resends everything, since a duplicate is better than a
//! loss) must not drift apart between the two sinks. Each sink keeps what is
//! its own: how log records become service records, and the SDK call
//! ([`sink::Service`]); the event loop around the calls is [`sink::run`].

#[cfg(test)]
pub mod scripted;
pub mod sink;

use std::future::Future;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use super::aws::{Abandoned, RetryCtx};

/// A service's limits on one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// Records per call.
    pub records: usize,
    /// Bytes per call, as the service counts them (data, plus the
    /// partition key for Kinesis).
    pub bytes: usize,
}

/// How many of the queued records (sizes in order) go into the next call:
/// as many as fit the limits, at least one.
pub fn next_call(sizes: impl IntoIterator<Item = usize>, limits: CallLimits) -> usize {
    let (mut n, mut bytes) = (0usize, 0usize);
    for s in sizes {
        if n == limits.records || (n > 0 && bytes + s > limits.bytes) {
            break;
        }
        n += 1;
        bytes += s;
    }
    n
}

/// Whether the queue makes a full call: the record limit, or so many bytes
/// that another record of up to `record_limit` bytes might not fit.
pub fn call_ready(records: usize, bytes: usize, record_limit: usize, limits: CallLimits) -> bool {
    records >= limits.records || (records > 0 && bytes + record_limit > limits.bytes)
}

/// Indices of the records of a call to send again: those whose response
/// entry has an error code. When the response cannot be matched to the
/// records (wrong length, or a failure count without codes), all of them:
/// a duplicate is better than a loss.
pub fn failed_indices<S: AsRef<str>>(sent: usize, failed_count: i32, codes: &[Option<S>]) -> Vec<usize> {
    if codes.len() != sent {
        return if failed_count > 0 {
            (0..sent).collect()
        } else {
            Vec::new()
        };
    }
    let failed: Vec<usize> = codes
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_some())
        .map(|(i, _)| i)
        .collect();
    if failed.is_empty() && failed_count > 0 {
        return (0..sent).collect();
    }
    failed
}

/// A call's answer, reduced to what [`put_all`] needs.
#[derive(Debug, Default)]
pub struct Answer {
    /// `FailedPutCount` / `FailedRecordCount`.
    pub failed_count: i32,
    /// One entry per response record: its error code, if rejected.
    pub codes: Vec<Option<String>>,
}

/// What became of one record handed to [`put_all`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The service has it.
    Accepted,
    /// Rejected `max_record_retries` times: it goes to the dead letters.
    Exhausted,
}

/// The sink state a call loop reports to.
pub struct Caller<'a> {
    /// Counts, logs and backs off failures, and marks readiness.
    pub retry: RetryCtx<'a>,
    /// For log lines: "PutRecordBatch", "PutRecords".
    pub what: &'static str,
    /// 0: retry rejected records forever.
    pub max_record_retries: u32,
}

/// Sends `records` (with `held`, what the sink keeps beside each: counts and
/// ack clones) until every one is accepted or exhausted, calling `settle` as
/// each is. Rejected records alone are sent again, after a backoff.
/// `Err(Abandoned)` when told to stop: the records not settled drop, and
/// their acks fail.
pub async fn put_all<R, H, E, F, Fut>(
    cx: Caller<'_>,
    mut records: Vec<R>,
    mut held: Vec<H>,
    mut send: F,
    mut settle: impl FnMut(Settled, R, H),
) -> Result<(), Abandoned>
where
    R: Clone,
    F: FnMut(Vec<R>) -> Fut,
    Fut: Future<Output = Result<Answer, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    debug_assert_eq!(records.len(), held.len());
    let Caller {
        mut retry,
        what,
        max_record_retries,
    } = cx;
    let mut attempt = 0u32;
    while !records.is_empty() {
        let out = retry.retry(what, || send(records.clone())).await?;
        let failed = failed_indices(records.len(), out.failed_count, &out.codes);
        let first_code = failed.first().and_then(|&i| out.codes.get(i).cloned().flatten());
        let sent = records.len();
        let (mut again_records, mut again_held) = (Vec::new(), Vec::new());
        let mut next_failed = failed.iter().peekable();
        for (i, (rec, h)) in records.drain(..).zip(held.drain(..)).enumerate() {
            if next_failed.next_if_eq(&&i).is_some() {
                again_records.push(rec);
                again_held.push(h);
            } else {
                settle(Settled::Accepted, rec, h);
            }
        }
        records = again_records;
        held = again_held;
        if records.is_empty() {
            break;
        }
        attempt += 1;
        if max_record_retries > 0 && attempt > max_record_retries {
            for (rec, h) in records.drain(..).zip(held.drain(..)) {
                settle(Settled::Exhausted, rec, h);
            }
            break;
        }
        let code = first_code.as_deref();
        retry.failed(
            what,
            code,
            &format_args!(
                "{} of {sent} records rejected ({}); sending those again",
                records.len(),
                code.unwrap_or("no code")
            ),
        );
        retry.back_off(attempt).await?;
    }
    retry.recovered();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FH: CallLimits = CallLimits {
        records: 500,
        bytes: 4 << 20,
    };

    #[test]
    fn only_records_with_an_error_code_are_retried() {
        let codes = [None, Some("ServiceUnavailableException"), None, Some("InternalFailure")];
        assert_eq!(failed_indices(4, 2, &codes), [1, 3]);
        assert!(failed_indices::<&str>(4, 0, &[None; 4]).is_empty());
        // Responses that do not line up with the records: send all again.
        assert_eq!(failed_indices(3, 1, &[Some("X")]), [0, 1, 2]);
        assert_eq!(failed_indices::<&str>(3, 1, &[None, None, None]), [0, 1, 2]);
        assert!(failed_indices::<&str>(3, 0, &[]).is_empty());
    }

    #[test]
    fn a_call_is_ready_when_it_cannot_grow() {
        let full = 1_024_000;
        assert!(!call_ready(0, 0, full, FH));
        assert!(!call_ready(3, 3 * full, full, FH));
        assert!(call_ready(4, 4 * full, full, FH));
        assert!(call_ready(500, 500 * 100, 1024, FH));
        assert!(!call_ready(499, 499 * 100, 1024, FH));
    }

    #[test]
    fn a_record_larger_than_the_call_limit_still_goes_alone() {
        // Never 0, or a sink would spin.
        assert_eq!(next_call([FH.bytes + 1, 1], FH), 1);
        assert_eq!(next_call([], FH), 0);
    }
}
