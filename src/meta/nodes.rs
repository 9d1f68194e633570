//! The node registry in the replicated metadata: what each member of a cluster does. Raft
//! membership says who votes; this says who ingests, serves queries or compacts.
//!
//! On local storage (Pattern B) one node ingests: `apply` refuses a registration that would let
//! two nodes ingest, so two writers joining at once are ordered by the log and the second is
//! refused, and the writer assignment (node and epoch) says which one it is. With shared storage
//! (Pattern A) every writer is a peer: each numbers its own WAL and the manifest keeps a
//! flushed-through position per writer, so there is no writer assignment to fail over.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::NodeRole;

/// What a role lets a node do (the seeds' role table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    Ingest,
    Query,
    Compact,
}

pub fn role_can(role: NodeRole, capability: Capability) -> bool {
    match capability {
        Capability::Ingest => role.ingests(),
        Capability::Query => matches!(role, NodeRole::Standalone | NodeRole::Reader),
        Capability::Compact => role.compacts(),
    }
}

/// One registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub role: NodeRole,
    /// Coordinator address peers dial.
    pub coordinator_addr: String,
    /// HTTP API address client requests are forwarded to.
    pub api_addr: String,
    /// Started with `cluster.shared_storage_mode`: writers share one object store.
    pub shared_storage: bool,
    /// [`StorageConfig::identity`](crate::config::StorageConfig::identity): where its files live.
    #[serde(default)]
    pub storage: String,
    /// Its role was given by a failover, not by its configuration: it keeps it across restarts
    /// whatever its configuration says (writer or reader).
    #[serde(default)]
    pub role_from_failover: bool,
    /// Started with `cluster.replication_enabled` and without `cluster.shared_storage_mode`: as
    /// a reader it streams the writer's log, so `cluster.replication_ack` waits for it and a
    /// failover may promote it.
    /// Records from before this field are taken to follow (the stricter reading).
    #[serde(default = "follows_by_default")]
    pub follows_writer: bool,
}

fn follows_by_default() -> bool {
    true
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeError {
    #[error(
        "node {name} is registered as a {registered} but was started as a {requested}; \
         start it with its registered role, or remove it from the cluster first"
    )]
    RoleChanged {
        name: String,
        registered: NodeRole,
        requested: NodeRole,
    },
    #[error(
        "node {name} cannot join as a {role}: node {ingester} ({ingester_role}) already ingests, \
         and a cluster on local storage has one ingesting node (several writers share an object \
         store with cluster.shared_storage_mode = true)"
    )]
    SecondIngester {
        name: String,
        role: NodeRole,
        ingester: String,
        ingester_role: NodeRole,
    },
    #[error(
        "node {name} has cluster.shared_storage_mode = {requested}, but node {other} has {}",
        !requested
    )]
    StorageModeDiffers {
        name: String,
        requested: bool,
        other: String,
    },
    #[error(
        "node {name} keeps its files in {storage}, but node {other} in {other_storage}; \
         every node uses its own local disk, or all share one object store"
    )]
    StorageDiffers {
        name: String,
        storage: String,
        other: String,
        other_storage: String,
    },
    #[error(
        "promotion to writer epoch {requested} is stale: the writer epoch is already {current}"
    )]
    StaleEpoch { requested: u64, current: u64 },
    #[error(
        "node {name} ({role}) cannot hold the compaction lease: only a registered compactor or the writer can"
    )]
    CannotCompact { name: String, role: NodeRole },
    #[error("node {name} cannot be promoted to writer: {why}")]
    NotPromotable { name: String, why: String },
}

/// Which node takes the writes, under which epoch. The epoch grows by one with every
/// promotion, so whatever a replaced writer still sends carries an epoch that is no longer
/// current.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterAssignment {
    /// `None` before an ingesting node registered, and after the writer was removed.
    pub node: Option<String>,
    pub epoch: u64,
    pub last_failover: Option<Failover>,
}

/// One change of writer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    pub at_us: i64,
    pub from: Option<String>,
    pub to: String,
    pub reason: String,
}

/// Which node compacts, under which epoch: one at a time, and a replaced compactor's swaps
/// carry an epoch that is no longer current.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactorLease {
    /// `None` while no node able to compact is registered.
    pub node: Option<String>,
    pub epoch: u64,
    pub last_move: Option<Failover>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistry {
    nodes: BTreeMap<String, NodeRecord>,
    #[serde(default)]
    writer: WriterAssignment,
    #[serde(default)]
    compactor: CompactorLease,
}

