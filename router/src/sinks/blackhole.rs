//! `type = "blackhole"`: counts and discards (benchmarks, dry runs).

use serde::Deserialize;
use tokio::sync::mpsc;

use crate::event::Batch;
use crate::metrics::ComponentMetrics;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BlackholeSinkConfig {}

pub async fn run(mut input: mpsc::Receiver<Batch>, m: ComponentMetrics) {
    while let Some(batch) = input.recv().await {
        let n = batch.len() as u64;
        let bytes: usize = (0..batch.len()).map(|i| batch.approx_len(i) + 1).sum();
        m.received_events.inc_by(n);
        m.received_bytes.inc_by(batch.bytes());
        m.sent_events.inc_by(n);
        m.sent_bytes.inc_by(bytes as u64);
        // Dropping the batch acknowledges it.
    }
}
