//! Configuration: TOML text in, a checked pipeline description out.
//!
//! Loading goes text -> `toml::Table` (syntax errors carry a position) ->
//! `${VAR}` expansion of every string value -> one typed struct per section
//! and per component (chosen by its `type`) -> graph checks. Every error is a
//! [`ConfigError`] that names the key path and, through `toml_edit` spans,
//! the file position. Nothing here does I/O beyond reading the config file:
//! `logferry validate` must be safe to run anywhere.

mod expand;
pub mod fluentbit;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

pub use expand::{ExpandError, expand};
pub use fluentbit::{FluentBitConfig, load as load_fluent_bit};

use crate::buffer::BufferConfig;
use crate::confdiag::{Ctx, Seg, deserialize_at, locate, path, path_string};
use crate::lifecycle::LifecycleConfig;
use crate::sinks::SinkConfig;
use crate::sources::SourceConfig;
use crate::transforms::TransformConfig;

/// The configuration embedded in the binary, used when neither `--config`
/// nor `LOGFERRY_CONFIG` is given: the shipped local example.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../examples/local.toml");

/// A config problem, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `sinks.archive.flush_interval`; empty for whole-file problems.
    pub path: String,
    pub message: String,
    /// Config origin (a file path, `LOGFERRY_CONFIG` or `<embedded>`), line, column.
    pub location: Option<(String, usize, usize)>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((origin, line, col)) = &self.location {
            write!(f, "{origin}:{line}:{col}: ")?;
        }
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "`{}`: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// All problems found in one config (we report every one, not the first).
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalConfig {
    /// Checkpoints and (later) disk buffers.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Hard bound on record data buffered in memory across the pipeline.
    #[serde(default = "default_memory_limit")]
    pub memory_limit: bytesize::ByteSize,
    /// Where records a sink rejects for good are written (NDJSON, with the
    /// reason). Without it they are counted and dropped.
    #[serde(default)]
    pub dead_letter_dir: Option<PathBuf>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/logferry")
}

fn default_memory_limit() -> bytesize::ByteSize {
    bytesize::ByteSize::mib(64)
}

impl Default for GlobalConfig {
    fn default() -> Self {
        GlobalConfig {
            data_dir: default_data_dir(),
            memory_limit: default_memory_limit(),
            dead_letter_dir: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Listen address of `/healthz`, `/readyz`, `/metrics`. Loopback unless
    /// the operator says otherwise.
    #[serde(default = "default_api_address")]
    pub address: SocketAddr,
    /// Records waiting this long with no acknowledgement make `/readyz`
    /// fail ("0s": never).
    #[serde(default = "default_stall_timeout", with = "humantime_serde")]
    pub stall_timeout: std::time::Duration,
    /// ...and this long make `/healthz` fail, so the orchestrator restarts
    /// the router ("0s": never).
    #[serde(default = "default_wedged_timeout", with = "humantime_serde")]
    pub wedged_timeout: std::time::Duration,
    /// A TCP port that accepts a line and discards it, like Fluent Bit's
    /// `in_tcp` for the FireLens health check (`nc 127.0.0.1 8877`).
    #[serde(default)]
    pub health_tcp: Option<SocketAddr>,
}

fn default_stall_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(60)
}

fn default_wedged_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(600)
}

impl ApiConfig {
    /// The watchdog's thresholds; the defaults when there is no `[api]`.
    pub fn thresholds(api: Option<&ApiConfig>) -> crate::watchdog::Thresholds {
        crate::watchdog::Thresholds {
            stall: api.map_or_else(default_stall_timeout, |a| a.stall_timeout),
            wedged: api.map_or_else(default_wedged_timeout, |a| a.wedged_timeout),
        }
    }
}

fn default_api_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 2020))
}

/// A named component with its wiring.
#[derive(Debug, Clone)]
pub struct Component<T> {
    pub id: String,
    pub inputs: Vec<String>,
    /// `buffer` of a sink; always the default for sources and transforms.
    pub buffer: BufferConfig,
    pub inner: T,
}

/// A loaded, checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub origin: String,
    pub global: GlobalConfig,
    pub api: Option<ApiConfig>,
    pub lifecycle: LifecycleConfig,
    pub sources: Vec<Component<SourceConfig>>,
    pub transforms: Vec<Component<TransformConfig>>,
    pub sinks: Vec<Component<SinkConfig>>,
}

