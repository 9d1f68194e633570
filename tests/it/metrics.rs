//! `/metrics` on every role: counters move by exactly what a test sends, cluster gauges are
//! there, JSON logs name the node and carry no secret, and a real Prometheus scrapes it.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::cluster_harness::{NodeSpec, SHARED_SECRET, StorageMode, TestCluster, eventually};
use crate::harness::{
    ADMIN_TOKEN, Server, die_with_parent, free_port, map, msgpack, query, write_lines,
};

/// `/metrics` parsed by this test (not by arcdb's own parser): sample → value.
async fn scrape(server: &Server) -> BTreeMap<String, f64> {
    let response = reqwest::Client::new()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').expect("`name value` sample lines");
            (name.to_owned(), value.parse().expect("numeric sample"))
        })
        .collect()
}

fn value(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    *samples
        .get(name)
        .unwrap_or_else(|| panic!("no sample {name} in {samples:?}"))
}

/// How much each named sample moved from `before` to `after`.
fn moved(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    names: &[&str],
) -> Vec<(String, f64)> {
    names
        .iter()
        .map(|name| {
            let was = before.get(*name).copied().unwrap_or(0.0);
            (name.to_string(), value(after, name) - was)
        })
        .collect()
}

fn lines(measurement: &str, first: u64, count: u64) -> String {
    (first..first + count)
        .map(|i| {
            format!(
                "{measurement},host=h{} v={i}i {}\n",
                i % 3,
                1_700_000_000_000_000_000 + i
            )
        })
        .collect()
}

