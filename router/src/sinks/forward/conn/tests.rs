use super::*;
use crate::event::{Ack, AckToken, HeldAck};
use crate::memory::Charge;
use crate::metrics::Metrics;
use tokio::net::TcpListener;

/// The server side of one connection: reads PackedForward messages and
/// answers acks when told to.
struct Peer {
    io: TcpStream,
    buf: Vec<u8>,
}

impl Peer {
    /// The chunk id of the next message; None at EOF.
    async fn next_chunk(&mut self) -> Option<String> {
        loop {
            let mut cur = std::io::Cursor::new(&self.buf[..]);
            if let Ok(v) = rmpv::decode::read_value(&mut cur) {
                let used = cur.position() as usize;
                self.buf.drain(..used);
                let opts = v.as_array().expect("a message is an array")[2]
                    .as_map()
                    .unwrap()
                    .clone();
                let id = opts
                    .iter()
                    .find(|(k, _)| k.as_str() == Some("chunk"))
                    .unwrap()
                    .1
                    .clone();
                return Some(id.as_str().unwrap().to_string());
            }
            let mut b = [0u8; 4096];
            let n = self.io.read(&mut b).await.ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&b[..n]);
        }
    }

    async fn ack(&mut self, id: &str) {
        let v = Value::Map(vec![(Value::from("ack"), Value::from(id))]);
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &v).unwrap();
        // The client may be gone (a test stopping it): nothing to do.
        let _ = self.io.write_all(&out).await;
    }
}

struct Rig {
    listeners: Vec<TcpListener>,
    chunks: mpsc::Sender<Chunk>,
    acks: std::sync::mpsc::Receiver<Ack>,
    ack_tx: std::sync::mpsc::Sender<Ack>,
    m: ComponentMetrics,
    memory: Arc<tokio::sync::Semaphore>,
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
}

async fn rig(max_in_flight: usize) -> Rig {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    rig_with(
        vec![listener],
        &format!("host = \"127.0.0.1\"\nport = {port}\nmax_in_flight = {max_in_flight}"),
    )
    .await
}

/// A port nothing listens on.
async fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// `servers = [...]` of these ports.
fn servers(ports: &[u16]) -> String {
    let list: Vec<String> = ports
        .iter()
        .map(|p| format!("{{ host = \"127.0.0.1\", port = {p} }}"))
        .collect();
    format!("servers = [{}]", list.join(", "))
}

async fn rig_with(listeners: Vec<TcpListener>, cfg: &str) -> Rig {
    let cfg: ForwardSinkConfig = toml::from_str(&format!("{cfg}\nack_timeout = \"60s\"")).unwrap();
    let m = Metrics::new().component("fw", "forward");
    let stop = CancellationToken::new();
    let sender = Sender {
        id: "fw".into(),
        servers: cfg.endpoints(),
        cfg: Arc::new(cfg),
        m: m.clone(),
        health: Arc::new(Health::default()),
        stop: stop.clone(),
    };
    let (tx, rx) = mpsc::channel(1);
    let task = if sender.cfg.load_balance == super::super::LoadBalance::RoundRobin {
        tokio::spawn(run_balanced(sender, rx))
    } else {
        tokio::spawn(sender.run(rx))
    };
    let (ack_tx, acks) = std::sync::mpsc::channel();
    Rig {
        listeners,
        chunks: tx,
        acks,
        ack_tx,
        m,
        memory: Arc::new(tokio::sync::Semaphore::new(1 << 20)),
        task,
        stop,
    }
}

impl Rig {
    /// Chunk `seq`, its own ack token numbered `seq`, 100 bytes charged.
    fn chunk(&self, seq: u64) -> Chunk {
        let mut charge = Charge::new(self.memory.clone());
        assert!(charge.resize(100));
        Chunk {
            tag: "t".into(),
            body: vec![0xc0; 100],
            events: 1,
            gzip: false,
            id: Some(format!("chunk-{seq}")),
            acks: vec![HeldAck(Some(AckToken::new(1, seq, self.ack_tx.clone())))],
            _charge: charge,
        }
    }

    async fn peer(&self) -> Peer {
        self.peer_at(0).await
    }

    async fn peer_at(&self, i: usize) -> Peer {
        let (io, _) = tokio::time::timeout(Duration::from_secs(30), self.listeners[i].accept())
            .await
            .expect("the sink connects")
            .unwrap();
        Peer { io, buf: Vec::new() }
    }

