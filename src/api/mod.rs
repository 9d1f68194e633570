//! HTTP API: thin handlers that decode a request, call a module, and encode the answer.
//! Errors become HTTP responses in one place ([`ApiError`]).

mod auth;
mod cluster;
mod cluster_files;
mod compaction;
mod compression;
mod continuous_queries;
mod databases;
mod delete;
mod health;
mod json_rows;
mod metrics;
mod msgpack;
mod query;
mod retention;
mod write;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::auth::Authenticator;
use crate::cluster::{Capability, Cluster};
use crate::compact::Compactor;
use crate::config::Config;
use crate::continuous::CqRunner;
use crate::delete::Deleter;
use crate::flush::{FlushError, Flusher};
use crate::ingest::{IngestError, Ingester};
use crate::meta::{AdminCommand, AdminError, ApplyError, Meta, MetaCommand, MetaError, Permission};
use crate::query::QueryEngine;

/// What a started node serves requests with.
pub struct Services {
    pub auth: Arc<Authenticator>,
    pub meta: Arc<Meta>,
    pub ingester: Arc<Ingester>,
    pub flusher: Arc<Flusher>,
    pub query: Arc<QueryEngine>,
    /// Present on nodes whose role compacts, when compaction is enabled.
    pub compactor: Option<Arc<Compactor>>,
    pub deleter: Arc<Deleter>,
    pub continuous_queries: Arc<CqRunner>,
    /// Present when `cluster.enabled`.
    pub cluster: Option<Arc<Cluster>>,
    /// Present on a reader that follows the writer's WAL.
    pub replication: Option<Arc<crate::replication::ReplicationStats>>,
    /// Present on a gated reader with its own storage: queries wait for the whole manifest.
    pub read_barrier: Option<Arc<crate::replication::ReadBarrier>>,
}

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

/// State shared by all handlers.
pub struct AppState {
    started_at: Instant,
    started_wall: DateTime<Utc>,
    phase: AtomicU8,
    services: OnceLock<Services>,
    max_payload_bytes: usize,
    query_timeout: Duration,
    auth_enabled: bool,
    delete_enabled: bool,
    retention_enabled: bool,
    continuous_queries_enabled: bool,
}

impl AppState {
    pub fn new(config: &Config) -> AppState {
        AppState {
            started_at: Instant::now(),
            started_wall: Utc::now(),
            phase: AtomicU8::new(STARTING),
            services: OnceLock::new(),
            max_payload_bytes: config.server.max_payload_size.bytes() as usize,
            query_timeout: Duration::from_secs(config.query.timeout),
            auth_enabled: config.auth.enabled,
            delete_enabled: config.delete.enabled,
            retention_enabled: config.retention.enabled,
            continuous_queries_enabled: config.continuous_query.enabled,
        }
    }

    /// Start-up (WAL replay) is done: requests may be served.
    pub fn set_ready(&self, services: Services) {
        let _ = self.services.set(services);
        self.phase.store(READY, Ordering::SeqCst);
    }

    pub fn set_draining(&self) {
        self.phase.store(DRAINING, Ordering::SeqCst);
    }

