//! Config diagnostics: where a key sits in the file and how an error names
//! it. Every component's `validate(ctx, base)` reports through [`Ctx`] with
//! a key path of [`Seg`]s, and reads its table with [`deserialize_at`];
//! configured secrets are [`Secret`]s.
//!
//! Why a module of its own: `config/` builds the typed config out of every
//! component's config type, so it depends on all of them. The components
//! depend on this leaf instead, which imports nothing from the rest of the
//! crate: the dependencies point one way (`config` -> components ->
//! `confdiag`), with no circle.

pub mod locate;
mod secret;

use serde::de::DeserializeOwned;

pub use locate::Seg;
pub use secret::Secret;

/// Collects errors with paths while loading; positions are added at the end.
pub struct Ctx<'a> {
    /// Read and filled by the loader in `config/`.
    pub(crate) errors: Vec<(Vec<Seg>, String)>,
    /// `${VAR}` values, for the loader's expansion.
    pub(crate) lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Ctx<'a> {
    pub fn error(&mut self, path: &[Seg], message: impl Into<String>) {
        self.errors.push((path.to_vec(), message.into()));
    }

    /// A context for unit tests of one component's `validate`.
    #[cfg(test)]
    pub(crate) fn for_tests(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Ctx {
            errors: Vec::new(),
            lookup,
        }
    }

    /// The errors so far as `` `path`: message `` (tests).
    #[cfg(test)]
    pub(crate) fn messages(&self) -> Vec<String> {
        self.errors
            .iter()
            .map(|(p, m)| format!("`{}`: {m}", path_string(p)))
            .collect()
    }
}

/// Builds the path of a component field: `key(&["sinks", "x", "bucket"])`.
pub fn path(parts: &[&str]) -> Vec<Seg> {
    parts.iter().map(|p| Seg::Key((*p).to_string())).collect()
}

/// The path of key `k` below `base` (a component's table): what a
/// `validate` names in its errors.
pub fn key(base: &[Seg], k: &str) -> Vec<Seg> {
    let mut p = Vec::with_capacity(base.len() + 1);
    p.extend_from_slice(base);
    p.push(Seg::Key(k.into()));
    p
}

/// `sinks.archive.inputs[0]`, as errors name a key.
pub(crate) fn path_string(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// A component's config: deserialized at `base`, then checked by
/// `validate` (which reports what serde cannot); `None` after any error.
pub fn checked<T: DeserializeOwned>(
    ctx: &mut Ctx<'_>,
    base: &[Seg],
    value: toml::Value,
    validate: impl FnOnce(&T, &mut Ctx<'_>, &[Seg]) -> bool,
) -> Option<T> {
    let c: T = deserialize_at(ctx, base, value)?;
    validate(&c, ctx, base).then_some(c)
}

/// Deserializes `value` into `T`, reporting the failing field's path.
pub fn deserialize_at<T: DeserializeOwned>(ctx: &mut Ctx<'_>, base: &[Seg], value: toml::Value) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(err) => {
            let mut p = base.to_vec();
            for seg in err.path().iter() {
                match seg {
                    serde_path_to_error::Segment::Seq { index } => p.push(Seg::Index(*index)),
                    serde_path_to_error::Segment::Map { key } => p.push(Seg::Key(key.clone())),
                    serde_path_to_error::Segment::Enum { variant } => p.push(Seg::Key(variant.clone())),
                    serde_path_to_error::Segment::Unknown => {}
                }
            }
            let full = err.into_inner().to_string();
            // toml appends "in `key`" context on further lines; the path says it.
            let message = full.lines().next().unwrap_or_default().trim().to_string();
            // serde names an unknown field only in its message.
            if let Some(rest) = message.strip_prefix("unknown field `")
                && let Some(end) = rest.find('`')
            {
                let key = Seg::Key(rest[..end].to_string());
                if p.last() != Some(&key) {
                    p.push(key);
                }
            }
            ctx.errors.push((p, message));
            None
        }
    }
}
