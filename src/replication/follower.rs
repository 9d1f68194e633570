//! The reader's side: follow the writer's stream, apply each entry to this node's buffers,
//! release buffered rows once registered files hold them, reconnect after any failure.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

use super::ReplicaView;
use super::{Frame, FrameDecoder, IDLE_LIMIT, ReplicationError, ReplicationStats, StreamRequest};
use crate::buffer::{Buffers, MeasurementKey};
use crate::cluster::Cluster;
use crate::ingest::replicate_entry;
use crate::meta::{Meta, MetaState, SINGLE_WRITER_LOG};
use crate::wal::{Lsn, Wal};

/// Pause before reconnecting after the stream ended or failed, doubling while connecting fails.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(5);

/// Pause while the buffers are over their limit, waiting for the writer's flushes to release
/// rows; the stream is not read meanwhile, which slows the writer's side of it down.
const BACK_PRESSURE_PAUSE: Duration = Duration::from_millis(100);

pub struct Follower {
    pub cluster: Arc<Cluster>,
    pub buffers: Arc<Buffers>,
    pub meta: Arc<Meta>,
    pub stats: Arc<ReplicationStats>,
    /// On a reader with its own storage: the files it can query. Rows are released by the
    /// view's flushed-through LSN, not the manifest's, so they stay until their files are here.
    pub view: Option<Arc<ReplicaView>>,
    /// Buffered bytes above which the stream is not read until flushes release rows.
    pub max_buffered_bytes: usize,
    /// `cluster.replication_ack_interval`: how often, at the least, the writer hears what this
    /// reader holds durably.
    pub ack_interval: Duration,
    /// This node's WAL, which mirrors the writer's: entries are acknowledged once durable here.
    pub wal: Option<Arc<Wal>>,
}

/// A reader's acknowledgements to its writer: at most one in flight, sent at each tick when
/// the applied LSN moved.
struct Acks {
    ticks: tokio::time::Interval,
    interval: Duration,
    sent: Lsn,
    in_flight: Option<tokio::task::JoinHandle<bool>>,
}

impl Acks {
    fn new(interval: Duration) -> Acks {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Acks {
            ticks,
            interval,
            sent: 0,
            in_flight: None,
        }
    }

    async fn tick(&mut self) {
        self.ticks.tick().await;
    }

    fn send_due(&mut self, cluster: &Arc<Cluster>, writer_addr: &str, applied: Lsn) {
        if let Some(task) = self.in_flight.take() {
            if !task.is_finished() {
                self.in_flight = Some(task);
                return;
            }
            // A lost ack keeps a little more WAL on the writer; the next one says it again.
            if !matches!(task.now_or_never(), Some(Ok(true))) {
                self.sent = 0;
            }
        }
        if applied <= self.sent {
            return;
        }
        self.sent = applied;
        let (cluster, writer_addr) = (Arc::clone(cluster), writer_addr.to_owned());
        let timeout = (self.interval * 10).max(Duration::from_secs(1));
        self.in_flight = Some(tokio::spawn(async move {
            match cluster.ack_applied(&writer_addr, applied, timeout).await {
                Ok(()) => true,
                Err(err) => {
                    tracing::debug!(error = %err, "replication ack not delivered");
                    false
                }
            }
        }));
    }
}

impl Drop for Acks {
    fn drop(&mut self) {
        if let Some(task) = self.in_flight.take() {
            task.abort();
        }
    }
}

/// Where a reader's queries take rows from files rather than buffers.
fn flushed_through(meta: &MetaState, view: Option<&ReplicaView>, key: &MeasurementKey) -> Lsn {
    match view {
        Some(view) => view.flushed_through(key),
        None => meta.flushed_through(SINGLE_WRITER_LOG, &key.database, &key.measurement),
    }
}

