//! Reading a group's inputs ahead of the decoder.
//!
//! Why: in Lambda every GET waits 10-30 ms for its first byte; read one at a
//! time, 2,000 inputs spend most of a minute waiting. While one input is
//! decoded, the next ones' GETs (up to [`READ_AHEAD_GETS`]) are in flight and
//! their bodies are buffered, up to [`READ_AHEAD_BYTES`] of stored
//! (compressed) bytes in all. An input bigger than that budget is not
//! buffered: its GET is made when its turn comes and its body is streamed,
//! as before. Inputs come out in the group's order, whatever order their
//! GETs finish in, so the output does not depend on timing.
//!
//! The budget is reserved by an input's listed size before its GET starts
//! and freed when the decoder is done with it; a body longer than its listed
//! size keeps only the reserved bytes buffered and streams the rest.

use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::task::AbortOnDropHandle;

use super::Candidate;
use super::store::{Got, Store};
use crate::process::{FailureKind, ProcessError};

/// GETs in flight ahead of the decoder (an input too big to buffer is got
/// by the decoder when its turn comes, besides these).
pub const READ_AHEAD_GETS: usize = 8;
/// Stored bytes buffered ahead of the decoder.
pub const READ_AHEAD_BYTES: u64 = 32 << 20;

/// One input, read: `got` is `None` when it is gone or was replaced. Hold it
/// until the decoder is done with it: dropping it frees its share of the budget.
pub struct Ahead {
    pub got: Option<Got>,
    _permit: Option<OwnedSemaphorePermit>,
}

enum Slot {
    /// GET started ahead (its body buffered).
    Fetched(AbortOnDropHandle<Result<Ahead, ProcessError>>),
    /// Too big to buffer: GET it when its turn comes.
    Later,
}

/// The inputs of a group, in order, read ahead (see the module doc).
pub struct ReadAhead<S> {
    handle: Handle,
    store: Arc<S>,
    bucket: String,
    rx: mpsc::Receiver<Slot>,
    _producer: AbortOnDropHandle<()>,
}

impl<S: Store> ReadAhead<S> {
    /// Starts reading `inputs` ahead: at most `gets` GETs in flight and
    /// `budget` stored bytes buffered (at most `u32::MAX`).
    pub(super) fn new(
        handle: &Handle,
        store: Arc<S>,
        bucket: &str,
        inputs: Vec<Candidate>,
        gets: usize,
        budget: u64,
    ) -> Self {
        let budget = budget.min(u64::from(u32::MAX));
        let gets = gets.max(1);
        let (tx, rx) = mpsc::channel(gets);
        let sem = Arc::new(Semaphore::new(budget as usize));
        let in_flight = Arc::new(Semaphore::new(gets));
        let (st, b) = (store.clone(), bucket.to_string());
        let producer = handle.spawn(async move {
            for c in inputs {
                let slot = if c.size <= budget {
                    let (Ok(permit), Ok(get)) = (
                        sem.clone().acquire_many_owned(c.size as u32).await,
                        in_flight.clone().acquire_owned().await,
                    ) else {
                        return;
                    };
                    let (st, b) = (st.clone(), b.clone());
                    Slot::Fetched(AbortOnDropHandle::new(tokio::spawn(async move {
                        let r = fetch(st, b, c, permit).await;
                        drop(get);
                        r
                    })))
                } else {
                    Slot::Later
                };
                if tx.send(slot).await.is_err() {
                    return;
                }
            }
        });
        ReadAhead {
            handle: handle.clone(),
            store,
            bucket: bucket.to_string(),
            rx,
            _producer: AbortOnDropHandle::new(producer),
        }
    }

    /// The next input, `c` (the inputs must be asked for in the order given
    /// to [`ReadAhead::new`]). Blocking: call it from a blocking thread.
    pub(super) fn next(&mut self, c: &Candidate) -> Result<Ahead, ProcessError> {
        let internal = |e: String| ProcessError::new(FailureKind::Internal, "read ahead", &self.bucket, &c.key, e);
        match self.handle.block_on(self.rx.recv()) {
            Some(Slot::Fetched(h)) => self
                .handle
                .block_on(h)
                .map_err(|e| internal(format!("the read-ahead task died: {e}")))?,
            Some(Slot::Later) => Ok(Ahead {
                got: self
                    .handle
                    .block_on(self.store.get(&self.bucket, &c.key, Some(&c.etag)))?,
                _permit: None,
            }),
            None => Err(internal("the read-ahead ended early".into())),
        }
    }
}

/// GETs `c` and buffers up to its reserved size of body.
async fn fetch<S: Store>(
    store: Arc<S>,
    bucket: String,
    c: Candidate,
    permit: OwnedSemaphorePermit,
) -> Result<Ahead, ProcessError> {
    let Some(mut got) = store.get(&bucket, &c.key, Some(&c.etag)).await? else {
        return Ok(Ahead {
            got: None,
            _permit: Some(permit),
        });
    };
    let reserved = permit.num_permits() as u64;
    let mut buf = Vec::with_capacity(reserved as usize);
    (&mut got.body)
        .take(reserved)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| ProcessError::new(FailureKind::S3Read, "GetObject (body)", &bucket, &c.key, e.to_string()))?;
    // What is past the listed size (none when the listing was right) streams.
    got.body = Box::new(std::io::Cursor::new(buf).chain(got.body));
    Ok(Ahead {
        got: Some(got),
        _permit: Some(permit),
    })
}
