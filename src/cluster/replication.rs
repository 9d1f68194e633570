//! Pattern B on the coordinator port: a writer serves its WAL stream and every node its copies
//! of manifest files; a reader opens the one and fetches the others.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use futures::{StreamExt, TryStreamExt};

use super::internal::Peer;
use super::protocol::Empty;
use super::{Cluster, ClusterError};
use crate::config::NodeRole;
use crate::replication::{ReaderPositions, ReaderStatus, STREAM_PATH, StreamRequest, entry_stream};
use crate::storage::Storage;
use crate::wal::{Feed, Lsn};

/// Coordinator-port path of a reader's acknowledgements.
pub const ACK_PATH: &str = "/internal/replication/ack";

/// A reader applied every entry through `applied_lsn`.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct AckRequest {
    pub applied_lsn: Lsn,
}

impl Cluster {
    /// The readers streaming (or that have streamed) from this writer, and how far behind each is.
    pub fn replication_readers(&self) -> Vec<ReaderStatus> {
        let Some(feed) = self.wal_feed.get() else {
            return Vec::new();
        };
        let durable = *feed.durable().borrow();
        self.stream_readers.status(durable)
    }

    /// Serves this node's durable WAL entries to readers from now on.
    pub fn serve_wal(&self, feed: Arc<Feed>) {
        if self.wal_feed.set(feed).is_err() {
            tracing::warn!("the WAL feed was already being served");
        }
    }

    /// The registered readers: those that stream the writer's log, by name, and how many do
    /// not (started without `cluster.replication_enabled`, they hold no write).
    pub fn registered_readers(&self) -> (HashSet<String>, usize) {
        let readers: Vec<String> = self
            .nodes()
            .into_iter()
            .filter(|n| n.role == NodeRole::Reader)
            .map(|n| n.id)
            .collect();
        let state = self.applied.state.read().unwrap();
        let (following, others): (HashSet<String>, HashSet<String>) = readers
            .into_iter()
            .partition(|name| state.nodes().get(name).is_some_and(|r| r.follows_writer));
        (following, others.len())
    }

    /// Where each reader's stream from this writer is.
    pub fn stream_positions(&self) -> &ReaderPositions {
        &self.stream_readers
    }

    /// Keeps the WAL segments the member readers still need (members only: a removed reader
    /// holds nothing).
    pub(super) fn hold_wal_for_readers(&self) {
        if let Some(feed) = self.wal_feed.get() {
            let members: HashSet<String> = self.nodes().into_iter().map(|n| n.id).collect();
            feed.hold_from(self.stream_readers.needed_from(&members));
        }
    }

    /// Tells the writer at `writer_addr` (a coordinator address) this reader applied every
    /// entry through `applied_lsn`.
    pub async fn ack_applied(
        &self,
        writer_addr: &str,
        applied_lsn: Lsn,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        let _: Empty = self
            .client
            .call(writer_addr, ACK_PATH, &AckRequest { applied_lsn }, timeout)
            .await
            .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        Ok(())
    }

    /// Opens the stream of the writer's entries from `request.from_lsn` on; returns the
    /// writer's name and coordinator address, and the response whose body carries the frames.
    pub async fn open_wal_stream(
        &self,
        request: &StreamRequest,
    ) -> Result<(String, String, reqwest::Response), ClusterError> {
        let assigned = self
            .writer_assignment()
            .node
            .ok_or_else(|| ClusterError::Unavailable("no writer is assigned".into()))?;
        let writer = self
            .nodes()
            .into_iter()
            .find(|n| n.id == assigned && !n.is_local)
            .ok_or_else(|| {
                ClusterError::Unavailable(format!("the writer {assigned} is not a peer"))
            })?;
        let response = self
            .client
            .open(&writer.address, STREAM_PATH, request, self.request_timeout)
            .await
            .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        Ok((writer.id, writer.address, response))
    }
}

