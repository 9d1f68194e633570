//! Clustering: Raft (openraft) orders metadata commands across nodes; membership, heartbeats,
//! node-to-node authentication and role-based routing. Nothing outside this module uses openraft.
//!
//! Every node runs one Raft member whose state machine is the node's [`MetaState`]. A node with
//! no seeds (or `raft_bootstrap`) starts a new cluster; the others dial their seeds until the
//! leader adds them as a learner and then as a voter. Metadata changes made on a follower are
//! forwarded to the leader; the caller returns once its own node has applied the change.

mod health;
mod internal;
mod network;
pub mod peer_auth;
mod store;
mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use health::NodeState;
use health::{HealthBook, Thresholds, node_state};
use network::{PeerClient, PeerError, RaftPeers};
use peer_auth::PeerAuth;
use store::{AppliedState, LogStore, StateMachine};
use types::{CommandOutcome, NodeInfo, RaftId, TypeConfig, raft_id};

use crate::config::{ClusterConfig, NodeRole};
use crate::meta::nodes::NodeRecord;
pub use crate::meta::nodes::{Capability, role_can};
use crate::meta::{Meta, MetaCommand, MetaError, Replicator};

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

/// A member as the cluster API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub id: String,
    pub role: NodeRole,
    pub state: NodeState,
    pub address: String,
    pub api_address: String,
    pub last_heartbeat: Option<String>,
    pub is_leader: bool,
    pub is_local: bool,
}

