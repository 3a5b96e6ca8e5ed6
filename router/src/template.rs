//! Object key templates: `logs/{ecs_cluster}/{ecs_task_id}/%Y/%m/%d/%H/%M/`.
//!
//! `{field}` takes a record field (dotted paths reach into objects, e.g.
//! `{kubernetes.pod_name}`), `%..` is strftime of the record's event time in
//! UTC. Why values are sanitized: a field comes from log data, and a value
//! such as `../../etc` must never choose where a file is written or which S3
//! prefix an object lands in. Why the time part is cached: consecutive records
//! almost always share their second, and formatting dates is the costly part.

use std::fmt::Write as _;

use chrono::format::Item;
use thiserror::Error;

use crate::event::Batch;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("unclosed `{{` in template `{0}`")]
    Unclosed(String),
    #[error("unmatched `}}` in template `{0}`")]
    Unmatched(String),
    #[error("empty or invalid field name `{{{1}}}` in template `{0}`")]
    BadField(String, String),
    #[error("invalid strftime format `{1}` in template `{0}`")]
    BadTime(String, String),
}

#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    Field(String),
    /// `{tag[n]}`: part `n` (from 0) of the tag split on `.`.
    TagNth(usize),
    Time(Vec<Item<'static>>),
}

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// Value used when a record lacks a template's field.
pub const MISSING: &str = "unknown";

impl Template {
    pub fn parse(s: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = s.char_indices().peekable();
        while let Some((_, c)) = chars.next() {
            match c {
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for (_, c) in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(TemplateError::Unclosed(s.to_string()));
                    }
                    if let Some(n) = name.strip_prefix("tag[").and_then(|r| r.strip_suffix(']')) {
                        let n = n
                            .parse()
                            .map_err(|_| TemplateError::BadField(s.to_string(), name.clone()))?;
                        push_lit(&mut parts, &mut lit, s)?;
                        parts.push(Part::TagNth(n));
                        continue;
                    }
                    let valid = !name.is_empty()
                        && !name.starts_with('.')
                        && !name.ends_with('.')
                        && !name.contains("..")
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'));
                    if !valid {
                        return Err(TemplateError::BadField(s.to_string(), name));
                    }
                    push_lit(&mut parts, &mut lit, s)?;
                    parts.push(Part::Field(name));
                }
                '}' => return Err(TemplateError::Unmatched(s.to_string())),
                c => lit.push(c),
            }
        }
        push_lit(&mut parts, &mut lit, s)?;
        Ok(Template {
            source: s.to_string(),
            parts,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True when rendering needs no record field (only the time).
    pub fn is_time_only(&self) -> bool {
        !self.parts.iter().any(|p| matches!(p, Part::Field(_) | Part::TagNth(_)))
    }

    /// Field paths the template reads.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(f) => Some(f.as_str()),
            Part::TagNth(_) => Some("tag"),
            _ => None,
        })
    }
}

fn push_lit(parts: &mut Vec<Part>, lit: &mut String, src: &str) -> Result<(), TemplateError> {
    if lit.is_empty() {
        return Ok(());
    }
    let text = std::mem::take(lit);
    if text.contains('%') {
        let items = chrono::format::StrftimeItems::new(&text)
            .parse_to_owned()
            .map_err(|_| TemplateError::BadTime(src.to_string(), text.clone()))?;
        if items.iter().any(|i| matches!(i, Item::Error)) {
            return Err(TemplateError::BadTime(src.to_string(), text));
        }
        parts.push(Part::Time(items));
    } else {
        parts.push(Part::Lit(text));
    }
    Ok(())
}

/// Renders a template for records, caching the time parts per second.
#[derive(Debug)]
pub struct Renderer {
    template: Template,
    cached_sec: Option<i64>,
    cached_time: Vec<String>,
    /// Key bits of the template's top-level fields.
    field_mask: u64,
    /// Within one batch, records that carry none of the template's fields
    /// take them from the batch's shared fragments: the result only changes
    /// with the second. `(second, rendered)` of the last such record.
    batch_cache: Option<(i64, String)>,
}

impl Renderer {
    pub fn new(template: Template) -> Self {
        let field_mask = template
            .fields()
            .map(|f| crate::sources::file::parse::key_bit(f.split('.').next().unwrap_or(f).as_bytes()))
            .fold(0, |m, b| m | b);
        Renderer {
            template,
            cached_sec: None,
            cached_time: Vec::new(),
            field_mask,
            batch_cache: None,
        }
    }

    /// Call before rendering the records of a new batch.
    pub fn begin_batch(&mut self) {
        self.batch_cache = None;
    }

    pub fn template(&self) -> &Template {
        &self.template
    }

