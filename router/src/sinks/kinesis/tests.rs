use std::collections::BTreeSet;

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::event::AckToken;
use tokio_util::sync::CancellationToken;

use crate::api::Health;
use crate::sinks::records;

const LIMITS: CallLimits = <Kinesis as Service>::LIMITS;

/// `{"i":N,"k":"K","p":"xxx"}\n` padded to exactly `len` bytes; `k` left
/// out when `key` is `None`.
fn line(id: usize, key: Option<&str>, len: usize) -> Vec<u8> {
    let head = match key {
        Some(k) => format!("{{\"i\":{id},\"k\":\"{k}\",\"p\":\""),
        None => format!("{{\"i\":{id},\"p\":\""),
    };
    let pad = len - head.len() - 3;
    let mut l = head.into_bytes();
    l.extend(std::iter::repeat_n(b'x', pad));
    l.extend_from_slice(b"\"}\n");
    assert_eq!(l.len(), len);
    l
}

fn id_of(data: &[u8]) -> usize {
    let v: serde_json::Value = serde_json::from_slice(data).unwrap();
    v["i"].as_u64().unwrap() as usize
}

// ---- Builder: log records into Kinesis records, no I/O ----

/// Builds from batches of (key, line length); returns the records (tag =
/// batch number) and how many lines were refused.
fn build(aggregation: bool, batches: &[Vec<(&str, usize)>]) -> (Vec<Rec<usize>>, usize) {
    let mut b = Builder::new(aggregation);
    let (mut out, mut oversize, mut id) = (Vec::new(), 0, 0);
    for (n, lines) in batches.iter().enumerate() {
        b.begin(Some(n));
        for &(key, len) in lines {
            id += 1;
            match b.push(key, &line(id, None, len)) {
                Pushed::Added => {}
                Pushed::Closed(r) => out.push(r),
                Pushed::Oversize => oversize += 1,
            }
        }
        assert_eq!(b.end(), Some(n));
    }
    out.extend(b.take_open());
    (out, oversize)
}

#[test]
fn one_record_per_log_record_up_to_one_mib_with_the_key() {
    // key + data == 1 MiB fits; one byte more is refused, and the rest go on.
    let m = MAX_RECORD_BYTES;
    let (recs, oversize) = build(false, &[vec![("abcd", m - 4), ("abcd", m - 3), ("k", 100), ("", m)]]);
    assert_eq!(oversize, 1);
    let sizes: Vec<usize> = recs.iter().map(Rec::size).collect();
    assert_eq!(sizes, [m, 101, m]);
    assert_eq!(recs.iter().map(|r| id_of(&r.data)).collect::<Vec<_>>(), [1, 3, 4]);
    assert!(recs.iter().all(|r| r.lines == 1 && r.tags == [0]));
}

#[test]
fn aggregates_stay_under_one_mib_and_keep_every_line_in_order() {
    let keys = ["a", "bb", "ccc"];
    // 3000 lines of 1..2000 bytes over three batches, plus one that cannot
    // fit even alone.
    let mut batches: Vec<Vec<(&str, usize)>> = vec![Vec::new(); 3];
    for i in 0..3000usize {
        batches[i % 3].push((keys[i % 3], 40 + (i * 7919) % 2000));
    }
    batches[1].insert(5, ("k", MAX_RECORD_BYTES));
    let (recs, oversize) = build(true, &batches);
    assert_eq!(oversize, 1);
    assert!(recs.len() > 1, "3000 lines of ~1KiB need several aggregates");
    let mut ids = Vec::new();
    for r in &recs {
        assert!(r.size() <= MAX_RECORD_BYTES, "{}", r.size());
        let back = deaggregate(&r.data).expect("a valid aggregate");
        assert_eq!(back.len() as u64, r.lines);
        assert_eq!(r.key, back[0].0, "outer key is the first record's");
        for (k, d) in back {
            let id = id_of(&d);
            // Ids count per batch: batch b holds every third line.
            assert!(keys.contains(&k.as_str()));
            ids.push(id);
        }
    }
    assert_eq!(ids.len(), 3000);
    // Order kept: ids increase across all aggregates.
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    // Every aggregate but the last is nearly full.
    for r in &recs[..recs.len() - 1] {
        assert!(r.size() > MAX_RECORD_BYTES - 2100, "{}", r.size());
    }
}

