//! The forward sink's `servers` through real processes: one Logferry (file
//! source -> forward sink) and two Logferry forward servers (forward
//! source -> file sink), one of them killed with SIGKILL while records flow.
//! At least once across the servers: every id is in one of their outputs.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(120);

/// A forward server: forward source on `port` -> file sink.
fn server(env: &Env, port: u16) -> Router {
    let r = spawn(
        &env.forward_to(None, &format!("address = \"127.0.0.1:{port}\""), ForwardInto::Files),
        &[],
    );
    wait_listening(port);
    r
}

/// The client: `logs/*.log` -> forward sink over `ports` with acks and
/// small chunks (many in flight, so a kill catches some unacked).
fn client(env: &Env, ports: &[u16], load_balance: &str) -> PathBuf {
    let servers: Vec<String> = ports
        .iter()
        .map(|p| format!("{{ host = \"127.0.0.1\", port = {p} }}"))
        .collect();
    env.file_to_forward(
        None,
        "",
        &format!(
            "servers = [{}]\nload_balance = \"{load_balance}\"\nrequire_ack = true\nack_timeout = \"5s\"\nmax_chunk_size = \"4KiB\"\nflush_interval = \"50ms\"",
            servers.join(", ")
        ),
    )
}

/// Ids in both servers' outputs, with how often each arrived.
fn union(a: &Env, b: &Env) -> std::collections::BTreeMap<u64, usize> {
    let mut all = a.records();
    all.extend(b.records());
    id_counts(&all)
}

fn assert_every_id(counts: &std::collections::BTreeMap<u64, usize>, n: u64) {
    let missing: Vec<u64> = (0..n).filter(|i| !counts.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "{} ids lost, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(counts.len() as u64, n, "ids outside 0..{n}");
}

/// Failover: everything goes to the first server until it is killed
/// mid-stream; the second then gets the rest and the unacked chunks.
#[test]
fn failover_moves_to_the_next_server_when_the_first_is_killed() {
    let (a, b1, b2) = (Env::new(), Env::new(), Env::new());
    let (p1, p2) = (free_port(), free_port());
    let s1 = server(&b1, p1);
    let s2 = server(&b2, p2);
    let log = a.logs().join("app.log");
    append_ids(&log, 0..20_000);
    let router = spawn(&client(&a, &[p1, p2], "failover"), &[]);
    wait_for("the first server receiving", LONG, || b1.records().len() > 2_000);
    // Nothing reaches the second server while the first works.
    assert!(b2.records().is_empty(), "failover sent to the second server early");
    s1.signal(libc::SIGKILL);
    drop(s1);
    append_ids(&log, 20_000..40_000);
    wait_for("every id in one of the servers", LONG, || {
        union(&b1, &b2).len() as u64 >= 40_000
    });
    assert!(!b2.records().is_empty());
    router.signal(libc::SIGTERM);
    let (status, err) = router.wait(LONG);
    assert!(status.success(), "{err}");
    assert_every_id(&union(&b1, &b2), 40_000);
    drop(s2);
}

/// Round robin: both servers get chunks; one is killed, and its unacked
/// chunks (and all later ones) go to the other.
#[test]
fn round_robin_spreads_chunks_and_survives_a_killed_server() {
    let (a, b1, b2) = (Env::new(), Env::new(), Env::new());
    let (p1, p2) = (free_port(), free_port());
    let s1 = server(&b1, p1);
    let s2 = server(&b2, p2);
    let log = a.logs().join("app.log");
    append_ids(&log, 0..20_000);
    let router = spawn(&client(&a, &[p1, p2], "round_robin"), &[]);
    wait_for("both servers receiving", LONG, || {
        b1.records().len() > 1_000 && b2.records().len() > 1_000
    });
    s2.signal(libc::SIGKILL);
    drop(s2);
    let before = b1.records().len();
    append_ids(&log, 20_000..40_000);
    wait_for("every id in one of the servers", LONG, || {
        union(&b1, &b2).len() as u64 >= 40_000
    });
    assert!(b1.records().len() > before);
    router.signal(libc::SIGTERM);
    let (status, err) = router.wait(LONG);
    assert!(status.success(), "{err}");
    assert_every_id(&union(&b1, &b2), 40_000);
    drop(s1);
}
