//! The messages nodes exchange on the coordinator port, besides Raft's own, and their paths.

use serde::{Deserialize, Serialize};

use super::types::{CommandOutcome, NodeInfo};
use crate::meta::MetaCommand;
use crate::wal::Lsn;

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct JoinRequest {
    pub(super) node: NodeInfo,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum JoinAnswer {
    Joined,
    NotLeader {
        leader: Option<NodeInfo>,
    },
    /// Not now (the leader could not add it); the node asks again.
    Refused {
        reason: String,
    },
    /// Not ever as configured (the node registry refuses it); the node stops.
    Forbidden {
        reason: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ForwardRequest {
    pub(super) command: MetaCommand,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum LeaderAnswer<T> {
    Done(T),
    NotLeader {
        leader: Option<NodeInfo>,
    },
    /// Refused before anything was proposed.
    Unavailable {
        reason: String,
    },
    /// Proposed, but not known to be committed.
    Unconfirmed {
        reason: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Applied {
    pub(super) index: u64,
    pub(super) outcome: CommandOutcome,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Heartbeat {
    pub(super) leaving: bool,
    /// On a reader: the last entry of the writer's log it holds durably.
    #[serde(default)]
    pub(super) replicated_lsn: Option<Lsn>,
}

/// A reader's answer to the failover controller.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Position {
    /// The last entry of the writer's log this node holds durably; `None` on a non-reader.
    pub(super) replicated_lsn: Option<Lsn>,
}

/// An operator moves the writer: the writer is asked to stop (or go on) acknowledging.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct StepDown {
    pub(super) stop: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct StepDownAnswer {
    /// The last entry of its log that is durable; `None` without a WAL stream.
    pub(super) log_end: Option<Lsn>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RemoveRequest {
    pub(super) name: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Empty {}

pub(super) const JOIN_PATH: &str = "/internal/join";
pub(super) const FORWARD_PATH: &str = "/internal/forward";
pub(super) const BARRIER_PATH: &str = "/internal/barrier";
pub(super) const HEARTBEAT_PATH: &str = "/internal/heartbeat";
pub(super) const REMOVE_PATH: &str = "/internal/remove";
pub(super) const POSITION_PATH: &str = "/internal/replication/position";
pub(super) const STEP_DOWN_PATH: &str = "/internal/writer/step-down";

/// Pattern A: flush the buffered rows of one measurement, or of every measurement of a database
/// (a delete elsewhere must see them).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct FlushRequest {
    pub(super) database: String,
    pub(super) measurement: Option<String>,
}

/// Pattern A: rows a continuous query produced on a node that buffers none, for a writer.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct WriteLines {
    pub(super) database: String,
    /// Line protocol with µs timestamps.
    pub(super) lines: String,
}

/// The answer to a flush or a write: `None` once it is done (durable or registered).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct FlushAnswer {
    pub(super) error: Option<String>,
}

pub(super) const FLUSH_PATH: &str = "/internal/flush";
pub(super) const WRITE_PATH: &str = "/internal/write";
