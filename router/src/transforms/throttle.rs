//! `type = "throttle"`: at most `threshold` records per `window` for each
//! key (a field or template of the record), the excess dropped and counted
//! as discarded with reason `throttled`.
//!
//! Why fixed windows counted from a key's first record: the limit is exact
//! and easy to state ("100 per hour per pod"), and the state of a key is one
//! count and one start time. Why keys sit in a queue ordered by window
//! start: a window can only expire after every window that began before it,
//! so expired keys are popped from the front in O(1) per record, and when
//! `max_keys` is reached the key evicted is the one closest to expiring. An
//! evicted key starts a fresh window if it comes back (it may pass up to
//! `threshold` more early): bounded memory wins over exactness under a flood
//! of distinct keys. Key values never reach metric labels or info logs.
//!
//! Dropped records keep the batch's acknowledgement, as a filter's do: the
//! file checkpoint passes them. The clock is a parameter of
//! [`Limiter::admit`], so tests drive time explicitly.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::mpsc;

use crate::confdiag::{Ctx, Seg};
use crate::event::Batch;
use crate::metrics::Metrics;
use crate::template::{Renderer, Template};
use crate::topology::Fanout;
use crate::transforms::condition::{Rule, RuleConfig};
use crate::transforms::filter::retain;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Records let through per key in each window.
    pub threshold: u64,
    /// Length of a key's window, counted from its first record.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// A field path (`kubernetes.pod_name`) or a template
    /// (`{ecs_task_id}-{container_name}`); absent: one key for all records.
    #[serde(default)]
    pub key_field: Option<String>,
    /// Records meeting this condition are never throttled nor counted.
    #[serde(default)]
    pub exclude: Option<RuleConfig>,
    /// Keys tracked at once; past it the key closest to expiring is evicted.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_max_keys() -> usize {
    10_000
}

/// A checked throttle.
#[derive(Debug, Clone)]
pub struct Throttle {
    pub threshold: u64,
    pub window: Duration,
    pub key: Option<Template>,
    pub exclude: Option<Rule>,
    pub max_keys: usize,
}

impl ThrottleConfig {
    /// The checked transform, or `None` after reporting every problem.
    pub fn build(&self, ctx: &mut Ctx<'_>, base: &[Seg]) -> Option<Throttle> {
        let at = |key: &str| crate::confdiag::key(base, key);
        let mut ok = true;
        if self.threshold == 0 {
            ctx.error(&at("threshold"), "must be at least 1 (use a filter to drop everything)");
            ok = false;
        }
        if self.window.is_zero() {
            ctx.error(&at("window"), "must be longer than zero");
            ok = false;
        }
        if self.max_keys == 0 {
            ctx.error(&at("max_keys"), "must be at least 1");
            ok = false;
        }
        let key = match &self.key_field {
            None => None,
            Some(k) => {
                // A bare path is the template of that one field.
                let text = if k.contains('{') { k.clone() } else { format!("{{{k}}}") };
                match Template::parse(&text) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        ctx.error(&at("key_field"), e.to_string());
                        ok = false;
                        None
                    }
                }
            }
        };
        let exclude = match &self.exclude {
            None => None,
            Some(r) => {
                let rule = r.build(ctx, &at("exclude"));
                ok &= rule.is_some();
                rule
            }
        };
        ok.then_some(Throttle {
            threshold: self.threshold,
            window: self.window,
            key,
            exclude,
            max_keys: self.max_keys,
        })
    }
}

impl Throttle {
    pub fn describe(&self) -> String {
        format!(
            "throttle: {} record(s) per {} per {}{}, up to {} keys",
            self.threshold,
            humantime::format_duration(self.window),
            match &self.key {
                Some(t) => format!("key `{}`", t.as_str()),
                None => "the whole stream".into(),
            },
            match &self.exclude {
                Some(r) => format!(", except {}", r.describe()),
                None => String::new(),
            },
            self.max_keys
        )
    }
}

/// Per-key fixed windows with a bounded number of keys.
#[derive(Debug)]
pub struct Limiter {
    threshold: u64,
    window: Duration,
    max_keys: usize,
    /// Records counted in each tracked key's current window.
    keys: HashMap<Arc<str>, u64>,
    /// One entry per tracked key, oldest window start first.
    order: VecDeque<(Instant, Arc<str>)>,
    /// Keys forgotten before their window ended, because of `max_keys`.
    pub evicted: u64,
}

