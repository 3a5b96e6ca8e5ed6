//! The JSON parser (the product's hot path) and reading emitted objects.
//!
//! Why serde_json with a custom visitor instead of `Value`: building a `Value`
//! allocates a map, a `String` per key and per string value, and throws it
//! all away, since the record is shipped as its original text anyway. The
//! visitor walks the object once, hashing keys as borrowed `&str`, parsing
//! only the time value and skipping the rest with `IgnoredAny`, which
//! validates without materializing. Steady state, that is zero allocations
//! per line; serde_json allocates its own scratch buffer only for escaped
//! keys or time strings and for skipped values nested two levels or more.
//!
//! Why extra checks after serde_json says yes: `IgnoredAny` skips values
//! without a depth limit and without pairing `\u` surrogates (it cannot know
//! whether the target would have been a string or bytes). Both are still
//! accepted by the grammar, but a record nested 10,000 deep overflows the
//! stack of recursive consumers, and a lone surrogate cannot be decoded to
//! Unicode by strict ones (serde_json among them). Both checks cost nothing
//! on ordinary lines: the depth check only counts brackets when the line is
//! long enough to be that deep, and the surrogate check only runs when the
//! line has a backslash. Numbers are checked by grammar only: `1e400` is
//! valid JSON and passes through as written, though serde_json's own `Value`
//! would refuse it.
//!
//! Why a hand-written scanner for [`has_top_level_key`] and [`lookup_field`]:
//! they read objects this module emitted (already valid), need the raw text of
//! numbers (which serde_json does not expose) and borrowed strings, and must
//! agree with `serde_json::Value` semantics, including "last duplicate key
//! wins".
//!
//! Length: about 690 lines of code and 400 of unit tests, which exercise
//! its private items and so stay beside them (over the ~1,000-line mark
//! only with its tests).

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::time::{self, TimeParser};
use super::{Parsed, Parser, TS_KEY, key_bit};

/// Deepest nesting accepted (the line's object is level 1); below serde_json's
/// own limit of 127 so any consumer built on it reads every record.
const MAX_DEPTH: usize = 100;

/// What the walk over a line's top-level object learned.
#[derive(Debug, Default)]
struct Facts {
    mask: u64,
    /// The object has a top-level `@timestamp`.
    has_ts: bool,
    /// That `@timestamp`, read as a time (auto).
    ts_value: Option<i64>,
    /// `time_key`'s value, read with the configured format.
    key_value: Option<i64>,
}

pub(super) fn parse(p: &mut Parser, line: &str, read_time_ms: i64, out: &mut Vec<u8>) -> Option<Parsed> {
    let text = line.trim_ascii();
    // A byte-order mark can only start a file, but it would cost that line.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if !text.starts_with('{') {
        return None;
    }
    let facts = walk(text, p.time_key.as_deref(), &p.time)?;
    if !depth_ok(text.as_bytes()) || !surrogates_ok(text.as_bytes()) {
        return None;
    }
    let ts_ms = time::clamp_ms(facts.key_value.or(facts.ts_value).unwrap_or(read_time_ms));
    let time_missing = p.time_key.is_some() && facts.key_value.is_none();
    let start = out.len();
    let key_mask = if facts.has_ts {
        out.extend_from_slice(text.as_bytes());
        facts.mask
    } else {
        p.open_with_timestamp(ts_ms, out);
        let body = text.get(1..).unwrap_or_default();
        if body.trim_ascii_start().starts_with('}') {
            out.push(b'}');
        } else {
            out.push(b',');
            out.extend_from_slice(body.as_bytes());
        }
        facts.mask | p.ts_bit
    };
    one_line(out, start);
    Some(Parsed {
        ts_ms,
        key_mask,
        fallback: false,
        time_missing,
    })
}

/// A valid JSON text can hold CR or LF only as whitespace between tokens;
/// they become spaces so that a record is always one line.
#[inline]
fn one_line(out: &mut [u8], start: usize) {
    let Some(written) = out.get_mut(start..) else { return };
    if memchr::memchr2(b'\r', b'\n', written).is_some() {
        for b in written.iter_mut().filter(|b| matches!(b, b'\r' | b'\n')) {
            *b = b' ';
        }
    }
}

/// Validates `text` as exactly one JSON object and collects its [`Facts`].
fn walk(text: &str, time_key: Option<&str>, time: &TimeParser) -> Option<Facts> {
    let mut de = serde_json::Deserializer::from_str(text);
    let facts = (&mut de).deserialize_map(ObjectVisitor { time_key, time }).ok()?;
    de.end().ok()?;
    Some(facts)
}

