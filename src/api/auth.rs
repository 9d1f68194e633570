//! Token checks on every guarded route, and `/api/v1/auth`: verify, token management, cache.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{self, AuthError, Authenticator};
use crate::meta::{AdminCommand, AdminError, ApplyError, MetaError, Permission, TokenRecord};
use crate::schedule::parse_duration;

use super::{ApiError, AppState};

/// An auth or token-API failure: Arc's `{"success": false, "error": ...}` shape.
pub struct AuthFailure(StatusCode, String);

impl AuthFailure {
    fn new(status: StatusCode, message: impl Into<String>) -> AuthFailure {
        AuthFailure(status, message.into())
    }
}

impl IntoResponse for AuthFailure {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "success": false, "error": self.1 }))).into_response()
    }
}

impl From<ApiError> for AuthFailure {
    fn from(err: ApiError) -> AuthFailure {
        AuthFailure(err.status, err.message)
    }
}

impl From<MetaError> for AuthFailure {
    fn from(err: MetaError) -> AuthFailure {
        match err {
            MetaError::Rejected(ApplyError::Admin(AdminError::NameTaken(name))) => {
                AuthFailure::new(
                    StatusCode::CONFLICT,
                    format!("a token named '{name}' already exists"),
                )
            }
            MetaError::Rejected(ApplyError::Admin(AdminError::UnknownToken(_))) => {
                AuthFailure::new(StatusCode::NOT_FOUND, "Token not found")
            }
            MetaError::Unavailable(_) => {
                AuthFailure::new(StatusCode::SERVICE_UNAVAILABLE, err.to_string())
            }
            MetaError::Unconfirmed(_) => {
                AuthFailure::new(StatusCode::GATEWAY_TIMEOUT, err.to_string())
            }
            other => AuthFailure::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

/// What a guarded route needs: a valid token, and maybe a permission (`admin` implies all).
pub type Guard = (Arc<AppState>, Option<Permission>);

/// Middleware: refuses requests without a usable token (401) or without the permission (403).
pub async fn authorize(
    State((state, needed)): State<Guard>,
    mut request: Request,
    next: Next,
) -> Response {
    if !state.auth_enabled {
        return next.run(request).await;
    }
    let secret = auth::request_secret(request.headers(), request.uri().query());
    match authenticate(&state, secret).await {
        Ok(token) => {
            if let Some(needed) = needed
                && !token.allows(needed)
            {
                return AuthFailure::new(
                    StatusCode::FORBIDDEN,
                    format!("Permission denied: {} required", needed.as_str()),
                )
                .into_response();
            }
            request.extensions_mut().insert(token);
            next.run(request).await
        }
        Err(failure) => failure.into_response(),
    }
}

async fn authenticate(
    state: &AppState,
    secret: Option<String>,
) -> Result<TokenRecord, AuthFailure> {
    let counters = &crate::metrics::metrics().auth;
    counters.requests.inc();
    let secret = secret.ok_or_else(|| {
        counters.failures.inc();
        AuthFailure::new(StatusCode::UNAUTHORIZED, AuthError::Missing.to_string())
    })?;
    let authenticator = authenticator(state)?;
    let result = match authenticator.authenticate_cached(&secret) {
        Some(result) => {
            counters.cache_hits.inc();
            result
        }
        // A cache miss runs the slow hash: keep it off the async workers.
        None => {
            counters.cache_misses.inc();
            tokio::task::spawn_blocking(move || authenticator.authenticate(&secret))
                .await
                .map_err(|e| AuthFailure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        }
    };
    if result.is_err() {
        counters.failures.inc();
    }
    result.map_err(|err| match err {
        AuthError::Meta(err) => {
            AuthFailure::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
        }
        other => AuthFailure::new(StatusCode::UNAUTHORIZED, other.to_string()),
    })
}

fn authenticator(state: &AppState) -> Result<Arc<Authenticator>, AuthFailure> {
    Ok(Arc::clone(&state.services()?.auth))
}

fn rfc3339(us: i64) -> Value {
    DateTime::<Utc>::from_timestamp_micros(us).map_or(Value::Null, |t| {
        Value::from(t.to_rfc3339_opts(SecondsFormat::Secs, true))
    })
}

fn token_info(token: &TokenRecord, authenticator: &Authenticator) -> Value {
    let permissions: Vec<&str> = token.permissions.iter().map(|p| p.as_str()).collect();
    json!({
        "id": token.id,
        "name": token.name,
        "description": token.description,
        "permissions": permissions,
        "created_at": rfc3339(token.created_at_us),
        "last_used_at": authenticator.last_used_us(token.id).map_or(Value::Null, rfc3339),
        "enabled": token.enabled,
        "expires_at": token.expires_at_us.map_or(Value::Null, rfc3339),
    })
}

/// `GET /api/v1/auth/verify` (public).
pub async fn verify(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    match authenticate(&state, auth::request_secret(&headers, uri.query())).await {
        Ok(token) => {
            let Ok(authenticator) = authenticator(&state) else {
                return AuthFailure::new(StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    .into_response();
            };
            let info = token_info(&token, &authenticator);
            let permissions = info["permissions"].clone();
            Json(json!({ "valid": true, "token_info": info, "permissions": permissions }))
                .into_response()
        }
        Err(AuthFailure(status, error)) => {
            (status, Json(json!({ "valid": false, "error": error }))).into_response()
        }
    }
}

pub async fn list_tokens(State(state): State<Arc<AppState>>) -> Result<Json<Value>, AuthFailure> {
    let authenticator = authenticator(&state)?;
    let tokens: Vec<Value> = authenticator
        .meta()
        .state()
        .admin()
        .tokens()
        .map(|t| token_info(t, &authenticator))
        .collect();
    Ok(Json(
        json!({ "success": true, "count": tokens.len(), "tokens": tokens }),
    ))
}

fn token_id(text: &str) -> Result<u64, AuthFailure> {
    text.parse().map_err(|_| {
        AuthFailure::new(
            StatusCode::BAD_REQUEST,
            format!("invalid token id '{text}'"),
        )
    })
}

/// The authenticator and the id of an existing token named by a path parameter.
fn known_token(state: &AppState, id: &str) -> Result<(Arc<Authenticator>, u64), AuthFailure> {
    let authenticator = authenticator(state)?;
    let id = token_id(id)?;
    existing(&authenticator, id)?;
    Ok((authenticator, id))
}

fn existing(authenticator: &Authenticator, id: u64) -> Result<TokenRecord, AuthFailure> {
    authenticator
        .meta()
        .state()
        .admin()
        .token(id)
        .cloned()
        .ok_or_else(|| AuthFailure::new(StatusCode::NOT_FOUND, "Token not found"))
}

pub async fn get_token(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AuthFailure> {
    let authenticator = authenticator(&state)?;
    let token = existing(&authenticator, token_id(&id)?)?;
    Ok(Json(
        json!({ "success": true, "token": token_info(&token, &authenticator) }),
    ))
}

/// Fields of a create or update request; unknown fields are refused so typos are noticed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFields {
    name: Option<String>,
    description: Option<String>,
    permissions: Option<Vec<String>>,
    expires_in: Option<String>,
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AuthFailure> {
    serde_json::from_slice(body).map_err(|e| {
        AuthFailure::new(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}"),
        )
    })
}

fn parse_permissions(names: &[String]) -> Result<Vec<Permission>, AuthFailure> {
    let mut permissions = Vec::new();
    for name in names {
        let permission = Permission::parse(name).ok_or_else(|| {
            AuthFailure::new(
                StatusCode::BAD_REQUEST,
                format!("invalid permission '{name}': use read, write, delete or admin"),
            )
        })?;
        if !permissions.contains(&permission) {
            permissions.push(permission);
        }
    }
    Ok(permissions)
}

fn parse_expiry(expires_in: &str, now_us: i64) -> Result<i64, AuthFailure> {
    parse_duration(expires_in)
        .filter(|d| !d.is_zero())
        .and_then(|d| i64::try_from(d.as_micros()).ok())
        .and_then(|d| now_us.checked_add(d))
        .ok_or_else(|| {
            AuthFailure::new(
                StatusCode::BAD_REQUEST,
                format!("invalid expires_in '{expires_in}': use a duration such as 24h or 7d"),
            )
        })
}

fn valid_name(name: &str) -> Result<String, AuthFailure> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 255 {
        return Err(AuthFailure::new(
            StatusCode::BAD_REQUEST,
            "name is required (at most 255 characters)",
        ));
    }
    Ok(name.to_string())
}

async fn commit(
    authenticator: Arc<Authenticator>,
    command: AdminCommand,
) -> Result<(), AuthFailure> {
    tokio::task::spawn_blocking(move || authenticator.commit(command))
        .await
        .map_err(|e| AuthFailure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(AuthFailure::from)
}

pub async fn create_token(
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<Response, AuthFailure> {
    let authenticator = authenticator(&state)?;
    let fields: TokenFields = parse_body(&body)?;
    let name = valid_name(fields.name.as_deref().unwrap_or(""))?;
    let permissions = match &fields.permissions {
        None => vec![Permission::Read, Permission::Write],
        Some(names) => parse_permissions(names)?,
    };
    let now = auth::now_us();
    let expires_at_us = fields
        .expires_in
        .as_deref()
        .map(|e| parse_expiry(e, now))
        .transpose()?;
    if authenticator
        .meta()
        .state()
        .admin()
        .token_named(&name)
        .is_some()
    {
        return Err(AuthFailure::new(
            StatusCode::CONFLICT,
            format!("a token named '{name}' already exists"),
        ));
    }
    let secret = auth::generate_secret();
    let description = fields.description.unwrap_or_default();
    let record = {
        let secret = secret.clone();
        tokio::task::spawn_blocking(move || {
            auth::new_token(
                &name,
                &description,
                permissions,
                &secret,
                now,
                expires_at_us,
            )
        })
        .await
        .map_err(|e| AuthFailure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    };
    commit(authenticator, AdminCommand::CreateToken(record)).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "success": true,
            "token": secret,
            "message": "Token created. Store it now: it cannot be shown again.",
        })),
    )
        .into_response())
}

pub async fn update_token(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, AuthFailure> {
    let (authenticator, id) = known_token(&state, &id)?;
    let fields: TokenFields = parse_body(&body)?;
    let command = AdminCommand::UpdateToken {
        id,
        name: fields.name.as_deref().map(valid_name).transpose()?,
        description: fields.description,
        permissions: fields
            .permissions
            .as_deref()
            .map(parse_permissions)
            .transpose()?,
        expires_at_us: fields
            .expires_in
            .as_deref()
            .map(|e| parse_expiry(e, auth::now_us()).map(Some))
            .transpose()?,
    };
    commit(authenticator, command).await?;
    Ok(Json(json!({ "success": true, "message": "Token updated" })))
}

pub async fn delete_token(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AuthFailure> {
    let (authenticator, id) = known_token(&state, &id)?;
    commit(authenticator, AdminCommand::DeleteToken { id }).await?;
    Ok(Json(json!({ "success": true, "message": "Token deleted" })))
}

pub async fn revoke_token(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AuthFailure> {
    let (authenticator, id) = known_token(&state, &id)?;
    let command = AdminCommand::SetTokenEnabled { id, enabled: false };
    commit(authenticator, command).await?;
    Ok(Json(json!({ "success": true, "message": "Token revoked" })))
}

pub async fn rotate_token(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AuthFailure> {
    let (authenticator, id) = known_token(&state, &id)?;
    let secret = auth::generate_secret();
    let (hash, lookup) = {
        let secret = secret.clone();
        tokio::task::spawn_blocking(move || (auth::hash_secret(&secret), auth::lookup_key(&secret)))
            .await
            .map_err(|e| AuthFailure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    };
    commit(
        authenticator,
        AdminCommand::SetTokenSecret { id, hash, lookup },
    )
    .await?;
    Ok(Json(json!({
        "success": true,
        "new_token": secret,
        "message": "Token rotated. The old secret no longer works.",
    })))
}

pub async fn cache_stats(State(state): State<Arc<AppState>>) -> Result<Json<Value>, AuthFailure> {
    let authenticator = authenticator(&state)?;
    Ok(Json(json!({
        "success": true,
        "cache_size": authenticator.cache_size(),
        "ttl_seconds": authenticator.ttl().as_secs(),
        "max_size": authenticator.max_entries(),
    })))
}

pub async fn cache_invalidate(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Value>, AuthFailure> {
    authenticator(&state)?.invalidate();
    Ok(Json(
        json!({ "success": true, "message": "Token cache cleared" }),
    ))
}
