//! Msgpack headers and where a frame ends.
//!
//! Why a resumable scanner before any decoding: a TCP read ends anywhere, and
//! a frame can be 16 MiB. [`FrameScanner`] walks msgpack headers (never
//! payloads) and keeps its place between reads, so finding a frame's end is
//! linear in the frame, a length header beyond `max_frame_size` is refused
//! before its bytes arrive, and nesting depth is bounded once for every later
//! pass.
//!
//! The limits live here: a frame over `max_frame_size`, nesting deeper than
//! [`MAX_DEPTH`] and a tag longer than `MAX_TAG` are refused.

use rmp::Marker;

use super::{FrameError, bad};

/// Deepest nesting of arrays and maps accepted anywhere in a frame.
pub const MAX_DEPTH: usize = 64;
/// Longest tag accepted.
pub(super) const MAX_TAG: usize = 1024;

/// One msgpack header: the kind of value and how its payload is sized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Head {
    Nil,
    Bool(bool),
    Uint(u64),
    Int(i64),
    F32(f32),
    F64(f64),
    Str(usize),
    Bin(usize),
    Array(u64),
    Map(u64),
    Ext(i8, usize),
}

impl Head {
    /// Payload bytes after the header (strings, binaries, extensions).
    pub(super) fn payload(&self) -> usize {
        match *self {
            Head::Str(n) | Head::Bin(n) | Head::Ext(_, n) => n,
            _ => 0,
        }
    }
}