/// `POST /internal/replication/wal`.
pub(super) async fn serve_stream(
    State(cluster): State<Arc<Cluster>>,
    Extension(Peer(reader)): Extension<Peer>,
    Json(request): Json<StreamRequest>,
) -> Response {
    let feed = cluster
        .wal_feed
        .get()
        .filter(|_| cluster.writes_under().is_some());
    let Some(feed) = feed else {
        let body = serde_json::json!({
            "error": format!(
                "node {} does not serve a WAL stream (not a writer, or replication is disabled)",
                cluster.name()
            )
        });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    };
    let stream = entry_stream(
        Arc::clone(feed),
        request.from_lsn,
        reader,
        Arc::clone(&cluster.stream_readers),
    );
    cluster.hold_wal_for_readers();
    Body::from_stream(stream).into_response()
}

/// `POST /internal/replication/ack`.
pub(super) async fn record_ack(
    State(cluster): State<Arc<Cluster>>,
    Extension(Peer(reader)): Extension<Peer>,
    Json(ack): Json<AckRequest>,
) -> Json<Empty> {
    cluster.stream_readers.acked(&reader, ack.applied_lsn);
    cluster.hold_wal_for_readers();
    Json(Empty {})
}

/// What a reader asks a peer for: one manifest file, from byte `offset` on (the rest of an
/// interrupted copy).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct FetchRequest {
    pub path: String,
    #[serde(default)]
    pub offset: u64,
}

impl Cluster {
    /// Serves this node's copies of manifest files to peers from now on.
    pub fn serve_files(&self, storage: Storage) {
        if self.file_storage.set(storage).is_err() {
            tracing::warn!("files were already being served");
        }
    }

    /// Asks the peer at `addr` (a coordinator address) for a manifest file from byte `offset`
    /// on; the response body carries those bytes.
    pub async fn fetch_file(
        &self,
        addr: &str,
        path: &str,
        offset: u64,
    ) -> Result<reqwest::Response, ClusterError> {
        let request = FetchRequest {
            path: path.to_owned(),
            offset,
        };
        self.client
            .open(addr, FETCH_PATH, &request, self.request_timeout)
            .await
            .map_err(|e| ClusterError::Unavailable(e.to_string()))
    }

    /// Other members' coordinator addresses, `origin` (a node name) first.
    pub fn file_sources(&self, origin: &str) -> Vec<(String, String)> {
        let mut peers: Vec<(String, String)> = self
            .nodes()
            .into_iter()
            .filter(|n| !n.is_local)
            .map(|n| (n.id, n.address))
            .collect();
        peers.sort_by_key(|(name, _)| name != origin);
        peers
    }

    /// Changes whenever this node applies metadata commands.
    pub fn applied_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.applied_index.subscribe()
    }
}

/// Coordinator-port path of file fetches.
pub const FETCH_PATH: &str = "/internal/files/fetch";

/// `POST /internal/files/fetch`: a live manifest file this node has, streamed as stored.
pub(super) async fn serve_file(
    State(cluster): State<Arc<Cluster>>,
    Json(request): Json<FetchRequest>,
) -> Response {
    let refuse = |status: StatusCode, message: String| {
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    };
    let Some(storage) = cluster.file_storage.get() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("node {} is not serving files yet", cluster.name()),
        );
    };
    // Only manifest files: a peer must not read anything else from this node's storage.
    let size = cluster
        .applied
        .state
        .read()
        .unwrap()
        .file(&request.path)
        .map(|f| f.size_bytes);
    let Some(size) = size else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("{} is not a live manifest file", request.path),
        );
    };
    if request.offset >= size {
        return refuse(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!(
                "offset {} is not inside {} ({size} bytes)",
                request.offset, request.path
            ),
        );
    }
    match storage.get_stream(&request.path, request.offset).await {
        Ok(stream) => {
            let served = stream
                .map_err(std::io::Error::other)
                .take_until(tokio::time::sleep(cluster.serve_timeout));
            Body::from_stream(served).into_response()
        }
        Err(err) => refuse(StatusCode::NOT_FOUND, err.to_string()),
    }
}