#[test]
fn every_aggregate_holds_the_tag_of_each_batch_it_has_lines_of() {
    let half = MAX_RECORD_BYTES / 2 - 100;
    // Batch 0: 3 lines of half (aggregates 0 and part of 1), batch 1 one
    // line of 1000 (rest of 1: another half no longer fits), batch 2 two
    // halves (aggregate 2).
    let (recs, _) = build(true, &[vec![("k", half); 3], vec![("k", 1000)], vec![("k", half); 2]]);
    let tags: Vec<Vec<usize>> = recs.iter().map(|r| r.tags.clone()).collect();
    assert_eq!(tags, [vec![0], vec![0, 1], vec![2]]);
}

// ---- Partition keys ----

fn keyed_batch(lines: &[Vec<u8>]) -> Batch {
    let text: Vec<String> = lines
        .iter()
        .map(|l| String::from_utf8(l[..l.len() - 1].to_vec()).unwrap())
        .collect();
    let refs: Vec<&str> = text.iter().map(String::as_str).collect();
    crate::event::batch_of(&refs)
}

#[test]
fn keys_come_from_the_template_else_random() {
    let mut b = keyed_batch(&[
        line(1, Some("web"), 100),
        line(2, None, 100),
        line(3, Some(&"é".repeat(300)), 1000),
    ]);
    b.tag = Some(Arc::from("app-firelens"));
    let mut keys = Keys {
        renderer: Some(Renderer::new(Template::parse("{tag}/{k}").unwrap())),
    };
    let mut out = String::new();
    keys.render(&b, 0, &mut out);
    assert_eq!(out, "app-firelens/web");
    // A record without `k` gets a random key, not `unknown`.
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        keys.render(&b, 1, &mut out);
        assert!(out.len() == 16 && out.chars().all(|c| c.is_ascii_hexdigit()), "{out}");
        seen.insert(out.clone());
    }
    assert!(seen.len() > 15, "random keys: {seen:?}");
    // Never more than 256 characters.
    let mut keys = Keys {
        renderer: Some(Renderer::new(Template::parse("ü-{k}-{k}").unwrap())),
    };
    keys.render(&b, 2, &mut out);
    assert_eq!(out.chars().count(), MAX_KEY_CHARS);
    assert!(out.starts_with("ü-"));
    let mut none = Keys { renderer: None };
    none.render(&b, 0, &mut out);
    assert_eq!(out.len(), 16);
}

// ---- Call limits ----

fn plan(sizes: &[usize]) -> Vec<Vec<usize>> {
    let mut rest = sizes;
    let mut calls = Vec::new();
    while !rest.is_empty() {
        let n = records::next_call(rest.iter().copied(), LIMITS);
        assert!(n > 0);
        calls.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    calls
}

#[test]
fn calls_hold_at_most_500_records_and_5_mib() {
    let calls = plan(&vec![100; 1201]);
    assert_eq!(calls.iter().map(Vec::len).collect::<Vec<_>>(), [500, 500, 201]);
    let calls = plan(&[MAX_RECORD_BYTES; 11]);
    assert_eq!(calls.iter().map(Vec::len).collect::<Vec<_>>(), [5, 5, 1]);
    let calls = plan(&[MAX_CALL_BYTES - 10, 10, 1]);
    assert_eq!(calls, [vec![MAX_CALL_BYTES - 10, 10], vec![1]]);
    let mixed: Vec<usize> = (0..3000).map(|i| (i * 7919) % MAX_RECORD_BYTES + 1).collect();
    let calls = plan(&mixed);
    assert_eq!(calls.concat(), mixed, "order kept, nothing lost");
    for c in &calls {
        assert!(c.len() <= MAX_CALL_RECORDS && c.iter().sum::<usize>() <= MAX_CALL_BYTES);
    }
}

// ---- Against a scripted Kinesis endpoint ----

use records::scripted::{self, Answer as Script};

struct Outcome {
    calls: Vec<Vec<(String, Vec<u8>)>>,
    acks: Vec<crate::event::Ack>,
    records_sent: u64,
    events_sent: u64,
    discarded: String,
    healthy: bool,
}

struct Run<'a> {
    script: Vec<Script>,
    /// Line lengths per batch; line `i` gets key `k{i % 3}`.
    batches: Vec<Vec<usize>>,
    partition_key: Option<&'a str>,
    aggregation: bool,
    max_record_retries: u32,
    stop_after: Option<Duration>,
    dead_letter_dir: Option<&'a std::path::Path>,
}

