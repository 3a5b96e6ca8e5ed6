//! The event modes, their options, the whole-frame check and the decoder.
//!
//! Why a whole-frame check before the first record leaves: records are sent
//! downstream in batches as they are decoded, and a frame rejected halfway
//! would have delivered its front while the client resends all of it. So
//! [`parse_frame`] and [`check_entries`] settle the frame's shape and every
//! entry's types first; [`Decoder::decode_some`] then cannot meet a
//! structural error, only values to alter (invalid UTF-8) or records to drop
//! (too large), which it counts.
//!
//! Why records are written as JSON text directly: the rest of the router moves
//! object text (see `event.rs`); building a `serde_json::Value` per record
//! would double the work on the hot path.

use std::io::Read;
use std::ops::Range;

use serde_json::ser::{CompactFormatter, Formatter};

use super::scan::{Cur, EventTime, FrameScanner, Head, MAX_TAG, be};
use super::{FrameError, bad};
use crate::sources::file::parse::{TimestampFormatter, key_bit, write_str};

/// How a frame carries its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `[tag, time, record(, option)]`
    Message,
    /// `[tag, [[time, record], ...](, option)]`
    Forward,
    /// `[tag, <concatenated [time, record] entries>(, option)]`, maybe gzip.
    PackedForward,
}

/// A frame's parts, as byte ranges of the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: Range<usize>,
    pub mode: Mode,
    /// Message: the time and record; Forward: the entries (after the
    /// array header); PackedForward: the payload.
    pub entries: Range<usize>,
    /// Entries in Forward mode (1 for Message; unknown for packed).
    pub count: u64,
    /// The `chunk` option, to be answered with `{"ack": chunk}`.
    pub chunk: Option<Range<usize>>,
    /// `compressed: "gzip"`.
    pub gzip: bool,
    /// Fluent Bit's `fluent_signal` option: 0 (or absent) for logs; metrics
    /// and traces are not records.
    pub signal: u64,
}

/// Reads a complete frame's shape; `frame` is exactly one value.
pub fn parse_frame(frame: &[u8]) -> Result<Frame, FrameError> {
    let mut c = Cur { buf: frame, pos: 0 };
    let n = match c.head()? {
        Head::Array(n) if (2..=4).contains(&n) => n,
        _ => return Err(bad("not a forward message")),
    };
    let tag = match c.head()? {
        Head::Str(len) | Head::Bin(len) if len <= MAX_TAG => {
            c.payload(len)?;
            c.pos - len..c.pos
        }
        Head::Str(_) | Head::Bin(_) => return Err(bad("tag longer than 1024 bytes")),
        _ => return Err(bad("tag is not a string")),
    };
    let second = c.pos;
    let (mode, entries, count, used) = match c.head()? {
        Head::Array(m) => {
            let start = c.pos;
            for _ in 0..m {
                c.skip()?;
            }
            (Mode::Forward, start..c.pos, m, 2)
        }
        Head::Str(len) | Head::Bin(len) => {
            c.payload(len)?;
            (Mode::PackedForward, c.pos - len..c.pos, 0, 2)
        }
        _ => {
            if n < 3 {
                return Err(bad("message mode needs a time and a record"));
            }
            c.pos = second;
            c.time()?;
            match c.head()? {
                Head::Map(_) => {}
                _ => return Err(bad("record is not a map")),
            }
            c.pos = second;
            c.skip()?;
            c.skip()?;
            (Mode::Message, second..c.pos, 1, 3)
        }
    };
    let mut chunk = None;
    let mut gzip = false;
    let mut signal = 0;
    if n > used {
        match c.head()? {
            Head::Nil => {}
            Head::Map(pairs) => {
                for _ in 0..pairs {
                    let key = c.raw_str()?;
                    match key {
                        Some(b"chunk") => match c.head()? {
                            Head::Str(len) | Head::Bin(len) if len <= MAX_TAG => {
                                c.payload(len)?;
                                chunk = Some(c.pos - len..c.pos);
                            }
                            _ => return Err(bad("chunk option is not a short string")),
                        },
                        Some(b"fluent_signal") => match c.head()? {
                            Head::Uint(v) => signal = v,
                            _ => return Err(bad("fluent_signal is not an integer")),
                        },
                        Some(b"compressed") => match c.raw_str()? {
                            Some(b"gzip") => gzip = true,
                            Some(b"text") => {}
                            _ => return Err(bad("unsupported compression (only gzip)")),
                        },
                        _ => c.skip()?,
                    }
                }
            }
            _ => return Err(bad("option is not a map")),
        }
        if n > used + 1 {
            return Err(bad("too many elements"));
        }
    }
    if c.pos != frame.len() {
        return Err(bad("trailing bytes"));
    }
    if gzip && mode != Mode::PackedForward {
        return Err(bad("compressed is only valid with packed entries"));
    }
    Ok(Frame {
        tag,
        mode,
        entries,
        count,
        chunk,
        gzip,
        signal,
    })
}

