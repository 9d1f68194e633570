//! Tokens: every route's permission rule, the token lifecycle, and the first admin token.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN, Server};

/// Sends a request with `token` (none: no credentials at all).
async fn call(
    server: &Server,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let client = reqwest::Client::new();
    let mut request = client.request(method, server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    } else {
        request = request.body("cpu v=1");
    }
    crate::harness::call(request).await
}

async fn create_token(server: &Server, body: Value) -> String {
    let (status, answer) = call(
        server,
        Method::POST,
        "/api/v1/auth/tokens",
        Some(ADMIN_TOKEN),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer["token"].as_str().unwrap().to_string()
}

async fn verify(server: &Server, token: &str) -> (StatusCode, Value) {
    call(
        server,
        Method::GET,
        "/api/v1/auth/verify",
        Some(token),
        None,
    )
    .await
}

/// The status of an admin-only request made with `token`.
async fn admin_status(server: &Server, token: &str) -> StatusCode {
    call(
        server,
        Method::GET,
        "/api/v1/auth/tokens",
        Some(token),
        None,
    )
    .await
    .0
}

/// The token listing without `last_used_at`, which every request moves on.
async fn token_records(server: &Server) -> Value {
    let (_, mut list) = call(
        server,
        Method::GET,
        "/api/v1/auth/tokens",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    for token in list["tokens"].as_array_mut().unwrap() {
        token.as_object_mut().unwrap().remove("last_used_at");
    }
    list
}

fn token_id(tokens: &Value, name: &str) -> u64 {
    tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap()["id"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn every_route_enforces_its_permission() {
    let mut server = Server::start(&[("ARC_DELETE_ENABLED", "true")]).await;
    let reader = create_token(&server, json!({"name": "r", "permissions": ["read"]})).await;
    let writer = create_token(&server, json!({"name": "w", "permissions": ["write"]})).await;
    let deleter = create_token(&server, json!({"name": "d", "permissions": ["delete"]})).await;
    let default = create_token(&server, json!({"name": "rw"})).await;
    let query = || Some(json!({"sql": "SELECT 1"}));
    // (method, path, body, the permission the route needs)
    let routes: Vec<(Method, &str, Option<Value>, &str)> = vec![
        (Method::POST, "/write?db=a", None, "write"),
        (Method::POST, "/api/v2/write?bucket=a", None, "write"),
        (Method::POST, "/api/v1/write/line-protocol", None, "write"),
        (Method::POST, "/api/v1/write/msgpack", None, "write"),
        (
            Method::POST,
            "/api/v1/write/line-protocol/flush",
            None,
            "write",
        ),
        (Method::POST, "/api/v1/query", query(), "read"),
        (Method::POST, "/api/v1/query/arrow", query(), "read"),
        (Method::POST, "/api/v1/query/msgpack", query(), "read"),
        (Method::POST, "/api/v1/query/estimate", query(), "read"),
        (Method::GET, "/api/v1/query/cpu", None, "read"),
        (Method::GET, "/api/v1/measurements", None, "read"),
        (Method::GET, "/api/v1/databases", None, "read"),
        (Method::GET, "/api/v1/databases/a", None, "read"),
        (
            Method::GET,
            "/api/v1/databases/a/measurements",
            None,
            "read",
        ),
        (
            Method::POST,
            "/api/v1/databases",
            Some(json!({"name": "p"})),
            "admin",
        ),
        (
            Method::DELETE,
            "/api/v1/databases/none?confirm=true",
            None,
            "delete",
        ),
        (Method::POST, "/api/v1/compaction/trigger", None, "admin"),
        (
            Method::POST,
            "/api/v1/delete",
            Some(json!({"database": "a", "measurement": "m", "where": "1=1", "dry_run": true})),
            "admin",
        ),
        (Method::GET, "/api/v1/delete/config", None, "admin"),
        (Method::GET, "/api/v1/continuous_queries", None, "admin"),
        (
            Method::POST,
            "/api/v1/continuous_queries",
            Some(json!({"name": "perm"})),
            "admin",
        ),
        (Method::GET, "/api/v1/continuous_queries/999", None, "admin"),
        (
            Method::PUT,
            "/api/v1/continuous_queries/999",
            Some(json!({})),
            "admin",
        ),
        (
            Method::DELETE,
            "/api/v1/continuous_queries/999",
            None,
            "admin",
        ),
        (
            Method::POST,
            "/api/v1/continuous_queries/999/execute",
            None,
            "admin",
        ),
        (
            Method::GET,
            "/api/v1/continuous_queries/999/executions",
            None,
            "admin",
        ),
        (
            Method::POST,
            "/api/v1/retention",
            Some(json!({"name": "perm", "database": "a", "retention_days": 30})),
            "admin",
        ),
        (
            Method::PUT,
            "/api/v1/retention/999",
            Some(json!({})),
            "admin",
        ),
        (Method::DELETE, "/api/v1/retention/999", None, "admin"),
        (Method::POST, "/api/v1/retention/999/execute", None, "admin"),
        (Method::GET, "/api/v1/auth/tokens", None, "admin"),
        (
            Method::POST,
            "/api/v1/auth/tokens",
            Some(json!({"name": "x"})),
            "admin",
        ),
        (Method::GET, "/api/v1/auth/tokens/1", None, "admin"),
        (
            Method::PATCH,
            "/api/v1/auth/tokens/1",
            Some(json!({})),
            "admin",
        ),
        (Method::DELETE, "/api/v1/auth/tokens/999", None, "admin"),
        (
            Method::POST,
            "/api/v1/auth/tokens/999/rotate",
            None,
            "admin",
        ),
        (
            Method::POST,
            "/api/v1/auth/tokens/999/revoke",
            None,
            "admin",
        ),
        (Method::GET, "/api/v1/auth/cache/stats", None, "admin"),
        (Method::POST, "/api/v1/auth/cache/invalidate", None, "admin"),
        (Method::GET, "/api/v1/cluster", None, "admin"),
        (Method::GET, "/api/v1/cluster/nodes", None, "admin"),
        (Method::GET, "/api/v1/cluster/nodes/n1", None, "admin"),
        (Method::DELETE, "/api/v1/cluster/nodes/n1", None, "admin"),
        (Method::GET, "/api/v1/cluster/local", None, "admin"),
        (Method::GET, "/api/v1/cluster/health", None, "admin"),
        (Method::GET, "/api/v1/cluster/status", None, "admin"),
        (Method::GET, "/api/v1/cluster/files", None, "admin"),
    ];
    let holders = [
        ("read", reader.as_str()),
        ("write", writer.as_str()),
        ("delete", deleter.as_str()),
    ];
    for (method, path, body, needed) in &routes {
        let (status, answer) = call(&server, method.clone(), path, None, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(
            answer,
            json!({"success": false, "error": "Authentication required"})
        );
        let (status, answer) = call(
            &server,
            method.clone(),
            path,
            Some("not-a-token"),
            body.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(answer["error"], "Invalid or expired token");
        for (permission, token) in holders {
            let (status, answer) =
                call(&server, method.clone(), path, Some(token), body.clone()).await;
            if permission == *needed {
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{permission} on {method} {path}: {status} {answer}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{permission} on {method} {path}"
                );
                assert_eq!(
                    answer,
                    json!({"success": false, "error": format!("Permission denied: {needed} required")})
                );
            }
        }
        let (status, _) = call(
            &server,
            method.clone(),
            path,
            Some(ADMIN_TOKEN),
            body.clone(),
        )
        .await;
        assert!(status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN);
    }
    // Omitted permissions mean read and write.
    let (status, _) = call(&server, Method::POST, "/write?db=a", Some(&default), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(
        &server,
        Method::POST,
        "/api/v1/query",
        Some(&default),
        query(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Public routes answer without a token.
    for path in ["/health", "/ready"] {
        assert_eq!(
            call(&server, Method::GET, path, None, None).await.0,
            StatusCode::OK
        );
    }
    // The other places a token may come from.
    let client = reqwest::Client::new();
    for request in [
        client
            .get(server.url("/api/v1/databases"))
            .header("authorization", format!("Token {reader}")),
        client
            .get(server.url("/api/v1/databases"))
            .header("authorization", reader.clone()),
        client
            .get(server.url("/api/v1/databases"))
            .header("x-api-key", reader.clone()),
        client.get(server.url(&format!(
            "/api/v1/databases?p={}",
            reader.replace('=', "%3D")
        ))),
    ] {
        assert_eq!(request.send().await.unwrap().status(), StatusCode::OK);
    }
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn revoked_deleted_rotated_and_expired_tokens_stop_working() {
    let mut server = Server::start(&[]).await;
    let admin = Some(ADMIN_TOKEN);
    let mut tokens = Vec::new();
    for name in ["revoked", "deleted", "rotated"] {
        tokens.push(create_token(&server, json!({"name": name, "permissions": ["read"]})).await);
    }
    let expiring = create_token(
        &server,
        // Long enough to be verified as valid first on a loaded machine.
        json!({"name": "expiring", "permissions": ["read"], "expires_in": "15s"}),
    )
    .await;
    let (status, list) = call(&server, Method::GET, "/api/v1/auth/tokens", admin, None).await;
    assert_eq!(status, StatusCode::OK);
    // Listings never carry secrets or hashes.
    let listing = list.to_string();
    for secret in tokens.iter().chain([&expiring]) {
        assert!(!listing.contains(secret.as_str()));
    }
    assert!(!listing.contains("pbkdf2"), "{listing}");
    assert_eq!(list["count"], 5);

    for token in tokens.iter().chain([&expiring]) {
        let (status, answer) = verify(&server, token).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["valid"], true);
        assert_eq!(answer["permissions"], json!(["read"]));
    }

    let id = |name: &str| token_id(&list, name);
    let path = format!("/api/v1/auth/tokens/{}/revoke", id("revoked"));
    assert_eq!(
        call(&server, Method::POST, &path, admin, None).await.0,
        StatusCode::OK
    );
    let path = format!("/api/v1/auth/tokens/{}", id("deleted"));
    assert_eq!(
        call(&server, Method::DELETE, &path, admin, None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&server, Method::GET, &path, admin, None).await.0,
        StatusCode::NOT_FOUND
    );
    let path = format!("/api/v1/auth/tokens/{}/rotate", id("rotated"));
    let (status, rotated) = call(&server, Method::POST, &path, admin, None).await;
    assert_eq!(status, StatusCode::OK);
    let new_secret = rotated["new_token"].as_str().unwrap().to_string();
    // All three were verified (and cached) a moment ago; the change holds at once.
    for token in &tokens {
        let (status, answer) = verify(&server, token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
        assert_eq!(
            answer,
            json!({"valid": false, "error": "Invalid or expired token"})
        );
    }
    assert_eq!(verify(&server, &new_secret).await.0, StatusCode::OK);

    let deadline = Instant::now() + Duration::from_secs(60);
    while verify(&server, &expiring).await.0 == StatusCode::OK {
        assert!(Instant::now() < deadline, "expired token still accepted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A restart keeps every change.
    server.stop().await;
    server.restart().await;
    assert_eq!(verify(&server, &new_secret).await.0, StatusCode::OK);
    for token in tokens.iter().chain([&expiring]) {
        assert_eq!(verify(&server, token).await.0, StatusCode::UNAUTHORIZED);
    }
    // No secret made after start-up reaches the log or any file the server keeps.
    let mut stored = server.log();
    for entry in walk(&server.dir) {
        stored.push_str(&String::from_utf8_lossy(&std::fs::read(entry).unwrap()));
    }
    for token in &tokens {
        assert!(!stored.contains(token.as_str()));
    }
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn management_requests_with_bad_input_change_nothing() {
    let mut server = Server::start(&[]).await;
    let admin = Some(ADMIN_TOKEN);
    let bad: Vec<(Method, &str, Value, StatusCode)> = vec![
        (
            Method::POST,
            "/api/v1/auth/tokens",
            json!({}),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/v1/auth/tokens",
            json!({"name": " "}),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/v1/auth/tokens",
            json!({"name": "x", "permissions": ["root"]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/v1/auth/tokens",
            json!({"name": "x", "expires_in": "soon"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/v1/auth/tokens",
            json!({"name": "x", "permission": ["read"]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/v1/auth/tokens",
            json!({"name": "admin"}),
            StatusCode::CONFLICT,
        ),
        (
            Method::PATCH,
            "/api/v1/auth/tokens/abc",
            json!({}),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PATCH,
            "/api/v1/auth/tokens/999",
            json!({}),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::PATCH,
            "/api/v1/auth/tokens/1",
            json!({"permissions": ["everything"]}),
            StatusCode::BAD_REQUEST,
        ),
    ];
    let before = token_records(&server).await;
    for (method, path, body, expected) in bad {
        let (status, answer) = call(&server, method.clone(), path, admin, Some(body.clone())).await;
        assert_eq!(status, expected, "{method} {path} {body}: {answer}");
        assert_eq!(answer["success"], false);
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    assert_eq!(before, token_records(&server).await);
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn first_start_prints_one_admin_token_and_bootstrap_variables_work() {
    // No configured secret: a random admin token is printed once.
    let mut server = Server::start(&[("ARC_AUTH_BOOTSTRAP_TOKEN", "")]).await;
    let banner = "Admin API token (shown only now; store it safely): ";
    let printed: Vec<String> = server
        .log()
        .lines()
        .filter_map(|line| line.split_once(banner).map(|(_, t)| t.trim().to_string()))
        .collect();
    assert_eq!(printed.len(), 1, "{}", server.log());
    let secret = printed[0].clone();
    assert_eq!(secret.len(), 44);
    assert_eq!(admin_status(&server, &secret).await, StatusCode::OK);
    server.stop().await;
    server.restart().await;
    assert_eq!(
        server.log().matches(banner).count(),
        1,
        "restart prints none"
    );
    assert_eq!(admin_status(&server, &secret).await, StatusCode::OK);

    // A bootstrap secret is a no-op once tokens exist, unless recovery is forced.
    let recovery = "recovery-secret-0123456789abcdefghijklmnop";
    server.stop().await;
    server
        .restart_with(&[("ARC_AUTH_BOOTSTRAP_TOKEN", recovery)])
        .await;
    assert_eq!(
        admin_status(&server, recovery).await,
        StatusCode::UNAUTHORIZED
    );
    server.stop().await;
    server
        .restart_with(&[("ARC_AUTH_FORCE_BOOTSTRAP", "true")])
        .await;
    assert_eq!(admin_status(&server, recovery).await, StatusCode::OK);
    let (_, list) = call(
        &server,
        Method::GET,
        "/api/v1/auth/tokens",
        Some(&secret),
        None,
    )
    .await;
    let names: Vec<&str> = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "arc-recovery"]);
    assert_eq!(
        admin_status(&server, &secret).await,
        StatusCode::OK,
        "existing tokens untouched"
    );
    assert!(
        !server.log().contains(recovery),
        "configured secrets are never logged"
    );
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn a_short_bootstrap_token_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_arcdb"))
        .env_clear()
        .env("ARC_SERVER_HOST", "127.0.0.1")
        .env("ARC_SERVER_PORT", "0")
        .env("ARC_AUTH_BOOTSTRAP_TOKEN", "too-short-secret")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("auth.bootstrap_token"), "{stderr}");
    assert!(!stderr.contains("too-short-secret"), "{stderr}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
