//! `/api/v1/cluster`: membership, health and Raft status (admin only), and the routing of
//! requests a node's role cannot serve to a node whose role can.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, to_bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::cluster::{
    Capability, Cluster, ClusterError, FORWARDED_HEADER, NodeState, NodeStatus, SwitchoverError,
    role_can,
};
use crate::config::NodeRole;
use crate::replication::CatchupStatus;

fn cluster(state: &AppState) -> Result<&Arc<Cluster>, ApiError> {
    state.services()?.cluster.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "cluster mode is not enabled (cluster.enabled is false)",
        )
    })
}

fn ok(data: Value) -> Json<Value> {
    Json(json!({ "success": true, "data": data }))
}

fn capabilities(role: NodeRole) -> Value {
    json!({
        "can_ingest": role_can(role, Capability::Ingest),
        "can_query": role_can(role, Capability::Query),
        "can_compact": role_can(role, Capability::Compact),
        "can_coordinate": role == NodeRole::Writer,
    })
}

/// `GET /api/v1/cluster`.
pub async fn overview(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let services = state.services()?;
    let Some(cluster) = &services.cluster else {
        return Ok(ok(json!({
            "enabled": false,
            "mode": "standalone",
            "reason": "cluster.enabled is false",
        })));
    };
    let nodes = cluster.nodes();
    let count = |role: NodeRole| nodes.iter().filter(|n| n.role == role).count();
    let raft = cluster.raft_status();
    Ok(ok(json!({
        "enabled": true,
        "mode": "cluster",
        "cluster_name": cluster.cluster_name(),
        "local_node_id": cluster.name(),
        "local_role": cluster.role(),
        "node_count": nodes.len(),
        "healthy_nodes": nodes.iter().filter(|n| n.state == NodeState::Healthy).count(),
        "roles": {
            "writer": count(NodeRole::Writer),
            "reader": count(NodeRole::Reader),
            "compactor": count(NodeRole::Compactor),
        },
        "leader": raft.leader_id,
        "raft": raft,
        "writer": services.meta.state().nodes().writer().clone(),
        "compactor": compactor_overview(&services.meta.state()),
        "replication_catchup_status": services.replication.as_ref().map(|r| r.catchup_status()),
    })))
}

/// The compaction lease, and whether any node could compact at all.
fn compactor_overview(state: &crate::meta::MetaState) -> Value {
    let lease = state.nodes().compactor();
    json!({
        "node": lease.node,
        "epoch": lease.epoch,
        "last_move": lease.last_move,
        "status": if lease.node.is_some() {
            "assigned"
        } else {
            "no node compacts: no compactor is registered (the writer takes the lease only from a compactor that failed)"
        },
    })
}

/// Holds queries back with the seeds' 503 while a reader's start-up catch-up has not settled
/// (`cluster.query_gate_on_catchup`), so no query answers from a partial set of files; after
/// that, each query first passes the read barrier (it waits until the reader holds everything
/// the manifest held when the query began, or answers the same 503).
pub async fn catch_up_gate(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(services) = state.services().ok() else {
        return next.run(request).await;
    };
    let Some(replication) = services.replication.as_ref() else {
        return next.run(request).await;
    };
    if let Some(catchup_status) = replication.gate_closed() {
        return catching_up(
            "Reader is still catching up on replicated files. Retry shortly or check /api/v1/cluster for catch-up progress.",
            catchup_status,
        );
    }
    if let Some(barrier) = &services.read_barrier
        && let Err(err) = barrier.wait().await
    {
        replication.barrier_refused(&err);
        return catching_up(
            &format!("Reader has not caught up with the manifest: {err}. Retry shortly."),
            replication.catchup_status(),
        );
    }
    next.run(request).await
}

/// The seeds' 503 for a reader that cannot answer completely yet.
fn catching_up(message: &str, catchup_status: CatchupStatus) -> Response {
    let body = json!({
        "success": false,
        "error": "replication_catch_up_in_progress",
        "message": message,
        "catchup_status": catchup_status,
    });
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    response
}

#[derive(Debug, Deserialize)]
pub struct NodeFilter {
    role: Option<String>,
    state: Option<String>,
}

/// `GET /api/v1/cluster/nodes?role=&state=`.
pub async fn nodes(
    State(state): State<Arc<AppState>>,
    Query(filter): Query<NodeFilter>,
) -> Result<Json<Value>, ApiError> {
    let cluster = cluster(&state)?;
    let role = match filter.role.as_deref() {
        None => None,
        Some(text) => Some(
            serde_json::from_value::<NodeRole>(Value::String(text.to_owned())).map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("invalid role '{text}': use writer, reader, compactor or standalone"),
                )
            })?,
        ),
    };
    let wanted_state = match filter.state.as_deref() {
        None => None,
        Some(text) => Some(
            NodeState::ALL
                .into_iter()
                .find(|s| s.as_str() == text)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "invalid state '{text}': use healthy, unhealthy, dead, joining or leaving"
                        ),
                    )
                })?,
        ),
    };
    let nodes: Vec<NodeStatus> = cluster
        .nodes()
        .into_iter()
        .filter(|n| role.is_none_or(|r| n.role == r))
        .filter(|n| wanted_state.is_none_or(|s| n.state == s))
        .collect();
    let total = nodes.len();
    Ok(Json(
        json!({ "success": true, "data": nodes, "total": total }),
    ))
}

