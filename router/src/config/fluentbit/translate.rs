//! The TOML document: one chain of transforms per `[OUTPUT]`, shared by
//! prefix, and where each generated key came from (`origins`), so the
//! loader's errors land on the Fluent Bit line.

use std::collections::BTreeMap;

use super::super::{ConfigError, ConfigErrors};
use super::syntax::{Pos, Section};
use super::values::s;

/// The TOML document, and where each of its keys came from.
#[derive(Debug)]
pub(super) struct Translation {
    pub(super) toml: String,
    /// Dotted key path in the TOML (`sinks.output1_s3.bucket`) -> Fluent Bit position.
    pub(super) origins: Vec<(String, Pos)>,
    pub(super) notes: Vec<String>,
}

impl Translation {
    /// Points each error at the Fluent Bit line its key came from.
    pub(super) fn relocate(&self, errors: ConfigErrors) -> ConfigErrors {
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
pub(super) struct Step {
    pub(super) name: String,
    pub(super) table: toml::Table,
    /// (key under the transform, position); `""` for the whole transform.
    pub(super) origins: Vec<(String, Pos)>,
}

/// A Fluent Bit tag pattern: `Match` (glob, `*` only) or `Match_Regex`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TagMatch {
    Glob(String),
    Regex(String),
}

impl TagMatch {
    pub(super) fn of(section: &Section) -> Option<(TagMatch, Pos)> {
        if let Some(e) = section.get("match_regex") {
            return Some((TagMatch::Regex(e.value.clone()), e.pos.clone()));
        }
        section
            .get("match")
            .map(|e| (TagMatch::Glob(e.value.clone()), e.pos.clone()))
    }

    pub(super) fn is_all(&self) -> bool {
        matches!(self, TagMatch::Glob(g) if g.chars().all(|c| c == '*'))
    }

    pub(super) fn regex(&self) -> String {
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
    pub(super) fn within(&self, other: &TagMatch) -> Option<bool> {
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

    pub(super) fn describe(&self) -> String {
        match self {
            TagMatch::Glob(g) => format!("Match {g}"),
            TagMatch::Regex(r) => format!("Match_Regex {r}"),
        }
    }
}

/// A `[FILTER]`: what it matches and the transforms it becomes.
pub(super) struct Filter {
    pub(super) matches: TagMatch,
    pub(super) pos: Pos,
    pub(super) steps: Vec<Step>,
}

pub(super) struct Output {
    pub(super) name: String,
    pub(super) matches: TagMatch,
    pub(super) match_pos: Pos,
    pub(super) table: toml::Table,
    pub(super) origins: Vec<(String, Pos)>,
}

#[derive(Default)]
pub(super) struct Tr {
    pub(super) errors: Vec<ConfigError>,
    pub(super) notes: Vec<String>,
    pub(super) origins: Vec<(String, Pos)>,
    pub(super) root: toml::Table,
    /// `[PARSER]` sections of the Parsers_Files, by `Name`.
    pub(super) parsers: Vec<Section>,
    /// The FireLens health check `tcp` input's address and line.
    pub(super) health_tcp: Option<(String, Pos)>,
}

impl Tr {
    pub(super) fn origin(&mut self, path: &str, pos: &Pos) {
        self.origins.push((path.to_string(), pos.clone()));
    }
}

pub(super) const HEALTHCHECK_TAG: &str = "firelens-healthcheck";

/// A section's `Alias`, if it is a usable component name.
pub(super) fn alias(sec: &Section) -> Option<String> {
    sec.get("alias")
        .map(|e| e.value.clone())
        .filter(|a| !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
}

pub(super) fn translate(sections: &[Section], parsers: &[Section]) -> Result<Translation, ConfigErrors> {
    let mut tr = Tr {
        parsers: parsers.iter().filter(|p| p.kind == "PARSER").cloned().collect(),
        ..Tr::default()
    };
    for p in parsers.iter().filter(|p| p.kind == "MULTILINE_PARSER") {
        tr.notes.push(format!(
            "{}:{}: [MULTILINE_PARSER] read, not used (Logferry's multiline transform takes its own config)",
            p.pos.file, p.pos.line
        ));
    }
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
    if let Some((addr, pos)) = tr.health_tcp.take()
        && let Some(toml::Value::Table(api)) = tr.root.get_mut("api")
    {
        api.insert("health_tcp".into(), s(&addr));
        tr.origin("api.health_tcp", &pos);
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
