//! Starting a member: its Raft instance, coordinator port and background tasks.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::{Raft, SnapshotPolicy};
use tokio::sync::watch;

use super::addresses::{
    advertised_coordinator, default_node_name, host_name, listen_addr, specific_ip,
};
use super::health::{HealthBook, Thresholds};
use super::network::{PeerClient, RaftPeers};
use super::peer_auth::PeerAuth;
use super::store::{AppliedState, LogStore, StateMachine};
use super::types::{NodeInfo, raft_id};
use super::{Cluster, ClusterError, internal};
use crate::config::ClusterConfig;

/// How long a node restarting in-process waits for its previous coordinator listener to close
/// (the previous run's server drops it moments after it was told to stop).
const REBIND_WAIT: Duration = Duration::from_secs(10);

async fn bind_coordinator(addr: &str) -> Result<tokio::net::TcpListener, ClusterError> {
    let deadline = Instant::now() + REBIND_WAIT;
    loop {
        match tokio::net::TcpListener::bind(listen_addr(addr)).await {
            Ok(listener) => return Ok(listener),
            Err(err)
                if err.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(source) => {
                return Err(ClusterError::Bind {
                    addr: addr.to_owned(),
                    source,
                });
            }
        }
    }
}

impl Cluster {
    /// Starts this node's Raft member and its coordinator port, joins the cluster, and returns
    /// once this node is a voter that has caught up with the leader (or `stop` fires).
    pub async fn start(
        config: &ClusterConfig,
        api_addr: String,
        storage: String,
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
        let listener = bind_coordinator(&config.coordinator_addr).await?;

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
            storage,
            follows_writer: config.replication_enabled && !config.shared_storage_mode,
            forbidden: Mutex::new(None),
            wal_feed: std::sync::OnceLock::new(),
            stream_readers: Arc::default(),
            replicated: std::sync::OnceLock::new(),
            file_storage: std::sync::OnceLock::new(),
            flusher: std::sync::OnceLock::new(),
            ingester: std::sync::OnceLock::new(),
            log: std::sync::OnceLock::new(),
            serve_timeout: Duration::from_millis(config.replication_serve_timeout_ms.max(1)),
            // Shared-storage writers are peers: none is assigned, and each holds a lease on its
            // own log only when another writer may take that log over (`shared_wal`).
            lease_duration: ((config.failover_enabled && !config.shared_storage_mode)
                || config.shared_wal)
                .then(|| {
                    super::lease::lease_duration(Duration::from_secs(config.failover_timeout))
                }),
            lease: Mutex::default(),
            stepping_down: std::sync::atomic::AtomicBool::new(false),
            leaving: tokio::sync::Mutex::new(false),
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
        tokio::spawn(Arc::clone(&cluster).count_leader_changes(stop.clone()));
        tokio::spawn(Arc::clone(&cluster).snapshot_periodically(
            Duration::from_secs(config.raft_snapshot_interval.max(1)),
            stop.clone(),
        ));
        if config.failover_enabled {
            let settings = super::failover::FailoverSettings {
                timeout: Duration::from_secs(config.failover_timeout),
                cooldown: Duration::from_secs(config.failover_cooldown),
                lease: super::lease::lease_duration(Duration::from_secs(config.failover_timeout)),
            };
            tokio::spawn(Arc::clone(&cluster).run_failover(settings, stop.clone()));
        }
        if let Some(lease) = cluster.lease_duration {
            tokio::spawn(Arc::clone(&cluster).renew_lease(lease, stop.clone()));
        }
        if config.shared_wal {
            let timeout = Duration::from_secs(config.failover_timeout);
            tokio::spawn(Arc::clone(&cluster).run_log_adoption(timeout, stop.clone()));
        }
        cluster.wait_until_caught_up(stop.clone()).await?;
        cluster.register_self(stop).await?;
        Ok(cluster)
    }
}
