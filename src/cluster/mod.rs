//! Clustering: Raft (openraft) orders metadata commands across nodes; membership, heartbeats,
//! node-to-node authentication and role-based routing. Nothing outside this module uses openraft.
//!
//! Every node runs one Raft member whose state machine is the node's [`MetaState`]. A node with
//! no seeds (or `raft_bootstrap`) starts a new cluster; the others dial their seeds until the
//! leader adds them as a learner and then as a voter. Metadata changes made on a follower are
//! forwarded to the leader; the caller returns once its own node has applied the change.

mod addresses;
mod failover;
mod health;
mod heartbeats;
mod internal;
mod lease;
mod log_adoption;
mod membership;
mod metrics;
mod network;
pub mod peer_auth;
mod protocol;
mod replication;
mod shared_writers;
mod startup;
mod status;
mod store;
mod submit;
mod switchover;
mod types;

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::Raft;
use tokio::sync::watch;

pub use addresses::api_address;
pub use health::NodeState;
use health::{HealthBook, Thresholds};
pub use lease::LeaseError;
use network::PeerClient;
use peer_auth::PeerAuth;
pub use status::{NodeStatus, RaftStatus};
use store::AppliedState;
pub use switchover::SwitchoverError;
use types::{NodeInfo, RaftId, TypeConfig};

use crate::config::NodeRole;
pub use crate::meta::nodes::{Capability, CompactorLease, WriterAssignment, role_can};
use crate::meta::{Meta, Replicator};

/// Header marking a client request one node forwarded to another; it is never forwarded again.
pub const FORWARDED_HEADER: &str = "x-arc-forwarded-by";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot listen on coordinator address {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("Raft storage in {dir}: {source}")]
    Storage { dir: String, source: std::io::Error },
    #[error("Raft could not start: {0}")]
    Raft(String),
    #[error("node {0} is not a member of this cluster")]
    UnknownNode(String),
    #[error("a node cannot remove itself; ask another node")]
    RemoveSelf,
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    #[error("the cluster refuses this node: {0}")]
    Refused(String),
}

/// Pause between rounds of dialling seeds, and between start-up readiness checks.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// A running cluster member.
pub struct Cluster {
    local: NodeInfo,
    local_id: RaftId,
    cluster_name: String,
    seeds: Vec<String>,
    raft: Raft<TypeConfig>,
    applied: Arc<AppliedState>,
    auth: Arc<PeerAuth>,
    client: PeerClient,
    health: Mutex<HealthBook>,
    thresholds: Thresholds,
    request_timeout: Duration,
    route_retries: u32,
    /// `cluster.shared_storage_mode`, recorded with this node's registration.
    shared_storage: bool,
    /// Where this node's files live, recorded with its registration.
    storage: String,
    /// `cluster.replication_enabled` without shared storage (a reader then streams the writer's
    /// log), recorded with its registration.
    follows_writer: bool,
    /// Why the cluster forbade this node to join, once it has.
    forbidden: Mutex<Option<String>>,
    /// This writer's durable entries, once its WAL is open and replication is enabled.
    wal_feed: std::sync::OnceLock<Arc<crate::wal::Feed>>,
    /// On a reader: its replication, reported in heartbeats.
    replicated: std::sync::OnceLock<Arc<crate::replication::ReplicationStats>>,
    /// Each reader's position in this writer's stream.
    stream_readers: Arc<crate::replication::ReaderPositions>,
    /// A shared-storage writer's flusher and ingester, once it serves the other nodes.
    flusher: std::sync::OnceLock<Arc<crate::flush::Flusher>>,
    ingester: std::sync::OnceLock<Arc<crate::ingest::Ingester>>,
    /// With shared storage: the log this writer writes.
    log: std::sync::OnceLock<String>,
    /// This node's storage, once it serves its files to peers.
    file_storage: std::sync::OnceLock<crate::storage::Storage>,
    /// `cluster.replication_serve_timeout_ms`: longest time one file is served; a copy cut off
    /// by it resumes from where it stopped.
    serve_timeout: Duration,
    /// With failover on: how long a confirmation of the writer's assignment lets it
    /// acknowledge writes.
    lease_duration: Option<Duration>,
    lease: Mutex<lease::Lease>,
    /// An operator is moving the writes elsewhere: this writer acknowledges nothing more.
    stepping_down: std::sync::atomic::AtomicBool,
    /// Set by a graceful leave; held while a heartbeat is out so no ordinary beat overtakes the
    /// leaving one.
    leaving: tokio::sync::Mutex<bool>,
    runtime: tokio::runtime::Handle,
    next_target: AtomicUsize,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    pub fn name(&self) -> &str {
        &self.local.name
    }

    /// What this node is now: its registered role, which a failover changes; the configured
    /// one until it is registered.
    pub fn role(&self) -> NodeRole {
        self.applied
            .state
            .read()
            .unwrap()
            .nodes()
            .get(&self.local.name)
            .map_or(self.local.role, |record| record.role)
    }