impl Default for Run<'_> {
    fn default() -> Self {
        Run {
            script: Vec::new(),
            batches: vec![vec![200; 10]; 3],
            partition_key: Some("{k}"),
            aggregation: false,
            max_record_retries: 0,
            stop_after: None,
            dead_letter_dir: None,
        }
    }
}

async fn scenario(run: Run<'_>) -> Outcome {
    let (url, state) = scripted::start(scripted::KINESIS, run.script);
    let conf = aws_sdk_kinesis::Config::builder()
        .behavior_version_latest()
        .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(aws_sdk_kinesis::config::Credentials::new("a", "b", None, None, "test"))
        // The sink's own loop retries; the SDK's would hide the script.
        .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled())
        .build();
    let cfg = KinesisSinkConfig {
        stream: "s".into(),
        partition_key: run.partition_key.map(str::to_string),
        region: None,
        endpoint_url: None,
        flush_interval: Duration::from_secs(60),
        max_record_retries: run.max_record_retries,
        aggregation: run.aggregation,
        log_key: None,
        timestamp_key: None,
    };
    let metrics = crate::metrics::Metrics::new();
    let m = metrics.component("ks", "kinesis_streams");
    let health = Arc::new(Health::default());
    let stop = CancellationToken::new();
    let (tx, rx) = mpsc::channel(8);
    let (ack_tx, ack_rx) = std::sync::mpsc::channel();
    let task = tokio::spawn(run_with_client(
        cfg,
        aws_sdk_kinesis::Client::from_conf(conf),
        rx,
        SinkContext {
            id: "ks".into(),
            m: m.clone(),
            health: health.clone(),
            stop: stop.clone(),
            dead: Arc::new(DeadLetters::new(run.dead_letter_dir, "ks", m.clone())),
            memory: Arc::new(tokio::sync::Semaphore::new(64 << 20)),
            memory_limit: 64 << 20,
        },
    ));
    let mut id = 0;
    for (seq, lens) in run.batches.iter().enumerate() {
        let lines: Vec<Vec<u8>> = lens
            .iter()
            .map(|&len| {
                id += 1;
                line(id, Some(&format!("k{}", id % 3)), len)
            })
            .collect();
        let mut b = keyed_batch(&lines);
        b.ack = Some(AckToken::new(0, seq as u64, ack_tx.clone()));
        tx.send(b).await.unwrap();
    }
    drop(tx);
    drop(ack_tx);
    if let Some(d) = run.stop_after {
        tokio::time::sleep(d).await;
        stop.cancel();
    }
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .unwrap()
        .unwrap();
    let calls = state.lock().unwrap().calls.clone();
    Outcome {
        calls,
        acks: ack_rx.try_iter().collect(),
        records_sent: m.kinesis_records_sent().get(),
        events_sent: m.sent_events.get(),
        discarded: metrics.encode(),
        healthy: health.failing_sinks().is_empty(),
    }
}

