//! `type = "redact"`: mask or hash personal data and secrets in string values.
//!
//! Why a pre-check on the raw text first: nearly every record holds nothing
//! to redact, and parsing each one to look would cost more than the rest of
//! the pipeline. One `RegexSet` pass over the record's JSON text, with loose
//! forms of every detector, tells which detectors can match at all; a record
//! none can match is passed on untouched (its bytes, its memory permit). The
//! loose forms match a superset of what the exact detectors find in decoded
//! strings: the characters the built-in detectors look for are never escaped
//! by a JSON encoder, except through `\u` escapes, so a record holding a `\u`
//! escape is always checked in full (and one holding any backslash, for
//! custom patterns).
//!
//! Why a string-value scanner instead of `serde_json::Value`: a record that
//! does need rewriting keeps its key order and every byte that is not a
//! redacted string. [`rewrite_string_values`] walks the text, decodes only the
//! string values (never keys), and re-encodes a value only when it changed.
//!
//! Enrichment fields (`Batch::fields`) and the batch's tag are never
//! redacted: they are the platform's metadata (task, instance, pod), not the
//! application's data, and they are shared by every record of a batch.
//! Numbers are not strings: a card number logged as a JSON number is not
//! found. Each redaction is counted by detector
//! (`logferry_redactions_total{component,detector}`); record contents are
//! never logged.
//!
//! Length: about 770 lines of code and 250 of unit tests, which exercise
//! its private items and so stay beside them (over the ~1,000-line mark
//! only with its tests).

use std::borrow::Cow;
use std::sync::Arc;

use regex::Regex;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::confdiag::{Ctx, Seg};
use crate::event::{Batch, Records};
use crate::metrics::Metrics;
use crate::topology::Fanout;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactConfig {
    /// Built-in detectors to run (default: all four).
    #[serde(default = "default_detectors")]
    pub detectors: Vec<Detector>,
    /// Extra detectors: `{ name, pattern }` regular expressions.
    #[serde(default)]
    pub custom: Vec<CustomDetector>,
    /// Dotted paths of the fields to redact; a path covers every string
    /// nested below it. Default: every string value of the record.
    #[serde(default)]
    pub fields: Vec<String>,
    /// `mask` (default) or `hash`.
    #[serde(default)]
    pub mode: Mode,
    /// Replacement text in `mask` mode (default `[REDACTED:<detector>]`).
    pub mask: Option<String>,
    /// Secret prefix of the hashed text in `hash` mode (required there).
    pub salt: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    Email,
    CreditCard,
    AwsAccessKeyId,
    Ipv4,
}

impl Detector {
    pub fn name(self) -> &'static str {
        match self {
            Detector::Email => "email",
            Detector::CreditCard => "credit_card",
            Detector::AwsAccessKeyId => "aws_access_key_id",
            Detector::Ipv4 => "ipv4",
        }
    }
}