    /// Renders for record `i` of `batch` into `out` (cleared first). Call
    /// [`Renderer::begin_batch`] when `batch` changes.
    pub fn render(&mut self, batch: &Batch, i: usize, out: &mut String) {
        let ts = batch.ts_ms(i);
        let sec = ts.div_euclid(1000);
        let from_batch = batch.records.meta[i].key_mask & self.field_mask == 0;
        if from_batch
            && let Some((s, cached)) = &self.batch_cache
            && *s == sec
        {
            out.clear();
            out.push_str(cached);
            return;
        }
        self.render_with(ts, |path| batch.lookup(i, path).map(|v| v.into_owned()), out);
        if from_batch {
            match &mut self.batch_cache {
                Some((s, cached)) => {
                    *s = sec;
                    cached.clear();
                    cached.push_str(out);
                }
                None => self.batch_cache = Some((sec, out.clone())),
            }
        }
    }

    /// Renders with an explicit time and field lookup.
    pub fn render_with(&mut self, ts_ms: i64, lookup: impl Fn(&str) -> Option<String>, out: &mut String) {
        out.clear();
        let sec = ts_ms.div_euclid(1000);
        if self.cached_sec != Some(sec) {
            self.cached_time.clear();
            let t = chrono::DateTime::from_timestamp(sec, 0).unwrap_or_default();
            for p in &self.template.parts {
                if let Part::Time(items) = p {
                    let mut s = String::new();
                    let _ = write!(s, "{}", t.format_with_items(items.iter()));
                    self.cached_time.push(s);
                }
            }
            self.cached_sec = Some(sec);
        }
        let mut t = 0;
        for p in &self.template.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Time(_) => {
                    if let Some(s) = self.cached_time.get(t) {
                        out.push_str(s);
                    }
                    t += 1;
                }
                Part::Field(f) => match lookup(f) {
                    Some(v) => push_sanitized(out, &v),
                    None => out.push_str(MISSING),
                },
                // Out of range: nothing, as Fluent Bit's record accessor.
                Part::TagNth(n) => match lookup("tag") {
                    Some(v) => {
                        if let Some(part) = v.split('.').nth(*n) {
                            push_sanitized(out, part);
                        }
                    }
                    None => out.push_str(MISSING),
                },
            }
        }
    }
}

/// Appends a field value that is safe as one path segment or key part.
fn push_sanitized(out: &mut String, v: &str) {
    if v.is_empty() || v == "." || v == ".." {
        out.push('_');
        return;
    }
    for c in v.chars().take(256) {
        if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=' | ':' | '@' | '+') {
            out.push(c);
        } else {
            out.push('_');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn render(t: &str, ts: i64, fields: &[(&str, &str)]) -> String {
        let mut r = Renderer::new(Template::parse(t).unwrap());
        let mut out = String::new();
        r.render_with(
            ts,
            |k| fields.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()),
            &mut out,
        );
        out
    }

    #[test]
    fn renders_fields_and_time() {
        // 2026-11-25T21:15:47.123Z
        let ts = 1_795_641_347_123;
        assert_eq!(
            render(
                "logs/{ecs_cluster}/{kubernetes.pod_name}/%Y/%m/%d/%H/%M/",
                ts,
                &[("ecs_cluster", "prod"), ("kubernetes.pod_name", "web-1")]
            ),
            "logs/prod/web-1/2026/11/25/21/15/"
        );
        assert_eq!(render("{missing}/x", ts, &[]), "unknown/x");
        assert_eq!(render("{a}/", ts, &[("a", "../../etc/passwd")]), ".._.._etc_passwd/");
        assert_eq!(render("{a}/", ts, &[("a", "..")]), "_/");
    }

    #[test]
    fn rejects_bad_templates() {
        assert!(matches!(Template::parse("a/{b"), Err(TemplateError::Unclosed(_))));
        assert!(matches!(Template::parse("a/}"), Err(TemplateError::Unmatched(_))));
        assert!(matches!(Template::parse("a/{}"), Err(TemplateError::BadField(..))));
        assert!(matches!(Template::parse("a/{a b}"), Err(TemplateError::BadField(..))));
        assert!(matches!(Template::parse("%Y/%Q/"), Err(TemplateError::BadTime(..))));
        assert!(Template::parse("plain").unwrap().is_time_only());
    }

    #[test]
    fn tag_parts_split_on_dots() {
        let tag = [("tag", "app-firelens.web.prod")];
        assert_eq!(
            render("{tag[0]}/{tag[2]}/{tag}/", 0, &tag),
            "app-firelens/prod/app-firelens.web.prod/"
        );
        // Out of range renders nothing; an empty part is `_` like any empty value.
        assert_eq!(render("a-{tag[3]}-b", 0, &tag), "a--b");
        assert_eq!(render("{tag[1]}", 0, &[("tag", "x..y")]), "_");
        assert_eq!(render("{tag[0]}", 0, &[]), "unknown");
        let t = Template::parse("{tag[1]}").unwrap();
        assert!(!t.is_time_only());
        assert_eq!(t.fields().collect::<Vec<_>>(), ["tag"]);
        for bad in ["{tag[]}", "{tag[-1]}", "{tag[x]}", "{tag[1}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        /// Whatever a field holds, the rendered segment has no path separator
        /// and no `..` component.
        #[test]
        fn field_values_cannot_escape(v in ".*") {
            let out = render("{f}", 0, &[("f", &v)]);
            prop_assert!(!out.contains('/'));
            prop_assert!(out != ".." && out != "." && !out.is_empty());
        }
    }
}