    /// The next batch ack, waiting generously.
    async fn next_ack(&self) -> Ack {
        for _ in 0..3000 {
            if let Ok(a) = self.acks.try_recv() {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no ack within 30s");
    }

    /// Sends chunks `seqs` from a task of their own (the sink takes one at
    /// a time, so a test can serve and ack meanwhile).
    fn feed(&self, seqs: std::ops::Range<u64>) -> tokio::task::JoinHandle<()> {
        let all: Vec<Chunk> = seqs.map(|s| self.chunk(s)).collect();
        let tx = self.chunks.clone();
        tokio::spawn(async move {
            for c in all {
                tx.send(c).await.unwrap();
            }
        })
    }

    /// The next `n` batch acks, each delivered; their seqs, sorted.
    async fn delivered(&self, n: usize) -> Vec<u64> {
        let mut seqs = Vec::with_capacity(n);
        for _ in 0..n {
            let a = self.next_ack().await;
            assert!(a.delivered, "chunk {} failed", a.seq);
            seqs.push(a.seq);
        }
        seqs.sort();
        seqs
    }

    /// Closes the sink's input and waits for its task to end (having
    /// delivered what it held).
    async fn input_ends(&mut self) {
        let (tx, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.chunks, tx));
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .unwrap()
            .unwrap();
    }

    fn charged(&self) -> usize {
        (1 << 20) - self.memory.available_permits()
    }
}

#[tokio::test]
async fn acks_out_of_order_release_exactly_their_chunks() {
    let mut r = rig(4).await;
    for seq in 0..4 {
        r.chunks.send(r.chunk(seq)).await.unwrap();
    }
    let mut p = r.peer().await;
    // All four are written before any ack: pipelined.
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(p.next_chunk().await.unwrap());
    }
    assert_eq!(ids, ["chunk-0", "chunk-1", "chunk-2", "chunk-3"]);
    assert_eq!(r.charged(), 400, "unacked chunks stay charged");
    // Acked 2, 3, 0, 1 (and one unknown id, ignored): each releases its own.
    p.ack("chunk-2").await;
    let a = r.next_ack().await;
    assert_eq!((a.seq, a.delivered), (2, true));
    assert!(r.acks.try_recv().is_err(), "only chunk 2 was acked");
    p.ack("nobody").await;
    p.ack("chunk-3").await;
    assert_eq!(r.next_ack().await.seq, 3);
    p.ack("chunk-0").await;
    assert_eq!(r.next_ack().await.seq, 0);
    assert!(r.acks.try_recv().is_err(), "chunk 1 is still unacked");
    assert_eq!(r.charged(), 100);
    p.ack("chunk-1").await;
    let a = r.next_ack().await;
    assert_eq!((a.seq, a.delivered), (1, true));
    assert_eq!(r.m.sent_events.get(), 4);
    assert_eq!(r.charged(), 0);
    r.input_ends().await;
    assert_eq!(r.m.retries.get(), 0);
}

#[tokio::test]
async fn a_dropped_connection_resends_the_unacked_chunks_in_order() {
    let mut r = rig(4).await;
    for seq in 0..4 {
        r.chunks.send(r.chunk(seq)).await.unwrap();
    }
    let mut p = r.peer().await;
    for _ in 0..4 {
        p.next_chunk().await.unwrap();
    }
    p.ack("chunk-1").await;
    assert_eq!(r.next_ack().await.seq, 1);
    // Hang up with 0, 2 and 3 in flight; more chunks queue meanwhile.
    drop(p);
    let feeder = r.feed(4..8);
    let mut p = r.peer().await;
    let mut ids = Vec::new();
    while ids.len() < 7 {
        let id = p.next_chunk().await.unwrap();
        ids.push(id.clone());
        p.ack(&id).await;
    }
    // The unacked ones first, in their order, then the new ones.
    assert_eq!(
        ids,
        [
            "chunk-0", "chunk-2", "chunk-3", "chunk-4", "chunk-5", "chunk-6", "chunk-7"
        ]
    );
    assert_eq!(r.delivered(7).await, [0, 2, 3, 4, 5, 6, 7]);
    assert_eq!(r.m.sent_events.get(), 8);
    assert!(r.m.retries.get() >= 1);
    feeder.await.unwrap();
    r.input_ends().await;
}

#[tokio::test]
async fn max_in_flight_one_writes_each_chunk_after_the_last_ack() {
    let mut r = rig(1).await;
    let feeder = r.feed(0..5);
    let mut p = r.peer().await;
    for seq in 0..5u64 {
        let id = p.next_chunk().await.unwrap();
        assert_eq!(id, format!("chunk-{seq}"));
        // Give a sink that does not wait every chance to write ahead.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let mut b = [0u8; 1];
        let early = tokio::time::timeout(Duration::ZERO, p.io.peek(&mut b)).await;
        assert!(
            !matches!(early, Ok(Ok(n)) if n > 0) && p.buf.is_empty(),
            "chunk {} written before chunk {seq} was acked",
            seq + 1
        );
        p.ack(&id).await;
        assert_eq!(r.next_ack().await.seq, seq);
    }
    feeder.await.unwrap();
    r.input_ends().await;
    r.stop.cancel();
}

#[tokio::test]
async fn a_dead_first_server_sends_everything_to_the_second() {
    let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live_port = live.local_addr().unwrap().port();
    let dead = dead_port().await;
    let mut r = rig_with(
        vec![live],
        &format!("{}\nmax_in_flight = 4", servers(&[dead, live_port])),
    )
    .await;
    let feeder = r.feed(0..10);
    let mut p = r.peer_at(0).await;
    let mut ids = Vec::new();
    while ids.len() < 10 {
        let id = p.next_chunk().await.unwrap();
        p.ack(&id).await;
        ids.push(id);
    }
    let want: Vec<String> = (0..10).map(|s| format!("chunk-{s}")).collect();
    assert_eq!(ids, want);
    assert_eq!(r.delivered(10).await, (0..10).collect::<Vec<_>>());
    // One refused connect to the dead server, no more: the sink stays on
    // the live one.
    assert_eq!(r.m.retries.get(), 1);
    feeder.await.unwrap();
    r.input_ends().await;
}

