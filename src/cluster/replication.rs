//! Pattern B on the coordinator port: a writer serves its WAL stream and every node its copies
//! of manifest files; a reader opens the one and fetches the others.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use futures::TryStreamExt;

use super::internal::Peer;
use super::{Cluster, ClusterError, NodeState};
use crate::replication::{ReaderStatus, STREAM_PATH, StreamRequest, entry_stream};
use crate::storage::Storage;
use crate::wal::Feed;

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

    /// Opens the stream of the writer's entries from `request.from_lsn` on; returns the
    /// writer's name and the response whose body carries the frames.
    pub async fn open_wal_stream(
        &self,
        request: &StreamRequest,
    ) -> Result<(String, reqwest::Response), ClusterError> {
        let mut writers: Vec<_> = self
            .nodes()
            .into_iter()
            .filter(|n| !n.is_local && n.role.ingests())
            .collect();
        // A healthy writer first; an unhealthy one may only be slow.
        writers.sort_by_key(|n| n.state != NodeState::Healthy);
        let writer = writers
            .into_iter()
            .next()
            .ok_or_else(|| ClusterError::Unavailable("no writer is registered".into()))?;
        let response = self
            .client
            .open(&writer.address, STREAM_PATH, request, self.request_timeout)
            .await
            .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        Ok((writer.id, response))
    }
}

/// `POST /internal/replication/wal`.
pub(super) async fn serve_stream(
    State(cluster): State<Arc<Cluster>>,
    Extension(Peer(reader)): Extension<Peer>,
    Json(request): Json<StreamRequest>,
) -> Response {
    let Some(feed) = cluster.wal_feed.get() else {
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
    Body::from_stream(stream).into_response()
}

/// What a reader asks a peer for: one manifest file.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct FetchRequest {
    pub path: String,
}

impl Cluster {
    /// Serves this node's copies of manifest files to peers from now on.
    pub fn serve_files(&self, storage: Storage) {
        if self.file_storage.set(storage).is_err() {
            tracing::warn!("files were already being served");
        }
    }

    /// Asks the peer at `addr` (a coordinator address) for a manifest file; the response body
    /// carries its bytes.
    pub async fn fetch_file(
        &self,
        addr: &str,
        path: &str,
    ) -> Result<reqwest::Response, ClusterError> {
        let request = FetchRequest {
            path: path.to_owned(),
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
    let live = cluster
        .applied
        .state
        .read()
        .unwrap()
        .file(&request.path)
        .is_some();
    if !live {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("{} is not a live manifest file", request.path),
        );
    }
    match storage.get_stream(&request.path).await {
        Ok(stream) => Body::from_stream(stream.map_err(std::io::Error::other)).into_response(),
        Err(err) => refuse(StatusCode::NOT_FOUND, err.to_string()),
    }
}
