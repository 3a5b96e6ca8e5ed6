//! `--fluent-bit-config`: a FireLens router's Fluent Bit file, read as a
//! Logferry pipeline.
//!
//! Why a translation to the TOML document and not a second config model: the
//! file ECS generates (and the user file it `@INCLUDE`s) then goes through
//! `load_str` like any other config, so every check, default and the
//! `logferry validate` listing apply unchanged, and nothing downstream knows
//! the pipeline came from Fluent Bit. Errors the loader finds are moved back
//! onto the Fluent Bit line that produced the key (`origins`).
//!
//! Why the pipeline is one chain per `[OUTPUT]`: Fluent Bit routes by tag
//! (`Match`), and a `[FILTER]` applies only to the tags it matches. A chain
//! holds the filters, in file order, that apply to every tag its output
//! matches, then a `filter` transform on `tag` for the output's `Match`.
//! Chains share their common prefix, so a `record_modifier` on `*` runs once.
//! A filter that would apply to only part of an output's tags cannot be
//! expressed by keep/drop conditions and is an error.
//!
//! Only what a FireLens router needs is supported (forward inputs,
//! `record_modifier`, `grep`, the CloudWatch Logs, Firehose, S3, `null` and
//! `stdout` outputs); any other plugin, and any key that would change
//! behaviour without a Logferry equivalent, is an error naming the file and
//! line. Keys without effect here are accepted and listed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Config, ConfigError, ConfigErrors, expand};

/// A Fluent Bit file loaded as a Logferry config.
#[derive(Debug)]
pub struct FluentBitConfig {
    pub config: Config,
    /// What was accepted without effect, or dropped on purpose; one line each.
    pub notes: Vec<String>,
    /// The equivalent Logferry TOML document.
    pub toml: String,
}

/// Loads a Fluent Bit classic-format file (with its `@INCLUDE`s) as a
/// Logferry config. `${VAR}` takes `@SET` variables first, then `lookup`.
pub fn load(path: &Path, lookup: &dyn Fn(&str) -> Option<String>) -> Result<FluentBitConfig, ConfigErrors> {
    let mut parser = Parser {
        vars: BTreeMap::new(),
        lookup,
        sections: Vec::new(),
        errors: Vec::new(),
        stack: Vec::new(),
    };
    parser.file(path, None);
    if !parser.errors.is_empty() {
        return Err(ConfigErrors(parser.errors));
    }
    let tr = translate(&parser.sections)?;
    let origin = path.display().to_string();
    // Every `$` in the document is escaped: variables were expanded above.
    match super::load_str(&tr.toml, &origin, &|_| None) {
        Ok(config) => Ok(FluentBitConfig {
            config,
            notes: tr.notes,
            toml: tr.toml,
        }),
        Err(errors) => Err(tr.relocate(errors)),
    }
}

// ---------------------------------------------------------------- parsing

/// Where a line came from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pos {
    file: Arc<str>,
    line: usize,
    col: usize,
}

impl Pos {
    fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: String::new(),
            message: message.into(),
            location: Some((self.file.to_string(), self.line, self.col)),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    /// As written (`Log_Group_Name`); compare with `eq_ignore_ascii_case`.
    key: String,
    value: String,
    pos: Pos,
}

#[derive(Debug, Clone)]
struct Section {
    /// Upper case: `SERVICE`, `INPUT`, `FILTER`, `OUTPUT`.
    kind: String,
    pos: Pos,
    entries: Vec<Entry>,
}

impl Section {
    fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| e.key.eq_ignore_ascii_case(key))
    }

    fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries.iter().filter(move |e| e.key.eq_ignore_ascii_case(key))
    }

    fn name(&self) -> String {
        self.get("name")
            .map(|e| e.value.to_ascii_lowercase())
            .unwrap_or_default()
    }
}

/// Deepest `@INCLUDE` nesting; deeper is taken for a loop.
const MAX_INCLUDE_DEPTH: usize = 16;

struct Parser<'a> {
    /// `@SET` variables, in force from their line on.
    vars: BTreeMap<String, String>,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    sections: Vec<Section>,
    errors: Vec<ConfigError>,
    /// Files being read, outermost first (include loops).
    stack: Vec<PathBuf>,
}

impl Parser<'_> {
    fn expand(&self, value: &str, pos: &Pos) -> Result<String, ConfigError> {
        let lookup = |name: &str| self.vars.get(name).cloned().or_else(|| (self.lookup)(name));
        expand(value, &lookup).map_err(|e| pos.error(e.to_string()))
    }

    fn file(&mut self, path: &Path, included_at: Option<&Pos>) {
        let shown: Arc<str> = Arc::from(path.display().to_string());
        if self.stack.len() >= MAX_INCLUDE_DEPTH || self.stack.iter().any(|p| p == path) {
            let chain: Vec<String> = self.stack.iter().map(|p| p.display().to_string()).collect();
            let err = format!("@INCLUDE loop: {} -> {shown}", chain.join(" -> "));
            self.errors.push(match included_at {
                Some(pos) => pos.error(err),
                None => ConfigError {
                    path: String::new(),
                    message: err,
                    location: None,
                },
            });
            return;
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                let message = format!("cannot read Fluent Bit config {shown}: {e}");
                self.errors.push(match included_at {
                    Some(pos) => pos.error(message),
                    None => ConfigError {
                        path: String::new(),
                        message,
                        location: None,
                    },
                });
                return;
            }
        };
        self.stack.push(path.to_path_buf());
        self.text(&text, &shown, path.parent().unwrap_or(Path::new(".")));
        self.stack.pop();
    }

    fn text(&mut self, text: &str, file: &Arc<str>, dir: &Path) {
        // Index into `sections` of the section key lines go to.
        let mut current: Option<usize> = None;
        for (i, raw) in text.lines().enumerate() {
            let indent = raw.len() - raw.trim_start().len();
            let line = raw.trim();
            let pos = Pos {
                file: file.clone(),
                line: i + 1,
                col: indent + 1,
            };
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                let Some(name) = rest.strip_suffix(']') else {
                    self.errors.push(pos.error(format!("unclosed section header `{line}`")));
                    current = None;
                    continue;
                };
                let kind = name.trim().to_ascii_uppercase();
                if !["SERVICE", "INPUT", "FILTER", "OUTPUT"].contains(&kind.as_str()) {
                    self.errors.push(pos.error(format!(
                        "section [{name}] is not supported here (SERVICE, INPUT, FILTER, OUTPUT; parsers belong in a Parsers_File)"
                    )));
                    current = None;
                    continue;
                }
                self.sections.push(Section {
                    kind,
                    pos,
                    entries: Vec::new(),
                });
                current = Some(self.sections.len() - 1);
                continue;
            }
            if let Some(directive) = line.strip_prefix('@') {
                let (word, arg) = split_key(directive);
                current = None;
                if word.eq_ignore_ascii_case("INCLUDE") {
                    self.include(arg, &pos, dir);
                } else if word.eq_ignore_ascii_case("SET") {
                    match arg.split_once('=') {
                        Some((k, v)) if !k.trim().is_empty() => match self.expand(v.trim(), &pos) {
                            Ok(v) => {
                                self.vars.insert(k.trim().to_string(), v);
                            }
                            Err(e) => self.errors.push(e),
                        },
                        _ => self.errors.push(pos.error("@SET needs `name=value`")),
                    }
                } else {
                    self.errors.push(pos.error(format!(
                        "unknown directive `@{word}` (Logferry reads @INCLUDE and @SET)"
                    )));
                }
                continue;
            }
            let Some(idx) = current else {
                self.errors.push(pos.error(format!(
                    "`{line}` is outside a section; start one with [INPUT], [OUTPUT], ..."
                )));
                continue;
            };
            let (key, value) = split_key(line);
            if value.is_empty() {
                self.errors.push(pos.error(format!("`{key}` has no value")));
                continue;
            }
            match self.expand(value, &pos) {
                Ok(value) => self.sections[idx].entries.push(Entry {
                    key: key.to_string(),
                    value,
                    pos,
                }),
                Err(e) => self.errors.push(e),
            }
        }
    }

    fn include(&mut self, arg: &str, pos: &Pos, dir: &Path) {
        let arg = match self.expand(arg, pos) {
            Ok(a) => a,
            Err(e) => return self.errors.push(e),
        };
        if arg.is_empty() {
            return self.errors.push(pos.error("@INCLUDE needs a path"));
        }
        let target = dir.join(&arg);
        if !arg.contains(['*', '?', '[']) {
            return self.file(&target, Some(pos));
        }
        let pattern = target.display().to_string();
        let paths = match glob::glob(&pattern) {
            Ok(paths) => paths,
            Err(e) => return self.errors.push(pos.error(format!("@INCLUDE pattern `{arg}`: {e}"))),
        };
        // glob yields paths in alphabetical order, as Fluent Bit includes them.
        let mut found: Vec<PathBuf> = Vec::new();
        for p in paths {
            match p {
                Ok(p) if p.is_file() => found.push(p),
                Ok(_) => {}
                Err(e) => return self.errors.push(pos.error(format!("@INCLUDE `{arg}`: {e}"))),
            }
        }
        for p in found {
            self.file(&p, Some(pos));
        }
    }
}

