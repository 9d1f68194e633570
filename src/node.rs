//! Composition root: builds the parts a node needs and runs them until shutdown.
//!
//! Start-up order: bind the listener (so `/health` answers at once) → open metadata → connect
//! storage and remove files a crash left unregistered → replay the WAL into the buffers → start
//! a fresh WAL segment → `/ready`, then the background jobs (flusher, reclaimer, compaction,
//! retention and continuous-query schedules). Shutdown runs it
//! backwards: stop taking requests, stop the background jobs, flush every buffer, sync and close
//! the WAL.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use futures::future::join_all;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::adoption::{self, Adopter};
use crate::api::{self, AppState, Services};
use crate::auth::{self, Authenticator, Bootstrap};
use crate::buffer::Buffers;
use crate::cluster::{self, Cluster, ClusterError};
use crate::compact::Compactor;
use crate::config::{Config, NodeRole, StorageBackend};
use crate::continuous::{self, CqRunner};
use crate::crash_hook::CrashHook;
use crate::delete::{self, Deleter};
use crate::flush::{FlushOrigin, Flusher, PendingUploads};
use crate::handover;
use crate::ingest::{IngestLimits, Ingester, replay_entry, replicate_entry};
use crate::meta::{Meta, MetaError, SINGLE_WRITER_LOG};
use crate::metrics::metrics;
use crate::query::QueryEngine;
use crate::reclaim;
use crate::replication::{AckPolicy, Follower, Puller, ReadBarrier, ReplicaView, ReplicationStats};
use crate::retention;
use crate::schedule::CronSchedule;
use crate::storage::{Storage, StorageError};
use crate::wal::{self, FeedLimits, Shipping, Wal, WalError, WalOptions, shipped_range};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("pending-uploads journal: {0}")]
    PendingUploads(std::io::Error),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("cannot set aside or mark the WAL of a replaced writer: {0}")]
    ReplacedLog(std::io::Error),
    #[error(
        "{} holds a standalone node's metadata, which a cluster node would not see (its files \
         and tokens would seem gone); start cluster nodes with an empty meta.directory",
        .0.display()
    )]
    StandaloneMetadata(std::path::PathBuf),
}

/// Memory a writer keeps of its latest durable entries for readers to stream from; readers
/// further behind read the WAL segments.
const REPLICATION_WINDOW_BYTES: usize = 256 << 20;

