//! The Fluent Bit classic format: `[SECTION]`s of `Key value` lines,
//! `@INCLUDE` (relative to the including file, globs in alphabetical order),
//! `@SET name=value` and `${VAR}`. Every entry keeps its file and line so a
//! later error can name them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::super::{ConfigError, expand};

/// Where a line came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pos {
    pub(super) file: Arc<str>,
    pub(super) line: usize,
    pub(super) col: usize,
}

impl Pos {
    pub(super) fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: String::new(),
            message: message.into(),
            location: Some((self.file.to_string(), self.line, self.col)),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// As written (`Log_Group_Name`); compare with `eq_ignore_ascii_case`.
    pub(super) key: String,
    pub(super) value: String,
    pub(super) pos: Pos,
}

#[derive(Debug, Clone)]
pub(super) struct Section {
    /// Upper case: `SERVICE`, `INPUT`, `FILTER`, `OUTPUT`.
    pub(super) kind: String,
    pub(super) pos: Pos,
    pub(super) entries: Vec<Entry>,
}

impl Section {
    pub(super) fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| e.key.eq_ignore_ascii_case(key))
    }

    pub(super) fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries.iter().filter(move |e| e.key.eq_ignore_ascii_case(key))
    }

    pub(super) fn name(&self) -> String {
        self.get("name")
            .map(|e| e.value.to_ascii_lowercase())
            .unwrap_or_default()
    }
}

/// Deepest `@INCLUDE` nesting; deeper is taken for a loop.
pub(super) const MAX_INCLUDE_DEPTH: usize = 16;

pub(super) struct Parser<'a> {
    /// `@SET` variables, in force from their line on.
    pub(super) vars: BTreeMap<String, String>,
    pub(super) lookup: &'a dyn Fn(&str) -> Option<String>,
    pub(super) sections: Vec<Section>,
    pub(super) errors: Vec<ConfigError>,
    /// Files being read, outermost first (include loops).
    pub(super) stack: Vec<PathBuf>,
    /// Reading a `Parsers_File`: `[PARSER]` and `[MULTILINE_PARSER]`
    /// sections, nothing else.
    pub(super) parsers_file: bool,
}

impl<'a> Parser<'a> {
    pub(super) fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Parser<'a> {
        Parser {
            vars: BTreeMap::new(),
            lookup,
            sections: Vec::new(),
            errors: Vec::new(),
            stack: Vec::new(),
            parsers_file: false,
        }
    }

    pub(super) fn expand(&self, value: &str, pos: &Pos) -> Result<String, ConfigError> {
        let lookup = |name: &str| self.vars.get(name).cloned().or_else(|| (self.lookup)(name));
        expand(value, &lookup).map_err(|e| pos.error(e.to_string()))
    }

    pub(super) fn file(&mut self, path: &Path, included_at: Option<&Pos>) {
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

    pub(super) fn text(&mut self, text: &str, file: &Arc<str>, dir: &Path) {
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
                if self.parsers_file && !["PARSER", "MULTILINE_PARSER"].contains(&kind.as_str()) {
                    self.errors
                        .push(pos.error(format!("section [{name}] in a Parsers_File (PARSER, MULTILINE_PARSER)")));
                    current = None;
                    continue;
                }
                if !self.parsers_file && !["SERVICE", "INPUT", "FILTER", "OUTPUT"].contains(&kind.as_str()) {
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

    pub(super) fn include(&mut self, arg: &str, pos: &Pos, dir: &Path) {
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
pub(super) fn split_key(line: &str) -> (&str, &str) {
    match line.find(char::is_whitespace) {
        Some(i) => (&line[..i], line[i..].trim()),
        None => (line, ""),
    }
}
