//! What sits between a sink's inbox and the sink: nothing (`memory`, the
//! default: the bounded channel and the `memory_limit` semaphore are the
//! buffer), or a disk buffer (`disk`, see [`disk`]).
//!
//! The option is generic: `config/mod.rs` takes `buffer` out of every sink's
//! table before the sink's own config is deserialized, so each sink gets it
//! without knowing about it.

pub mod disk;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::confdiag::{Ctx, Seg, deserialize_at};

/// Smallest `max_size` of a disk buffer: below this a single batch would not
/// fit and the buffer would only add latency.
pub const MIN_DISK_SIZE: u64 = 1024 * 1024;

/// The `buffer` of a sink, resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BufferConfig {
    /// Today's behaviour: batches wait in memory, under `memory_limit`.
    #[default]
    Memory,
    Disk(DiskBufferConfig),
}

/// `buffer = { type = "disk", max_size = "1GiB", when_full = "block" }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskBufferConfig {
    /// Bound on bytes on disk the sink has not acknowledged yet.
    pub max_size: ByteSize,
    pub when_full: WhenFull,
}

/// What a full disk buffer does with new batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Stop taking input until the sink catches up: the sources stop reading.
    #[default]
    Block,
    /// Drop the new batch, count its records (`reason="buffer_full"`).
    DropNewest,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    #[default]
    Memory,
    Disk,
}

/// The table as written. A plain struct rather than an enum tagged by
/// `type`: serde's tagged enums lose the key path of a bad field, and errors
/// must name it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuffer {
    #[serde(rename = "type", default)]
    kind: Kind,
    max_size: Option<ByteSize>,
    when_full: Option<WhenFull>,
}

impl BufferConfig {
    /// Parses and checks the `buffer` value of a sink at `base` (the path of
    /// the `buffer` key). `None` when an error was reported.
    pub fn build(ctx: &mut Ctx<'_>, base: &[Seg], value: toml::Value) -> Option<Self> {
        let raw: RawBuffer = deserialize_at(ctx, base, value)?;
        let at = |k: &str| crate::confdiag::key(base, k);
        match raw.kind {
            Kind::Memory => {
                for (key, set) in [
                    ("max_size", raw.max_size.is_some()),
                    ("when_full", raw.when_full.is_some()),
                ] {
                    if set {
                        ctx.error(&at(key), "only a `type = \"disk\"` buffer takes this option");
                    }
                }
                (raw.max_size.is_none() && raw.when_full.is_none()).then_some(BufferConfig::Memory)
            }
            Kind::Disk => {
                let Some(max_size) = raw.max_size else {
                    ctx.error(base, "a disk buffer needs `max_size` (e.g. \"1GiB\")");
                    return None;
                };
                if max_size.as_u64() < MIN_DISK_SIZE {
                    ctx.error(&at("max_size"), "must be at least 1MiB");
                    return None;
                }
                Some(BufferConfig::Disk(DiskBufferConfig {
                    max_size,
                    when_full: raw.when_full.unwrap_or_default(),
                }))
            }
        }
    }

    /// For `logferry validate`; empty for the default.
    pub fn describe(&self) -> String {
        match self {
            BufferConfig::Memory => String::new(),
            BufferConfig::Disk(d) => format!(
                "disk buffer: max_size {}, when_full {}",
                d.max_size.display().iec(),
                match d.when_full {
                    WhenFull::Block => "block",
                    WhenFull::DropNewest => "drop_newest",
                }
            ),
        }
    }
}
