//! AWS plumbing shared by the AWS sinks: SDK configuration (credentials,
//! region, endpoint) and error classification.
//!
//! Credentials and region come from `aws-config`'s default chain, so every
//! deployment shape works without code of ours: environment, profile, web
//! identity (EKS IRSA), ECS task role, EC2 instance profile (IMDSv2). The
//! SDK's standard retry mode (exponential backoff with jitter) handles
//! throttling and transient errors inside one call; the sinks add a bounded
//! outer retry that never drops data.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::http::Response;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use tokio_util::sync::CancellationToken;

use crate::api::Health;
use crate::metrics::ComponentMetrics;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use serde::Deserialize;

/// The `region` / `endpoint_url` options every AWS sink takes.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AwsOptions {
    /// Region; default from the environment, profile or instance metadata.
    pub region: Option<String>,
    /// Endpoint override (LocalStack, VPC endpoints); `AWS_ENDPOINT_URL` and
    /// `AWS_ENDPOINT_URL_<SERVICE>` work too.
    pub endpoint_url: Option<String>,
}

/// Loads the SDK configuration for a sink.
pub async fn sdk_config(region: Option<&str>, endpoint_url: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(4))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(60))
                .build(),
        );
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_string()));
    }
    if let Some(e) = endpoint_url {
        loader = loader.endpoint_url(e);
    }
    loader.load().await
}

/// [`sdk_config`] for a sink, warning once at start when no region is
/// found anywhere (every call would fail).
pub async fn sink_sdk_config(region: Option<&str>, endpoint_url: Option<&str>) -> aws_config::SdkConfig {
    let sdk = sdk_config(region, endpoint_url).await;
    if sdk.region().is_none() {
        tracing::warn!("no AWS region configured (sink `region`, AWS_REGION, profile or instance metadata)");
    }
    sdk
}

/// How a failed call should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Will not succeed without an operator (missing bucket, access denied):
    /// keep the data, report not ready, retry slowly.
    Permanent,
    /// Network, throttling, 5xx: retry with backoff.
    Transient,
}

/// Classifies an SDK error by its service error code.
pub fn classify(code: Option<&str>) -> Failure {
    match code {
        Some(
            "NoSuchBucket"
            | "AccessDenied"
            | "AccessDeniedException"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "ResourceNotFoundException"
            | "InvalidBucketName"
            | "KMS.NotFoundException"
            | "KMS.AccessDeniedException"
            | "KMS.DisabledException"
            | "KMS.InvalidStateException"
            | "KMS.OptInRequired"
            | "InvalidKMSResourceException"
            | "KMSAccessDeniedException"
            | "KMSDisabledException"
            | "KMSInvalidStateException"
            | "KMSNotFoundException"
            | "KMSOptInRequired"
            | "AuthorizationHeaderMalformed",
        ) => Failure::Permanent,
        _ => Failure::Transient,
    }
}

/// Exponential backoff with full jitter, capped: the delay before attempt
/// `attempt` (1-based) of the outer retry loop.
pub fn backoff(attempt: u32, cap: Duration) -> Duration {
    let base = Duration::from_millis(200).saturating_mul(1u32 << attempt.min(16));
    let max = base.min(cap);
    // Full jitter: uniform in [max/2, max].
    let nanos = max.as_nanos() as u64;
    Duration::from_nanos(nanos / 2 + fastrand::u64(0..=nanos / 2))
}

/// Longest pause between retries of one request.
pub const RETRY_CAP: Duration = Duration::from_secs(30);

/// The operation was abandoned at shutdown; its records stay unacknowledged.
#[derive(Debug)]
pub struct Abandoned;

/// What a sink's retry loop reports to.
pub struct RetryCtx<'a> {
    pub id: &'a str,
    pub service: &'static str,
    pub m: &'a ComponentMetrics,
    pub health: &'a Health,
    pub stop: &'a CancellationToken,
    /// Set while requests fail, so a burst of errors is logged once.
    pub failing: &'a AtomicBool,
}

impl RetryCtx<'_> {
    /// Runs `op` until it succeeds or the sink is told to stop. Never drops
    /// data: while this waits, the sink takes no input.
    pub async fn run<T, E, F, Fut>(&mut self, what: &'static str, op: F) -> Result<T, Abandoned>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, Response>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let v = self.retry(what, op).await?;
        self.recovered();
        Ok(v)
    }

    /// [`RetryCtx::run`] without ending the failure burst on success: a
    /// record call can succeed with rejected records, so its caller decides.
    pub async fn retry<T, E, F, Fut>(&mut self, what: &'static str, mut op: F) -> Result<T, Abandoned>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, Response>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let mut attempt = 0u32;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    attempt += 1;
                    self.failed(what, e.code(), &DisplayErrorContext(&e));
                    self.back_off(attempt).await?;
                }
            }
        }
    }

    /// The capped, jittered pause before attempt `attempt + 1`; `Err` when
    /// the sink is told to stop meanwhile.
    pub async fn back_off(&self, attempt: u32) -> Result<(), Abandoned> {
        tokio::select! {
            _ = tokio::time::sleep(backoff(attempt, RETRY_CAP)) => Ok(()),
            _ = self.stop.cancelled() => Err(Abandoned),
        }
    }

    pub fn recovered(&mut self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(sink = self.id, "{} requests succeed again", self.service);
            self.health.set_sink(self.id, true);
        }
    }

    pub fn failed(&mut self, what: &'static str, code: Option<&str>, error: &dyn std::fmt::Display) {
        let class = classify(code);
        // Every failure here is followed by another attempt (or the stop).
        self.m.retries.inc();
        self.m.sink_error(if class == Failure::Permanent {
            "permanent"
        } else {
            "transient"
        });
        if class == Failure::Permanent {
            self.health.set_sink(self.id, false);
        }
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(sink = self.id, request = what, %error,
                "{} request failed; retrying with backoff, records are kept", self.service);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let cap = Duration::from_secs(30);
        for attempt in 1..40 {
            let d = backoff(attempt, cap);
            assert!(d <= cap, "{d:?}");
            let full = Duration::from_millis(200)
                .saturating_mul(1u32 << attempt.min(16))
                .min(cap);
            assert!(d >= full / 2);
        }
    }

    #[test]
    fn permanent_errors_are_recognised() {
        assert_eq!(classify(Some("NoSuchBucket")), Failure::Permanent);
        assert_eq!(classify(Some("SlowDown")), Failure::Transient);
        assert_eq!(classify(Some("KMS.DisabledException")), Failure::Permanent);
        assert_eq!(classify(Some("ServiceUnavailableException")), Failure::Transient);
        assert_eq!(classify(None), Failure::Transient);
    }
}
