//! A deadline that may not be set, for `tokio::select!` arms: the loops
//! that wait for input *or* a timeout (a join's flush, a drain's give-up,
//! a connection's silence hint) have no timeout while nothing is pending.

/// Sleeps until `at`; never returns when there is no deadline.
pub async fn sleep_until(at: Option<impl Into<tokio::time::Instant>>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
