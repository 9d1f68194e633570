//! `/api/v1/compaction/*`: status, counters, candidates, jobs, history, and the manual trigger.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::compact::Compactor;
use crate::compact::plan::Tier;

use super::{ApiError, AppState};

fn compactor(state: &AppState) -> Result<&Arc<Compactor>, ApiError> {
    state.services()?.compactor.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "compaction is not enabled on this node",
        )
    })
}

/// `?tier=hourly,daily` (default: every enabled tier) and `?database=`.
fn tiers_and_database(
    compactor: &Compactor,
    params: &HashMap<String, String>,
) -> Result<(Vec<Tier>, Option<String>), ApiError> {
    let tiers = match params
        .get("tier")
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
    {
        None => compactor.enabled_tiers(),
        Some(list) => {
            let mut tiers = Vec::new();
            for name in list.split(',') {
                let tier: Tier = name
                    .parse()
                    .map_err(|e: String| ApiError::new(StatusCode::BAD_REQUEST, e))?;
                if !compactor.tier_enabled(tier) {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("compaction tier {} is disabled", tier.as_str()),
                    ));
                }
                if !tiers.contains(&tier) {
                    tiers.push(tier);
                }
            }
            // Hourly outputs feed the daily tier: hourly always runs first.
            tiers.sort();
            tiers
        }
    };
    let database = params
        .get("database")
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty());
    Ok((tiers, database))
}

/// `GET /api/v1/compaction/status`.
pub async fn status(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let compactor = compactor(&state)?;
    let totals = compactor.totals();
    Ok(Json(json!({
        "manager": {
            "active_jobs": compactor.active_jobs().len(),
            "total_completed": totals.total_completed,
            "total_failed": totals.total_failed,
            "cycle": compactor.running_cycle(),
        },
        "schedulers": compactor.schedulers(),
    })))
}

/// `GET /api/v1/compaction/stats`.
pub async fn stats(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let compactor = compactor(&state)?;
    Ok(Json(json!({
        "stats": compactor.totals(),
        "is_running": compactor.running_cycle().is_some(),
    })))
}

/// `GET /api/v1/compaction/candidates`.
pub async fn candidates(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let compactor = compactor(&state)?;
    let (tiers, database) = tiers_and_database(compactor, &params)?;
    let candidates = compactor.candidates(&tiers, database.as_deref());
    Ok(Json(json!({
        "count": candidates.len(),
        "candidates": candidates,
    })))
}

/// `GET /api/v1/compaction/jobs`.
pub async fn jobs(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let jobs = compactor(&state)?.active_jobs();
    Ok(Json(json!({ "active_jobs": jobs.len(), "jobs": jobs })))
}

/// `GET /api/v1/compaction/history`.
pub async fn history(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let mut jobs = compactor(&state)?.history();
    jobs.reverse();
    Ok(Json(
        json!({ "total_jobs": jobs.len(), "recent_jobs": jobs }),
    ))
}

/// `POST /api/v1/compaction/trigger`: starts a cycle in the background; 409 while one runs.
pub async fn trigger(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let compactor = compactor(&state)?;
    let (tiers, database) = tiers_and_database(compactor, &params)?;
    if tiers.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "every compaction tier is disabled",
        ));
    }
    match compactor.trigger(tiers, database) {
        Ok(cycle) => {
            let mut body = json!({
                "message": "Compaction triggered",
                "status": "running",
                "tiers": cycle.tiers,
                "cycle_id": cycle.cycle_id,
            });
            if let Some(database) = cycle.database {
                body["database"] = json!(database);
            }
            Ok(Json(body).into_response())
        }
        Err(running) => Ok((
            StatusCode::CONFLICT,
            Json(json!({
                "error": "Compaction cycle already running",
                "message": "wait for the running cycle to finish, then trigger again",
                "cycle_id": running.cycle_id,
                "is_running": true,
            })),
        )
            .into_response()),
    }
}
