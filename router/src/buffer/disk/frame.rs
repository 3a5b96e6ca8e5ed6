//! Frames: how records sit in a segment file.
//!
//! ```text
//! frame   = magic FE 4C 46 01 | len: u32 LE | crc: u32 LE | payload (len bytes)
//! crc     = CRC-32 (IEEE) of the 4 bytes of `len` followed by the payload
//! payload = texts | metas | [tag | tag_len: u16 LE] | count: u32 LE
//! texts   = the records' final JSON (batch fields spliced in), back to back
//! metas   = count x (len: u32 LE, ts_ms: i64 LE, key_mask: u64 LE);
//!           bit 31 of len: the record's `@timestamp` is the source's
//! tag     = the batch's Fluent tag (UTF-8), present when bit 31 of count is set
//! ```
//!
//! Why texts come first: the payload read from disk becomes the replayed
//! batch's record buffer as it is (the metas and count are cut off its end),
//! so reading costs one `pread` and no copy. Why the CRC covers the length: a
//! damaged length must not point at a "frame" whose bytes happen to check.
//! Why the magic starts with 0xFE: that byte never occurs in UTF-8, so record
//! text can not look like a header; binary metas can, and the CRC settles it.
//! Why the tag rides on a bit of the count: frames written before it existed
//! stay readable as they are (their count never has bit 31), and templates
//! such as `key_prefix = "fluent/{tag}/"` render the same after a replay as
//! they would have without the buffer; likewise a record's length carries
//! [`RecordMeta::ts_added`] in its bit 31 (a length never reaches it), so a
//! sink's `timestamp_key` treats a replayed record as it would the original.
//! Why [`MAX_PAYLOAD`]: a length is data from disk; bounding it bounds what a
//! damaged header can make the reader allocate.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::event::{Batch, RecordMeta, Records};

pub const MAGIC: [u8; 4] = [0xFE, b'L', b'F', 0x01];
pub const HEADER_LEN: u64 = 12;
const META_LEN: usize = 20;
/// Set in a frame's count when a tag precedes it.
const TAGGED: u32 = 1 << 31;
/// Set in a record's length when its `@timestamp` is the source's.
const TS_ADDED: u32 = 1 << 31;
/// Records are packed into frames of about this many payload bytes.
pub const FRAME_TARGET: usize = 1 << 20;
/// Hard bound on a payload; a longer length is damage by definition. A
/// single record that would need more is dropped (`reason="too_large"`).
pub const MAX_PAYLOAD: u64 = 64 << 20;

/// Where one frame stands in the encoder's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSpan {
    pub start: usize,
    /// Whole frame, header included.
    pub len: usize,
    pub records: u32,
}

/// Turns batches into frames; keeps its scratch buffer between calls.
#[derive(Debug)]
pub struct Encoder {
    target: usize,
    metas: Vec<u8>,
}

impl Encoder {
    /// `target`: payload bytes after which a frame is closed (a frame holds
    /// at least one record).
    pub fn new(target: usize) -> Self {
        Encoder {
            target,
            metas: Vec::new(),
        }
    }

