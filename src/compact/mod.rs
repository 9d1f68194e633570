//! Compaction.

pub mod merge;
pub mod plan;