impl Follower {
    /// Follows the writer until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut pause = RECONNECT_PAUSE;
        loop {
            let connects = self
                .stats
                .connects
                .load(std::sync::atomic::Ordering::Relaxed);
            let followed = tokio::select! {
                followed = self.follow_once() => followed,
                _ = stop.wait_for(|s| *s) => return,
            };
            if let Err(err) = followed {
                tracing::warn!(error = %err, retry_in = ?pause, "replication stream interrupted");
                self.stats.disconnected(&err);
            }
            // A writer that keeps refusing (restarting, or not serving a stream) is asked less
            // and less often; one that streamed is asked again at once.
            let streamed = self
                .stats
                .connects
                .load(std::sync::atomic::Ordering::Relaxed)
                > connects;
            pause = if streamed {
                RECONNECT_PAUSE
            } else {
                (pause * 2).min(MAX_RECONNECT_PAUSE)
            };
            // A new writer is dialled at once.
            let tried = self.cluster.writer_assignment();
            let mut changes = self.cluster.applied_changes();
            let reassigned = async {
                while changes.changed().await.is_ok() {
                    if self.cluster.writer_assignment().epoch != tried.epoch {
                        return;
                    }
                }
                std::future::pending::<()>().await;
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = reassigned => pause = RECONNECT_PAUSE,
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// One connection: from the entry after the last applied one until the stream fails.
    async fn follow_once(&self) -> Result<(), ReplicationError> {
        let request = StreamRequest {
            from_lsn: self.stats.applied_lsn() + 1,
        };
        let (writer, writer_addr, response) = self
            .cluster
            .open_wal_stream(&request)
            .await
            .map_err(|e| ReplicationError::NoWriter(e.to_string()))?;
        tracing::info!(%writer, from_lsn = request.from_lsn, "following the writer's WAL");
        let epoch = self.cluster.writer_assignment().epoch;
        let mut changes = self.cluster.applied_changes();
        self.stats.connected(&writer);
        let mut body = response.bytes_stream();
        let mut decoder = FrameDecoder::default();
        let mut acks = Acks::new(self.ack_interval);
        let mut silent_at = tokio::time::Instant::now() + IDLE_LIMIT;
        loop {
            self.release_flushed();
            while self.buffers.lock().buffered_bytes() > self.max_buffered_bytes {
                tokio::time::sleep(BACK_PRESSURE_PAUSE).await;
                self.release_flushed();
                acks.send_due(&self.cluster, &writer_addr, self.stats.mirrored_lsn());
            }
            let next = tokio::select! {
                next = tokio::time::timeout_at(silent_at, body.next()) => next,
                _ = acks.tick() => {
                    acks.send_due(&self.cluster, &writer_addr, self.stats.mirrored_lsn());
                    continue;
                }
                _ = changes.changed() => {
                    if self.cluster.writer_assignment().epoch != epoch {
                        return Err(ReplicationError::Broken {
                            writer,
                            message: "another node was made the writer".into(),
                        });
                    }
                    continue;
                }
            };
            silent_at = tokio::time::Instant::now() + IDLE_LIMIT;
            let chunk = match next {
                Err(_) => return Err(ReplicationError::Silent { writer }),
                Ok(None) => {
                    return Err(ReplicationError::Broken {
                        writer,
                        message: "the writer ended the stream".into(),
                    });
                }
                Ok(Some(Err(err))) => {
                    return Err(ReplicationError::Broken {
                        writer,
                        message: err.to_string(),
                    });
                }
                Ok(Some(Ok(chunk))) => chunk,
            };
            decoder.push(&chunk);
            let frames = decoder.frames().map_err(|_| ReplicationError::Corrupt {
                writer: writer.clone(),
            })?;
            self.apply(&writer, frames).await?;
            // At once, not at the next tick: a writer with `replication_ack` waits for it.
            acks.send_due(&self.cluster, &writer_addr, self.stats.mirrored_lsn());
        }
    }

    /// Applies a batch of frames off the async threads (decoding rows takes milliseconds).
    async fn apply(&self, writer: &str, frames: Vec<Frame>) -> Result<(), ReplicationError> {
        let (buffers, meta, stats, view) = (
            Arc::clone(&self.buffers),
            Arc::clone(&self.meta),
            Arc::clone(&self.stats),
            self.view.clone(),
        );
        let writer_name = writer.to_owned();
        let wal = self.wal.clone();
        let mirrored = tokio::task::spawn_blocking(move || {
            let mut last_written = None;
            for frame in frames {
                match frame {
                    Frame::KeepAlive { durable_lsn } => stats.heard(durable_lsn),
                    Frame::Entry { lsn, payload } => {
                        let expected = stats.applied_lsn() + 1;
                        if lsn < expected {
                            continue;
                        }
                        if lsn > expected {
                            // The writer no longer holds these entries: their rows are in files.
                            stats.skipped(expected, lsn - 1);
                            tracing::info!(
                                from = expected,
                                to = lsn - 1,
                                "replication skipped entries the writer already flushed"
                            );
                        }
                        if let Some(wal) = &wal {
                            last_written = Some((lsn, wal.append(lsn, vec![payload.clone()])));
                        }
                        let state = meta.state();
                        let flushed = |database: &str, measurement: &str| {
                            let key = MeasurementKey {
                                database: database.to_owned(),
                                measurement: measurement.to_owned(),
                            };
                            flushed_through(&state, view.as_deref(), &key)
                        };
                        let rows = replicate_entry(&buffers, flushed, lsn, &payload).map_err(
                            |reason| ReplicationError::Unapplicable {
                                writer: writer_name.clone(),
                                lsn,
                                reason,
                            },
                        )?;
                        stats.applied(lsn, rows);
                    }
                }
            }
            stats.progressed();
            Ok(last_written)
        })
        .await
        .expect("replication apply task panicked")?;
        match mirrored {
            // The log syncs in order: once the last entry is durable, all of them are.
            Some((lsn, durable)) => match durable.await {
                Ok(Ok(())) => self.stats.mirrored(lsn),
                Ok(Err(err)) => {
                    return Err(ReplicationError::Unapplicable {
                        writer: writer.to_owned(),
                        lsn,
                        reason: format!("this node's WAL refused it: {err}"),
                    });
                }
                Err(_) => {
                    return Err(ReplicationError::Unapplicable {
                        writer: writer.to_owned(),
                        lsn,
                        reason: "this node's WAL is closed".into(),
                    });
                }
            },
            None if self.wal.is_none() => self.stats.mirrored(self.stats.applied_lsn()),
            None => {}
        }
        Ok(())
    }

    /// Drops buffered rows that registered files now hold.
    fn release_flushed(&self) {
        let keys = self.buffers.lock().with_data();
        if keys.is_empty() {
            return;
        }
        let flushed: HashMap<_, _> = {
            let state = self.meta.state();
            keys.into_iter()
                .map(|key| {
                    let lsn = flushed_through(&state, self.view.as_deref(), &key);
                    (key, lsn)
                })
                .collect()
        };
        let (released, through) = {
            let mut buffers = self.buffers.lock();
            let released = buffers.release_flushed(&flushed);
            (
                released,
                buffers.replicated_through(self.stats.mirrored_lsn()),
            )
        };
        if let Some(wal) = &self.wal {
            wal.release_through(through);
        }
        self.stats
            .chunks_released
            .fetch_add(released as u64, std::sync::atomic::Ordering::Relaxed);
    }
}
