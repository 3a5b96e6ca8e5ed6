use super::*;
use crate::event::Ack;
use proptest::prelude::*;
use serde_json::{Value, json};

fn cfg(toml_text: &str) -> PartialMessageConfig {
    toml::from_str(toml_text).unwrap()
}

/// A Docker partial message as the fluentd log driver sends it.
fn part(id: &str, ord: u64, last: bool, log: &str) -> String {
    json!({
        "container_id": format!("c-{id}"),
        "container_name": "/app",
        "source": "stdout",
        "log": log,
        "partial_message": "true",
        "partial_id": id,
        "partial_ordinal": ord.to_string(),
        "partial_last": if last { "true" } else { "false" },
    })
    .to_string()
}

fn batch(recs: &[String], seq: u64, tx: &std::sync::mpsc::Sender<Ack>) -> Batch {
    let mut b = crate::event::batch_of(&recs.iter().map(String::as_str).collect::<Vec<_>>());
    b.ack = Some(AckToken::new(1, seq, tx.clone()));
    b
}

fn values(batches: &[Batch]) -> Vec<Value> {
    batches
        .iter()
        .flat_map(|b| (0..b.len()).map(move |i| serde_json::from_slice(b.records.text(i)).unwrap()))
        .collect()
}

#[test]
fn interleaved_out_of_order_parts_join_and_lose_their_partial_keys() {
    let (tx, _rx) = std::sync::mpsc::channel();
    let mut j = PartialJoiner::new(PartialMessageConfig::default(), None, None);
    let now = Instant::now();
    let plain = json!({"log": "plain", "source": "stderr"}).to_string();
    let app_flag = json!({"log": "x", "partial_message": "false", "partial_id": "z"}).to_string();
    let out = j.push(
        batch(
            &[
                part("a", 2, false, "{\"k\":\"é\\\"q"),
                part("b", 1, false, "B1-"),
                plain.clone(),
                part("a", 3, true, "\"}"),
                app_flag.clone(),
            ],
            0,
            &tx,
        ),
        now,
    );
    assert_eq!(
        values(&out),
        [
            json!({"log": "plain", "source": "stderr"}),
            serde_json::from_str::<Value>(&app_flag).unwrap()
        ]
    );
    assert_eq!(j.open(), 2);
    let out = j.push(
        batch(&[part("b", 2, true, "B2"), part("a", 1, false, "A1:")], 1, &tx),
        now,
    );
    let got = values(&out);
    assert_eq!(
        got,
        [
            json!({"container_id": "c-b", "container_name": "/app", "source": "stdout", "log": "B1-B2"}),
            json!({"container_id": "c-a", "container_name": "/app", "source": "stdout", "log": "A1:{\"k\":\"é\\\"q\"}"}),
        ]
    );
    // The joined line of `a` is itself the JSON the application wrote.
    let inner: Value = serde_json::from_str(got[1]["log"].as_str().unwrap().trim_start_matches("A1:")).unwrap();
    assert_eq!(inner, json!({"k": "é\"q"}));
    assert_eq!((j.open(), j.held()), (0, 0));
    assert!(j.flush_all().is_empty());
}

#[test]
fn duplicates_are_dropped_and_a_part_without_ordinal_follows_arrival() {
    let (tx, _rx) = std::sync::mpsc::channel();
    let mut j = PartialJoiner::new(PartialMessageConfig::default(), None, None);
    let now = Instant::now();
    let no_ord = |log: &str, last: bool| {
        json!({"log": log, "partial_message": "true", "partial_id": "n", "partial_last": last.to_string()}).to_string()
    };
    let out = j.push(
        batch(
            &[
                part("d", 1, false, "one "),
                part("d", 1, false, "one "),
                no_ord("x", false),
                no_ord("y", false),
                no_ord("z", true),
                part("d", 2, true, "two"),
                part("d", 2, true, "two"),
            ],
            0,
            &tx,
        ),
        now,
    );
    let logs: Vec<Value> = values(&out).iter().map(|v| v["log"].clone()).collect();
    assert_eq!(logs, [json!("xyz"), json!("one two")]);
    // The second "two" starts a new line that never completes: out at the
    // timeout, marked, with its id.
    let late = j.expire(now + Duration::from_secs(2));
    assert_eq!(
        values(&late),
        [
            json!({"container_id": "c-d", "container_name": "/app", "source": "stdout", "log": "two",
            "partial_id": "d", "logferry_partial": "timeout"})
        ]
    );
}