/// Inflates a CompressedPackedForward payload (one or more gzip members)
/// into `out`, refusing more than `max` bytes.
pub fn gunzip(payload: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), FrameError> {
    out.clear();
    let mut dec = flate2::read::MultiGzDecoder::new(payload).take(max as u64 + 1);
    dec.read_to_end(out).map_err(|_| bad("invalid gzip payload"))?;
    if out.len() > max {
        out.clear();
        return Err(FrameError::TooLarge);
    }
    Ok(())
}

/// Checks that `bytes` (a Forward entry list of `count`, or packed entries
/// when `count` is `None`) holds only `[time, record-map]` entries; returns
/// how many.
pub fn check_entries(bytes: &[u8], count: Option<u64>) -> Result<u64, FrameError> {
    let mut pos = 0;
    let mut n = 0u64;
    let mut scanner = FrameScanner::new(0);
    loop {
        match count {
            Some(c) if n == c => break,
            None if pos == bytes.len() => break,
            _ => {}
        }
        let rest = bytes.get(pos..).ok_or(bad("truncated entry"))?;
        // Well-formedness and depth of packed entries (Forward ones were
        // scanned with the frame).
        if count.is_none() {
            match scanner.scan(rest, usize::MAX)? {
                Some(_) => {}
                None => {
                    scanner.reset();
                    return Err(bad("truncated entry"));
                }
            }
        }
        let mut c = Cur { buf: rest, pos: 0 };
        match c.head()? {
            Head::Array(len) if len >= 2 => {
                c.time()?;
                match c.head()? {
                    Head::Map(pairs) => {
                        for _ in 0..pairs.saturating_mul(2) {
                            c.skip()?;
                        }
                    }
                    _ => return Err(bad("record is not a map")),
                }
                for _ in 2..len {
                    c.skip()?;
                }
            }
            _ => return Err(bad("entry is not [time, record]")),
        }
        pos += c.pos;
        n += 1;
    }
    Ok(n)
}

/// Where decoding of a frame's entries stands.
#[derive(Debug, Clone)]
pub struct Entries {
    pos: usize,
    end: usize,
    /// Message mode: the time and record stand alone, without `[ ]`.
    bare: bool,
}

impl Entries {
    pub fn new(range: Range<usize>, mode: Mode) -> Self {
        Entries {
            pos: range.start,
            end: range.end,
            bare: mode == Mode::Message,
        }
    }

    pub fn done(&self) -> bool {
        self.pos >= self.end
    }
}

/// What one [`Decoder::decode_some`] call altered or dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Issues {
    /// Strings with invalid UTF-8, kept with U+FFFD.
    pub invalid_utf8: u64,
    /// Keys repeated in a record: the first one kept.
    pub duplicate_key: u64,
    /// Values with no JSON form (extension types), written as `null`.
    pub unsupported: u64,
    /// Records over `max_record_size`, dropped.
    pub too_large: u64,
}

/// Writes records as JSON object text; one per connection (it holds the
/// timestamp formatter's cache and scratch space).
pub struct Decoder {
    fmt: TimestampFormatter,
    ts_bit: u64,
    max_record: usize,
    /// Top-level key texts of the record being written (ranges of `out`).
    keys: Vec<Range<usize>>,
    pub issues: Issues,
}

impl Decoder {
    pub fn new(max_record: usize) -> Self {
        Decoder {
            fmt: TimestampFormatter::new(),
            ts_bit: key_bit(b"@timestamp"),
            max_record,
            keys: Vec::new(),
            issues: Issues::default(),
        }
    }

