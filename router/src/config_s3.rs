//! `--config s3://bucket/key` and `LOGFERRY_CONFIG_S3`: the TOML config read
//! from S3 once, at start; `--fluent-bit-config s3://...` likewise, with the
//! files it includes.
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
    rt.block_on(async { fetch_async(&client().await, url).await })
        .map_err(|cause| format!("cannot read config {url}: {cause}"))
}

/// An S3 client on the SDK's default chain; path-style addressing when an
/// endpoint variable points it at LocalStack or MinIO.
async fn client() -> aws_sdk_s3::Client {
    let sdk = crate::sinks::aws::sdk_config(None, None).await;
    let custom_endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(custom_endpoint)
            .build(),
    )
}

async fn fetch_async(s3: &aws_sdk_s3::Client, url: &S3Url) -> Result<String, String> {
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

/// Most files one Fluent Bit config read from S3 may pull in (itself,
/// `@INCLUDE`s and `Parsers_File`s): a loop of includes must end.
pub const MAX_FLUENT_BIT_FILES: usize = 64;

/// A Fluent Bit config read from S3 with what it includes, copied into a
/// private directory so the usual loader reads it; `prefix` maps that
/// directory back to the `s3://` address its messages must name.
pub struct FluentBitTree {
    pub dir: tempfile::TempDir,
    pub main: std::path::PathBuf,
    pub prefix: String,
}

impl FluentBitTree {
    /// `text` with the private directory shown as the S3 address.
    pub fn shown(&self, text: &str) -> String {
        text.replace(&format!("{}/", self.dir.path().display()), &self.prefix)
    }
}

/// Reads the Fluent Bit config at `url` and every relative `@INCLUDE` and
/// `Parsers_File` it names (from the same bucket, relative to the object
/// naming it, as a file's are to its directory), transitively. Absolute
/// paths stay local files (the image's own parsers); a relative glob cannot
/// be listed this way and is an error.
pub fn fetch_fluent_bit(url: &S3Url) -> Result<FluentBitTree, String> {
    let dir = tempfile::Builder::new()
        .prefix("logferry-fluent-bit-")
        .tempdir()
        .map_err(|e| format!("cannot read config {url}: no temporary directory: {e}"))?;
    let base = match url.key.rsplit_once('/') {
        Some((d, _)) => format!("{d}/"),
        None => String::new(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot read config {url}: cannot start the async runtime: {e}"))?;
    // One client (and one credential lookup) for every object of the tree.
    let s3 = rt.block_on(client());
    let mut todo = vec![(url.key[base.len()..].to_string(), None::<String>)];
    let mut seen = std::collections::BTreeSet::new();
    while let Some((rel, named_at)) = todo.pop() {
        if !seen.insert(rel.clone()) {
            continue;
        }
        if seen.len() > MAX_FLUENT_BIT_FILES {
            return Err(format!(
                "cannot read config {url}: it includes more than {MAX_FLUENT_BIT_FILES} files"
            ));
        }
        let obj = S3Url {
            bucket: url.bucket.clone(),
            key: format!("{base}{rel}"),
        };
        let text = rt.block_on(fetch_async(&s3, &obj)).map_err(|cause| match &named_at {
            Some(at) => format!("cannot read {obj} (named at {at}): {cause}"),
            None => format!("cannot read config {obj}: {cause}"),
        })?;
        let local = dir.path().join(&rel);
        if let Some(parent) = local.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("cannot read config {url}: {e}"))?;
        }
        std::fs::write(&local, &text).map_err(|e| format!("cannot read config {url}: {e}"))?;
        let rel_dir = match rel.rsplit_once('/') {
            Some((d, _)) => format!("{d}/"),
            None => String::new(),
        };
        for (line, arg) in named_files(&text) {
            let at = format!("{obj}:{line}");
            if arg.starts_with('/') {
                continue;
            }
            if arg.contains(['*', '?', '[']) {
                return Err(format!(
                    "{at}: `{arg}` is a glob, which cannot be read from S3: name each file"
                ));
            }
            let joined = normalize(&format!("{rel_dir}{arg}"))
                .ok_or_else(|| format!("{at}: `{arg}` leaves the config's folder in the bucket"))?;
            todo.push((joined, Some(at)));
        }
    }
    let main = dir.path().join(&url.key[base.len()..]);
    Ok(FluentBitTree {
        prefix: format!("s3://{}/{base}", url.bucket),
        dir,
        main,
    })
}

/// (line, argument) of each `@INCLUDE` and `Parsers_File` in a Fluent Bit
/// classic config.
fn named_files(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        let (k, v) = match l.split_once(char::is_whitespace) {
            Some((k, v)) => (k, v.trim()),
            None => continue,
        };
        if (k.eq_ignore_ascii_case("@include") || k.eq_ignore_ascii_case("parsers_file")) && !v.is_empty() {
            out.push((i + 1, v.to_string()));
        }
    }
    out
}

/// `a/./b/../c` as `a/c`; `None` when it climbs above the start.
fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn included_files_are_found_and_kept_in_the_folder() {
        let text = "[SERVICE]\n    Parsers_File parsers.conf\n    parsers_file /fluent-bit/parsers/parsers.conf\n@INCLUDE outputs/cw.conf\n  @include  ../x.conf\n[OUTPUT]\n    Name null\n";
        assert_eq!(
            named_files(text),
            [
                (2, "parsers.conf".to_string()),
                (3, "/fluent-bit/parsers/parsers.conf".to_string()),
                (4, "outputs/cw.conf".to_string()),
                (5, "../x.conf".to_string())
            ]
        );
        assert_eq!(normalize("a/./b/../c.conf").as_deref(), Some("a/c.conf"));
        assert_eq!(normalize("outputs/../p.conf").as_deref(), Some("p.conf"));
        assert_eq!(normalize("../x.conf"), None);
    }

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
