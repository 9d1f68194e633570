//! Pattern A: several writers share one object store (Garage) as peers behind a load balancer.
//! Each writer numbers its own WAL; the manifest keeps a flushed-through position per writer, and
//! file names carry the writer, so writers never take each other's rows as flushed or overwrite
//! each other's objects. Readers query the bucket.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::cluster_harness::{NodeSpec, StorageMode, TestCluster, eventually, get_json};
use crate::workload::{Ledger, Table, WorkloadOptions, check, queried_ids, start_writes};

const SETTLE: Duration = Duration::from_secs(90);
const WRITERS: [&str; 3] = ["writer-01", "writer-02", "writer-03"];

fn shared<'a>(name: &'a str, role: &'a str) -> NodeSpec<'a> {
    NodeSpec::new(name, role).with(&[
        ("ARC_CLUSTER_SHARED_STORAGE_MODE", "true"),
        ("ARC_CLUSTER_ROUTE_TIMEOUT", "2000"),
        ("ARC_INGEST_MAX_BUFFER_AGE_MS", "1000"),
    ])
}

/// The seeds' recommended shape: 3 writers, 2 readers and a compactor on one bucket.
async fn three_writers() -> TestCluster {
    let mut specs: Vec<NodeSpec> = WRITERS.iter().map(|w| shared(w, "writer")).collect();
    specs.extend([
        shared("reader-01", "reader"),
        shared("reader-02", "reader"),
        shared("compactor-01", "compactor"),
    ]);
    TestCluster::start_with(StorageMode::Garage, specs).await
}

/// Waits until a write sent from now on is acknowledged.
async fn writes_flow(ledger: &Ledger, what: &str) {
    let from = Instant::now();
    eventually(what, SETTLE, || async {
        ledger.first_acknowledged_after(from).map(|_| ())
    })
    .await;
}

/// How many manifest files each writer flushed (by the writer tag in their names).
fn files_by_writer(manifest: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for path in manifest {
        let writer = path
            .rsplit_once("_w-")
            .map_or("untagged", |(_, tail)| tail.trim_end_matches(".parquet"));
        *counts.entry(writer.to_owned()).or_default() += 1;
    }
    counts
}

/// Acceptance 1: clients spread writes over three writers, moving on after any answer but an
/// acknowledgement (as a load balancer routes around a dead writer); one writer is killed with
/// -9 mid-load and restarted. Every acknowledged row is stored exactly once, and every reader
/// and writer answers the same.
#[tokio::test]
async fn writers_sharing_a_bucket_lose_nothing_acknowledged_when_one_is_killed_and_restarted() {
    let mut cluster = three_writers().await;
    for writer in WRITERS {
        let (status, body) = get_json(&cluster.node(writer).server, "/ready").await;
        assert_eq!(status, StatusCode::OK, "{writer}: {body}");
    }
    let table = Table::new("shared", "rows");
    let ledger = Ledger::new();
    let targets = WRITERS
        .iter()
        .map(|w| cluster.node(w).server.url(""))
        .collect();
    let options = WorkloadOptions {
        clients: 3,
        timeout: Duration::from_secs(5),
        ..WorkloadOptions::default()
    };
    let writes = start_writes(&ledger, targets, table.clone(), options);
    writes_flow(&ledger, "writes acknowledged").await;
    // Rows of every writer reach the bucket before the kill.
    eventually("every writer flushed a file", SETTLE, || async {
        let manifest = cluster.manifest("reader-01").await;
        let by_writer = files_by_writer(&manifest);
        WRITERS
            .iter()
            .all(|w| by_writer.contains_key(*w))
            .then_some(())
    })
    .await;

    // The writer leading the Raft group, if one does: the survivors' registrations then wait
    // for an election too.
    let leader = cluster.wait_for_leader().await;
    let victim = if WRITERS.contains(&leader.as_str()) {
        leader.clone()
    } else {
        "writer-02".to_owned()
    };
    eprintln!("killing {victim} (the Raft leader is {leader})");
    cluster.kill9(&victim);
    writes_flow(&ledger, "writes acknowledged by the surviving writers").await;
    cluster.restart(&victim).await;
    writes_flow(&ledger, "writes acknowledged after the restart").await;
    writes.stop().await;
    eprintln!("requests: {}", ledger.requests());

    for writer in WRITERS {
        cluster.node(writer).server.flush().await;
    }
    let manifest = cluster.manifest("reader-01").await;
    eprintln!("files by writer: {:?}", files_by_writer(&manifest));
    let mut answers = Vec::new();
    for name in ["reader-01", "reader-02"].into_iter().chain(WRITERS) {
        let server = &cluster.node(name).server;
        let (verdict, stored) = eventually(
            &format!("{name} answers every acknowledged row once"),
            SETTLE,
            || async {
                let stored = queried_ids(server, &table).await.ok()?;
                Some((check(&ledger, &stored).ok()?, stored))
            },
        )
        .await;
        eprintln!("{name}: {verdict}");
        answers.push(stored);
    }
    assert!(
        answers.windows(2).all(|pair| pair[0] == pair[1]),
        "readers and writers answer the same rows"
    );
}

