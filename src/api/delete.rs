//! `/api/v1/delete`: deleting the rows of a measurement that match a `where` clause.

use std::path::Path;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::delete::{DeleteError, DeleteRequest};

use super::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    #[serde(default)]
    database: String,
    #[serde(default)]
    measurement: String,
    #[serde(default, rename = "where")]
    predicate: String,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    confirm: bool,
}

/// Arc's error body for this endpoint.
fn failure(status: StatusCode, message: impl Into<String>) -> Response {
    let message = message.into();
    if status.is_server_error() {
        tracing::error!(status = %status, error = %message, "delete failed");
    }
    (status, Json(json!({ "success": false, "error": message }))).into_response()
}

fn status_of(err: &DeleteError) -> StatusCode {
    match err {
        DeleteError::Invalid(_)
        | DeleteError::TooManyRows { .. }
        | DeleteError::NeedsConfirmation { .. } => StatusCode::BAD_REQUEST,
        DeleteError::NotFound { .. } => StatusCode::NOT_FOUND,
        DeleteError::Conflict(_) => StatusCode::CONFLICT,
        // The outcome is unknown: the swap may have applied.
        DeleteError::Unsettled(_) => StatusCode::GATEWAY_TIMEOUT,
        DeleteError::OtherWriters(_) => StatusCode::SERVICE_UNAVAILABLE,
        DeleteError::Flush(_)
        | DeleteError::Read(_)
        | DeleteError::Write(_)
        | DeleteError::Storage(_)
        | DeleteError::WorkDir { .. }
        | DeleteError::Journal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub async fn rows(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let services = match state.services() {
        Ok(services) => services,
        Err(err) => return err.into_response(),
    };
    let deleter = &services.deleter;
    if !deleter.config.enabled {
        return failure(
            StatusCode::FORBIDDEN,
            "Delete operations are disabled. Set delete.enabled=true in arc.toml to enable.",
        );
    }
    let body: DeleteBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            return failure(
                StatusCode::BAD_REQUEST,
                format!("Invalid request body: {e}"),
            );
        }
    };
    let request = DeleteRequest {
        database: body.database,
        measurement: body.measurement,
        predicate: body.predicate,
        dry_run: body.dry_run,
        confirm: body.confirm,
    };
    let dry_run = request.dry_run;
    // Spawned, so a client that goes away does not cancel the delete halfway.
    let deleter = Arc::clone(deleter);
    let run = tokio::spawn(async move { deleter.run(&request).await });
    match run.await.expect("delete task panicked") {
        Ok(outcome) => {
            let names: Vec<&str> = outcome
                .affected_files
                .iter()
                .map(|p| {
                    Path::new(p)
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or(p)
                })
                .collect();
            Json(json!({
                "success": true,
                "deleted_count": outcome.deleted_rows,
                "affected_files": outcome.affected_files.len(),
                "rewritten_files": outcome.rewritten_files,
                "execution_time_ms": outcome.elapsed_ms,
                "dry_run": dry_run,
                "files_processed": names,
            }))
            .into_response()
        }
        Err(err) => failure(status_of(&err), err.to_string()),
    }
}

pub async fn config(State(state): State<Arc<AppState>>) -> Response {
    let services = match state.services() {
        Ok(services) => services,
        Err(err) => return err.into_response(),
    };
    let config = &services.deleter.config;
    Json(json!({
        "enabled": config.enabled,
        "confirmation_threshold": config.confirmation_threshold,
        "max_rows_per_delete": config.max_rows_per_delete,
        "implementation": "rewrite-based",
        "performance_impact": {
            "writes": "zero overhead",
            "queries": "zero overhead",
            "deletes": "expensive (file rewrites)",
        },
    }))
    .into_response()
}
