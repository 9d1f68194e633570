//! Creating and deleting databases.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Server, call};

async fn count(server: &Server, table: &str) -> (StatusCode, Value) {
    let request = server
        .client
        .post(server.url("/api/v1/query"))
        .json(&json!({ "sql": format!("SELECT count(*) FROM {table}") }));
    call(request).await
}

fn parquet_files(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|e| e.unwrap().path())
        .map(|p| match p.is_dir() {
            true => parquet_files(&p),
            false => usize::from(p.extension().is_some_and(|x| x == "parquet")),
        })
        .sum()
}

/// `doomed` and its tables are gone; `kept` is untouched.
async fn assert_doomed_gone(server: &Server) {
    let (status, answer) = count(server, "doomed.cpu").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(count(server, "kept.cpu").await.1["data"], json!([[1]]));
    let request = server.client.get(server.url("/api/v1/databases/doomed"));
    assert_eq!(call(request).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn databases_are_created_listed_and_deleted_with_their_data() {
    let mut server = Server::start(&[("ARC_QUERY_TIMEOUT", "2")]).await;
    let create = |body: Value| {
        server
            .client
            .post(server.url("/api/v1/databases"))
            .json(&body)
    };
    let (status, created) = call(create(json!({"name": "fresh"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["name"], "fresh");
    assert_eq!(created["measurement_count"], 0);
    assert!(created["created_at"].is_string());
    for (body, expected) in [
        (json!({"name": "fresh"}), StatusCode::CONFLICT),
        (json!({"name": "1bad"}), StatusCode::BAD_REQUEST),
        (json!({"name": "a/b"}), StatusCode::BAD_REQUEST),
        (json!({"name": "system"}), StatusCode::BAD_REQUEST),
        (json!({"nom": "x"}), StatusCode::BAD_REQUEST),
    ] {
        let (status, answer) = call(create(body.clone())).await;
        assert_eq!(status, expected, "{body}: {answer}");
        assert!(answer["error"].is_string());
    }
    let (status, list) = call(server.client.get(server.url("/api/v1/databases"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["databases"][0]["name"], "fresh");
    let (status, _) = call(server.client.get(server.url("/api/v1/databases/nope"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Data in two databases, some flushed, some still buffered.
    for db in ["doomed", "kept"] {
        let (status, _) = server
            .post(
                &format!("/write?db={db}"),
                &[],
                "cpu v=1 1\nmem v=2 2\n".to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    server.flush().await;
    let (status, _) = server
        .post("/write?db=doomed", &[], "cpu v=3 3\n".to_string())
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(count(&server, "doomed.cpu").await.1["data"], json!([[2]]));

    let delete = |path: &str| server.client.delete(server.url(path));
    let (status, answer) = call(delete("/api/v1/databases/doomed?confirm=true")).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "delete.enabled is off: {answer}"
    );

    server.stop().await;
    server.restart_with(&[("ARC_DELETE_ENABLED", "true")]).await;
    let delete = |path: &str| server.client.delete(server.url(path));
    let (status, _) = call(delete("/api/v1/databases/doomed")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "confirm is required");
    let (status, _) = call(delete("/api/v1/databases/nope?confirm=true")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, answer) = call(delete("/api/v1/databases/doomed?confirm=true")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["files_deleted"], 3, "{answer}");

    assert_doomed_gone(&server).await;
    // Objects go once no query can be reading them (query.timeout = 2 s).
    let doomed_dir = server.dir.join("data/arc/doomed");
    let deadline = Instant::now() + Duration::from_secs(60);
    while parquet_files(&doomed_dir) > 0 {
        assert!(Instant::now() < deadline, "deleted files still in storage");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(parquet_files(&server.dir.join("data/arc/kept")), 2);
    // Nothing comes back from the WAL or the manifest after a crash.
    server.kill9();
    server.restart().await;
    assert_doomed_gone(&server).await;
    assert!(server.stop().await.success());
}
