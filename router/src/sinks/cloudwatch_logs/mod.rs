//! `type = "cloudwatch_logs"`: records as CloudWatch Logs events.
//!
//! Events are grouped per (group, stream) from the templates. A stream is
//! sent when it holds a full request (10,000 events or 1,048,576 bytes,
//! counting 26 bytes per event) or after `flush_interval`. Each stream has at
//! most one request in flight, so its events stay in order; different streams
//! are sent in parallel. Before sending, events CloudWatch would reject are
//! taken out and counted (older than 14 days or the group's retention, more
//! than 2 hours ahead), the rest are sorted by time and cut into requests
//! that also span at most 24 hours. Anything CloudWatch still rejects
//! (`rejectedLogEventsInfo`) is counted by reason. A batch is acknowledged
//! once every request carrying its events was accepted.

mod config;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata;
use aws_sdk_cloudwatchlogs::types::{InputLogEvent, LogGroupClass};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::CloudWatchLogsSinkConfig;

use super::SinkContext;
use super::aws::{self, Abandoned, RetryCtx};
use super::encoding::{MissingKey, RecordFormat};
use crate::api::Health;
use crate::dead_letter::DeadLetters;
use crate::event::{AckToken, Batch};
use crate::memory::Charge;
use crate::metrics::ComponentMetrics;
use crate::template::{Renderer, Template};

/// PutLogEvents limits.
pub const MAX_EVENTS: usize = 10_000;
pub const MAX_BATCH_BYTES: usize = 1_048_576;
pub const EVENT_OVERHEAD: usize = 26;
pub const MAX_SPAN_MS: i64 = 24 * 3600 * 1000;
pub const MAX_AGE_MS: i64 = 14 * 24 * 3600 * 1000;
pub const MAX_AHEAD_MS: i64 = 2 * 3600 * 1000;
const TRUNCATION_MARK: &str = "...[truncated by logferry]";
/// The header that makes CloudWatch read events as `log_format` says.
const LOGS_FORMAT_HEADER: &str = "x-amzn-logs-format";

/// One log event waiting to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub ts: i64,
    pub message: String,
}

#[derive(Default)]
struct Pending {
    events: Vec<Event>,
    bytes: usize,
    acks: Vec<AckToken>,
    opened: Option<Instant>,
}

type StreamKey = (String, String);

struct Shared {
    id: String,
    cfg: CloudWatchLogsSinkConfig,
    client: aws_sdk_cloudwatchlogs::Client,
    m: ComponentMetrics,
    health: Arc<Health>,
    stop: CancellationToken,
    failing: AtomicBool,
    dead: Arc<DeadLetters>,
}

