//! `bootstrap`: the indexer Lambda for the `provided.al2023` runtime.

// The compactor's read-ahead nests the handler's future deeper than rustc's
// default layout depth allows.
#![recursion_limit = "256"]

use lambda_runtime::{Diagnostic, Error, LambdaEvent, service_fn};
use logferry_indexer::config::IndexerConfig;
use logferry_indexer::handler;
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    // Logs to stderr (Lambda sends both streams to the log group); stdout
    // carries only the EMF lines. Level from RUST_LOG, else AWS_LAMBDA_LOG_LEVEL, else info.
    let level = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("AWS_LAMBDA_LOG_LEVEL").map(|l| l.to_lowercase()))
        .unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .init();

    // Configuration errors stop the function at init, naming the variable.
    let cfg = IndexerConfig::from_lookup(&|k: &str| std::env::var(k).ok())?;
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&aws)
            .force_path_style(path_style())
            .build(),
    );
    let function_name = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "logferry-indexer".into());
    tracing::info!(index_prefix = %cfg.index_prefix, quarantine_prefix = %cfg.quarantine_prefix, "indexer ready");

    let (s3, cfg, function_name) = (&s3, &cfg, function_name.as_str());
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<Value>| async move {
        // Named errors: `errorType` is what operators filter and alarm on.
        // The invocation's deadline (ms since the epoch), as an Instant.
        let now_ms = chrono::Utc::now().timestamp_millis();
        let left = u64::try_from(i64::try_from(ev.context.deadline).unwrap_or(i64::MAX) - now_ms).unwrap_or(0);
        let deadline = Some(std::time::Instant::now() + std::time::Duration::from_millis(left));
        handler::handle(ev.payload, s3, cfg, function_name, deadline)
            .await
            .map_err(|e| Diagnostic {
                error_type: e.error_type().into(),
                error_message: e.to_string(),
            })
    }))
    .await
}

/// Path-style addressing when an endpoint is overridden (LocalStack, MinIO)
/// or asked for with AWS_S3_FORCE_PATH_STYLE=true.
fn path_style() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.is_empty());
    std::env::var("AWS_S3_FORCE_PATH_STYLE")
        .map_or(set("AWS_ENDPOINT_URL") || set("AWS_ENDPOINT_URL_S3"), |v| v == "true")
}