struct ObjectVisitor<'p> {
    time_key: Option<&'p str>,
    time: &'p TimeParser,
}

#[derive(Clone, Copy)]
enum Role {
    Other,
    Timestamp,
    TimeKey,
    /// `time_key = "@timestamp"`.
    Both,
}

impl<'de> Visitor<'de> for ObjectVisitor<'_> {
    type Value = Facts;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Facts, A::Error> {
        static AUTO: TimeParser = TimeParser::auto();
        let mut facts = Facts::default();
        while let Some(role) = map.next_key_seed(KeySeed {
            time_key: self.time_key,
            mask: &mut facts.mask,
        })? {
            match role {
                Role::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
                Role::Timestamp => {
                    facts.has_ts = true;
                    facts.ts_value = map.next_value_seed(TimeSeed(&AUTO))?;
                }
                Role::TimeKey => facts.key_value = map.next_value_seed(TimeSeed(self.time))?,
                Role::Both => {
                    facts.has_ts = true;
                    facts.key_value = map.next_value_seed(TimeSeed(self.time))?;
                }
            }
        }
        Ok(facts)
    }
}

/// Reads a key (borrowed when it has no escapes), adds its bit to the mask
/// and says what it is.
struct KeySeed<'a> {
    time_key: Option<&'a str>,
    mask: &'a mut u64,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Role;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Role, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed<'_> {
    type Value = Role;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    #[inline]
    fn visit_str<E>(self, key: &str) -> Result<Role, E> {
        *self.mask |= key_bit(key.as_bytes());
        let is_ts = key == TS_KEY;
        let is_time_key = self.time_key == Some(key);
        Ok(match (is_ts, is_time_key) {
            (false, false) => Role::Other,
            (true, false) => Role::Timestamp,
            (false, true) => Role::TimeKey,
            (true, true) => Role::Both,
        })
    }
}

/// Reads any value as a time (`None` for shapes that are not one), consuming
/// it either way.
struct TimeSeed<'a>(&'a TimeParser);

