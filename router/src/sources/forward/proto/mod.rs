//! The forward protocol's messages: framing, validation and decoding into
//! JSON object text. No I/O here.
//!
//! - [`scan`]: msgpack headers, the resumable frame scanner and the limits
//!   it enforces (frame size, nesting depth, tag length).
//! - [`codec`]: the event modes (Message, Forward, PackedForward,
//!   CompressedPackedForward), their options, the whole-frame check, the
//!   decoder into JSON text and the `{"ack": chunk}` reply.
//! - [`handshake`]: HELO, PING and PONG, the shared key and user password
//!   digests.

mod codec;
mod handshake;
mod scan;

pub use codec::{Decoder, Entries, Frame, Issues, Mode, ack_response, check_entries, gunzip, parse_frame};
pub use handshake::{Ping, helo, looks_like_data, parse_ping, password_digest, pong, shared_key_digest};
pub use scan::{FrameScanner, MAX_DEPTH};

/// Why a frame was refused. The connection is closed: after a framing error
/// the byte stream cannot be trusted to resynchronise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame larger than max_frame_size")]
    TooLarge,
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

impl FrameError {
    /// Metric reason.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::TooLarge => "frame_too_large",
            FrameError::Malformed(_) => "malformed_frame",
        }
    }
}

fn bad(what: &'static str) -> FrameError {
    FrameError::Malformed(what)
}

#[cfg(test)]
pub(crate) mod tests {
    //! Test frames shared by the submodules' tests.
    use super::*;
    use crate::event::Records;
    use serde_json::Value;

    /// A msgpack value for building test frames.
    #[derive(Debug, Clone)]
    pub(crate) enum V {
        Nil,
        Int(i64),
        F(f64),
        S(&'static str),
        Str(String),
        Raw(Vec<u8>),
        B(Vec<u8>),
        A(Vec<V>),
        M(Vec<(V, V)>),
        /// EventTime: seconds, nanoseconds.
        T(u32, u32),
    }

    pub(crate) fn enc(v: &V, out: &mut Vec<u8>) {
        use rmp::encode as e;
        match v {
            V::Nil => e::write_nil(out).unwrap(),
            V::Int(i) => {
                e::write_sint(out, *i).unwrap();
            }
            V::F(f) => e::write_f64(out, *f).unwrap(),
            V::S(s) => e::write_str(out, s).unwrap(),
            V::Str(s) => e::write_str(out, s).unwrap(),
            V::Raw(b) => {
                e::write_str_len(out, b.len() as u32).unwrap();
                out.extend_from_slice(b);
            }
            V::B(b) => e::write_bin(out, b).unwrap(),
            V::A(items) => {
                e::write_array_len(out, items.len() as u32).unwrap();
                items.iter().for_each(|i| enc(i, out));
            }
            V::M(pairs) => {
                e::write_map_len(out, pairs.len() as u32).unwrap();
                for (k, v) in pairs {
                    enc(k, out);
                    enc(v, out);
                }
            }
            V::T(s, ns) => {
                e::write_ext_meta(out, 8, 0).unwrap();
                out.extend_from_slice(&s.to_be_bytes());
                out.extend_from_slice(&ns.to_be_bytes());
            }
        }
    }

    pub(crate) fn bytes(v: &V) -> Vec<u8> {
        let mut out = Vec::new();
        enc(v, &mut out);
        out
    }

    pub(crate) fn rec(log: &'static str) -> V {
        V::M(vec![(V::S("log"), V::S(log)), (V::S("n"), V::Int(-3))])
    }

    /// 2026-11-25T23:15:47Z
    pub(crate) const SECS: u32 = 1_795_648_547;

    /// Frames a test value, parses, checks and decodes it the way a
    /// connection does.
    pub(crate) fn decode(frame: &[u8]) -> Result<(Frame, Vec<Value>, Records, Issues), FrameError> {
        decode_with(frame, 1024)
    }

    pub(crate) fn decode_with(
        frame: &[u8],
        max_record: usize,
    ) -> Result<(Frame, Vec<Value>, Records, Issues), FrameError> {
        let mut s = FrameScanner::new(4);
        assert_eq!(s.scan(frame, 1 << 20)?, Some(frame.len()), "frame end");
        let f = parse_frame(frame)?;
        let mut inflated = Vec::new();
        let (bytes, range) = match f.mode {
            Mode::Message => (frame, f.entries.clone()),
            Mode::Forward => {
                check_entries(&frame[f.entries.clone()], Some(f.count))?;
                (frame, f.entries.clone())
            }
            Mode::PackedForward if f.gzip => {
                gunzip(&frame[f.entries.clone()], 1 << 20, &mut inflated)?;
                check_entries(&inflated, None)?;
                (&inflated[..], 0..inflated.len())
            }
            Mode::PackedForward => {
                check_entries(&frame[f.entries.clone()], None)?;
                (frame, f.entries.clone())
            }
        };
        let mut d = Decoder::new(max_record);
        let mut r = Records::default();
        let mut e = Entries::new(range, f.mode);
        while !e.done() {
            // A tiny budget: decoding resumes across many calls.
            let budget = r.buf.len() + 1;
            d.decode_some(bytes, &mut e, &mut r, budget, 42_000)?;
        }
        let vals = (0..r.len())
            .map(|i| serde_json::from_slice(r.text(i)).expect("valid JSON"))
            .collect();
        let issues = d.issues;
        Ok((f, vals, r, issues))
    }

    pub(crate) fn packed(n: usize) -> Vec<u8> {
        let mut p = Vec::new();
        for i in 0..n {
            enc(
                &V::A(vec![V::T(SECS, 0), V::M(vec![(V::S("i"), V::Int(i as i64))])]),
                &mut p,
            );
        }
        p
    }
}
