//! `type = "route"`: sends each record to the named outputs whose condition
//! it meets; downstream components read one output each (`inputs =
//! ["r.errors"]`, or `["r._unmatched"]` for the records no route took).
//!
//! Why sub-batches share the ack token: the file source checkpoints a batch
//! when the last clone of its token drops. Each output gets its own batch
//! (the records it takes, same fields, a clone of the token), so the offset
//! passes only when every branch has made its part durable. An output that
//! takes nothing from a batch is sent nothing; the original batch's token
//! still drops here, so a batch no route wants is acknowledged at once, like
//! a filter's drop. A record that goes to no output read by anyone is counted
//! as discarded with reason `unrouted`, never lost silently.
//!
//! Why the last branch takes the batch itself: when the route is the only
//! holder of the records, the last sub-batch is compacted in place and keeps
//! the batch's share of `memory_limit`; earlier branches copy, and a copy
//! takes its own share when the limit has room. It never waits for one: the
//! memory it would wait for may be held by the batches queued in front of
//! this transform, so a full limit lets a copy through uncharged rather than
//! deadlock.

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc};

use crate::confdiag::{Ctx, Seg};
use crate::event::Batch;
use crate::metrics::Metrics;
use crate::topology::Fanout;
use crate::transforms::condition::{Rule, RuleConfig};
use crate::transforms::filter::retain;

/// The output that gets the records no route matched.
pub const UNMATCHED: &str = "_unmatched";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Output name -> the condition a record must meet to be sent there.
    pub routes: BTreeMap<String, RuleConfig>,
}

/// A checked route transform: routes in name order.
#[derive(Debug, Clone)]
pub struct Route {
    pub routes: Vec<(String, Rule)>,
}

impl RouteConfig {
    /// The checked transform, or `None` after reporting every problem.
    pub fn build(&self, ctx: &mut Ctx<'_>, base: &[Seg]) -> Option<Route> {
        let mut p = crate::confdiag::key(base, "routes");
        if self.routes.is_empty() {
            ctx.error(&p, "must name at least one route");
            return None;
        }
        let mut routes = Vec::new();
        let mut ok = true;
        for (name, rule) in &self.routes {
            p.push(Seg::Key(name.clone()));
            if name == UNMATCHED {
                ctx.error(
                    &p,
                    format!("`{UNMATCHED}` is reserved for the records no route matched"),
                );
                ok = false;
            } else if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                ctx.error(&p, "route names may use only letters, digits, `_` and `-`");
                ok = false;
            }
            match rule.build(ctx, &p) {
                Some(r) => routes.push((name.clone(), r)),
                None => ok = false,
            }
            p.pop();
        }
        ok.then_some(Route { routes })
    }
}

impl Route {
    /// Every output a downstream component may name, `_unmatched` last.
    pub fn outputs(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|(n, _)| n.as_str()).chain([UNMATCHED])
    }

    pub fn describe(&self) -> String {
        let routes: Vec<String> = self
            .routes
            .iter()
            .map(|(n, r)| format!("{n}: {}", r.describe()))
            .collect();
        format!("route: {}; else {UNMATCHED}", routes.join("; "))
    }

    /// Fills `hits[o][i]` for every output `o` (routes, then `_unmatched`)
    /// and record `i`. Routes whose output nobody reads are skipped unless
    /// `_unmatched` is read, which needs them all.
    pub fn classify(&self, batch: &Batch, read: &[bool], hits: &mut Vec<Vec<bool>>) {
        let n = batch.len();
        let outputs = self.routes.len() + 1;
        hits.resize_with(outputs, Vec::new);
        for h in hits.iter_mut() {
            h.clear();
            h.resize(n, false);
        }
        let all_needed = read.last().copied().unwrap_or(true);
        let (routes, rest) = hits.split_at_mut(outputs - 1);
        let Some(unmatched) = rest.first_mut() else { return };
        unmatched.fill(true);
        for ((_, rule), (h, r)) in self.routes.iter().zip(routes.iter_mut().zip(read)) {
            if !(all_needed || *r) {
                continue;
            }
            for (i, (hit, un)) in h.iter_mut().zip(unmatched.iter_mut()).enumerate() {
                *hit = rule.holds(batch, i);
                *un &= !*hit;
            }
        }
    }
}

/// A sub-batch `retain` had to copy carries no share of `memory_limit`;
/// it takes one from the original's semaphore when there is room. Never
/// waits: the permits it would wait for may be held by the batches queued
/// in front of this very transform.
fn charge_copy(mut sub: Batch, memory: Option<&Arc<Semaphore>>) -> Batch {
    if let Some(r) = Arc::get_mut(&mut sub.records)
        && r.permit.is_none()
        && let Some(sem) = memory
    {
        let bytes = r.buf.len().clamp(1, u32::MAX as usize) as u32;
        r.permit = sem.clone().try_acquire_many_owned(bytes).ok();
    }
    sub
}

/// One named output of the running transform.
struct Output {
    fanout: Fanout,
    sent: Counter,
}