#[test]
fn records_that_are_not_parts_pass_untouched() {
    let (tx, _rx) = std::sync::mpsc::channel();
    let mut j = PartialJoiner::new(PartialMessageConfig::default(), None, None);
    let recs = vec![
        // No partial_id, a non-string log, no log at all: not joinable.
        json!({"log": "a", "partial_message": "true"}).to_string(),
        json!({"log": 5, "partial_message": "true", "partial_id": "i", "partial_ordinal": "1"}).to_string(),
        json!({"msg": "b", "partial_message": "true", "partial_id": "i"}).to_string(),
        r#"{"log":"c",  "x" : [1,2]}"#.to_string(),
    ];
    let b = batch(&recs, 0, &tx);
    let want: Vec<Vec<u8>> = (0..b.len()).map(|i| b.records.text(i).to_vec()).collect();
    let out = j.push(b, Instant::now());
    let got: Vec<Vec<u8>> = out
        .iter()
        .flat_map(|b| (0..b.len()).map(|i| b.records.text(i).to_vec()))
        .collect();
    assert_eq!(got, want, "byte for byte, in order");
    assert_eq!(j.open(), 0);
}

#[test]
fn max_size_cuts_into_marked_records_that_together_hold_the_line() {
    let (tx, _rx) = std::sync::mpsc::channel();
    let mut j = PartialJoiner::new(cfg("max_size = \"10B\""), None, None);
    let now = Instant::now();
    let mut out = j.push(
        batch(
            &[
                part("m", 1, false, "aaaa"),
                part("m", 2, false, "bbbb"),
                part("m", 3, false, "cccc"),
                part("m", 4, false, "0123456789ABC"),
                part("m", 5, true, "e"),
            ],
            0,
            &tx,
        ),
        now,
    );
    out.extend(j.flush_all());
    let got = values(&out);
    let logs: Vec<&str> = got.iter().map(|v| v["log"].as_str().unwrap()).collect();
    assert_eq!(logs, ["aaaabbbb", "cccc", "0123456789ABC", "e"]);
    for v in &got {
        assert_eq!(v["logferry_partial"], "max_size", "{v}");
        assert_eq!(v["partial_id"], "m", "{v}");
        assert!(v.get("partial_ordinal").is_none(), "{v}");
    }
    assert_eq!(j.held(), 0);
}

#[test]
fn the_joined_batch_holds_every_parts_ack_until_delivered() {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut j = PartialJoiner::new(PartialMessageConfig::default(), None, None);
    let now = Instant::now();
    let out1 = j.push(
        batch(&[part("q", 1, false, "1"), "{\"log\":\"plain\"}".into()], 1, &tx),
        now,
    );
    assert_eq!(values(&out1).len(), 1);
    drop(out1);
    assert!(rx.try_recv().is_err(), "batch 1 has a part held");
    let out2 = j.push(batch(&[part("q", 2, false, "2")], 2, &tx), now);
    assert!(out2.is_empty());
    assert!(rx.try_recv().is_err(), "batch 2 has a part held");
    let out3 = j.push(batch(&[part("q", 3, true, "3")], 3, &tx), now);
    assert_eq!(values(&out3)[0]["log"], "123");
    assert!(rx.try_recv().is_err(), "the joined record is not delivered yet");
    // The sink fails it: all three source batches are reported failed.
    out3[0].fail();
    drop(out3);
    let mut acks: Vec<(u64, bool)> = rx.try_iter().map(|a| (a.seq, a.delivered)).collect();
    acks.sort();
    assert_eq!(acks, [(1, false), (2, false), (3, false)]);
}