/// `Key   value with spaces` -> (`Key`, `value with spaces`).
fn split_key(line: &str) -> (&str, &str) {
    match line.find(char::is_whitespace) {
        Some(i) => (&line[..i], line[i..].trim()),
        None => (line, ""),
    }
}

// ------------------------------------------------------------ translation

/// The TOML document, and where each of its keys came from.
#[derive(Debug)]
struct Translation {
    toml: String,
    /// Dotted key path in the TOML (`sinks.output1_s3.bucket`) -> Fluent Bit position.
    origins: Vec<(String, Pos)>,
    notes: Vec<String>,
}

impl Translation {
    /// Points each error at the Fluent Bit line its key came from.
    fn relocate(&self, errors: ConfigErrors) -> ConfigErrors {
        // Every generated transform feeds a sink or transform, so "unused"
        // only follows from a component that failed and is reported already.
        // Likewise every input named exists unless its component failed.
        let unused = |e: &ConfigError| {
            e.message.starts_with("no sink or transform takes") || e.message.starts_with("unknown input `")
        };
        let keep_unused = errors.0.iter().all(unused);
        let errors = errors
            .0
            .into_iter()
            .filter(|e| keep_unused || !unused(e))
            .map(|mut e| {
                let best = self
                    .origins
                    .iter()
                    .filter(|(p, _)| {
                        e.path == *p || e.path.starts_with(&format!("{p}.")) || e.path.starts_with(&format!("{p}["))
                    })
                    .max_by_key(|(p, _)| p.len());
                if let Some((_, pos)) = best {
                    e.location = Some((pos.file.to_string(), pos.line, pos.col));
                }
                e
            })
            .collect();
        ConfigErrors(errors)
    }
}

/// One transform of a chain: its table and where it came from.
#[derive(Debug, Clone)]
struct Step {
    name: String,
    table: toml::Table,
    /// (key under the transform, position); `""` for the whole transform.
    origins: Vec<(String, Pos)>,
}

/// A Fluent Bit tag pattern: `Match` (glob, `*` only) or `Match_Regex`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TagMatch {
    Glob(String),
    Regex(String),
}

impl TagMatch {
    fn of(section: &Section) -> Option<(TagMatch, Pos)> {
        if let Some(e) = section.get("match_regex") {
            return Some((TagMatch::Regex(e.value.clone()), e.pos.clone()));
        }
        section
            .get("match")
            .map(|e| (TagMatch::Glob(e.value.clone()), e.pos.clone()))
    }

    fn is_all(&self) -> bool {
        matches!(self, TagMatch::Glob(g) if g.chars().all(|c| c == '*'))
    }

    fn regex(&self) -> String {
        match self {
            TagMatch::Regex(r) => r.clone(),
            TagMatch::Glob(g) => {
                let parts: Vec<String> = g.split('*').map(regex::escape).collect();
                format!("^{}$", parts.join(".*"))
            }
        }
    }

    /// Whether every tag `self` matches is matched by `other` (`Some(true)`),
    /// none is (`Some(false)`), or some are (`None`).
    fn within(&self, other: &TagMatch) -> Option<bool> {
        if other.is_all() || self == other {
            return Some(true);
        }
        let (TagMatch::Glob(a), TagMatch::Glob(b)) = (self, other) else {
            return None;
        };
        let literal = |g: &str| !g.contains('*');
        let matches = |glob: &TagMatch, tag: &str| regex::Regex::new(&glob.regex()).is_ok_and(|r| r.is_match(tag));
        if literal(a) {
            return Some(matches(other, a));
        }
        // `prefix*` patterns, the shape FireLens writes.
        let prefix = |g: &str| g.strip_suffix('*').filter(|p| !p.contains('*')).map(str::to_string);
        match (prefix(a), prefix(b)) {
            (Some(pa), Some(pb)) if pa.starts_with(&pb) => Some(true),
            (Some(pa), Some(pb)) if !pb.starts_with(&pa) => Some(false),
            (Some(pa), None) if literal(b) && !b.starts_with(&pa) => Some(false),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            TagMatch::Glob(g) => format!("Match {g}"),
            TagMatch::Regex(r) => format!("Match_Regex {r}"),
        }
    }
}

/// A `[FILTER]`: what it matches and the transforms it becomes.
struct Filter {
    matches: TagMatch,
    pos: Pos,
    steps: Vec<Step>,
}

struct Output {
    name: String,
    matches: TagMatch,
    match_pos: Pos,
    table: toml::Table,
    origins: Vec<(String, Pos)>,
}

/// Keys any plugin section may carry that change nothing here.
const HARMLESS_ANY: &[&str] = &[
    "alias",
    "log_level",
    "retry_limit",
    "workers",
    "threaded",
    "storage.type",
    "storage.pause_on_chunks_overlimit",
    "storage.total_limit_size",
    "auto_retry_requests",
    "extra_user_agent",
    "tls",
    "tls.verify",
    "net.keepalive",
    "net.keepalive_idle_timeout",
    "net.connect_timeout",
];

const HARMLESS_SERVICE: &[&str] = &[
    "daemon",
    "log_level",
    "parsers_file",
    "log_file",
    "health_check",
    "hc_errors_count",
    "hc_retry_failure_count",
    "hc_period",
    "storage.sync",
    "storage.checksum",
    "storage.metrics",
    "storage.backlog.mem_limit",
    "storage.max_chunks_up",
    "storage.delete_irrecoverable_chunks",
    "http_port",
    "http_listen",
    "http_server",
    "flush",
    "grace",
    "storage.path",
];

const INPUTS: &str = "forward (and the FireLens health check `tcp` input tagged firelens-healthcheck)";
const FILTERS: &str = "record_modifier, grep";
const OUTPUTS: &str = "cloudwatch_logs (cloudwatch), kinesis_firehose (firehose), kinesis_streams, s3, null, stdout";

#[derive(Default)]
struct Tr {
    errors: Vec<ConfigError>,
    notes: Vec<String>,
    origins: Vec<(String, Pos)>,
    root: toml::Table,
}

/// A TOML string; `$` doubled because the loader expands `${...}` again.
fn s(v: &str) -> toml::Value {
    toml::Value::String(v.replace('$', "$$"))
}

fn is_true(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// Fluent Bit sizes: `5M`, `50MB`, `1.5G`, `4096` (K = 1000, as Fluent Bit counts).
fn fb_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "K" | "KB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        _ => return None,
    };
    let bytes = n * mult;
    (bytes.is_finite() && bytes >= 0.0).then_some(bytes as u64)
}