/// Raft's view from this node.
#[derive(Debug, Clone, Serialize)]
pub struct RaftStatus {
    pub state: String,
    pub term: u64,
    pub leader_id: Option<String>,
    pub leader_addr: Option<String>,
    pub is_leader: bool,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub voters: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct JoinRequest {
    node: NodeInfo,
}

#[derive(Debug, Serialize, Deserialize)]
enum JoinAnswer {
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
struct ForwardRequest {
    command: MetaCommand,
}

#[derive(Debug, Serialize, Deserialize)]
enum LeaderAnswer<T> {
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
struct Applied {
    index: u64,
    outcome: CommandOutcome,
}

#[derive(Debug, Serialize, Deserialize)]
struct Heartbeat {
    leaving: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct RemoveRequest {
    name: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Empty {}

const JOIN_PATH: &str = "/internal/join";
const FORWARD_PATH: &str = "/internal/forward";
const BARRIER_PATH: &str = "/internal/barrier";
const HEARTBEAT_PATH: &str = "/internal/heartbeat";
const REMOVE_PATH: &str = "/internal/remove";

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
    /// Why the cluster forbade this node to join, once it has.
    forbidden: Mutex<Option<String>>,
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

/// `<hostname>-<pid>`, Arc's default node name.
fn default_node_name() -> String {
    format!("{}-{}", host_name(), std::process::id())
}

/// The IP a `[host]:port` listen address names, unless it is empty or unspecified.
fn specific_ip(addr: &str) -> Option<IpAddr> {
    let (host, _) = addr.rsplit_once(':')?;
    let ip: IpAddr = host.trim_matches(['[', ']']).parse().ok()?;
    (!ip.is_unspecified()).then_some(ip)
}

/// The coordinator address peers dial: `advertise_addr`, else `coordinator_addr` when it names
/// a host, else this machine's host name with the coordinator port (`:9000` in the seeds).
fn advertised_coordinator(config: &ClusterConfig, host_name: &str) -> String {
    if !config.advertise_addr.is_empty() {
        return config.advertise_addr.clone();
    }
    let Some((host, port)) = config.coordinator_addr.rsplit_once(':') else {
        return config.coordinator_addr.clone();
    };
    let ip = host.trim_matches(['[', ']']).parse::<IpAddr>().ok();
    if host.is_empty() || ip.is_some_and(|ip| ip.is_unspecified()) {
        format!("{host_name}:{port}")
    } else {
        config.coordinator_addr.clone()
    }
}

/// The HTTP API address peers forward client requests to: `api_advertise_addr`, else the bound
/// address when it names an interface, else the host peers reach the coordinator port on, with
/// the API port.
pub fn api_address(config: &ClusterConfig, bound: std::net::SocketAddr) -> String {
    if !config.api_advertise_addr.is_empty() {
        return config.api_advertise_addr.clone();
    }
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let coordinator = advertised_coordinator(config, &host_name());
    let host = coordinator
        .rsplit_once(':')
        .map_or(coordinator.as_str(), |(host, _)| host);
    format!("{host}:{}", bound.port())
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

fn listen_addr(addr: &str) -> String {
    match addr.rsplit_once(':') {
        Some(("", port)) => format!("0.0.0.0:{port}"),
        _ => addr.to_owned(),
    }
}

impl Cluster {
    /// Starts this node's Raft member and its coordinator port, joins the cluster, and returns
    /// once this node is a voter that has caught up with the leader (or `stop` fires).
    pub async fn start(
        config: &ClusterConfig,
        api_addr: String,
        stop: watch::Receiver<bool>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let name = if config.node_id.is_empty() {
            default_node_name()
        } else {
            config.node_id.clone()
        };
        let local = NodeInfo {
            name: name.clone(),
            role: config.role,
            coordinator_addr: advertised_coordinator(config, &host_name()),
            api_addr,
        };
        let listener = tokio::net::TcpListener::bind(listen_addr(&config.coordinator_addr))
            .await
            .map_err(|source| ClusterError::Bind {
                addr: config.coordinator_addr.clone(),
                source,
            })?;

        let dir = Path::new(&config.raft_data_dir);
        let storage_err = |source| ClusterError::Storage {
            dir: config.raft_data_dir.clone(),
            source,
        };
        let applied = AppliedState::new();
        let log = LogStore::open(&dir.join("log")).map_err(storage_err)?;
        let machine =
            StateMachine::open(&dir.join("state"), Arc::clone(&applied)).map_err(storage_err)?;

        let auth = Arc::new(PeerAuth::new(
            &config.shared_secret,
            &config.cluster_name,
            &name,
        ));
        let client = PeerClient::new(Arc::clone(&auth), specific_ip(&config.coordinator_addr));
        // A follower that heard a leader waits openraft's leader lease (election_timeout_max)
        // plus a random election timeout before it stands: with these bounds an election starts
        // 1.25 to 1.5 raft_election_timeouts after the leader went quiet.
        let election_timeout_min = (config.raft_election_timeout / 2).max(2);
        let raft_config = openraft::Config {
            cluster_name: config.cluster_name.clone(),
            heartbeat_interval: (config.raft_heartbeat_timeout / 5)
                .clamp(1, election_timeout_min - 1),
            election_timeout_min,
            election_timeout_max: (config.raft_election_timeout * 3 / 4)
                .max(election_timeout_min + 1),
            install_snapshot_timeout: config.route_timeout.max(1_000),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.raft_snapshot_threshold.max(1)),
            // Entries kept behind a snapshot let a briefly absent member catch up from the log.
            max_in_snapshot_log_to_keep: config.raft_snapshot_threshold.min(1_000),
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let local_id = raft_id(&name);
        let raft = Raft::new(
            local_id,
            Arc::new(raft_config),
            RaftPeers {
                client: client.clone(),
            },
            log,
            machine,
        )
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))?;

        let cluster = Arc::new(Cluster {
            local,
            local_id,
            cluster_name: config.cluster_name.clone(),
            seeds: config.seeds.clone(),
            raft,
            applied,
            auth,
            client,
            health: Mutex::new(HealthBook::new(Instant::now())),
            thresholds: Thresholds {
                heartbeat_interval: Duration::from_secs(config.heartbeat_interval),
                unhealthy_after: config.unhealthy_threshold,
            },
            request_timeout: Duration::from_millis(config.route_timeout),
            route_retries: config.route_retries,
            shared_storage: config.shared_storage_mode,
            forbidden: Mutex::new(None),
            runtime: tokio::runtime::Handle::current(),
            next_target: AtomicUsize::new(0),
        });
        tokio::spawn(internal::serve(
            Arc::clone(&cluster),
            listener,
            stop.clone(),
        ));

        let initialized = cluster
            .raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        if !initialized && (config.seeds.is_empty() || config.raft_bootstrap) {
            let members = BTreeMap::from([(local_id, cluster.local.clone())]);
            cluster
                .raft
                .initialize(members)
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?;
            tracing::info!(node = %cluster.local, cluster = %cluster.cluster_name, "started a new cluster");
        }
        tokio::spawn(Arc::clone(&cluster).join_until_member(stop.clone()));
        tokio::spawn(Arc::clone(&cluster).send_heartbeats(stop.clone()));
        tokio::spawn(Arc::clone(&cluster).snapshot_periodically(
            Duration::from_secs(config.raft_snapshot_interval.max(1)),
            stop.clone(),
        ));
        cluster.wait_until_caught_up(stop.clone()).await?;
        cluster.register_self(stop).await?;
        Ok(cluster)
    }

    fn record(&self, node: &NodeInfo) -> NodeRecord {
        NodeRecord {
            role: node.role,
            coordinator_addr: node.coordinator_addr.clone(),
            api_addr: node.api_addr.clone(),
            shared_storage: self.shared_storage,
        }
    }

    /// Records this node's role and addresses in the replicated registry (a joining node was
    /// registered when it was admitted; the first node and a restarted member are not), or
    /// fails when the registry refuses them, e.g. a member restarted with another role.
    async fn register_self(&self, mut stop: watch::Receiver<bool>) -> Result<(), ClusterError> {
        let command = MetaCommand::RegisterNode {
            name: self.local.name.clone(),
            node: self.record(&self.local),
        };
        loop {
            if self.applied.state.read().unwrap().reflects(&command) {
                return Ok(());
            }
            match self.submit(command.clone()).await {
                Ok(()) => return Ok(()),
                Err(MetaError::Rejected(refusal)) => {
                    return Err(ClusterError::Refused(refusal.to_string()));
                }
                Err(err) => tracing::warn!(error = %err, "could not register this node yet"),
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY_PAUSE) => {}
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.local.name
    }

    pub fn role(&self) -> NodeRole {
        self.local.role
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

    fn metrics(&self) -> openraft::RaftMetrics<RaftId, NodeInfo> {
        self.raft.metrics().borrow().clone()
    }

    fn is_leader(&self) -> bool {
        self.metrics().current_leader == Some(self.local_id)
    }

    fn is_voter(&self) -> bool {
        self.metrics()
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == self.local_id)
    }

    fn leader(&self) -> Option<NodeInfo> {
        let metrics = self.metrics();
        let leader = metrics.current_leader?;
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned()
    }

    /// Every other member.
    fn peers(&self) -> Vec<NodeInfo> {
        self.metrics()
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.local_id)
            .map(|(_, info)| info.clone())
            .collect()
    }

    async fn wait_until_caught_up(
        &self,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), ClusterError> {
        loop {
            if let Some(reason) = self.forbidden.lock().unwrap().clone() {
                return Err(ClusterError::Refused(reason));
            }
            if self.is_voter() && self.catch_up().await.is_ok() {
                tracing::info!(node = %self.local, "cluster member caught up");
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY_PAUSE) => {}
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
        }
    }

    /// Dials the seeds (and known members) until the leader has made this node a voter.
    async fn join_until_member(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let request = JoinRequest {
            node: self.local.clone(),
        };
        while !self.is_voter() {
            let mut targets: Vec<String> = self.seeds.clone();
            targets.extend(self.peers().into_iter().map(|p| p.coordinator_addr));
            targets.retain(|addr| *addr != self.local.coordinator_addr);
            targets.sort();
            targets.dedup();
            for mut addr in targets {
                // A non-leader names the leader; follow that hint once.
                for _ in 0..2 {
                    let answer = self
                        .client
                        .call::<_, JoinAnswer>(&addr, JOIN_PATH, &request, Duration::from_secs(30))
                        .await;
                    match answer {
                        Ok(JoinAnswer::Joined) => break,
                        Ok(JoinAnswer::NotLeader {
                            leader: Some(leader),
                        }) => addr = leader.coordinator_addr,
                        Ok(JoinAnswer::NotLeader { leader: None }) => break,
                        Ok(JoinAnswer::Refused { reason }) => {
                            tracing::warn!(seed = %addr, %reason, "join refused");
                            break;
                        }
                        Ok(JoinAnswer::Forbidden { reason }) => {
                            tracing::error!(seed = %addr, %reason, "the cluster forbids this node to join");
                            *self.forbidden.lock().unwrap() = Some(reason);
                            return;
                        }
                        Err(err) => {
                            tracing::warn!(seed = %addr, error = %err, "join attempt failed");
                            break;
                        }
                    }
                }
                if self.is_voter() {
                    break;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY_PAUSE) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    async fn send_heartbeats(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let interval = self.thresholds.heartbeat_interval;
        loop {
            {
                let mut health = self.health.lock().unwrap();
                for peer in self.peers() {
                    health.note_member(&peer.name, Instant::now());
                }
            }
            self.beat(false, interval).await;
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Takes a snapshot every `interval` when entries were applied since the last one, besides
    /// the snapshots openraft takes every `raft_snapshot_threshold` entries.
    async fn snapshot_periodically(
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

    async fn beat(&self, leaving: bool, timeout: Duration) {
        let beat = Heartbeat { leaving };
        let calls = self.peers().into_iter().map(|peer| {
            let beat = &beat;
            async move {
                let answer: Result<Empty, PeerError> = self
                    .client
                    .call(&peer.coordinator_addr, HEARTBEAT_PATH, beat, timeout)
                    .await;
                if let Err(err) = answer {
                    tracing::debug!(peer = %peer.name, error = %err, "heartbeat not delivered");
                }
            }
        });
        futures::future::join_all(calls).await;
    }

    /// Graceful leave: tells the peers this node is going away (they show it as leaving rather
    /// than dead; it stays a member and is healthy again when it comes back), then stops Raft.
    pub async fn leave(&self) {
        self.beat(true, Duration::from_secs(1)).await;
        if let Err(err) = self.raft.shutdown().await {
            tracing::warn!(error = %err, "Raft did not shut down cleanly");
        }
    }

    fn record_heartbeat(&self, peer: &str, leaving: bool) {
        self.health
            .lock()
            .unwrap()
            .record_heartbeat(peer, leaving, Instant::now());
    }

    /// Proposes a command on this node, which must be the leader.
    async fn write_as_leader(
        &self,
        command: MetaCommand,
        timeout: Duration,
    ) -> LeaderAnswer<Applied> {
        match tokio::time::timeout(timeout, self.raft.client_write(command)).await {
            Err(_) => LeaderAnswer::Unconfirmed {
                reason: "no quorum confirmed the change in time".into(),
            },
            Ok(Ok(response)) => LeaderAnswer::Done(Applied {
                index: response.log_id.index,
                outcome: response.data,
            }),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(hint)))) => {
                LeaderAnswer::NotLeader {
                    leader: hint.leader_node,
                }
            }
            // Raft on this node has stopped: asking again cannot help, and callers that cannot
            // give up must restart, as after a failed log sync.
            Ok(Err(RaftError::Fatal(fatal))) => LeaderAnswer::Unconfirmed {
                reason: format!("Raft has stopped on this node: {fatal}"),
            },
            Ok(Err(err)) => LeaderAnswer::Unavailable {
                reason: err.to_string(),
            },
        }
    }

    /// Runs `local` if this node leads, else asks the leader at `path`.
    async fn on_leader<Req: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        request: &Req,
        timeout: Duration,
        local: impl AsyncFnOnce() -> LeaderAnswer<T>,
    ) -> LeaderAnswer<T> {
        if self.is_leader() {
            return local().await;
        }
        let Some(leader) = self.leader() else {
            return LeaderAnswer::Unavailable {
                reason: "no leader is known (this node may be cut off from the majority)".into(),
            };
        };
        match self
            .client
            .call(&leader.coordinator_addr, path, request, timeout)
            .await
        {
            Ok(answer) => answer,
            Err(err @ (PeerError::NotConnected { .. } | PeerError::Refused { .. })) => {
                LeaderAnswer::Unavailable {
                    reason: err.to_string(),
                }
            }
            Err(err @ PeerError::Unreachable { .. }) => LeaderAnswer::Unconfirmed {
                reason: err.to_string(),
            },
        }
    }

    /// Has the leader apply the command, asking again while no leader takes it (an election),
    /// then waits until this node has applied it too; all within `route_timeout`, so a request
    /// made during a partition is answered rather than left waiting for a quorum.
    async fn submit(&self, command: MetaCommand) -> Result<(), MetaError> {
        let deadline = Instant::now() + self.request_timeout;
        let request = ForwardRequest { command };
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let answer = self
                .on_leader(FORWARD_PATH, &request, remaining, || {
                    self.write_as_leader(request.command.clone(), remaining)
                })
                .await;
            let refused = match answer {
                LeaderAnswer::Done(Applied { index, outcome }) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    self.wait_applied(index, remaining).await?;
                    return outcome.map_err(MetaError::Rejected);
                }
                LeaderAnswer::Unconfirmed { reason } => return Err(MetaError::Unconfirmed(reason)),
                LeaderAnswer::NotLeader { .. } => "leadership is changing".to_owned(),
                LeaderAnswer::Unavailable { reason } => reason,
            };
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(MetaError::Unavailable(refused));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), MetaError> {
        let mut applied = self.applied.applied_index.subscribe();
        match tokio::time::timeout(timeout, applied.wait_for(|i| *i >= index)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(MetaError::Unconfirmed(format!(
                "committed at index {index} but not applied on this node in time"
            ))),
        }
    }

    /// The leader's commit index, confirmed by a quorum.
    async fn read_index_as_leader(&self) -> LeaderAnswer<u64> {
        match tokio::time::timeout(self.request_timeout, self.raft.ensure_linearizable()).await {
            Ok(Ok(read)) => LeaderAnswer::Done(read.map_or(0, |id| id.index)),
            Ok(Err(err)) => LeaderAnswer::Unavailable {
                reason: err.to_string(),
            },
            Err(_) => LeaderAnswer::Unavailable {
                reason: "no quorum answered in time".into(),
            },
        }
    }

    /// Waits until this node has applied everything the leader had committed when asked.
    async fn catch_up(&self) -> Result<(), MetaError> {
        match self
            .on_leader(BARRIER_PATH, &Empty {}, self.request_timeout, || {
                self.read_index_as_leader()
            })
            .await
        {
            LeaderAnswer::Done(index) => self.wait_applied(index, self.request_timeout).await,
            _ => Err(MetaError::Unavailable("leader not reachable".into())),
        }
    }

    /// Adds a joining node as a learner (it receives the log), then as a voter.
    async fn admit(&self, node: NodeInfo) -> JoinAnswer {
        let id = raft_id(&node.name);
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        if let Some(existing) = membership.get_node(&id)
            && existing.name != node.name
        {
            return JoinAnswer::Refused {
                reason: format!("node id collides with member {}", existing.name),
            };
        }
        // Registered before it becomes a learner, through the log: of two writers joining at
        // once, the second registration applied is refused.
        let registration = MetaCommand::RegisterNode {
            name: node.name.clone(),
            node: self.record(&node),
        };
        if !self.applied.state.read().unwrap().reflects(&registration) {
            match self
                .write_as_leader(registration, self.request_timeout)
                .await
            {
                LeaderAnswer::Done(Applied {
                    outcome: Err(refusal),
                    ..
                }) => {
                    tracing::warn!(node = %node, reason = %refusal, "join forbidden");
                    return JoinAnswer::Forbidden {
                        reason: refusal.to_string(),
                    };
                }
                LeaderAnswer::Done(_) => {}
                LeaderAnswer::NotLeader { leader } => return JoinAnswer::NotLeader { leader },
                LeaderAnswer::Unavailable { reason } | LeaderAnswer::Unconfirmed { reason } => {
                    return JoinAnswer::Refused { reason };
                }
            }
        }
        let is_voter = membership.voter_ids().any(|v| v == id);
        if is_voter {
            return JoinAnswer::Joined;
        }
        let not_leader = |leader: Option<NodeInfo>| JoinAnswer::NotLeader { leader };
        match self.raft.add_learner(id, node.clone(), true).await {
            Ok(_) => {}
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(hint))) => {
                return not_leader(hint.leader_node);
            }
            Err(err) => {
                return JoinAnswer::Refused {
                    reason: err.to_string(),
                };
            }
        }
        let voters = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
        match self.raft.change_membership(voters, false).await {
            Ok(_) => {
                tracing::info!(node = %node, "node joined the cluster as a voter");
                JoinAnswer::Joined
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(hint))) => {
                not_leader(hint.leader_node)
            }
            Err(err) => JoinAnswer::Refused {
                reason: err.to_string(),
            },
        }
    }

