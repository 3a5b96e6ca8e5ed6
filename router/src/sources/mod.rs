//! Sources: where records come from.

pub mod file;
pub mod forward;

use crate::confdiag::{Ctx, Seg, deserialize_at};

/// The configuration of one source, by `type`.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    File(file::FileSourceConfig),
    Forward(forward::ForwardSourceConfig),
}

impl SourceConfig {
    pub fn build(ctx: &mut Ctx<'_>, base: &[Seg], kind: &str, value: toml::Value) -> Option<Self> {
        match kind {
            "file" => {
                let c: file::FileSourceConfig = deserialize_at(ctx, base, value)?;
                c.validate(ctx, base).then_some(SourceConfig::File(c))
            }
            "forward" => {
                let c: forward::ForwardSourceConfig = deserialize_at(ctx, base, value)?;
                c.validate(ctx, base).then_some(SourceConfig::Forward(c))
            }
            other => {
                ctx.error(
                    base,
                    format!("unknown source type `{other}`, expected one of: file, forward"),
                );
                None
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            SourceConfig::File(c) => format!(
                "file: include {:?}, parser {:?}, read_from {:?}",
                c.include, c.parser, c.read_from
            ),
            SourceConfig::Forward(c) => c.describe(),
        }
    }
}
