//! `/api/v1/continuous_queries`: continuous query CRUD, manual execution and history.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::DateTime;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::now_us;
use crate::continuous::{self, CqError, CqRunner, RunAs};
use crate::ingest::names;
use crate::meta::{AdminCommand, ContinuousQuery, Meta};
use crate::query::check_read_only;
use crate::schedule::parse_duration;

use super::{ApiError, AppState, bad, commit_admin, time};

const KIND: &str = "continuous query";
/// Executions listed when the request names no `limit`.
const DEFAULT_EXECUTIONS: usize = 50;

fn query_json(meta: &Meta, query: &ContinuousQuery) -> Value {
    let state = meta.state();
    let last = state.admin().cq_history(query.id).last().cloned();
    json!({
        "id": query.id,
        "name": query.name,
        "description": query.description,
        "database": query.database,
        "source_measurement": query.source_measurement,
        "destination_measurement": query.destination_measurement,
        "query": query.query,
        "interval": query.interval,
        "tag_columns": query.tag_columns,
        "retention_days": query.retention_days,
        "delete_source_after_days": query.delete_source_after_days,
        "is_active": query.is_active,
        "last_execution_time": last.as_ref().map_or(Value::Null, |e| time(e.executed_at_us)),
        "last_execution_status": last.as_ref().map(|e| e.status.clone()),
        "last_processed_time": query.last_processed_us.map_or(Value::Null, time),
        "last_records_written": last.as_ref().map(|e| e.records_written),
        "created_at": time(query.created_at_us),
        "updated_at": time(query.updated_at_us),
    })
}

fn runner(state: &AppState) -> Result<Arc<CqRunner>, ApiError> {
    Ok(Arc::clone(&state.services()?.continuous_queries))
}

/// The runner and the query named by a path parameter.
fn known_query(state: &AppState, id: &str) -> Result<(Arc<CqRunner>, ContinuousQuery), ApiError> {
    let runner = runner(state)?;
    let id: u64 = id
        .parse()
        .map_err(|_| bad(format!("invalid continuous query id '{id}'")))?;
    let query = existing(&runner.meta, id)?;
    Ok((runner, query))
}