    async fn remove_as_leader(&self, name: &str) -> LeaderAnswer<bool> {
        let id = raft_id(name);
        let members = self.metrics().membership_config.membership().clone();
        if members.get_node(&id).is_none_or(|n| n.name != name) {
            return LeaderAnswer::Done(false);
        }
        // The registry first: a retry after a failed membership change repeats both steps.
        let forget = MetaCommand::RemoveNode {
            name: name.to_owned(),
        };
        match self.write_as_leader(forget, self.request_timeout).await {
            LeaderAnswer::Done(_) => {}
            LeaderAnswer::NotLeader { leader } => return LeaderAnswer::NotLeader { leader },
            LeaderAnswer::Unavailable { reason } => return LeaderAnswer::Unavailable { reason },
            LeaderAnswer::Unconfirmed { reason } => return LeaderAnswer::Unconfirmed { reason },
        }
        let change = if members.voter_ids().any(|v| v == id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        match self.raft.change_membership(change, false).await {
            Ok(_) => {
                tracing::info!(node = %name, "node removed from the cluster");
                LeaderAnswer::Done(true)
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(hint))) => {
                LeaderAnswer::NotLeader {
                    leader: hint.leader_node,
                }
            }
            Err(err) => LeaderAnswer::Unavailable {
                reason: err.to_string(),
            },
        }
    }

