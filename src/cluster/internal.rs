//! The coordinator port: Raft RPCs, join, forwarded metadata changes, heartbeats and removal.
//! Every request is authenticated from its headers before its body is read, and the requests
//! in progress are bounded; refusals are logged as refused.

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::{Extension, Json, Router};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::Cluster;
use super::network::{RAFT_APPEND_PATH, RAFT_SNAPSHOT_PATH, RAFT_VOTE_PATH};
use super::peer_auth::{PeerAuth, SignedHeaders};
use super::protocol::{
    Applied, BARRIER_PATH, Empty, FORWARD_PATH, ForwardRequest, HEARTBEAT_PATH, Heartbeat,
    JOIN_PATH, JoinAnswer, JoinRequest, LeaderAnswer, REMOVE_PATH, RemoveRequest,
};
use super::types::{RaftId, TypeConfig};
use crate::replication::STREAM_PATH;

/// Largest internal request body (snapshot chunks are far smaller).
const MAX_BODY_BYTES: usize = 64 << 20;

/// Internal requests served at once; more are refused with 503 and retried by their sender (Raft
/// sends one request per peer at a time, so a healthy cluster stays far below this).
const MAX_IN_PROGRESS: usize = 256;

/// The authenticated sender of an internal request.
#[derive(Debug, Clone)]
pub(super) struct Peer(pub(super) String);

pub async fn serve(cluster: Arc<Cluster>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let router = Router::new()
        .route(RAFT_APPEND_PATH, post(append))
        .route(RAFT_VOTE_PATH, post(vote))
        .route(RAFT_SNAPSHOT_PATH, post(snapshot))
        .route(JOIN_PATH, post(join))
        .route(FORWARD_PATH, post(forward))
        .route(BARRIER_PATH, post(barrier))
        .route(HEARTBEAT_PATH, post(heartbeat))
        .route(REMOVE_PATH, post(remove))
        .route(STREAM_PATH, post(super::replication::serve_stream))
        .route(
            super::protocol::POSITION_PATH,
            post(super::failover::serve_position),
        )
        .route(
            super::protocol::STEP_DOWN_PATH,
            post(super::switchover::serve_step_down),
        )
        .route(
            super::protocol::FLUSH_PATH,
            post(super::shared_writers::serve_flush),
        )
        .route(
            super::protocol::WRITE_PATH,
            post(super::shared_writers::serve_write),
        )
        .route(
            super::replication::ACK_PATH,
            post(super::replication::record_ack),
        )
        .route(
            super::replication::FETCH_PATH,
            post(super::replication::serve_file),
        )
        .layer(axum::middleware::from_fn_with_state(
            (
                Arc::clone(&cluster),
                Arc::new(Semaphore::new(MAX_IN_PROGRESS)),
            ),
            authenticate,
        ))
        .with_state(cluster);
    let served = axum::serve(listener.tap_io(crate::node::no_delay), router)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(err) = served {
        tracing::error!(error = %err, "coordinator port failed");
    }
}

async fn authenticate(
    State((cluster, in_progress)): State<(Arc<Cluster>, Arc<Semaphore>)>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(_permit) = in_progress.try_acquire() else {
        let body = serde_json::json!({ "error": "too many internal requests in progress" });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    };
    let (parts, body) = request.into_parts();
    let headers = SignedHeaders::from_headers(&parts.headers);
    let path = parts.uri.path().to_owned();
    let now = chrono::Utc::now().timestamp();
    let checked = match cluster.auth.verify_headers(headers.as_ref(), &path, now) {
        Ok(verified) => match to_bytes(body, MAX_BODY_BYTES).await {
            Ok(bytes) => PeerAuth::verify_body(verified, &bytes).map(|()| bytes),
            Err(_) => {
                let body = serde_json::json!({ "error": "body too large" });
                return (StatusCode::PAYLOAD_TOO_LARGE, Json(body)).into_response();
            }
        },
        Err(refusal) => Err(refusal),
    };
    match checked {
        Ok(bytes) => {
            let sender = headers.map(|h| h.node).unwrap_or_default();
            let mut request = Request::from_parts(parts, Body::from(bytes));
            request.extensions_mut().insert(Peer(sender));
            next.run(request).await
        }
        Err(refusal) => {
            let claimed = headers.map(|h| h.node).unwrap_or_default();
            tracing::warn!(peer = %claimed, %path, reason = %refusal, "refused internal request");
            let body = serde_json::json!({ "error": refusal.to_string() });
            (StatusCode::UNAUTHORIZED, Json(body)).into_response()
        }
    }
}

async fn append(
    State(cluster): State<Arc<Cluster>>,
    Json(request): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<RaftId>, RaftError<RaftId>>> {
    Json(cluster.raft.append_entries(request).await)
}

async fn vote(
    State(cluster): State<Arc<Cluster>>,
    Json(request): Json<VoteRequest<RaftId>>,
) -> Json<Result<VoteResponse<RaftId>, RaftError<RaftId>>> {
    Json(cluster.raft.vote(request).await)
}

async fn snapshot(
    State(cluster): State<Arc<Cluster>>,
    Json(request): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Json<Result<InstallSnapshotResponse<RaftId>, RaftError<RaftId, InstallSnapshotError>>> {
    Json(cluster.raft.install_snapshot(request).await)
}

async fn join(
    State(cluster): State<Arc<Cluster>>,
    Extension(Peer(sender)): Extension<Peer>,
    Json(request): Json<JoinRequest>,
) -> Json<JoinAnswer> {
    if request.node.name != sender {
        return Json(JoinAnswer::Refused {
            reason: format!(
                "request signed by {sender} asks to join as {}",
                request.node.name
            ),
        });
    }
    if !cluster.is_leader() {
        return Json(JoinAnswer::NotLeader {
            leader: cluster.leader(),
        });
    }
    Json(cluster.admit(request.node).await)
}

async fn forward(
    State(cluster): State<Arc<Cluster>>,
    Json(request): Json<ForwardRequest>,
) -> Json<LeaderAnswer<Applied>> {
    if !cluster.is_leader() {
        return Json(LeaderAnswer::NotLeader {
            leader: cluster.leader(),
        });
    }
    Json(
        cluster
            .write_as_leader(request.command, cluster.request_timeout)
            .await,
    )
}

async fn barrier(
    State(cluster): State<Arc<Cluster>>,
    Extension(Peer(sender)): Extension<Peer>,
) -> Json<LeaderAnswer<u64>> {
    // A writer renews its lease this way: the leader must count it as heard from.
    cluster.record_contact(&sender);
    if !cluster.is_leader() {
        return Json(LeaderAnswer::NotLeader {
            leader: cluster.leader(),
        });
    }
    Json(cluster.read_index_as_leader().await)
}

async fn heartbeat(
    State(cluster): State<Arc<Cluster>>,
    Extension(Peer(sender)): Extension<Peer>,
    Json(beat): Json<Heartbeat>,
) -> Json<Empty> {
    cluster.record_heartbeat(&sender, beat.leaving, beat.replicated_lsn);
    Json(Empty {})
}

async fn remove(
    State(cluster): State<Arc<Cluster>>,
    Json(request): Json<RemoveRequest>,
) -> Json<LeaderAnswer<bool>> {
    if !cluster.is_leader() {
        return Json(LeaderAnswer::NotLeader {
            leader: cluster.leader(),
        });
    }
    Json(cluster.remove_as_leader(&request.name).await)
}