/// Loads a config from a file path.
pub fn load_file(path: &std::path::Path, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            message: format!("cannot read config file {origin}: {e}"),
            location: None,
        }])
    })?;
    load_str(&text, &origin, lookup)
}

/// Loads a config from TOML text; `origin` names it in messages.
pub fn load_str(text: &str, origin: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let mut ctx = Ctx {
        errors: Vec::new(),
        lookup,
    };
    let config = load_inner(text, origin, &mut ctx);
    if ctx.errors.is_empty()
        && let Some(c) = config
    {
        return Ok(c);
    }
    let errors = ctx
        .errors
        .into_iter()
        .map(|(p, message)| ConfigError {
            path: path_string(&p),
            location: locate::locate(text, &p).map(|(l, c)| (origin.to_string(), l, c)),
            message,
        })
        .collect();
    Err(ConfigErrors(errors))
}

fn load_inner(text: &str, origin: &str, ctx: &mut Ctx<'_>) -> Option<Config> {
    let mut root: toml::Table = match text.parse::<toml::Table>() {
        Ok(t) => t,
        Err(e) => {
            let message = e.message().to_string();
            let location = e.span().map(|s| locate::line_col(text, s.start));
            // Syntax errors have a position but no key path.
            ctx.errors.push((Vec::new(), format!("invalid TOML: {message}")));
            if let Some((l, c)) = location
                && let Some(last) = ctx.errors.last_mut()
            {
                last.1 = format!("invalid TOML at line {l}, column {c}: {message}");
            }
            return None;
        }
    };
    for (key, value) in root.iter_mut() {
        expand_value(ctx, &mut vec![Seg::Key(key.clone())], value);
    }

    const SECTIONS: &[&str] = &["global", "api", "lifecycle", "sources", "transforms", "sinks"];
    for key in root.keys() {
        if !SECTIONS.contains(&key.as_str()) {
            ctx.error(
                &path(&[key]),
                format!("unknown section `{key}`, expected one of {}", SECTIONS.join(", ")),
            );
        }
    }
    let global = match root.remove("global") {
        Some(v) => deserialize_at::<GlobalConfig>(ctx, &path(&["global"]), v),
        None => Some(GlobalConfig::default()),
    };
    let api = match root.remove("api") {
        Some(v) => deserialize_at::<ApiConfig>(ctx, &path(&["api"]), v).map(Some),
        None => Some(None),
    };
    let lifecycle = match root.remove("lifecycle") {
        Some(v) => deserialize_at::<LifecycleConfig>(ctx, &path(&["lifecycle"]), v)
            .filter(|l| l.validate(ctx, &path(&["lifecycle"]))),
        None => Some(LifecycleConfig::default()),
    };
    if let Some(g) = &global
        && g.memory_limit.as_u64() < 1024 * 1024
    {
        ctx.error(&path(&["global", "memory_limit"]), "must be at least 1MiB");
    }

    let sources = components(ctx, &mut root, "sources", false, SourceConfig::build);
    let transforms = components(ctx, &mut root, "transforms", true, TransformConfig::build);
    let sinks = components(ctx, &mut root, "sinks", true, SinkConfig::build);

    let config = Config {
        origin: origin.to_string(),
        global: global.unwrap_or_default(),
        api: api.flatten(),
        lifecycle: lifecycle.unwrap_or_default(),
        sources,
        transforms,
        sinks,
    };
    check_graph(ctx, &config);
    Some(config)
}

fn expand_value(ctx: &mut Ctx<'_>, at: &mut Vec<Seg>, value: &mut toml::Value) {
    match value {
        toml::Value::String(s) => match expand(s, ctx.lookup) {
            Ok(v) => *s = v,
            Err(e) => ctx.error(at, e.to_string()),
        },
        toml::Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                at.push(Seg::Index(i));
                expand_value(ctx, at, v);
                at.pop();
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                at.push(Seg::Key(k.clone()));
                expand_value(ctx, at, v);
                at.pop();
            }
        }
        _ => {}
    }
}

