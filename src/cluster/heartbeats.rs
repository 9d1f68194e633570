//! Heartbeats to every peer, and the health this node derives from the ones it receives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Cluster;
use super::network::PeerError;
use super::protocol::{Empty, HEARTBEAT_PATH, Heartbeat};
use crate::replication::ReplicationStats;
use crate::wal::Lsn;

impl Cluster {
    pub(super) async fn send_heartbeats(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let interval = self.thresholds.heartbeat_interval;
        loop {
            {
                let mut health = self.health.lock().unwrap();
                for peer in self.peers() {
                    health.note_member(&peer.name, Instant::now());
                }
            }
            {
                // Held while the beat is out, so a graceful leave's beat is the last one peers get.
                let leaving = self.leaving.lock().await;
                if *leaving {
                    return;
                }
                self.beat(false, interval).await;
            }
            self.hold_wal_for_readers();
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    pub(super) async fn beat(&self, leaving: bool, timeout: Duration) {
        let beat = Heartbeat {
            leaving,
            replicated_lsn: self.replicated.get().map(|stats| stats.mirrored_lsn()),
        };
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
        {
            let mut leaving = self.leaving.lock().await;
            *leaving = true;
            self.beat(true, Duration::from_secs(1)).await;
        }
        if let Err(err) = self.raft.shutdown().await {
            tracing::warn!(error = %err, "Raft did not shut down cleanly");
        }
    }

    pub(super) fn record_heartbeat(&self, peer: &str, leaving: bool, replicated_lsn: Option<Lsn>) {
        self.health
            .lock()
            .unwrap()
            .record_heartbeat(peer, leaving, replicated_lsn, Instant::now());
    }

    /// `peer` was heard from, though not by a heartbeat.
    pub(super) fn record_contact(&self, peer: &str) {
        self.health
            .lock()
            .unwrap()
            .record_contact(peer, Instant::now());
    }

    /// Heartbeats from now on say how much of the writer's log this reader holds.
    pub fn report_replication(&self, stats: Arc<ReplicationStats>) {
        if self.replicated.set(stats).is_err() {
            tracing::warn!("replication was already being reported");
        }
    }
}
