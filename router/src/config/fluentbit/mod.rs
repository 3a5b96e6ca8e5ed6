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
}

/// Loads a Fluent Bit classic-format file (with its `@INCLUDE`s) as a
/// Logferry config. `${VAR}` takes `@SET` variables first, then `lookup`.
pub fn load(path: &Path, lookup: &dyn Fn(&str) -> Option<String>) -> Result<FluentBitConfig, ConfigErrors> {
    let mut parser = Parser::new(lookup);
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