/// Runs a node until `shutdown` resolves, then drains and stops it.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<RunEnd, NodeError> {
    let host = if config.server.host.is_empty() {
        "::"
    } else {
        config.server.host.as_str()
    };
    let addr = format!("{host}:{}", config.server.port);
    let listener = bind(&addr).await?;
    let local_addr = listener.local_addr().map_err(NodeError::Serve)?;
    tracing::info!(addr = %local_addr, "listening");

    let state = Arc::new(AppState::new(&config));
    let (stop_http, http_stopped) = watch::channel(false);
    let server = {
        let router = api::router(Arc::clone(&state));
        let mut http_stopped = http_stopped.clone();
        tokio::spawn(async move {
            axum::serve(listener.tap_io(no_delay), router)
                .with_graceful_shutdown(async move {
                    let _ = http_stopped.wait_for(|stopped| *stopped).await;
                })
                .await
        })
    };

    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = shutdown_tx.send(true);
    });

    // The cluster outlives request draining: the final flush still commits through it.
    let (stop_cluster, cluster_stopped) = watch::channel(false);
    let started = tokio::select! {
        started = start_services(&config, local_addr, cluster_stopped) => started?,
        _ = shutdown_rx.wait_for(|s| *s) => {
            tracing::info!("shutdown requested during start-up");
            let _ = stop_http.send(true);
            return Ok(RunEnd::Stopped);
        }
    };
    let Started {
        services,
        wal,
        follower,
        puller,
        adopter,
        flush_requests,
        meta,
        storage,
        role,
        wal_dir,
    } = started;
    let cluster = services.cluster.clone();
    let (stop_flusher, flusher_stopped) = watch::channel(false);
    let background =
        tokio::spawn(Arc::clone(&services.flusher).run(flush_requests, flusher_stopped.clone()));
    // Retention, continuous queries and object reclaim change shared data: in a cluster on
    // local storage only the node that ingests runs them (a promoted reader starts them when it
    // takes over); with shared storage the Raft leader does, whichever role it has.
    let upkeep_tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
    let spawn_upkeep_tasks = {
        let (config, meta, storage) = (config.clone(), Arc::clone(&meta), storage.clone());
        let continuous_queries = Arc::clone(&services.continuous_queries);
        move |stopped| {
            let (meta, continuous_queries) = (Arc::clone(&meta), Arc::clone(&continuous_queries));
            spawn_upkeep(&config, meta, storage.clone(), continuous_queries, stopped)
        }
    };
    let start_upkeep: Option<handover::StartUpkeep> = match &cluster {
        Some(cluster) if config.cluster.shared_storage_mode => {
            let leading = upkeep_while_leading(
                Arc::clone(cluster),
                spawn_upkeep_tasks,
                flusher_stopped.clone(),
            );
            upkeep_tasks.lock().unwrap().push(tokio::spawn(leading));
            None
        }
        Some(_) if !role.ingests() => {
            let (tasks, stopped) = (Arc::clone(&upkeep_tasks), flusher_stopped.clone());
            Some(Box::new(move || {
                tasks.lock().unwrap().extend(spawn_upkeep_tasks(stopped));
            }))
        }
        _ => {
            let started = spawn_upkeep_tasks(flusher_stopped.clone());
            upkeep_tasks.lock().unwrap().extend(started);
            None
        }
    };
    let (stop_following, following_stopped) = watch::channel(false);
    let follower = Arc::new(std::sync::Mutex::new(
        follower.map(|follower| tokio::spawn(follower.run(following_stopped))),
    ));
    let puller = puller.map(|puller| tokio::spawn(puller.run(flusher_stopped.clone())));
    let adopter = adopter.map(|adopter| tokio::spawn(adopter.run(flusher_stopped.clone())));
    let schedules = services
        .compactor
        .clone()
        .map(|compactor| tokio::spawn(compactor.run_schedules(flusher_stopped.clone())));
    let (restart_tx, mut restart_rx) = watch::channel(false);
    let role_watch = cluster.as_ref().map(|cluster| {
        let watch = handover::RoleWatch {
            cluster: Arc::clone(cluster),
            buffers: Arc::clone(services.ingester.buffers()),
            meta: Arc::clone(&services.meta),
            flusher: Arc::clone(&services.flusher),
            wal_dir: wal_dir.clone(),
            stop_follower: stop_following.clone(),
            follower: Arc::clone(&follower),
            start_upkeep,
            restart: restart_tx,
        };
        tokio::spawn(watch.run(flusher_stopped.clone()))
    });
    let flusher = Arc::clone(&services.flusher);
    let meta = Arc::clone(&services.meta);
    state.set_ready(services);
    tracing::info!("ready");

    let restart = tokio::select! {
        _ = shutdown_rx.wait_for(|s| *s) => false,
        // Without a cluster nothing asks for a restart (the sender is gone).
        _ = async {
            if restart_rx.wait_for(|r| *r).await.is_err() {
                std::future::pending::<()>().await;
            }
        } => true,
    };
    tracing::info!(restart, "shutting down: draining requests");
    // Work waiting for the cluster to settle a change gives up after its next attempt; what it
    // leaves is reconciled at the next start.
    meta.stop_retrying();
    state.set_draining();
    let _ = stop_http.send(true);
    let grace = Duration::from_secs(config.server.shutdown_timeout);
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => tracing::error!(error = %err, "HTTP server error"),
        Ok(Err(err)) => tracing::error!(error = %err, "HTTP server task failed"),
        Err(_) => tracing::warn!("requests still running after shutdown_timeout; stopping anyway"),
    }
    let _ = stop_flusher.send(true);
    let _ = stop_following.send(true);
    let _ = background.await;
    let follower = follower.lock().unwrap().take();
    let upkeep = std::mem::take(&mut *upkeep_tasks.lock().unwrap());
    let tasks = [follower, puller, adopter, schedules, role_watch]
        .into_iter()
        .flatten()
        .chain(upkeep);
    for task in tasks {
        let _ = task.await;
    }
    if restart {
        // A replaced writer's rows are not flushed: its log is set aside at the next start.
        tracing::info!("restarting without a final flush");
    } else {
        match flusher.flush_all().await {
            Ok(files) => tracing::info!(files, "buffers flushed"),
            Err(err) => {
                tracing::error!(error = %err, "final flush failed; the rows stay in the WAL for the next start")
            }
        }
    }
    if let Some(wal) = wal {
        wal.close().await;
    }
    if let Some(cluster) = cluster {
        cluster.leave().await;
    }
    let _ = stop_cluster.send(true);
    tracing::info!("stopped");
    Ok(if restart {
        RunEnd::Restart
    } else {
        RunEnd::Stopped
    })
}