    fn services(&self) -> Result<&Services, ApiError> {
        match (self.phase.load(Ordering::SeqCst), self.services.get()) {
            (READY, Some(services)) => Ok(services),
            (DRAINING, _) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server is shutting down",
            )),
            _ => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server is starting (WAL replay in progress)",
            )),
        }
    }

    fn query_engine(&self) -> Result<&Arc<QueryEngine>, ApiError> {
        Ok(&self.services()?.query)
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let guard = |needed: Option<Permission>| {
        axum::middleware::from_fn_with_state((Arc::clone(&state), needed), auth::authorize)
    };
    let read = guard(Some(Permission::Read));
    let write = guard(Some(Permission::Write));
    let admin = guard(Some(Permission::Admin));
    let role = |capability: Capability| {
        axum::middleware::from_fn_with_state(
            (Arc::clone(&state), capability),
            cluster::route_by_role,
        )
    };
    let tokens = "/api/v1/auth/tokens";
    Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/ready/write", get(health::ready_for_writes))
        .route("/api/v1/auth/verify", get(auth::verify))
        .route("/metrics", get(metrics::prometheus))
        .route("/api/v1/metrics", get(metrics::json))
        .route("/api/v1/metrics/endpoints", get(metrics::endpoints))
        .merge(
            Router::new()
                .route("/api/v1/write/msgpack", post(write::msgpack))
                .route("/write", post(write::influx_v1))
                .route("/api/v2/write", post(write::influx_v2))
                .route("/api/v1/write/line-protocol", post(write::line_protocol))
                .route("/api/v1/write/line-protocol/flush", post(write::flush))
                .route_layer(role(Capability::Ingest))
                .route_layer(write),
        )
        .merge(
            compressed_query_routes()
                .route("/api/v1/query/arrow", post(query::arrow))
                .route("/api/v1/query/estimate", post(query::estimate))
                .route("/api/v1/measurements", get(query::measurements))
                .route_layer(axum::middleware::from_fn_with_state(
                    Arc::clone(&state),
                    cluster::catch_up_gate,
                ))
                .route_layer(role(Capability::Query))
                .route_layer(read.clone()),
        )
        .merge(
            Router::new()
                .route("/api/v1/databases", get(databases::list))
                .route("/api/v1/databases/{name}", get(databases::get))
                .route(
                    "/api/v1/databases/{name}/measurements",
                    get(databases::measurements),
                )
                .route_layer(role(Capability::Query))
                .route_layer(read),
        )
        .merge(
            Router::new()
                .route("/api/v1/databases", post(databases::create))
                .route_layer(guard(Some(Permission::Admin))),
        )
        .merge(
            Router::new()
                .route("/api/v1/delete", post(delete::rows))
                .route("/api/v1/delete/config", get(delete::config))
                .route_layer(role(Capability::Ingest))
                .route_layer(guard(Some(Permission::Admin))),
        )
        .merge(
            Router::new()
                .route("/api/v1/databases/{name}", delete(databases::delete))
                .route_layer(role(Capability::Ingest))
                .route_layer(guard(Some(Permission::Delete))),
        )
        .merge(
            Router::new()
                .route(tokens, get(auth::list_tokens).post(auth::create_token))
                .route(
                    &format!("{tokens}/{{id}}"),
                    get(auth::get_token)
                        .patch(auth::update_token)
                        .delete(auth::delete_token),
                )
                .route(&format!("{tokens}/{{id}}/rotate"), post(auth::rotate_token))
                .route(&format!("{tokens}/{{id}}/revoke"), post(auth::revoke_token))
                .route("/api/v1/auth/cache/stats", get(auth::cache_stats))
                .route(
                    "/api/v1/auth/cache/invalidate",
                    post(auth::cache_invalidate),
                )
                .route_layer(admin),
        )
        .merge(retention_routes(&state))
        .merge(continuous_query_routes(&state))
        .merge(
            Router::new()
                .route("/api/v1/compaction/status", get(compaction::status))
                .route("/api/v1/compaction/stats", get(compaction::stats))
                .route("/api/v1/compaction/candidates", get(compaction::candidates))
                .route("/api/v1/compaction/jobs", get(compaction::jobs))
                .route("/api/v1/compaction/history", get(compaction::history))
                .route_layer(guard(None)),
        )
        .merge(
            Router::new()
                .route("/api/v1/compaction/trigger", post(compaction::trigger))
                .route_layer(role(Capability::Compact))
                .route_layer(guard(Some(Permission::Admin))),
        )
        .merge(
            Router::new()
                .route("/api/v1/cluster", get(cluster::overview))
                .route("/api/v1/cluster/nodes", get(cluster::nodes))
                .route(
                    "/api/v1/cluster/nodes/{id}",
                    get(cluster::node).delete(cluster::remove_node),
                )
                .route("/api/v1/cluster/local", get(cluster::local))
                .route("/api/v1/cluster/health", get(cluster::health))
                .route("/api/v1/cluster/status", get(cluster::status))
                .route(
                    "/api/v1/cluster/compactor/assign",
                    post(cluster::assign_compactor),
                )
                .route(
                    "/api/v1/cluster/writers/{id}/promote",
                    post(cluster::promote_writer),
                )
                .route(
                    "/api/v1/cluster/writers/{id}/demote",
                    post(cluster::demote_writer),
                )
                .route("/api/v1/cluster/files", get(cluster_files::list))
                .route_layer(guard(Some(Permission::Admin))),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(common_headers))
        .layer(axum::middleware::from_fn(count_request))
        .with_state(state)
}

/// Counts every answered request and how long it took until its response started.
async fn count_request(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    crate::metrics::metrics()
        .http
        .record(response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// `/api/v1/retention` (when `retention.enabled`): reading needs a token, changing needs admin.
fn retention_routes(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    if !state.retention_enabled {
        return Router::new();
    }
    let guard = |needed: Option<Permission>| {
        axum::middleware::from_fn_with_state((Arc::clone(state), needed), auth::authorize)
    };
    let admin = || guard(Some(Permission::Admin));
    let base = "/api/v1/retention";
    Router::new()
        .route(
            base,
            get(retention::list)
                .route_layer(guard(None))
                .merge(post(retention::create).route_layer(admin())),
        )
        .route(
            &format!("{base}/{{id}}"),
            get(retention::get).route_layer(guard(None)).merge(
                put(retention::update)
                    .delete(retention::delete)
                    .route_layer(admin()),
            ),
        )
        .route(
            &format!("{base}/{{id}}/executions"),
            get(retention::executions).route_layer(guard(None)),
        )
        .route(
            &format!("{base}/{{id}}/execute"),
            post(retention::execute).route_layer(admin()),
        )
}

/// `/api/v1/continuous_queries` (when `continuous_query.enabled`): all admin.
fn continuous_query_routes(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    if !state.continuous_queries_enabled {
        return Router::new();
    }
    let base = "/api/v1/continuous_queries";
    Router::new()
        .route(
            base,
            get(continuous_queries::list).post(continuous_queries::create),
        )
        .route(
            &format!("{base}/{{id}}"),
            get(continuous_queries::get)
                .put(continuous_queries::update)
                .delete(continuous_queries::delete),
        )
        .route(
            &format!("{base}/{{id}}/execute"),
            // A run writes its results: in a cluster, on a node that ingests.
            post(continuous_queries::execute).route_layer(axum::middleware::from_fn_with_state(
                (Arc::clone(state), Capability::Ingest),
                cluster::route_by_role,
            )),
        )
        .route(
            &format!("{base}/{{id}}/executions"),
            get(continuous_queries::executions),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            (Arc::clone(state), Some(Permission::Admin)),
            auth::authorize,
        ))
}

/// Query routes whose JSON or MessagePack results are compressed on request (Arrow results use
/// IPC buffer compression instead).
fn compressed_query_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/query", post(query::json))
        .route("/api/v1/query/msgpack", post(query::msgpack))
        .route("/api/v1/query/{measurement}", get(query::measurement_rows))
        .route_layer(axum::middleware::from_fn(compression::compress_response))
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Cannot {method} {}", uri.path()),
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
}

