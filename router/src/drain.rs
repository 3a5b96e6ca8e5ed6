//! The stop request and its one instant. A signal or an `exit_when`
//! condition starts the drain; the topology's deadline (`force` at
//! `drain_timeout`), each source's read budget and quiet period, and the
//! sources' wait for acks are all measured from the same instant, the
//! first time anyone saw the request, instead of each part noting "now"
//! when it happened to notice.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Drain {
    requested: CancellationToken,
    started: Arc<OnceLock<Instant>>,
    timeout: Duration,
}

impl Drain {
    pub fn new(timeout: Duration) -> Self {
        Drain {
            requested: CancellationToken::new(),
            started: Arc::new(OnceLock::new()),
            timeout,
        }
    }

    /// Requests the drain (again: nothing more happens).
    pub fn begin(&self) {
        self.started.get_or_init(Instant::now);
        self.requested.cancel();
    }

    pub fn is_started(&self) -> bool {
        self.requested.is_cancelled()
    }

    /// When the drain began; `None` before. A request made through the
    /// token alone (see [`Drain::token`]) is dated by its first observer.
    pub fn started(&self) -> Option<Instant> {
        self.is_started().then(|| *self.started.get_or_init(Instant::now))
    }

    /// `drain_timeout` after the start: when the topology cancels `force`.
    pub fn deadline(&self) -> Option<Instant> {
        self.started().map(|t| t + self.timeout)
    }

    /// Resolves when the drain is requested.
    pub async fn begun(&self) {
        self.requested.cancelled().await;
    }

    /// The request as a token, for code that only cancels or waits
    /// (`exit_when`'s watcher).
    pub fn token(&self) -> CancellationToken {
        self.requested.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_observer_sees_one_instant() {
        let d = Drain::new(Duration::from_secs(8));
        assert_eq!(d.started(), None);
        assert_eq!(d.deadline(), None);
        let other = d.clone();
        // Cancelled through the token: the first observer dates it.
        d.token().cancel();
        let t = other.started().expect("started");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(d.started(), Some(t));
        assert_eq!(d.deadline(), Some(t + Duration::from_secs(8)));
        d.begin();
        assert_eq!(other.started(), Some(t), "a second request moves nothing");
    }
}