pub async fn run(cfg: CloudWatchLogsSinkConfig, mut input: mpsc::Receiver<Batch>, cx: SinkContext) {
    let SinkContext {
        id,
        m,
        health,
        stop,
        dead,
        memory,
        ..
    } = cx;
    // Queued events count against memory_limit; without room, send early.
    let mut charge = Charge::new(memory);
    let (Ok(group_t), Ok(stream_t)) = (Template::parse(&cfg.log_group), Template::parse(&cfg.log_stream)) else {
        tracing::error!("invalid log_group or log_stream template");
        return;
    };
    let sdk = aws::sdk_config(cfg.region.as_deref(), cfg.endpoint_url.as_deref()).await;
    let shared = Arc::new(Shared {
        client: aws_sdk_cloudwatchlogs::Client::new(&sdk),
        id: id.clone(),
        m: m.clone(),
        health: health.clone(),
        stop,
        failing: AtomicBool::new(false),
        cfg: cfg.clone(),
        dead,
    });
    health.set_sink(&id, true);
    let mut group_r = Renderer::new(group_t);
    let mut stream_r = Renderer::new(stream_t);
    let mut pending: HashMap<StreamKey, Pending> = HashMap::new();
    // Streams known to exist (created or seen), so each is created once.
    let mut known: HashSet<StreamKey> = HashSet::new();
    let max_event = cfg.max_event_size.as_u64() as usize - EVENT_OVERHEAD;
    let tick_every = (cfg.flush_interval / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut line = Vec::with_capacity(4096);
    let truncated = m.line_issue("truncated");
    let format = cfg.record_format();
    let mut missing = MissingKey::default();
    loop {
        let closing = tokio::select! {
            b = input.recv() => match b {
                Some(batch) => {
                    let mut enc = Encoding {
                        format: &format,
                        missing: &mut missing,
                        line: &mut line,
                        max_event,
                        truncated: &truncated,
                    };
                    add_batch(&batch, &mut group_r, &mut stream_r, &mut pending, &mut enc, &m);
                    false
                }
                None => true,
            },
            _ = tick.tick() => false,
        };
        let tight = !charge.resize(pending.values().map(|p| p.bytes).sum());
        let ready: Vec<StreamKey> = pending
            .iter()
            .filter(|(_, p)| {
                closing
                    || tight
                    || p.events.len() >= MAX_EVENTS
                    || p.bytes >= MAX_BATCH_BYTES
                    || p.opened.is_some_and(|t| t.elapsed() >= cfg.flush_interval)
            })
            .map(|(k, _)| k.clone())
            .collect();
        if !ready.is_empty() {
            let mut set = JoinSet::new();
            for key in ready {
                let Some(p) = pending.remove(&key) else { continue };
                let exists = known.contains(&key);
                set.spawn(send_stream(shared.clone(), key, p, exists));
            }
            while let Some(done) = set.join_next().await {
                if let Ok(Ok(key)) = done {
                    known.insert(key);
                }
            }
        }
        if closing || shared.stop.is_cancelled() {
            break;
        }
    }
}

/// How `add_batch` turns records into event messages.
struct Encoding<'a> {
    format: &'a RecordFormat,
    missing: &'a mut MissingKey,
    line: &'a mut Vec<u8>,
    max_event: usize,
    truncated: &'a prometheus_client::metrics::counter::Counter,
}

fn add_batch(
    batch: &Batch,
    group_r: &mut Renderer,
    stream_r: &mut Renderer,
    pending: &mut HashMap<StreamKey, Pending>,
    enc: &mut Encoding<'_>,
    m: &ComponentMetrics,
) {
    m.received_events.inc_by(batch.len() as u64);
    m.received_bytes.inc_by(batch.bytes());
    let mut group = String::new();
    let mut stream = String::new();
    let mut touched: Vec<StreamKey> = Vec::new();
    let mut empty = 0;
    group_r.begin_batch();
    stream_r.begin_batch();
    for i in 0..batch.len() {
        group_r.render(batch, i, &mut group);
        stream_r.render(batch, i, &mut stream);
        clean_group_name(&mut group);
        clean_stream_name(&mut stream);
        let line = &mut *enc.line;
        line.clear();
        if !enc.format.encode(batch, i, line) {
            enc.missing.record();
            continue;
        }
        if line.is_empty() {
            // CloudWatch rejects an empty message; Fluent Bit skips it too.
            empty += 1;
            continue;
        }
        let mut message = String::from_utf8_lossy(line).into_owned();
        if message.len() > enc.max_event {
            truncate_message(&mut message, enc.max_event);
            enc.truncated.inc();
        }
        let key = (group.clone(), stream.clone());
        let p = pending.entry(key.clone()).or_default();
        p.opened.get_or_insert_with(Instant::now);
        p.bytes += message.len() + EVENT_OVERHEAD;
        p.events.push(Event {
            ts: batch.ts_ms(i),
            message,
        });
        if !touched.contains(&key) {
            touched.push(key);
        }
    }
    enc.missing.flush(m, enc.format);
    m.discarded("empty_message", empty);
    if let Some(ack) = &batch.ack {
        for k in touched {
            if let Some(p) = pending.get_mut(&k) {
                p.acks.push(ack.clone());
            }
        }
    }
}

/// Log group names allow `[A-Za-z0-9._/#-]`, 1 to 512 characters.
pub fn clean_group_name(name: &mut String) {
    if name
        .chars()
        .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | '#')))
    {
        *name = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | '#') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
    }
    name.truncate(512);
}