/// CORS and security headers Arc sends on every response.
async fn common_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        ("access-control-allow-origin", "*"),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("x-xss-protection", "1; mode=block"),
        ("referrer-policy", "strict-origin-when-cross-origin"),
        (
            "permissions-policy",
            "geolocation=(), microphone=(), camera=()",
        ),
        (
            "content-security-policy",
            "default-src 'none'; frame-ancestors 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// An error answer: status plus Arc's `{"error": "..."}` body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, error = %self.message, "request failed");
        }
        let mut response =
            (self.status, axum::Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A record created a moment ago is gone: a concurrent request deleted it.
fn deleted_meanwhile() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "deleted by another request while being created",
    )
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

/// An RFC 3339 UTC time, or null.
fn time(us: i64) -> serde_json::Value {
    DateTime::<Utc>::from_timestamp_micros(us).map_or(serde_json::Value::Null, |t| {
        json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    })
}

/// Commits an admin command off the async workers (it syncs a file); a taken name is reported
/// as a `kind` (say, "retention policy") that already exists.
async fn commit_admin(meta: &Arc<Meta>, kind: &str, command: AdminCommand) -> Result<(), ApiError> {
    let meta = Arc::clone(meta);
    tokio::task::spawn_blocking(move || meta.commit(MetaCommand::Admin(command)))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| match e {
            MetaError::Rejected(ApplyError::Admin(AdminError::NameTaken(name))) => ApiError::new(
                StatusCode::CONFLICT,
                format!("a {kind} named '{name}' already exists"),
            ),
            other => other.into(),
        })
}

impl From<MetaError> for ApiError {
    fn from(err: MetaError) -> ApiError {
        let status = match &err {
            MetaError::Rejected(ApplyError::Admin(
                AdminError::UnknownToken(_)
                | AdminError::UnknownDatabase(_)
                | AdminError::UnknownPolicy(_)
                | AdminError::UnknownContinuousQuery(_),
            )) => StatusCode::NOT_FOUND,
            MetaError::Rejected(_) => StatusCode::CONFLICT,
            MetaError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            // Not a refusal: the change may yet apply, so the client must not take it as one.
            MetaError::Unconfirmed(_) => StatusCode::GATEWAY_TIMEOUT,
            MetaError::Io { .. } | MetaError::Corrupt { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, err.to_string())
    }
}

impl From<IngestError> for ApiError {
    fn from(err: IngestError) -> ApiError {
        let status = match &err {
            IngestError::InvalidDatabase(_)
            | IngestError::EmptyBody
            | IngestError::BadCompression { .. }
            | IngestError::Decode(_)
            | IngestError::Schema(_) => StatusCode::BAD_REQUEST,
            IngestError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            // Durable here but unconfirmed: like a gateway that timed out, the client cannot
            // know whether the write stays.
            IngestError::NotReplicated(err) if err.maybe_stored() => StatusCode::GATEWAY_TIMEOUT,
            IngestError::BufferFull { .. } | IngestError::NotReplicated(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            IngestError::Wal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, err.to_string())
    }
}

impl From<FlushError> for ApiError {
    fn from(err: FlushError) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("flush failed: {err}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn call(state: &Arc<AppState>, method: &str, path: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from("cpu v=1"))
            .unwrap();
        let response = router(Arc::clone(state)).oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn not_ready_while_starting_or_draining_and_writes_are_refused() {
        let mut config = Config::default();
        config.auth.enabled = false;
        let state = Arc::new(AppState::new(&config));
        assert_eq!(call(&state, "GET", "/health").await.0, StatusCode::OK);
        let (status, body) = call(&state, "GET", "/ready").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("\"reason\":\"starting\""), "{body}");
        let (status, body) = call(&state, "POST", "/write").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("starting"), "{body}");

        state.set_draining();
        let (status, body) = call(&state, "GET", "/ready").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("shutting_down"), "{body}");
        let (status, body) = call(&state, "POST", "/api/v1/write/msgpack").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("shutting down"), "{body}");
    }
}