type Builder<T> = fn(&mut Ctx<'_>, &[Seg], &str, toml::Value) -> Option<T>;

fn components<T>(
    ctx: &mut Ctx<'_>,
    root: &mut toml::Table,
    section: &str,
    with_inputs: bool,
    build: Builder<T>,
) -> Vec<Component<T>> {
    let mut out = Vec::new();
    let Some(value) = root.remove(section) else { return out };
    let toml::Value::Table(table) = value else {
        ctx.error(&path(&[section]), "must be a table of named components");
        return out;
    };
    for (id, value) in table {
        let base = path(&[section, &id]);
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            ctx.error(&base, "component names may use only letters, digits, `_` and `-`");
        }
        let toml::Value::Table(mut t) = value else {
            ctx.error(&base, "must be a table");
            continue;
        };
        let kind = match t.remove("type") {
            Some(toml::Value::String(s)) => s,
            Some(_) => {
                ctx.error(&path(&[section, &id, "type"]), "must be a string");
                continue;
            }
            None => {
                ctx.error(&base, "missing `type`");
                continue;
            }
        };
        let inputs = if with_inputs {
            match t.remove("inputs") {
                Some(v) => deserialize_at::<Vec<String>>(ctx, &path(&[section, &id, "inputs"]), v).unwrap_or_default(),
                None => {
                    ctx.error(&base, "missing `inputs`");
                    Vec::new()
                }
            }
        } else {
            if t.contains_key("inputs") {
                ctx.error(&path(&[section, &id, "inputs"]), "sources take no `inputs`");
                t.remove("inputs");
            }
            Vec::new()
        };
        // Sinks only: elsewhere `buffer` stays and is an unknown field.
        let raw_buffer = if section == "sinks" { t.remove("buffer") } else { None };
        let buffer = match raw_buffer {
            Some(v) => BufferConfig::build(ctx, &path(&[section, &id, "buffer"]), v).unwrap_or_default(),
            None => BufferConfig::default(),
        };
        if let Some(inner) = build(ctx, &base, &kind, toml::Value::Table(t)) {
            out.push(Component {
                id,
                inputs,
                buffer,
                inner,
            });
        }
    }
    out
}

/// Every input exists, no cycles, every transform and sink is fed, names unique.
fn check_graph(ctx: &mut Ctx<'_>, c: &Config) {
    let mut kinds: BTreeMap<&str, &str> = BTreeMap::new();
    for (section, ids) in [
        ("sources", c.sources.iter().map(|x| x.id.as_str()).collect::<Vec<_>>()),
        ("transforms", c.transforms.iter().map(|x| x.id.as_str()).collect()),
        ("sinks", c.sinks.iter().map(|x| x.id.as_str()).collect()),
    ] {
        for id in ids {
            if let Some(prev) = kinds.insert(id, section) {
                ctx.error(
                    &path(&[section, id]),
                    format!("the name `{id}` is already used in `{prev}`"),
                );
            }
        }
    }
    // An empty section after a component failed to build is already reported.
    if c.sources.is_empty() && ctx.errors.is_empty() {
        ctx.error(&[], "no sources configured");
    }
    if c.sinks.is_empty() && ctx.errors.is_empty() {
        ctx.error(&[], "no sinks configured");
    }
    // Transforms with named outputs (routes), which must be read through one.
    let named: BTreeMap<&str, Vec<&str>> = c
        .transforms
        .iter()
        .filter_map(|t| Some((t.id.as_str(), t.inner.named_outputs()?)))
        .collect();
    let mut edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (section, comps) in [
        (
            "transforms",
            c.transforms
                .iter()
                .map(|x| (x.id.as_str(), &x.inputs))
                .collect::<Vec<_>>(),
        ),
        ("sinks", c.sinks.iter().map(|x| (x.id.as_str(), &x.inputs)).collect()),
    ] {
        for (id, inputs) in comps {
            if inputs.is_empty() {
                ctx.error(&path(&[section, id, "inputs"]), "must name at least one input");
            }
            for (i, input) in inputs.iter().enumerate() {
                let mut p = path(&[section, id, "inputs"]);
                p.push(Seg::Index(i));
                if let Some(message) = check_input(input, &kinds, &named) {
                    ctx.error(&p, message);
                }
            }
            edges.insert(id, inputs.iter().map(|i| input_component(i)).collect());
        }
    }
    // Cycles can only run through transforms.
    let mut done = BTreeSet::new();
    for t in &c.transforms {
        let mut stack = Vec::new();
        if let Some(cycle) = find_cycle(&t.id, &edges, &mut stack, &mut done) {
            ctx.error(
                &path(&["transforms", &t.id, "inputs"]),
                format!("cycle: {}", cycle.join(" -> ")),
            );
            break;
        }
    }
    // Transforms nobody reads from are a mistake, not a no-op.
    for t in &c.transforms {
        let used = c
            .transforms
            .iter()
            .map(|x| &x.inputs)
            .chain(c.sinks.iter().map(|x| &x.inputs))
            .any(|ins| ins.iter().any(|i| input_component(i) == t.id));
        if !used {
            ctx.error(
                &path(&["transforms", &t.id]),
                "no sink or transform takes this transform as an input",
            );
        }
    }
}

