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
mod tests;