    /// Appends the records of `batch` to `out` as frames, and their places
    /// to `spans`. Returns how many records were too large for any frame and
    /// left out.
    pub fn encode(&mut self, batch: &Batch, out: &mut Vec<u8>, spans: &mut Vec<FrameSpan>) -> u64 {
        let fields_mask = batch.fields.iter().fold(0, |m, f| m | f.mask());
        // A tag too long for its length field is left off (never seen: tags
        // are names, and a forward frame bounds them far below this).
        let tag = batch.tag.as_deref().filter(|t| t.len() <= usize::from(u16::MAX));
        let tag_len = tag.map_or(0, |t| t.len() + 2);
        let n = batch.len();
        let mut dropped = 0;
        let mut i = 0;
        while i < n {
            let frame_start = out.len();
            out.extend_from_slice(&[0; HEADER_LEN as usize]);
            self.metas.clear();
            let mut count: u32 = 0;
            while i < n {
                let payload = out.len() - frame_start - HEADER_LEN as usize + self.metas.len() + META_LEN + 4 + tag_len;
                if count > 0 && payload + batch.approx_len(i) > self.target {
                    break;
                }
                let start = out.len();
                batch.encode(i, out);
                let len = out.len() - start;
                let meta = batch.records.meta[i];
                i += 1;
                if (payload + len) as u64 > MAX_PAYLOAD {
                    // Only a record alone can get here: approx_len bounds the rest.
                    out.truncate(start);
                    dropped += 1;
                    continue;
                }
                let flag = if meta.ts_added { TS_ADDED } else { 0 };
                self.metas.extend_from_slice(&(len as u32 | flag).to_le_bytes());
                self.metas.extend_from_slice(&meta.ts_ms.to_le_bytes());
                self.metas
                    .extend_from_slice(&(meta.key_mask | fields_mask).to_le_bytes());
                count += 1;
            }
            if count == 0 {
                out.truncate(frame_start);
                continue;
            }
            out.extend_from_slice(&self.metas);
            let count_field = match tag {
                Some(t) => {
                    out.extend_from_slice(t.as_bytes());
                    out.extend_from_slice(&(t.len() as u16).to_le_bytes());
                    count | TAGGED
                }
                None => count,
            };
            out.extend_from_slice(&count_field.to_le_bytes());
            let payload_len = (out.len() - frame_start - HEADER_LEN as usize) as u32;
            let crc = checksum(payload_len, &out[frame_start + HEADER_LEN as usize..]);
            let header = &mut out[frame_start..frame_start + HEADER_LEN as usize];
            header[..4].copy_from_slice(&MAGIC);
            header[4..8].copy_from_slice(&payload_len.to_le_bytes());
            header[8..].copy_from_slice(&crc.to_le_bytes());
            spans.push(FrameSpan {
                start: frame_start,
                len: out.len() - frame_start,
                records: count,
            });
        }
        dropped
    }
}

fn checksum(len: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// What one frame holds.
#[derive(Debug)]
pub struct Frame {
    pub records: Records,
    pub tag: Option<std::sync::Arc<str>>,
}

/// Records (and tag) of a payload whose CRC matched; `None` if its
/// structure is inconsistent (then it is treated as damage too).
pub fn decode(mut payload: Vec<u8>) -> Option<Frame> {
    let mut n = payload.len();
    let count_field = le_u32(&payload, n.checked_sub(4)?)?;
    n -= 4;
    let count = (count_field & !TAGGED) as usize;
    let tag = if count_field & TAGGED != 0 {
        let len = u16::from_le_bytes(payload.get(n.checked_sub(2)?..n)?.try_into().ok()?) as usize;
        n = n.checked_sub(2)?.checked_sub(len)?;
        Some(std::sync::Arc::from(
            std::str::from_utf8(payload.get(n..n + len)?).ok()?,
        ))
    } else {
        None
    };
    let text_len = n.checked_sub(count.checked_mul(META_LEN)?)?;
    if text_len > u32::MAX as usize {
        return None;
    }
    let mut meta = Vec::with_capacity(count);
    let mut start = 0usize;
    for m in payload.get(text_len..n)?.chunks_exact(META_LEN) {
        let len_field = le_u32(m, 0)?;
        let len = len_field & !TS_ADDED;
        meta.push(RecordMeta {
            start: start as u32,
            len,
            ts_ms: le_u64(m, 4)? as i64,
            key_mask: le_u64(m, 12)?,
            ts_added: len_field & TS_ADDED != 0,
        });
        start = start.checked_add(len as usize)?;
    }
    if start != text_len {
        return None;
    }
    payload.truncate(text_len);
    Some(Frame {
        records: Records {
            buf: payload,
            meta,
            permit: None,
        },
        tag,
    })
}

/// Payload length and CRC of a plausible header at `off` (a frame that
/// would end by `end`), else `None`.
fn header_at(file: &File, off: u64, end: u64) -> io::Result<Option<(u32, u32)>> {
    if end.saturating_sub(off) < HEADER_LEN {
        return Ok(None);
    }
    let mut h = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut h, off)?;
    let (Some(len), Some(crc)) = (le_u32(&h, 4), le_u32(&h, 8)) else {
        return Ok(None);
    };
    let fits = off + HEADER_LEN + len as u64 <= end;
    Ok((h[..4] == MAGIC && len as u64 <= MAX_PAYLOAD && len >= 4 && fits).then_some((len, crc)))
}

