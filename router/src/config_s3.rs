//! `--config s3://bucket/key` and `LOGFERRY_CONFIG_S3`: the TOML config read
//! from S3 once, at start.
//!
//! Why: on Fargate a config file means a custom image or a mounted volume;
//! aws-for-fluent-bit's init image reads its configs from S3 for that reason,
//! so a FireLens user changes the config by uploading a file. Why once: a
//! config that changes under a running router would change its checkpoints'
//! meaning halfway; a new config takes a restart, as with a file.
//!
//! Credentials and region come from `aws-config`'s default chain as for the
//! sinks (`sinks/aws.rs`): environment, profile, web identity, the ECS task
//! role, the EC2 instance profile. `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`
//! point it elsewhere (LocalStack, MinIO), and then addressing is path-style,
//! which those need. The object is bounded ([`MAX_CONFIG_BYTES`]): a config is
//! a few KiB, and a wrong key must not make the router read a log archive
//! into memory. Every failure is one line naming the object and the cause
//! (S3's error code: `NoSuchKey`, `NoSuchBucket`, `AccessDenied`, ...), and
//! `main.rs` exits 78 as for any config error.

use std::fmt;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use tokio::io::AsyncReadExt;

/// Largest config object read.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// An `s3://bucket/key` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub key: String,
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

impl S3Url {
    /// `None` when `s` is not an `s3://` address at all (a file path);
    /// an error when it is one without a bucket or a key.
    pub fn parse(s: &str) -> Option<Result<S3Url, String>> {
        let rest = s.strip_prefix("s3://")?;
        Some(match rest.split_once('/') {
            Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() && !key.ends_with('/') => Ok(S3Url {
                bucket: bucket.to_string(),
                key: key.to_string(),
            }),
            _ => Err(format!("`{s}` is not s3://bucket/key (a bucket and an object key)")),
        })
    }
}

/// Reads the object at `url` as UTF-8 text, at most [`MAX_CONFIG_BYTES`].
/// Blocking: runs its own small runtime (the pipeline's starts after).
pub fn fetch(url: &S3Url) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot read config {url}: cannot start the async runtime: {e}"))?;
    rt.block_on(fetch_async(url))
        .map_err(|cause| format!("cannot read config {url}: {cause}"))
}

async fn fetch_async(url: &S3Url) -> Result<String, String> {
    let sdk = crate::sinks::aws::sdk_config(None, None).await;
    let custom_endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(custom_endpoint)
            .build(),
    );
    let out = s3
        .get_object()
        .bucket(&url.bucket)
        .key(&url.key)
        .send()
        .await
        .map_err(|e| match e.code() {
            Some(code) => match e.message() {
                Some(m) if !m.is_empty() => format!("{code} ({m})"),
                _ => code.to_string(),
            },
            // No S3 answer: no region, no credentials, no connection.
            None => DisplayErrorContext(&e).to_string(),
        })?;
    if let Some(len) = out.content_length()
        && u64::try_from(len).unwrap_or(0) > MAX_CONFIG_BYTES
    {
        return Err(format!(
            "the object is {len} bytes, more than the {MAX_CONFIG_BYTES} a config may have"
        ));
    }
    let mut text = Vec::new();
    out.body
        .into_async_read()
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut text)
        .await
        .map_err(|e| format!("reading the object failed: {e}"))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!(
            "the object is more than the {MAX_CONFIG_BYTES} bytes a config may have"
        ));
    }
    String::from_utf8(text).map_err(|e| format!("the object is not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(S3Url::parse("/etc/logferry.toml"), None);
        assert_eq!(S3Url::parse("logferry.toml"), None);
        assert_eq!(
            S3Url::parse("s3://my-bucket/conf/logferry.toml"),
            Some(Ok(S3Url {
                bucket: "my-bucket".into(),
                key: "conf/logferry.toml".into()
            }))
        );
        let u = S3Url::parse("s3://b/a b/ü.toml").unwrap().unwrap();
        assert_eq!(u.key, "a b/ü.toml");
        assert_eq!(u.to_string(), "s3://b/a b/ü.toml");
        for bad in ["s3://", "s3://bucket", "s3://bucket/", "s3:///key", "s3://bucket/dir/"] {
            let e = S3Url::parse(bad).unwrap().unwrap_err();
            assert!(e.contains(bad) && e.contains("s3://bucket/key"), "{bad}: {e}");
        }
    }
}