/// How a node's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Shutdown was requested.
    Stopped,
    /// Its role changed in a way the running services cannot follow: start them again.
    Restart,
}

fn spawn_upkeep(
    config: &Config,
    meta: Arc<Meta>,
    storage: Storage,
    continuous_queries: Arc<CqRunner>,
    stopped: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if config.retention.enabled {
        let schedule: CronSchedule = config
            .scheduler
            .retention_schedule
            .parse()
            .expect("validated with the configuration");
        tasks.push(tokio::spawn(retention::run_scheduled(
            Arc::clone(&meta),
            schedule,
            stopped.clone(),
        )));
    }
    if config.continuous_query.enabled {
        tasks.push(tokio::spawn(continuous::run_scheduled(
            continuous_queries,
            stopped.clone(),
        )));
    }
    tasks.push(tokio::spawn(reclaim::run(
        meta,
        storage,
        Duration::from_secs(config.query.timeout),
        stopped,
    )));
    tasks
}

/// With shared storage: runs the singleton tasks while this node leads the Raft group, and stops
/// them when it no longer does (the new leader's tasks pick up at their next tick) or `stop`
/// turns true.
async fn upkeep_while_leading(
    cluster: Arc<Cluster>,
    start: impl Fn(watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut running: Option<(watch::Sender<bool>, Vec<tokio::task::JoinHandle<()>>)> = None;
    loop {
        let leading = cluster.is_leader();
        if leading && running.is_none() {
            tracing::info!(
                "this node leads the cluster: running retention, continuous queries and reclaim"
            );
            let (stop_tasks, tasks_stopped) = watch::channel(false);
            running = Some((stop_tasks, start(tasks_stopped)));
        } else if !leading && let Some((stop_tasks, tasks)) = running.take() {
            tracing::info!("this node no longer leads the cluster: stopping its singleton tasks");
            let _ = stop_tasks.send(true);
            join_all(tasks).await;
        }
        tokio::select! {
            _ = cluster.leadership_changed_from(leading) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if let Some((stop_tasks, tasks)) = running {
        let _ = stop_tasks.send(true);
        join_all(tasks).await;
    }
}

/// Disables Nagle's algorithm on an accepted connection. A streamed response ends with a small
/// write; held back until the client acknowledges the previous one, which clients delay by up to
/// 40 ms, it made small answers take ~50 ms.
pub fn no_delay(connection: &mut tokio::net::TcpStream) {
    if let Err(err) = connection.set_nodelay(true) {
        tracing::debug!(error = %err, "could not set TCP_NODELAY");
    }
}

async fn bind(addr: &str) -> Result<TcpListener, NodeError> {
    let bind_err = |source| NodeError::Bind {
        addr: addr.to_string(),
        source,
    };
    let socket_addr: SocketAddr = tokio::net::lookup_host(addr)
        .await
        .map_err(bind_err)?
        .next()
        .ok_or_else(|| bind_err(std::io::Error::other("address resolves to nothing")))?;
    TcpListener::bind(socket_addr).await.map_err(bind_err)
}

struct Started {
    services: Services,
    wal: Option<Arc<Wal>>,
    /// On a reader with replication enabled: follows the writer's WAL.
    follower: Option<Follower>,
    /// On such a reader with its own storage: copies the manifest's files.
    puller: Option<Puller>,
    /// On a writer with `cluster.shared_wal`: takes over lost writers' logs.
    adopter: Option<Adopter>,
    flush_requests: mpsc::UnboundedReceiver<crate::buffer::MeasurementKey>,
    meta: Arc<Meta>,
    storage: Storage,
    /// What this node is: its configured role, or in a cluster the one it is registered with
    /// (a failover swaps a writer's and a reader's).
    role: NodeRole,
    wal_dir: Option<std::path::PathBuf>,
}

async fn start_services(
    config: &Config,
    api_addr: SocketAddr,
    cluster_stopped: watch::Receiver<bool>,
) -> Result<Started, NodeError> {
    let (meta, cluster) = if config.cluster.enabled {
        let dir = Path::new(&config.meta.directory);
        if Meta::has_standalone_state(dir) {
            return Err(NodeError::StandaloneMetadata(dir.to_path_buf()));
        }
        let api_addr = cluster::api_address(&config.cluster, api_addr);
        let cluster = Cluster::start(
            &config.cluster,
            api_addr,
            config.storage.identity(),
            cluster_stopped,
        )
        .await?;
        (Arc::new(cluster.meta()), Some(cluster))
    } else {
        (
            Arc::new(Meta::open(Path::new(&config.meta.directory))?),
            None,
        )
    };
    if config.auth.enabled {
        let (bootstrap_meta, auth_config) = (Arc::clone(&meta), config.auth.clone());
        // In a cluster the commit waits for Raft, which needs a blocking thread.
        let bootstrap =
            tokio::task::spawn_blocking(move || auth::bootstrap(&bootstrap_meta, &auth_config))
                .await
                .expect("bootstrap task panicked")?;
        announce(bootstrap);
    }
    let authenticator = Arc::new(Authenticator::new(Arc::clone(&meta), &config.auth));
    let storage = Storage::from_config(&config.storage)?;
    tracing::info!(storage = storage.description(), "storage configured");

    let limits = IngestLimits {
        max_msgpack_bytes: config.server.max_payload_size.bytes() as usize,
        max_buffer_rows: config.ingest.max_buffer_size,
        max_buffered_bytes: config.ingest.max_buffered_bytes.bytes() as usize,
    };
    let node_id = cluster
        .as_ref()
        .map_or_else(|| "standalone".to_string(), |c| c.name().to_string());
    let shared_storage = cluster.is_some() && config.cluster.shared_storage_mode;
    // Shared-storage writers each number their own log (a new one after another writer took
    // theirs over); otherwise there is one writer's log, which a promoted reader continues.
    let log = if shared_storage {
        meta.state().log_of(&node_id)
    } else {
        SINGLE_WRITER_LOG.to_string()
    };
    let buffers = {
        let state = meta.state();
        Arc::new(Buffers::new(&state, state.max_flushed_lsn(&log)))
    };
    let role = cluster.as_ref().map_or(config.cluster.role, |c| c.role());
    crate::logging::set_role(role);
    if shared_storage && config.cluster.replication_enabled {
        tracing::warn!(
            "cluster.replication_enabled is ignored with cluster.shared_storage_mode: readers \
             query the shared bucket and follow no writer's log"
        );
    }
    let replicas = config.cluster.replication_enabled && !shared_storage;
    if shared_storage && role.ingests() && meta.state().nodes().count(NodeRole::Writer) == 2 {
        tracing::warn!(
            "this cluster has 2 writers; 3 are recommended for high availability (as in Arc)"
        );
    }
    if cluster.is_some() && replicas && role.ingests() && !config.wal.enabled {
        tracing::warn!(
            "cluster.replication_enabled needs wal.enabled on a writer; readers get no WAL stream"
        );
    }
    // Every node that may write keeps its log's latest entries for readers: a reader's log
    // mirrors its writer's, so once promoted it serves the same entries.
    let serves_replicas = cluster.is_some() && replicas;
    let follows = cluster.is_some() && replicas && role == NodeRole::Reader;
    // On local storage every node holds a copy of every manifest file (a compactor merges
    // them, a writer rewrites them for deletes, a reader queries them); on an object store all
    // read them where they were put.
    let copies_files = replicas && config.storage.backend == StorageBackend::Local;
    let writes_under = cluster.as_ref().and_then(|c| c.writes_under());
    let wal_dir = config
        .wal
        .enabled
        .then(|| std::path::PathBuf::from(&config.wal.directory));
    if let (Some(dir), true) = (&wal_dir, cluster.is_some()) {
        let mark = handover::writer_mark(dir);
        if handover::log_is_replaced(mark, follows) {
            let aside = handover::set_aside(dir).map_err(NodeError::ReplacedLog)?;
            tracing::warn!(
                epoch = mark,
                aside = %aside.display(),
                "this node wrote its log as a writer that was since replaced: the log is set \
                 aside (entries its successor lacks were never acknowledged) and not replayed"
            );
        }
        if let Some(epoch) = writes_under {
            handover::mark_writer(dir, epoch).map_err(NodeError::ReplacedLog)?;
        }
        if shared_storage {
            adoption::claim_wal_dir(dir, &log, &node_id).map_err(NodeError::ReplacedLog)?;
        }
    }
    let shared_wal = shared_storage && config.cluster.shared_wal && role.ingests();
    let ship = if shared_wal {
        let prefix = adoption::shipped_prefix(&log);
        let mut shipped: Vec<(u64, u64, String)> = storage
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|o| shipped_range(&o.key).map(|(first, last)| (first, last, o.key)))
            .collect();
        shipped.sort();
        Some(Shipping {
            storage: storage.clone(),
            prefix,
            runtime: tokio::runtime::Handle::current(),
            shipped: shipped
                .into_iter()
                .map(|(_, last, key)| (last, key))
                .collect(),
        })
    } else {
        None
    };
    let mut replayed_through = 0;
    let wal = if config.wal.enabled {
        let options = WalOptions {
            dir: config.wal.directory.clone().into(),
            sync_mode: config.wal.sync_mode,
            max_segment_bytes: config.wal.max_size_mb << 20,
            max_segment_age: Duration::from_secs(config.wal.max_age_seconds),
            feed: serves_replicas.then_some(FeedLimits {
                max_entries: config.cluster.replication_buffer_size.max(1),
                max_bytes: REPLICATION_WINDOW_BYTES,
                max_held_bytes: config.cluster.replication_wal_retention.bytes(),
            }),
            ship,
        };
        let (replay_buffers, replay_meta, dir, replay_log) = (
            Arc::clone(&buffers),
            Arc::clone(&meta),
            options.dir.clone(),
            log.clone(),
        );
        let recovery = tokio::task::spawn_blocking(move || {
            let state = replay_meta.state();
            let recovered = |rows: usize| {
                metrics().wal.recovery_records.inc_by(rows as u64);
            };
            wal::replay(&dir, |lsn, payload| {
                if follows {
                    // A reader's log mirrors its writer's. Its view of local files starts
                    // empty, so (on local storage) every entry's rows are buffered until the
                    // puller's copies cover them.
                    let flushed = |database: &str, measurement: &str| {
                        if copies_files {
                            0
                        } else {
                            state.flushed_through(SINGLE_WRITER_LOG, database, measurement)
                        }
                    };
                    replicate_entry(&replay_buffers, flushed, lsn, payload).map(recovered)
                } else {
                    replay_entry(&replay_buffers, &state, &replay_log, lsn, payload).map(recovered)
                }
            })
        })
        .await
        .expect("WAL replay task panicked")?;
        tracing::info!(
            entries = recovery.entries,
            truncated_segments = recovery.truncated_segments,
            "WAL replayed"
        );
        if recovery.entries > 0 {
            metrics().wal.recoveries.inc();
        }
        replayed_through = recovery.last_lsn.unwrap_or(0);
        let next_lsn = buffers.lock().last_lsn().max(replayed_through) + 1;
        Some(Arc::new(Wal::start(options, next_lsn, recovery)?))
    } else {
        None
    };
    if let (Some(cluster), Some(feed)) = (&cluster, wal.as_ref().and_then(|w| w.feed())) {
        cluster.serve_wal(Arc::clone(feed));
    }
    if let (Some(cluster), true) = (&cluster, replicas) {
        cluster.serve_files(storage.clone());
    }
    let view = copies_files.then(|| Arc::new(ReplicaView::default()));
    let gated = follows && view.is_some() && config.cluster.query_gate_on_catchup;
    if gated && !config.cluster.replication_catchup_enabled {
        tracing::warn!(
            "cluster.query_gate_on_catchup is on but cluster.replication_catchup_enabled is off: \
             the gate is disabled, since it would never open"
        );
    }
    let gated = gated && config.cluster.replication_catchup_enabled;
    let stats = Arc::new(ReplicationStats::new(gated));
    if follows {
        stats.resume_from(replayed_through);
        if let Some(cluster) = &cluster {
            cluster.report_replication(Arc::clone(&stats));
        }
    }
    let read_barrier =
        cluster
            .as_ref()
            .zip(view.as_ref())
            .filter(|_| gated)
            .map(|(cluster, view)| {
                Arc::new(ReadBarrier {
                    cluster: Arc::clone(cluster),
                    meta: Arc::clone(&meta),
                    view: Arc::clone(view),
                    stats: Arc::clone(&stats),
                    timeout: Duration::from_millis(
                        config.cluster.replication_catchup_barrier_timeout_ms,
                    ),
                })
            });
    let follower = cluster
        .as_ref()
        .filter(|_| follows)
        .map(|cluster| Follower {
            cluster: Arc::clone(cluster),
            buffers: Arc::clone(&buffers),
            meta: Arc::clone(&meta),
            stats: Arc::clone(&stats),
            view: view.clone(),
            max_buffered_bytes: config.ingest.max_buffered_bytes.bytes() as usize,
            ack_interval: Duration::from_millis(config.cluster.replication_ack_interval.max(1)),
            wal: wal.clone(),
        });
    // Only a reader's queries read through the view; the others read the manifest.
    let query_view = view.clone().filter(|_| follows);
    let puller = cluster
        .as_ref()
        .zip(view.as_ref())
        .map(|(cluster, view)| Puller {
            cluster: Arc::clone(cluster),
            meta: Arc::clone(&meta),
            storage: storage.clone(),
            view: Arc::clone(view),
            stats: Arc::clone(&stats),
            work_dir: Path::new(&config.compaction.temp_directory).join("pull"),
            workers: config.cluster.replication_pull_workers,
            attempts: config.cluster.replication_retry_max_attempts,
            fetch_timeout: Duration::from_millis(config.cluster.replication_fetch_timeout_ms),
            grace: Duration::from_secs(config.query.timeout),
        });

    let (flush_tx, flush_rx) = mpsc::unbounded_channel();
    let pending_uploads =
        PendingUploads::open(&Path::new(&config.meta.directory).join("pending-uploads"))
            .map_err(NodeError::PendingUploads)?;
    let query = Arc::new(QueryEngine::new(
        Arc::clone(&meta),
        Arc::clone(&buffers),
        query_view,
        &storage,
        log.clone(),
    ));
    let flusher = Arc::new(Flusher::new(
        Arc::clone(&buffers),
        storage.clone(),
        Arc::clone(&meta),
        pending_uploads,
        wal.clone(),
        config.ingest.clone(),
        FlushOrigin {
            node_id: node_id.clone(),
            log: log.clone(),
        },
    ));
    if let Some(epoch) = writes_under {
        flusher.write_under_epoch(epoch);
        if let Some(cluster) = &cluster {
            cluster.writer_ready(epoch);
        }
    }
    // With `shared_wal` a writer holds a lease on its own log, and takes over lost writers'.
    let adopter = match &cluster {
        Some(cluster) if shared_wal => {
            cluster.writes_log(log.clone());
            cluster.writer_ready(0);
            Some(Adopter {
                cluster: Arc::clone(cluster),
                meta: Arc::clone(&meta),
                storage: storage.clone(),
                ingest: config.ingest.clone(),
                node_id: node_id.clone(),
                journal_dir: Path::new(&config.meta.directory).to_path_buf(),
            })
        }
        _ => None,
    };
    // A writer compacts when the compaction lease falls back to it (no compactor is healthy).
    let may_compact = role.compacts() || (cluster.is_some() && role == NodeRole::Writer);
    let compactor = (config.compaction.enabled && may_compact).then(|| {
        Arc::new(
            Compactor::new(
                config.compaction.clone(),
                config.ingest.clone(),
                Arc::clone(&meta),
                storage.clone(),
                Arc::clone(&flusher),
                node_id.clone(),
            )
            .with_lease(cluster.clone()),
        )
    });
    let deleter = Arc::new(Deleter {
        meta: Arc::clone(&meta),
        buffers: Arc::clone(&buffers),
        storage: storage.clone(),
        flusher: Arc::clone(&flusher),
        query: Arc::clone(&query),
        config: config.delete.clone(),
        work_dir: Path::new(&config.compaction.temp_directory).join("delete"),
        node_id,
        crash_hook: CrashHook::from_env(delete::CRASH_ENV),
        running: tokio::sync::Mutex::new(()),
        other_writers: cluster.clone().filter(|_| shared_storage),
    });
    // Uploads a crash left unregistered go before anything can upload again, not at this
    // node's first flush or compaction (a compactor without the lease might never have one).
    if let Err(err) = flusher.ensure_reconciled().await {
        tracing::warn!(error = %err, "could not remove uploads a crash left unregistered; will retry at the next flush");
    }
    if let Err(err) = deleter.remove_leftovers().await {
        tracing::warn!(error = %err, "could not remove an interrupted delete's files");
    }
    // In a cluster every write asks: a writer that steps down or lost its lease refuses it.
    let replica_acks = cluster.as_ref().map(|cluster| {
        Arc::new(AckPolicy {
            cluster: Arc::clone(cluster),
            mode: config.cluster.replication_ack(),
            timeout: Duration::from_millis(config.cluster.route_timeout),
        })
    });
    let ingester = Arc::new(
        Ingester::new(buffers, wal.clone(), flush_tx, limits).with_replica_acks(replica_acks),
    );
    // With shared storage only writers buffer rows (a delete flushes them all).
    let results_to_a_writer = match &cluster {
        Some(cluster) if shared_storage && role.ingests() => {
            cluster.serve_writers_peers(Arc::clone(&flusher), Arc::clone(&ingester));
            None
        }
        Some(cluster) if shared_storage => Some(Arc::clone(cluster)),
        _ => None,
    };
    let continuous_queries = Arc::new(CqRunner {
        meta: Arc::clone(&meta),
        query: Arc::clone(&query),
        ingester: Arc::clone(&ingester),
        deleter: Arc::clone(&deleter),
        results_to_a_writer,
        running: tokio::sync::Mutex::new(()),
    });
    Ok(Started {
        services: Services {
            auth: authenticator,
            meta: Arc::clone(&meta),
            ingester,
            flusher,
            query,
            compactor,
            deleter,
            continuous_queries,
            cluster,
            replication: (follower.is_some() || puller.is_some()).then_some(stats),
            read_barrier,
        },
        wal,
        follower,
        puller,
        adopter,
        flush_requests: flush_rx,
        meta,
        storage,
        role,
        wal_dir,
    })
}

/// Tells the operator about a token created at start-up. A random secret is shown this once,
/// on stderr and not through the log, so it never lands in log files.
fn announce(bootstrap: Bootstrap) {
    match bootstrap {
        Bootstrap::Nothing => {}
        Bootstrap::CreatedRandom { secret } => {
            let rule = "=".repeat(72);
            eprintln!(
                "{rule}\nAdmin API token (shown only now; store it safely): {secret}\n\
                 Use it as 'Authorization: Bearer <token>'.\n{rule}"
            );
        }
        Bootstrap::CreatedFromConfig { name } => {
            tracing::info!(token = %name, "admin token created from the configured bootstrap token");
        }
    }
}