/// Fluent Bit times: `10m`, `1h`, `30s`, `5` (seconds), `0.5`.
fn fb_seconds(v: &str) -> Option<f64> {
    let v = v.trim();
    let (num, mult) = match v.char_indices().last() {
        Some((i, c @ ('s' | 'S' | 'm' | 'M' | 'h' | 'H' | 'd' | 'D'))) => (
            &v[..i],
            match c.to_ascii_lowercase() {
                's' => 1.0,
                'm' => 60.0,
                'h' => 3600.0,
                _ => 86400.0,
            },
        ),
        _ => (v, 1.0),
    };
    let n: f64 = num.trim().parse().ok()?;
    let secs = n * mult;
    (secs.is_finite() && secs >= 0.0).then_some(secs)
}

fn duration(secs: f64) -> String {
    format!("{}ms", (secs * 1000.0).round() as u64)
}

/// An endpoint as our sinks take it: with a scheme.
fn endpoint(v: &str) -> String {
    if v.contains("://") {
        v.to_string()
    } else {
        format!("https://{v}")
    }
}

/// `$kubernetes['labels']['app']` (record accessor) or `log` -> a dotted path.
fn record_key(v: &str) -> String {
    let Some(rest) = v.strip_prefix('$') else {
        return v.to_string();
    };
    rest.replace("']['", ".").replace("['", ".").replace("']", "")
}

