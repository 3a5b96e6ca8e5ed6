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

use crate::confdiag::{Ctx, Seg, checked, deserialize_at};

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
                checked(ctx, base, value, enrich::EnrichConfig::validate).map(|c| TransformConfig::Enrich(Box::new(c)))
            }
            "filter" => checked(ctx, base, value, filter::FilterConfig::validate).map(TransformConfig::Filter),
            "route" => {
                let c: route::RouteConfig = deserialize_at(ctx, base, value)?;
                c.build(ctx, base).map(TransformConfig::Route)
            }
            "throttle" => {
                let c: throttle::ThrottleConfig = deserialize_at(ctx, base, value)?;
                c.build(ctx, base).map(TransformConfig::Throttle)
            }
            "redact" => {
                checked(ctx, base, value, redact::RedactConfig::validate).map(|c| TransformConfig::Redact(Box::new(c)))
            }
            "multiline" => checked(ctx, base, value, multiline::MultilineConfig::validate)
                .map(|c| TransformConfig::Multiline(Box::new(c))),
            "parse" => {
                checked(ctx, base, value, parse::ParseConfig::validate).map(|c| TransformConfig::Parse(Box::new(c)))
            }
            "partial_message" => checked(ctx, base, value, partial_message::PartialMessageConfig::validate)
                .map(TransformConfig::PartialMessage),
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