pub(super) fn be(buf: &[u8], at: usize, n: usize) -> Option<u64> {
    let bytes = buf.get(at..at.checked_add(n)?)?;
    Some(bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
}

/// Reads the header at `pos`: `Ok(None)` when `buf` ends inside it.
pub(super) fn head(buf: &[u8], pos: usize) -> Result<Option<(Head, usize)>, FrameError> {
    let Some(&first) = buf.get(pos) else { return Ok(None) };
    let at = pos + 1;
    // (head, extra header bytes) or an early "need more".
    macro_rules! num {
        ($n:expr, $f:expr) => {
            match be(buf, at, $n) {
                Some(v) => ($f(v), 1 + $n),
                None => return Ok(None),
            }
        };
    }
    let (h, len) = match Marker::from_u8(first) {
        Marker::FixPos(v) => (Head::Uint(u64::from(v)), 1),
        Marker::FixNeg(v) => (Head::Int(i64::from(v)), 1),
        Marker::FixMap(n) => (Head::Map(u64::from(n)), 1),
        Marker::FixArray(n) => (Head::Array(u64::from(n)), 1),
        Marker::FixStr(n) => (Head::Str(usize::from(n)), 1),
        Marker::Null => (Head::Nil, 1),
        Marker::Reserved => return Err(bad("reserved marker 0xc1")),
        Marker::False => (Head::Bool(false), 1),
        Marker::True => (Head::Bool(true), 1),
        Marker::Bin8 => num!(1, |v| Head::Bin(v as usize)),
        Marker::Bin16 => num!(2, |v| Head::Bin(v as usize)),
        Marker::Bin32 => num!(4, |v| Head::Bin(v as usize)),
        Marker::Str8 => num!(1, |v| Head::Str(v as usize)),
        Marker::Str16 => num!(2, |v| Head::Str(v as usize)),
        Marker::Str32 => num!(4, |v| Head::Str(v as usize)),
        Marker::Array16 => num!(2, Head::Array),
        Marker::Array32 => num!(4, Head::Array),
        Marker::Map16 => num!(2, Head::Map),
        Marker::Map32 => num!(4, Head::Map),
        Marker::U8 => num!(1, Head::Uint),
        Marker::U16 => num!(2, Head::Uint),
        Marker::U32 => num!(4, Head::Uint),
        Marker::U64 => num!(8, Head::Uint),
        Marker::I8 => num!(1, |v| Head::Int(i64::from(v as u8 as i8))),
        Marker::I16 => num!(2, |v| Head::Int(i64::from(v as u16 as i16))),
        Marker::I32 => num!(4, |v| Head::Int(i64::from(v as u32 as i32))),
        Marker::I64 => num!(8, |v| Head::Int(v as i64)),
        Marker::F32 => num!(4, |v| Head::F32(f32::from_bits(v as u32))),
        Marker::F64 => num!(8, |v: u64| Head::F64(f64::from_bits(v))),
        Marker::FixExt1 | Marker::FixExt2 | Marker::FixExt4 | Marker::FixExt8 | Marker::FixExt16 => {
            let size = match Marker::from_u8(first) {
                Marker::FixExt1 => 1,
                Marker::FixExt2 => 2,
                Marker::FixExt4 => 4,
                Marker::FixExt8 => 8,
                _ => 16,
            };
            match buf.get(at) {
                Some(&t) => (Head::Ext(t as i8, size), 2),
                None => return Ok(None),
            }
        }
        Marker::Ext8 | Marker::Ext16 | Marker::Ext32 => {
            let n = match Marker::from_u8(first) {
                Marker::Ext8 => 1,
                Marker::Ext16 => 2,
                _ => 4,
            };
            match (be(buf, at, n), buf.get(at + n)) {
                (Some(size), Some(&t)) => (Head::Ext(t as i8, size as usize), 2 + n),
                _ => return Ok(None),
            }
        }
    };
    Ok(Some((h, len)))
}

/// Finds where one msgpack value (a frame: a top-level array) ends in a
/// growing buffer, resuming where the last call stopped.
#[derive(Debug)]
pub struct FrameScanner {
    /// Next header to read.
    pos: usize,
    /// Values still expected by each open container.
    stack: Vec<u64>,
    /// Largest element count of the top-level array (0: any).
    max_top: u64,
}

impl FrameScanner {
    /// `max_top`: the most elements the top-level array may have (0: any,
    /// and the top-level value may be anything).
    pub fn new(max_top: u64) -> Self {
        FrameScanner {
            pos: 0,
            stack: Vec::new(),
            max_top,
        }
    }

    /// Bytes of the first complete value of `buf`, or `None` until it has
    /// arrived. `buf` must start with the value and only grow between calls
    /// (call [`FrameScanner::reset`] after consuming a frame).
    pub fn scan(&mut self, buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
        loop {
            let Some((h, hl)) = head(buf, self.pos)? else {
                return if buf.len() > max {
                    Err(FrameError::TooLarge)
                } else {
                    Ok(None)
                };
            };
            if self.pos == 0 && self.max_top > 0 {
                match h {
                    Head::Array(n) if (1..=self.max_top).contains(&n) => {}
                    Head::Array(_) => return Err(bad("not a forward message (wrong array length)")),
                    _ => return Err(bad("not a forward message (not an array)")),
                }
            }
            let end = self.pos + hl + h.payload();
            if end > max {
                return Err(FrameError::TooLarge);
            }
            if end > buf.len() {
                return Ok(None);
            }
            self.pos = end;
            let open = match h {
                Head::Array(n) if n > 0 => Some(n),
                Head::Map(n) if n > 0 => Some(n.saturating_mul(2)),
                _ => None,
            };
            if let Some(n) = open {
                if self.stack.len() >= MAX_DEPTH {
                    return Err(bad("nested too deep"));
                }
                self.stack.push(n);
                continue;
            }
            // A complete value: close every container it completes.
            loop {
                match self.stack.last_mut() {
                    None => {
                        let len = self.pos;
                        self.reset();
                        return Ok(Some(len));
                    }
                    Some(top) => {
                        *top -= 1;
                        if *top > 0 {
                            break;
                        }
                        self.stack.pop();
                    }
                }
            }
        }
    }

    pub fn reset(&mut self) {
        self.pos = 0;
        self.stack.clear();
    }
}

/// Reads validated msgpack bytes; every method still checks bounds.
pub(super) struct Cur<'a> {
    pub(super) buf: &'a [u8],
    pub(super) pos: usize,
}

impl<'a> Cur<'a> {
    pub(super) fn head(&mut self) -> Result<Head, FrameError> {
        let (h, len) = head(self.buf, self.pos)?.ok_or(bad("truncated"))?;
        self.pos += len;
        Ok(h)
    }

    pub(super) fn payload(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let end = self.pos.checked_add(n).ok_or(bad("truncated"))?;
        let s = self.buf.get(self.pos..end).ok_or(bad("truncated"))?;
        self.pos = end;
        Ok(s)
    }