#[tokio::test]
async fn standalone_counters_move_by_exactly_the_rows_and_requests_sent() {
    let server = Server::start(&[]).await;
    let before = scrape(&server).await;

    // Four writes: three line-protocol bodies (10 + 20 + 30 rows), one MessagePack (5 rows).
    let mut requests = 0.0;
    for (first, count) in [(0, 10), (10, 20), (30, 30)] {
        write_lines(&server, "metrics", &lines("cpu", first, count)).await;
        requests += 1.0;
    }
    let body = msgpack(&map(vec![
        ("m", "mem".into()),
        (
            "columns",
            map(vec![
                (
                    "time",
                    rmpv::Value::Array((0..5).map(|i| (1_700_000_000_000i64 + i).into()).collect()),
                ),
                (
                    "used",
                    rmpv::Value::Array((0..5).map(|i| (i as f64).into()).collect()),
                ),
            ]),
        ),
    ]));
    let (status, text) = server
        .post(
            "/api/v1/write/msgpack",
            &[
                ("content-type", "application/msgpack"),
                ("x-arc-database", "metrics"),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{text}");
    requests += 1.0;
    // Refused: no valid line.
    let (status, _) = server
        .post("/write?db=metrics", &[], "not line protocol")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    requests += 1.0;
    // One query returning all 60 rows, and one that fails.
    assert_eq!(query(&server, "SELECT * FROM metrics.cpu").await.len(), 60);
    let (status, _) = server
        .post(
            "/api/v1/query",
            &[],
            json!({"sql": "SELECT * FROM nowhere"}).to_string(),
        )
        .await;
    assert_ne!(status, StatusCode::OK);
    requests += 2.0;

    let after = scrape(&server).await;
    let expected = [
        ("arc_ingest_records_total", 65.0),
        ("arc_ingest_batches_total", 4.0),
        ("arc_ingest_errors_total", 1.0),
        ("arc_lineprotocol_requests_total", 4.0),
        ("arc_lineprotocol_records_total", 60.0),
        ("arc_msgpack_requests_total", 1.0),
        ("arc_msgpack_records_total", 5.0),
        ("arc_msgpack_bytes_total", body.len() as f64),
        ("arc_query_requests_total", 2.0),
        ("arc_query_success_total", 1.0),
        ("arc_query_errors_total", 1.0),
        ("arc_query_rows_total", 60.0),
        // The requests above, the first scrape (counted once answered) and each auth check.
        ("arc_http_requests_total", requests + 1.0),
        ("arc_http_requests_error_total", 2.0),
        ("arc_auth_requests_total", requests),
        ("arc_buffer_records_buffered", 65.0),
    ];
    let names: Vec<&str> = expected.iter().map(|(name, _)| *name).collect();
    let deltas = moved(&before, &after, &names);
    eprintln!("moved: {deltas:?}");
    for ((name, want), (_, got)) in expected.iter().zip(&deltas) {
        assert_eq!(got, want, "{name}");
    }
    assert!(value(&after, "arc_wal_entries_total") >= 4.0);
    assert_eq!(
        value(&after, "arc_http_latency_seconds_count"),
        value(&after, "arc_http_requests_total")
    );

    server.flush().await;
    let flushed = scrape(&server).await;
    let deltas = moved(
        &after,
        &flushed,
        &[
            "arc_buffer_records_written_total",
            "arc_buffer_records_buffered",
        ],
    );
    eprintln!("after the flush: {deltas:?}");
    assert_eq!(deltas[0].1, 65.0);
    assert_eq!(value(&flushed, "arc_buffer_records_buffered"), 0.0);
    assert!(
        value(&flushed, "arc_buffer_flushes_total") >= 2.0,
        "two measurements flushed"
    );
    assert!(value(&flushed, "arc_storage_writes_total") >= 2.0);
    assert!(value(&flushed, "arc_storage_write_bytes_total") > 0.0);

    // Arc's JSON forms of the same values.
    let json: Value = reqwest::Client::new()
        .get(server.url("/metrics"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json["ingest_records_total"], 65.0);
    let snapshot = crate::harness::get_json(&server, "/api/v1/metrics").await;
    assert_eq!(snapshot["msgpack_records_total"], 5.0);
    assert!(snapshot["timestamp"].is_string());
    let groups = crate::harness::get_json(&server, "/api/v1/metrics/endpoints").await;
    assert_eq!(groups["ingestion"]["records_total"], 65.0);
    assert_eq!(groups["lineprotocol"]["records_total"], 60.0);
    assert_eq!(groups["buffer"]["records_written"], 65.0);
    assert_eq!(groups["query"]["rows_total"], 60.0);
}

fn node<'a>(name: &'a str, role: &'a str) -> NodeSpec<'a> {
    NodeSpec::new(name, role).with(&[
        ("ARC_CLUSTER_REPLICATION_ENABLED", "true"),
        ("ARC_INGEST_MAX_BUFFER_AGE_MS", "3600000"),
    ])
}

/// Every role serves `/metrics`: one Raft leader among them, the writer epoch, the writer's
/// view of each reader's lag and the reader's own, the puller; ingest counters move only where
/// the rows were written (Arc's per-role expectations).
#[tokio::test]
async fn every_cluster_role_shows_raft_replication_and_exact_ingest_counters() {
    let cluster = TestCluster::start_with(
        StorageMode::OwnDirectories,
        vec![
            node("writer-01", "writer"),
            node("reader-01", "reader"),
            node("compactor-01", "compactor"),
        ],
    )
    .await;
    let writer = &cluster.node("writer-01").server;
    let reader = &cluster.node("reader-01").server;
    let mut before = BTreeMap::new();
    for name in cluster.names() {
        before.insert(name.clone(), scrape(&cluster.node(&name).server).await);
    }
    write_lines(writer, "metrics", &lines("cpu", 0, 40)).await;
    write_lines(writer, "metrics", &lines("cpu", 40, 2)).await;

    eventually(
        "the reader holds the writer's entries",
        Duration::from_secs(30),
        || async {
            let samples = scrape(reader).await;
            (samples.get("arc_replication_lag_entries{peer=\"writer-01\"}") == Some(&0.0)
                && value(&samples, "arc_buffer_records_buffered") == 42.0)
                .then_some(())
        },
    )
    .await;
    let mut leaders = 0.0;
    for name in cluster.names() {
        let after = scrape(&cluster.node(&name).server).await;
        let ingested = value(&after, "arc_ingest_records_total")
            - before[&name]
                .get("arc_ingest_records_total")
                .copied()
                .unwrap_or(0.0);
        let expected = if name == "writer-01" { 42.0 } else { 0.0 };
        eprintln!(
            "{name}: ingested {ingested}, term {}, leader {}, epoch {}",
            value(&after, "arc_raft_term"),
            value(&after, "arc_raft_is_leader"),
            value(&after, "arc_writer_epoch"),
        );
        assert_eq!(ingested, expected, "{name}");
        assert!(value(&after, "arc_raft_term") >= 1.0);
        assert!(value(&after, "arc_raft_commit_index") >= 1.0);
        assert_eq!(value(&after, "arc_raft_has_leader"), 1.0);
        assert!(value(&after, "arc_writer_epoch") >= 1.0);
        leaders += value(&after, "arc_raft_is_leader");
    }
    assert_eq!(leaders, 1.0, "exactly one node leads");
    eventually(
        "the writer sees the reader caught up",
        Duration::from_secs(30),
        || async {
            let samples = scrape(writer).await;
            (samples.get("arc_replication_lag_entries{peer=\"reader-01\"}") == Some(&0.0))
                .then_some(())
        },
    )
    .await;
    let on_reader = scrape(reader).await;
    for name in [
        "arc_puller_queue_depth",
        "arc_puller_in_flight",
        "arc_puller_pulled_total",
        "arc_puller_failed_total",
        "arc_query_gate_rejections_total",
        "arc_replication_lag_seconds{peer=\"writer-01\"}",
    ] {
        value(&on_reader, name);
    }
}

/// JSON log lines of a cluster node name it and its role, and no secret appears in any of them:
/// not the admin token, a created token, the cluster secret, nor storage credentials.
#[tokio::test]
async fn json_logs_name_the_node_and_its_role_and_carry_no_secret() {
    let storage_secret = "storage-secret-key-do-not-log-4242";
    let cluster = TestCluster::start(vec![NodeSpec::new("writer-01", "writer").with(&[
        ("ARC_LOG_FORMAT", "json"),
        ("ARC_LOG_LEVEL", "debug"),
        ("ARC_STORAGE_S3_SECRET_KEY", storage_secret),
    ])])
    .await;
    let server = &cluster.node("writer-01").server;
    let (status, token) = crate::cluster_harness::create_token(server, "logged").await;
    assert_eq!(status, StatusCode::CREATED);
    let token = token.unwrap();
    write_lines(server, "logs", &lines("cpu", 0, 3)).await;
    // A token in the query string, and a wrong one.
    let (status, _) = server
        .post(
            &format!("/write?db=logs&p={token}"),
            &[],
            lines("cpu", 3, 1),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let status = reqwest::Client::new()
        .get(server.url("/api/v1/databases"))
        .bearer_auth("wrong-secret-0123456789")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    server.flush().await;

    let log = server.log();
    let records: Vec<Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    assert!(records.len() >= 5, "few JSON log lines:\n{log}");
    for secret in [
        ADMIN_TOKEN,
        token.as_str(),
        SHARED_SECRET,
        storage_secret,
        "wrong-secret-0123456789",
    ] {
        assert!(!log.contains(secret), "a secret is in the log:\n{log}");
    }
    let named = records
        .iter()
        .filter(|r| r["span"]["id"] == "writer-01" && r["span"]["role"] == "writer")
        .count();
    eprintln!(
        "{named} of {} JSON log lines name the node and role",
        records.len()
    );
    let unnamed: Vec<&Value> = records
        .iter()
        .filter(|r| r["span"]["id"] != "writer-01")
        .collect();
    assert!(unnamed.is_empty(), "lines without the node: {unnamed:#?}");
}

/// A real Prometheus scrapes a node; its query API shows `arc_ingest_records_total` rising by
/// exactly the rows written. Needs the `prometheus` binary (Debian's package).
#[tokio::test]
async fn prometheus_scrapes_the_rows_written() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "SKIPPED: the `prometheus` binary is not installed (apt-get install prometheus); \
             .ci/run installs it"
        );
        return;
    }
    let server = Server::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: arcdb\n    \
             static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            server.port
        ),
    )
    .unwrap();
    let port = free_port();
    let mut command = Command::new("prometheus");
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap());
    die_with_parent(&mut command);
    let mut prometheus = command.spawn().expect("start prometheus");
    let client = reqwest::Client::new();
    let instant = |promql: &'static str| {
        let client = client.clone();
        async move {
            let body: Value = client
                .get(format!("http://127.0.0.1:{port}/api/v1/query"))
                .query(&[("query", promql)])
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            body["data"]["result"][0]["value"][1]
                .as_str()?
                .parse::<f64>()
                .ok()
        }
    };
    let first = eventually("Prometheus scrapes arcdb", Duration::from_secs(60), || {
        instant("arc_ingest_records_total")
    })
    .await;
    assert_eq!(first, 0.0);
    write_lines(&server, "scraped", &lines("cpu", 0, 1234)).await;
    eventually(
        "Prometheus sees the rows",
        Duration::from_secs(60),
        || async { (instant("arc_ingest_records_total").await == Some(1234.0)).then_some(()) },
    )
    .await;
    let rose = instant(
        "max_over_time(arc_ingest_records_total[5m]) - min_over_time(arc_ingest_records_total[5m])",
    )
    .await;
    eprintln!("Prometheus: arc_ingest_records_total rose by {rose:?}");
    assert_eq!(rose, Some(1234.0));
    let _ = prometheus.kill();
    let _ = prometheus.wait();
}
