//! arcdb: a clustered time-series database compatible with Arc.
//!
//! A write flows through the modules in this order:
//!
//! ```text
//! api ─► ingest (decode) ─► wal (durable, LSN) ─► buffer (Arrow, per measurement)
//!                                                    │
//!                                 flush (Parquet) ◄──┘ ─► storage (object_store) ─► meta (manifest)
//! ```
//!
//! A request is acknowledged once its WAL entry is durable. A flush writes Parquet files, registers
//! them in `meta` through a durable command log, and only then lets the WAL release the entries.
//! In a cluster with `replication_enabled`, `replication` streams the writer's durable entries to
//! every reader, which applies them to its own buffers until the registered files hold them;
//! `handover` moves the writes to a promoted reader when the writer is lost.

pub mod adoption;
pub mod api;
pub mod auth;
pub mod buffer;
pub mod cluster;
pub mod compact;
pub mod config;
pub mod continuous;
pub mod crash_hook;
pub mod delete;
pub mod flush;
pub mod frame;
pub mod handover;
pub mod ingest;
pub mod logging;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod query;
pub mod reclaim;
pub mod replication;
pub mod retention;
pub mod schedule;
pub mod storage;
pub mod wal;
