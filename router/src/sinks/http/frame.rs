//! How one record sits in a body: NDJSON or JSON-array separators, and the
//! backend's framing (Splunk HEC event, OpenSearch `_bulk` action line, Loki
//! stream entry). Why apart from the batching in `mod.rs`: a body keeps only
//! where each record starts, so the framing must be computable per record
//! from its neighbour alone, and re-framing a subset (the documents a bulk
//! answer asks to send again) uses the same code.

use super::config::{Framing, HttpEncoding, HttpSinkConfig};

/// Where a record goes in its body, for the framings whose entries depend
/// on their neighbours (Loki's streams).
#[derive(Clone, Copy)]
pub(super) struct Place<'a> {
    /// The first record of the body.
    pub(super) first: bool,
    /// Loki: this record's labels (`{"job":"x"}`), and whether the record
    /// before it in the body had the same, so it joins that stream.
    pub(super) labels: &'a [u8],
    pub(super) same_stream: bool,
}

/// Writes record `rec` framed into `out`; returns where the record itself
/// starts in `out` (for Loki, where its JSON string starts). With JSON
/// arrays the length does not depend on `first` (`[` or `,`).
pub(super) fn frame(
    framing: Framing,
    encoding: HttpEncoding,
    at: Place<'_>,
    rec: &[u8],
    ts_ms: i64,
    out: &mut Vec<u8>,
) -> usize {
    use std::io::Write as _;
    if framing == Framing::Loki {
        // {"streams":[{"stream":{..},"values":[["<ns>","<record>"],...]},...]}
        if at.first {
            out.extend_from_slice(b"{\"streams\":[{\"stream\":");
            out.extend_from_slice(at.labels);
            out.extend_from_slice(b",\"values\":[");
        } else if at.same_stream {
            out.push(b',');
        } else {
            out.extend_from_slice(b"]},{\"stream\":");
            out.extend_from_slice(at.labels);
            out.extend_from_slice(b",\"values\":[");
        }
        let _ = write!(out, "[\"{}\",", i128::from(ts_ms) * 1_000_000);
        let start = out.len();
        // A record is JSON we encoded: UTF-8.
        let _ = serde_json::to_writer(&mut *out, &String::from_utf8_lossy(rec));
        out.push(b']');
        return start;
    }
    match encoding {
        HttpEncoding::JsonArray => out.push(if at.first { b'[' } else { b',' }),
        HttpEncoding::Ndjson => {}
    }
    match framing {
        Framing::None | Framing::Loki => {}
        Framing::SplunkHec => {
            // HEC's `time`: epoch seconds with milliseconds.
            let _ = write!(
                out,
                "{{\"time\":{}.{:03},\"event\":",
                ts_ms.div_euclid(1000),
                ts_ms.rem_euclid(1000)
            );
        }
        Framing::OpensearchBulk => out.extend_from_slice(b"{\"index\":{}}\n"),
    }
    let at = out.len();
    out.extend_from_slice(rec);
    if framing == Framing::SplunkHec {
        out.push(b'}');
    }
    if encoding == HttpEncoding::Ndjson {
        out.push(b'\n');
    }
    at
}

/// What closes a body after its last record.
pub(super) fn closing(cfg: &HttpSinkConfig) -> &'static [u8] {
    match (cfg.framing, cfg.encoding) {
        (Framing::Loki, _) => b"]}]}",
        (_, HttpEncoding::JsonArray) => b"]",
        _ => b"",
    }
}

/// A record as the dead letters take it: Loki bodies hold it as a JSON
/// string.
pub(super) fn unframed(framing: Framing, span: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    match framing {
        Framing::Loki => match serde_json::from_slice::<String>(span) {
            Ok(s) => std::borrow::Cow::Owned(s.into_bytes()),
            Err(_) => std::borrow::Cow::Borrowed(span),
        },
        _ => std::borrow::Cow::Borrowed(span),
    }
}
