//! `logferry check`: can every sink reach and write its destination?
//!
//! Why a multipart probe for S3: it proves `s3:PutObject` on the sink's own
//! prefix (the permission the sink needs) and, aborted at once, leaves no
//! object behind, so the command is safe as a readiness probe.

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};

use crate::config::Config;
use crate::sinks::SinkConfig;
use crate::sinks::aws;

/// One line of the report.
#[derive(Debug)]
pub struct SinkCheck {
    pub id: String,
    pub target: String,
    pub result: Result<(), String>,
}

pub async fn check(config: &Config) -> Vec<SinkCheck> {
    let mut out = Vec::new();
    for c in &config.sinks {
        let (target, result) = match &c.inner {
            SinkConfig::S3(s) => (format!("s3://{}/{}", s.bucket, s.key_prefix), check_s3(s).await),
            SinkConfig::CloudWatchLogs(c) => (format!("cloudwatch_logs {}", c.log_group), check_cloudwatch(c).await),
            SinkConfig::Firehose(f) => (format!("firehose:{}", f.delivery_stream), check_firehose(f).await),
            SinkConfig::Kinesis(k) => (format!("kinesis_streams:{}", k.stream), check_kinesis(k).await),
            SinkConfig::Forward(f) => (
                format!(
                    "forward {}",
                    f.endpoints()
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                crate::sinks::forward::check(f).await,
            ),
            SinkConfig::Http(h) => match crate::sinks::http::check(h).await {
                Ok(said) => (format!("http {said}"), Ok(())),
                Err(e) => (format!("http {}", crate::sinks::http::shown_uri(h)), Err(e)),
            },
            SinkConfig::File(f) => (f.path.display().to_string(), check_dir(&f.path)),
            SinkConfig::Stdout(_) => ("stdout".to_string(), Ok(())),
            SinkConfig::Blackhole(_) => ("blackhole".to_string(), Ok(())),
        };
        out.push(SinkCheck {
            id: c.id.clone(),
            target,
            result,
        });
    }
    out
}

fn check_dir(path: &std::path::Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let probe = path.join(format!(".logferry-check-{}", uuid::Uuid::now_v7().simple()));
    std::fs::write(&probe, b"").map_err(|e| format!("cannot write in {}: {e}", path.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

async fn check_s3(s: &crate::sinks::s3::S3SinkConfig) -> Result<(), String> {
    let sdk = aws::sdk_config(s.region.as_deref(), s.endpoint_url.as_deref()).await;
    if sdk.region().is_none() {
        return Err(
            "no AWS region (set the sink's `region`, AWS_REGION, or run where instance metadata answers)".into(),
        );
    }
    let conf = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(s.force_path_style)
        .build();
    let client = aws_sdk_s3::Client::from_conf(conf);
    // The literal part of the prefix (before any template) is where objects go.
    let literal: String = s.key_prefix.chars().take_while(|c| *c != '{' && *c != '%').collect();
    let key = format!("{literal}.logferry-check-{}", uuid::Uuid::now_v7().simple());
    let created = client
        .create_multipart_upload()
        .bucket(&s.bucket)
        .key(&key)
        .send()
        .await
        .map_err(|e| describe(&e))?;
    if let Some(id) = created.upload_id() {
        client
            .abort_multipart_upload()
            .bucket(&s.bucket)
            .key(&key)
            .upload_id(id)
            .send()
            .await
            .map_err(|e| format!("writable, but cannot abort the probe upload: {}", describe(&e)))?;
    }
    Ok(())
}

async fn check_cloudwatch(c: &crate::sinks::cloudwatch_logs::CloudWatchLogsSinkConfig) -> Result<(), String> {
    let sdk = aws::sdk_config(c.region.as_deref(), c.endpoint_url.as_deref()).await;
    if sdk.region().is_none() {
        return Err(
            "no AWS region (set the sink's `region`, AWS_REGION, or run where instance metadata answers)".into(),
        );
    }
    let client = aws_sdk_cloudwatchlogs::Client::new(&sdk);
    let literal: String = c.log_group.chars().take_while(|ch| *ch != '{' && *ch != '%').collect();
    let mut req = client.describe_log_groups().limit(5);
    if !literal.is_empty() {
        req = req.log_group_name_prefix(&literal);
    }
    let out = req.send().await.map_err(|e| match e.code() {
        Some(code) => format!("{code}: {}", e.message().unwrap_or("")),
        None => aws_sdk_cloudwatchlogs::error::DisplayErrorContext(&e).to_string(),
    })?;
    let fixed = literal == c.log_group;
    let exists = out
        .log_groups()
        .iter()
        .any(|g| g.log_group_name() == Some(literal.as_str()));
    if fixed && !exists && !c.create_missing {
        return Err(format!(
            "log group {literal} does not exist and create_missing is false"
        ));
    }
    Ok(())
}

async fn check_firehose(f: &crate::sinks::firehose::FirehoseSinkConfig) -> Result<(), String> {
    let sdk = aws::sdk_config(f.region.as_deref(), f.endpoint_url.as_deref()).await;
    if sdk.region().is_none() {
        return Err(
            "no AWS region (set the sink's `region`, AWS_REGION, or run where instance metadata answers)".into(),
        );
    }
    let client = aws_sdk_firehose::Client::new(&sdk);
    let out = client
        .describe_delivery_stream()
        .delivery_stream_name(&f.delivery_stream)
        .send()
        .await
        .map_err(|e| describe(&e))?;
    let status = out
        .delivery_stream_description()
        .map(|d| d.delivery_stream_status().as_str().to_string())
        .unwrap_or_else(|| "unknown (no description returned)".to_string());
    if status == "ACTIVE" {
        Ok(())
    } else {
        Err(format!(
            "delivery stream `{}` is {status}, not ACTIVE",
            f.delivery_stream
        ))
    }
}

async fn check_kinesis(k: &crate::sinks::kinesis::KinesisSinkConfig) -> Result<(), String> {
    let sdk = aws::sdk_config(k.region.as_deref(), k.endpoint_url.as_deref()).await;
    if sdk.region().is_none() {
        return Err(
            "no AWS region (set the sink's `region`, AWS_REGION, or run where instance metadata answers)".into(),
        );
    }
    let client = aws_sdk_kinesis::Client::new(&sdk);
    let out = client
        .describe_stream_summary()
        .stream_name(&k.stream)
        .send()
        .await
        .map_err(|e| describe(&e))?;
    let status = out
        .stream_description_summary()
        .map(|d| d.stream_status().as_str().to_string())
        .unwrap_or_else(|| "unknown (no description returned)".to_string());
    // UPDATING streams (resharding, retention changes) take writes.
    if status == "ACTIVE" || status == "UPDATING" {
        Ok(())
    } else {
        Err(format!("stream `{}` is {status}, not ACTIVE", k.stream))
    }
}

/// Every AWS SDK crate shares `aws-smithy-runtime-api`'s error type, so this
/// serves the Firehose client too.
fn describe<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> String {
    match e.code() {
        Some(code) => format!("{code}: {}", e.message().unwrap_or("")),
        None => DisplayErrorContext(e).to_string(),
    }
}