impl Limiter {
    pub fn new(threshold: u64, window: Duration, max_keys: usize) -> Self {
        Limiter {
            threshold,
            window,
            max_keys: max_keys.max(1),
            keys: HashMap::new(),
            order: VecDeque::new(),
            evicted: 0,
        }
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// May one more record of `key` pass at `now`? Counts it if so.
    pub fn admit(&mut self, key: &str, now: Instant) -> bool {
        while let Some((start, _)) = self.order.front()
            && now.saturating_duration_since(*start) >= self.window
        {
            if let Some((_, k)) = self.order.pop_front() {
                self.keys.remove(&k);
            }
        }
        if let Some(count) = self.keys.get_mut(key) {
            if *count >= self.threshold {
                return false;
            }
            *count += 1;
            return true;
        }
        if self.keys.len() >= self.max_keys
            && let Some((_, k)) = self.order.pop_front()
        {
            self.keys.remove(&k);
            self.evicted += 1;
        }
        let key: Arc<str> = key.into();
        self.keys.insert(key.clone(), 1);
        self.order.push_back((now, key));
        self.threshold >= 1
    }
}

pub async fn run(id: String, cfg: Throttle, mut input: mpsc::Receiver<Batch>, output: Fanout, metrics: Arc<Metrics>) {
    let m = metrics.component(&id, "throttle");
    let mut limiter = Limiter::new(cfg.threshold, cfg.window, cfg.max_keys);
    let mut renderer = cfg.key.clone().map(Renderer::new);
    let mut key = String::new();
    let mut keep = Vec::new();
    let mut warned = false;
    while let Some(batch) = input.recv().await {
        let n = batch.len();
        m.received_events.inc_by(n as u64);
        m.received_bytes.inc_by(batch.bytes());
        let now = Instant::now();
        if let Some(r) = &mut renderer {
            r.begin_batch();
        }
        keep.clear();
        for i in 0..n {
            if cfg.exclude.as_ref().is_some_and(|r| r.holds(&batch, i)) {
                keep.push(true);
                continue;
            }
            match &mut renderer {
                Some(r) => r.render(&batch, i, &mut key),
                None => key.clear(),
            }
            keep.push(limiter.admit(&key, now));
        }
        if limiter.evicted > 0 && !warned {
            warned = true;
            tracing::warn!(
                component = %id,
                max_keys = cfg.max_keys,
                "throttle is tracking max_keys keys; the keys closest to expiring are forgotten early"
            );
        }
        let kept = keep.iter().filter(|k| **k).count();
        m.discarded("throttled", (n - kept) as u64);
        // A batch with nothing left is dropped here, which acknowledges it.
        if kept == 0 {
            continue;
        }
        let batch = if kept == n { batch } else { retain(batch, &keep) };
        let bytes = batch.bytes();
        if output.send(batch).await.is_err() {
            break;
        }
        m.sent_events.inc_by(kept as u64);
        m.sent_bytes.inc_by(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::confdiag::path;
    use crate::event::{AckToken, batch_of};

    fn throttle(text: &str) -> Result<Throttle, Vec<String>> {
        let c: ThrottleConfig = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let lookup = |_: &str| None;
        let mut ctx = crate::confdiag::Ctx::for_tests(&lookup);
        c.build(&mut ctx, &path(&["transforms", "t"]))
            .ok_or_else(|| ctx.messages())
    }

    #[test]
    fn windows_reset_per_key_on_an_injected_clock() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut l = Limiter::new(2, s(10), 100);
        assert!(l.admit("a", t0));
        assert!(l.admit("a", t0 + s(1)));
        assert!(!l.admit("a", t0 + s(9)), "third in the window");
        assert!(l.admit("b", t0 + s(9)), "keys are independent");
        assert!(l.admit("a", t0 + s(10)), "a new window at start + window");
        assert!(l.admit("b", t0 + s(10)));
        assert!(!l.admit("b", t0 + s(18)), "b's window runs from 9s to 19s");
        assert!(l.admit("b", t0 + s(19)));
        // Idle keys expire: only `b` (window from 19s) is left at 25s.
        assert!(l.admit("c", t0 + s(25)));
        assert_eq!(l.len(), 2);
        assert!(l.admit("x", t0 + s(60)));
        assert_eq!(l.len(), 1, "every idle key is gone");
    }

    #[test]
    fn max_keys_bounds_the_table_evicting_the_oldest_window() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = Limiter::new(1, Duration::from_secs(3600), 3);
        for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
            assert!(l.admit(k, t0 + ms(i as u64)));
        }
        assert_eq!((l.len(), l.evicted), (3, 1));
        assert!(!l.admit("d", t0 + ms(10)), "tracked keys stay throttled");
        assert!(!l.admit("b", t0 + ms(10)));
        assert!(l.admit("a", t0 + ms(10)), "the evicted key starts afresh");
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn config_checks_and_describe() {
        let t = throttle("threshold = 100\nwindow = \"1h\"\nkey_field = \"kubernetes.pod_name\"\nexclude = { level_at_least = \"error\" }")
            .unwrap();
        assert_eq!(
            t.describe(),
            "throttle: 100 record(s) per 1h per key `{kubernetes.pod_name}`, except level >= error, up to 10000 keys"
        );
        let e = throttle("threshold = 0\nwindow = \"0s\"\nkey_field = \"{a\"\nmax_keys = 0").unwrap_err();
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(
            e[0].starts_with("`transforms.t.threshold`: must be at least 1"),
            "{e:?}"
        );
        assert!(e[1].starts_with("`transforms.t.window`"), "{e:?}");
        assert!(e[2].starts_with("`transforms.t.max_keys`"), "{e:?}");
        assert!(e[3].starts_with("`transforms.t.key_field`: unclosed"), "{e:?}");
        let e = throttle("threshold = 1\nwindow = \"1s\"\nexclude = { all = [] }").unwrap_err();
        assert!(e[0].starts_with("`transforms.t.exclude.all`: must hold"), "{e:?}");
        assert!(throttle("threshold = 1\nwindow = \"soon\"").unwrap_err()[0].contains("window"));
    }

    #[tokio::test]
    async fn excess_is_dropped_and_counted_excluded_records_pass_and_the_batch_is_acked() {
        let t = throttle(
            "threshold = 2\nwindow = \"1h\"\nkey_field = \"pod\"\nexclude = { field = \"level\", equals = \"error\" }",
        )
        .unwrap();
        let metrics = Arc::new(Metrics::new());
        let (in_tx, in_rx) = mpsc::channel(4);
        let (out_tx, mut out_rx) = mpsc::channel(4);
        let task = tokio::spawn(run("t".into(), t, in_rx, Fanout::new(vec![out_tx]), metrics.clone()));
        let (ack_tx, ack_rx) = std::sync::mpsc::channel();
        let lines = [
            r#"{"id":0,"pod":"a"}"#,
            r#"{"id":1,"pod":"a"}"#,
            r#"{"id":2,"pod":"a"}"#,
            r#"{"id":3,"pod":"a","level":"error"}"#,
            r#"{"id":4,"pod":"b"}"#,
            r#"{"id":5}"#,
            r#"{"id":6}"#,
            r#"{"id":7}"#,
        ];
        let mut b = batch_of(&lines);
        b.ack = Some(AckToken::new(1, 1, ack_tx.clone()));
        in_tx.send(b).await.unwrap();
        let out = out_rx.recv().await.unwrap();
        let got: Vec<&[u8]> = (0..out.len()).map(|i| out.records.text(i)).collect();
        let want: Vec<&[u8]> = [0, 1, 3, 4, 5, 6].iter().map(|&i| lines[i].as_bytes()).collect();
        assert_eq!(got, want, "records without the key share one key");
        drop(out);
        assert!(ack_rx.try_recv().unwrap().delivered);
        // Everything throttled: nothing is sent, the ack still comes.
        let mut b = batch_of(&[lines[0], lines[1]]);
        b.ack = Some(AckToken::new(1, 2, ack_tx));
        in_tx.send(b).await.unwrap();
        drop(in_tx);
        task.await.unwrap();
        assert_eq!(ack_rx.try_recv().unwrap().seq, 2);
        assert!(out_rx.recv().await.is_none());
        let text = metrics.encode();
        let line = r#"logferry_component_discarded_events_total{component="t",reason="throttled"} 4"#;
        assert!(text.contains(line), "{text}");
        assert!(
            !text.contains("pod=") && !text.contains("\"a\""),
            "no key values in labels"
        );
    }
}
