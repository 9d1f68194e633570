//! Retention policies: dry runs, execution, history, the scheduler and bad input.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Server, call};

const HOUR_NS: i64 = 3_600_000_000_000;
const DAY_NS: i64 = 24 * HOUR_NS;

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

async fn rows(server: &Server, table: &str) -> i64 {
    let request = server
        .client
        .post(server.url("/api/v1/query"))
        .json(&json!({ "sql": format!("SELECT count(*) FROM {table}") }));
    let (status, body) = call(request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"][0][0].as_i64().unwrap()
}

/// Three old hours (40 days ago, one file each) and two recent ones, two rows per hour.
async fn write_old_and_new(server: &Server, db: &str) {
    let now = now_ns();
    let mut lines = String::new();
    for hour in [
        40 * DAY_NS,
        40 * DAY_NS - HOUR_NS,
        40 * DAY_NS - 2 * HOUR_NS,
        HOUR_NS,
        0,
    ] {
        for i in 0..2 {
            lines.push_str(&format!("cpu,host=h{i} v={i}i {}\n", now - hour - i));
        }
    }
    let (status, body) = server.post(&format!("/write?db={db}"), &[], lines).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    server.flush().await;
}

#[tokio::test]
async fn policies_remove_exactly_the_expired_files_on_call_and_on_schedule() {
    let mut server = Server::start(&[]).await;
    write_old_and_new(&server, "ret").await;
    assert_eq!(rows(&server, "ret.cpu").await, 10);
    let url = |path: &str| server.url(&format!("/api/v1/retention{path}"));
    let (status, policy) = call(server.client.post(url("")).json(&json!({
        "name": "month", "database": "ret", "measurement": "cpu",
        "retention_days": 30, "buffer_days": 0
    })))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{policy}");
    assert_eq!(policy["is_active"], true);
    let id = policy["id"].as_u64().unwrap();
    let execute = |body: Value| {
        server
            .client
            .post(url(&format!("/{id}/execute")))
            .json(&body)
    };

    let (status, dry) = call(execute(json!({"dry_run": true}))).await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(dry["files_deleted"], 3);
    assert_eq!(dry["deleted_count"], 6);
    assert_eq!(dry["affected_measurements"], json!(["cpu"]));
    assert_eq!(
        rows(&server, "ret.cpu").await,
        10,
        "a dry run changes nothing"
    );
    let (status, _) = call(execute(json!({}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "needs confirm");
    assert_eq!(rows(&server, "ret.cpu").await, 10);

    let (status, done) = call(execute(json!({"confirm": true}))).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["files_deleted"], dry["files_deleted"]);
    assert_eq!(done["deleted_count"], dry["deleted_count"]);
    assert_eq!(rows(&server, "ret.cpu").await, 4);
    let (_, history) = call(server.client.get(url(&format!("/{id}/executions")))).await;
    assert_eq!(history["count"], 1, "{history}");
    assert_eq!(history["executions"][0]["status"], "completed");
    assert_eq!(history["executions"][0]["files_deleted"], 3);
    let (_, policy) = call(server.client.get(url(&format!("/{id}")))).await;
    assert_eq!(policy["last_deleted_count"], 6);

    // The scheduler runs every active policy without a call.
    write_old_and_new(&server, "sched").await;
    let (status, _) = call(server.client.post(url("")).json(&json!({
        "name": "sched", "database": "sched", "retention_days": 30, "buffer_days": 0
    })))
    .await;
    assert_eq!(status, StatusCode::CREATED);
    server.stop().await;
    server
        .restart_with(&[("ARC_SCHEDULER_RETENTION_SCHEDULE", "*/2 * * * * *")])
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows(&server, "sched.cpu").await != 4 {
        assert!(
            Instant::now() < deadline,
            "the scheduler never ran the policy"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(rows(&server, "ret.cpu").await, 4);
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn bad_policy_requests_get_a_json_error_and_change_nothing() {
    let mut server = Server::start(&[]).await;
    let url = |path: &str| server.url(&format!("/api/v1/retention{path}"));
    let (status, created) = call(server.client.post(url("")).json(&json!({
        "name": "p", "database": "db", "retention_days": 30
    })))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["buffer_days"], 7);
    let execute = url(&format!("/{}/execute", created["id"]));
    let (_, before) = call(server.client.get(url(""))).await;
    let cases = [
        (
            server
                .client
                .post(url(""))
                .json(&json!({"database": "db", "retention_days": 30})),
            StatusCode::BAD_REQUEST,
        ),
        (
            server
                .client
                .post(url(""))
                .json(&json!({"name": "x", "retention_days": 30})),
            StatusCode::BAD_REQUEST,
        ),
        (
            server
                .client
                .post(url(""))
                .json(&json!({"name": "x", "database": "db", "retention_days": 0})),
            StatusCode::BAD_REQUEST,
        ),
        (
            server.client.post(url("")).json(
                &json!({"name": "x", "database": "db", "retention_days": 5, "buffer_days": 7}),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            server
                .client
                .post(url(""))
                .json(&json!({"name": "x", "database": "db", "retention_days": "30"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            server
                .client
                .post(url(""))
                .json(&json!({"name": "x", "database": "db", "retention_days": 30, "days": 1})),
            StatusCode::BAD_REQUEST,
        ),
        (
            server
                .client
                .post(url(""))
                .json(&json!({"name": "p", "database": "db", "retention_days": 30})),
            StatusCode::CONFLICT,
        ),
        (server.client.get(url("/abc")), StatusCode::BAD_REQUEST),
        (server.client.get(url("/999")), StatusCode::NOT_FOUND),
        (
            server
                .client
                .put(url("/999"))
                .json(&json!({"name": "q", "database": "db", "retention_days": 30})),
            StatusCode::NOT_FOUND,
        ),
        (server.client.delete(url("/999")), StatusCode::NOT_FOUND),
        (
            server
                .client
                .post(url("/999/execute"))
                .json(&json!({"dry_run": true})),
            StatusCode::NOT_FOUND,
        ),
        (
            server
                .client
                .post(&execute)
                .json(&json!({"dry_run": "yes"})),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (request, expected) in cases {
        let (status, body) = call(request).await;
        assert_eq!(status, expected, "{body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let (_, after) = call(server.client.get(url(""))).await;
    assert_eq!(before, after);
    assert!(server.stop().await.success());
}