fn all_delivered(o: &Outcome, batches: usize) -> bool {
    o.acks.len() == batches && o.acks.iter().all(|a| a.delivered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_records_alone_are_sent_again_and_acks_wait_for_them() {
    let o = scenario(Run {
        script: vec![Script::Reject(vec![0, 3, 29]), Script::Reject(vec![1])],
        ..Run::default()
    })
    .await;
    assert_eq!(o.calls.iter().map(Vec::len).collect::<Vec<_>>(), [30, 3, 1]);
    let first = &o.calls[0];
    assert_eq!(o.calls[1], vec![first[0].clone(), first[3].clone(), first[29].clone()]);
    assert_eq!(o.calls[2], vec![first[3].clone()]);
    // Keys from the template, data the encoded line and `\n`.
    for (i, (k, d)) in first.iter().enumerate() {
        assert_eq!(id_of(d), i + 1);
        assert_eq!(k, &format!("k{}", (i + 1) % 3));
        assert_eq!(d.len(), 200);
        assert!(d.ends_with(b"}\n"));
    }
    assert_eq!((o.records_sent, o.events_sent), (30, 30));
    assert!(all_delivered(&o, 3), "{:?}", o.acks);
    assert!(o.healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_calls_are_retried_and_nothing_is_lost() {
    let o = scenario(Run {
        script: vec![
            Script::Error(400, "LimitExceededException"),
            Script::Error(503, "ServiceUnavailable"),
            Script::Reject(vec![2]),
        ],
        ..Run::default()
    })
    .await;
    assert_eq!(o.calls.iter().map(Vec::len).collect::<Vec<_>>(), [30, 30, 30, 1]);
    assert_eq!(o.calls[0], o.calls[2]);
    assert_eq!(o.calls[3][0], o.calls[0][2]);
    assert_eq!((o.records_sent, o.events_sent), (30, 30));
    assert!(all_delivered(&o, 3));
    assert!(o.healthy);
    assert!(
        o.discarded
            .lines()
            .any(|l| l.starts_with("logferry_component_retries_total{")
                && l.contains(r#"component="ks""#)
                && l.ends_with(" 3")),
        "two call errors and one rejection: {}",
        o.discarded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_split_at_500_records_and_5_mib_and_oversize_goes_to_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    // 1201 small lines, then 12 of 600KiB and one of 1MiB (over the limit
    // with its key), in one run.
    let mut big = vec![600 * 1024; 12];
    big.insert(4, MAX_RECORD_BYTES);
    let o = scenario(Run {
        batches: vec![vec![100; 601], vec![100; 600], big],
        dead_letter_dir: Some(dir.path()),
        ..Run::default()
    })
    .await;
    let lens: Vec<usize> = o.calls.iter().map(Vec::len).collect();
    // 500 | 500 | 201 small and 7 big (614,402 B each: an eighth might not
    // fit beside them, so the call goes) | 5 big at the end.
    assert_eq!(lens, [500, 500, 208, 5], "{lens:?}");
    for c in &o.calls {
        let bytes: usize = c.iter().map(|(k, d)| k.len() + d.len()).sum();
        assert!(c.len() <= MAX_CALL_RECORDS && bytes <= MAX_CALL_BYTES, "{bytes}");
        assert!(c.iter().all(|(k, d)| k.len() + d.len() <= MAX_RECORD_BYTES));
    }
    let ids: Vec<usize> = o.calls.concat().iter().map(|(_, d)| id_of(d)).collect();
    let mut want: Vec<usize> = (1..=1214).collect();
    want.retain(|&i| i != 1206);
    assert_eq!(ids, want, "every line but the oversize one, in order");
    assert_eq!((o.records_sent, o.events_sent), (1213, 1213));
    assert!(all_delivered(&o, 3), "a dead-lettered line does not hold its batch");
    assert!(
        o.discarded
            .contains(r#"logferry_component_discarded_events_total{component="ks",reason="over_size_limit"} 1"#),
        "{}",
        o.discarded
    );
    let files: Vec<_> = std::fs::read_dir(dir.path().join("ks")).unwrap().flatten().collect();
    let text = std::fs::read_to_string(files[0].path()).unwrap();
    let dl: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(dl["reason"], "over_size_limit");
    assert_eq!(dl["record"]["i"], 1206);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_never_accepted_fail_their_batches_at_stop() {
    // Record 12 (batch 1) is always rejected.
    let o = scenario(Run {
        script: vec![Script::Reject(vec![12]); 100],
        stop_after: Some(Duration::from_secs(2)),
        ..Run::default()
    })
    .await;
    assert!(o.calls.len() >= 2);
    assert!(o.calls[1..].iter().all(|c| c.len() == 1 && c[0] == o.calls[0][12]));
    assert_eq!((o.records_sent, o.events_sent), (29, 29));
    let mut acks: Vec<(u64, bool)> = o.acks.iter().map(|a| (a.seq, a.delivered)).collect();
    acks.sort();
    assert_eq!(acks, [(0, true), (1, false), (2, true)]);
    assert!(o.healthy, "throughput rejections are transient");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_rejected_past_the_bound_goes_to_the_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let o = scenario(Run {
        script: vec![Script::Reject(vec![7]); 100],
        max_record_retries: 2,
        dead_letter_dir: Some(dir.path()),
        ..Run::default()
    })
    .await;
    assert_eq!(o.calls.len(), 3, "the call and two retries");
    assert_eq!((o.records_sent, o.events_sent), (29, 29));
    assert!(all_delivered(&o, 3), "{:?}", o.acks);
    let files: Vec<_> = std::fs::read_dir(dir.path().join("ks")).unwrap().flatten().collect();
    let text = std::fs::read_to_string(files[0].path()).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["reason"], "retries_exhausted");
    assert_eq!(lines[0]["record"]["i"], 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregated_records_carry_every_line_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    // 3 batches of 2000 lines of 1KiB: about 6 aggregates of 1 MiB, two
    // calls; the second aggregate is rejected once, the last past the bound.
    let o = scenario(Run {
        batches: vec![vec![1024; 2000]; 3],
        aggregation: true,
        script: vec![Script::Reject(vec![1])],
        ..Run::default()
    })
    .await;
    let lens: Vec<usize> = o.calls.iter().map(Vec::len).collect();
    assert_eq!(lens[1], 1, "only the rejected aggregate is resent: {lens:?}");
    let mut seen = Vec::new();
    for (n, c) in o.calls.iter().enumerate() {
        if n == 1 {
            assert_eq!(c[0], o.calls[0][1]);
            continue;
        }
        for (outer, data) in c {
            assert!(outer.len() + data.len() <= MAX_RECORD_BYTES);
            let recs = deaggregate(data).expect("valid KPL record");
            assert_eq!(outer, &recs[0].0);
            for (k, d) in recs {
                let id = id_of(&d);
                assert_eq!(k, format!("k{}", id % 3));
                assert_eq!(d.len(), 1024);
                seen.push(id);
            }
        }
    }
    assert_eq!(seen, (1..=6000).collect::<Vec<_>>());
    assert_eq!(o.events_sent, 6000);
    assert_eq!(o.records_sent as usize, o.calls.iter().map(Vec::len).sum::<usize>() - 1);
    assert!(all_delivered(&o, 3));

    // Past the bound, an aggregate's lines go to the dead letters one by one.
    let o = scenario(Run {
        batches: vec![vec![300; 10]],
        aggregation: true,
        script: vec![Script::Reject(vec![0]); 10],
        max_record_retries: 1,
        dead_letter_dir: Some(dir.path()),
        ..Run::default()
    })
    .await;
    assert_eq!(o.calls.len(), 2);
    assert_eq!(o.events_sent, 0);
    assert!(all_delivered(&o, 1));
    let files: Vec<_> = std::fs::read_dir(dir.path().join("ks")).unwrap().flatten().collect();
    let text = std::fs::read_to_string(files[0].path()).unwrap();
    let ids: Vec<u64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["record"]["i"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids, (1..=10).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_template_keys_are_random() {
    let o = scenario(Run {
        partition_key: None,
        ..Run::default()
    })
    .await;
    let keys: BTreeSet<&str> = o.calls[0].iter().map(|(k, _)| k.as_str()).collect();
    assert!(keys.len() >= 28, "30 random keys: {keys:?}");
    assert!(all_delivered(&o, 3));
}