#[tokio::test]
async fn a_server_dying_mid_stream_loses_nothing() {
    let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ports = [a.local_addr().unwrap().port(), b.local_addr().unwrap().port()];
    let mut r = rig_with(vec![a, b], &format!("{}\nmax_in_flight = 4", servers(&ports))).await;
    let feeder = r.feed(0..12);
    // A takes four, acks 0 and 2, and dies (its listener too).
    let mut p = r.peer_at(0).await;
    for _ in 0..4 {
        p.next_chunk().await.unwrap();
    }
    p.ack("chunk-0").await;
    p.ack("chunk-2").await;
    let mut early = vec![r.next_ack().await.seq, r.next_ack().await.seq];
    early.sort();
    assert_eq!(early, [0, 2]);
    drop(p);
    drop(r.listeners.remove(0));
    // B gets the unacked 1 and 3 first, in order, then the rest.
    let mut p = r.peer_at(0).await;
    let mut ids = Vec::new();
    while ids.len() < 10 {
        let id = p.next_chunk().await.unwrap();
        p.ack(&id).await;
        ids.push(id);
    }
    let want: Vec<String> = [1, 3, 4, 5, 6, 7, 8, 9, 10, 11]
        .iter()
        .map(|s| format!("chunk-{s}"))
        .collect();
    assert_eq!(ids, want);
    assert_eq!(r.delivered(10).await, [1, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    assert_eq!(r.m.sent_events.get(), 12);
    feeder.await.unwrap();
    r.input_ends().await;
}

/// Accepts one connection on `l`, acks every chunk until EOF; the ids.
async fn serve_all(l: &TcpListener) -> Vec<String> {
    let (io, _) = tokio::time::timeout(Duration::from_secs(30), l.accept())
        .await
        .expect("the sink connects")
        .unwrap();
    let mut p = Peer { io, buf: Vec::new() };
    let mut ids = Vec::new();
    while let Some(id) = p.next_chunk().await {
        p.ack(&id).await;
        ids.push(id);
    }
    ids
}

fn seq_of(id: &str) -> u64 {
    id.trim_start_matches("chunk-").parse().unwrap()
}

#[tokio::test]
async fn round_robin_spreads_chunks_over_the_servers_and_delivers_all() {
    let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ports = [a.local_addr().unwrap().port(), b.local_addr().unwrap().port()];
    let r = rig_with(
        vec![a, b],
        &format!("{}\nload_balance = \"round_robin\"\nmax_in_flight = 2", servers(&ports)),
    )
    .await;
    let feeder = r.feed(0..20);
    let acks = async {
        let seqs = r.delivered(20).await;
        // Everything acked: stop, so the servers see EOF.
        r.stop.cancel();
        seqs
    };
    let (on_a, on_b, seqs) = tokio::join!(serve_all(&r.listeners[0]), serve_all(&r.listeners[1]), acks);
    assert_eq!(seqs, (0..20).collect::<Vec<_>>());
    assert!(!on_a.is_empty() && !on_b.is_empty(), "a: {on_a:?}, b: {on_b:?}");
    let mut all: Vec<u64> = on_a.iter().chain(&on_b).map(|i| seq_of(i)).collect();
    all.sort();
    assert_eq!(all, (0..20).collect::<Vec<_>>(), "each chunk to one server, once");
    for side in [&on_a, &on_b] {
        let s: Vec<u64> = side.iter().map(|i| seq_of(i)).collect();
        assert!(s.windows(2).all(|w| w[0] < w[1]), "order per server: {s:?}");
    }
    assert_eq!(r.m.sent_events.get(), 20);
    feeder.await.unwrap();
}

#[tokio::test]
async fn round_robin_with_a_dead_server_delivers_everything_to_the_other() {
    let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ports = [dead_port().await, live.local_addr().unwrap().port()];
    let r = rig_with(
        vec![live],
        &format!("{}\nload_balance = \"round_robin\"", servers(&ports)),
    )
    .await;
    let feeder = r.feed(0..10);
    // The dead server's task fails over to the live one: two connections there.
    let serve_two = async {
        let (x, y) = tokio::join!(serve_all(&r.listeners[0]), serve_all(&r.listeners[0]));
        [x, y].concat()
    };
    let acks = async {
        let seqs = r.delivered(10).await;
        r.stop.cancel();
        seqs
    };
    let (ids, seqs) = tokio::join!(serve_two, acks);
    assert_eq!(seqs, (0..10).collect::<Vec<_>>());
    let mut got: Vec<u64> = ids.iter().map(|i| seq_of(i)).collect();
    got.sort();
    got.dedup();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    feeder.await.unwrap();
}