fn default_detectors() -> Vec<Detector> {
    vec![
        Detector::Email,
        Detector::CreditCard,
        Detector::AwsAccessKeyId,
        Detector::Ipv4,
    ]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomDetector {
    pub name: String,
    #[serde(with = "regex_serde")]
    pub pattern: Regex,
}

mod regex_serde {
    use regex::Regex;
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Regex, D::Error> {
        let s = String::deserialize(d)?;
        Regex::new(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Mask,
    Hash,
}

impl RedactConfig {
    pub fn validate(&self, ctx: &mut Ctx<'_>, base: &[Seg]) -> bool {
        let at = |k: &str| crate::confdiag::key(base, k);
        let mut ok = true;
        if self.detectors.is_empty() && self.custom.is_empty() {
            ctx.error(
                &at("detectors"),
                "no detector: name at least one, or a `custom` pattern",
            );
            ok = false;
        }
        let mut names: Vec<&str> = Vec::new();
        for d in &self.detectors {
            if names.contains(&d.name()) {
                ctx.error(&at("detectors"), format!("`{}` is listed twice", d.name()));
                ok = false;
            }
            names.push(d.name());
        }
        for (i, c) in self.custom.iter().enumerate() {
            let mut p = at("custom");
            p.push(Seg::Index(i));
            p.push(Seg::Key("name".into()));
            let builtin = default_detectors().iter().any(|d| d.name() == c.name);
            if c.name.is_empty() || !c.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                ctx.error(&p, "must be a non-empty name of letters, digits and `_`");
                ok = false;
            } else if names.contains(&c.name.as_str()) || builtin {
                ctx.error(&p, format!("`{}` is already a detector name", c.name));
                ok = false;
            }
            names.push(&c.name);
        }
        if self
            .fields
            .iter()
            .any(|f| f.is_empty() || f.split('.').any(str::is_empty))
        {
            ctx.error(&at("fields"), "a field path must not be empty or hold an empty segment");
            ok = false;
        }
        match self.mode {
            Mode::Hash => {
                if self.salt.as_deref().is_none_or(str::is_empty) {
                    ctx.error(
                        &at("salt"),
                        "`mode = \"hash\"` needs a non-empty `salt` (e.g. \"${REDACT_SALT}\")",
                    );
                    ok = false;
                }
                if self.mask.is_some() {
                    ctx.error(&at("mask"), "only applies with `mode = \"mask\"`");
                    ok = false;
                }
            }
            Mode::Mask => {
                if self.salt.is_some() {
                    ctx.error(&at("salt"), "only applies with `mode = \"hash\"`");
                    ok = false;
                }
            }
        }
        if ok && let Err(e) = Redactor::new(self) {
            ctx.error(&at("custom"), format!("the patterns cannot be compiled together: {e}"));
            ok = false;
        }
        ok
    }

    pub fn describe(&self) -> String {
        let mut names: Vec<&str> = self.detectors.iter().map(|d| d.name()).collect();
        names.extend(self.custom.iter().map(|c| c.name.as_str()));
        format!(
            "redact: {} ({}) in {}",
            names.join(", "),
            match self.mode {
                Mode::Mask => "mask",
                Mode::Hash => "hash",
            },
            if self.fields.is_empty() {
                "every string field".to_string()
            } else {
                self.fields.join(", ")
            }
        )
    }
}

/// How one detector finds its matches in a decoded string.
#[derive(Debug, Clone)]
enum Finder {
    /// Matches as found.
    Plain(Regex),
    /// Maximal digit runs (single spaces or dashes between digits), checked
    /// for length, issuer digit and Luhn.
    Card(Regex),
    /// Dotted quads, checked for octet range and context.
    Ipv4(Regex),
}

#[derive(Debug, Clone)]
struct Det {
    name: String,
    finder: Finder,
    /// Custom patterns can match text a JSON encoder escapes.
    custom: bool,
    /// Replacement in mask mode.
    mask: String,
}

/// A compiled `redact` configuration.
#[derive(Debug, Clone)]
pub struct Redactor {
    /// Loose forms of the detectors, same order, over raw JSON text.
    prefilter: regex::bytes::RegexSet,
    dets: Vec<Det>,
    /// Selected field paths, split on dots; empty: every string.
    fields: Vec<Vec<String>>,
    /// `Some(salt)` in hash mode.
    salt: Option<String>,
}

/// A match in a decoded string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
    det: usize,
}

impl Redactor {
    pub fn new(cfg: &RedactConfig) -> Result<Redactor, regex::Error> {
        let mut loose = Vec::new();
        let mut dets = Vec::new();
        let mask = |name: &str| cfg.mask.clone().unwrap_or_else(|| format!("[REDACTED:{name}]"));
        for d in &cfg.detectors {
            let (pre, finder) = builtin(*d)?;
            loose.push(pre);
            dets.push(Det {
                name: d.name().to_string(),
                finder,
                custom: false,
                mask: mask(d.name()),
            });
        }
        for c in &cfg.custom {
            loose.push(c.pattern.as_str().to_string());
            dets.push(Det {
                name: c.name.clone(),
                finder: Finder::Plain(c.pattern.clone()),
                custom: true,
                mask: mask(&c.name),
            });
        }
        Ok(Redactor {
            prefilter: regex::bytes::RegexSet::new(&loose)?,
            dets,
            fields: cfg
                .fields
                .iter()
                .map(|f| f.split('.').map(str::to_string).collect())
                .collect(),
            salt: match cfg.mode {
                Mode::Hash => Some(cfg.salt.clone().unwrap_or_default()),
                Mode::Mask => None,
            },
        })
    }

    /// Detector names, in the order of the counts [`Redactor::redact_into`]
    /// reports.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.dets.iter().map(|d| d.name.as_str())
    }

    /// Redacts the JSON object text `text`. When something was redacted,
    /// appends the new text to `out`, adds the redactions per detector to
    /// `counts` and returns true; otherwise leaves `out` as it was.
    /// `Err` when the text is not a JSON object (nothing appended).
    pub fn redact_into(&self, text: &[u8], out: &mut Vec<u8>, counts: &mut [u64]) -> Result<bool, Malformed> {
        let backslash = memchr::memchr(b'\\', text).is_some();
        // Most records hold no candidate: `is_match` stops at the first hit
        // and is cheaper than asking which patterns matched.
        if !backslash && !self.prefilter.is_match(text) {
            return Ok(false);
        }
        let pre = self.prefilter.matches(text);
        let unicode_escape = backslash && memchr::memmem::find(text, b"\\u").is_some();
        let active: Vec<usize> = (0..self.dets.len())
            .filter(|&d| pre.matched(d) || unicode_escape || (backslash && self.dets[d].custom))
            .collect();
        if active.is_empty() {
            return Ok(false);
        }
        let start = out.len();
        let mut spans = Vec::new();
        let result = rewrite_string_values(text, out, |path, s| {
            if !self.selected(path) {
                return None;
            }
            spans.clear();
            self.find(s, &active, &mut spans);
            (!spans.is_empty()).then(|| self.replace(s, &spans, counts))
        });
        match result {
            Ok(true) => Ok(true),
            Ok(false) => {
                out.truncate(start);
                Ok(false)
            }
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// Is a string at `path` one of the configured fields (or below one)?
    fn selected(&self, path: &[Cow<'_, str>]) -> bool {
        self.fields.is_empty()
            || self
                .fields
                .iter()
                .any(|f| f.len() <= path.len() && f.iter().zip(path).all(|(a, b)| a == b))
    }

    /// Non-overlapping matches of the `active` detectors in `s`, by start.
    fn find(&self, s: &str, active: &[usize], spans: &mut Vec<Span>) {
        for &d in active {
            let det = &self.dets[d];
            match &det.finder {
                Finder::Plain(re) => spans.extend(re.find_iter(s).map(|m| Span {
                    start: m.start(),
                    end: m.end(),
                    det: d,
                })),
                Finder::Card(re) => {
                    for m in re.find_iter(s) {
                        card_spans(s, m.start(), m.end(), d, spans);
                    }
                }
                Finder::Ipv4(re) => {
                    spans.extend(
                        re.find_iter(s)
                            .filter(|m| ipv4_ok(s, m.start(), m.end()))
                            .map(|m| Span {
                                start: m.start(),
                                end: m.end(),
                                det: d,
                            }),
                    )
                }
            }
        }
        // Earliest first, the longer of two at one place; drop overlaps.
        spans.sort_by_key(|s| (s.start, std::cmp::Reverse(s.end)));
        let mut last_end = 0;
        spans.retain(|s| {
            let keep = s.start >= last_end && s.end > s.start;
            if keep {
                last_end = s.end;
            }
            keep
        });
    }

    fn replace(&self, s: &str, spans: &[Span], counts: &mut [u64]) -> String {
        let mut out = String::with_capacity(s.len() + 16);
        let mut at = 0;
        for sp in spans {
            out.push_str(s.get(at..sp.start).unwrap_or_default());
            let det = &self.dets[sp.det];
            match &self.salt {
                None => out.push_str(&det.mask),
                Some(salt) => out.push_str(&hash(salt, s.get(sp.start..sp.end).unwrap_or_default())),
            }
            if let Some(c) = counts.get_mut(sp.det) {
                *c += 1;
            }
            at = sp.end;
        }
        out.push_str(s.get(at..).unwrap_or_default());
        out
    }
}

/// The loose raw-text form and the finder of a built-in detector.
fn builtin(d: Detector) -> Result<(String, Finder), regex::Error> {
    Ok(match d {
        Detector::Email => (
            r"[A-Za-z0-9._%+-]@[A-Za-z0-9]".to_string(),
            Finder::Plain(Regex::new(
                r"[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,63}\b",
            )?),
        ),
        Detector::CreditCard => (
            r"[0-9](?:[ -]?[0-9]){12}".to_string(),
            Finder::Card(Regex::new(r"[0-9](?:[ -]?[0-9])*")?),
        ),
        Detector::AwsAccessKeyId => {
            let re = r"(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z2-7]{16}";
            (re.to_string(), Finder::Plain(Regex::new(&format!(r"\b{re}\b"))?))
        }
        Detector::Ipv4 => (
            r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}".to_string(),
            Finder::Ipv4(Regex::new(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")?),
        ),
    })
}

/// `sha256:` and the first 16 hex digits (64 bits) of SHA-256(salt || value).
pub fn hash(salt: &str, value: &str) -> String {
    let digest = Sha256::new()
        .chain_update(salt.as_bytes())
        .chain_update(value.as_bytes())
        .finalize();
    format!("sha256:{}", hex::encode(&digest[..8]))
}

/// Is the dotted quad `s[start..end]` an address: octets 0-255, and not part
/// of a longer dotted number or a word (`1.2.3.4.5`, `v1.2.3.4`)?
fn ipv4_ok(s: &str, start: usize, end: usize) -> bool {
    let b = s.as_bytes();
    let before = start.checked_sub(1).and_then(|i| b.get(i)).copied();
    let after = b.get(end).copied();
    let after2 = b.get(end + 1).copied();
    if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_') {
        return false;
    }
    if after.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        || (after == Some(b'.') && after2.is_some_and(|c| c.is_ascii_digit()))
    {
        return false;
    }
    s.get(start..end)
        .is_some_and(|q| q.split('.').all(|o| o.parse::<u16>().is_ok_and(|n| n <= 255)))
}

/// Card numbers within the digit run `s[start..end]` (digits with single
/// spaces or dashes between them): the whole run, or else the longest runs
/// of whole digit groups, left to right, that hold 13-19 digits, start with
/// an issuer digit (2-6: timestamps and ids that start with 1 are not cards)
/// and pass the Luhn check. A run glued to letters or digits is not a card.
fn card_spans(s: &str, start: usize, end: usize, det: usize, spans: &mut Vec<Span>) {
    let b = s.as_bytes();
    let before = start.checked_sub(1).and_then(|i| b.get(i)).copied();
    let after = b.get(end).copied();
    if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'.')
        || after.is_some_and(|c| c.is_ascii_alphanumeric())
        || (after == Some(b'.') && b.get(end + 1).is_some_and(u8::is_ascii_digit))
    {
        return;
    }
    let Some(run) = s.get(start..end) else { return };
    // Digit groups as (byte offset in s, digits).
    let mut groups: Vec<(usize, &str)> = Vec::new();
    let mut at = start;
    for g in run.split([' ', '-']) {
        groups.push((at, g));
        at += g.len() + 1;
    }
    let mut i = 0;
    while i < groups.len() {
        let mut best = None;
        let mut digits = 0;
        for j in i..groups.len() {
            digits += groups[j].1.len();
            if digits > 19 {
                break;
            }
            if digits >= 13 && is_card(&groups[i..=j]) {
                best = Some(j);
            }
        }
        match best {
            Some(j) => {
                let (gs, _) = groups[i];
                let (ge, last) = groups[j];
                spans.push(Span {
                    start: gs,
                    end: ge + last.len(),
                    det,
                });
                i = j + 1;
            }
            None => i += 1,
        }
    }
}

fn is_card(groups: &[(usize, &str)]) -> bool {
    let digits = || groups.iter().flat_map(|(_, g)| g.bytes()).map(|c| u32::from(c - b'0'));
    if !digits().next().is_some_and(|d| (2..=6).contains(&d)) {
        return false;
    }
    luhn(digits())
}

/// The Luhn checksum over digits in reading order.
pub fn luhn(digits: impl DoubleEndedIterator<Item = u32>) -> bool {
    let sum: u32 = digits
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The text is not a well-formed JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("record is not a well-formed JSON object")]
pub struct Malformed;

/// Copies the JSON text `text` to `out`, replacing each string value (never a
/// key) for which `f(path, decoded)` returns a new value; `path` is the keys
/// from the top down to the value (array positions are not in it). Returns
/// whether anything was replaced. Only strings are decoded; everything else
/// is copied byte for byte.
pub(crate) fn rewrite_string_values<'a, F>(text: &'a [u8], out: &mut Vec<u8>, mut f: F) -> Result<bool, Malformed>
where
    F: FnMut(&[Cow<'a, str>], &str) -> Option<String>,
{
    enum Frame {
        Obj { key_next: bool },
        Arr,
    }
    let mut frames: Vec<Frame> = Vec::new();
    let mut path: Vec<Cow<'a, str>> = Vec::new();
    let mut changed = false;
    let mut copied = 0;
    let mut i = 0;
    // A value ended: leave its key.
    let done = |frames: &[Frame], path: &mut Vec<Cow<'a, str>>| {
        if matches!(frames.last(), Some(Frame::Obj { .. })) {
            path.pop();
        }
    };
    let start = out.len();
    // The top-level object has been closed: only whitespace may follow.
    let mut closed = false;
    while let Some(&b) = text.get(i) {
        if frames.is_empty() && !matches!(b, b' ' | b'\t' | b'\n' | b'\r') && (closed || b != b'{') {
            return Err(malformed(out, start));
        }
        match b {
            b'{' => {
                frames.push(Frame::Obj { key_next: true });
                i += 1;
            }
            b'[' => {
                frames.push(Frame::Arr);
                i += 1;
            }
            b'}' | b']' => {
                match (frames.pop(), b) {
                    (Some(Frame::Obj { .. }), b'}') | (Some(Frame::Arr), b']') => {}
                    _ => return Err(malformed(out, start)),
                }
                i += 1;
                closed = frames.is_empty();
                done(&frames, &mut path);
            }
            b',' | b':' => {
                if let Some(Frame::Obj { key_next }) = frames.last_mut() {
                    *key_next = b == b',';
                }
                i += 1;
            }
            b'"' => {
                let Some(end) = string_end(text, i) else {
                    return Err(malformed(out, start));
                };
                let raw = &text[i..end];
                let Some(s) = decode(raw) else {
                    return Err(malformed(out, start));
                };
                if let Some(Frame::Obj { key_next: true }) = frames.last() {
                    path.push(s);
                } else {
                    if let Some(new) = f(&path, &s) {
                        out.extend_from_slice(&text[copied..i]);
                        serde_json::to_writer(&mut *out, &new).map_err(|_| Malformed)?;
                        copied = end;
                        changed = true;
                    }
                    done(&frames, &mut path);
                }
                i = end;
            }
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            _ => {
                while text
                    .get(i)
                    .is_some_and(|c| !matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                {
                    i += 1;
                }
                done(&frames, &mut path);
            }
        }
    }
    if !frames.is_empty() || !closed {
        return Err(malformed(out, start));
    }
    out.extend_from_slice(&text[copied..]);
    Ok(changed)
}

fn malformed(out: &mut Vec<u8>, start: usize) -> Malformed {
    out.truncate(start);
    Malformed
}

/// Index just past the closing quote of the string starting at `open`.
fn string_end(text: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    loop {
        let rel = memchr::memchr2(b'"', b'\\', text.get(i..)?)?;
        let at = i + rel;
        if text.get(at) == Some(&b'\\') {
            i = at + 2;
        } else {
            return Some(at + 1);
        }
    }
}

/// The decoded content of the quoted JSON string `raw`.
fn decode(raw: &[u8]) -> Option<Cow<'_, str>> {
    let inner = raw.get(1..raw.len().checked_sub(1)?)?;
    if memchr::memchr(b'\\', inner).is_none() {
        return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
    }
    serde_json::from_slice::<String>(raw).ok().map(Cow::Owned)
}

pub async fn run(
    id: String,
    cfg: RedactConfig,
    mut input: mpsc::Receiver<Batch>,
    output: Fanout,
    metrics: Arc<Metrics>,
) {
    let m = metrics.component(&id, "redact");
    let redactor = Redactor::new(&cfg).expect("patterns were compiled by validate");
    let counters: Vec<_> = cfg
        .detectors
        .iter()
        .map(|d| m.redactions(d.name()))
        .chain(cfg.custom.iter().map(|c| m.redactions(&c.name)))
        .collect();
    let malformed = m.line_issue("redact_malformed");
    let mut counts = vec![0u64; counters.len()];
    let mut scratch = Vec::new();
    let mut rewrites: Vec<(usize, usize, usize)> = Vec::new();
    while let Some(batch) = input.recv().await {
        let n = batch.len();
        m.received_events.inc_by(n as u64);
        m.received_bytes.inc_by(batch.bytes());
        scratch.clear();
        rewrites.clear();
        for i in 0..n {
            let start = scratch.len();
            match redactor.redact_into(batch.records.text(i), &mut scratch, &mut counts) {
                Ok(true) => rewrites.push((i, start, scratch.len())),
                Ok(false) => {}
                Err(Malformed) => {
                    // Parsers only emit JSON objects; if one is not, it
                    // passes unchanged and is counted.
                    malformed.inc();
                    tracing::warn!(component = %id, "record is not a JSON object; passed unredacted");
                }
            }
        }
        for (c, n) in counters.iter().zip(counts.iter_mut()) {
            if *n > 0 {
                c.inc_by(*n);
                *n = 0;
            }
        }
        let batch = if rewrites.is_empty() {
            batch
        } else {
            replace_records(batch, &rewrites, &scratch)
        };
        let bytes = batch.bytes();
        if output.send(batch).await.is_err() {
            break;
        }
        m.sent_events.inc_by(n as u64);
        m.sent_bytes.inc_by(bytes);
    }
}

/// The batch with records `i` replaced by `scratch[s..e]` for each
/// `(i, s, e)` of `rewrites` (ascending `i`); same fields, tag and ack, and
/// the memory permit of an owned batch.
fn replace_records(batch: Batch, rewrites: &[(usize, usize, usize)], scratch: &[u8]) -> Batch {
    let Batch {
        records,
        fields,
        ack,
        tag,
    } = batch;
    // An owned batch hands its permit on; a shared one is copied without.
    let (old, permit) = match Arc::try_unwrap(records) {
        Ok(mut owned) => {
            let permit = owned.permit.take();
            (Arc::new(owned), permit)
        }
        Err(shared) => (shared, None),
    };
    let extra: usize = rewrites.iter().map(|(_, s, e)| e - s).sum();
    let mut r = Records {
        buf: Vec::with_capacity(old.buf.len() + extra),
        meta: Vec::with_capacity(old.len()),
        permit,
    };
    let mut next = rewrites.iter().peekable();
    for i in 0..old.len() {
        let start = r.buf.len();
        match next.peek() {
            Some(&&(at, s, e)) if at == i => {
                r.buf.extend_from_slice(&scratch[s..e]);
                next.next();
            }
            _ => r.buf.extend_from_slice(old.text(i)),
        }
        let m = old.meta[i];
        r.push_like(start, &m);
    }
    Batch {
        records: Arc::new(r),
        fields,
        ack,
        tag,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn redactor(toml_text: &str) -> Redactor {
        let cfg: RedactConfig = toml::from_str(toml_text).unwrap();
        Redactor::new(&cfg).unwrap()
    }

    /// The record after redaction (`None`: passed untouched) and the counts.
    fn run_one(r: &Redactor, record: &str) -> (Option<Value>, Vec<u64>) {
        let mut out = Vec::new();
        let mut counts = vec![0; r.dets.len()];
        let changed = r.redact_into(record.as_bytes(), &mut out, &mut counts).unwrap();
        assert_eq!(changed, !out.is_empty());
        (changed.then(|| serde_json::from_slice(&out).unwrap()), counts)
    }

    fn msg(r: &Redactor, text: &str) -> String {
        let rec = serde_json::to_string(&json!({ "msg": text })).unwrap();
        match run_one(r, &rec).0 {
            Some(v) => v["msg"].as_str().unwrap().to_string(),
            None => text.to_string(),
        }
    }

    #[test]
    fn email() {
        let r = redactor("detectors = [\"email\"]");
        assert_eq!(
            msg(&r, "mail jane.doe+x@mail.example.co.uk now"),
            "mail [REDACTED:email] now"
        );
        assert_eq!(
            msg(&r, "<a@b.io>, c_d@e-f.org."),
            "<[REDACTED:email]>, [REDACTED:email]."
        );
        for miss in ["user@localhost", "@handle", "a@b", "x@1.2", "name at example.com"] {
            assert_eq!(msg(&r, miss), miss);
        }
    }

    #[test]
    fn credit_cards_are_luhn_checked_and_near_misses_untouched() {
        let r = redactor("detectors = [\"credit_card\"]");
        for card in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "5500-0000-0000-0004",
            "378282246310005",
            "6011 0009 9013 9424",
            "4222222222222",
        ] {
            assert_eq!(
                msg(&r, &format!("card {card}.")),
                "card [REDACTED:credit_card].",
                "{card}"
            );
        }
        for miss in [
            "4111111111111112",        // Luhn fails
            "4111 1111 1111 1112",     // Luhn fails, grouped
            "411111111111",            // 12 digits
            "1700000000000",           // epoch ms, passes Luhn but starts with 1
            "order 17000000000007",    // id starting with 1
            "2024-01-15 10:22:33.123", // a timestamp
            "x4111111111111111",       // glued to a word
            "41111111111111111111111", // too long
            "1.4111111111111111",      // part of a decimal
        ] {
            assert_eq!(msg(&r, miss), miss, "{miss}");
        }
        assert_eq!(
            msg(&r, "ref 12 4111 1111 1111 1111 ok"),
            "ref 12 [REDACTED:credit_card] ok",
            "leading digit groups that break the check are left out"
        );
    }

    #[test]
    fn luhn_known_values() {
        let d = |s: &str| s.bytes().map(|b| u32::from(b - b'0')).collect::<Vec<_>>().into_iter();
        assert!(luhn(d("79927398713")));
        assert!(!luhn(d("79927398710")));
        assert!(luhn(d("4111111111111111")));
    }

    #[test]
    fn aws_access_key_ids() {
        let r = redactor("detectors = [\"aws_access_key_id\"]");
        assert_eq!(
            msg(&r, "key=AKIAIOSFODNN7EXAMPLE;"),
            "key=[REDACTED:aws_access_key_id];"
        );
        assert_eq!(msg(&r, "ASIAY34FZKBOKMUTVV7A"), "[REDACTED:aws_access_key_id]");
        for miss in [
            "AKIAIOSFODNN7EXAMPLEX", // longer word
            "XAKIAIOSFODNN7EXAMPLE", // inside a word
            "AKIAIOSFODNN7EXAMPL",   // 15 after the prefix
            "AKIAIOSFODNN0EXAMPLE",  // 0 is not base32
            "ABCDIOSFODNN7EXAMPLE",  // unknown prefix
        ] {
            assert_eq!(msg(&r, miss), miss, "{miss}");
        }
    }

    #[test]
    fn ipv4() {
        let r = redactor("detectors = [\"ipv4\"]");
        assert_eq!(
            msg(&r, "from 10.0.0.1:8080 to 255.255.255.255."),
            "from [REDACTED:ipv4]:8080 to [REDACTED:ipv4]."
        );
        assert_eq!(msg(&r, "(192.168.1.20)"), "([REDACTED:ipv4])");
        for miss in [
            "1.2.3.4.5",
            "v1.2.3.4",
            "256.1.1.1",
            "1.2.3",
            "version 10.0.0.1.2",
            "1234.1.2.3",
            "0.1.2.3a",
        ] {
            assert_eq!(msg(&r, miss), miss, "{miss}");
        }
    }

    #[test]
    fn json_escaped_values_nested_fields_and_keys() {
        let r = redactor("");
        let rec = r#"{"@timestamp":"2024-01-01T00:00:00Z","user":{"mail":"a\u0040b.io","list":["x 10.1.2.3","\"q\" 4111111111111111\n"]},"10.0.0.1":1,"n":4111111111111111}"#;
        let (out, counts) = run_one(&r, rec);
        assert_eq!(
            out.unwrap(),
            json!({"@timestamp":"2024-01-01T00:00:00Z","user":{"mail":"[REDACTED:email]","list":["x [REDACTED:ipv4]","\"q\" [REDACTED:credit_card]\n"]},"10.0.0.1":1,"n":4111111111111111u64})
        );
        assert_eq!(counts, [1, 1, 0, 1], "email, card, aws, ipv4");
        // Key order and untouched bytes are kept.
        let mut out = Vec::new();
        let rec = r#"{"z": 1, "a" : "ip 1.2.3.4",  "m":[1,2]}"#;
        assert!(r.redact_into(rec.as_bytes(), &mut out, &mut [0; 4]).unwrap());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"z": 1, "a" : "ip [REDACTED:ipv4]",  "m":[1,2]}"#
        );
    }

    #[test]
    fn records_without_candidates_are_untouched() {
        let r = redactor("");
        let (out, counts) = run_one(&r, r#"{"log":"GET /health 200 12ms","ts":1700000000000}"#);
        assert_eq!(out, None);
        assert_eq!(counts, [0; 4]);
    }

    #[test]
    fn fields_limit_where_redaction_happens() {
        let r = redactor("fields = [\"user\", \"log\"]");
        let (out, _) = run_one(&r, r#"{"log":"a@b.io","user":{"ip":"1.2.3.4"},"other":"c@d.io"}"#);
        assert_eq!(
            out.unwrap(),
            json!({"log":"[REDACTED:email]","user":{"ip":"[REDACTED:ipv4]"},"other":"c@d.io"})
        );
    }

    #[test]
    fn custom_patterns_and_masks() {
        let r = redactor(
            "detectors = []\nmask = \"***\"\ncustom = [{ name = \"token\", pattern = \"tok_[a-z0-9]{8}\" }, { name = \"tab\", pattern = \"a\\tb\" }]",
        );
        assert_eq!(msg(&r, "use tok_abcd1234 now"), "use *** now");
        assert_eq!(msg(&r, "x a\tb y"), "x *** y", "matched on the decoded string");
    }

    #[test]
    fn hash_is_stable_salted_and_joinable() {
        let r = redactor("mode = \"hash\"\nsalt = \"s1\"");
        let a = msg(&r, "from a@b.io");
        let expected = format!("from {}", hash("s1", "a@b.io"));
        assert_eq!(a, expected);
        assert!(
            a.starts_with("from sha256:") && a.len() == "from sha256:".len() + 16,
            "{a}"
        );
        assert_eq!(msg(&r, "again a@b.io").replace("again ", "from "), a);
        let other = redactor("mode = \"hash\"\nsalt = \"s2\"");
        assert_ne!(msg(&other, "from a@b.io"), a);
    }

    #[test]
    fn scanner_rejects_what_is_not_one_object() {
        for bad in ["", "[1]", "\"s\"", "{\"a\":1", "{\"a\":\"x}", "{} {}", "{\"a\":[1}"] {
            let mut out = b"keep".to_vec();
            assert_eq!(
                rewrite_string_values(bad.as_bytes(), &mut out, |_, _| None),
                Err(Malformed),
                "{bad}"
            );
            assert_eq!(out, b"keep");
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "\\PC{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("\\PC{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn upper_strings(v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(format!("<{}>", s.to_uppercase())),
            Value::Array(a) => Value::Array(a.iter().map(upper_strings).collect()),
            Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), upper_strings(v))).collect()),
            other => other.clone(),
        }
    }

    proptest! {
        /// The scanner sees exactly the string values of any object (never
        /// its keys) and leaves the rest as it was.
        #[test]
        fn scanner_rewrites_exactly_the_string_values(
            m in prop::collection::btree_map("\\PC{0,6}", json_value(), 0..5),
            pretty in any::<bool>(),
        ) {
            let v = Value::Object(m.into_iter().collect());
            let text = if pretty { serde_json::to_string_pretty(&v).unwrap() } else { serde_json::to_string(&v).unwrap() };
            let mut out = Vec::new();
            rewrite_string_values(text.as_bytes(), &mut out, |_, s| Some(format!("<{}>", s.to_uppercase()))).unwrap();
            let back: Value = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(back, upper_strings(&v));
            let mut same = Vec::new();
            prop_assert!(!rewrite_string_values(text.as_bytes(), &mut same, |_, _| None).unwrap());
            prop_assert_eq!(same, text.as_bytes());
        }
    }
}