/// Log stream names allow anything but `:` and `*`, 1 to 512 characters.
pub fn clean_stream_name(name: &mut String) {
    if name.contains([':', '*']) {
        *name = name.replace([':', '*'], "_");
    }
    let cut = name.floor_char_boundary(512);
    name.truncate(cut);
}

/// Cuts `message` to at most `max` bytes (on a character boundary), ending
/// with a marker.
pub fn truncate_message(message: &mut String, max: usize) {
    let keep = max.saturating_sub(TRUNCATION_MARK.len());
    let cut = message.floor_char_boundary(keep);
    message.truncate(cut);
    message.push_str(TRUNCATION_MARK);
}

/// Why events were left out of a request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub too_old: Vec<Event>,
    pub too_new: Vec<Event>,
}

/// Takes out what CloudWatch would reject, sorts by time, and cuts the rest
/// into valid PutLogEvents requests.
pub fn plan_requests(mut events: Vec<Event>, now_ms: i64, retention_days: Option<i32>) -> (Vec<Vec<Event>>, Dropped) {
    let mut oldest = now_ms - MAX_AGE_MS;
    if let Some(d) = retention_days {
        oldest = oldest.max(now_ms - i64::from(d) * 24 * 3600 * 1000);
    }
    let newest = now_ms + MAX_AHEAD_MS;
    let mut dropped = Dropped::default();
    let (kept, rejected): (Vec<Event>, Vec<Event>) =
        events.into_iter().partition(|e| (oldest..=newest).contains(&e.ts));
    events = kept;
    for e in rejected {
        if e.ts < oldest {
            dropped.too_old.push(e);
        } else {
            dropped.too_new.push(e);
        }
    }
    // Stable: events of the same millisecond keep their file order.
    events.sort_by_key(|e| e.ts);
    let mut requests: Vec<Vec<Event>> = Vec::new();
    let mut current: Vec<Event> = Vec::new();
    let mut bytes = 0;
    for e in events {
        let size = e.message.len() + EVENT_OVERHEAD;
        let span_ok = current.first().is_none_or(|f| e.ts - f.ts <= MAX_SPAN_MS);
        if !current.is_empty() && (current.len() >= MAX_EVENTS || bytes + size > MAX_BATCH_BYTES || !span_ok) {
            requests.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(e);
    }
    if !current.is_empty() {
        requests.push(current);
    }
    (requests, dropped)
}

/// Sends one stream's events, in order, one request at a time. Returns the
/// stream key once it is known to exist.
async fn send_stream(shared: Arc<Shared>, key: StreamKey, p: Pending, exists: bool) -> Result<StreamKey, Abandoned> {
    let s = &*shared;
    let mut ctx = RetryCtx {
        id: &s.id,
        service: "CloudWatch Logs",
        m: &s.m,
        health: &s.health,
        stop: &s.stop,
        failing: &s.failing,
    };
    let result = send_stream_inner(s, &mut ctx, &key, p.events, exists).await;
    if result.is_err() {
        for a in &p.acks {
            a.fail();
        }
    }
    // Acks drop here: the batches are delivered (or marked failed).
    drop(p.acks);
    result.map(|()| key)
}

async fn send_stream_inner(
    s: &Shared,
    ctx: &mut RetryCtx<'_>,
    key: &StreamKey,
    events: Vec<Event>,
    exists: bool,
) -> Result<(), Abandoned> {
    let (group, stream) = key;
    if !exists && s.cfg.create_missing {
        ensure_stream(s, ctx, group, stream).await?;
    }
    let now = now_ms();
    let (requests, dropped) = plan_requests(events, now, s.cfg.retention_days);
    s.dead
        .send("too_old", dropped.too_old.iter().map(|e| e.message.as_bytes()));
    s.dead
        .send("too_new", dropped.too_new.iter().map(|e| e.message.as_bytes()));
    for req in requests {
        let n = req.len() as u64;
        let bytes: usize = req.iter().map(|e| e.message.len()).sum();
        let input: Vec<InputLogEvent> = req
            .into_iter()
            .filter_map(|e| InputLogEvent::builder().timestamp(e.ts).message(e.message).build().ok())
            .collect();
        let mut recreated = false;
        let mut attempt = 0u32;
        let emf = s.cfg.log_format.is_some();
        let out = loop {
            let r = s
                .client
                .put_log_events()
                .log_group_name(group)
                .log_stream_name(stream)
                .set_log_events(Some(input.clone()))
                .customize()
                .mutate_request(move |req| {
                    if emf {
                        req.headers_mut().insert(LOGS_FORMAT_HEADER, config::EMF);
                    }
                })
                .send()
                .await;
            match r {
                Ok(out) => {
                    ctx.recovered();
                    break out;
                }
                Err(e) if e.code() == Some("ResourceNotFoundException") && s.cfg.create_missing && !recreated => {
                    // Deleted behind our back (or never seen): create and retry.
                    recreated = true;
                    ensure_stream(s, ctx, group, stream).await?;
                }
                Err(e) => {
                    attempt += 1;
                    ctx.failed(
                        "PutLogEvents",
                        e.code(),
                        &aws_sdk_cloudwatchlogs::error::DisplayErrorContext(&e),
                    );
                    recreated = false;
                    tokio::select! {
                        _ = tokio::time::sleep(aws::backoff(attempt, aws::RETRY_CAP)) => {}
                        _ = ctx.stop.cancelled() => return Err(Abandoned),
                    }
                }
            }
        };
        let mut rejected = 0u64;
        if let Some(info) = out.rejected_log_events_info() {
            // Indices into the sorted request: too new from a start index to
            // the end, too old / expired from the start to an end index.
            let n_events = input.len();
            let new_from = info
                .too_new_log_event_start_index()
                .map_or(n_events, |i| (i.max(0) as usize).min(n_events));
            let old_to = info
                .too_old_log_event_end_index()
                .map_or(0, |i| (i64::from(i) + 1).max(0) as usize);
            let expired_to = info
                .expired_log_event_end_index()
                .map_or(0, |i| (i64::from(i) + 1).max(0) as usize);
            fn msg(e: &InputLogEvent) -> &[u8] {
                e.message().as_bytes()
            }
            let old_to = old_to.min(new_from);
            let expired_to = expired_to.min(new_from);
            s.dead.send("rejected_too_new", input[new_from..].iter().map(msg));
            s.dead.send("rejected_too_old", input[..old_to].iter().map(msg));
            s.dead.send(
                "rejected_expired",
                input[old_to.min(expired_to)..expired_to].iter().map(msg),
            );
            rejected = ((n_events - new_from) + old_to.max(expired_to)) as u64;
        }
        s.m.sent_events.inc_by(n.saturating_sub(rejected));
        s.m.sent_bytes.inc_by(bytes as u64);
    }
    Ok(())
}

/// Creates the group (with retention and class) and the stream if missing.
async fn ensure_stream(s: &Shared, ctx: &mut RetryCtx<'_>, group: &str, stream: &str) -> Result<(), Abandoned> {
    let created_group = ctx
        .run("CreateLogGroup", || {
            let mut req = s.client.create_log_group().log_group_name(group);
            if let Some(c) = &s.cfg.log_group_class {
                req = req.log_group_class(LogGroupClass::from(c.as_str()));
            }
            async move {
                match req.send().await {
                    Ok(_) => Ok(true),
                    Err(e) if e.code() == Some("ResourceAlreadyExistsException") => Ok(false),
                    // Least-privilege roles may create streams but not groups (the group
                    // comes from Terraform): go on, CreateLogStream says if it is missing.
                    Err(e) if e.code() == Some("AccessDeniedException") => {
                        tracing::debug!(group, "not allowed to create log groups; assuming it exists");
                        Ok(false)
                    }
                    Err(e) => Err(e),
                }
            }
        })
        .await?;
    if created_group {
        tracing::info!(group, "created log group");
        if let Some(days) = s.cfg.retention_days {
            ctx.run("PutRetentionPolicy", || {
                s.client
                    .put_retention_policy()
                    .log_group_name(group)
                    .retention_in_days(days)
                    .send()
            })
            .await?;
        }
    }
    ctx.run("CreateLogStream", || {
        let req = s
            .client
            .create_log_stream()
            .log_group_name(group)
            .log_stream_name(stream);
        async move {
            match req.send().await {
                Ok(_) => Ok(()),
                Err(e) if e.code() == Some("ResourceAlreadyExistsException") => Ok(()),
                Err(e) => Err(e),
            }
        }
    })
    .await
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(ts: i64, len: usize) -> Event {
        Event {
            ts,
            message: "x".repeat(len),
        }
    }

    const NOW: i64 = 1_795_641_347_123;

    #[test]
    fn drops_what_cloudwatch_rejects() {
        let events = vec![
            ev(NOW - MAX_AGE_MS - 1, 1),
            ev(NOW - 1000, 1),
            ev(NOW + MAX_AHEAD_MS + 1, 1),
            ev(NOW - 3 * 24 * 3600 * 1000, 1),
        ];
        let (reqs, dropped) = plan_requests(events.clone(), NOW, None);
        assert_eq!((dropped.too_old.len(), dropped.too_new.len()), (1, 1));
        // The 3-day-old event and the recent one span more than 24 h.
        assert_eq!(reqs.len(), 2);
        let (reqs, dropped) = plan_requests(events, NOW, Some(1));
        assert_eq!((dropped.too_old.len(), dropped.too_new.len()), (2, 1));
        assert_eq!(reqs.len(), 1);
    }

    #[test]
    fn cuts_at_count_and_bytes() {
        let events: Vec<Event> = (0..25_000).map(|i| ev(NOW - 10_000 + i % 7, 10)).collect();
        let (reqs, _) = plan_requests(events, NOW, None);
        assert_eq!(
            reqs.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![10_000, 10_000, 5_000]
        );
        let big: Vec<Event> = (0..10).map(|i| ev(NOW - i, 200_000)).collect();
        let (reqs, _) = plan_requests(big, NOW, None);
        assert!(
            reqs.iter()
                .all(|r| r.iter().map(|e| e.message.len() + EVENT_OVERHEAD).sum::<usize>() <= MAX_BATCH_BYTES)
        );
        assert_eq!(reqs.iter().map(Vec::len).sum::<usize>(), 10);
    }

    #[test]
    fn names_follow_cloudwatch_rules() {
        let mut g = "/ecs/web:3 é".to_string();
        clean_group_name(&mut g);
        assert_eq!(g, "/ecs/web_3__");
        let mut s = "app/task:1*x".to_string();
        clean_stream_name(&mut s);
        assert_eq!(s, "app/task_1_x");
    }

    #[test]
    fn truncation_keeps_utf8_and_marks() {
        let mut m = "é".repeat(1000);
        truncate_message(&mut m, 101);
        assert!(m.len() <= 101 && m.ends_with(TRUNCATION_MARK));
        assert!(std::str::from_utf8(m.as_bytes()).is_ok());
    }

    proptest! {
        /// Every kept event lands in exactly one request; each request obeys
        /// every PutLogEvents rule.
        #[test]
        fn requests_obey_every_rule(spec in proptest::collection::vec((0i64..40 * 24 * 3600 * 1000, 0usize..300_000), 0..300)) {
            let events: Vec<Event> = spec.iter().map(|(age, len)| ev(NOW + 3 * 3600 * 1000 - age, *len)).collect();
            let total = events.len() as u64;
            let (reqs, dropped) = plan_requests(events, NOW, None);
            let kept: u64 = reqs.iter().map(|r| r.len() as u64).sum();
            prop_assert_eq!(kept + (dropped.too_old.len() + dropped.too_new.len()) as u64, total);
            for r in &reqs {
                prop_assert!(!r.is_empty() && r.len() <= MAX_EVENTS);
                prop_assert!(r.iter().map(|e| e.message.len() + EVENT_OVERHEAD).sum::<usize>() <= MAX_BATCH_BYTES);
                prop_assert!(r.windows(2).all(|w| w[0].ts <= w[1].ts));
                prop_assert!(r.last().unwrap().ts - r[0].ts <= MAX_SPAN_MS);
                prop_assert!(r.iter().all(|e| e.ts >= NOW - MAX_AGE_MS && e.ts <= NOW + MAX_AHEAD_MS));
            }
        }
    }
}
