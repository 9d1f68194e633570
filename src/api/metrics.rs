//! Metrics endpoints: Prometheus text, and Arc's JSON snapshots of the same values.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::metrics::{BufferLive, Live, PullerLive, metrics, resident_memory_bytes, samples};

use super::AppState;

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`: Prometheus text, or the JSON snapshot when `Accept` is exactly
/// `application/json` (as Arc does).
pub async fn prometheus(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let text = metrics().render(&live(&state));
    let wants_json = headers
        .get(header::ACCEPT)
        .is_some_and(|accept| accept.as_bytes() == b"application/json");
    if wants_json {
        return Json(snapshot(&text)).into_response();
    }
    ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], text).into_response()
}

/// `GET /api/v1/metrics`: every sample by name, plus the time.
pub async fn json(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut snapshot = snapshot(&metrics().render(&live(&state)));
    snapshot["timestamp"] = json!(now());
    Json(snapshot)
}

/// `GET /api/v1/metrics/endpoints`: Arc's per-area groups.
pub async fn endpoints(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut groups = crate::metrics::endpoints(&samples(&metrics().render(&live(&state))));
    groups["timestamp"] = json!(now());
    Json(groups)
}

fn snapshot(text: &str) -> Value {
    Value::Object(
        samples(text)
            .into_iter()
            .map(|(name, value)| (name, json!(value)))
            .collect(),
    )
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// What the node's components hold now; only uptime and memory before start-up finished.
fn live(state: &AppState) -> Live {
    let mut live = Live {
        uptime_seconds: state.started_at.elapsed().as_secs_f64(),
        resident_memory_bytes: resident_memory_bytes(),
        ..Live::default()
    };
    let Ok(services) = state.services() else {
        return live;
    };
    let (occupancy, bytes) = {
        let buffers = services.ingester.buffers().lock();
        (buffers.occupancy(), buffers.buffered_bytes())
    };
    live.buffer = Some(BufferLive {
        records: occupancy.rows as u64,
        bytes: bytes as u64,
        chunks_flushing: occupancy.chunks_flushing as u64,
    });
    if let Some(cluster) = &services.cluster {
        live.raft = Some(cluster.raft_live());
        live.writer_epoch = cluster.writer_epoch();
        live.replication_lag = cluster.replication_lag();
    }
    if let Some(replication) = &services.replication {
        let status = replication.status();
        live.puller = Some(PullerLive {
            queue_depth: status.catchup.queue_depth,
            in_flight: status.catchup.inflight_count,
            pulled: status.files_pulled,
            failed: status.pull_failures,
            dropped: status.dropped,
            gate_rejections: status.gate_fires,
        });
    }
    live
}