/// `outputs` holds one fanout per entry of [`Route::outputs`], in order.
pub async fn run(
    id: String,
    cfg: Route,
    mut input: mpsc::Receiver<Batch>,
    outputs: Vec<Fanout>,
    metrics: Arc<Metrics>,
) {
    let m = metrics.component(&id, "route");
    let outputs: Vec<Output> = cfg
        .outputs()
        .zip(outputs)
        .map(|(name, fanout)| Output {
            sent: metrics.route_output(&id, name),
            fanout,
        })
        .collect();
    let read: Vec<bool> = outputs.iter().map(|o| !o.fanout.is_empty()).collect();
    let mut hits = Vec::new();
    'batches: while let Some(batch) = input.recv().await {
        let n = batch.len();
        m.received_events.inc_by(n as u64);
        m.received_bytes.inc_by(batch.bytes());
        cfg.classify(&batch, &read, &mut hits);
        let unrouted = (0..n)
            .filter(|&i| !hits.iter().zip(&read).any(|(h, r)| *r && h[i]))
            .count();
        m.discarded("unrouted", unrouted as u64);
        let targets: Vec<(usize, usize)> = hits
            .iter()
            .enumerate()
            .filter(|(o, _)| read[*o])
            .map(|(o, h)| (o, h.iter().filter(|x| **x).count()))
            .filter(|(_, count)| *count > 0)
            .collect();
        let memory = batch.records.permit.as_ref().map(|p| p.semaphore().clone());
        // Nothing to send: dropping `batch` here acknowledges it.
        let mut batch = Some(batch);
        for (k, &(o, count)) in targets.iter().enumerate() {
            let Some(whole) = (if k + 1 == targets.len() {
                batch.take()
            } else {
                batch.clone()
            }) else {
                break;
            };
            let sub = if count == n {
                whole
            } else {
                charge_copy(retain(whole, &hits[o]), memory.as_ref())
            };
            let bytes = sub.bytes();
            if outputs[o].fanout.send(sub).await.is_err() {
                break 'batches;
            }
            outputs[o].sent.inc_by(count as u64);
            m.sent_events.inc_by(count as u64);
            m.sent_bytes.inc_by(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::confdiag::path;
    use crate::event::{AckToken, batch_of};

    fn route(text: &str) -> Result<Route, Vec<String>> {
        let c: RouteConfig = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let lookup = |_: &str| None;
        let mut ctx = crate::confdiag::Ctx::for_tests(&lookup);
        c.build(&mut ctx, &path(&["transforms", "r"]))
            .ok_or_else(|| ctx.messages())
    }

    const ROUTES: &str = r#"
[routes]
errors = { level_at_least = "error" }
audit = { field = "tag", regex = "^audit" }
"#;

    const LINES: &[&str] = &[
        r#"{"id":0,"level":"info"}"#,
        r#"{"id":1,"level":"error","tag":"audit.login"}"#,
        r#"{"id":2,"level":"fatal"}"#,
        r#"{"id":3,"level":"debug","tag":"audit.read"}"#,
        r#"{"id":4,"level":"warn"}"#,
    ];

    fn ids(hits: &[bool]) -> Vec<usize> {
        hits.iter().enumerate().filter(|(_, h)| **h).map(|(i, _)| i).collect()
    }

    #[test]
    fn a_record_goes_to_every_matching_route_and_the_rest_to_unmatched() {
        let r = route(ROUTES).unwrap();
        assert_eq!(r.outputs().collect::<Vec<_>>(), ["audit", "errors", "_unmatched"]);
        let b = batch_of(LINES);
        let mut hits = Vec::new();
        r.classify(&b, &[true, true, true], &mut hits);
        assert_eq!(ids(&hits[0]), [1, 3], "audit");
        assert_eq!(ids(&hits[1]), [1, 2], "errors");
        assert_eq!(ids(&hits[2]), [0, 4], "unmatched");
        // Unread routes are not evaluated when `_unmatched` is not read either.
        r.classify(&b, &[false, true, false], &mut hits);
        assert_eq!(ids(&hits[0]), Vec::<usize>::new());
        assert_eq!(ids(&hits[1]), [1, 2]);
        assert_eq!(
            r.describe(),
            "route: audit: tag =~ /^audit/; errors: level >= error; else _unmatched"
        );
    }

    #[test]
    fn bad_routes_are_config_errors() {
        let e = route("routes = {}").unwrap_err();
        assert_eq!(e, ["`transforms.r.routes`: must name at least one route"]);
        let e = route("[routes]\n_unmatched = { level_at_least = \"warn\" }").unwrap_err();
        assert!(
            e[0].starts_with("`transforms.r.routes._unmatched`: `_unmatched` is reserved"),
            "{e:?}"
        );
        let e = route("[routes]\n\"a.b\" = { level_at_least = \"warn\" }").unwrap_err();
        assert!(e[0].contains("route names may use only"), "{e:?}");
        let e = route("[routes]\nx = { field = \"a\", equals = \"1\", exists = true }").unwrap_err();
        assert!(
            e[0].starts_with("`transforms.r.routes.x`: needs exactly one of"),
            "{e:?}"
        );
    }

    /// Sub-batches carry clones of the token: the source hears once, after
    /// every branch dropped its part, and also when nothing matched at all.
    #[tokio::test]
    async fn the_ack_completes_after_every_branch_and_when_nothing_matched() {
        let r = route(ROUTES).unwrap();
        let metrics = Arc::new(Metrics::new());
        let (in_tx, in_rx) = mpsc::channel(4);
        let (audit_tx, mut audit_rx) = mpsc::channel(4);
        let (err_tx, mut err_rx) = mpsc::channel(4);
        let outs = vec![
            Fanout::new(vec![audit_tx]),
            Fanout::new(vec![err_tx]),
            Fanout::default(),
        ];
        let task = tokio::spawn(run("r".into(), r, in_rx, outs, metrics.clone()));
        let (ack_tx, ack_rx) = std::sync::mpsc::channel();

        let mut b = batch_of(LINES);
        b.ack = Some(AckToken::new(1, 1, ack_tx.clone()));
        in_tx.send(b).await.unwrap();
        let audit = audit_rx.recv().await.unwrap();
        let errors = err_rx.recv().await.unwrap();
        let text = |b: &Batch| (0..b.len()).map(|i| b.records.text(i).to_vec()).collect::<Vec<_>>();
        assert_eq!(text(&audit), [LINES[1].as_bytes(), LINES[3].as_bytes()]);
        assert_eq!(text(&errors), [LINES[1].as_bytes(), LINES[2].as_bytes()]);
        drop(audit);
        assert!(ack_rx.try_recv().is_err(), "the errors branch still holds the batch");
        drop(errors);
        let ack = ack_rx.try_recv().unwrap();
        assert!(ack.delivered && ack.seq == 1);

        // Nothing matches and `_unmatched` is read by no one: no branch gets
        // a batch, the ack still comes, and the records count as unrouted.
        let mut b = batch_of(&[LINES[0], LINES[4]]);
        b.ack = Some(AckToken::new(1, 2, ack_tx));
        in_tx.send(b).await.unwrap();
        drop(in_tx);
        task.await.unwrap();
        assert_eq!(ack_rx.try_recv().unwrap().seq, 2);
        assert!(audit_rx.recv().await.is_none() && err_rx.recv().await.is_none());
        let text = metrics.encode();
        for line in [
            r#"logferry_route_output_events_total{component="r",output="audit"} 2"#,
            r#"logferry_route_output_events_total{component="r",output="errors"} 2"#,
            r#"logferry_component_discarded_events_total{component="r",reason="unrouted"} 4"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    /// A record whose only matching route is read by nobody goes nowhere:
    /// it is counted, not sent to `_unmatched`.
    #[tokio::test]
    async fn a_record_only_an_unread_route_takes_is_counted_as_unrouted() {
        let r = route(ROUTES).unwrap();
        let metrics = Arc::new(Metrics::new());
        let (in_tx, in_rx) = mpsc::channel(4);
        let (err_tx, mut err_rx) = mpsc::channel(4);
        let (rest_tx, mut rest_rx) = mpsc::channel(4);
        let outs = vec![Fanout::default(), Fanout::new(vec![err_tx]), Fanout::new(vec![rest_tx])];
        let task = tokio::spawn(run("r".into(), r, in_rx, outs, metrics.clone()));
        in_tx.send(batch_of(LINES)).await.unwrap();
        drop(in_tx);
        task.await.unwrap();
        let errors = err_rx.recv().await.unwrap();
        let rest = rest_rx.recv().await.unwrap();
        assert_eq!((errors.len(), rest.len()), (2, 2), "ids 1, 2 and ids 0, 4");
        let text = metrics.encode();
        let line = r#"logferry_component_discarded_events_total{component="r",reason="unrouted"} 1"#;
        assert!(text.contains(line), "{text}");
        assert!(text.contains(r#"logferry_component_sent_events_total{component="r",kind="route"} 4"#));
    }

    /// Copies for partial branches take their share of `memory_limit` from
    /// the original's semaphore, and give it back when dropped.
    #[test]
    fn copied_sub_batches_are_charged_to_the_memory_limit() {
        let sem = Arc::new(Semaphore::new(10_000));
        let mut b = batch_of(LINES);
        let bytes = b.records.buf.len();
        let permit = sem.clone().try_acquire_many_owned(bytes as u32).unwrap();
        Arc::get_mut(&mut b.records).unwrap().permit = Some(permit);
        let memory = b.records.permit.as_ref().map(|p| p.semaphore().clone());
        let copy = charge_copy(retain(b.clone(), &[true, false, false, false, false]), memory.as_ref());
        assert_eq!(copy.len(), 1);
        assert_eq!(sem.available_permits(), 10_000 - bytes - LINES[0].len());
        let owned = charge_copy(retain(b, &[false, true, true, false, false]), memory.as_ref());
        assert_eq!(owned.len(), 2);
        assert_eq!(
            sem.available_permits(),
            10_000 - bytes - LINES[0].len(),
            "the compacted original keeps its own permit, nothing more"
        );
        drop((copy, owned));
        assert_eq!(sem.available_permits(), 10_000);
    }
}