    /// Skips one value (its depth was bounded by the scanner).
    pub(super) fn skip(&mut self) -> Result<(), FrameError> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            let h = self.head()?;
            match h {
                Head::Array(n) => pending = pending.checked_add(n).ok_or(bad("too many elements"))?,
                Head::Map(n) => {
                    pending = pending
                        .checked_add(n.saturating_mul(2))
                        .ok_or(bad("too many elements"))?
                }
                other => {
                    self.payload(other.payload())?;
                }
            }
        }
        Ok(())
    }

    /// A string or binary value's bytes.
    pub(super) fn raw_str(&mut self) -> Result<Option<&'a [u8]>, FrameError> {
        match self.head()? {
            Head::Str(n) | Head::Bin(n) => Ok(Some(self.payload(n)?)),
            _ => Ok(None),
        }
    }

    /// An event time: integer seconds, EventTime (ext 0: seconds and
    /// nanoseconds), a float, `nil` (now), or Fluent Bit's `[time, metadata]`.
    pub(super) fn time(&mut self) -> Result<EventTime, FrameError> {
        let h = self.head()?;
        if h != Head::Array(2) {
            return self.flat_time(h);
        }
        let h = self.head()?;
        let t = self.flat_time(h)?;
        match self.head()? {
            Head::Map(n) => {
                for _ in 0..n.saturating_mul(2) {
                    self.skip()?;
                }
            }
            _ => return Err(bad("event metadata is not a map")),
        }
        Ok(t)
    }

    pub(super) fn flat_time(&mut self, h: Head) -> Result<EventTime, FrameError> {
        Ok(match h {
            Head::Uint(s) => EventTime::At(i64::try_from(s).unwrap_or(i64::MAX).saturating_mul(1000)),
            Head::Int(s) => EventTime::At(s.saturating_mul(1000)),
            Head::F32(f) => EventTime::At((f64::from(f) * 1000.0) as i64),
            Head::F64(f) => EventTime::At((f * 1000.0) as i64),
            Head::Nil => EventTime::Now,
            Head::Ext(0, 8) => {
                let b = self.payload(8)?;
                let secs = be(b, 0, 4).unwrap_or(0) as i64;
                let nanos = be(b, 4, 4).unwrap_or(0) as i64;
                EventTime::At(secs * 1000 + nanos / 1_000_000)
            }
            _ => return Err(bad("event time is not an integer or EventTime")),
        })
    }

    /// Skips the members of a container whose header was read.
    pub(super) fn skip_members(&mut self, h: Head) -> Result<(), FrameError> {
        let n = match h {
            Head::Array(n) => n,
            Head::Map(n) => n.saturating_mul(2),
            _ => 0,
        };
        for _ in 0..n {
            self.skip()?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EventTime {
    /// Unix milliseconds.
    At(i64),
    Now,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::forward::proto::tests::*;

    #[test]
    fn scanner_resumes_at_every_split_and_enforces_limits() {
        let mut stream = bytes(&V::A(vec![V::S("a"), V::Int(1), rec("one")]));
        let second = bytes(&V::A(vec![V::S("b"), V::B(packed(3))]));
        let first_len = stream.len();
        stream.extend(&second);
        for split in 0..=stream.len() {
            let mut s = FrameScanner::new(4);
            let got = match s.scan(&stream[..split], 1 << 20).unwrap() {
                Some(n) => Some(n),
                None => s.scan(&stream, 1 << 20).unwrap(),
            };
            assert_eq!(got, Some(first_len), "split at {split}");
            assert_eq!(s.scan(&stream[first_len..], 1 << 20).unwrap(), Some(second.len()));
        }
        // A header announcing more than the limit is refused before its bytes.
        let big = bytes(&V::A(vec![V::S("t"), V::B(vec![0; 5000])]));
        assert_eq!(FrameScanner::new(4).scan(&big[..10], 4096), Err(FrameError::TooLarge));
        // Deep nesting.
        let mut deep = V::M(vec![]);
        for _ in 0..100 {
            deep = V::A(vec![deep]);
        }
        let frame = bytes(&V::A(vec![V::S("t"), V::Int(1), V::M(vec![(V::S("d"), deep)])]));
        assert_eq!(
            FrameScanner::new(4).scan(&frame, 1 << 20),
            Err(FrameError::Malformed("nested too deep"))
        );
        // Wrong top-level shapes, seen from the first byte.
        assert!(FrameScanner::new(4).scan(&[0xa1, b'x'], 100).is_err());
        assert!(FrameScanner::new(4).scan(&[0x95], 100).is_err());
    }
}
