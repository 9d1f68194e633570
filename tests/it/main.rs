//! The integration test binary: real `arcdb` processes on loopback, real files, real S3 (Garage).

mod auth;
mod bad_input;
mod cluster;
mod cluster_harness;
mod compaction;
mod compose;
mod continuous_queries;
mod crash;
mod databases;
mod delete;
mod docker_image;
mod failover;
mod faults;
mod garage;
mod harness;
mod metrics;
mod process;
mod query;
mod replication;
mod retention;
mod s3;
mod shared_storage;
mod wal_recovery;
mod workload;
mod write;
