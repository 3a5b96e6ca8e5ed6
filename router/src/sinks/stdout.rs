//! `type = "stdout"`: NDJSON on standard output (debugging, `kubectl logs`).

use std::io::Write;

use serde::Deserialize;
use tokio::sync::mpsc;

use super::encoding::{MissingKey, RecordFormat};
use crate::event::Batch;
use crate::metrics::ComponentMetrics;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {
    /// Send only this field's value (see `sinks::encoding::RecordFormat`).
    pub log_key: Option<String>,
    /// Key of the time the source added: `@timestamp` (default), `""` to
    /// leave it out, or another name.
    pub timestamp_key: Option<String>,
}

impl StdoutSinkConfig {
    pub fn validate(&self, ctx: &mut crate::confdiag::Ctx<'_>, base: &[crate::confdiag::Seg]) -> bool {
        RecordFormat::validate(self.log_key.as_deref(), ctx, base)
    }
}

pub async fn run(cfg: StdoutSinkConfig, mut input: mpsc::Receiver<Batch>, m: ComponentMetrics) {
    let format = RecordFormat::new(cfg.log_key.as_deref(), cfg.timestamp_key.as_deref());
    let mut buf = Vec::with_capacity(256 * 1024);
    let mut warned = false;
    let mut missing = MissingKey::default();
    while let Some(batch) = input.recv().await {
        buf.clear();
        for i in 0..batch.len() {
            if format.encode(&batch, i, &mut buf) {
                buf.push(b'\n');
            } else {
                missing.record();
            }
        }
        missing.flush(&m, &format);
        let n = batch.len() as u64;
        m.received_events.inc_by(n);
        m.received_bytes.inc_by(batch.bytes());
        let r = tokio::task::block_in_place(|| {
            let mut out = std::io::stdout().lock();
            out.write_all(&buf).and_then(|_| out.flush())
        });
        match r {
            Ok(()) => {
                m.sent_events.inc_by(n);
                m.sent_bytes.inc_by(buf.len() as u64);
                warned = false;
            }
            Err(e) => {
                batch.fail();
                m.sink_error("write");
                if !warned {
                    tracing::warn!(error = %e, "cannot write to stdout");
                    warned = true;
                }
            }
        }
    }
}
