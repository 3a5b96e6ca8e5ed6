//! Logferry: a log router for containers on AWS.
//!
//! See `ARCHITECTURE.md` at the repository root for the pipeline, the code
//! map and the invariants.

pub mod api;
pub mod buffer;
pub mod check;
pub mod checkpoint;
pub mod confdiag;
pub mod config;
pub mod config_s3;
pub mod dead_letter;
pub mod drain;
pub mod event;
pub mod healthcheck;
pub mod lifecycle;
pub mod memory;
pub mod metrics;
pub mod query;
pub mod sinks;
pub mod sources;
pub mod template;
pub mod timer;
pub mod topology;
pub mod transforms;
pub mod watchdog;
