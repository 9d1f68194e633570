//! Write path, front half: request bodies → Arrow batches per measurement.
//!
//! Decoding is pure and deterministic given the request bytes and the receive time, so the
//! WAL can log the raw body and replay reproduces exactly the rows that were acknowledged.

pub mod batch;
mod ingester;
pub mod line_protocol;
pub mod msgpack;
pub mod names;

pub use batch::MeasurementBatch;
pub use ingester::{
    IngestError, IngestLimits, Ingester, PayloadFormat, WriteRequest, decompress, replay_entry,
    replicate_entry,
};
pub use line_protocol::Precision;

/// Why a request body could not be turned into rows. Every variant is the client's fault (400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("invalid MessagePack payload: {0}")]
    Msgpack(String),
    #[error("No valid records in request")]
    NoValidRecords,
    #[error(
        "measurement '{measurement}': column '{column}' has {found} values, expected {expected}"
    )]
    UnequalColumns {
        measurement: String,
        column: String,
        expected: usize,
        found: usize,
    },
    #[error(
        "invalid measurement name '{0}': must match ^[A-Za-z][A-Za-z0-9_-]*$ and be at most 128 characters"
    )]
    InvalidMeasurement(String),
    #[error("measurement '{measurement}': column '{column}' mixes types {first} and {second}")]
    TypeConflict {
        measurement: String,
        column: String,
        first: &'static str,
        second: &'static str,
    },
    #[error("measurement '{measurement}': invalid time column: {reason}")]
    InvalidTime { measurement: String, reason: String },
}