impl NodeRegistry {
    /// Whether `name` may be registered as `record`: a node keeps its role across restarts (its
    /// addresses may change), all nodes agree on the storage mode, and on local storage at most
    /// one node ingests.
    pub fn check_register(&self, name: &str, record: &NodeRecord) -> Result<(), NodeError> {
        if let Some(existing) = self.nodes.get(name)
            && existing.role != record.role
        {
            return Err(NodeError::RoleChanged {
                name: name.to_owned(),
                registered: existing.role,
                requested: record.role,
            });
        }
        let others = self.nodes.iter().filter(|(other, _)| *other != name);
        for (other, existing) in others {
            if existing.shared_storage != record.shared_storage {
                return Err(NodeError::StorageModeDiffers {
                    name: name.to_owned(),
                    requested: record.shared_storage,
                    other: other.clone(),
                });
            }
            if !record.storage.is_empty()
                && !existing.storage.is_empty()
                && record.storage != existing.storage
            {
                return Err(NodeError::StorageDiffers {
                    name: name.to_owned(),
                    storage: record.storage.clone(),
                    other: other.clone(),
                    other_storage: existing.storage.clone(),
                });
            }
            if record.role.ingests() && existing.role.ingests() && !record.shared_storage {
                return Err(NodeError::SecondIngester {
                    name: name.to_owned(),
                    role: record.role,
                    ingester: other.clone(),
                    ingester_role: existing.role,
                });
            }
        }
        Ok(())
    }

