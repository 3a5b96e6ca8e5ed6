//! Transforms: steps between sources and sinks.

pub mod condition;
pub mod enrich;
pub mod filter;
pub mod joining;
pub mod multiline;
pub mod parse;
pub mod partial_message;
pub mod redact;
pub mod route;
pub mod throttle;

use crate::confdiag::{Ctx, Seg, deserialize_at};

/// The configuration of one transform, by `type`.
#[derive(Debug, Clone)]
pub enum TransformConfig {
    Enrich(Box<enrich::EnrichConfig>),
    Filter(filter::FilterConfig),
    Route(route::Route),
    Throttle(throttle::Throttle),
    Redact(Box<redact::RedactConfig>),
    Multiline(Box<multiline::MultilineConfig>),
    Parse(Box<parse::ParseConfig>),
    PartialMessage(partial_message::PartialMessageConfig),
}

impl TransformConfig {
    pub fn build(ctx: &mut Ctx<'_>, base: &[Seg], kind: &str, value: toml::Value) -> Option<Self> {
        match kind {
            "enrich" => {
                let c: enrich::EnrichConfig = deserialize_at(ctx, base, value)?;
                c.validate(ctx, base).then_some(TransformConfig::Enrich(Box::new(c)))
            }
            "filter" => {
                let c: filter::FilterConfig = deserialize_at(ctx, base, value)?;
                c.validate(ctx, base).then_some(TransformConfig::Filter(c))
            }
            "route" => {
                let c: route::RouteConfig = deserialize_at(ctx, base, value)?;
                c.build(ctx, base).map(TransformConfig::Route)
            }
            "throttle" => {
                let c: throttle::ThrottleConfig = deserialize_at(ctx, base, value)?;
                c.build(ctx, base).map(TransformConfig::Throttle)
            }
            "redact" => {
                let c: redact::RedactConfig = deserialize_at(ctx, base, value)?;
                c.validate(ctx, base).then_some(TransformConfig::Redact(Box::new(c)))
            }
            "multiline" => {
                let c: multiline::MultilineConfig = deserialize_at(ctx, base, value)?;
                c.validate(ctx, base).then_some(TransformConfig::Multiline(Box::new(c)))
            }
            "parse" => {
                let c: parse::ParseConfig = deserialize_at(ctx, base, value)?;
                c.validate(ctx, base).then_some(TransformConfig::Parse(Box::new(c)))
            }
            "partial_message" => {
                let c: partial_message::PartialMessageConfig = deserialize_at(ctx, base, value)?;
                c.validate(ctx, base).then_some(TransformConfig::PartialMessage(c))
            }
            other => {
                ctx.error(
                    base,
                    format!(
                        "unknown transform type `{other}`, expected one of: enrich, filter, multiline, parse, partial_message, redact, route, throttle"
                    ),
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
            TransformConfig::Filter(c) => c.describe(),
            TransformConfig::Route(c) => c.describe(),
            TransformConfig::Throttle(c) => c.describe(),
            TransformConfig::Redact(c) => c.describe(),
            TransformConfig::Multiline(c) => c.describe(),
            TransformConfig::Parse(c) => c.describe(),
            TransformConfig::PartialMessage(c) => c.describe(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            TransformConfig::Enrich(_) => "enrich",
            TransformConfig::Filter(_) => "filter",
            TransformConfig::Route(_) => "route",
            TransformConfig::Throttle(_) => "throttle",
            TransformConfig::Redact(_) => "redact",
            TransformConfig::Multiline(_) => "multiline",
            TransformConfig::Parse(_) => "parse",
            TransformConfig::PartialMessage(_) => "partial_message",
        }
    }

    /// The named outputs downstream components must pick from (`r.errors`);
    /// `None` for a transform with one unnamed output.
    pub fn named_outputs(&self) -> Option<Vec<&str>> {
        match self {
            TransformConfig::Route(r) => Some(r.outputs().collect()),
            _ => None,
        }
    }
}
