//! Sources: where records come from.

pub mod file;
pub mod forward;

use crate::confdiag::{Ctx, Seg, checked};

/// The configuration of one source, by `type`.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    File(file::FileSourceConfig),
    Forward(forward::ForwardSourceConfig),
}

impl SourceConfig {
    pub fn build(ctx: &mut Ctx<'_>, base: &[Seg], kind: &str, value: toml::Value) -> Option<Self> {
        match kind {
            "file" => checked(ctx, base, value, file::FileSourceConfig::validate).map(SourceConfig::File),
            "forward" => checked(ctx, base, value, forward::ForwardSourceConfig::validate).map(SourceConfig::Forward),
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