    /// Decodes entries of a checked frame (`bytes` holds them at the
    /// positions `entries` tracks) into `records` until its buffer holds
    /// `budget` bytes or the entries end. `now_ms` stands in for a `nil` time.
    pub fn decode_some(
        &mut self,
        bytes: &[u8],
        entries: &mut Entries,
        records: &mut crate::event::Records,
        budget: usize,
        now_ms: i64,
    ) -> Result<(), FrameError> {
        let end = entries.end.min(bytes.len());
        let mut c = Cur {
            buf: bytes.get(..end).ok_or(bad("truncated"))?,
            pos: entries.pos,
        };
        while c.pos < end && records.buf.len() < budget {
            let extra = if entries.bare {
                0
            } else {
                match c.head()? {
                    Head::Array(n) if n >= 2 => n - 2,
                    _ => return Err(bad("entry is not [time, record]")),
                }
            };
            let ts_ms = match c.time()? {
                EventTime::At(ms) => ms,
                _ => now_ms,
            };
            self.record(&mut c, ts_ms.max(0), records)?;
            for _ in 0..extra {
                c.skip()?;
            }
            if entries.bare {
                // The option map (if any) follows; the message has one event.
                entries.pos = entries.end;
                return Ok(());
            }
            entries.pos = c.pos;
        }
        Ok(())
    }

    /// Writes one record map as `{"@timestamp":"…",…}` and pushes it.
    fn record(&mut self, c: &mut Cur<'_>, ts_ms: i64, records: &mut crate::event::Records) -> Result<(), FrameError> {
        let Head::Map(pairs) = c.head()? else {
            return Err(bad("record is not a map"));
        };
        let out = &mut records.buf;
        let start = out.len();
        out.extend_from_slice(b"{\"@timestamp\":\"");
        self.fmt.write(ts_ms, out);
        out.push(b'"');
        let spliced = out.len() - start;
        let mut mask = self.ts_bit;
        let mut own_ts = false;
        self.keys.clear();
        for _ in 0..pairs {
            let before = out.len();
            out.push(b',');
            let key_start = out.len();
            let key_bytes: &[u8] = match c.head()? {
                Head::Str(n) | Head::Bin(n) => c.payload(n)?,
                other => {
                    // Integer or other scalar keys: their text, quoted.
                    let mut text = Vec::new();
                    self.scalar(other, c, &mut text)?;
                    let s = String::from_utf8_lossy(&text).trim_matches('"').to_string();
                    write_json_str(out, s.as_bytes(), &mut self.issues);
                    let bit = key_bit(s.as_bytes());
                    if self.duplicate(out, key_start, bit, mask) {
                        out.truncate(before);
                        c.skip()?;
                        continue;
                    }
                    mask |= bit;
                    self.keys.push(key_start..out.len());
                    out.push(b':');
                    self.value(c, out)?;
                    continue;
                }
            };
            let lossy = String::from_utf8_lossy(key_bytes);
            write_json_str(out, key_bytes, &mut self.issues);
            let bit = key_bit(lossy.as_bytes());
            let is_ts = lossy == "@timestamp";
            if (is_ts && own_ts) || (!is_ts && self.duplicate(out, key_start, bit, mask)) {
                self.issues.duplicate_key += 1;
                out.truncate(before);
                c.skip()?;
                continue;
            }
            own_ts |= is_ts;
            mask |= bit;
            self.keys.push(key_start..out.len());
            out.push(b':');
            self.value(c, out)?;
        }
        out.push(b'}');
        if own_ts {
            // The record's own `@timestamp` wins: drop the spliced one and
            // its comma (the record has at least that member).
            out.drain(start + 1..start + spliced + 1);
        }
        if out.len() - start > self.max_record {
            out.truncate(start);
            self.issues.too_large += 1;
            return Ok(());
        }
        if own_ts {
            records.push_written(start, ts_ms, mask);
        } else {
            records.push_stamped(start, ts_ms, mask);
        }
        Ok(())
    }

    /// Is the key just written at `key_start..` already in this record?
    fn duplicate(&self, out: &[u8], key_start: usize, bit: u64, mask: u64) -> bool {
        if mask & bit == 0 {
            return false;
        }
        let Some(key) = out.get(key_start..) else { return false };
        self.keys.iter().any(|r| out.get(r.clone()) == Some(key))
    }

