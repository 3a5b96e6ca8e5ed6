//! Object encoding shared by the object sinks (`file`, `s3`): NDJSON,
//! compressed as configured.
//!
//! Why gzip at the default level 6 through `flate2`'s zlib-rs backend, and
//! zstd level 3: both are what downstream tools (Athena, `zcat`, the indexer)
//! read without options, and these levels sit at the knee of the
//! size/CPU curve for log text.

use std::io::Write;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    None,
}

impl Compression {
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Gzip => ".ndjson.gz",
            Compression::Zstd => ".ndjson.zst",
            Compression::None => ".ndjson",
        }
    }

    /// `Content-Encoding` of an object, if compressed.
    pub fn content_encoding(self) -> Option<&'static str> {
        match self {
            Compression::Gzip => Some("gzip"),
            Compression::Zstd => Some("zstd"),
            Compression::None => None,
        }
    }
}

/// `Content-Type` of NDJSON objects.
pub const CONTENT_TYPE: &str = "application/x-ndjson";

/// A compressing writer over `W`.
pub enum Encoder<W: Write> {
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::Encoder<'static, W>),
    Plain(W),
}

impl<W: Write> Encoder<W> {
    pub fn new(c: Compression, w: W) -> std::io::Result<Self> {
        Ok(match c {
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(w, flate2::Compression::default())),
            Compression::Zstd => Encoder::Zstd(zstd::Encoder::new(w, 3)?),
            Compression::None => Encoder::Plain(w),
        })
    }

    pub fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(b),
            Encoder::Zstd(e) => e.write_all(b),
            Encoder::Plain(e) => e.write_all(b),
        }
    }

    /// The sink the compressed bytes go to (e.g. to take what is ready).
    pub fn get_mut(&mut self) -> &mut W {
        match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
            Encoder::Plain(w) => w,
        }
    }

    pub fn get_ref(&self) -> &W {
        match self {
            Encoder::Gzip(e) => e.get_ref(),
            Encoder::Zstd(e) => e.get_ref(),
            Encoder::Plain(w) => w,
        }
    }

    /// Ends the stream and returns the inner writer.
    pub fn finish(self) -> std::io::Result<W> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
            Encoder::Plain(w) => Ok(w),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn round_trips_even_when_output_is_taken_midway() {
        for c in [Compression::Gzip, Compression::Zstd, Compression::None] {
            let mut e = Encoder::new(c, Vec::new()).unwrap();
            let mut taken = Vec::new();
            let mut want = Vec::new();
            for i in 0..20_000 {
                let line = format!("{{\"n\":{i},\"msg\":\"some log text {}\"}}\n", i * 7919 % 1000);
                want.extend_from_slice(line.as_bytes());
                e.write_all(line.as_bytes()).unwrap();
                if i % 5000 == 0 {
                    taken.append(e.get_mut());
                }
            }
            taken.extend(e.finish().unwrap());
            let got = match c {
                Compression::Gzip => {
                    let mut s = Vec::new();
                    flate2::read::GzDecoder::new(&taken[..]).read_to_end(&mut s).unwrap();
                    s
                }
                Compression::Zstd => zstd::decode_all(&taken[..]).unwrap(),
                Compression::None => taken,
            };
            assert_eq!(got, want, "{c:?}");
        }
    }
}