    /// Removes a member (`DELETE /api/v1/cluster/nodes/{id}`).
    pub async fn remove_node(&self, name: &str) -> Result<(), ClusterError> {
        if name == self.local.name {
            return Err(ClusterError::RemoveSelf);
        }
        if !self.nodes().iter().any(|n| n.id == name) {
            return Err(ClusterError::UnknownNode(name.to_owned()));
        }
        let request = RemoveRequest {
            name: name.to_owned(),
        };
        match self
            .on_leader(REMOVE_PATH, &request, self.request_timeout, || {
                self.remove_as_leader(name)
            })
            .await
        {
            LeaderAnswer::Done(true) => Ok(()),
            LeaderAnswer::Done(false) => Err(ClusterError::UnknownNode(name.to_owned())),
            LeaderAnswer::NotLeader { .. } => {
                Err(ClusterError::Unavailable("leadership is changing".into()))
            }
            LeaderAnswer::Unavailable { reason } | LeaderAnswer::Unconfirmed { reason } => {
                Err(ClusterError::Unavailable(reason))
            }
        }
    }

    /// Every member with its state as this node sees it.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<RaftId> = membership.voter_ids().collect();
        let health = self.health.lock().unwrap();
        let state = self.applied.state.read().unwrap();
        let registry = state.nodes();
        let now = Instant::now();
        let mut nodes: Vec<NodeStatus> = membership
            .nodes()
            .map(|(id, info)| {
                let is_local = *id == self.local_id;
                let is_voter = voters.contains(id);
                let (state, last_heartbeat) = if is_local {
                    let state = if is_voter {
                        NodeState::Healthy
                    } else {
                        NodeState::Joining
                    };
                    (state, Some(chrono::Utc::now()))
                } else {
                    let peer = health.peer(&info.name, now);
                    let state =
                        node_state(peer.silent_for, is_voter, peer.leaving, self.thresholds);
                    (state, peer.last_heartbeat)
                };
                // The registry says what a node is and where it serves now; membership data
                // only what it joined as.
                let (role, api_address) = registry
                    .get(&info.name)
                    .map_or((info.role, &info.api_addr), |r| (r.role, &r.api_addr));
                NodeStatus {
                    id: info.name.clone(),
                    role,
                    state,
                    address: info.coordinator_addr.clone(),
                    api_address: api_address.clone(),
                    last_heartbeat: last_heartbeat
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                    is_leader: metrics.current_leader == Some(*id),
                    is_local,
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        nodes
    }

    pub fn raft_status(&self) -> RaftStatus {
        let metrics = self.metrics();
        let leader = self.leader();
        RaftStatus {
            state: match metrics.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
            .to_owned(),
            term: metrics.current_term,
            is_leader: metrics.current_leader == Some(self.local_id),
            leader_id: leader.as_ref().map(|l| l.name.clone()),
            leader_addr: leader.map(|l| l.coordinator_addr),
            last_log_index: metrics.last_log_index,
            last_applied_index: metrics.last_applied.map(|id| id.index),
            voters: metrics.membership_config.membership().voter_ids().count(),
        }
    }

    /// The healthy other members whose role can serve `capability`, starting with the next in
    /// turn so requests spread over them.
    pub fn nodes_for(&self, capability: Capability) -> Vec<NodeStatus> {
        let mut candidates: Vec<NodeStatus> = self
            .nodes()
            .into_iter()
            .filter(|n| {
                !n.is_local && n.state == NodeState::Healthy && role_can(n.role, capability)
            })
            .collect();
        if !candidates.is_empty() {
            let turn = self.next_target.fetch_add(1, Ordering::Relaxed);
            let start = turn % candidates.len();
            candidates.rotate_left(start);
        }
        candidates
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

impl Replicator for Cluster {
    fn replicate(&self, command: MetaCommand) -> Result<(), MetaError> {
        self.runtime.block_on(self.submit(command))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_and_source_addresses_come_from_the_coordinator_address() {
        assert_eq!(listen_addr(":9000"), "0.0.0.0:9000");
        assert_eq!(listen_addr("127.0.0.2:9000"), "127.0.0.2:9000");
        assert_eq!(specific_ip("127.0.0.2:9000"), Some([127, 0, 0, 2].into()));
        assert_eq!(specific_ip(":9000"), None);
        assert_eq!(specific_ip("0.0.0.0:9000"), None);
        assert_eq!(specific_ip("[::1]:9000"), Some("::1".parse().unwrap()));
    }

    #[test]
    fn peers_are_told_a_dialable_coordinator_address() {
        let config = |coordinator: &str, advertise: &str| ClusterConfig {
            coordinator_addr: coordinator.into(),
            advertise_addr: advertise.into(),
            ..ClusterConfig::default()
        };
        let advertised = |c: ClusterConfig| advertised_coordinator(&c, "arc-writer");
        assert_eq!(advertised(config(":9000", "")), "arc-writer:9000");
        assert_eq!(advertised(config("0.0.0.0:9000", "")), "arc-writer:9000");
        assert_eq!(advertised(config("[::]:9000", "")), "arc-writer:9000");
        assert_eq!(advertised(config("10.0.1.10:9000", "")), "10.0.1.10:9000");
        assert_eq!(advertised(config("node-1:9000", "")), "node-1:9000");
        assert_eq!(advertised(config(":9000", "lb:19000")), "lb:19000");
        let bound = |addr: &str| addr.parse().unwrap();
        assert_eq!(
            api_address(&config("10.0.1.10:9000", ""), bound("0.0.0.0:8000")),
            "10.0.1.10:8000"
        );
        assert_eq!(
            api_address(&config(":9000", ""), bound("127.0.0.1:8001")),
            "127.0.0.1:8001"
        );
        let behind_proxy = ClusterConfig {
            api_advertise_addr: "127.0.0.1:18001".into(),
            ..config(":9000", "")
        };
        assert_eq!(
            api_address(&behind_proxy, bound("127.0.0.1:8001")),
            "127.0.0.1:18001"
        );
    }
}