/// `GET /api/v1/cluster/nodes/{id}`.
pub async fn node(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let cluster = cluster(&state)?;
    let node = cluster
        .nodes()
        .into_iter()
        .find(|n| n.id == id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "Node not found"))?;
    Ok(ok(json!(node)))
}

/// `GET /api/v1/cluster/local`.
pub async fn local(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let cluster = cluster(&state)?;
    let node = cluster
        .nodes()
        .into_iter()
        .find(|n| n.is_local)
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not a member yet"))?;
    let mut data = json!(node);
    data["capabilities"] = capabilities(cluster.role());
    Ok(ok(data))
}

/// `GET /api/v1/cluster/health`.
pub async fn health(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let cluster = cluster(&state)?;
    let nodes = cluster.nodes();
    let healthy = nodes
        .iter()
        .filter(|n| n.state == NodeState::Healthy)
        .count();
    let status = if cluster.raft_status().leader_id.is_none() {
        "unhealthy"
    } else if healthy == nodes.len() {
        "healthy"
    } else {
        "degraded"
    };
    Ok(ok(json!({
        "status": status,
        "node_id": cluster.name(),
        "role": cluster.role(),
        "cluster_name": cluster.cluster_name(),
        "healthy": healthy,
        "unhealthy": nodes.len() - healthy,
        "total": nodes.len(),
    })))
}

/// `GET /api/v1/cluster/status`: this node's Raft view.
pub async fn status(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let cluster = cluster(&state)?;
    let replication = state.services()?.replication.as_ref().map(|r| r.status());
    Ok(ok(json!({
        "node_id": cluster.name(),
        "role": cluster.role(),
        "cluster_name": cluster.cluster_name(),
        "raft": cluster.raft_status(),
        "replication": replication,
        "replication_readers": cluster.replication_readers(),
    })))
}

fn switchover_error(err: SwitchoverError) -> ApiError {
    let status = match err {
        SwitchoverError::UnknownNode(_) => StatusCode::NOT_FOUND,
        SwitchoverError::Refused(_) => StatusCode::BAD_REQUEST,
        SwitchoverError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, err.to_string())
}

/// Moves the writes from `from` (`None`: the writer) to `to` (`None`: the most caught-up
/// healthy reader).
async fn switch_writer(
    state: &AppState,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<Json<Value>, ApiError> {
    let (writer, epoch) = cluster(state)?
        .switch_writer(from, to)
        .await
        .map_err(switchover_error)?;
    Ok(ok(json!({ "writer": writer, "epoch": epoch })))
}

/// `POST /api/v1/cluster/writers/{id}/promote`: reader `id` takes over the writes once it holds
/// the writer's whole log.
pub async fn promote_writer(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    switch_writer(&state, None, Some(&id)).await
}

/// `POST /api/v1/cluster/writers/{id}/demote`: writer `id` hands the writes to the most
/// caught-up healthy reader.
pub async fn demote_writer(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    switch_writer(&state, Some(&id), None).await
}

#[derive(Debug, Deserialize)]
pub struct CompactorAssignment {
    node_id: String,
}

/// `POST /api/v1/cluster/compactor/assign {"node_id"}`: moves the compaction lease; a job still
/// running on the previous holder cannot swap its output in.
pub async fn assign_compactor(
    State(state): State<Arc<AppState>>,
    body: Result<Json<CompactorAssignment>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let cluster = cluster(&state)?;
    let Json(assignment) = body.map_err(|err| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"node_id\": \"<node>\"}}: {}", err.body_text()),
        )
    })?;
    let epoch = cluster
        .assign_compactor(&assignment.node_id)
        .await
        .map_err(switchover_error)?;
    Ok(ok(json!({ "node_id": assignment.node_id, "epoch": epoch })))
}

/// `DELETE /api/v1/cluster/nodes/{id}`.
pub async fn remove_node(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let cluster = cluster(&state)?;
    cluster.remove_node(&id).await.map_err(|err| {
        let status = match err {
            ClusterError::UnknownNode(_) => StatusCode::NOT_FOUND,
            ClusterError::RemoveSelf => StatusCode::BAD_REQUEST,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, err.to_string())
    })?;
    Ok(Json(json!({
        "success": true,
        "message": format!("node {id} removed from the cluster"),
        "node_id": id,
    })))
}