/// The records of the frame at `off` and the frame's length; `None` when
/// there is no valid frame there.
pub fn read_at(file: &File, off: u64, end: u64) -> io::Result<Option<(Frame, u64)>> {
    let Some((len, crc)) = header_at(file, off, end)? else {
        return Ok(None);
    };
    let mut payload = vec![0u8; len as usize];
    file.read_exact_at(&mut payload, off + HEADER_LEN)?;
    if checksum(len, &payload) != crc {
        return Ok(None);
    }
    Ok(decode(payload).map(|r| (r, HEADER_LEN + len as u64)))
}

/// Length and record count of the frame at `off` without keeping its
/// payload. With `verify` the CRC is checked, streaming the payload through
/// `scratch`; without it only the header and the count are read.
pub fn inspect_at(file: &File, off: u64, end: u64, verify: bool, scratch: &mut [u8]) -> io::Result<Option<(u64, u32)>> {
    let Some((len, crc)) = header_at(file, off, end)? else {
        return Ok(None);
    };
    let payload_at = off + HEADER_LEN;
    if verify {
        let mut h = crc32fast::Hasher::new();
        h.update(&len.to_le_bytes());
        let mut done = 0u64;
        while done < len as u64 {
            let n = scratch.len().min((len as u64 - done) as usize);
            file.read_exact_at(&mut scratch[..n], payload_at + done)?;
            h.update(&scratch[..n]);
            done += n as u64;
        }
        if h.finalize() != crc {
            return Ok(None);
        }
    }
    let mut count = [0u8; 4];
    file.read_exact_at(&mut count, payload_at + len as u64 - 4)?;
    Ok(Some((HEADER_LEN + len as u64, u32::from_le_bytes(count) & !TAGGED)))
}