#[test]
fn held_parts_are_charged_to_memory_limit_or_emitted() {
    let sem = Arc::new(Semaphore::new(100_000));
    let (tx, _rx) = std::sync::mpsc::channel();
    let mut j = PartialJoiner::new(PartialMessageConfig::default(), None, Some(sem.clone()));
    let now = Instant::now();
    let mut b = batch(
        &[part("r", 1, false, &"x".repeat(500)), part("s", 1, false, "s1")],
        0,
        &tx,
    );
    let bytes = b.records.buf.len();
    Arc::get_mut(&mut b.records).unwrap().permit = Some(sem.clone().try_acquire_many_owned(bytes as u32).unwrap());
    let out = j.push(b, now);
    assert!(out.is_empty());
    assert!(j.held() > 500);
    assert_eq!(j.charged(), j.held());
    assert_eq!(
        sem.available_permits(),
        100_000 - j.held(),
        "the batch's share moved, nothing more"
    );
    // No room left: what is held goes out at once, marked.
    let _rest = sem
        .clone()
        .try_acquire_many_owned(sem.available_permits() as u32)
        .unwrap();
    let out = j.push(batch(&[part("r", 2, false, "more")], 1, &tx), now);
    let mut got = values(&out);
    got.sort_by_key(|v| v["partial_id"].as_str().unwrap().to_string());
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["log"].as_str().unwrap(), format!("{}more", "x".repeat(500)));
    assert!(got.iter().all(|v| v["logferry_partial"] == "memory"), "{got:?}");
    assert_eq!((j.open(), j.held(), j.charged()), (0, 0, 0));
}

/// Lines of many ids, each cut into parts, sent in any interleaving
/// (`shuffle`: parts of one id out of order too), with duplicates, in
/// batches of any size.
fn run_lines(
    lines: &[String],
    cuts: &[Vec<usize>],
    order: &[u16],
    dups: &[bool],
    per: usize,
    max: usize,
    in_order: bool,
) -> (Vec<Value>, Vec<Value>, Vec<Vec<String>>) {
    let (tx, _rx) = std::sync::mpsc::channel();
    let mut j = PartialJoiner::new(cfg(&format!("max_size = \"{max}B\"")), None, None);
    let mut parts: Vec<String> = Vec::new();
    let mut plain = Vec::new();
    let mut all_pieces = Vec::new();
    for (n, (line, cut)) in lines.iter().zip(cuts).enumerate() {
        let mut bounds: Vec<usize> = cut
            .iter()
            .map(|c| line.floor_char_boundary(c % (line.len() + 1)))
            .collect();
        bounds.push(0);
        bounds.push(line.len());
        bounds.sort();
        bounds.dedup();
        let pieces: Vec<&str> = bounds.windows(2).map(|w| &line[w[0]..w[1]]).collect();
        let pieces = if pieces.is_empty() { vec![""] } else { pieces };
        for (i, p) in pieces.iter().enumerate() {
            parts.push(part(&format!("id{n}"), i as u64 + 1, i + 1 == pieces.len(), p));
        }
        all_pieces.push(pieces.iter().map(|p| p.to_string()).collect());
        let p = json!({"log": format!("plain {n}")}).to_string();
        plain.push(p.clone());
        parts.push(p);
    }
    // A permutation from `order` (a random key per element).
    let mut idx: Vec<usize> = (0..parts.len()).collect();
    idx.sort_by_key(|i| order.get(*i).copied().unwrap_or(0));
    if in_order {
        // Each id's parts back in ordinal order, in the slots its parts
        // were shuffled to (ids stay interleaved).
        for n in 0..lines.len() {
            let tag = format!("\"c-id{n}\"");
            let slots: Vec<usize> = (0..idx.len()).filter(|k| parts[idx[*k]].contains(&tag)).collect();
            let mut mine: Vec<usize> = slots.iter().map(|k| idx[*k]).collect();
            mine.sort();
            for (k, i) in slots.into_iter().zip(mine) {
                idx[k] = i;
            }
        }
    }
    let mut sent: Vec<String> = Vec::new();
    for (k, i) in idx.iter().enumerate() {
        sent.push(parts[*i].clone());
        if dups.get(k).copied().unwrap_or(false) && parts[*i].contains("partial_id") {
            sent.push(parts[*i].clone());
        }
    }
    let now = Instant::now();
    let mut out = Vec::new();
    for (n, chunk) in sent.chunks(per.max(1)).enumerate() {
        out.extend(j.push(batch(chunk, n as u64, &tx), now));
    }
    out.extend(j.flush_all());
    assert_eq!((j.held(), j.open()), (0, 0));
    let got = values(&out);
    let plain_sent: Vec<Value> = sent
        .iter()
        .filter(|s| !s.contains("partial_id"))
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
    (got, plain_sent, all_pieces)
}

