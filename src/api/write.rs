//! Write endpoints: MessagePack, and line protocol in its three InfluxDB-compatible forms.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Value, json};

use crate::ingest::{PayloadFormat, Precision, WriteRequest};

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
    state.write_path()?.flusher.flush_all().await?;
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
    let write_path = state.write_path()?;
    let body = read_body(body, headers, state.max_payload_bytes).await?;
    let request = WriteRequest {
        database: database.to_string(),
        format,
        body,
        received_at_us: chrono::Utc::now().timestamp_micros(),
    };
    write_path.ingester.write(request).await?;
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
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(too_large()),
        Err(err) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("could not read request body: {err}"),
        )),
    }
}