    /// Registers `name`; on local storage the first ingesting node becomes the writer under
    /// epoch 1 (or the next epoch, after a writer was removed).
    pub fn register(&mut self, name: &str, record: &NodeRecord) {
        self.nodes.insert(name.to_owned(), record.clone());
        if record.role.ingests() && !record.shared_storage && self.writer.node.is_none() {
            self.writer.node = Some(name.to_owned());
            self.writer.epoch += 1;
        }
        if record.role == NodeRole::Compactor && self.compactor.node.is_none() {
            self.compactor.node = Some(name.to_owned());
            self.compactor.epoch += 1;
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.nodes.remove(name);
        if self.writer.node.as_deref() == Some(name) {
            self.writer.node = None;
        }
        if self.compactor.node.as_deref() == Some(name) {
            self.compactor.node = None;
        }
    }

    pub fn compactor(&self) -> &CompactorLease {
        &self.compactor
    }

    /// Whether `change.to` may hold the compaction lease under `epoch`, the one after the
    /// current: a dedicated compactor, or the writer when none is healthy.
    pub fn check_assign_compactor(&self, epoch: u64, change: &Failover) -> Result<(), NodeError> {
        if epoch != self.compactor.epoch + 1 {
            return Err(NodeError::StaleEpoch {
                requested: epoch,
                current: self.compactor.epoch,
            });
        }
        match self.nodes.get(&change.to) {
            Some(record) if matches!(record.role, NodeRole::Compactor | NodeRole::Writer) => Ok(()),
            Some(record) => Err(NodeError::CannotCompact {
                name: change.to.clone(),
                role: record.role,
            }),
            None => Err(NodeError::CannotCompact {
                name: change.to.clone(),
                role: NodeRole::Standalone,
            }),
        }
    }

    pub fn assign_compactor(&mut self, epoch: u64, change: &Failover) {
        self.compactor = CompactorLease {
            node: Some(change.to.clone()),
            epoch,
            last_move: Some(change.clone()),
        };
    }

    pub fn writer(&self) -> &WriterAssignment {
        &self.writer
    }

    /// Whether reader `name` may become the writer under `epoch`, the one after the current.
    pub fn check_promote(&self, name: &str, epoch: u64) -> Result<(), NodeError> {
        if epoch != self.writer.epoch + 1 {
            return Err(NodeError::StaleEpoch {
                requested: epoch,
                current: self.writer.epoch,
            });
        }
        let not_promotable = |why: String| NodeError::NotPromotable {
            name: name.to_owned(),
            why,
        };
        match self.nodes.get(name) {
            None => Err(not_promotable("it is not registered".into())),
            Some(record) if record.role != NodeRole::Reader => Err(not_promotable(format!(
                "it is a {}, and only a reader holds the writer's log",
                record.role
            ))),
            Some(record) if !record.follows_writer => Err(not_promotable(
                "it does not stream the writer's log (cluster.replication_enabled is off)".into(),
            )),
            Some(_) => Ok(()),
        }
    }

    /// Makes `failover.to` the writer under `epoch`; the previous writer becomes a reader.
    pub fn promote(&mut self, epoch: u64, failover: &Failover) {
        if let Some(previous) = self
            .writer
            .node
            .as_ref()
            .and_then(|n| self.nodes.get_mut(n))
        {
            previous.role = NodeRole::Reader;
            previous.role_from_failover = true;
        }
        if let Some(promoted) = self.nodes.get_mut(&failover.to) {
            promoted.role = NodeRole::Writer;
            promoted.role_from_failover = true;
        }
        self.writer = WriterAssignment {
            node: Some(failover.to.clone()),
            epoch,
            last_failover: Some(failover.clone()),
        };
    }

    pub fn get(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.get(name)
    }

    /// How many registered nodes have `role`.
    pub fn count(&self, role: NodeRole) -> usize {
        self.nodes.values().filter(|n| n.role == role).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(role: NodeRole) -> NodeRecord {
        NodeRecord {
            role,
            coordinator_addr: "node:9000".into(),
            api_addr: "node:8000".into(),
            shared_storage: false,
            storage: "local".into(),
            role_from_failover: false,
            follows_writer: true,
        }
    }

    fn registry(nodes: &[(&str, NodeRecord)]) -> NodeRegistry {
        let mut registry = NodeRegistry::default();
        for (name, node) in nodes {
            registry.register(name, node);
        }
        registry
    }

    #[test]
    fn only_one_node_ingests() {
        let cluster = registry(&[
            ("writer-01", record(NodeRole::Writer)),
            ("reader-01", record(NodeRole::Reader)),
        ]);
        for role in [NodeRole::Writer, NodeRole::Standalone] {
            let refused = cluster.check_register("other", &record(role)).unwrap_err();
            assert!(
                matches!(&refused, NodeError::SecondIngester { ingester, .. } if ingester == "writer-01"),
                "{refused}"
            );
        }
        for role in [NodeRole::Reader, NodeRole::Compactor] {
            assert_eq!(cluster.check_register("other", &record(role)), Ok(()));
        }
        let moved = NodeRecord {
            api_addr: "elsewhere:8000".into(),
            ..record(NodeRole::Writer)
        };
        assert_eq!(cluster.check_register("writer-01", &moved), Ok(()));
    }

    #[test]
    fn every_node_has_the_same_storage_mode_and_writers_sharing_a_store_are_peers() {
        let shared = |role| NodeRecord {
            shared_storage: true,
            ..record(role)
        };
        let cluster = registry(&[("writer-01", shared(NodeRole::Writer))]);
        assert_eq!(
            cluster.check_register("reader-01", &shared(NodeRole::Reader)),
            Ok(())
        );
        let refused = cluster
            .check_register("reader-01", &record(NodeRole::Reader))
            .unwrap_err();
        assert!(
            matches!(refused, NodeError::StorageModeDiffers { .. }),
            "{refused}"
        );
        let mut cluster = cluster;
        for writer in ["writer-02", "writer-03"] {
            let record = shared(NodeRole::Writer);
            assert_eq!(cluster.check_register(writer, &record), Ok(()));
            cluster.register(writer, &record);
        }
        // Peers: no writer assignment, so nothing to fail over and no epoch to fence with.
        assert_eq!(cluster.writer(), &WriterAssignment::default());
        let refused = cluster
            .check_register("writer-04", &record(NodeRole::Writer))
            .unwrap_err();
        assert!(
            matches!(refused, NodeError::StorageModeDiffers { .. }),
            "{refused}"
        );
    }

    #[test]
    fn every_node_keeps_its_files_in_the_same_kind_of_place() {
        let cluster = registry(&[("writer-01", record(NodeRole::Writer))]);
        let on_s3 = NodeRecord {
            storage: "s3://garage/arc/".into(),
            ..record(NodeRole::Reader)
        };
        let refused = cluster.check_register("reader-01", &on_s3).unwrap_err();
        assert!(
            matches!(refused, NodeError::StorageDiffers { .. }),
            "{refused}"
        );
        assert_eq!(
            cluster.check_register("reader-01", &record(NodeRole::Reader)),
            Ok(())
        );
    }

    #[test]
    fn a_node_keeps_its_role_across_restarts_until_it_is_removed() {
        let mut cluster = registry(&[("reader-01", record(NodeRole::Reader))]);
        let refused = cluster
            .check_register("reader-01", &record(NodeRole::Writer))
            .unwrap_err();
        assert!(
            refused.to_string().contains("registered as a reader"),
            "{refused}"
        );
        cluster.remove("reader-01");
        assert_eq!(
            cluster.check_register("reader-01", &record(NodeRole::Writer)),
            Ok(())
        );
    }

    #[test]
    fn a_promotion_takes_the_next_epoch_and_swaps_the_writer_and_the_reader() {
        let mut cluster = registry(&[
            ("writer-01", record(NodeRole::Writer)),
            ("reader-01", record(NodeRole::Reader)),
            ("compactor-01", record(NodeRole::Compactor)),
        ]);
        assert_eq!(cluster.writer().node.as_deref(), Some("writer-01"));
        assert_eq!(cluster.writer().epoch, 1);
        for (name, epoch) in [("reader-01", 1), ("reader-01", 3)] {
            let refused = cluster.check_promote(name, epoch).unwrap_err();
            assert!(
                matches!(refused, NodeError::StaleEpoch { current: 1, .. }),
                "{refused}"
            );
        }
        cluster.register(
            "reader-02",
            &NodeRecord {
                follows_writer: false,
                ..record(NodeRole::Reader)
            },
        );
        for name in ["writer-01", "compactor-01", "nobody", "reader-02"] {
            let refused = cluster.check_promote(name, 2).unwrap_err();
            assert!(
                matches!(refused, NodeError::NotPromotable { .. }),
                "{refused}"
            );
        }
        assert_eq!(cluster.check_promote("reader-01", 2), Ok(()));
        let failover = Failover {
            at_us: 7,
            from: Some("writer-01".into()),
            to: "reader-01".into(),
            reason: "writer-01 unhealthy for 30s".into(),
        };
        cluster.promote(2, &failover);
        assert_eq!(cluster.writer().node.as_deref(), Some("reader-01"));
        assert_eq!(cluster.writer().epoch, 2);
        assert_eq!(cluster.writer().last_failover.as_ref(), Some(&failover));
        assert_eq!(cluster.get("reader-01").unwrap().role, NodeRole::Writer);
        assert_eq!(cluster.get("writer-01").unwrap().role, NodeRole::Reader);
        assert!(cluster.get("writer-01").unwrap().role_from_failover);
        // Still one ingesting node: the old writer cannot come back as a second one.
        assert!(matches!(
            cluster.check_register("writer-01", &record(NodeRole::Writer)),
            Err(NodeError::RoleChanged { .. })
        ));
    }

    #[test]
    fn a_record_from_before_follows_writer_is_taken_to_follow() {
        let old = r#"{"role":"reader","coordinator_addr":"r:9000","api_addr":"r:8000","shared_storage":false}"#;
        let record: NodeRecord = serde_json::from_str(old).unwrap();
        assert!(record.follows_writer);
    }

    #[test]
    fn the_first_ingesting_node_is_the_writer_and_a_removed_one_frees_the_epoch() {
        let mut cluster = registry(&[("reader-01", record(NodeRole::Reader))]);
        assert_eq!(cluster.writer(), &WriterAssignment::default());
        cluster.register("writer-01", &record(NodeRole::Writer));
        assert_eq!(cluster.writer().node.as_deref(), Some("writer-01"));
        // A restart re-registers; the assignment stays.
        cluster.register("writer-01", &record(NodeRole::Writer));
        assert_eq!(cluster.writer().epoch, 1);
        cluster.remove("writer-01");
        assert_eq!(cluster.writer().node, None);
        cluster.register("writer-02", &record(NodeRole::Writer));
        assert_eq!(cluster.writer().node.as_deref(), Some("writer-02"));
        assert_eq!(cluster.writer().epoch, 2);
    }

    #[test]
    fn roles_serve_what_the_role_table_says() {
        use Capability::*;
        let table = [
            (NodeRole::Writer, [true, false, false]),
            (NodeRole::Reader, [false, true, false]),
            (NodeRole::Compactor, [false, false, true]),
            (NodeRole::Standalone, [true, true, true]),
        ];
        for (role, expected) in table {
            let got = [Ingest, Query, Compact].map(|c| role_can(role, c));
            assert_eq!(got, expected, "{role}");
        }
    }
}
