//! `global.memory_limit` for data a sink keeps after it let a batch go.
//!
//! Batches carry their share of the limit from the source (a permit in
//! `Records`), but sinks turn them into something else: compressed object
//! buffers (S3), queued events (CloudWatch Logs), packed records (Firehose).
//! Those bytes must count too, or a slow sink lets the process grow past the
//! limit while the sources still find room to read. A sink holds one
//! [`Charge`] sized to what it buffers; when the limit leaves no room to grow
//! it, the sink sends what it has early (smaller objects, earlier requests)
//! instead of waiting, so a full pipeline never deadlocks on memory the
//! sink itself would free.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of the memory limit held by one sink.
#[derive(Debug)]
pub struct Charge {
    sem: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
}

impl Charge {
    pub fn new(sem: Arc<Semaphore>) -> Self {
        Charge { sem, held: None }
    }

    /// An unlimited charge, for tests and tools.
    pub fn unlimited() -> Self {
        Charge::new(Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)))
    }

    pub fn bytes(&self) -> usize {
        self.held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Sets the charge to `bytes`. Shrinking always succeeds; growing takes
    /// what the limit has free right now, never waits, and returns false
    /// (leaving the charge as it was) when there is not enough.
    pub fn resize(&mut self, bytes: usize) -> bool {
        let held = self.bytes();
        if bytes < held {
            if let Some(p) = self.held.as_mut() {
                drop(p.split(held - bytes));
            }
            if bytes == 0 {
                self.held = None;
            }
            return true;
        }
        if bytes == held {
            return true;
        }
        let Ok(want) = u32::try_from(bytes - held) else {
            return false;
        };
        match self.sem.clone().try_acquire_many_owned(want) {
            Ok(more) => {
                match self.held.as_mut() {
                    Some(p) => p.merge(more),
                    None => self.held = Some(more),
                }
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_within_the_limit_and_gives_back() {
        let sem = Arc::new(Semaphore::new(100));
        let mut c = Charge::new(sem.clone());
        assert!(c.resize(60));
        assert_eq!(sem.available_permits(), 40);
        assert!(!c.resize(120), "over the limit");
        assert_eq!(c.bytes(), 60);
        assert!(c.resize(100));
        assert_eq!(sem.available_permits(), 0);
        assert!(c.resize(10));
        assert_eq!(sem.available_permits(), 90);
        assert!(c.resize(0));
        assert_eq!(sem.available_permits(), 100);
        drop(c);
        assert_eq!(sem.available_permits(), 100);
    }
}