/// The component an input names: `r` for `r.errors`.
fn input_component(input: &str) -> &str {
    input.split_once('.').map_or(input, |(c, _)| c)
}

/// What is wrong with one entry of `inputs`, if anything.
fn check_input(input: &str, kinds: &BTreeMap<&str, &str>, named: &BTreeMap<&str, Vec<&str>>) -> Option<String> {
    let (component, output) = match input.split_once('.') {
        Some((c, o)) => (c, Some(o)),
        None => (input, None),
    };
    let Some(section) = kinds.get(component) else {
        return Some(match output {
            Some(_) => format!("unknown input `{input}`: there is no component `{component}`"),
            None => format!("unknown input `{input}`"),
        });
    };
    if *section == "sinks" {
        return Some(format!("`{component}` is a sink and cannot be an input"));
    }
    match (named.get(component), output) {
        (None, None) => None,
        (None, Some(o)) => Some(format!(
            "`{component}` is not a route and has no output `{o}`; use `{component}` as the input"
        )),
        (Some(outs), None) => Some(format!(
            "`{component}` is a route: name one of its outputs, e.g. `{component}.{}` (outputs: {})",
            outs.first().copied().unwrap_or_default(),
            outs.join(", ")
        )),
        (Some(outs), Some(o)) if !outs.contains(&o) => Some(format!(
            "route `{component}` has no output `{o}` (outputs: {})",
            outs.join(", ")
        )),
        (Some(_), Some(_)) => None,
    }
}

fn find_cycle<'a>(
    node: &'a str,
    edges: &BTreeMap<&'a str, Vec<&'a str>>,
    stack: &mut Vec<&'a str>,
    done: &mut BTreeSet<&'a str>,
) -> Option<Vec<String>> {
    if let Some(pos) = stack.iter().position(|n| *n == node) {
        let mut cycle: Vec<String> = stack[pos..].iter().map(|s| s.to_string()).collect();
        cycle.push(node.to_string());
        return Some(cycle);
    }
    if done.contains(node) {
        return None;
    }
    stack.push(node);
    if let Some(inputs) = edges.get(node) {
        for i in inputs.iter() {
            if let Some(c) = find_cycle(i, edges, stack, done) {
                return Some(c);
            }
        }
    }
    stack.pop();
    done.insert(node);
    None
}

impl Config {
    /// A human summary of the resolved pipeline (for `logferry validate`).
    pub fn describe(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "config: {}\ndata_dir: {}\nmemory_limit: {}\n",
            self.origin,
            self.global.data_dir.display(),
            self.global.memory_limit.display().iec()
        ));
        if let Some(dir) = &self.global.dead_letter_dir {
            s.push_str(&format!("dead_letter_dir: {}\n", dir.display()));
        }
        if let Some(api) = &self.api {
            s.push_str(&format!("api: http://{}\n", api.address));
            if let Some(tcp) = api.health_tcp {
                s.push_str(&format!("health_tcp: {tcp}\n"));
            }
        }
        s.push_str(&self.lifecycle.describe());
        s.push('\n');
        for c in &self.sources {
            s.push_str(&format!("source {} ({})\n", c.id, c.inner.describe()));
        }
        for c in &self.transforms {
            s.push_str(&format!(
                "transform {} ({}) <- {}\n",
                c.id,
                c.inner.describe(),
                c.inputs.join(", ")
            ));
        }
        for c in &self.sinks {
            let buffer = c.buffer.describe();
            s.push_str(&format!(
                "sink {} ({}) <- {}{}{}\n",
                c.id,
                c.inner.describe(),
                c.inputs.join(", "),
                if buffer.is_empty() { "" } else { "; " },
                buffer
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests;
