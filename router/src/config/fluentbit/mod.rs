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
//!
//! Layout: `syntax` reads the classic format (sections, `@INCLUDE`, `@SET`,
//! `${VAR}`) into sections with their positions; `translate` builds the TOML
//! document and the chains; `inputs`, `filters` and `outputs` map one plugin
//! section each; `notes` holds the keys accepted without effect; `values`
//! converts Fluent Bit sizes, times and templates.

use std::path::Path;

use super::{Config, ConfigErrors};

mod filters;
mod inputs;
mod notes;
mod outputs;
mod outputs_http;
mod parsers;
mod syntax;
mod translate;
mod values;

#[cfg(test)]
mod tests;

use syntax::Parser;
use translate::translate;

/// A Fluent Bit file loaded as a Logferry config.
#[derive(Debug)]
pub struct FluentBitConfig {
    pub config: Config,
    /// What was accepted without effect, or dropped on purpose; one line each.
    pub notes: Vec<String>,
    /// The equivalent Logferry TOML document.
    pub toml: String,
    /// `file:line: Key -> path.in.toml`, one line per mapped Fluent Bit key
    /// or section, in file order (`logferry validate` prints it with the notes).
    pub mapping: Vec<String>,
}

/// Loads a Fluent Bit classic-format file (with its `@INCLUDE`s) as a
/// Logferry config. `${VAR}` takes `@SET` variables first, then `lookup`.
pub fn load(path: &Path, lookup: &dyn Fn(&str) -> Option<String>) -> Result<FluentBitConfig, ConfigErrors> {
    let mut parser = Parser::new(lookup);
    parser.file(path, None);
    if !parser.errors.is_empty() {
        return Err(ConfigErrors(parser.errors));
    }
    // `[SERVICE] Parsers_File`, each relative to the file that names it.
    let files: Vec<(String, syntax::Pos)> = parser
        .sections
        .iter()
        .filter(|s| s.kind == "SERVICE")
        .flat_map(|s| s.all("parsers_file"))
        .map(|e| (e.value.clone(), e.pos.clone()))
        .collect();
    let mut parsers = Parser::new(lookup);
    parsers.parsers_file = true;
    parsers.vars = parser.vars.clone();
    for (file, pos) in &files {
        let dir = Path::new(&*pos.file).parent().unwrap_or(Path::new("."));
        parsers.file(&dir.join(file), Some(pos));
    }
    if !parsers.errors.is_empty() {
        return Err(ConfigErrors(parsers.errors));
    }
    let tr = translate(&parser.sections, &parsers.sections)?;
    let origin = path.display().to_string();
    // Every `$` in the document is escaped: variables were expanded above.
    let mapping = mapping(&tr.origins, &[parser.sections.as_slice(), parsers.sections.as_slice()]);
    match super::load_str(&tr.toml, &origin, &|_| None) {
        Ok(config) => Ok(FluentBitConfig {
            config,
            notes: tr.notes,
            toml: tr.toml,
            mapping,
        }),
        Err(errors) => Err(tr.relocate(errors)),
    }
}

/// The mapping table: each origin with the Fluent Bit key (or section) at
/// its position.
fn mapping(origins: &[(String, syntax::Pos)], sections: &[&[syntax::Section]]) -> Vec<String> {
    let label = |pos: &syntax::Pos| -> String {
        for sec in sections.iter().flat_map(|s| s.iter()) {
            if sec.pos == *pos {
                let name = sec.get("name").map(|e| e.value.as_str()).unwrap_or_default();
                return format!("[{}] {name}", sec.kind);
            }
            if let Some(e) = sec.entries.iter().find(|e| e.pos == *pos) {
                return e.key.clone();
            }
        }
        String::new()
    };
    let mut rows: Vec<(&str, usize, String)> = origins
        .iter()
        .map(|(path, pos)| {
            (
                &*pos.file,
                pos.line,
                format!("{}:{}: {} -> {path}", pos.file, pos.line, label(pos)),
            )
        })
        .collect();
    rows.sort();
    rows.dedup();
    rows.into_iter().map(|(_, _, row)| row).collect()
}