/// The first offset in `from..end` where a valid frame starts (magic, sane
/// length, matching CRC). Reads in `scratch`-sized chunks: a damaged region
/// is never loaded whole.
pub fn next_valid(file: &File, from: u64, end: u64, scratch: &mut [u8]) -> io::Result<Option<u64>> {
    let finder = memchr::memmem::Finder::new(&MAGIC);
    let mut chunk = vec![0u8; scratch.len().max(64)];
    let mut pos = from;
    while end.saturating_sub(pos) >= HEADER_LEN {
        let n = chunk.len().min((end - pos) as usize);
        file.read_exact_at(&mut chunk[..n], pos)?;
        for i in finder.find_iter(&chunk[..n]) {
            if inspect_at(file, pos + i as u64, end, true, scratch)?.is_some() {
                return Ok(Some(pos + i as u64));
            }
        }
        if pos + n as u64 >= end {
            break;
        }
        // Overlap by three bytes: a magic across the boundary is seen next time.
        pos += (n - (MAGIC.len() - 1)) as u64;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::event::Fields;
    use crate::sources::file::parse::key_bit;

    /// A batch of `{"k":"<s>"}` records with the given times and masks, and
    /// optional enrichment.
    pub(crate) fn batch(texts: &[String], fields: &[(String, String)]) -> Batch {
        let mut r = Records::default();
        for (i, t) in texts.iter().enumerate() {
            let start = r.buf.len();
            r.buf.extend_from_slice(b"{\"k\":");
            serde_json::to_writer(&mut r.buf, t).unwrap();
            r.buf.push(b'}');
            let (ts, mask) = (i as i64 * 1_000 - 7, key_bit(b"k") | (i as u64) << 40);
            if i % 3 == 1 {
                r.push_stamped(start, ts, mask);
            } else {
                r.push_written(start, ts, mask);
            }
        }
        let mut b = Batch::new(r, None);
        if !fields.is_empty() {
            b.fields.push(Arc::new(Fields::new(
                fields.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))),
            )));
        }
        b
    }

    /// Every frame in `bytes` read back, in order.
    fn read_all(bytes: &[u8]) -> Vec<Records> {
        read_frames(bytes).into_iter().map(|f| f.records).collect()
    }

    /// Every frame in `bytes` read back, in order, with its tag.
    fn read_frames(bytes: &[u8]) -> Vec<Frame> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        let end = bytes.len() as u64;
        let mut off = 0;
        let mut out = Vec::new();
        let mut scratch = vec![0u8; 100];
        while off < end {
            assert!(inspect_at(&f, off, end, true, &mut scratch).unwrap().is_some());
            let (r, len) = read_at(&f, off, end).unwrap().expect("valid frame");
            out.push(r);
            off += len;
        }
        out
    }

    proptest! {
        /// Whatever the records, fields and frame size: reading the frames
        /// back gives each record byte-identical to `Batch::encode`, with its
        /// time, and a key mask that still finds every key.
        #[test]
        fn frames_round_trip(
            texts in proptest::collection::vec(".{0,300}", 1..60),
            fields in proptest::collection::vec(("[a-z]{1,8}", ".{0,20}"), 0..4),
            target in 1usize..4096,
        ) {
            let b = batch(&texts, &fields);
            let mut enc = Encoder::new(target);
            let (mut out, mut spans) = (Vec::new(), Vec::new());
            prop_assert_eq!(enc.encode(&b, &mut out, &mut spans), 0);
            prop_assert_eq!(spans.iter().map(|s| s.len).sum::<usize>(), out.len());
            let frames = read_all(&out);
            prop_assert_eq!(frames.len(), spans.len());
            let mut i = 0;
            for (records, span) in frames.iter().zip(&spans) {
                prop_assert_eq!(records.len() as u32, span.records);
                for j in 0..records.len() {
                    let mut want = Vec::new();
                    b.encode(i, &mut want);
                    prop_assert_eq!(records.text(j), &want[..]);
                    prop_assert_eq!(records.meta[j].ts_ms, b.ts_ms(i));
                    prop_assert_eq!(records.meta[j].ts_added, b.records.meta[i].ts_added, "record {}", i);
                    prop_assert_eq!(records.meta[j].len as usize, want.len());
                    let replay = Batch::new(Records { buf: records.buf.clone(), meta: records.meta.clone(), permit: None }, None);
                    prop_assert_eq!(replay.lookup(j, "k"), b.lookup(i, "k"));
                    for (k, _) in &fields {
                        prop_assert_eq!(replay.lookup(j, k), b.lookup(i, k));
                    }
                    i += 1;
                }
            }
            prop_assert_eq!(i, b.len());
        }
    }

    #[test]
    fn damage_is_found_and_skipped() {
        let texts: Vec<String> = (0..200).map(|i| format!("record {i}")).collect();
        let b = batch(&texts, &[]);
        let (mut out, mut spans) = (Vec::new(), Vec::new());
        Encoder::new(512).encode(&b, &mut out, &mut spans);
        assert!(spans.len() > 5);
        // A flipped byte inside the second frame's payload.
        out[spans[1].start + 30] ^= 0x55;
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&out).unwrap();
        let end = out.len() as u64;
        let mut scratch = vec![0u8; 64];
        assert!(read_at(&f, spans[1].start as u64, end).unwrap().is_none());
        assert!(
            inspect_at(&f, spans[1].start as u64, end, true, &mut scratch)
                .unwrap()
                .is_none()
        );
        // Without verification the header still looks fine.
        assert!(
            inspect_at(&f, spans[1].start as u64, end, false, &mut scratch)
                .unwrap()
                .is_some()
        );
        let next = next_valid(&f, spans[1].start as u64 + 1, end, &mut scratch).unwrap();
        assert_eq!(next, Some(spans[2].start as u64));
        // A damaged length is caught as well.
        out[spans[3].start + 5] ^= 0x01;
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&out).unwrap();
        assert!(read_at(&f, spans[3].start as u64, end).unwrap().is_none());
        assert_eq!(
            next_valid(&f, spans[3].start as u64 + 1, end, &mut scratch).unwrap(),
            Some(spans[4].start as u64)
        );
        // Nothing valid after the last frame's start.
        let last = spans.last().unwrap().start as u64;
        assert_eq!(next_valid(&f, last + 1, end, &mut scratch).unwrap(), None);
    }

    #[test]
    fn a_record_too_large_for_any_frame_is_left_out() {
        let big = "x".repeat(MAX_PAYLOAD as usize);
        let b = batch(&["a".to_string(), big, "b".to_string()], &[]);
        let (mut out, mut spans) = (Vec::new(), Vec::new());
        assert_eq!(Encoder::new(FRAME_TARGET).encode(&b, &mut out, &mut spans), 1);
        let texts: Vec<Vec<u8>> = read_all(&out)
            .iter()
            .flat_map(|r| (0..r.len()).map(|j| r.text(j).to_vec()).collect::<Vec<_>>())
            .collect();
        assert_eq!(texts, vec![br#"{"k":"a"}"#.to_vec(), br#"{"k":"b"}"#.to_vec()]);
    }

    #[test]
    fn inconsistent_payloads_are_rejected() {
        assert!(decode(vec![]).is_none());
        assert!(decode(vec![1, 0, 0, 0]).is_none());
        assert!(decode(vec![0xff; 8]).is_none());
        let r = decode(vec![0, 0, 0, 0]).unwrap();
        assert!(r.records.is_empty() && r.tag.is_none());
        // Tagged, but the tag length points before the payload.
        assert!(decode(vec![9, 0, 0, 0, 0, 0x80]).is_none());
        // Tagged with a tag that is not UTF-8.
        assert!(decode(vec![0xff, 1, 0, 0, 0, 0, 0x80]).is_none());
    }

    #[test]
    fn the_tag_is_kept_in_every_frame_and_untagged_frames_read_as_before() {
        let texts: Vec<String> = (0..50).map(|i| format!("record {i}")).collect();
        let mut b = batch(&texts, &[]);
        b.tag = Some(Arc::from("app-firelens-1234"));
        let (mut out, mut spans) = (Vec::new(), Vec::new());
        Encoder::new(256).encode(&b, &mut out, &mut spans);
        assert!(spans.len() > 2);
        let frames = read_frames(&out);
        assert_eq!(frames.iter().map(|f| f.records.len()).sum::<usize>(), 50);
        assert!(frames.iter().all(|f| f.tag.as_deref() == Some("app-firelens-1234")));
        let mut scratch = vec![0u8; 64];
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&out).unwrap();
        let counted = inspect_at(&f, 0, out.len() as u64, true, &mut scratch)
            .unwrap()
            .unwrap()
            .1;
        assert_eq!(
            counted as usize,
            frames[0].records.len(),
            "the count without the tag bit"
        );
        // A batch without a tag writes the frames of before.
        let b = batch(&texts, &[]);
        let (mut plain, mut spans) = (Vec::new(), Vec::new());
        Encoder::new(256).encode(&b, &mut plain, &mut spans);
        assert!(read_frames(&plain).iter().all(|f| f.tag.is_none()));
        let last = spans[0].start + spans[0].len - 4;
        assert_eq!(plain[last + 3] & 0x80, 0);
    }
}
