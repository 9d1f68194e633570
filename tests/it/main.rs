//! The integration test binary: real `arcdb` processes on loopback, real files, real S3 (Garage).

mod bad_input;
mod compaction;
mod crash;
mod garage;
mod harness;
mod query;
mod s3;
mod write;
