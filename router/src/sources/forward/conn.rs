//! One client connection: its task reads frames, answers the handshake,
//! decodes records into batches and answers each chunk once every batch
//! holding its records was delivered.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::auth::{HandshakeError, check_ping, random_hex};
use super::proto::{self, Decoder, Entries, FrameError, FrameScanner, Mode};
use super::{
    ACK_DRAIN_TIMEOUT, AUTH_LOG_EVERY, BATCH_BYTES, BoxRead, BoxWrite, HANDSHAKE_TIMEOUT, Peer, READ_CHUNK,
    SILENT_CLIENT_HINT, Shared, TICK,
};
use crate::event::{Ack, AckToken, Batch, Records};

/// A chunk waiting for its batches.
struct PendingChunk {
    chunk: Vec<u8>,
    /// Batches sent holding its records, not yet settled.
    batches: u32,
    failed: bool,
    /// All its records were decoded (no batch still to come).
    complete: bool,
}

/// Why a connection stops reading.
enum End {
    /// The client closed its side.
    Eof,
    /// The drain after a stop request is over.
    Drained,
    /// A protocol error, the socket failed, or the pipeline is gone.
    Broken,
}

pub(super) struct Conn {
    sh: Arc<Shared>,
    id: u64,
    peer: Peer,
    outputs: Vec<mpsc::Sender<Batch>>,
    reader: BoxRead,
    writer: BoxWrite,
    acks: mpsc::UnboundedReceiver<Ack>,
    buf: Vec<u8>,
    scanner: FrameScanner,
    dec: Decoder,
    inflated: Vec<u8>,
    records: Records,
    tag: Option<Arc<str>>,
    /// Chunks with records in `records`.
    in_batch: Vec<u64>,
    next_seq: u64,
    next_chunk: u64,
    /// Chunks held by each batch in flight.
    batches: HashMap<u64, Vec<u64>>,
    chunks: HashMap<u64, PendingChunk>,
    still_reading: bool,
}

impl Conn {
    pub(super) fn new(
        sh: Arc<Shared>,
        id: u64,
        outputs: Vec<mpsc::Sender<Batch>>,
        reader: BoxRead,
        writer: BoxWrite,
        peer: Peer,
    ) -> Self {
        let (tx, acks) = mpsc::unbounded_channel();
        if let Ok(mut r) = sh.routes.lock() {
            r.insert(id, tx);
        }
        let max_record = sh.max_record;
        Conn {
            sh,
            id,
            peer,
            outputs,
            reader,
            writer,
            acks,
            buf: Vec::with_capacity(READ_CHUNK),
            scanner: FrameScanner::new(4),
            dec: Decoder::new(max_record),
            inflated: Vec::new(),
            records: Records::default(),
            tag: None,
            in_batch: Vec::new(),
            next_seq: 0,
            next_chunk: 0,
            batches: HashMap::new(),
            chunks: HashMap::new(),
            still_reading: true,
        }
    }

    pub(super) async fn serve(mut self) {
        let end = match self.handshake().await {
            Ok(()) => self.read_loop().await,
            Err(e) => {
                // A connection closed before it said anything (a TCP health
                // probe) is no failure.
                if let Some(e) = e {
                    self.refuse_handshake(&e);
                }
                End::Broken
            }
        };
        self.stop_reading();
        if !matches!(end, End::Broken) {
            // Answer what is still pending, while the client listens.
            self.wait_acks().await;
        }
        let _ = self.writer.shutdown().await;
        if let Ok(mut r) = self.sh.routes.lock() {
            r.remove(&self.id);
        }
        tracing::debug!(conn = self.id, "connection closed");
    }

    /// Counts and logs why a connection is closed.
    fn refuse(&self, reason: &'static str) {
        self.sh.m.discarded(reason, 1);
        tracing::warn!(conn = self.id, reason, "closing forward connection");
    }

