//! What the metrics endpoint reads from the cluster: Raft's state, the writer epoch, how far
//! each peer is behind the writer's log, and a count of leader changes.

use std::sync::Arc;

use tokio::sync::watch;

use super::Cluster;
use crate::metrics::{PeerLag, RaftLive, metrics};

impl Cluster {
    pub fn raft_live(&self) -> RaftLive {
        let raft = self.metrics();
        RaftLive {
            term: raft.current_term,
            is_leader: raft.current_leader == Some(self.local_id),
            has_leader: raft.current_leader.is_some(),
            last_log_index: raft.last_log_index.unwrap_or(0),
            // openraft applies an entry once it is committed, so this trails the commit index
            // only by the entries being applied.
            commit_index: raft.last_applied.map_or(0, |id| id.index),
        }
    }

    /// The epoch of the writer assignment; `None` with shared storage, which has none.
    pub fn writer_epoch(&self) -> Option<u64> {
        (!self.shared_storage).then(|| self.writer_assignment().epoch)
    }

    /// On the writer: each reader's distance from its durable log, as the reader last reported;
    /// on a reader: its own distance from the writer.
    pub fn replication_lag(&self) -> Vec<PeerLag> {
        if let Some(stats) = self.replicated.get() {
            let status = stats.status();
            return status
                .writer
                .map(|writer| PeerLag {
                    peer: writer,
                    entries: status.lag_entries,
                    seconds: Some(status.lag_seconds),
                })
                .into_iter()
                .collect();
        }
        let Some(feed) = self.wal_feed.get() else {
            return Vec::new();
        };
        let durable = *feed.durable().borrow();
        self.nodes()
            .into_iter()
            .filter(|node| !node.is_local)
            .filter_map(|node| {
                Some(PeerLag {
                    entries: durable.saturating_sub(node.replicated_lsn?),
                    peer: node.id,
                    seconds: None,
                })
            })
            .collect()
    }

    /// Counts each change of the Raft leader this node knows (to another leader or to none),
    /// until `stop` turns true.
    pub(super) async fn count_leader_changes(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut raft = self.raft.metrics();
        let mut leader = raft.borrow().current_leader;
        loop {
            tokio::select! {
                changed = raft.changed() => if changed.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
            let now = raft.borrow().current_leader;
            if now != leader {
                leader = now;
                metrics().cluster.leader_changes.inc();
            }
        }
    }
}