/// CloudWatch's `$(tag)`, `$(ecs_task_id)`, `$(kubernetes['pod_name'])` -> `{...}`.
fn cw_template(v: &str, pos: &Pos) -> Result<String, ConfigError> {
    if v.contains(['{', '}']) {
        return Err(pos.error(format!(
            "`{v}`: `{{` and `}}` mark fields in Logferry templates and cannot be used literally"
        )));
    }
    let mut out = String::new();
    let mut rest = v;
    while let Some(i) = rest.find("$(") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find(')') else {
            return Err(pos.error(format!("unclosed `$(` in `{v}`")));
        };
        let name = &after[..end];
        if name.starts_with("tag[") {
            return Err(pos.error(format!("`$({name})`: parts of the tag are not supported; use `$(tag)`")));
        }
        out.push('{');
        out.push_str(&record_key(&format!("${name}")));
        out.push('}');
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `s3_key_format` -> our `key_prefix`: `$TAG` -> `{tag}`, strftime kept, the
/// part after the last `/` (the object name) is Logferry's own.
fn s3_key_prefix(v: &str, pos: &Pos) -> Result<String, ConfigError> {
    if v.contains(['{', '}']) {
        return Err(pos.error(format!(
            "`{v}`: `{{` and `}}` mark fields in Logferry key templates and cannot be used literally"
        )));
    }
    let trimmed = v.trim_start_matches('/');
    let prefix = match trimmed.rfind('/') {
        Some(i) => &trimmed[..=i],
        None => "",
    };
    if prefix.contains("$TAG[") {
        return Err(pos.error(format!(
            "`{v}`: `$TAG[n]` (parts of the tag) is not supported; use `$TAG`"
        )));
    }
    for unsupported in ["$UUID", "$INDEX"] {
        if prefix.contains(unsupported) {
            return Err(pos.error(format!(
                "`{v}`: `{unsupported}` is supported only in the object name (after the last `/`)"
            )));
        }
    }
    Ok(prefix.replace("$TAG", "{tag}"))
}

impl Tr {
    fn origin(&mut self, path: &str, pos: &Pos) {
        self.origins.push((path.to_string(), pos.clone()));
    }

    /// Reports every key of `section` not in `known` (mapped) or harmless.
    fn check_keys(&mut self, section: &Section, what: &str, known: &[&str], harmless: &[&str]) {
        for e in &section.entries {
            let k = e.key.to_ascii_lowercase();
            if known.contains(&k.as_str()) || k == "name" {
                continue;
            }
            if harmless.contains(&k.as_str()) || HARMLESS_ANY.contains(&k.as_str()) {
                self.notes.push(format!(
                    "{}:{}: `{}` of {what} accepted, no effect in Logferry",
                    e.pos.file, e.pos.line, e.key
                ));
                continue;
            }
            let mut supported: Vec<&str> = known.to_vec();
            supported.sort_unstable();
            self.errors.push(e.pos.error(format!(
                "`{}` of {what} is not supported by Logferry (supported: {})",
                e.key,
                supported.join(", ")
            )));
        }
    }

    fn service(&mut self, sections: &[&Section], flush: &mut Option<f64>) {
        let mut global = toml::Table::new();
        let mut lifecycle = toml::Table::new();
        let mut api_on = None;
        let (mut listen, mut port) = ("0.0.0.0".to_string(), "2020".to_string());
        let mut api_pos = None;
        for sec in sections {
            for e in &sec.entries {
                let k = e.key.to_ascii_lowercase();
                match k.as_str() {
                    "flush" => match fb_seconds(&e.value) {
                        Some(v) if v > 0.0 => *flush = Some(v),
                        _ => self
                            .errors
                            .push(e.pos.error(format!("Flush `{}` is not a time", e.value))),
                    },
                    "grace" => match fb_seconds(&e.value) {
                        Some(v) => {
                            lifecycle.insert("drain_timeout".into(), s(&duration(v)));
                            self.origin("lifecycle.drain_timeout", &e.pos);
                        }
                        None => self
                            .errors
                            .push(e.pos.error(format!("Grace `{}` is not a time", e.value))),
                    },
                    "storage.path" => {
                        global.insert("data_dir".into(), s(&e.value));
                        self.origin("global.data_dir", &e.pos);
                    }
                    "http_server" => match is_true(&e.value) {
                        Some(on) => {
                            api_on = Some(on);
                            api_pos = Some(e.pos.clone());
                        }
                        None => self
                            .errors
                            .push(e.pos.error(format!("HTTP_Server `{}` is not on/off", e.value))),
                    },
                    "http_listen" => listen = e.value.clone(),
                    "http_port" => port = e.value.clone(),
                    "log_level" => self.notes.push(format!(
                        "{}:{}: Log_Level: Logferry's level comes from LOGFERRY_LOG",
                        e.pos.file, e.pos.line
                    )),
                    _ => {}
                }
            }
            self.check_keys(sec, "[SERVICE]", HARMLESS_SERVICE, &["plugins_file"]);
        }
        if api_on == Some(true)
            && let Some(pos) = api_pos
        {
            let host = if listen.contains(':') {
                format!("[{listen}]")
            } else {
                listen
            };
            let mut api = toml::Table::new();
            api.insert("address".into(), s(&format!("{host}:{port}")));
            self.root.insert("api".into(), toml::Value::Table(api));
            self.origin("api", &pos);
        }
        if !global.is_empty() {
            self.root.insert("global".into(), toml::Value::Table(global));
        }
        if !lifecycle.is_empty() {
            self.root.insert("lifecycle".into(), toml::Value::Table(lifecycle));
        }
    }

    /// An `[INPUT]`: a source id and table, or `None` when dropped or wrong.
    fn input(&mut self, n: usize, sec: &Section, mem: &mut Option<(u64, Pos)>) -> Option<(String, toml::Table)> {
        let name = sec.name();
        let what = format!("[INPUT] {name}");
        if let Some(e) = sec.get("mem_buf_limit") {
            match fb_size(&e.value) {
                Some(b) => {
                    let total = mem.as_ref().map_or(0, |m| m.0) + b;
                    *mem = Some((total, e.pos.clone()));
                }
                None => self
                    .errors
                    .push(e.pos.error(format!("Mem_Buf_Limit `{}` is not a size", e.value))),
            }
        }
        match name.as_str() {
            "forward" => {
                let id = alias(sec).unwrap_or_else(|| format!("input{n}_forward"));
                let base = format!("sources.{id}");
                let mut t = toml::Table::new();
                t.insert("type".into(), s("forward"));
                if let Some(e) = sec.get("unix_path") {
                    t.insert("path".into(), s(&e.value));
                    self.origin(&format!("{base}.path"), &e.pos);
                } else {
                    let listen = sec.get("listen").map_or("0.0.0.0", |e| e.value.as_str());
                    let port = sec.get("port").map_or("24224", |e| e.value.as_str());
                    let host = if listen.contains(':') {
                        format!("[{listen}]")
                    } else {
                        listen.to_string()
                    };
                    t.insert("address".into(), s(&format!("{host}:{port}")));
                    if let Some(e) = sec.get("port").or(sec.get("listen")) {
                        self.origin(&format!("{base}.address"), &e.pos);
                    }
                }
                for (fb, ours) in [
                    ("shared_key", "shared_key"),
                    ("self_hostname", "self_hostname"),
                    ("unix_perm", "unix_perm"),
                ] {
                    if let Some(e) = sec.get(fb) {
                        t.insert(ours.into(), s(&e.value));
                        self.origin(&format!("{base}.{ours}"), &e.pos);
                    }
                }
                if let Some(e) = sec.get("buffer_max_size") {
                    match fb_size(&e.value) {
                        Some(b) => {
                            t.insert("max_frame_size".into(), toml::Value::Integer(b as i64));
                            self.origin(&format!("{base}.max_frame_size"), &e.pos);
                        }
                        None => self
                            .errors
                            .push(e.pos.error(format!("Buffer_Max_Size `{}` is not a size", e.value))),
                    }
                }
                self.origin(&base, &sec.pos);
                self.check_keys(
                    sec,
                    &what,
                    &[
                        "unix_path",
                        "unix_perm",
                        "listen",
                        "port",
                        "shared_key",
                        "self_hostname",
                        "buffer_max_size",
                        "mem_buf_limit",
                    ],
                    &["buffer_chunk_size"],
                );
                Some((id, t))
            }
            "tcp" if sec.get("tag").is_some_and(|e| e.value == HEALTHCHECK_TAG) => {
                self.notes.push(format!(
                    "{}:{}: [INPUT] tcp tagged {HEALTHCHECK_TAG} (the FireLens health check) dropped: use `logferry healthcheck` with [api]",
                    sec.pos.file, sec.pos.line
                ));
                None
            }
            "" => {
                self.errors.push(sec.pos.error("[INPUT] without `Name`"));
                None
            }
            other => {
                self.errors.push(sec.pos.error(format!(
                    "input plugin `{other}` is not supported by --fluent-bit-config (supported: {INPUTS}); write a Logferry config for other inputs"
                )));
                None
            }
        }
    }

    /// A `[FILTER]`: its transforms, or `None` when wrong.
    fn filter(&mut self, n: usize, sec: &Section) -> Option<Filter> {
        let name = sec.name();
        let what = format!("[FILTER] {name}");
        let matches = TagMatch::of(sec).map(|(m, _)| m);
        let mut steps = Vec::new();
        match name.as_str() {
            "record_modifier" => {
                let mut fields = toml::Table::new();
                let mut origins = vec![(String::new(), sec.pos.clone())];
                for e in sec.all("record") {
                    let (k, v) = split_key(&e.value);
                    if v.is_empty() {
                        self.errors.push(e.pos.error("`Record` needs a key and a value"));
                        continue;
                    }
                    fields.insert(k.to_string(), s(v));
                    origins.push((format!("fields.{k}"), e.pos.clone()));
                }
                let mut t = toml::Table::new();
                t.insert("type".into(), s("enrich"));
                for detect in ["ecs", "ec2", "kubernetes"] {
                    t.insert(detect.into(), toml::Value::Boolean(false));
                }
                t.insert("fields".into(), toml::Value::Table(fields));
                steps.push(Step {
                    name: alias(sec).unwrap_or_else(|| format!("filter{n}_record_modifier")),
                    table: t,
                    origins,
                });
                self.check_keys(sec, &what, &["match", "match_regex", "record"], &[]);
            }
            "grep" => {
                let op = sec.get("logical_op").map(|e| e.value.to_ascii_lowercase());
                for e in sec.all("regex").chain(sec.all("exclude")) {
                    let (_, re) = split_key(&e.value);
                    if let Err(err) = regex::Regex::new(re) {
                        // The regex crate explains on its last line.
                        let text = err.to_string();
                        let why = text.lines().last().unwrap_or_default().trim();
                        let why = why.strip_prefix("error: ").unwrap_or(why).to_string();
                        self.errors.push(e.pos.error(format!(
                            "grep: `{re}` is not a regular expression Logferry reads: {why}"
                        )));
                    }
                }
                let rules = |key: &str| -> Vec<(toml::Value, Pos)> {
                    sec.all(key)
                        .map(|e| {
                            let (k, re) = split_key(&e.value);
                            let mut c = toml::Table::new();
                            c.insert("field".into(), s(&record_key(k)));
                            c.insert("regex".into(), s(re));
                            (toml::Value::Table(c), e.pos.clone())
                        })
                        .collect()
                };
                let (keep, drop) = (rules("regex"), rules("exclude"));
                if op.as_deref().is_some_and(|o| o != "legacy") && !keep.is_empty() && !drop.is_empty() {
                    self.errors.push(
                        sec.pos
                            .error("grep: Regex and Exclude cannot be mixed with Logical_Op (as in Fluent Bit)"),
                    );
                }
                let any = match op.as_deref() {
                    None | Some("legacy") => None,
                    Some("and") => Some(false),
                    Some("or") => Some(true),
                    Some(other) => {
                        self.errors
                            .push(sec.pos.error(format!("grep: Logical_Op `{other}` (legacy, AND, OR)")));
                        None
                    }
                };
                for (action, rules, legacy_any) in [("keep", keep, false), ("drop", drop, true)] {
                    if rules.is_empty() {
                        continue;
                    }
                    let mut t = toml::Table::new();
                    t.insert("type".into(), s("filter"));
                    t.insert("action".into(), s(action));
                    t.insert("match".into(), s(if any.unwrap_or(legacy_any) { "any" } else { "all" }));
                    let mut origins = vec![(String::new(), sec.pos.clone())];
                    let mut conds = Vec::new();
                    for (i, (c, pos)) in rules.into_iter().enumerate() {
                        conds.push(c);
                        origins.push((format!("conditions[{i}]"), pos));
                    }
                    t.insert("conditions".into(), toml::Value::Array(conds));
                    let base = alias(sec).unwrap_or_else(|| format!("filter{n}_grep"));
                    steps.push(Step {
                        name: if action == "keep" {
                            base
                        } else {
                            format!("{base}_exclude")
                        },
                        table: t,
                        origins,
                    });
                }
                if steps.is_empty() {
                    self.errors.push(sec.pos.error("grep without Regex or Exclude"));
                }
                self.check_keys(
                    sec,
                    &what,
                    &["match", "match_regex", "regex", "exclude", "logical_op"],
                    &[],
                );
            }
            "" => {
                self.errors.push(sec.pos.error("[FILTER] without `Name`"));
                return None;
            }
            other => {
                self.errors.push(sec.pos.error(format!(
                    "filter plugin `{other}` is not supported by --fluent-bit-config (supported: {FILTERS})"
                )));
                return None;
            }
        }
        let Some(matches) = matches else {
            // Fluent Bit ignores a filter without Match; so do we, loudly.
            self.notes.push(format!(
                "{}:{}: {what} has no Match and applies to nothing (as in Fluent Bit)",
                sec.pos.file, sec.pos.line
            ));
            return None;
        };
        Some(Filter {
            matches,
            pos: sec.pos.clone(),
            steps,
        })
    }

    /// An `[OUTPUT]`: a sink, or `None` when dropped or wrong.
    fn output(&mut self, n: usize, sec: &Section, flush: Option<f64>) -> Option<Output> {
        let name = sec.name();
        let what = format!("[OUTPUT] {name}");
        let Some((matches, match_pos)) = TagMatch::of(sec) else {
            self.notes.push(format!(
                "{}:{}: {what} has no Match and receives nothing (as in Fluent Bit)",
                sec.pos.file, sec.pos.line
            ));
            return None;
        };
        let kind = match name.as_str() {
            "cloudwatch_logs" | "cloudwatch" => "cloudwatch_logs",
            "kinesis_firehose" | "firehose" => "firehose",
            "kinesis_streams" => "kinesis_streams",
            "s3" => "s3",
            "stdout" => "stdout",
            "null" if matches == TagMatch::Glob(HEALTHCHECK_TAG.into()) => {
                self.notes.push(format!(
                    "{}:{}: [OUTPUT] null for {HEALTHCHECK_TAG} dropped with its input",
                    sec.pos.file, sec.pos.line
                ));
                return None;
            }
            "null" => "blackhole",
            "" => {
                self.errors.push(sec.pos.error("[OUTPUT] without `Name`"));
                return None;
            }
            other => {
                self.errors.push(sec.pos.error(format!(
                    "output plugin `{other}` is not supported by --fluent-bit-config (supported: {OUTPUTS})"
                )));
                return None;
            }
        };
        let id = alias(sec).unwrap_or_else(|| format!("output{n}_{kind}"));
        let mut origins = vec![(String::new(), sec.pos.clone())];
        let mut t = toml::Table::new();
        t.insert("type".into(), s(kind));
        let set = |t: &mut toml::Table, origins: &mut Vec<(String, Pos)>, key: &str, v: toml::Value, pos: &Pos| {
            t.insert(key.into(), v);
            origins.push((key.to_string(), pos.clone()));
        };
        let common = ["match", "match_regex", "region", "endpoint"];
        if matches!(kind, "cloudwatch_logs" | "firehose" | "kinesis_streams" | "s3") {
            if let Some(e) = sec.get("region") {
                set(&mut t, &mut origins, "region", s(&e.value), &e.pos);
            }
            if let Some(e) = sec.get("endpoint") {
                set(&mut t, &mut origins, "endpoint_url", s(&endpoint(&e.value)), &e.pos);
            }
        }
        if matches!(kind, "cloudwatch_logs" | "firehose" | "kinesis_streams")
            && let Some(f) = flush
        {
            t.insert("flush_interval".into(), s(&duration(f)));
        }
        match kind {
            "cloudwatch_logs" => {
                match sec.get("log_group_name") {
                    Some(e) => match cw_template(&e.value, &e.pos) {
                        Ok(v) => set(&mut t, &mut origins, "log_group", s(&v), &e.pos),
                        Err(err) => self.errors.push(err),
                    },
                    None => self
                        .errors
                        .push(sec.pos.error("cloudwatch_logs needs `log_group_name`")),
                }
                match (sec.get("log_stream_name"), sec.get("log_stream_prefix")) {
                    (Some(e), _) => match cw_template(&e.value, &e.pos) {
                        Ok(v) => set(&mut t, &mut origins, "log_stream", s(&v), &e.pos),
                        Err(err) => self.errors.push(err),
                    },
                    // Fluent Bit names the stream prefix + tag.
                    (None, Some(e)) => match cw_template(&e.value, &e.pos) {
                        Ok(v) => set(&mut t, &mut origins, "log_stream", s(&format!("{v}{{tag}}")), &e.pos),
                        Err(err) => self.errors.push(err),
                    },
                    (None, None) => self.errors.push(
                        sec.pos
                            .error("cloudwatch_logs needs `log_stream_name` or `log_stream_prefix`"),
                    ),
                }
                if let Some(e) = sec.get("log_retention_days") {
                    match e.value.parse::<i64>() {
                        Ok(d) => set(&mut t, &mut origins, "retention_days", toml::Value::Integer(d), &e.pos),
                        Err(_) => self
                            .errors
                            .push(e.pos.error(format!("`{}` is not a number of days", e.value))),
                    }
                }
                if let Some(e) = sec.get("log_group_class") {
                    set(&mut t, &mut origins, "log_group_class", s(&e.value), &e.pos);
                }
                // Streams are always created (as Fluent Bit does); a missing
                // group is created too, where Fluent Bit without
                // auto_create_group would fail.
                t.insert("create_missing".into(), toml::Value::Boolean(true));
                if let Some(e) = sec.get("auto_create_group")
                    && is_true(&e.value).is_none()
                {
                    self.errors
                        .push(e.pos.error(format!("auto_create_group `{}` is not on/off", e.value)));
                }
                let mut known = common.to_vec();
                known.extend([
                    "log_group_name",
                    "log_stream_name",
                    "log_stream_prefix",
                    "log_retention_days",
                    "log_group_class",
                    "auto_create_group",
                ]);
                self.check_keys(sec, &what, &known, &[]);
            }
            "firehose" => {
                match sec.get("delivery_stream") {
                    Some(e) => set(&mut t, &mut origins, "delivery_stream", s(&e.value), &e.pos),
                    None => self.errors.push(sec.pos.error("firehose needs `delivery_stream`")),
                }
                let mut known = common.to_vec();
                known.push("delivery_stream");
                self.check_keys(sec, &what, &known, &["simple_aggregation"]);
            }
            "kinesis_streams" => {
                for (key, v, pos) in self.kinesis_streams(sec, &what, &common) {
                    set(&mut t, &mut origins, key, v, &pos);
                }
            }
            "s3" => {
                match sec.get("bucket") {
                    Some(e) => set(&mut t, &mut origins, "bucket", s(&e.value), &e.pos),
                    None => self.errors.push(sec.pos.error("s3 needs `bucket`")),
                }
                // Fluent Bit's default layout, the object name aside.
                let (format, pos) = sec
                    .get("s3_key_format")
                    .map_or(("/fluent-bit-logs/$TAG/%Y/%m/%d/%H/%M/%S", sec.pos.clone()), |e| {
                        (e.value.as_str(), e.pos.clone())
                    });
                match s3_key_prefix(format, &pos) {
                    Ok(p) => set(&mut t, &mut origins, "key_prefix", s(&p), &pos),
                    Err(err) => self.errors.push(err),
                }
                if let Some((_, object)) = format.rsplit_once('/')
                    && !object.is_empty()
                {
                    self.notes.push(format!(
                        "{}:{}: s3_key_format: the object name `{object}` is Logferry's own (a UUIDv7 and the compression's extension)",
                        pos.file, pos.line
                    ));
                }
                let compression = sec.get("compression");
                match compression.map(|e| e.value.to_ascii_lowercase()) {
                    None => {
                        t.insert("compression".into(), s("none"));
                    }
                    Some(c) if c == "gzip" || c == "zstd" => {
                        let pos = compression.map(|e| e.pos.clone()).unwrap_or_else(|| sec.pos.clone());
                        set(&mut t, &mut origins, "compression", s(&c), &pos);
                    }
                    Some(other) => {
                        let pos = compression.map(|e| e.pos.clone()).unwrap_or_else(|| sec.pos.clone());
                        self.errors.push(pos.error(format!(
                            "compression `{other}` is not supported (gzip, zstd, or none without the key)"
                        )));
                    }
                }
                for (fb, ours) in [
                    ("total_file_size", "max_object_size"),
                    ("upload_chunk_size", "multipart_part_size"),
                ] {
                    if let Some(e) = sec.get(fb) {
                        match fb_size(&e.value) {
                            Some(b) => set(&mut t, &mut origins, ours, toml::Value::Integer(b as i64), &e.pos),
                            None => self
                                .errors
                                .push(e.pos.error(format!("{} `{}` is not a size", e.key, e.value))),
                        }
                    }
                }
                if let Some(e) = sec.get("upload_timeout") {
                    match fb_seconds(&e.value) {
                        Some(v) => set(&mut t, &mut origins, "flush_interval", s(&duration(v)), &e.pos),
                        None => self
                            .errors
                            .push(e.pos.error(format!("upload_timeout `{}` is not a time", e.value))),
                    }
                }
                if let Some(e) = sec.get("storage_class") {
                    set(&mut t, &mut origins, "storage_class", s(&e.value), &e.pos);
                }
                if sec.get("endpoint").is_some() {
                    // Custom endpoints (LocalStack, MinIO) take the bucket in the path.
                    t.insert("force_path_style".into(), toml::Value::Boolean(true));
                }
                let mut known = common.to_vec();
                known.extend([
                    "bucket",
                    "s3_key_format",
                    "compression",
                    "total_file_size",
                    "upload_chunk_size",
                    "upload_timeout",
                    "storage_class",
                ]);
                self.check_keys(
                    sec,
                    &what,
                    &known,
                    &[
                        "s3_key_format_tag_delimiters",
                        "use_put_object",
                        "store_dir",
                        "store_dir_limit_size",
                        "send_content_md5",
                        "preserve_data_ordering",
                        "content_type",
                        "json_date_key",
                        "json_date_format",
                    ],
                );
            }
            _ => {
                self.check_keys(
                    sec,
                    &what,
                    &["match", "match_regex"],
                    &["format", "json_date_key", "json_date_format"],
                );
            }
        }
        Some(Output {
            name: id,
            matches,
            match_pos,
            table: t,
            origins,
        })
    }
}

impl Tr {
    /// `[OUTPUT] Name kinesis_streams` (region, endpoint and Flush are
    /// mapped with the other AWS outputs): the sink keys it sets.
    fn kinesis_streams(&mut self, sec: &Section, what: &str, common: &[&str]) -> Vec<(&'static str, toml::Value, Pos)> {
        let mut out = Vec::new();
        match sec.get("stream") {
            Some(e) => out.push(("stream", s(&e.value), e.pos.clone())),
            None => self.errors.push(sec.pos.error("kinesis_streams needs `stream`")),
        }
        // Fluent Bit names a record key (`->` for nested ones); missing in a
        // record, the key is random, as in the sink.
        if let Some(e) = sec.get("partition_key") {
            let path = e.value.trim().replace("->", ".");
            match crate::template::Template::parse(&format!("{{{path}}}")) {
                Ok(_) if !path.is_empty() => out.push(("partition_key", s(&format!("{{{path}}}")), e.pos.clone())),
                _ => self
                    .errors
                    .push(e.pos.error(format!("partition_key `{}` is not a record key", e.value))),
            }
        }
        let mut known = common.to_vec();
        known.extend(["stream", "partition_key"]);
        // Logferry always retries failed requests (with backoff); Fluent
        // Bit's simple_aggregation concatenates records, which readers of
        // newline-delimited records read the same as one per record.
        self.check_keys(sec, what, &known, &["auto_retry_requests", "simple_aggregation"]);
        out
    }
}

const HEALTHCHECK_TAG: &str = "firelens-healthcheck";

/// A section's `Alias`, if it is a usable component name.
fn alias(sec: &Section) -> Option<String> {
    sec.get("alias")
        .map(|e| e.value.clone())
        .filter(|a| !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
}

fn translate(sections: &[Section]) -> Result<Translation, ConfigErrors> {
    let mut tr = Tr::default();
    let mut flush = None;
    let services: Vec<&Section> = sections.iter().filter(|s| s.kind == "SERVICE").collect();
    tr.service(&services, &mut flush);

    let mut sources = toml::Table::new();
    let mut mem: Option<(u64, Pos)> = None;
    let mut filters = Vec::new();
    let mut outputs = Vec::new();
    let (mut ni, mut nf, mut no) = (0, 0, 0);
    for sec in sections {
        match sec.kind.as_str() {
            "INPUT" => {
                ni += 1;
                if let Some((id, t)) = tr.input(ni, sec, &mut mem) {
                    sources.insert(id, toml::Value::Table(t));
                }
            }
            "FILTER" => {
                nf += 1;
                if let Some(f) = tr.filter(nf, sec) {
                    filters.push(f);
                }
            }
            "OUTPUT" => {
                no += 1;
                if let Some(o) = tr.output(no, sec, flush) {
                    outputs.push(o);
                }
            }
            _ => {}
        }
    }
    if let Some((bytes, pos)) = mem {
        let global = tr
            .root
            .entry("global")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(g) = global {
            g.insert("memory_limit".into(), toml::Value::Integer(bytes as i64));
        }
        tr.origin("global.memory_limit", &pos);
    }
    let source_ids: Vec<String> = sources.keys().cloned().collect();
    if !sources.is_empty() {
        tr.root.insert("sources".into(), toml::Value::Table(sources));
    }

    // One chain per output; chains share transforms by prefix.
    let mut transforms = toml::Table::new();
    let mut sinks = toml::Table::new();
    let mut by_prefix: BTreeMap<Vec<String>, String> = BTreeMap::new();
    for o in outputs {
        let mut inputs: Vec<String> = source_ids.clone();
        let mut prefix: Vec<String> = Vec::new();
        for f in &filters {
            match o.matches.within(&f.matches) {
                Some(true) => {}
                Some(false) => continue,
                None => {
                    tr.errors.push(f.pos.error(format!(
                        "this filter ({}) applies to only some of the tags `{}` at {}:{} sends on ({}); Logferry can run a filter on all of an output's records or none: give both the same Match",
                        f.matches.describe(),
                        o.name,
                        o.match_pos.file,
                        o.match_pos.line,
                        o.matches.describe()
                    )));
                    continue;
                }
            }
            for step in &f.steps {
                prefix.push(step.name.clone());
                let id = match by_prefix.get(&prefix) {
                    Some(id) => id.clone(),
                    None => {
                        let mut id = step.name.clone();
                        let mut k = 2;
                        while transforms.contains_key(&id) {
                            id = format!("{}_{k}", step.name);
                            k += 1;
                        }
                        let mut t = step.table.clone();
                        t.insert(
                            "inputs".into(),
                            toml::Value::Array(inputs.iter().map(|i| s(i)).collect()),
                        );
                        for (key, pos) in &step.origins {
                            let path = if key.is_empty() {
                                format!("transforms.{id}")
                            } else {
                                format!("transforms.{id}.{key}")
                            };
                            tr.origin(&path, pos);
                        }
                        transforms.insert(id.clone(), toml::Value::Table(t));
                        by_prefix.insert(prefix.clone(), id.clone());
                        id
                    }
                };
                inputs = vec![id];
            }
        }
        if !o.matches.is_all() {
            let id = format!("{}_match", o.name);
            let mut c = toml::Table::new();
            c.insert("field".into(), s("tag"));
            c.insert("regex".into(), s(&o.matches.regex()));
            let mut t = toml::Table::new();
            t.insert("type".into(), s("filter"));
            t.insert(
                "inputs".into(),
                toml::Value::Array(inputs.iter().map(|i| s(i)).collect()),
            );
            t.insert("conditions".into(), toml::Value::Array(vec![toml::Value::Table(c)]));
            tr.origin(&format!("transforms.{id}"), &o.match_pos);
            transforms.insert(id.clone(), toml::Value::Table(t));
            inputs = vec![id];
        }
        let mut t = o.table;
        t.insert(
            "inputs".into(),
            toml::Value::Array(inputs.iter().map(|i| s(i)).collect()),
        );
        for (key, pos) in &o.origins {
            let path = if key.is_empty() {
                format!("sinks.{}", o.name)
            } else {
                format!("sinks.{}.{key}", o.name)
            };
            tr.origin(&path, pos);
        }
        sinks.insert(o.name, toml::Value::Table(t));
    }
    if !transforms.is_empty() {
        tr.root.insert("transforms".into(), toml::Value::Table(transforms));
    }
    if !sinks.is_empty() {
        tr.root.insert("sinks".into(), toml::Value::Table(sinks));
    }
    if !tr.errors.is_empty() {
        return Err(ConfigErrors(tr.errors));
    }
    let toml = toml::to_string(&tr.root).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            message: format!("internal error writing the translated config: {e}"),
            location: None,
        }])
    })?;
    Ok(Translation {
        toml,
        origins: tr.origins,
        notes: tr.notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::SinkConfig;
    use crate::transforms::TransformConfig;

    fn env(name: &str) -> Option<String> {
        match name {
            "REGION" => Some("eu-west-1".into()),
            "GROUP" => Some("/ecs/from-env".into()),
            _ => None,
        }
    }

    struct Dir(tempfile::TempDir);

    impl Dir {
        fn new(files: &[(&str, &str)]) -> Dir {
            let d = tempfile::tempdir().unwrap();
            for (name, text) in files {
                let p = d.path().join(name);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, text).unwrap();
            }
            Dir(d)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.path().join(name)
        }

        fn load(&self) -> Result<FluentBitConfig, ConfigErrors> {
            load(&self.path("fluent-bit.conf"), &env)
        }

        fn errors(&self) -> Vec<String> {
            match self.load() {
                Ok(c) => panic!("expected errors, got:\n{}", c.toml),
                Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
            }
        }
    }

    const FORWARD: &str = "[INPUT]\n    Name forward\n    unix_path /tmp/fluent.sock\n\n";

    fn cw(extra: &str) -> String {
        format!(
            "{FORWARD}[OUTPUT]\n    Name cloudwatch_logs\n    Match app-firelens*\n    log_group_name /ecs/web\n    log_stream_prefix app-\n    region eu-west-1\n{extra}"
        )
    }

    #[test]
    fn sections_keys_any_case_and_indent_comments_and_variables() {
        let text = "# generated\n@SET group=/ecs/set\n[input]\nNAME   forward\n\t  UNIX_PATH  /tmp/a.sock\n[Output]\n  name cloudwatch\n  MATCH *\n  Log_Group_Name ${group}\n  log_stream_name ${REGION}-$(tag)\n";
        let d = Dir::new(&[("fluent-bit.conf", text)]);
        let c = d.load().unwrap();
        let SinkConfig::CloudWatchLogs(s) = &c.config.sinks[0].inner else {
            panic!("{:?}", c.config.sinks)
        };
        assert_eq!(s.log_group, "/ecs/set");
        assert_eq!(s.log_stream, "eu-west-1-{tag}");
        // Match * needs no tag filter.
        assert!(c.config.transforms.is_empty());
        assert_eq!(c.config.sinks[0].inputs, vec!["input1_forward".to_string()]);
    }

    #[test]
    fn includes_are_relative_to_the_including_file_and_globs_sorted() {
        let main = format!("{FORWARD}@INCLUDE conf.d/*.conf\n@INCLUDE sub/one.conf\n");
        let d = Dir::new(&[
            ("fluent-bit.conf", &main),
            (
                "conf.d/b.conf",
                "[OUTPUT]\n    Name null\n    Match b\n    Alias second\n",
            ),
            (
                "conf.d/a.conf",
                "[OUTPUT]\n    Name null\n    Match a\n    Alias first\n",
            ),
            ("sub/one.conf", "@INCLUDE two.conf\n"),
            (
                "sub/two.conf",
                "[OUTPUT]\n    Name stdout\n    Match *\n    Alias third\n",
            ),
        ]);
        let c = d.load().unwrap();
        let ids: Vec<&str> = c.config.sinks.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["first", "second", "third"]);
        // Each named output kept only its own tag.
        assert!(c.toml.contains(r#"regex = "^a$$""#), "{}", c.toml);
    }

    #[test]
    fn parse_errors_name_file_and_line() {
        let d = Dir::new(&[(
            "fluent-bit.conf",
            "Name forward\n[INPUT]\n    Name forward\n    unix_path ${NOPE}\n@REQUIRE x\n[PARSER]\n@INCLUDE missing.conf\n",
        )]);
        let e = d.errors();
        let f = d.path("fluent-bit.conf").display().to_string();
        assert!(
            e[0].starts_with(&format!("{f}:1:1: `Name forward` is outside a section")),
            "{e:?}"
        );
        assert!(
            e[1].starts_with(&format!("{f}:4:5: environment variable `NOPE` is not set")),
            "{e:?}"
        );
        assert!(
            e[2].starts_with(&format!("{f}:5:1: unknown directive `@REQUIRE`")),
            "{e:?}"
        );
        assert!(
            e[3].starts_with(&format!("{f}:6:1: section [PARSER] is not supported")),
            "{e:?}"
        );
        assert!(
            e[4].starts_with(&format!("{f}:7:1: cannot read Fluent Bit config")),
            "{e:?}"
        );
        assert_eq!(e.len(), 5, "{e:?}");
    }

    #[test]
    fn include_loops_are_errors() {
        let d = Dir::new(&[
            ("fluent-bit.conf", "@INCLUDE a.conf\n"),
            ("a.conf", "@INCLUDE fluent-bit.conf\n"),
        ]);
        let e = d.errors();
        assert!(e[0].contains("a.conf:1:1: @INCLUDE loop"), "{e:?}");
    }

    #[test]
    fn loader_errors_point_at_the_fluent_bit_line() {
        let d = Dir::new(&[("fluent-bit.conf", &cw("    log_retention_days 31\n"))]);
        let e = d.errors();
        let f = d.path("fluent-bit.conf").display().to_string();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(&format!(
                "{f}:11:5: `sinks.output1_cloudwatch_logs.retention_days`: 31 is not"
            )),
            "{e:?}"
        );
    }

    #[test]
    fn unsupported_plugins_and_keys_are_errors_with_their_line() {
        let d = Dir::new(&[("fluent-bit.conf", &cw("    log_key log\n    Retry_Limit 5\n"))]);
        let e = d.errors();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains(":11:5: `log_key` of [OUTPUT] cloudwatch_logs is not supported"),
            "{e:?}"
        );
        let d = Dir::new(&[("fluent-bit.conf", "[INPUT]\n    Name tail\n    Path /var/log/*.log\n")]);
        let e = d.errors();
        assert!(e[0].contains(":1:1: input plugin `tail` is not supported"), "{e:?}");
        assert!(e[0].contains("forward"), "{e:?}");
        let d = Dir::new(&[(
            "fluent-bit.conf",
            &format!("{FORWARD}[OUTPUT]\n    Name es\n    Match *\n"),
        )]);
        assert!(d.errors()[0].contains(":5:1: output plugin `es` is not supported"));
    }

    #[test]
    fn service_section_maps_onto_global_lifecycle_api_and_flush() {
        let text = format!(
            "[SERVICE]\n    Flush 0.5\n    Grace 12\n    HTTP_Server On\n    storage.path /data/fb\n    Daemon off\n{}",
            cw("")
        );
        let d = Dir::new(&[("fluent-bit.conf", &text)]);
        let c = d.load().unwrap().config;
        assert_eq!(c.lifecycle.drain_timeout, std::time::Duration::from_secs(12));
        assert_eq!(c.api.unwrap().address.to_string(), "0.0.0.0:2020");
        assert_eq!(c.global.data_dir, PathBuf::from("/data/fb"));
        let SinkConfig::CloudWatchLogs(s) = &c.sinks[0].inner else {
            panic!()
        };
        assert_eq!(s.flush_interval, std::time::Duration::from_millis(500));
        let d = Dir::new(&[(
            "fluent-bit.conf",
            &format!(
                "[SERVICE]\n    Grace soon\n    Plugins_File p.conf\n    Colour red\n{}",
                cw("")
            ),
        )]);
        let e = d.errors();
        assert!(e[0].contains(":2:5: Grace `soon` is not a time"), "{e:?}");
        assert!(e[1].contains(":4:5: `Colour` of [SERVICE] is not supported"), "{e:?}");
        assert_eq!(e.len(), 2, "{e:?}");
    }

    #[test]
    fn a_bad_grep_regex_is_one_error_at_its_line() {
        let text = format!(
            "{FORWARD}[FILTER]\n    Name grep\n    Match *\n    Regex log *failure*\n[OUTPUT]\n    Name stdout\n    Match *\n"
        );
        let d = Dir::new(&[("fluent-bit.conf", &text)]);
        let e = d.errors();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains(":8:5: grep: `*failure*` is not a regular expression Logferry reads: repetition operator missing expression"),
            "{e:?}"
        );
    }

    #[test]
    fn a_filter_on_part_of_an_outputs_tags_is_an_error() {
        let text = format!(
            "{FORWARD}[FILTER]\n    Name grep\n    Match app-firelens*\n    Regex log x\n\n[OUTPUT]\n    Name stdout\n    Match *\n"
        );
        let d = Dir::new(&[("fluent-bit.conf", &text)]);
        let e = d.errors();
        assert!(
            e[0].contains(":5:1: this filter (Match app-firelens*) applies to only some"),
            "{e:?}"
        );
        // A disjoint filter is simply not in the chain.
        let text = format!(
            "{FORWARD}[FILTER]\n    Name grep\n    Match web-firelens*\n    Regex log x\n\n[OUTPUT]\n    Name stdout\n    Match app-firelens*\n"
        );
        let d = Dir::new(&[("fluent-bit.conf", &text)]);
        let c = d.load().unwrap();
        assert_eq!(c.config.transforms.len(), 1, "{}", c.toml);
    }

    #[test]
    fn firelens_chain_values_and_dollars_survive() {
        let text = format!(
            "{FORWARD}[INPUT]\n    Name forward\n    Listen 127.0.0.1\n    Port 24224\n    Mem_Buf_Limit 5MB\n[INPUT]\n    Name forward\n    Listen 127.0.0.1\n    Port 24225\n    Mem_Buf_Limit 3M\n[FILTER]\n    Name grep\n    Match app-firelens*\n    Regex log [Ee]rror\n    Regex $kubernetes['labels']['tier'] ^web$\n    Logical_Op or\n[FILTER]\n    Name record_modifier\n    Match *\n    Record price a$b\n[OUTPUT]\n    Name s3\n    Match app-firelens*\n    bucket b-logs\n    s3_key_format /x/$TAG/%Y/\n    total_file_size 2M\n    upload_timeout 90s\n    endpoint http://127.0.0.1:4566\n"
        );
        let d = Dir::new(&[("fluent-bit.conf", &text)]);
        let c = d.load().unwrap();
        assert_eq!(c.config.global.memory_limit.as_u64(), 8_000_000);
        let ids: Vec<(&str, &Vec<String>)> = c.config.transforms.iter().map(|t| (t.id.as_str(), &t.inputs)).collect();
        assert_eq!(ids.len(), 3, "{ids:?}");
        let TransformConfig::Filter(g) = &c
            .config
            .transforms
            .iter()
            .find(|t| t.id == "filter1_grep")
            .unwrap()
            .inner
        else {
            panic!()
        };
        assert_eq!(g.match_, crate::transforms::condition::Match::Any);
        assert!(c.toml.contains(r#"field = "kubernetes.labels.tier""#), "{}", c.toml);
        assert!(g.conditions[0].regex.as_ref().unwrap().is_match("an Error"));
        let TransformConfig::Enrich(m) = &c
            .config
            .transforms
            .iter()
            .find(|t| t.id == "filter2_record_modifier")
            .unwrap()
            .inner
        else {
            panic!()
        };
        assert_eq!(m.fields["price"], serde_json::json!("a$b"));
        let TransformConfig::Filter(tag) = &c
            .config
            .transforms
            .iter()
            .find(|t| t.id == "output1_s3_match")
            .unwrap()
            .inner
        else {
            panic!()
        };
        let re = tag.conditions[0].regex.as_ref().unwrap();
        assert!(re.is_match("app-firelens-0f9c6a4f") && !re.is_match("xapp-firelens") && !re.is_match("app-firelen"));
        let SinkConfig::S3(s3) = &c.config.sinks[0].inner else {
            panic!()
        };
        assert_eq!(s3.key_prefix, "x/{tag}/%Y/");
        assert_eq!(s3.max_object_size.as_u64(), 2_000_000);
        assert_eq!(s3.flush_interval, std::time::Duration::from_secs(90));
        assert_eq!(s3.compression, crate::sinks::encoding::Compression::None);
        assert!(s3.force_path_style);
        assert_eq!(s3.endpoint_url.as_deref(), Some("http://127.0.0.1:4566"));
    }

    #[test]
    fn s3_key_formats_that_do_not_map_are_errors() {
        for (format, msg) in [
            ("/logs/$TAG[1]/%Y/x", "`$TAG[n]`"),
            ("/logs/$UUID/x", "`$UUID` is supported only in the object name"),
        ] {
            let text =
                format!("{FORWARD}[OUTPUT]\n    Name s3\n    Match *\n    bucket b-logs\n    s3_key_format {format}\n");
            let d = Dir::new(&[("fluent-bit.conf", &text)]);
            let e = d.errors();
            assert!(e[0].contains(":9:5: ") && e[0].contains(msg), "{e:?}");
        }
    }

    #[test]
    fn sizes_and_times() {
        assert_eq!(fb_size("5M"), Some(5_000_000));
        assert_eq!(fb_size("1.5k"), Some(1500));
        assert_eq!(fb_size("4096"), Some(4096));
        assert_eq!(fb_size("5 parsecs"), None);
        assert_eq!(fb_seconds("10m"), Some(600.0));
        assert_eq!(fb_seconds("0.5"), Some(0.5));
        assert_eq!(fb_seconds("soon"), None);
    }

    #[test]
    fn kinesis_streams_maps_to_the_kinesis_sink() {
        let text = format!(
            "[SERVICE]\n    Flush 2\n{FORWARD}[OUTPUT]\n    Name kinesis_streams\n    Match *\n    region us-east-1\n    stream app-logs\n    partition_key kubernetes->pod_name\n    endpoint http://127.0.0.1:4566\n    auto_retry_requests true\n"
        );
        let d = Dir::new(&[("fluent-bit.conf", &text)]);
        let c = d.load().unwrap();
        let SinkConfig::Kinesis(k) = &c.config.sinks[0].inner else {
            panic!("{:?}", c.config.sinks)
        };
        assert_eq!(k.stream, "app-logs");
        assert_eq!(k.partition_key.as_deref(), Some("{kubernetes.pod_name}"));
        assert_eq!(k.region.as_deref(), Some("us-east-1"));
        assert_eq!(k.endpoint_url.as_deref(), Some("http://127.0.0.1:4566"));
        assert_eq!(k.flush_interval, std::time::Duration::from_secs(2));
        assert!(!k.aggregation);
        assert!(
            c.notes.iter().any(|n| n.contains("auto_retry_requests")),
            "{:?}",
            c.notes
        );

        // Without partition_key: random keys.
        let text = format!("{FORWARD}[OUTPUT]\n    Name kinesis_streams\n    Match *\n    stream s\n");
        let c = Dir::new(&[("fluent-bit.conf", &text)]).load().unwrap();
        let SinkConfig::Kinesis(k) = &c.config.sinks[0].inner else {
            panic!("{:?}", c.config.sinks)
        };
        assert!(k.partition_key.is_none());
    }

    #[test]
    fn kinesis_streams_keys_that_do_not_map_are_errors() {
        for (extra, msg) in [
            ("    region us-east-1\n", "kinesis_streams needs `stream`"),
            (
                "    stream s\n    role_arn arn:aws:iam::1:role/x\n",
                "`role_arn` of [OUTPUT] kinesis_streams is not supported",
            ),
            (
                "    stream s\n    time_key ts\n",
                "`time_key` of [OUTPUT] kinesis_streams is not supported",
            ),
            (
                "    stream s\n    partition_key a b\n",
                "partition_key `a b` is not a record key",
            ),
            ("    stream no/slash\n", "not a valid stream name"),
        ] {
            let text = format!("{FORWARD}[OUTPUT]\n    Name kinesis_streams\n    Match *\n{extra}");
            let d = Dir::new(&[("fluent-bit.conf", &text)]);
            let e = d.errors();
            assert!(e.iter().any(|e| e.contains(msg)), "{extra}: {e:?}");
        }
    }
}
