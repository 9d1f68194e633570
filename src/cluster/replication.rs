//! The WAL stream on the coordinator port: a writer serves it, a reader opens it.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{Cluster, ClusterError, NodeState};
use crate::replication::{STREAM_PATH, StreamRequest, entry_stream};
use crate::wal::Feed;

impl Cluster {
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
    Body::from_stream(entry_stream(Arc::clone(feed), request.from_lsn)).into_response()
}
