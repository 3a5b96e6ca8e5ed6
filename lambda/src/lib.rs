//! The Logferry indexer: one index document per log object in S3, so that
//! `logferry query` opens only the objects that can match.
//!
//! Layout: [`index`] reads a stored object (any `Read`) into statistics
//! ([`doc::IndexDoc`]); [`fields`] is how a record's fields and tokens are seen,
//! shared with `logferry query`; [`bloom`] the token filter and its stable
//! format; [`config`] the environment variables; [`process`] one S3 object end
//! to end (GetObject, index, PutObject or quarantine). With the `runtime`
//! feature: [`trigger`] turns S3, SQS-wrapped and EventBridge events into
//! object references, [`handler`] runs one invocation.
//!
//! Invariant: one bad object never fails an invocation; only errors that a
//! retry can fix (S3 unreachable, throttling) are reported as failures.

pub mod bloom;
#[cfg(feature = "parquet")]
pub mod compact;
#[cfg(feature = "parquet-read")]
pub mod compacted;
pub mod config;
pub mod doc;
pub mod emf;
pub mod fields;
pub mod index;
pub mod process;

#[cfg(feature = "runtime")]
pub mod handler;
#[cfg(feature = "runtime")]
pub mod trigger;
