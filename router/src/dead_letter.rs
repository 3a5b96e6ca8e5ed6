//! Dead letters: records a sink rejects for good, kept instead of lost.
//!
//! A record CloudWatch will never take (older than 14 days or than the
//! group's retention, more than 2 h ahead), a log line longer than a Firehose
//! record, a record Firehose keeps refusing past the retry bound: retrying
//! these would block every record behind them forever, so the sink lets them
//! go and acknowledges the batch. What must not happen is that they vanish
//! silently, so each one is counted by reason
//! (`logferry_component_discarded_events_total`) and, with
//! `global.dead_letter_dir`, appended to
//! `<dead_letter_dir>/<sink>/<uuidv7>.ndjson` as
//! `{"time":...,"sink":...,"reason":...,"record":{...}}`. The file is synced
//! before the sink acknowledges, so a dead letter is as durable as a
//! delivered record. Without the directory one warning per reason per
//! minute says what is being dropped.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics::ComponentMetrics;

/// A dead-letter file is closed (and a new one started) past this size.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// One warning per reason per this long.
const WARN_EVERY: Duration = Duration::from_secs(60);

pub struct DeadLetters {
    sink: String,
    dir: Option<PathBuf>,
    m: ComponentMetrics,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    file: Option<(File, u64)>,
    last_warn: HashMap<&'static str, Instant>,
    buf: Vec<u8>,
}

impl DeadLetters {
    /// `dir` is `global.dead_letter_dir`; the sink writes under `<dir>/<sink>/`.
    pub fn new(dir: Option<&Path>, sink: &str, m: ComponentMetrics) -> Self {
        DeadLetters {
            sink: sink.to_string(),
            dir: dir.map(|d| d.join(sink)),
            m,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Counts `records` (JSON object texts) as dropped for `reason` and
    /// writes them to the dead-letter directory when there is one. Returns
    /// once they are synced to disk (or could not be written, which is logged:
    /// the count stands either way).
    pub fn send<'a>(&self, reason: &'static str, records: impl IntoIterator<Item = &'a [u8]>) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let inner = &mut *inner;
        let mut buf = std::mem::take(&mut inner.buf);
        buf.clear();
        let mut count = 0u64;
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        for record in records {
            count += 1;
            if self.dir.is_none() {
                continue;
            }
            buf.extend_from_slice(b"{\"time\":\"");
            buf.extend_from_slice(time.as_bytes());
            buf.extend_from_slice(b"\",\"sink\":");
            serde_json::to_writer(&mut buf, &self.sink).expect("writing to a Vec cannot fail");
            buf.extend_from_slice(b",\"reason\":\"");
            buf.extend_from_slice(reason.as_bytes());
            buf.extend_from_slice(b"\",\"record\":");
            let record = trim_newline(record);
            if serde_json::from_slice::<serde::de::IgnoredAny>(record).is_ok() {
                buf.extend_from_slice(record);
            } else {
                // Not JSON (a truncated message): keep it as a string.
                serde_json::to_writer(&mut buf, &String::from_utf8_lossy(record))
                    .expect("writing to a Vec cannot fail");
            }
            buf.extend_from_slice(b"}\n");
        }
        if count == 0 {
            inner.buf = buf;
            return;
        }
        self.m.discarded(reason, count);
        let written = match &self.dir {
            Some(dir) => match write_synced(inner, dir, &buf) {
                Ok(()) => {
                    self.m.dead_letters(reason, count);
                    true
                }
                Err(e) => {
                    tracing::error!(sink = %self.sink, dir = %dir.display(), error = %e, reason, count, "cannot write dead letters; the records are dropped (counted)");
                    false
                }
            },
            None => false,
        };
        let now = Instant::now();
        if inner
            .last_warn
            .get(reason)
            .is_none_or(|t| now.duration_since(*t) >= WARN_EVERY)
        {
            inner.last_warn.insert(reason, now);
            if written {
                tracing::warn!(sink = %self.sink, reason, count, "records rejected for good; written to the dead-letter directory (once a minute per reason)");
            } else if self.dir.is_none() {
                tracing::warn!(sink = %self.sink, reason, count, "records rejected for good and dropped (counted); set global.dead_letter_dir to keep them (once a minute per reason)");
            }
        }
        inner.buf = buf;
    }
}

fn trim_newline(r: &[u8]) -> &[u8] {
    let mut r = r;
    while let [rest @ .., b'\n' | b'\r'] = r {
        r = rest;
    }
    r
}

fn write_synced(inner: &mut Inner, dir: &Path, data: &[u8]) -> std::io::Result<()> {
    if inner.file.as_ref().is_none_or(|(_, n)| *n >= MAX_FILE_BYTES) {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{}.ndjson", uuid::Uuid::now_v7().simple()));
        let f = OpenOptions::new().create_new(true).append(true).open(&path)?;
        // The new name must survive a crash too.
        File::open(dir)?.sync_all()?;
        inner.file = Some((f, 0));
    }
    let Some((f, n)) = inner.file.as_mut() else {
        return Err(std::io::Error::other("no dead-letter file"));
    };
    f.write_all(data)?;
    f.sync_data()?;
    *n += data.len() as u64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn writes_ndjson_with_reason_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let dl = DeadLetters::new(Some(dir.path()), "cw", metrics.component("cw", "cloudwatch_logs"));
        dl.send("too_old", [&br#"{"a":1}"#[..], b"{\"b\":\"x\"}\n", b"not json"]);
        dl.send("too_new", [&br#"{"c":2}"#[..]]);
        let files: Vec<_> = std::fs::read_dir(dir.path().join("cw")).unwrap().flatten().collect();
        assert_eq!(files.len(), 1);
        let text = std::fs::read_to_string(files[0].path()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0]["reason"], "too_old");
        assert_eq!(lines[0]["sink"], "cw");
        assert_eq!(lines[0]["record"], serde_json::json!({"a": 1}));
        assert_eq!(lines[1]["record"], serde_json::json!({"b": "x"}));
        assert_eq!(lines[2]["record"], "not json");
        assert_eq!(lines[3]["reason"], "too_new");
        let m = metrics.encode();
        assert!(
            m.contains(r#"logferry_component_discarded_events_total{component="cw",reason="too_old"} 3"#),
            "{m}"
        );
        assert!(m.contains(r#"logferry_dead_letter_records_total{component="cw",reason="too_old"} 3"#));
    }

    #[test]
    fn without_a_directory_only_counts() {
        let metrics = Metrics::new();
        let dl = DeadLetters::new(None, "fh", metrics.component("fh", "firehose"));
        dl.send("over_size_limit", [&b"{}"[..], b"{}"]);
        let m = metrics.encode();
        assert!(m.contains(r#"logferry_component_discarded_events_total{component="fh",reason="over_size_limit"} 2"#));
        assert!(!m.contains("logferry_dead_letter_records_total{"));
    }
}
