//! The write and crash tests against Garage, and what happens when S3 cannot be reached.

use reqwest::StatusCode;

use crate::crash::{CRASH_ENV, acknowledged_rows_survive_kill9, kill_rounds};
use crate::garage::{garage_server, s3_env};
use crate::harness::{Server, free_port, stored_files};
use crate::write::every_endpoint_stores_what_was_sent;

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[tokio::test]
async fn every_endpoint_stores_what_was_sent_on_s3() {
    let env = s3_env(&garage_server().s3_endpoint, "write-test");
    let mut server = Server::start(&env_refs(&env)).await;
    every_endpoint_stores_what_was_sent(&server).await;
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn acknowledged_rows_survive_kill9_on_s3() {
    let mut env = s3_env(&garage_server().s3_endpoint, "crash-test");
    env.extend(
        CRASH_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let mut server = Server::start(&env_refs(&env)).await;
    acknowledged_rows_survive_kill9(&mut server, kill_rounds()).await;
}

#[tokio::test]
async fn unreachable_s3_keeps_writes_in_the_wal_until_storage_returns() {
    let closed_port = free_port();
    let unreachable = format!("127.0.0.1:{closed_port}");
    let env = s3_env(&unreachable, "outage-test");
    let mut server = Server::start(&env_refs(&env)).await;

    let line = "outage,host=a v=1 1768471200000000000";
    let (status, body) = server.post("/write?db=o", &[], line).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    let (status, body) = server
        .post("/api/v1/write/line-protocol/flush", &[], "")
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        json["error"].as_str().unwrap().contains("storage"),
        "{body}"
    );
    assert_eq!(server.get("/health").await.0, StatusCode::OK);
    assert!(server.is_running());
    assert!(
        server.stop().await.success(),
        "graceful stop even when the final flush fails"
    );

    // Storage is back: the WAL still has the row, and it lands.
    let endpoint = garage_server().s3_endpoint.clone();
    server
        .restart_with(&[("ARC_STORAGE_S3_ENDPOINT", endpoint.as_str())])
        .await;
    server.flush().await;
    let files = stored_files(&server.storage(), "o/outage/").await;
    assert_eq!(files.iter().map(|f| f.rows()).sum::<usize>(), 1);
    assert!(server.stop().await.success());
}

/// A row delete on S3 under a key prefix finds the rows it matches (object_store's prefix store
/// once hid every file from the delete's per-file table, so it deleted nothing).
#[tokio::test]
async fn a_row_delete_on_s3_removes_the_matching_rows() {
    let mut env = s3_env(&garage_server().s3_endpoint, "delete-test");
    env.push(("ARC_DELETE_ENABLED".into(), "true".into()));
    let server = Server::start(&env_refs(&env)).await;
    let lines: String = (0..100i64)
        .map(|i| format!("cpu,host=a id={i}i {}\n", 1_768_471_200_000_000_000 + i))
        .collect();
    let (status, body) = server.post("/write?db=deletes", &[], lines).await;
    assert_eq!(status.as_u16(), 204, "{body}");
    server.flush().await;
    let response = server
        .client
        .post(server.url("/api/v1/delete"))
        .json(&serde_json::json!({
            "database": "deletes", "measurement": "cpu", "where": "id < 40", "confirm": true
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["deleted_count"], 40, "{answer}");
    let left = crate::harness::query(&server, "SELECT count(*), min(id) FROM deletes.cpu").await;
    assert_eq!(serde_json::Value::from(left), serde_json::json!([[60, 40]]));
}
