//! Transforms: steps between sources and sinks.

pub mod enrich;

use crate::config::{Ctx, Seg, deserialize_at};

/// The configuration of one transform, by `type`.
#[derive(Debug, Clone)]
pub enum TransformConfig {
    Enrich(enrich::EnrichConfig),
}

impl TransformConfig {
    pub fn build(ctx: &mut Ctx<'_>, base: &[Seg], kind: &str, value: toml::Value) -> Option<Self> {
        match kind {
            "enrich" => {
                let c: enrich::EnrichConfig = deserialize_at(ctx, base, value)?;
                c.validate(ctx, base).then_some(TransformConfig::Enrich(c))
            }
            other => {
                ctx.error(
                    base,
                    format!("unknown transform type `{other}`, expected one of: enrich"),
                );
                None
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            TransformConfig::Enrich(c) => format!(
                "enrich: ecs {:?}, ec2 {:?}, kubernetes {:?}, {} static field(s)",
                c.ecs,
                c.ec2,
                c.kubernetes,
                c.fields.len()
            ),
        }
    }
}
