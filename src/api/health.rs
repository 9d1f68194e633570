//! Liveness and readiness.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};

use super::{AppState, DRAINING, READY};

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// 200 whenever the process serves HTTP.
pub async fn health(State(state): State<Arc<AppState>>) -> Json<Value> {
    let uptime = state.started_at.elapsed();
    Json(json!({
        "status": "ok",
        "time": now(),
        "uptime": format!("{:.3}s", uptime.as_secs_f64()),
        "uptime_sec": uptime.as_secs_f64(),
        "started_at": state.started_wall.to_rfc3339_opts(SecondsFormat::Secs, true),
    }))
}

/// 200 once start-up (WAL replay) is done; 503 before that, while draining on shutdown, and
/// on a shared-storage writer that cannot take writes now (a load balancer's signal to route
/// around it).
pub async fn ready(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    let uptime_sec = state.started_at.elapsed().as_secs_f64();
    let cut_off = state
        .services()
        .ok()
        .and_then(|s| s.cluster.as_ref())
        .and_then(|cluster| cluster.cannot_take_writes());
    match state.phase.load(Ordering::SeqCst) {
        READY if cut_off.is_some() => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "not_ready", "time": now(), "reason": "cannot_take_writes",
                "message": cut_off,
            })),
        ),
        READY => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "time": now(), "uptime_sec": uptime_sec })),
        ),
        phase => {
            let reason = if phase == DRAINING {
                "shutting_down"
            } else {
                "starting"
            };
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "not_ready", "time": now(), "reason": reason })),
            )
        }
    }
}

/// 200 only on the node that accepts writes now (standalone, or the cluster's writer holding
/// its lease): for a load balancer's pool of write targets.
pub async fn ready_for_writes(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    let (ready, status) = ready(State(Arc::clone(&state))).await;
    if ready != StatusCode::OK {
        return (ready, status);
    }
    let refusal = match state.services().ok().and_then(|s| s.cluster.clone()) {
        None => None,
        Some(cluster) => cluster
            .check_write_lease()
            .err()
            .map(|e| e.to_string())
            .or_else(|| {
                (!cluster.takes_writes())
                    .then(|| format!("node {} is not a writer of the cluster", cluster.name()))
            }),
    };
    match refusal {
        None => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "accepts_writes": true, "time": now() })),
        ),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "not_ready",
                "accepts_writes": false,
                "reason": reason,
                "time": now(),
            })),
        ),
    }
}