    fn value(&mut self, c: &mut Cur<'_>, out: &mut Vec<u8>) -> Result<(), FrameError> {
        match c.head()? {
            Head::Array(n) => {
                out.push(b'[');
                for i in 0..n {
                    if i > 0 {
                        out.push(b',');
                    }
                    self.value(c, out)?;
                }
                out.push(b']');
            }
            Head::Map(n) => {
                out.push(b'{');
                for i in 0..n {
                    if i > 0 {
                        out.push(b',');
                    }
                    match c.head()? {
                        Head::Str(len) | Head::Bin(len) => {
                            let k = c.payload(len)?;
                            write_json_str(out, k, &mut self.issues);
                        }
                        other => {
                            let mut text = Vec::new();
                            self.scalar(other, c, &mut text)?;
                            let s = String::from_utf8_lossy(&text).trim_matches('"').to_string();
                            write_json_str(out, s.as_bytes(), &mut self.issues);
                        }
                    }
                    out.push(b':');
                    self.value(c, out)?;
                }
                out.push(b'}');
            }
            other => self.scalar(other, c, out)?,
        }
        Ok(())
    }

    /// A non-container value (containers as keys are written as `null`).
    fn scalar(&mut self, h: Head, c: &mut Cur<'_>, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let mut f = CompactFormatter;
        // Writing into a Vec cannot fail.
        let _ = match h {
            Head::Nil => f.write_null(out),
            Head::Bool(b) => f.write_bool(out, b),
            Head::Uint(v) => f.write_u64(out, v),
            Head::Int(v) => f.write_i64(out, v),
            Head::F32(v) if v.is_finite() => f.write_f32(out, v),
            Head::F64(v) if v.is_finite() => f.write_f64(out, v),
            Head::F32(_) | Head::F64(_) => f.write_null(out),
            Head::Str(n) | Head::Bin(n) => {
                let s = c.payload(n)?;
                write_json_str(out, s, &mut self.issues);
                Ok(())
            }
            Head::Ext(0, 8) => {
                let b = c.payload(8)?;
                let secs = be(b, 0, 4).unwrap_or(0) as f64;
                let nanos = be(b, 4, 4).unwrap_or(0) as f64;
                f.write_f64(out, secs + nanos / 1e9)
            }
            Head::Ext(_, n) => {
                c.payload(n)?;
                self.issues.unsupported += 1;
                f.write_null(out)
            }
            Head::Array(_) | Head::Map(_) => {
                // Only reached for a container used as a map key.
                c.skip_members(h)?;
                self.issues.unsupported += 1;
                f.write_null(out)
            }
        };
        Ok(())
    }
}

/// Appends `s` as a JSON string; invalid UTF-8 becomes U+FFFD, counted.
fn write_json_str(out: &mut Vec<u8>, s: &[u8], issues: &mut Issues) {
    match std::str::from_utf8(s) {
        Ok(s) => write_str(out, s),
        Err(_) => {
            issues.invalid_utf8 += 1;
            write_str(out, &String::from_utf8_lossy(s));
        }
    }
}

