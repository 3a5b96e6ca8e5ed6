//! The Fluent forward source: a server for the forward protocol v1 that the
//! Docker `fluentd`/`awsfirelens` log drivers, Fluent Bit and Fluentd speak.

pub mod config;

pub use config::ForwardSourceConfig;

use super::file::{SourceContext, SourceError};

/// Starts the source. The server itself lands in the next commit; until
/// then a forward source validates but does not start.
pub fn spawn(
    _cfg: ForwardSourceConfig,
    _cx: SourceContext,
) -> std::io::Result<std::thread::JoinHandle<Result<(), SourceError>>> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "the forward source is not implemented yet",
    ))
}
