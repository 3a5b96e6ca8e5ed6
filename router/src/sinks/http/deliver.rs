//! The delivery task: one request in flight, retried until the server takes
//! the body (2xx, or for `_bulk` every document settled) or refuses it for
//! good (dead letters); `client.rs` decides which answers are which.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::{Framing, HttpSinkConfig};
use super::{Body, Verdict, bulk, client, verdict};
use crate::api::Health;
use crate::dead_letter::DeadLetters;
use crate::metrics::ComponentMetrics;
use crate::sinks::aws::{RETRY_CAP, backoff};

/// The task that delivers closed bodies, one at a time.
pub(super) struct Sender {
    id: String,
    cfg: Arc<HttpSinkConfig>,
    m: ComponentMetrics,
    health: Arc<Health>,
    stop: CancellationToken,
    dead: Arc<DeadLetters>,
    client: client::Client,
    prepared: client::Prepared,
}

/// How the server settled a body.
enum Settled {
    Delivered,
    /// Refused for good (a 4xx): every record goes to the dead letters.
    Rejected(&'static str),
    /// A bulk answer with an outcome per record, not all taken.
    Items(Vec<bulk::Item>),
}

/// Why an attempt did not deliver, for the retry loop.
struct Failed {
    /// Labels `logferry_sink_errors_total`.
    reason: &'static str,
    text: String,
    retry_after: Option<Duration>,
    operator: bool,
}

impl Sender {
    pub(super) fn new(
        id: String,
        cfg: Arc<HttpSinkConfig>,
        m: ComponentMetrics,
        health: Arc<Health>,
        stop: CancellationToken,
        dead: Arc<DeadLetters>,
    ) -> Result<Sender, String> {
        Ok(Sender {
            client: client::build(&cfg)?,
            prepared: client::Prepared::new(&cfg)?,
            id,
            cfg,
            m,
            health,
            stop,
            dead,
        })
    }

    /// Delivers bodies in order until the input closes or the sink is told
    /// to stop. A body is retried until the server takes it (2xx) or refuses
    /// it for good (dead letters); when abandoned, its acks drop as failed.
    pub(super) async fn run(self, mut bodies: mpsc::Receiver<Body>) {
        // What the last warning said: one line per streak of failures, and
        // one more whenever the cause changes, never one per retry.
        let mut logged: Option<String> = None;
        while let Some(mut body) = bodies.recv().await {
            let mut attempt = 0u32;
            loop {
                let r = tokio::select! {
                    r = self.attempt(&body) => r,
                    _ = self.stop.cancelled() => return,
                };
                let f = match r {
                    Ok(Settled::Delivered) => {
                        if logged.take().is_some() {
                            tracing::info!(sink = %self.id, uri = %self.prepared.shown, "http server accepts requests again");
                        }
                        self.health.set_sink(&self.id, true);
                        body.delivered(&self.m);
                        break;
                    }
                    Ok(Settled::Rejected(reject)) => {
                        if reject == "http_413" {
                            tracing::warn!(sink = %self.id, uri = %self.prepared.shown, reason = reject, records = body.events(),
                                bytes = body.wire.len(), "http server refused a request as too large; its records go to the dead letters: lower batch.max_bytes");
                        } else {
                            tracing::warn!(sink = %self.id, uri = %self.prepared.shown, reason = reject,
                                records = body.events(), "http server refused a request for good; its records go to the dead letters");
                        }
                        body.rejected(reject, &self.dead);
                        break;
                    }
                    Ok(Settled::Items(items)) => {
                        let again = items.iter().filter(|i| matches!(i, bulk::Item::Retry(_))).count();
                        let refused = items.iter().filter(|i| matches!(i, bulk::Item::Reject(_))).count();
                        if refused > 0 {
                            tracing::warn!(sink = %self.id, uri = %self.prepared.shown, records = refused,
                                "bulk answer refused documents for good; they go to the dead letters");
                        }
                        self.health.set_sink(&self.id, true);
                        match body.settle(&items, &self.cfg, &self.m, &self.dead) {
                            None => break,
                            Some(rest) => {
                                body = rest;
                                let status = items.iter().find_map(|i| match i {
                                    bulk::Item::Retry(s) => Some(*s),
                                    _ => None,
                                });
                                Failed {
                                    reason: bulk::reason(status.unwrap_or(0)),
                                    text: format!(
                                        "bulk answer from {} refused {again} of {} documents for now ({}); sending those again",
                                        self.prepared.shown,
                                        items.len(),
                                        bulk::reason(status.unwrap_or(0)),
                                    ),
                                    retry_after: None,
                                    operator: false,
                                }
                            }
                        }
                    }
                    Err(f) => f,
                };
                attempt += 1;
                self.m.sink_error(f.reason);
                self.m.retries.inc();
                if f.operator {
                    self.health.set_sink(&self.id, false);
                }
                if logged.as_deref() == Some(f.text.as_str()) {
                    tracing::debug!(sink = %self.id, error = %f.text, attempt, "http request failed again");
                } else if f.operator {
                    tracing::error!(sink = %self.id, error = %f.text,
                        "http request refused; retrying with backoff until the configuration is fixed, records are kept");
                } else {
                    tracing::warn!(sink = %self.id, error = %f.text,
                        "http request failed; sending it again with backoff, records are kept");
                }
                logged = Some(f.text);
                let pause = match f.retry_after {
                    Some(d) => d.min(self.cfg.max_retry_after),
                    None => backoff(attempt, RETRY_CAP),
                };
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = self.stop.cancelled() => return,
                }
            }
        }
    }