/// `{"ack": chunk}`.
pub fn ack_response(chunk: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunk.len() + 8);
    // Writing into a Vec cannot fail.
    let _ = rmp::encode::write_map_len(&mut out, 1);
    let _ = rmp::encode::write_str(&mut out, "ack");
    let _ = rmp::encode::write_str_len(&mut out, chunk.len() as u32);
    out.extend_from_slice(chunk);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::forward::proto::tests::*;
    use serde_json::{Value, json};

    #[test]
    fn message_mode_with_event_time_and_chunk() {
        let frame = bytes(&V::A(vec![
            V::S("app.web"),
            V::T(SECS, 123_456_789),
            rec("hello"),
            V::M(vec![(V::S("chunk"), V::S("abc=")), (V::S("size"), V::Int(1))]),
        ]));
        let (f, vals, r, _) = decode(&frame).unwrap();
        assert_eq!(&frame[f.tag.clone()], b"app.web");
        assert_eq!(f.mode, Mode::Message);
        assert_eq!(&frame[f.chunk.clone().unwrap()], b"abc=");
        assert_eq!(
            vals,
            vec![json!({"@timestamp": "2026-11-25T23:15:47.123Z", "log": "hello", "n": -3})]
        );
        assert_eq!(r.meta[0].ts_ms, i64::from(SECS) * 1000 + 123);
        for k in ["@timestamp", "log", "n"] {
            assert_ne!(r.meta[0].key_mask & key_bit(k.as_bytes()), 0, "{k}");
        }
    }

    #[test]
    fn forward_mode_integer_time_nil_time_and_metadata_time() {
        let frame = bytes(&V::A(vec![
            V::S("t"),
            V::A(vec![
                V::A(vec![V::Int(i64::from(SECS)), rec("a")]),
                V::A(vec![V::Nil, rec("b")]),
                V::A(vec![V::A(vec![V::T(SECS, 0), V::M(vec![])]), rec("c")]),
            ]),
        ]));
        let (f, vals, r, _) = decode(&frame).unwrap();
        assert_eq!((f.mode, f.count, f.chunk), (Mode::Forward, 3, None));
        let logs: Vec<_> = vals.iter().map(|v| v["log"].as_str().unwrap()).collect();
        assert_eq!(logs, ["a", "b", "c"]);
        assert_eq!(r.meta[0].ts_ms, i64::from(SECS) * 1000);
        assert_eq!(r.meta[1].ts_ms, 42_000, "nil time is the receive time");
        assert_eq!(vals[1]["@timestamp"], "1970-01-01T00:00:42.000Z");
        assert_eq!(r.meta[2].ts_ms, i64::from(SECS) * 1000);
    }

    #[test]
    fn packed_forward_as_str_or_bin() {
        for payload in [V::B(packed(50)), V::Raw(packed(50))] {
            let frame = bytes(&V::A(vec![V::S("t"), payload, V::M(vec![(V::S("chunk"), V::S("c1"))])]));
            let (f, vals, _, _) = decode(&frame).unwrap();
            assert_eq!(f.mode, Mode::PackedForward);
            assert_eq!(vals.len(), 50);
            assert!(vals.iter().enumerate().all(|(i, v)| v["i"] == json!(i)));
        }
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn compressed_packed_forward_with_concatenated_members() {
        let all = packed(30);
        // Three gzip members, split inside an entry.
        let mut payload = gz(&all[..7]);
        payload.extend(gz(&all[7..200]));
        payload.extend(gz(&all[200..]));
        let frame = bytes(&V::A(vec![
            V::S("t"),
            V::B(payload),
            V::M(vec![(V::S("compressed"), V::S("gzip"))]),
        ]));
        let (f, vals, _, _) = decode(&frame).unwrap();
        assert!(f.gzip);
        assert_eq!(vals.len(), 30);
        assert_eq!(vals[29]["i"], 29);
    }

    #[test]
    fn gzip_errors_and_bombs_are_refused() {
        let frame = bytes(&V::A(vec![
            V::S("t"),
            V::B(b"not gzip".to_vec()),
            V::M(vec![(V::S("compressed"), V::S("gzip"))]),
        ]));
        assert_eq!(
            decode(&frame).unwrap_err(),
            FrameError::Malformed("invalid gzip payload")
        );
        let mut out = Vec::new();
        assert_eq!(
            gunzip(&gz(&vec![0u8; 10_000]), 9_999, &mut out),
            Err(FrameError::TooLarge)
        );
        assert!(gunzip(&gz(&vec![0u8; 10_000]), 10_000, &mut out).is_ok());
        let frame = bytes(&V::A(vec![
            V::S("t"),
            V::B(packed(1)),
            V::M(vec![(V::S("compressed"), V::S("zstd"))]),
        ]));
        assert!(matches!(decode(&frame), Err(FrameError::Malformed(_))));
    }

    #[test]
    fn values_become_json_and_odd_ones_are_counted() {
        let frame = bytes(&V::A(vec![
            V::S("t"),
            V::Int(1),
            V::M(vec![
                (V::S("s"), V::S("a\"b\\c\nd\u{1}é")),
                (V::S("bin"), V::B(vec![0x66, 0xff, 0x6f])),
                (
                    V::S("arr"),
                    V::A(vec![V::Nil, V::F(1.5), V::F(f64::NAN), V::Int(u32::MAX as i64 * 4)]),
                ),
                (
                    V::S("obj"),
                    V::M(vec![(V::Int(7), V::S("seven")), (V::S("k"), V::M(vec![]))]),
                ),
                (V::Int(5), V::S("int key")),
                (V::S("ext"), V::T(1, 500_000_000)),
                (V::S("s"), V::S("duplicate")),
                (V::S("container_id"), V::S("abc")),
            ]),
        ]));
        let (_, vals, r, issues) = decode(&frame).unwrap();
        assert_eq!(
            vals[0],
            json!({
                "@timestamp": "1970-01-01T00:00:01.000Z",
                "s": "a\"b\\c\nd\u{1}é",
                "bin": "f\u{fffd}o",
                "arr": [null, 1.5, null, 17179869180u64],
                "obj": {"7": "seven", "k": {}},
                "5": "int key",
                "ext": 1.5,
                "container_id": "abc",
            })
        );
        assert!(!r.text(0).contains(&b'\n'));
        assert_eq!(
            issues,
            Issues {
                invalid_utf8: 1,
                duplicate_key: 1,
                unsupported: 0,
                too_large: 0
            }
        );
    }

    #[test]
    fn own_timestamp_wins_and_empty_record_is_an_object() {
        let frame = bytes(&V::A(vec![
            V::S("t"),
            V::A(vec![
                V::A(vec![
                    V::Int(1),
                    V::M(vec![(V::S("a"), V::Int(1)), (V::S("@timestamp"), V::S("mine"))]),
                ]),
                V::A(vec![V::Int(1), V::M(vec![])]),
                V::A(vec![V::Int(1), V::M(vec![(V::S("@timestamp"), V::S("only"))])]),
            ]),
        ]));
        let (_, vals, r, _) = decode(&frame).unwrap();
        assert_eq!(
            std::str::from_utf8(r.text(0)).unwrap(),
            r#"{"a":1,"@timestamp":"mine"}"#
        );
        assert_eq!(vals[1], json!({"@timestamp": "1970-01-01T00:00:01.000Z"}));
        assert_eq!(std::str::from_utf8(r.text(2)).unwrap(), r#"{"@timestamp":"only"}"#);
        // Only the record without one of its own carries the added stamp.
        assert_eq!(
            r.meta.iter().map(|m| m.ts_added).collect::<Vec<_>>(),
            vec![false, true, false]
        );
    }

    #[test]
    fn oversized_records_are_dropped_and_counted_not_the_frame() {
        let big: &'static str = Box::leak("x".repeat(2000).into_boxed_str());
        let frame = bytes(&V::A(vec![
            V::S("t"),
            V::A(vec![
                V::A(vec![V::Int(1), rec(big)]),
                V::A(vec![V::Int(1), rec("small")]),
            ]),
        ]));
        let (_, vals, _, issues) = decode(&frame).unwrap();
        assert_eq!(vals.len(), 1);
        assert_eq!(vals[0]["log"], "small");
        assert_eq!(issues.too_large, 1);
    }

    #[test]
    fn malformed_frames_are_refused_with_a_reason() {
        let cases: Vec<(V, &str)> = vec![
            (V::M(vec![]), "not an array"),
            (V::A(vec![V::S("t")]), "one element"),
            (V::A(vec![V::Int(1), V::Int(1), rec("a")]), "tag not a string"),
            (V::A(vec![V::S("t"), V::Int(1), V::S("not a map")]), "record not a map"),
            (V::A(vec![V::S("t"), V::S("x"), rec("a")]), "time a string"),
            (
                V::A(vec![V::S("t"), V::A(vec![V::A(vec![V::Int(1)])])]),
                "entry too short",
            ),
            (
                V::A(vec![V::S("t"), V::A(vec![V::A(vec![V::S("x"), rec("a")])])]),
                "entry time",
            ),
            (
                V::A(vec![V::S("t"), V::A(vec![V::A(vec![V::Int(1), V::Int(2)])])]),
                "entry record",
            ),
            (V::A(vec![V::S("t"), V::B(vec![0x92, 0x01])]), "truncated packed entry"),
            (V::A(vec![V::S("t"), V::B(vec![0xc1])]), "reserved marker in packed"),
            (
                V::A(vec![V::S("t"), V::Int(1), rec("a"), V::S("opt")]),
                "option not a map",
            ),
            (
                V::A(vec![
                    V::S("t"),
                    V::Int(1),
                    rec("a"),
                    V::M(vec![(V::S("chunk"), V::Int(1))]),
                ]),
                "chunk int",
            ),
            (
                V::A(vec![
                    V::S("t"),
                    V::A(vec![]),
                    V::M(vec![(V::S("compressed"), V::S("gzip"))]),
                ]),
                "gzip forward",
            ),
        ];
        for (v, what) in cases {
            let frame = bytes(&v);
            let r = FrameScanner::new(4)
                .scan(&frame, 1 << 20)
                .and_then(|_| decode(&frame).map(|_| ()));
            assert!(matches!(r, Err(FrameError::Malformed(_))), "{what}: {r:?}");
        }
    }

    /// Arbitrary values with unique string keys, and what JSON they mean.
    fn value() -> impl proptest::strategy::Strategy<Value = (V, Value)> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            any::<i64>().prop_map(|i| (V::Int(i), json!(i))),
            // Quarters: exact in binary and in short decimals, so the
            // comparison does not hinge on serde_json's float parsing.
            any::<i32>().prop_map(|i| (V::F(f64::from(i) / 4.0), json!(f64::from(i) / 4.0))),
            "\\PC{0,12}".prop_map(|s| (V::Str(s.clone()), json!(s))),
            Just((V::Nil, Value::Null)),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(|items| {
                    let (vs, js): (Vec<V>, Vec<Value>) = items.into_iter().unzip();
                    (V::A(vs), Value::Array(js))
                }),
                proptest::collection::btree_map("[a-z@_]{1,6}", inner, 0..6).prop_map(|m| {
                    let js: serde_json::Map<String, Value> =
                        m.iter().map(|(k, (_, j))| (k.clone(), j.clone())).collect();
                    let vs = m.into_iter().map(|(k, (v, _))| (V::Str(k), v)).collect();
                    (V::M(vs), Value::Object(js))
                }),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn any_record_decodes_to_the_json_it_means(
            records in proptest::collection::vec(
                proptest::collection::btree_map("[a-z_]{1,8}", value(), 0..8), 1..5),
            split in 0usize..4096,
        ) {
            let entries: Vec<V> = records
                .iter()
                .map(|m| V::A(vec![V::Int(1), V::M(m.iter().map(|(k, (v, _))| (V::Str(k.clone()), v.clone())).collect())]))
                .collect();
            let frame = bytes(&V::A(vec![V::S("t"), V::A(entries)]));
            // The scanner finds the same end wherever the bytes are cut.
            let mut sc = FrameScanner::new(4);
            let cut = split.min(frame.len());
            let first = sc.scan(&frame[..cut], 1 << 24).unwrap();
            let end = match first { Some(n) => n, None => sc.scan(&frame, 1 << 24).unwrap().unwrap() };
            proptest::prop_assert_eq!(end, frame.len());
            let (_, vals, r, issues) = decode_with(&frame, 1 << 24).unwrap();
            proptest::prop_assert_eq!(issues, Issues::default());
            proptest::prop_assert_eq!(vals.len(), records.len());
            for (i, (got, m)) in vals.iter().zip(&records).enumerate() {
                let mut want: serde_json::Map<String, Value> = m.iter().map(|(k, (_, j))| (k.clone(), j.clone())).collect();
                want.insert("@timestamp".into(), json!("1970-01-01T00:00:01.000Z"));
                proptest::prop_assert_eq!(got, &Value::Object(want));
                for k in m.keys() {
                    proptest::prop_assert!(r.meta[i].key_mask & key_bit(k.as_bytes()) != 0);
                }
                proptest::prop_assert!(!r.text(i).contains(&b'\n'));
            }
        }
    }

    #[test]
    fn fluent_signal_frames_are_recognised() {
        let frame = bytes(&V::A(vec![
            V::S("metrics"),
            V::B(vec![1, 2, 3]),
            V::M(vec![(V::S("fluent_signal"), V::Int(1)), (V::S("chunk"), V::S("m1"))]),
        ]));
        let f = parse_frame(&frame).unwrap();
        assert_eq!((f.signal, f.mode), (1, Mode::PackedForward));
    }
}