fn line_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just('a'),
            Just('é'),
            Just('"'),
            Just('\\'),
            Just('\n'),
            Just('😀'),
            Just('{')
        ],
        0..60,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any interleaving, any order of parts, duplicates, any batching:
    /// one unmarked record per line holding exactly the line, plain
    /// records in their order. A duplicate that comes after its line
    /// was completed cannot be told from a resend of a line whose
    /// delivery failed: it comes out again (at least once), marked
    /// (whole again for a one-part line), and is only a piece sent twice.
    #[test]
    fn every_line_comes_out_whole_once(
        lines in prop::collection::vec(line_strategy(), 1..8),
        cuts in prop::collection::vec(prop::collection::vec(0usize..64, 0..5), 8),
        order in prop::collection::vec(any::<u16>(), 80),
        dups in prop::collection::vec(prop::bool::weighted(0.15), 120),
        per in 1usize..12,
    ) {
        let (got, plain, pieces) = run_lines(&lines, &cuts, &order, &dups, per, 1 << 20, false);
        let (joined, passed): (Vec<&Value>, Vec<&Value>) = got.iter().partition(|v| v["container_id"].is_string());
        prop_assert_eq!(passed.into_iter().cloned().collect::<Vec<_>>(), plain);
        let any_dup = dups.iter().any(|d| *d);
        for (n, line) in lines.iter().enumerate() {
            let mine: Vec<&&Value> = joined.iter().filter(|v| v["container_id"] == format!("c-id{n}")).collect();
            let (whole, marked): (Vec<&&Value>, Vec<&&Value>) = mine.iter().partition(|v| v.get(MARK).is_none());
            // A one-part line sent twice is whole twice.
            prop_assert!(whole.len() == 1 || (any_dup && pieces[n].len() == 1), "{:?}", mine);
            for w in &whole {
                prop_assert_eq!(w["log"].as_str(), Some(line.as_str()));
                let obj = w.as_object().unwrap();
                prop_assert!(obj.keys().all(|k| !k.starts_with("partial_")), "{:?}", obj);
            }
            prop_assert!(marked.is_empty() || any_dup, "{:?}", marked);
            for m in &marked {
                prop_assert_eq!(&m[MARK], "shutdown");
                prop_assert!(pieces[n].iter().any(|p| Some(p.as_str()) == m["log"].as_str()), "{:?}", m);
            }
        }
        if !any_dup {
            prop_assert_eq!(joined.len(), lines.len());
        }
    }

    /// Parts of one id in order (ids interleaved), a small max_size:
    /// the records of a line, in order, spell the line; each holds at
    /// most max_size bytes unless it is a single part; cut lines are
    /// marked, whole ones are not.
    #[test]
    fn max_size_bounds_records_and_loses_nothing(
        lines in prop::collection::vec(line_strategy(), 1..6),
        cuts in prop::collection::vec(prop::collection::vec(0usize..64, 0..6), 6),
        order in prop::collection::vec(any::<u16>(), 60),
        per in 1usize..10,
        max in 1usize..40,
    ) {
        let (got, _, pieces) = run_lines(&lines, &cuts, &order, &[], per, max, true);
        for (n, line) in lines.iter().enumerate() {
            let mine: Vec<&Value> = got.iter().filter(|v| v["container_id"] == format!("c-id{n}")).collect();
            let text: String = mine.iter().map(|v| v["log"].as_str().unwrap()).collect();
            prop_assert_eq!(&text, line);
            for v in &mine {
                let log = v["log"].as_str().unwrap();
                prop_assert!(log.len() <= max || pieces[n].iter().any(|p| p == log), "{} > {}", log.len(), max);
            }
            if mine.len() > 1 {
                prop_assert!(mine.iter().all(|v| v[MARK] == "max_size"), "{:?}", mine);
            } else {
                prop_assert!(mine[0].get(MARK).is_none() || line.len() > max, "{:?}", mine);
            }
        }
    }
}