    /// Who takes the writes now, under which epoch.
    pub fn writer_assignment(&self) -> WriterAssignment {
        self.applied.state.read().unwrap().nodes().writer().clone()
    }

    /// Who holds the compaction lease now.
    pub fn compactor_lease(&self) -> CompactorLease {
        self.applied
            .state
            .read()
            .unwrap()
            .nodes()
            .compactor()
            .clone()
    }

    /// Whether this node holds the compaction lease (and under which epoch).
    pub fn compacts_under(&self) -> Option<u64> {
        let lease = self.compactor_lease();
        (lease.node.as_deref() == Some(self.local.name.as_str())).then_some(lease.epoch)
    }

    /// Whether this node serves requests needing `capability` itself: what its role can, and
    /// with shared storage a writer also answers queries (from the bucket and its own buffer).
    pub fn serves(&self, capability: Capability) -> bool {
        let role = self.role();
        role_can(role, capability)
            || (self.shared_storage && capability == Capability::Query && role.ingests())
    }

    /// With shared storage, why this writer should get no new writes from a load balancer: it
    /// knows no Raft leader (it is cut off from the majority, or an election runs), so it
    /// cannot register files, or (with `shared_wal`) its lease on its log does not hold.
    pub fn cannot_take_writes(&self) -> Option<String> {
        if !self.shared_storage || !self.role().ingests() {
            return None;
        }
        if self.metrics().current_leader.is_none() {
            let name = &self.local.name;
            return Some(format!(
                "writer {name} knows no Raft leader and cannot register files"
            ));
        }
        self.check_write_lease().err().map(|e| e.to_string())
    }

    /// Whether this node ingests: the assigned writer, or with shared storage any writer.
    pub fn takes_writes(&self) -> bool {
        if self.shared_storage {
            self.role().ingests()
        } else {
            self.writes_under().is_some()
        }
    }

    /// Whether this node is the assigned writer (and under which epoch).
    pub fn writes_under(&self) -> Option<u64> {
        let assignment = self.writer_assignment();
        (assignment.node.as_deref() == Some(self.local.name.as_str())).then_some(assignment.epoch)
    }

    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    /// Metadata whose commands go through Raft, reading the state Raft applies to.
    pub fn meta(self: &Arc<Self>) -> Meta {
        Meta::replicated(
            Arc::clone(&self.applied.state),
            Arc::clone(self) as Arc<dyn Replicator>,
        )
    }

    pub fn http_client(&self) -> &reqwest::Client {
        self.client.http()
    }

    pub(super) fn metrics(&self) -> openraft::RaftMetrics<RaftId, NodeInfo> {
        self.raft.metrics().borrow().clone()
    }

    /// Whether this node leads the Raft group now.
    pub fn is_leader(&self) -> bool {
        self.metrics().current_leader == Some(self.local_id)
    }

    /// Since when this node leads, kept in `since` across periodic checks (a leader's
    /// controllers wait out a lease its predecessor may have granted); `None` while it does not
    /// lead.
    pub(super) fn leading_since(
        &self,
        since: &mut Option<std::time::Instant>,
    ) -> Option<std::time::Instant> {
        if !self.is_leader() {
            *since = None;
            return None;
        }
        Some(*since.get_or_insert_with(std::time::Instant::now))
    }

    /// Returns once this node's leadership is no longer `leading` (never, once Raft stopped).
    pub async fn leadership_changed_from(&self, leading: bool) {
        let mut metrics = self.raft.metrics();
        let raft_stopped = metrics
            .wait_for(|m| (m.current_leader == Some(self.local_id)) != leading)
            .await
            .is_err();
        if raft_stopped {
            std::future::pending::<()>().await;
        }
    }

    pub(super) fn is_voter(&self) -> bool {
        self.metrics()
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == self.local_id)
    }

    pub(super) fn leader(&self) -> Option<NodeInfo> {
        let metrics = self.metrics();
        let leader = metrics.current_leader?;
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned()
    }

    /// Every other member.
    pub(super) fn peers(&self) -> Vec<NodeInfo> {
        self.metrics()
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.local_id)
            .map(|(_, info)| info.clone())
            .collect()
    }

    /// Takes a snapshot every `interval` when entries were applied since the last one, besides
    /// the snapshots openraft takes every `raft_snapshot_threshold` entries.
    pub(super) async fn snapshot_periodically(
        self: Arc<Self>,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let metrics = self.metrics();
            let applied = metrics.last_applied.map(|id| id.index);
            if applied > metrics.snapshot.map(|id| id.index)
                && let Err(err) = self.raft.trigger().snapshot().await
            {
                tracing::warn!(error = %err, "could not start a Raft snapshot");
            }
        }
    }

    /// How long a request to a peer may take (`cluster.route_timeout`).
    pub fn route_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// How many other nodes a forwarded request may be tried on (`cluster.route_retries`).
    pub fn route_retries(&self) -> u32 {
        self.route_retries
    }
}
