//! The task loop of the transforms that join records across batches
//! (`multiline`, `partial_message`, and the forward source's `partial`):
//! batches in, joined batches out, open groups flushed at their deadline
//! and all of them when the input closes. One loop, so the two joiners
//! cannot differ in when they flush or what they count.

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::event::Batch;
use crate::metrics::ComponentMetrics;
use crate::timer::sleep_until;
use crate::topology::Fanout;

/// A joiner's state machine, without I/O (its tests drive it directly).
pub trait Join {
    /// Takes in a batch; returns the batches ready now.
    fn push(&mut self, batch: Batch, now: Instant) -> Vec<Batch>;
    /// The groups whose deadline passed, as batches.
    fn expire(&mut self, now: Instant) -> Vec<Batch>;
    /// Every open group, as batches (the input closed).
    fn flush_all(&mut self) -> Vec<Batch>;
    /// When the oldest open group is due.
    fn next_deadline(&self) -> Option<Instant>;
}

/// Joins what comes in on `input` into `output` until `input` closes, then
/// emits every open group. `count`: bump `m`'s received/sent counters (a
/// transform does; a source whose batches pass through here already did).
pub async fn run<J: Join>(
    mut joiner: J,
    mut input: mpsc::Receiver<Batch>,
    output: Fanout,
    m: ComponentMetrics,
    count: bool,
) {
    let send = |batches: Vec<Batch>| {
        let (output, m) = (&output, &m);
        async move {
            for b in batches {
                let (n, bytes) = (b.len() as u64, b.bytes());
                output.send(b).await?;
                if count {
                    m.sent_events.inc_by(n);
                    m.sent_bytes.inc_by(bytes);
                }
            }
            Ok::<(), crate::topology::Closed>(())
        }
    };
    loop {
        let deadline = joiner.next_deadline();
        let batches = tokio::select! {
            b = input.recv() => match b {
                Some(b) => {
                    if count {
                        m.received_events.inc_by(b.len() as u64);
                        m.received_bytes.inc_by(b.bytes());
                    }
                    joiner.push(b, Instant::now())
                }
                None => break,
            },
            () = sleep_until(deadline) => joiner.expire(Instant::now()),
        };
        if send(batches).await.is_err() {
            return;
        }
    }
    // Input closed: every held group goes out before this task ends.
    let _ = send(joiner.flush_all()).await;
}
