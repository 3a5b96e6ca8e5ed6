//! `[sinks.<id>] type = "s3"`.

use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::confdiag::{Ctx, Seg};
use crate::sinks::encoding::Compression;
use crate::template::Template;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3SinkConfig {
    pub bucket: String,
    /// Template of the key prefix: `{field}` and strftime of the event time.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    #[serde(default)]
    pub compression: Compression,
    /// gzip 1-9 (default 2) or zstd 1-19 (default 3).
    pub compression_level: Option<u32>,
    /// Uncompressed bytes after which an object is closed.
    #[serde(default = "default_max_object_size")]
    pub max_object_size: ByteSize,
    /// Age after which an open object is closed and uploaded.
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Compressed bytes per multipart part; an object switches to multipart
    /// upload once it has this much. At least 5MiB (S3's minimum part size).
    #[serde(default = "default_part_size")]
    pub multipart_part_size: ByteSize,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    /// Path-style addressing, for S3-compatible endpoints (LocalStack, MinIO).
    #[serde(default)]
    pub force_path_style: bool,
    /// `STANDARD`, `STANDARD_IA`, `INTELLIGENT_TIERING`, `GLACIER_IR`, ...
    pub storage_class: Option<String>,
    /// `AES256` or `aws:kms`.
    pub server_side_encryption: Option<String>,
    /// KMS key for `aws:kms` (default: the account's S3 key).
    pub kms_key_id: Option<String>,
    /// Send only this top-level field's value instead of the whole record
    /// (Fluent Bit's `log_key`): a string as its text, anything else as JSON.
    /// Records without it are dropped and counted (`log_key_missing`).
    pub log_key: Option<String>,
    /// Key of the event time the source added: `@timestamp` (default), `""`
    /// to leave it out, or another name. The record's own keys are kept.
    pub timestamp_key: Option<String>,
}

fn default_key_prefix() -> String {
    "%Y/%m/%d/%H/".to_string()
}

fn default_max_object_size() -> ByteSize {
    ByteSize::mib(50)
}

fn default_flush_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_part_size() -> ByteSize {
    ByteSize::mib(8)
}

const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "GLACIER_IR",
    "EXPRESS_ONEZONE",
];

impl S3SinkConfig {
    /// What this sink writes for one record (`log_key`, `timestamp_key`).
    pub fn record_format(&self) -> crate::sinks::encoding::RecordFormat {
        crate::sinks::encoding::RecordFormat::new(self.log_key.as_deref(), self.timestamp_key.as_deref())
    }

    pub fn validate(&self, ctx: &mut Ctx<'_>, base: &[Seg]) -> bool {
        let at = |k: &str| crate::confdiag::key(base, k);
        let mut ok = true;
        let b = &self.bucket;
        let bucket_ok = (3..=63).contains(&b.len())
            && b.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !bucket_ok {
            ctx.error(&at("bucket"), format!("`{b}` is not a valid bucket name"));
            ok = false;
        }
        if let Err(e) = Template::parse(&self.key_prefix) {
            ctx.error(&at("key_prefix"), e.to_string());
            ok = false;
        }
        if self.key_prefix.starts_with('/') {
            ctx.error(&at("key_prefix"), "must not start with `/`");
            ok = false;
        }
        if self.max_object_size.as_u64() < 1024 {
            ctx.error(&at("max_object_size"), "must be at least 1KiB");
            ok = false;
        }
        let part = self.multipart_part_size.as_u64();
        if !(5 * 1024 * 1024..=5 * 1024 * 1024 * 1024).contains(&part) {
            ctx.error(&at("multipart_part_size"), "must be between 5MiB and 5GiB");
            ok = false;
        }
        if self.flush_interval < Duration::from_millis(10) {
            ctx.error(&at("flush_interval"), "must be at least 10ms");
            ok = false;
        }
        if let Some(sc) = &self.storage_class
            && !STORAGE_CLASSES.contains(&sc.as_str())
        {
            ctx.error(
                &at("storage_class"),
                format!(
                    "unknown storage class `{sc}`, expected one of {}",
                    STORAGE_CLASSES.join(", ")
                ),
            );
            ok = false;
        }
        match self.server_side_encryption.as_deref() {
            None | Some("AES256") | Some("aws:kms") => {}
            Some(other) => {
                ctx.error(
                    &at("server_side_encryption"),
                    format!("`{other}`: expected \"AES256\" or \"aws:kms\""),
                );
                ok = false;
            }
        }
        if self.kms_key_id.is_some() && self.server_side_encryption.as_deref() != Some("aws:kms") {
            ctx.error(&at("kms_key_id"), "needs server_side_encryption = \"aws:kms\"");
            ok = false;
        }
        ok &= crate::sinks::encoding::RecordFormat::validate(self.log_key.as_deref(), ctx, base);
        ok
    }
}
