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

use crate::config::{Ctx, Seg, deserialize_at};

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
        let at = |k: &str| {
            let mut p = base.to_vec();
            p.push(Seg::Key(k.into()));
            p
        };
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

#[cfg(test)]
mod tests {
    use crate::config::load_str;

    use super::*;

    fn config(buffer: &str) -> Result<crate::config::Config, Vec<String>> {
        let text = format!(
            r#"
[sources.app]
type = "file"
include = ["/x/*.log"]

[sinks.out]
type = "blackhole"
inputs = ["app"]
{buffer}
"#
        );
        load_str(&text, "t.toml", &|_| None).map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn default_is_memory_and_disk_parses() {
        assert_eq!(config("").unwrap().sinks[0].buffer, BufferConfig::Memory);
        assert_eq!(
            config(r#"buffer = { type = "memory" }"#).unwrap().sinks[0].buffer,
            BufferConfig::Memory
        );
        let c = config(r#"buffer = { type = "disk", max_size = "1GiB" }"#).unwrap();
        assert_eq!(
            c.sinks[0].buffer,
            BufferConfig::Disk(DiskBufferConfig {
                max_size: ByteSize::gib(1),
                when_full: WhenFull::Block
            })
        );
        assert!(
            c.describe()
                .contains("sink out (blackhole) <- app; disk buffer: max_size 1.0 GiB, when_full block"),
            "{}",
            c.describe()
        );
        let c =
            config("[sinks.out.buffer]\ntype = \"disk\"\nmax_size = \"8MiB\"\nwhen_full = \"drop_newest\"").unwrap();
        assert!(matches!(
            c.sinks[0].buffer,
            BufferConfig::Disk(DiskBufferConfig {
                when_full: WhenFull::DropNewest,
                ..
            })
        ));
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let e = config(r#"buffer = { type = "disk", max_size = "1GiB", colour = 1 }"#).unwrap_err();
        assert!(
            e[0].starts_with("t.toml:9:") && e[0].contains("`sinks.out.buffer.colour`: unknown field `colour`"),
            "{e:?}"
        );
        let e = config("[sinks.out.buffer]\ntype = \"disk\"\nmax_size = \"100KiB\"").unwrap_err();
        assert!(
            e[0].starts_with("t.toml:11:1: `sinks.out.buffer.max_size`: must be at least 1MiB"),
            "{e:?}"
        );
        let e = config("[sinks.out.buffer]\ntype = \"disk\"\nmax_size = \"1GiB\"\nwhen_full = \"panic\"").unwrap_err();
        assert!(
            e[0].starts_with("t.toml:12:") && e[0].contains("`sinks.out.buffer.when_full`"),
            "{e:?}"
        );
        let e = config(r#"buffer = { type = "disk" }"#).unwrap_err();
        assert!(
            e[0].contains("`sinks.out.buffer`: a disk buffer needs `max_size`"),
            "{e:?}"
        );
        let e = config(r#"buffer = { max_size = "1GiB" }"#).unwrap_err();
        assert!(
            e[0].contains("`sinks.out.buffer.max_size`: only a `type = \"disk\"`"),
            "{e:?}"
        );
        let e = config(r#"buffer = { type = "tape" }"#).unwrap_err();
        assert!(e[0].contains("`sinks.out.buffer.type`"), "{e:?}");
    }

    #[test]
    fn sources_do_not_take_a_buffer() {
        let text = r#"
[sources.app]
type = "file"
include = ["/x/*.log"]
buffer = { type = "disk", max_size = "1GiB" }

[sinks.out]
type = "blackhole"
inputs = ["app"]
"#;
        let e = load_str(text, "t.toml", &|_| None).unwrap_err();
        assert!(e.0[0].to_string().contains("unknown field `buffer`"), "{e}");
    }
}