impl<'de> DeserializeSeed<'de> for TimeSeed<'_> {
    type Value = Option<i64>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<i64>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TimeSeed<'_> {
    type Value = Option<i64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a time")
    }

    fn visit_str<E>(self, v: &str) -> Result<Option<i64>, E> {
        Ok(self.0.parse_str(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Option<i64>, E> {
        Ok(self.0.parse_u64(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Option<i64>, E> {
        Ok(self.0.parse_i64(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Option<i64>, E> {
        Ok(self.0.parse_f64(v))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Option<i64>, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Option<i64>, E> {
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<i64>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<i64>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

/// Is the nesting of valid JSON `text` at most [`MAX_DEPTH`]?
fn depth_ok(text: &[u8]) -> bool {
    // Depth d takes d opening and d closing brackets.
    if text.len() <= 2 * MAX_DEPTH + 1 {
        return true;
    }
    if memchr::memchr2_iter(b'{', b'[', text).count() <= MAX_DEPTH {
        return true;
    }
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for &b in text {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return false;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Are all `\u` escapes of valid JSON `text` well-formed UTF-16 (surrogates
/// in high-low pairs)?
fn surrogates_ok(text: &[u8]) -> bool {
    let mut rest = text;
    while let Some(at) = memchr::memchr(b'\\', rest) {
        rest = rest.get(at..).unwrap_or_default();
        match rest {
            [b'\\', b'u', a, b, c, d, tail @ ..] => {
                let Some(unit) = hex4(*a, *b, *c, *d) else { return false };
                rest = tail;
                match unit {
                    0xD800..=0xDBFF => match rest {
                        [b'\\', b'u', a, b, c, d, tail @ ..] => match hex4(*a, *b, *c, *d) {
                            Some(0xDC00..=0xDFFF) => rest = tail,
                            _ => return false,
                        },
                        _ => return false,
                    },
                    0xDC00..=0xDFFF => return false,
                    _ => {}
                }
            }
            [b'\\', _, tail @ ..] => rest = tail,
            _ => return false,
        }
    }
    true
}

fn hex4(a: u8, b: u8, c: u8, d: u8) -> Option<u32> {
    [a, b, c, d]
        .iter()
        .try_fold(0u32, |acc, &x| Some(acc * 16 + char::from(x).to_digit(16)?))
}

/// Escape for each byte: 0 = none, `u` = `\u00XX`, else the letter after `\`.
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// Appends `s` as a JSON string literal.
#[inline]
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        // A u8 always indexes a 256-entry table.
        let esc = ESCAPE[usize::from(b)];
        if esc == 0 {
            continue;
        }
        out.extend_from_slice(bytes.get(start..i).unwrap_or_default());
        start = i + 1;
        if esc == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', esc]);
        }
    }
    out.extend_from_slice(bytes.get(start..).unwrap_or_default());
    out.push(b'"');
}

// ---------------------------------------------------------------------------
// Reading emitted objects.

/// Does the JSON object text `obj` have top-level key `key`? Exact; escaped
/// keys are compared unescaped. Malformed text answers false (or whatever
/// was found before the damage).
pub fn has_top_level_key(obj: &[u8], key: &str) -> bool {
    let mut found = false;
    let _ = for_each_member(obj, |k, _| {
        if k.matches(key) {
            found = true;
            false
        } else {
            true
        }
    });
    found
}

/// Value of a top-level field, or of a nested one by dotted path
/// (`kubernetes.pod_name`), of the JSON object text `obj`, as text: strings
/// unescaped, numbers and booleans as written; `None` for objects, arrays,
/// null, a missing field or malformed text. With duplicate keys the last one
/// counts, as with `serde_json::Value`.
pub fn lookup_field<'a>(obj: &'a [u8], path: &str) -> Option<Cow<'a, str>> {
    let mut current = obj;
    let mut segments = path.split('.').peekable();
    while let Some(seg) = segments.next() {
        let mut hit = None;
        for_each_member(current, |k, v| {
            if k.matches(seg) {
                hit = Some(v);
            }
            true
        })?;
        match (hit?, segments.peek()) {
            (Val::Object(inner), Some(_)) => current = inner,
            (_, Some(_)) => return None,
            (Val::Str(raw), None) => return raw.text(),
            (Val::Scalar(raw), None) => return std::str::from_utf8(raw).ok().map(Cow::Borrowed),
            (Val::Object(_) | Val::Other, None) => return None,
        }
    }
    None
}

/// A top-level member's value as [`top_level_value`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldText<'a> {
    /// A string, unescaped.
    Str(Cow<'a, str>),
    /// Any other value (number, `true`, `false`, `null`, object, array) as
    /// its JSON text.
    Json(&'a [u8]),
}

/// The value of top-level key `key` of the JSON object text `obj` (the last
/// one with duplicate keys, as [`lookup_field`]); `None` when absent or the
/// text is malformed before it is found.
pub fn top_level_value<'a>(obj: &'a [u8], key: &str) -> Option<FieldText<'a>> {
    let mut c = Cursor { b: obj, i: 0 };
    c.eat(b'{')?;
    c.skip_ws();
    if c.peek()? == b'}' {
        return None;
    }
    let mut hit = None;
    loop {
        c.skip_ws();
        let k = c.string()?;
        c.eat(b':')?;
        c.skip_ws();
        let start = c.i;
        let v = c.value()?;
        if k.matches(key) {
            hit = Some(match v {
                Val::Str(raw) => FieldText::Str(raw.text()?),
                _ => FieldText::Json(obj.get(start..c.i)?),
            });
        }
        c.skip_ws();
        match c.peek() {
            Some(b',') => c.i += 1,
            _ => return hit,
        }
    }
}

/// The value of top-level member `key` of `obj` when it is a JSON string
/// (unescaped); `None` for any other type, a missing key or broken text.
pub fn lookup_string<'a>(obj: &'a [u8], key: &str) -> Option<Cow<'a, str>> {
    match top_level_value(obj, key)? {
        FieldText::Str(s) => Some(s),
        FieldText::Json(_) => None,
    }
}

/// A JSON string's raw content (between the quotes).
#[derive(Clone, Copy)]
struct RawStr<'a> {
    raw: &'a [u8],
    escaped: bool,
}

impl<'a> RawStr<'a> {
    fn matches(&self, want: &str) -> bool {
        if self.escaped {
            self.text().is_some_and(|t| t == want)
        } else {
            self.raw == want.as_bytes()
        }
    }

    fn text(&self) -> Option<Cow<'a, str>> {
        if !self.escaped {
            return std::str::from_utf8(self.raw).ok().map(Cow::Borrowed);
        }
        let mut s = String::with_capacity(self.raw.len());
        let mut rest = self.raw;
        while let Some(at) = memchr::memchr(b'\\', rest) {
            s.push_str(std::str::from_utf8(rest.get(..at)?).ok()?);
            rest = rest.get(at..)?;
            let (c, tail) = match rest {
                [b'\\', b'u', a, b, c, d, tail @ ..] => match hex4(*a, *b, *c, *d)? {
                    hi @ 0xD800..=0xDBFF => match tail {
                        [b'\\', b'u', a, b, c, d, tail @ ..] => {
                            let lo = hex4(*a, *b, *c, *d)?;
                            if !(0xDC00..=0xDFFF).contains(&lo) {
                                return None;
                            }
                            (char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))?, tail)
                        }
                        _ => return None,
                    },
                    unit => (char::from_u32(unit)?, tail),
                },
                [b'\\', e, tail @ ..] => (
                    match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        _ => return None,
                    },
                    tail,
                ),
                _ => return None,
            };
            s.push(c);
            rest = tail;
        }
        s.push_str(std::str::from_utf8(rest).ok()?);
        Some(Cow::Owned(s))
    }
}

/// A member's value as the scanner sees it.
#[derive(Clone, Copy)]
enum Val<'a> {
    Str(RawStr<'a>),
    /// Number, `true` or `false`: the raw text.
    Scalar(&'a [u8]),
    /// The whole `{...}` text.
    Object(&'a [u8]),
    /// Array or null.
    Other,
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.skip_ws();
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// A string, the cursor on its opening quote.
    fn string(&mut self) -> Option<RawStr<'a>> {
        self.eat(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            let at = memchr::memchr2(b'"', b'\\', self.b.get(self.i..)?)?;
            self.i += at;
            if self.peek()? == b'\\' {
                escaped = true;
                self.i += 2;
            } else {
                let raw = self.b.get(start..self.i)?;
                self.i += 1;
                return Some(RawStr { raw, escaped });
            }
        }
    }

    fn value(&mut self) -> Option<Val<'a>> {
        self.skip_ws();
        let start = self.i;
        match self.peek()? {
            b'"' => self.string().map(Val::Str),
            open @ (b'{' | b'[') => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
                let text = self.b.get(start..self.i)?;
                Some(if open == b'{' { Val::Object(text) } else { Val::Other })
            }
            _ => {
                while self
                    .peek()
                    .is_some_and(|c| !matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                {
                    self.i += 1;
                }
                match self.b.get(start..self.i)? {
                    b"null" => Some(Val::Other),
                    raw @ (b"true" | b"false" | [b'-' | b'0'..=b'9', ..]) => Some(Val::Scalar(raw)),
                    _ => None,
                }
            }
        }
    }
}

/// The top-level members of the object `obj`, in order: each key (decoded)
/// and the member's raw `"key":value` text, to be copied as is. `None` if
/// `obj` is not one JSON object.
pub fn object_members(obj: &[u8]) -> Option<Vec<(Cow<'_, str>, &[u8])>> {
    let members = members(obj)?;
    Some(members.into_iter().map(|(k, r)| (k, &obj[r])).collect())
}

/// The top-level members of the object text `obj`, in order: each key
/// (unescaped) and the byte range of the whole member (`"key":value`) in
/// `obj`. `None` when the text is not a well-formed object. Lets a transform
/// rebuild a record member by member (drop some, replace one) while copying
/// every other member's bytes as they are.
pub fn members(obj: &[u8]) -> Option<Vec<(Cow<'_, str>, std::ops::Range<usize>)>> {
    let mut c = Cursor { b: obj, i: 0 };
    let mut out = Vec::new();
    c.eat(b'{')?;
    c.skip_ws();
    if c.peek()? == b'}' {
        return Some(out);
    }
    loop {
        c.skip_ws();
        let start = c.i;
        let key = c.string()?.text()?;
        c.eat(b':')?;
        c.value()?;
        out.push((key, start..c.i));
        c.skip_ws();
        match c.peek()? {
            b',' => c.i += 1,
            b'}' => return Some(out),
            _ => return None,
        }
    }
}

/// Calls `f(key, value)` for each member of the object `obj` in order until
/// it returns false. `None` if the text is not an object as far as read.
fn for_each_member<'a>(obj: &'a [u8], mut f: impl FnMut(RawStr<'a>, Val<'a>) -> bool) -> Option<()> {
    let mut c = Cursor { b: obj, i: 0 };
    c.eat(b'{')?;
    c.skip_ws();
    if c.peek()? == b'}' {
        return Some(());
    }
    loop {
        c.skip_ws();
        let key = c.string()?;
        c.eat(b':')?;
        let value = c.value()?;
        if !f(key, value) {
            return Some(());
        }
        c.skip_ws();
        match c.peek()? {
            b',' => c.i += 1,
            b'}' => return Some(()),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests;