    /// Counts and logs a failed handshake, naming the client and the cause.
    fn refuse_handshake(&self, e: &HandshakeError) {
        let reason = e.reason();
        self.sh.m.handshake_failure(reason);
        self.sh.m.discarded("auth_failed", 1);
        if self.sh.auth_log_due(&self.peer.host, reason) {
            tracing::warn!(source = %self.sh.m.id, conn = self.id, peer = %self.peer.addr, reason,
                "forward client {} failed the handshake: {e}; closing the connection (repeats from this host \
                 are logged at debug for {}s)", self.peer.addr, AUTH_LOG_EVERY.as_secs());
        } else {
            tracing::debug!(source = %self.sh.m.id, conn = self.id, peer = %self.peer.addr, reason,
                "forward client failed the handshake: {e}");
        }
    }

    fn stop_reading(&mut self) {
        if std::mem::take(&mut self.still_reading) {
            self.sh.reading.fetch_sub(1, Ordering::AcqRel);
        }
        // Closing our senders lets the pipeline flush once every
        // connection and listener has let go.
        self.outputs.clear();
    }

    /// With `shared_key`: HELO, the client's PING, our PONG. `Err(None)`:
    /// the client left without a word.
    async fn handshake(&mut self) -> Result<(), Option<HandshakeError>> {
        let Some(key) = self.sh.shared_key.clone() else {
            return Ok(());
        };
        let nonce = random_hex().map_err(|e| Some(HandshakeError::Nonce(e)))?;
        // A salt asks the client for a username and password; without users
        // it is empty, and a client sends none (the spec's HELO).
        let auth_salt = if self.sh.users.is_empty() {
            String::new()
        } else {
            random_hex().map_err(|e| Some(HandshakeError::Nonce(e)))?
        };
        self.writer
            .write_all(&proto::helo(&nonce, &auth_salt))
            .await
            .map_err(|_| None)?;
        let mut scanner = FrameScanner::new(6);
        let read = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            loop {
                match scanner.scan(&self.buf, 64 * 1024) {
                    Ok(Some(len)) => return Ok(len),
                    Ok(None) => {}
                    Err(_) if proto::looks_like_data(&self.buf) => return Err(Some(HandshakeError::NoPing)),
                    Err(_) => return Err(Some(HandshakeError::Invalid("not a msgpack PING"))),
                }
                self.buf.reserve(4096);
                tokio::select! {
                    r = self.reader.read_buf(&mut self.buf) => match r {
                        Ok(0) | Err(_) if self.buf.is_empty() => return Err(None),
                        Ok(0) | Err(_) if proto::looks_like_data(&self.buf) => {
                            return Err(Some(HandshakeError::NoPing));
                        }
                        Ok(0) | Err(_) => return Err(Some(HandshakeError::Closed)),
                        Ok(_) => {}
                    },
                    _ = self.sh.kill.cancelled() => return Err(None),
                }
            }
        })
        .await;
        let len = match read {
            Ok(r) => r?,
            Err(_) if proto::looks_like_data(&self.buf) => return Err(Some(HandshakeError::NoPing)),
            Err(_) if self.buf.is_empty() => return Err(Some(HandshakeError::Timeout(HANDSHAKE_TIMEOUT))),
            Err(_) => return Err(Some(HandshakeError::Invalid("incomplete PING"))),
        };
        let frame = self.buf.get(..len).unwrap_or_default();
        let verdict = check_ping(
            frame,
            &nonce,
            &auth_salt,
            key.expose(),
            &self.sh.users,
            &self.sh.self_hostname,
        );
        self.buf.drain(..len);
        let reply = match &verdict {
            Ok(digest) => proto::pong(true, "", &self.sh.self_hostname, digest),
            Err(e) => proto::pong(false, e.pong_reason(), "", ""),
        };
        let _ = self.writer.write_all(&reply).await;
        verdict.map(|_| ()).map_err(Some)
    }

    async fn read_loop(&mut self) -> End {
        let mut draining: Option<Instant> = None;
        let mut last_data = Instant::now();
        // A client with a shared key waits for a HELO that a source without
        // one never sends, and neither side says anything: after a while
        // of silence from a new connection, say what it may mean.
        let mut silent_hint = self
            .sh
            .shared_key
            .is_none()
            .then(|| tokio::time::Instant::now() + SILENT_CLIENT_HINT);
        loop {
            if let Err(e) = self.process().await {
                return e;
            }
            if let Some(started) = draining {
                let quiet = last_data.max(started).elapsed() >= self.sh.drain_quiet;
                if quiet || started.elapsed() >= self.sh.drain_read_budget {
                    return End::Drained;
                }
            }
            let wake = draining.map(|_| tokio::time::Instant::now() + TICK);
            self.buf.reserve(READ_CHUNK);
            tokio::select! {
                biased;
                _ = self.sh.kill.cancelled() => return End::Broken,
                Some(ack) = self.acks.recv() => {
                    if self.on_ack(ack).await.is_err() {
                        return End::Broken;
                    }
                }
                _ = self.sh.drain.begun(), if draining.is_none() => {
                    draining = self.sh.drain.started();
                }
                _ = crate::timer::sleep_until(wake), if wake.is_some() => {}
                _ = crate::timer::sleep_until(silent_hint), if silent_hint.is_some() && draining.is_none() => {
                    silent_hint = None;
                    if self.sh.auth_log_due(&self.peer.host, "silent") {
                        tracing::info!(source = %self.sh.m.id, conn = self.id, peer = %self.peer.addr,
                            "forward client {} has sent nothing for {}s since it connected; if it is configured with a \
                             shared key it is waiting for a HELO, which this source sends only with `shared_key` set",
                            self.peer.addr, SILENT_CLIENT_HINT.as_secs());
                    }
                }
                r = self.reader.read_buf(&mut self.buf) => match r {
                    Ok(0) => {
                        if !self.buf.is_empty() {
                            self.refuse(FrameError::Malformed("truncated").reason());
                        }
                        return End::Eof;
                    }
                    Ok(n) => {
                        silent_hint = None;
                        self.sh.m.received_bytes.inc_by(n as u64);
                        last_data = Instant::now();
                    }
                    Err(e) => {
                        tracing::debug!(conn = self.id, error = %e, "read failed");
                        return End::Broken;
                    }
                },
            }
        }
    }

    /// Handles every complete frame in the buffer, then sends what was
    /// decoded.
    async fn process(&mut self) -> Result<(), End> {
        let mut consumed = 0;
        loop {
            let rest = self.buf.get(consumed..).unwrap_or_default();
            match self.scanner.scan(rest, self.sh.max_frame) {
                Ok(Some(len)) => {
                    let buf = std::mem::take(&mut self.buf);
                    let r = self.frame(buf.get(consumed..consumed + len).unwrap_or_default()).await;
                    self.buf = buf;
                    if let Err(e) = r {
                        if let Some(reason) = e {
                            self.refuse(reason.reason());
                        }
                        return Err(End::Broken);
                    }
                    consumed += len;
                }
                Ok(None) => break,
                Err(e) => {
                    self.refuse(e.reason());
                    return Err(End::Broken);
                }
            }
        }
        self.buf.drain(..consumed);
        // One large frame must not leave its buffer behind for the
        // connection's lifetime.
        if self.buf.capacity() > 4 * READ_CHUNK && self.buf.len() < READ_CHUNK {
            self.buf.shrink_to(2 * READ_CHUNK);
        }
        self.send_batch().await.map_err(|_| End::Broken)
    }

    /// One complete frame. `Err(Some)`: refused; `Err(None)`: the pipeline
    /// is gone.
    async fn frame(&mut self, frame: &[u8]) -> Result<(), Option<FrameError>> {
        let f = proto::parse_frame(frame)?;
        if f.signal != 0 {
            // Fluent Bit metrics or traces: not log records. Dropped,
            // counted, and acknowledged so the client does not resend them
            // forever.
            self.sh.m.discarded("unsupported_signal", 1);
            if let Some(r) = f.chunk.clone() {
                let reply = proto::ack_response(frame.get(r).unwrap_or_default());
                self.writer.write_all(&reply).await.map_err(|_| None)?;
            }
            return Ok(());
        }
        let inflated = std::mem::take(&mut self.inflated);
        self.frame_entries(frame, &f, inflated).await
    }

    async fn frame_entries(
        &mut self,
        frame: &[u8],
        f: &proto::Frame,
        mut inflated: Vec<u8>,
    ) -> Result<(), Option<FrameError>> {
        let (bytes, entries): (&[u8], Entries) = match f.mode {
            Mode::Message => (frame, Entries::new(f.entries.clone(), Mode::Message)),
            Mode::Forward => {
                let list = frame.get(f.entries.clone()).unwrap_or_default();
                proto::check_entries(list, Some(f.count))?;
                (frame, Entries::new(f.entries.clone(), Mode::Forward))
            }
            Mode::PackedForward => {
                let payload = frame.get(f.entries.clone()).unwrap_or_default();
                if f.gzip {
                    if let Err(e) = proto::gunzip(payload, self.sh.max_frame, &mut inflated) {
                        self.inflated = inflated;
                        return Err(Some(e));
                    }
                    if let Err(e) = proto::check_entries(&inflated, None) {
                        self.inflated = inflated;
                        return Err(Some(e));
                    }
                    let n = inflated.len();
                    let r = self
                        .decode(frame, f, &inflated, Entries::new(0..n, Mode::PackedForward))
                        .await;
                    inflated.clear();
                    self.inflated = inflated;
                    return r;
                }
                proto::check_entries(payload, None)?;
                (frame, Entries::new(f.entries.clone(), Mode::PackedForward))
            }
        };
        self.inflated = inflated;
        self.decode(frame, f, bytes, entries).await
    }

    /// Decodes the entries (in `bytes`: the frame, or its inflated
    /// payload) of frame `f` and sends them in batches.
    async fn decode(
        &mut self,
        frame: &[u8],
        f: &proto::Frame,
        bytes: &[u8],
        mut entries: Entries,
    ) -> Result<(), Option<FrameError>> {
        // A batch holds records of one tag.
        let tag = String::from_utf8_lossy(frame.get(f.tag.clone()).unwrap_or_default());
        if self.tag.as_deref() != Some(&*tag) {
            self.send_batch().await.map_err(|_| None)?;
            self.tag = Some(Arc::from(&*tag));
        }
        let chunk = f.chunk.clone().map(|r| frame.get(r).unwrap_or_default().to_vec());
        let chunk_id = chunk.map(|chunk| {
            let id = self.next_chunk;
            self.next_chunk += 1;
            self.chunks.insert(
                id,
                PendingChunk {
                    chunk,
                    batches: 0,
                    failed: false,
                    complete: false,
                },
            );
            id
        });
        let now = chrono::Utc::now().timestamp_millis();
        while !entries.done() {
            let before = self.records.len();
            let r = self
                .dec
                .decode_some(bytes, &mut entries, &mut self.records, BATCH_BYTES, now);
            if let Err(e) = r {
                self.count_issues();
                return Err(Some(e));
            }
            if self.records.len() > before
                && let Some(id) = chunk_id
                && self.in_batch.last() != Some(&id)
            {
                self.in_batch.push(id);
            }
            if self.records.buf.len() >= BATCH_BYTES {
                self.send_batch().await.map_err(|_| None)?;
            }
        }
        self.count_issues();
        if let Some(id) = chunk_id
            && let Some(c) = self.chunks.get_mut(&id)
        {
            c.complete = true;
            if c.batches == 0 && !self.in_batch.contains(&id) {
                // Nothing of it is in flight (every record was dropped and
                // counted): answered now.
                self.settle_chunk(id).await.map_err(|_| None)?;
            }
        }
        Ok(())
    }

    fn count_issues(&mut self) {
        let i = std::mem::take(&mut self.dec.issues);
        if i.invalid_utf8 > 0 {
            self.sh.invalid_utf8.inc_by(i.invalid_utf8);
        }
        if i.duplicate_key > 0 {
            self.sh.duplicate_key.inc_by(i.duplicate_key);
        }
        if i.unsupported > 0 {
            self.sh.unsupported_type.inc_by(i.unsupported);
        }
        self.sh.m.discarded("record_too_large", i.too_large);
    }

    /// Sends the records decoded so far as one batch. `Err` when the
    /// pipeline is gone (or a forced stop).
    async fn send_batch(&mut self) -> Result<(), ()> {
        if self.records.is_empty() {
            return Ok(());
        }
        let mut records = std::mem::take(&mut self.records);
        // The next batch likely looks like this one: reserve about as much.
        let len = records.buf.len();
        self.records
            .buf
            .reserve((len + len / 8).min(BATCH_BYTES + BATCH_BYTES / 4));
        // Permits cover what the batch holds, not what it could: a few
        // records from a slow client do not keep a whole batch's buffer.
        if records.buf.capacity() > records.buf.len() + records.buf.len() / 4 + 4096 {
            records.buf.shrink_to_fit();
        }
        records.meta.shrink_to_fit();
        let held = records.buf.capacity() + records.meta.capacity() * std::mem::size_of::<crate::event::RecordMeta>();
        let bytes = held.min(self.sh.memory_limit).max(1);
        let permit = tokio::select! {
            p = self.sh.memory.clone().acquire_many_owned(bytes as u32) => p.map_err(|_| ())?,
            _ = self.sh.kill.cancelled() => return Err(()),
        };
        records.permit = Some(permit);
        let count = records.len() as u64;
        let seq = self.next_seq;
        self.next_seq += 1;
        let chunks = std::mem::take(&mut self.in_batch);
        for id in &chunks {
            if let Some(c) = self.chunks.get_mut(id) {
                c.batches += 1;
            }
        }
        if !chunks.is_empty() {
            self.batches.insert(seq, chunks);
        }
        let tx = self.sh.ack_tx.lock().map(|t| t.clone()).map_err(|_| ())?;
        // From here on the token reports (once) whatever becomes of the batch.
        self.sh.outstanding.fetch_add(1, Ordering::AcqRel);
        let ack = AckToken::with_records(self.id, seq, count as u32, tx);
        let mut batch = Batch::new(records, Some(ack));
        batch.tag = self.tag.clone();
        self.sh.m.unacked_events.inc_by(count as i64);
        self.sh.m.received_events.inc_by(count);
        self.sh.m.sent_events.inc_by(count);
        for tx in &self.outputs {
            let sent = tokio::select! {
                r = tx.send(batch.clone()) => r.is_ok(),
                _ = self.sh.kill.cancelled() => false,
            };
            if !sent {
                // Never delivered: its chunks must not be answered.
                batch.fail();
                return Err(());
            }
        }
        Ok(())
    }

    /// A batch settled: answer the chunks it completes.
    async fn on_ack(&mut self, ack: Ack) -> std::io::Result<()> {
        let Some(ids) = self.batches.remove(&ack.seq) else {
            return Ok(());
        };
        for id in ids {
            let Some(c) = self.chunks.get_mut(&id) else { continue };
            c.batches = c.batches.saturating_sub(1);
            c.failed |= !ack.delivered;
            if c.batches == 0 && c.complete && !self.in_batch.contains(&id) {
                self.settle_chunk(id).await?;
            }
        }
        Ok(())
    }

    /// Answers a chunk whose records are all settled (unless one failed:
    /// then silence makes the client resend).
    async fn settle_chunk(&mut self, id: u64) -> std::io::Result<()> {
        let Some(c) = self.chunks.remove(&id) else {
            return Ok(());
        };
        if c.failed {
            tracing::debug!(
                conn = self.id,
                "a chunk was not delivered; not acknowledged, the client resends it"
            );
            return Ok(());
        }
        self.writer.write_all(&proto::ack_response(&c.chunk)).await
    }

    /// After reading stopped: answer pending chunks until they are settled,
    /// the drain deadline, or the client goes away.
    async fn wait_acks(&mut self) {
        let deadline: tokio::time::Instant = self
            .sh
            .drain
            .deadline()
            .unwrap_or_else(|| std::time::Instant::now() + ACK_DRAIN_TIMEOUT)
            .into();
        while !self.chunks.is_empty() {
            tokio::select! {
                _ = self.sh.kill.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => return,
                a = self.acks.recv() => match a {
                    Some(ack) => if self.on_ack(ack).await.is_err() { return },
                    None => return,
                },
            }
        }
    }
}
