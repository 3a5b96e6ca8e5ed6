//! `global.memory_limit` for data a sink keeps after it let a batch go.
//!
//! Batches carry their share of the limit from the source (a permit in
//! `Records`), but sinks turn them into something else: open objects and
//! their compressors (`s3`, `file`), queued events (CloudWatch Logs), packed
//! records (Firehose). Those bytes must count too, or a slow sink lets the
//! process grow past the limit while the sources still find room to read. A
//! sink holds one [`Charge`] sized to what it buffers; when the limit leaves
//! no room to grow it, the sink sends what it has early (smaller objects,
//! earlier requests) instead of waiting, so a full pipeline never deadlocks
//! on memory the sink itself would free.
//!
//! Why a charge can grow from a batch's own permit ([`Charge::resize_from`]):
//! a sink that copies a batch's records into what it keeps, then drops the
//! batch, moves memory rather than adding it. Taking the batch's permit
//! first means a pipeline whose batches hold the whole limit does not force
//! the sink to close objects it could keep.

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

    /// Bytes of the limit nobody holds right now. Near zero while a source
    /// waits for room: the semaphore hands released bytes to waiters first.
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }

    /// Sets the charge to `bytes`. Shrinking always succeeds; growing takes
    /// what the limit has free right now, never waits, and returns false
    /// (leaving the charge as it was) when there is not enough.
    pub fn resize(&mut self, bytes: usize) -> bool {
        self.resize_from(bytes, None)
    }

    /// Like [`Charge::resize`], but growing takes from `donor` (the permit
    /// of a batch whose bytes the sink now keeps) before the limit's free
    /// bytes. On failure the charge and the donor are left as they were.
    pub fn resize_from(&mut self, bytes: usize, donor: Option<&mut OwnedSemaphorePermit>) -> bool {
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
        let need = bytes - held;
        let from_donor = donor.as_ref().map_or(0, |d| d.num_permits().min(need));
        let Ok(want) = u32::try_from(need - from_donor) else {
            return false;
        };
        let more = if want == 0 {
            None
        } else {
            match self.sem.clone().try_acquire_many_owned(want) {
                Ok(more) => Some(more),
                Err(_) => return false,
            }
        };
        let part = donor.and_then(|d| d.split(from_donor));
        for p in part.into_iter().chain(more) {
            match self.held.as_mut() {
                Some(h) => h.merge(p),
                None => self.held = Some(p),
            }
        }
        true
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

    #[test]
    fn grows_from_the_donor_first_and_leaves_it_alone_on_failure() {
        let sem = Arc::new(Semaphore::new(100));
        let mut batch = sem.clone().try_acquire_many_owned(30).unwrap();
        let mut c = Charge::new(sem.clone());
        assert!(c.resize_from(20, Some(&mut batch)), "all from the donor");
        assert_eq!((c.bytes(), batch.num_permits(), sem.available_permits()), (20, 10, 70));
        assert!(c.resize_from(50, Some(&mut batch)), "the donor's rest, then the limit");
        assert_eq!((c.bytes(), batch.num_permits(), sem.available_permits()), (50, 0, 50));
        let mut other = sem.clone().try_acquire_many_owned(5).unwrap();
        assert!(!c.resize_from(200, Some(&mut other)), "over the limit");
        assert_eq!((c.bytes(), other.num_permits(), sem.available_permits()), (50, 5, 45));
        drop((c, batch, other));
        assert_eq!(sem.available_permits(), 100);
    }
}
