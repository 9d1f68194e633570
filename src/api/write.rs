//! Write endpoints: MessagePack, and line protocol in its three InfluxDB-compatible forms.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::ingest::{PayloadFormat, Precision, WriteRequest};
use crate::metrics::metrics;

use super::{ApiError, AppState};

const DATABASE_HEADER: &str = "x-arc-database";
const DEFAULT_DATABASE: &str = "default";

type Params = Query<HashMap<String, String>>;

pub async fn msgpack(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let database = header_database(&headers)?.unwrap_or(DEFAULT_DATABASE);
    write(&state, database, PayloadFormat::Msgpack, body, &headers).await
}

/// InfluxDB 1.x: `?db=`, overridden by the header.
pub async fn influx_v1(
    State(state): State<Arc<AppState>>,
    Query(params): Params,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    line_protocol_write(&state, &params, params.get("db"), &headers, body).await
}

/// InfluxDB 2.x: `?bucket=`, overridden by the header.
pub async fn influx_v2(
    State(state): State<Arc<AppState>>,
    Query(params): Params,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    line_protocol_write(&state, &params, params.get("bucket"), &headers, body).await
}

/// Arc's own endpoint: the database comes from the header only.
pub async fn line_protocol(
    State(state): State<Arc<AppState>>,
    Query(params): Params,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    line_protocol_write(&state, &params, None, &headers, body).await
}

pub async fn flush(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let flusher = Arc::clone(&state.services()?.flusher);
    let wait = flusher.timeout();
    // Spawned so that neither a client hanging up nor the wait below cuts a flush off between
    // its steps.
    let flush = tokio::spawn(async move { flusher.flush_all().await });
    tokio::time::timeout(wait, flush)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "flush still running after {}s (storage or the cluster is slow); the rows \
                     are safe in the WAL and the flush goes on",
                    wait.as_secs()
                ),
            )
        })?
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("flush failed: {e}"),
            )
        })??;
    Ok(Json(
        json!({ "status": "success", "message": "All buffers flushed" }),
    ))
}

async fn line_protocol_write(
    state: &AppState,
    params: &HashMap<String, String>,
    query_database: Option<&String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let precision = match params.get("precision").map(String::as_str) {
        None | Some("") => Precision::default(),
        Some(text) => Precision::parse(text).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("invalid precision '{text}': expected ns, us, ms or s"),
            )
        })?,
    };
    let database = match header_database(headers)? {
        Some(db) => db,
        None => query_database
            .map(String::as_str)
            .filter(|db| !db.is_empty())
            .unwrap_or(DEFAULT_DATABASE),
    };
    write(
        state,
        database,
        PayloadFormat::LineProtocol(precision),
        body,
        headers,
    )
    .await
}

async fn write(
    state: &AppState,
    database: &str,
    format: PayloadFormat,
    body: Body,
    headers: &HeaderMap,
) -> Result<StatusCode, ApiError> {
    let ingest = &metrics().ingest;
    let protocol = match format {
        PayloadFormat::Msgpack => &ingest.msgpack,
        PayloadFormat::LineProtocol(_) => &ingest.line_protocol,
    };
    let services = state.services()?;
    let body = match read_body(body, headers, state.max_payload_bytes).await {
        Ok(body) => body,
        Err(err) => {
            ingest.record(protocol, 0, None);
            return Err(err);
        }
    };
    let bytes = body.len();
    let request = WriteRequest {
        database: database.to_string(),
        format,
        body,
        received_at_us: chrono::Utc::now().timestamp_micros(),
    };
    let stored = services.ingester.write(request).await;
    ingest.record(protocol, bytes, stored.as_ref().ok().copied());
    stored?;
    Ok(StatusCode::NO_CONTENT)
}

fn header_database(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    match headers.get(DATABASE_HEADER) {
        None => Ok(None),
        Some(value) => value.to_str().map(Some).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "x-arc-database header is not valid text",
            )
        }),
    }
}

/// How much of an oversized body is read and thrown away before answering 413: a client that
/// is still sending when the connection closes may never see the answer.
const OVERSIZE_DRAIN_BYTES: usize = 16 << 20;

async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds the {limit}-byte limit (server.max_payload_size)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut body = body.into_data_stream();
    // The declared length is only a hint: reserve at most a few MiB before bytes arrive.
    let mut collected = BytesMut::with_capacity(declared.unwrap_or(0).min(limit).min(8 << 20));
    let mut oversize = declared.is_some_and(|len| len > limit);
    let mut drained = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|err| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("could not read request body: {err}"),
            )
        })?;
        if oversize || collected.len() + chunk.len() > limit {
            oversize = true;
            drained += chunk.len();
            if drained > OVERSIZE_DRAIN_BYTES {
                break;
            }
        } else {
            collected.extend_from_slice(&chunk);
        }
    }
    if oversize {
        return Err(too_large());
    }
    Ok(collected.freeze())
}
