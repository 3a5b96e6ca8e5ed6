//! Tells "slow" from "stuck", once a second.
//!
//! Why from the acknowledgements: every record a source hands on is either
//! acknowledged, given up on, or still waiting, whatever the sinks are and
//! however they retry. Records waiting while that settled count does not move
//! is the one sign that holds for every way a pipeline gets stuck (an
//! endpoint down, credentials gone, a sink task wedged). An idle pipeline
//! waits for nothing and is never stalled.
//!
//! Why two thresholds: past `api.stall_timeout` the router is not ready (an
//! operator or a load balancer should look); past `api.wedged_timeout` it is
//! not healthy, and the orchestrator restarts it. A restart loses nothing (the
//! checkpoints are behind every unacknowledged record) and is the only cure
//! for a wedge nobody foresaw; it cannot fix an outage, hence the long
//! default. A disk buffer acknowledges what it stored, so behind one an
//! outage shows as the sink's `/readyz` failure and `logferry_buffer_bytes`,
//! not as a stall.
//!
//! It also turns the checkpoint saves the sources report (`SaveHealth` in
//! `checkpoint.rs`) into `/readyz` reasons and keeps
//! `logferry_checkpoint_save_failing_seconds` current between attempts:
//! the sources only speak when a save is tried, the probe asks any time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::api::{CheckpointFailing, Health, Stall};
use crate::metrics::{CheckpointMetrics, Metrics};

const PERIOD: Duration = Duration::from_secs(1);

/// The thresholds (`[api] stall_timeout`, `wedged_timeout`); zero turns one off.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub stall: Duration,
    pub wedged: Duration,
}

/// Progress seen over time.
#[derive(Debug, Default)]
pub struct Progress {
    settled: u64,
    waiting_since: Option<Instant>,
}

impl Progress {
    /// Feeds one sample (records settled so far, records waiting now).
    pub fn observe(&mut self, now: Instant, settled: u64, waiting: i64, t: Thresholds) -> Stall {
        if waiting <= 0 || settled != self.settled {
            self.waiting_since = (waiting > 0).then_some(now);
        } else if self.waiting_since.is_none() {
            self.waiting_since = Some(now);
        }
        self.settled = settled;
        let stalled_for = self.waiting_since.map_or(Duration::ZERO, |t0| now - t0);
        let past = |limit: Duration| !limit.is_zero() && stalled_for >= limit;
        Stall {
            seconds: stalled_for.as_secs(),
            waiting: waiting.max(0),
            stalled: past(t.stall),
            wedged: past(t.wedged),
        }
    }
}

/// The sources whose checkpoint saves fail at `now`, each gauge of
/// seconds failing brought up to date on the way.
pub fn checkpoint_failures(now: Instant, all: &[CheckpointMetrics]) -> Vec<CheckpointFailing> {
    all.iter()
        .filter_map(|c| {
            let f = c.failure()?;
            let seconds = now.saturating_duration_since(f.since).as_secs();
            c.save_failing.set(seconds as i64);
            Some(CheckpointFailing {
                component: c.id.clone(),
                seconds,
                reason: f.reason,
            })
        })
        .collect()
}

/// Samples until aborted: memory in use, delivery progress, checkpoint saves.
pub async fn run(t: Thresholds, metrics: Arc<Metrics>, health: Arc<Health>, memory: Arc<Semaphore>, limit: usize) {
    metrics.memory_limit.set(limit as i64);
    let mut progress = Progress::default();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = false;
    loop {
        tick.tick().await;
        metrics
            .memory_used
            .set(limit.saturating_sub(memory.available_permits()) as i64);
        let (settled, waiting) = metrics.delivery_progress();
        let stall = progress.observe(Instant::now(), settled, waiting, t);
        metrics.delivery_stalled.set(stall.seconds as i64);
        if stall.stalled != reported {
            reported = stall.stalled;
            if stall.stalled {
                tracing::warn!(
                    seconds = stall.seconds,
                    waiting = stall.waiting,
                    "no sink has acknowledged anything for a while; /readyz fails until one does"
                );
            } else {
                tracing::info!("deliveries move again");
            }
        }
        health.set_stall(stall);
        health.set_checkpoints(checkpoint_failures(Instant::now(), &metrics.checkpoints()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        stall: Duration::from_secs(60),
        wedged: Duration::from_secs(600),
    };

    #[test]
    fn waiting_without_acks_stalls_then_wedges_and_an_ack_clears_it() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut p = Progress::default();
        assert!(!p.observe(at(0), 0, 0, T).stalled, "idle is not stalled");
        assert_eq!(p.observe(at(1), 0, 500, T).seconds, 0);
        let s = p.observe(at(61), 0, 500, T);
        assert!(s.stalled && !s.wedged, "{s:?}");
        assert_eq!(s.seconds, 60);
        let s = p.observe(at(601), 0, 800, T);
        assert!(s.stalled && s.wedged, "{s:?}");
        // One acknowledgement is progress: the clock restarts.
        let s = p.observe(at(602), 10, 790, T);
        assert!(!s.stalled && !s.wedged && s.seconds == 0, "{s:?}");
        let s = p.observe(at(650), 10, 790, T);
        assert_eq!(s.seconds, 48);
        assert!(!s.stalled);
    }

    #[test]
    fn failing_checkpoint_saves_are_reported_until_one_succeeds() {
        use crate::metrics::SaveFailure;
        let metrics = Metrics::new();
        let (app, other) = (metrics.checkpoint("app"), metrics.checkpoint("other"));
        let t0 = Instant::now();
        assert!(checkpoint_failures(t0, &metrics.checkpoints()).is_empty());
        app.set_failure(Some(SaveFailure {
            since: t0,
            reason: "read_only",
        }));
        let failing = checkpoint_failures(t0 + Duration::from_secs(42), &metrics.checkpoints());
        assert_eq!(
            failing,
            vec![CheckpointFailing {
                component: "app".into(),
                seconds: 42,
                reason: "read_only"
            }]
        );
        assert_eq!(app.save_failing.get(), 42);
        assert_eq!(other.save_failing.get(), 0);
        app.set_failure(None);
        assert!(checkpoint_failures(t0 + Duration::from_secs(43), &metrics.checkpoints()).is_empty());
    }

    #[test]
    fn busy_pipeline_and_zero_thresholds_never_stall() {
        let t0 = Instant::now();
        let mut p = Progress::default();
        for s in 0..1000u64 {
            let st = p.observe(t0 + Duration::from_secs(s), s * 100, 5_000, T);
            assert!(!st.stalled && st.seconds == 0);
        }
        let off = Thresholds {
            stall: Duration::ZERO,
            wedged: Duration::ZERO,
        };
        let mut p = Progress::default();
        p.observe(t0, 0, 1, off);
        let st = p.observe(t0 + Duration::from_secs(10_000), 0, 1, off);
        assert!(!st.stalled && !st.wedged && st.seconds == 10_000);
    }
}