fn existing(meta: &Meta, id: u64) -> Result<ContinuousQuery, ApiError> {
    meta.state()
        .admin()
        .continuous_query(id)
        .cloned()
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let meta = Arc::clone(&runner(&state)?.meta);
    let active = match params.get("is_active").map(String::as_str) {
        None | Some("") => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => {
            return Err(bad(format!(
                "is_active must be true or false, got '{other}'"
            )));
        }
    };
    let queries: Vec<ContinuousQuery> = meta
        .state()
        .admin()
        .continuous_queries()
        .filter(|q| params.get("database").is_none_or(|db| *db == q.database))
        .filter(|q| active.is_none_or(|a| a == q.is_active))
        .cloned()
        .collect();
    Ok(Json(Value::Array(
        queries.iter().map(|q| query_json(&meta, q)).collect(),
    )))
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (runner, query) = known_query(&state, &id)?;
    Ok(Json(query_json(&runner.meta, &query)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryFields {
    name: Option<String>,
    description: Option<String>,
    database: Option<String>,
    source_measurement: Option<String>,
    destination_measurement: Option<String>,
    query: Option<String>,
    interval: Option<String>,
    tag_columns: Option<Vec<String>>,
    retention_days: Option<u32>,
    delete_source_after_days: Option<u32>,
    is_active: Option<bool>,
}

/// A create or update body as the stored query (`id` 0 for a new one).
fn parse_query(
    body: &[u8],
    current: Option<&ContinuousQuery>,
) -> Result<ContinuousQuery, ApiError> {
    let fields: QueryFields =
        serde_json::from_slice(body).map_err(|e| bad(format!("invalid request body: {e}")))?;
    let required = |value: Option<String>, field: &str| {
        value
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| bad(format!("{field} is required")))
    };
    let name = required(fields.name, "name")?;
    let database = required(fields.database, "database")?;
    if !names::valid_database(&database) {
        return Err(bad(format!("invalid database name '{database}'")));
    }
    let measurement = |value: Option<String>, field: &str| {
        let measurement = required(value, field)?;
        match names::valid_measurement(&measurement) {
            true => Ok(measurement),
            false => Err(bad(format!(
                "invalid {field} '{measurement}': must start with a letter and contain only letters, digits, '_' or '-'"
            ))),
        }
    };
    let source_measurement = measurement(fields.source_measurement, "source_measurement")?;
    let destination_measurement =
        measurement(fields.destination_measurement, "destination_measurement")?;
    if destination_measurement == source_measurement {
        // Each run clears its window in the destination first: that would be the source data.
        return Err(bad(
            "destination_measurement must differ from source_measurement",
        ));
    }
    let query = required(fields.query, "query")?;
    if !query.contains("{start_time}") || !query.contains("{end_time}") {
        return Err(bad(
            "query must contain {start_time} and {end_time} placeholders",
        ));
    }
    check_read_only(&continuous::substitute(&query, 0, 1))
        .map_err(|e| bad(format!("invalid query: {e}")))?;
    let interval = required(fields.interval, "interval")?;
    let interval_us = parse_duration(&interval)
        .map(|d| d.as_micros())
        .filter(|us| *us > 0)
        .and_then(|us| i64::try_from(us).ok())
        .ok_or_else(|| {
            bad(format!(
                "invalid interval '{interval}': use a duration such as 30s, 5m or 1h"
            ))
        })?;
    let tag_columns = fields.tag_columns.unwrap_or_default();
    if let Some(tag) = tag_columns
        .iter()
        .find(|t| t.as_str() == "time" || !names::valid_measurement(t))
    {
        return Err(bad(format!("invalid tag column '{tag}'")));
    }
    for (field, days) in [
        ("retention_days", fields.retention_days),
        ("delete_source_after_days", fields.delete_source_after_days),
    ] {
        if days == Some(0) {
            return Err(bad(format!("{field} must be greater than 0")));
        }
    }
    let now = now_us();
    Ok(ContinuousQuery {
        id: current.map_or(0, |c| c.id),
        name,
        description: fields.description,
        database,
        source_measurement,
        destination_measurement,
        query,
        interval,
        interval_us,
        tag_columns,
        retention_days: fields.retention_days,
        delete_source_after_days: fields.delete_source_after_days,
        is_active: fields.is_active.unwrap_or(true),
        last_processed_us: current.and_then(|c| c.last_processed_us),
        created_at_us: current.map_or(now, |c| c.created_at_us),
        updated_at_us: now,
    })
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let meta = Arc::clone(&runner(&state)?.meta);
    let query = parse_query(&body, None)?;
    let name = query.name.clone();
    commit_admin(&meta, KIND, AdminCommand::PutContinuousQuery(query)).await?;
    let created = meta
        .state()
        .admin()
        .continuous_queries()
        .find(|q| q.name == name)
        .cloned()
        .ok_or_else(super::deleted_meanwhile)?;
    Ok((StatusCode::CREATED, Json(query_json(&meta, &created))).into_response())
}

pub async fn update(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let (runner, current) = known_query(&state, &id)?;
    let query = parse_query(&body, Some(&current))?;
    commit_admin(&runner.meta, KIND, AdminCommand::PutContinuousQuery(query)).await?;
    let updated = existing(&runner.meta, current.id)?;
    Ok(Json(query_json(&runner.meta, &updated)))
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (runner, query) = known_query(&state, &id)?;
    let id = query.id;
    commit_admin(
        &runner.meta,
        KIND,
        AdminCommand::DeleteContinuousQuery { id },
    )
    .await?;
    Ok(Json(
        json!({ "message": format!("Continuous query {id} deleted") }),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ExecuteFields {
    start_time: Option<String>,
    end_time: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

fn parse_time(text: Option<&str>, field: &str) -> Result<Option<i64>, ApiError> {
    match text.filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map(|t| Some(t.timestamp_micros()))
            .map_err(|_| {
                bad(format!(
                    "Invalid {field} format: use RFC 3339, e.g. 2024-01-01T00:00:00Z"
                ))
            }),
    }
}

pub async fn execute(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let (runner, query) = known_query(&state, &id)?;
    let fields: ExecuteFields = if body.is_empty() {
        ExecuteFields::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid request body: {e}")))?
    };
    let start = parse_time(fields.start_time.as_deref(), "start_time")?;
    let end = parse_time(fields.end_time.as_deref(), "end_time")?;
    let window =
        continuous::manual_window(&query, start, end, now_us()).map_err(|e| bad(e.to_string()))?;
    // Spawned, so a client that goes away does not cancel the run between clearing the window
    // and writing its results.
    let run = {
        let run_as = if fields.dry_run {
            RunAs::DryRun
        } else {
            RunAs::Manual
        };
        let query = query.clone();
        tokio::spawn(async move { runner.execute(&query, window, run_as).await })
    };
    let run = run
        .await
        .expect("continuous query task panicked")
        .map_err(|e| match e {
            CqError::Query(crate::query::QueryError::Invalid(message)) => {
                bad(format!("Execution failed: {message}"))
            }
            CqError::Record(err) => err.into(),
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Execution failed: {other}"),
            ),
        })?;
    let mut answer = json!({
        "query_id": query.id,
        "query_name": query.name,
        "execution_id": run.execution_id,
        "status": if fields.dry_run { "dry_run" } else { "completed" },
        "start_time": time(run.start_us),
        "end_time": time(run.end_us),
        "records_read": Value::Null,
        "records_written": run.records_written,
        "execution_time_seconds": run.duration_s,
        "destination_measurement": query.destination_measurement,
        "dry_run": fields.dry_run,
        "executed_at": time(run.executed_at_us),
    });
    if fields.dry_run {
        answer["executed_query"] = json!(run.executed_query);
    }
    Ok(Json(answer))
}

pub async fn executions(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (runner, query) = known_query(&state, &id)?;
    let limit = match params.get("limit") {
        None => DEFAULT_EXECUTIONS,
        Some(text) => text.parse().map_err(|_| {
            bad(format!(
                "limit must be a non-negative integer, got '{text}'"
            ))
        })?,
    };
    let executions: Vec<Value> = runner
        .meta
        .state()
        .admin()
        .cq_history(query.id)
        .rev()
        .take(limit)
        .map(|e| {
            json!({
                "id": e.id,
                "query_id": e.query_id,
                "execution_id": e.execution_id,
                "execution_time": time(e.executed_at_us),
                "status": e.status,
                "start_time": time(e.start_us),
                "end_time": time(e.end_us),
                "records_read": Value::Null,
                "records_written": e.records_written,
                "execution_duration_seconds": e.duration_s,
                "error_message": e.error,
                // Beyond Arc: run by the scheduler, not asked for by hand.
                "scheduled": e.scheduled,
            })
        })
        .collect();
    Ok(Json(
        json!({ "query_id": query.id, "executions": executions }),
    ))
}
