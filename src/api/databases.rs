//! `/api/v1/databases`: list, inspect, create and delete databases.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::auth::now_us;
use crate::buffer::MeasurementKey;
use crate::ingest::names;
use crate::meta::{AdminCommand, DatabaseRecord, MetaCommand};

use super::{ApiError, AppState, Services};

/// Names that would clash with SQL catalogs or internal prefixes.
const RESERVED: [&str; 4] = ["information_schema", "system", "internal", "arc"];

fn info(services: &Services, name: &str) -> Option<Value> {
    let measurements = services.query.measurements(Some(name));
    let created = services
        .meta
        .state()
        .admin()
        .database(name)
        .map(|d| d.created_at_us);
    if measurements.is_empty() && created.is_none() {
        return None;
    }
    let mut info = json!({ "name": name, "measurement_count": measurements.len() });
    // Databases made implicitly by a write have no creation time, and Arc omits the field.
    if let Some(created_at) = created.and_then(DateTime::<Utc>::from_timestamp_micros) {
        info["created_at"] = json!(created_at.to_rfc3339_opts(SecondsFormat::Secs, true));
    }
    Some(info)
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Database '{name}' not found"),
    )
}

/// `GET /api/v1/databases`.
pub async fn list(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let services = state.services()?;
    let list: Vec<Value> = services
        .query
        .databases()
        .iter()
        .filter_map(|name| info(services, name))
        .collect();
    Ok(Json(json!({ "count": list.len(), "databases": list })))
}

/// `GET /api/v1/databases/{name}`.
pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    info(state.services()?, &name)
        .map(Json)
        .ok_or_else(|| not_found(&name))
}

/// `GET /api/v1/databases/{name}/measurements`.
pub async fn measurements(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let services = state.services()?;
    info(services, &name).ok_or_else(|| not_found(&name))?;
    let measurements: Vec<Value> = services
        .query
        .measurements(Some(&name))
        .into_iter()
        .map(|m| json!({ "name": m.measurement, "file_count": m.file_count }))
        .collect();
    Ok(Json(json!({
        "database": name,
        "count": measurements.len(),
        "measurements": measurements,
    })))
}

/// `POST /api/v1/databases` with `{"name": ...}`: 201, or 409 when it exists.
pub async fn create(
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let services = state.services()?;
    let parsed: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))?;
    let name = parsed
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "field 'name' is required"))?
        .to_string();
    if !names::valid_database(&name) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid database name '{name}': use letters, digits, '_' and '-', starting \
                 with a letter, at most {} characters",
                names::MAX_DATABASE_LEN
            ),
        ));
    }
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(&name)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("database name '{name}' is reserved"),
        ));
    }
    if info(services, &name).is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("Database '{name}' already exists"),
        ));
    }
    let record = DatabaseRecord {
        name: name.clone(),
        created_at_us: now_us(),
    };
    commit(
        services,
        MetaCommand::Admin(AdminCommand::CreateDatabase(record)),
    )
    .await?;
    let created = info(services, &name).ok_or_else(super::deleted_meanwhile)?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// `DELETE /api/v1/databases/{name}?confirm=true`: removes every file of the database (buffered
/// rows are flushed first so they go too). Needs `delete.enabled`.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    if !state.delete_enabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Delete operations are disabled (set delete.enabled = true)",
        ));
    }
    if params.get("confirm").map(String::as_str) != Some("true") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Deleting a database needs ?confirm=true",
        ));
    }
    let services = state.services()?;
    // With shared storage other writers' buffered rows of the database become files first (they
    // may hold its only rows yet).
    services
        .deleter
        .flush_other_writers(&name, None)
        .await
        .map_err(|err| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, err.to_string()))?;
    info(services, &name).ok_or_else(|| not_found(&name))?;
    let measurements = services.query.measurements(Some(&name));
    for summary in &measurements {
        let key = MeasurementKey {
            database: name.clone(),
            measurement: summary.measurement.clone(),
        };
        services.flusher.flush(&key).await?;
    }
    let mut files_deleted = 0;
    for summary in &measurements {
        let removed: Vec<String> = services
            .meta
            .state()
            .files_of(&name, &summary.measurement)
            .iter()
            .map(|f| f.path.clone())
            .collect();
        if removed.is_empty() {
            continue;
        }
        files_deleted += removed.len();
        let command = MetaCommand::ReplaceFiles {
            database: name.clone(),
            measurement: summary.measurement.clone(),
            removed,
            added: Vec::new(),
            at_us: now_us(),
            compactor_epoch: None,
        };
        commit(services, command).await?;
    }
    let drop = MetaCommand::Admin(AdminCommand::DropDatabase { name: name.clone() });
    commit(services, drop).await?;
    Ok(Json(json!({
        "message": format!("Database '{name}' deleted"),
        "files_deleted": files_deleted,
    })))
}

/// Commits a metadata command off the async workers (it syncs a file).
async fn commit(services: &Services, command: MetaCommand) -> Result<(), ApiError> {
    let meta = Arc::clone(&services.meta);
    tokio::task::spawn_blocking(move || meta.commit(command))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ApiError::from)
}
