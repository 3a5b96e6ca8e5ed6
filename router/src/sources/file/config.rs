//! `[sources.<id>] type = "file"`.

use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use super::kube_api::KubernetesApiConfig;
use super::parse::{Parser, ParserKind, ParserOptions, TimeFormat};
use crate::confdiag::{Ctx, Seg};

/// Where to start in a file the router has never seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    #[default]
    Beginning,
    /// Only for files present at start-up; files that appear later are read
    /// from their start, or rotation would lose the first lines.
    End,
}

/// Where Kubernetes metadata of a file's records comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KubernetesMetadata {
    #[default]
    None,
    /// The kubelet's container log name,
    /// `<pod>_<namespace>_<container>-<id>.log` (see `kubernetes.rs`).
    Path,
    /// The path's fields plus the pod's from a watch of the Kubernetes API
    /// (see `kube_api/`), configured by `kubernetes_api`.
    Api,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// Glob patterns of files to tail (`/var/log/app/*.log`, `**` allowed).
    pub include: Vec<String>,
    /// Glob patterns matched against the full path (`*.gz` excludes any .gz).
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub read_from: ReadFrom,
    #[serde(default)]
    pub parser: ParserKind,
    /// Pattern with named captures, for `parser = "regex"`.
    pub regex: Option<String>,
    /// Field that carries the event time.
    pub time_key: Option<String>,
    /// `auto`, `rfc3339`, `epoch_s|ms|us|ns`, or a strftime pattern.
    #[serde(default = "default_time_format")]
    pub time_format: String,
    /// Longer lines are truncated to this size, marked and counted.
    #[serde(default = "default_max_line_size")]
    pub max_line_size: ByteSize,
    /// How long a last line without a newline is held before it is emitted.
    #[serde(default = "default_partial_line_timeout", with = "humantime_serde")]
    pub partial_line_timeout: Duration,
    /// Period of the directory rescan that backs up inotify (NFS/EFS do not
    /// deliver inotify events).
    #[serde(default = "default_glob_interval", with = "humantime_serde")]
    pub glob_interval: Duration,
    /// How long to keep reading a rotated or deleted file after its last data.
    #[serde(default = "default_rotate_wait", with = "humantime_serde")]
    pub rotate_wait: Duration,
    /// How often the checkpoint file is rewritten when acks moved it. What is
    /// delivered but not yet saved is delivered again after a kill -9, so
    /// this bounds those duplicates; each save is one small fsynced write.
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// `"path"`: a `kubernetes` object from each file's name (node daemon
    /// over `/var/log/containers/*.log`).
    #[serde(default)]
    pub kubernetes_metadata: KubernetesMetadata,
    /// The API server, token and node for `kubernetes_metadata = "api"`.
    pub kubernetes_api: Option<Box<KubernetesApiConfig>>,
}

fn default_time_format() -> String {
    "auto".to_string()
}

fn default_max_line_size() -> ByteSize {
    ByteSize::mib(1)
}

fn default_partial_line_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_glob_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_rotate_wait() -> Duration {
    Duration::from_secs(5)
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_millis(200)
}

impl FileSourceConfig {
    pub fn parser_options(&self) -> ParserOptions {
        ParserOptions {
            kind: self.parser,
            regex: self.regex.clone(),
            time_key: self.time_key.clone(),
            time_format: self.time_format.parse().unwrap_or(TimeFormat::Auto),
            max_line_size: Some(self.max_line_size.as_u64() as usize),
        }
    }

    /// Checks what serde cannot; returns false after reporting problems.
    pub fn validate(&self, ctx: &mut Ctx<'_>, base: &[Seg]) -> bool {
        let at = |k: &str| crate::confdiag::key(base, k);
        let mut ok = true;
        if self.include.is_empty() {
            ctx.error(&at("include"), "must list at least one glob pattern");
            ok = false;
        }
        for (i, pat) in self.include.iter().enumerate() {
            let mut p = at("include");
            p.push(Seg::Index(i));
            if pat.trim().is_empty() {
                ctx.error(
                    &p,
                    "is empty: it would match no file (give a path or a glob such as \"/var/log/app/*.log\")",
                );
                ok = false;
            } else if let Err(e) = glob::Pattern::new(pat) {
                ctx.error(&p, format!("invalid glob `{pat}`: {e}"));
                ok = false;
            }
        }
        for (i, pat) in self.exclude.iter().enumerate() {
            if let Err(e) = globset::Glob::new(pat) {
                let mut p = at("exclude");
                p.push(Seg::Index(i));
                ctx.error(&p, format!("invalid glob `{pat}`: {e}"));
                ok = false;
            }
        }
        if let Err(e) = self.time_format.parse::<TimeFormat>() {
            ctx.error(&at("time_format"), e.to_string());
            ok = false;
        }
        if self.regex.is_some() && self.parser != ParserKind::Regex {
            ctx.error(&at("regex"), "only used with parser = \"regex\"");
            ok = false;
        }
        if ok && let Err(e) = Parser::new(&self.parser_options()) {
            let key = if self.parser == ParserKind::Regex {
                "regex"
            } else {
                "parser"
            };
            ctx.error(&at(key), e.to_string());
            ok = false;
        }
        if self.max_line_size.as_u64() < 64 || self.max_line_size.as_u64() > 256 * 1024 * 1024 {
            ctx.error(&at("max_line_size"), "must be between 64B and 256MiB");
            ok = false;
        }
        if self.glob_interval < Duration::from_millis(10) {
            ctx.error(&at("glob_interval"), "must be at least 10ms");
            ok = false;
        }
        match (&self.kubernetes_api, self.kubernetes_metadata) {
            (Some(_), m) if m != KubernetesMetadata::Api => {
                ctx.error(&at("kubernetes_api"), "is only used with kubernetes_metadata = \"api\"");
                ok = false;
            }
            (Some(api), _) => ok &= api.validate(ctx, &at("kubernetes_api")),
            _ => {}
        }
        ok
    }

    pub fn exclude_set(&self) -> globset::GlobSet {
        let mut b = globset::GlobSetBuilder::new();
        for pat in &self.exclude {
            if let Ok(g) = globset::Glob::new(pat) {
                b.add(g);
            }
        }
        b.build().unwrap_or_else(|_| globset::GlobSet::empty())
    }
}
