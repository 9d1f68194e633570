//! `/api/v1/retention`: retention policy CRUD, execution and history.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::now_us;
use crate::ingest::names;
use crate::meta::{AdminCommand, Meta, RetentionPolicy};
use crate::retention;

use super::{ApiError, AppState, bad, commit_admin, time};

fn policy_json(meta: &Meta, policy: &RetentionPolicy) -> Value {
    let state = meta.state();
    let last = state.admin().retention_history(policy.id).last().cloned();
    json!({
        "id": policy.id,
        "name": policy.name,
        "database": policy.database,
        "measurement": policy.measurement,
        "retention_days": policy.retention_days,
        "buffer_days": policy.buffer_days,
        "is_active": policy.is_active,
        "last_execution_time": last.as_ref().map_or(Value::Null, |e| time(e.executed_at_us)),
        "last_execution_status": last.as_ref().map(|e| e.status.clone()),
        "last_deleted_count": last.as_ref().map(|e| e.deleted_count),
        "created_at": time(policy.created_at_us),
        "updated_at": time(policy.updated_at_us),
    })
}

fn meta(state: &AppState) -> Result<Arc<Meta>, ApiError> {
    Ok(Arc::clone(&state.services()?.meta))
}

fn policy_id(text: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid policy id '{text}'"),
        )
    })
}

/// The metadata handle and the policy named by a path parameter.
fn known_policy(state: &AppState, id: &str) -> Result<(Arc<Meta>, RetentionPolicy), ApiError> {
    let meta = meta(state)?;
    let policy = existing(&meta, policy_id(id)?)?;
    Ok((meta, policy))
}

fn existing(meta: &Meta, id: u64) -> Result<RetentionPolicy, ApiError> {
    meta.state()
        .admin()
        .retention_policy(id)
        .cloned()
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))
}

pub async fn list(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let meta = meta(&state)?;
    let policies: Vec<RetentionPolicy> =
        meta.state().admin().retention_policies().cloned().collect();
    Ok(Json(Value::Array(
        policies.iter().map(|p| policy_json(&meta, p)).collect(),
    )))
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (meta, policy) = known_policy(&state, &id)?;
    Ok(Json(policy_json(&meta, &policy)))
}

pub async fn executions(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (meta, policy) = known_policy(&state, &id)?;
    let id = policy.id;
    let executions: Vec<Value> = meta
        .state()
        .admin()
        .retention_history(id)
        .rev()
        .map(|e| {
            json!({
                "id": e.id,
                "policy_id": e.policy_id,
                "execution_time": time(e.executed_at_us),
                "status": e.status,
                "deleted_count": e.deleted_count,
                "files_deleted": e.files_deleted,
                "cutoff_date": time(e.cutoff_us),
                "execution_duration_ms": e.duration_ms,
                "error_message": e.error,
                // Beyond Arc: the scheduled run this was (null when asked for by hand).
                "scheduled_time": e.slot_us.map(time),
            })
        })
        .collect();
    Ok(Json(
        json!({ "policy_id": id, "count": executions.len(), "executions": executions }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFields {
    name: Option<String>,
    database: Option<String>,
    measurement: Option<String>,
    retention_days: Option<i64>,
    buffer_days: Option<i64>,
    is_active: Option<bool>,
}

/// Arc's default safety margin added to `retention_days`.
const DEFAULT_BUFFER_DAYS: i64 = 7;

fn parse_policy(body: &[u8], id: u64, created_at_us: i64) -> Result<RetentionPolicy, ApiError> {
    let fields: PolicyFields =
        serde_json::from_slice(body).map_err(|e| bad(format!("invalid request body: {e}")))?;
    let name = fields
        .name
        .map(|n| n.trim().to_string())
        .unwrap_or_default();
    if name.is_empty() {
        return Err(bad("field 'name' is required"));
    }
    let database = fields.database.unwrap_or_default();
    if !names::valid_database(&database) {
        return Err(bad(format!(
            "field 'database' must be a valid database name, got '{database}'"
        )));
    }
    let measurement = fields.measurement.filter(|m| !m.is_empty());
    if let Some(m) = measurement
        .as_ref()
        .filter(|m| !names::valid_measurement(m))
    {
        return Err(bad(format!("invalid measurement name '{m}'")));
    }
    let retention_days = fields.retention_days.unwrap_or(0);
    let buffer_days = fields.buffer_days.unwrap_or(DEFAULT_BUFFER_DAYS);
    if !(0..=36_500).contains(&buffer_days) {
        return Err(bad("buffer_days must be between 0 and 36500"));
    }
    if retention_days <= 0 || retention_days > 36_500 || retention_days <= buffer_days {
        return Err(bad(format!(
            "retention_days must be greater than 0 and than buffer_days ({buffer_days}), at most 36500"
        )));
    }
    let now = now_us();
    Ok(RetentionPolicy {
        id,
        name,
        database,
        measurement,
        retention_days: retention_days as u32,
        buffer_days: buffer_days as u32,
        is_active: fields.is_active.unwrap_or(true),
        created_at_us: if id == 0 { now } else { created_at_us },
        updated_at_us: now,
    })
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let meta = meta(&state)?;
    let policy = parse_policy(&body, 0, 0)?;
    let name = policy.name.clone();
    commit_admin(
        &meta,
        "retention policy",
        AdminCommand::PutRetentionPolicy(policy),
    )
    .await?;
    let created = meta
        .state()
        .admin()
        .retention_policy_named(&name)
        .cloned()
        .ok_or_else(super::deleted_meanwhile)?;
    Ok((StatusCode::CREATED, Json(policy_json(&meta, &created))).into_response())
}

pub async fn update(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let (meta, current) = known_policy(&state, &id)?;
    let policy = parse_policy(&body, current.id, current.created_at_us)?;
    commit_admin(
        &meta,
        "retention policy",
        AdminCommand::PutRetentionPolicy(policy),
    )
    .await?;
    let updated = existing(&meta, current.id)?;
    Ok(Json(policy_json(&meta, &updated)))
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (meta, policy) = known_policy(&state, &id)?;
    let id = policy.id;
    commit_admin(
        &meta,
        "retention policy",
        AdminCommand::DeleteRetentionPolicy { id },
    )
    .await?;
    Ok(Json(
        json!({ "message": format!("Retention policy {id} deleted") }),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ExecuteFields {
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    confirm: bool,
}

pub async fn execute(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let started = std::time::Instant::now();
    let (meta, policy) = known_policy(&state, &id)?;
    let fields: ExecuteFields = if body.is_empty() {
        ExecuteFields::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid request body: {e}")))?
    };
    if !policy.is_active {
        return Err(bad("retention policy is not active"));
    }
    if !fields.dry_run && !fields.confirm {
        return Err(bad(
            "executing a retention policy needs \"confirm\": true (or \"dry_run\": true)",
        ));
    }
    let run = {
        let (meta, policy) = (Arc::clone(&meta), policy.clone());
        tokio::task::spawn_blocking(move || {
            retention::execute(&meta, &policy, fields.dry_run, now_us(), None)
        })
    };
    let outcome = run
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(json!({
        "policy_id": policy.id,
        "policy_name": policy.name,
        "deleted_count": outcome.rows,
        "files_deleted": outcome.file_count(),
        "execution_time_ms": started.elapsed().as_secs_f64() * 1000.0,
        "dry_run": fields.dry_run,
        "cutoff_date": time(outcome.cutoff_us),
        "affected_measurements": outcome.files.keys().collect::<Vec<_>>(),
    })))
}