    /// One request: how the server settled the body, or why to try again.
    async fn attempt(&self, body: &Body) -> Result<Settled, Failed> {
        let bulk = self.cfg.framing == Framing::OpensearchBulk;
        // A bulk answer has an item per document (200-400 bytes each).
        let max_answer = if bulk {
            client::MAX_ANSWER + 1024 * body.spans.len()
        } else {
            client::MAX_ANSWER
        };
        let r = client::send(
            &self.client,
            &self.prepared,
            self.prepared.method.clone(),
            &self.prepared.uri,
            body.wire.clone(),
            self.cfg.request_timeout,
            max_answer,
        )
        .await;
        let a = match r {
            Ok(a) => a,
            Err(e) => {
                self.m.http_request("error");
                return Err(Failed {
                    reason: e.reason(),
                    operator: e.needs_operator(),
                    text: e.to_string(),
                    retry_after: None,
                });
            }
        };
        let s = a.status.as_u16();
        self.m.http_request(client::status_class(s));
        if !a.text.is_empty() && !a.status.is_success() {
            // The answer may echo records: debug only.
            tracing::debug!(sink = %self.id, status = s, answer = %a.text, "http answer");
        }
        let v = verdict(s);
        match v {
            Verdict::Delivered if bulk => match bulk::read(&a.body, body.spans.len()) {
                bulk::Outcome::AllTaken => Ok(Settled::Delivered),
                bulk::Outcome::Items(items) if items.iter().all(|i| *i == bulk::Item::Taken) => Ok(Settled::Delivered),
                bulk::Outcome::Items(items) => Ok(Settled::Items(items)),
                bulk::Outcome::Unreadable(why) => Err(Failed {
                    reason: "bulk_answer",
                    text: format!(
                        "{} {} answered {}, but {why}; sending the whole body again",
                        self.prepared.method, self.prepared.shown, a.status
                    ),
                    retry_after: None,
                    operator: false,
                }),
            },
            Verdict::Delivered => Ok(Settled::Delivered),
            Verdict::Reject => Ok(Settled::Rejected(client::status_reason(s))),
            Verdict::Retry | Verdict::Operator => Err(Failed {
                reason: client::status_reason(s),
                text: format!(
                    "{} {} answered {}{}",
                    self.prepared.method,
                    self.prepared.shown,
                    a.status,
                    match (v, s) {
                        (Verdict::Operator, 401 | 403 | 407) => ": credentials refused (check `auth` and `headers`)",
                        (Verdict::Operator, _) => ": redirects are not followed (set `uri` to where it points)",
                        _ => "",
                    }
                ),
                retry_after: a.retry_after,
                operator: v == Verdict::Operator,
            }),
        }
    }
}