/// Acceptance 4: a row delete sent to one writer also removes the matching rows the other
/// writers still hold in their buffers. While a writer cannot be asked to flush, a delete is
/// refused whole (503) rather than leaving that writer's rows behind.
#[tokio::test]
async fn a_delete_sent_to_one_writer_removes_rows_buffered_on_the_others() {
    // Nothing flushes on its own: every row stays buffered until a flush is asked for.
    let buffered = |name, role| {
        shared(name, role).with(&[
            ("ARC_INGEST_MAX_BUFFER_AGE_MS", "3600000"),
            ("ARC_DELETE_ENABLED", "true"),
        ])
    };
    let mut specs: Vec<NodeSpec> = WRITERS.iter().map(|w| buffered(w, "writer")).collect();
    specs.push(buffered("reader-01", "reader"));
    let mut cluster = TestCluster::start_with(StorageMode::Garage, specs).await;
    let lines = |host: &str| -> String {
        (0..100i64)
            .map(|i| {
                format!(
                    "cpu,host={host} id={i}i {}\n",
                    1_768_471_200_000_000_000 + i
                )
            })
            .collect()
    };
    for (writer, host) in WRITERS.iter().zip(["a", "b", "c"]) {
        let (status, body) = cluster
            .node(writer)
            .server
            .post("/write?db=spread", &[], lines(host))
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{writer}: {body}");
    }
    let delete = json!({
        "database": "spread", "measurement": "cpu", "where": "id < 40", "confirm": true
    });
    let per_host = "SELECT host, count(*), min(id) FROM spread.cpu GROUP BY host ORDER BY host";

    // With writer-03 down its buffered rows cannot be reached: the delete changes nothing.
    cluster.kill9("writer-03");
    let deleting = &cluster.node("writer-01").server;
    let (status, answer) = post_json(deleting, "/api/v1/delete", &delete).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert!(answer.to_string().contains("writer-03"), "{answer}");
    cluster.restart("writer-03").await;

    let deleting = &cluster.node("writer-01").server;
    let (status, answer) = post_json(deleting, "/api/v1/delete", &delete).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["deleted_count"], 120, "{answer}");
    for writer in WRITERS {
        cluster.node(writer).server.flush().await;
    }
    let expected = json!([["a", 60, 40], ["b", 60, 40], ["c", 60, 40]]);
    for name in ["reader-01", "writer-02", "writer-03"] {
        let server = &cluster.node(name).server;
        eventually(
            &format!("{name} answers without the deleted rows"),
            SETTLE,
            || async {
                let answer = crate::harness::query(server, per_host).await;
                (serde_json::Value::from(answer) == expected).then_some(())
            },
        )
        .await;
    }

    // A database whose only rows sit in writer-02's buffer is deleted through writer-03.
    let (status, body) = cluster
        .node("writer-02")
        .server
        .post("/write?db=doomed", &[], lines("b"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let dropping = &cluster.node("writer-03").server;
    let dropped = dropping
        .client
        .delete(dropping.url("/api/v1/databases/doomed?confirm=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(dropped.status(), StatusCode::OK);
    for writer in WRITERS {
        cluster.node(writer).server.flush().await;
    }
    for name in ["reader-01", "writer-02"] {
        let (_, listed) = get_json(&cluster.node(name).server, "/api/v1/databases").await;
        let names: Vec<&str> = listed["databases"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|d| d["name"].as_str())
            .collect();
        assert_eq!(names, ["spread"], "{name}: {listed}");
    }
}

/// POSTs a JSON body and decodes the JSON answer.
async fn post_json(
    server: &crate::harness::Server,
    path: &str,
    body: &serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    let response = server
        .client
        .post(server.url(path))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or_default())
}