/// Serves the request here when this node's role can, else forwards it to a healthy node whose
/// role can, trying another such node where [`may_try_another`] allows. A request that was
/// already forwarded is never forwarded again.
pub async fn route_by_role(
    State((state, capability)): State<(Arc<AppState>, Capability)>,
    request: Request,
    next: Next,
) -> Response {
    let Some(cluster) = state.services().ok().and_then(|s| s.cluster.clone()) else {
        return next.run(request).await;
    };
    if cluster.serves(capability) {
        return next.run(request).await;
    }
    if let Some(from) = request.headers().get(FORWARDED_HEADER) {
        let from = String::from_utf8_lossy(from.as_bytes()).into_owned();
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "node {} ({}) cannot serve this request, forwarded here by {from}",
                cluster.name(),
                cluster.role()
            ),
        )
        .into_response();
    }
    forward(&cluster, capability, request, state.max_payload_bytes)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// How one attempt to forward a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ForwardFailure {
    /// No connection was made: the target cannot have seen the request.
    NotConnected,
    /// No answer within `cluster.route_timeout`: the target may have taken the request.
    TimedOut,
    /// The connection broke after the request was sent.
    Broken,
}

impl ForwardFailure {
    fn of(err: &reqwest::Error) -> ForwardFailure {
        if err.is_connect() {
            ForwardFailure::NotConnected
        } else if err.is_timeout() {
            ForwardFailure::TimedOut
        } else {
            ForwardFailure::Broken
        }
    }

    fn status(self) -> StatusCode {
        match self {
            ForwardFailure::NotConnected => StatusCode::SERVICE_UNAVAILABLE,
            ForwardFailure::TimedOut => StatusCode::GATEWAY_TIMEOUT,
            ForwardFailure::Broken => StatusCode::BAD_GATEWAY,
        }
    }
}

/// Pure: whether a request whose forwarding failed this way may be sent to another node. A
/// write that may have reached its target is never sent again, since it could be stored twice;
/// a query changes nothing and can be asked anywhere.
fn may_try_another(failure: ForwardFailure, capability: Capability) -> bool {
    failure == ForwardFailure::NotConnected || capability == Capability::Query
}

async fn forward(
    cluster: &Cluster,
    capability: Capability,
    request: Request,
    max_body: usize,
) -> Result<Response, ApiError> {
    let targets = cluster.nodes_for(capability);
    if targets.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no healthy node can serve this request (this node is a {})",
                cluster.role()
            ),
        ));
    }
    let (parts, body) = request.into_parts();
    let body = to_bytes(body, max_body)
        .await
        .map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"))?;
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut headers = parts.headers;
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    let deadline = cluster.route_timeout();
    let attempts = targets.len().min(1 + cluster.route_retries() as usize);
    let mut failures = Vec::new();
    for target in &targets[..attempts] {
        let sent = cluster
            .http_client()
            .request(
                parts.method.clone(),
                format!("http://{}{path}", target.api_address),
            )
            .headers(headers.clone())
            .header(FORWARDED_HEADER, cluster.name())
            .body(body.clone())
            .send();
        let failure = match tokio::time::timeout(deadline, sent).await {
            Ok(Ok(answer)) => return Ok(relay(answer, deadline)),
            Ok(Err(err)) => (ForwardFailure::of(&err), err.to_string()),
            Err(_) => (
                ForwardFailure::TimedOut,
                format!("no answer within {} ms", deadline.as_millis()),
            ),
        };
        tracing::warn!(node = %target.id, error = %failure.1, "forwarding failed");
        failures.push(format!("node {}: {}", target.id, failure.1));
        if !may_try_another(failure.0, capability) {
            return Err(forward_error(failure.0, &failures));
        }
    }
    Err(forward_error(ForwardFailure::NotConnected, &failures))
}

fn forward_error(failure: ForwardFailure, failures: &[String]) -> ApiError {
    ApiError::new(
        failure.status(),
        format!("forwarding failed ({})", failures.join("; ")),
    )
}

/// The target's answer as this node's response; the body is relayed as it arrives, and a target
/// that goes silent mid-answer for longer than `idle` cuts the response off.
fn relay(answer: reqwest::Response, idle: Duration) -> Response {
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name != header::TRANSFER_ENCODING && name != header::CONNECTION {
            response = response.header(name, value);
        }
    }
    let chunks = futures::stream::unfold(Some(answer), move |answer| async move {
        let mut answer = answer?;
        match tokio::time::timeout(idle, answer.chunk()).await {
            Ok(Ok(Some(chunk))) => Some((Ok(chunk), Some(answer))),
            Ok(Ok(None)) => None,
            Ok(Err(err)) => Some((Err(std::io::Error::other(err)), None)),
            Err(_) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "forwarded answer stalled",
                )),
                None,
            )),
        }
    });
    response
        .body(Body::from_stream(chunks))
        .expect("copied status and headers are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_request_that_cannot_have_been_taken_is_sent_to_another_writer() {
        use ForwardFailure::*;
        assert!(may_try_another(NotConnected, Capability::Ingest));
        assert!(!may_try_another(TimedOut, Capability::Ingest));
        assert!(!may_try_another(Broken, Capability::Ingest));
        assert!(!may_try_another(TimedOut, Capability::Compact));
        for failure in [NotConnected, TimedOut, Broken] {
            assert!(may_try_another(failure, Capability::Query));
        }
        assert_eq!(NotConnected.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(TimedOut.status(), StatusCode::GATEWAY_TIMEOUT);
    }
}
