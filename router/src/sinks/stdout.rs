//! `type = "stdout"`: NDJSON on standard output (debugging, `kubectl logs`).

use std::io::Write;

use serde::Deserialize;
use tokio::sync::mpsc;

use crate::event::Batch;
use crate::metrics::ComponentMetrics;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {}

pub async fn run(mut input: mpsc::Receiver<Batch>, m: ComponentMetrics) {
    let mut buf = Vec::with_capacity(256 * 1024);
    let mut warned = false;
    while let Some(batch) = input.recv().await {
        buf.clear();
        for i in 0..batch.len() {
            batch.encode(i, &mut buf);
            buf.push(b'\n');
        }
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
