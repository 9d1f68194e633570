//! Pattern A: several writers share one object store (Garage) as peers behind a load balancer.
//! Each writer numbers its own WAL; the manifest keeps a flushed-through position per writer, and
//! file names carry the writer, so writers never take each other's rows as flushed or overwrite
//! each other's objects. Readers query the bucket.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::cluster_harness::{NodeSpec, StorageMode, TestCluster, eventually, get_json};
use crate::harness::{Server, call};
use crate::workload::{
    Clients, Ledger, Table, Verdict, WorkloadOptions, check, queried_ids, start_writes,
};

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

/// Three writers and reader-01 on one bucket, all with `settings` besides.
async fn three_writers_and_a_reader(settings: &[(&str, &str)]) -> TestCluster {
    let node = |name, role| shared(name, role).with(settings);
    let mut specs: Vec<NodeSpec> = WRITERS.iter().map(|w| node(w, "writer")).collect();
    specs.push(node("reader-01", "reader"));
    TestCluster::start_with(StorageMode::Garage, specs).await
}

/// Clients writing to `writers` in turn (moving on after any answer but an acknowledgement),
/// recorded in `ledger`.
fn write_to(
    cluster: &TestCluster,
    writers: &[&str],
    table: &Table,
    ledger: &Arc<Ledger>,
) -> Clients {
    let targets = writers
        .iter()
        .map(|w| cluster.node(w).server.url(""))
        .collect();
    let options = WorkloadOptions {
        clients: writers.len().max(2),
        timeout: Duration::from_secs(5),
        ..WorkloadOptions::default()
    };
    start_writes(ledger, targets, table.clone(), options)
}

/// The rows of a query, once it answers 200.
async fn answer(server: &Server, sql: &str) -> Option<serde_json::Value> {
    let request = server
        .client
        .post(server.url("/api/v1/query"))
        .json(&json!({ "sql": sql }));
    let (status, body) = call(request).await;
    (status == StatusCode::OK).then(|| body["data"].clone())
}

/// Waits until `server` answers every acknowledged row of `table` exactly once.
async fn every_acknowledged_row_once(server: &Server, ledger: &Ledger, table: &Table) -> Verdict {
    eventually("every acknowledged row once", SETTLE, || async {
        let stored = queried_ids(server, table).await.ok()?;
        check(ledger, &stored).ok()
    })
    .await
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
    let writes = write_to(&cluster, &WRITERS, &table, &ledger);
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

    // A writer cut off from the others cannot register files: its /ready sends the load
    // balancer elsewhere until it is back.
    let leader = cluster.wait_for_leader().await;
    let cut_off = *WRITERS.iter().find(|w| **w != leader).unwrap();
    cluster.isolate(cut_off);
    let server = &cluster.node(cut_off).server;
    let isolated = Instant::now();
    let answer = eventually(&format!("{cut_off} turns unready"), SETTLE, || async {
        let (status, body) = get_json(server, "/ready").await;
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some(body)
    })
    .await;
    assert_eq!(answer["reason"], "cannot_take_writes", "{answer}");
    eprintln!(
        "{cut_off} unready {:.1} s after it was cut off",
        isolated.elapsed().as_secs_f64()
    );
    cluster.heal();
    eventually(&format!("{cut_off} ready again"), SETTLE, || async {
        let (status, _) = get_json(server, "/ready").await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
}

/// Acceptance 4: a row delete sent to one writer also removes the matching rows the other
/// writers still hold in their buffers. While a writer cannot be asked to flush, a delete is
/// refused whole (503) rather than leaving that writer's rows behind.
#[tokio::test]
async fn a_delete_sent_to_one_writer_removes_rows_buffered_on_the_others() {
    // Nothing flushes on its own: every row stays buffered until a flush is asked for.
    let mut cluster = three_writers_and_a_reader(&[
        ("ARC_INGEST_MAX_BUFFER_AGE_MS", "3600000"),
        ("ARC_DELETE_ENABLED", "true"),
    ])
    .await;
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
    server: &Server,
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

/// Acceptance 3: a retention policy and a continuous query, both scheduled every 10 s, run
/// exactly once per firing and per window while the Raft leader is killed three times (and
/// restarted): the runs move with leadership, no firing is recorded twice or skipped, no window
/// is processed twice, and the destination holds each 10-second bin once.
#[tokio::test]
async fn singleton_tasks_run_once_per_slot_across_leader_kills() {
    let mut cluster = three_writers_and_a_reader(&[
        ("ARC_SCHEDULER_RETENTION_SCHEDULE", "*/10 * * * * *"),
        ("ARC_DELETE_ENABLED", "true"),
    ])
    .await;
    let admin = &cluster.node("writer-01").server;
    let (status, policy) = post_json(
        admin,
        "/api/v1/retention",
        &json!({"name": "month", "database": "sched", "retention_days": 30}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{policy}");
    let policy = policy["id"].as_u64().expect("policy id");
    let (status, query) = post_json(
        admin,
        "/api/v1/continuous_queries",
        &json!({
            "name": "per_10s",
            "database": "sched",
            "source_measurement": "src",
            "destination_measurement": "src_10s",
            "query": "SELECT date_bin(INTERVAL '10 seconds', time) AS time, COUNT(*) AS n \
                      FROM src WHERE time >= {start_time} AND time < {end_time} GROUP BY 1",
            "interval": "10s",
        }),
    )
    .await;
    assert!(status.is_success(), "{status} {query}");
    let query = query["id"].as_u64().expect("query id");

    // Rows stamped with the time they are sent, to the writers in turn, until stopped.
    let (stop_source, source_stopped) = tokio::sync::watch::channel(false);
    let targets: Vec<String> = WRITERS
        .iter()
        .map(|w| cluster.node(w).server.url("/write?db=sched"))
        .collect();
    let source = tokio::spawn(async move {
        let client = crate::harness::admin_client();
        for turn in 0usize.. {
            if *source_stopped.borrow() {
                return;
            }
            let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
            let sent = client
                .post(&targets[turn % targets.len()])
                .body(format!("src value={turn}i {now}"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if let Ok(answer) = sent
                && answer.status() != StatusCode::NO_CONTENT
                && answer.status() != StatusCode::SERVICE_UNAVAILABLE
            {
                panic!("source write refused: {:?}", answer.text().await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    let reader = "reader-01";
    let slots = async |cluster: &TestCluster| -> Vec<i64> {
        let path = format!("/api/v1/retention/{policy}/executions");
        let (_, body) = get_json(&cluster.node(reader).server, &path).await;
        let mut slots: Vec<i64> = body["executions"]
            .as_array()
            .map(|runs| {
                runs.iter()
                    .filter_map(|run| run["scheduled_time"].as_str())
                    .map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp())
                    .collect()
            })
            .unwrap_or_default();
        slots.sort_unstable();
        slots
    };
    for round in 1..=3 {
        let before = slots(&cluster).await.len();
        eventually("another scheduled retention run", SETTLE, || async {
            (slots(&cluster).await.len() > before).then_some(())
        })
        .await;
        let leader = cluster.wait_for_leader().await;
        eprintln!("round {round}: killing the leader {leader}");
        cluster.kill9(&leader);
        let new_leader = loop {
            let now_leading = cluster.wait_for_leader().await;
            if now_leading != leader {
                break now_leading;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        eprintln!("round {round}: {new_leader} leads");
        cluster.restart(&leader).await;
    }
    let before = slots(&cluster).await.len();
    eventually("a scheduled run after the last kill", SETTLE, || async {
        (slots(&cluster).await.len() > before + 1).then_some(())
    })
    .await;
    let _ = stop_source.send(true);
    source.await.unwrap();

    let slots = slots(&cluster).await;
    eprintln!("retention: {} scheduled runs, {:?}", slots.len(), slots);
    assert!(
        slots.windows(2).all(|pair| pair[1] - pair[0] == 10),
        "each firing once, none skipped: {slots:?}"
    );

    let path = format!("/api/v1/continuous_queries/{query}/executions?limit=1000");
    let (_, body) = get_json(&cluster.node(reader).server, &path).await;
    let runs = body["executions"].as_array().unwrap();
    let mut windows: Vec<(String, String)> = runs
        .iter()
        .filter(|run| run["scheduled"] == true && run["status"] == "completed")
        .map(|run| {
            let bound = |field: &str| run[field].as_str().unwrap().to_owned();
            (bound("start_time"), bound("end_time"))
        })
        .collect();
    windows.sort();
    let failed = runs
        .iter()
        .filter(|run| run["status"] != "completed")
        .count();
    eprintln!(
        "continuous query: {} windows completed, {failed} runs failed (a writer was down)",
        windows.len()
    );
    assert!(windows.len() >= 4, "{windows:?} {body}");
    assert!(
        windows.windows(2).all(|pair| pair[0].1 == pair[1].0),
        "windows follow each other without overlap: {windows:?}"
    );

    for writer in WRITERS {
        cluster.node(writer).server.flush().await;
    }
    let per_bin = "SELECT time, count(*) AS copies FROM sched.src_10s GROUP BY time ORDER BY time";
    let bins = crate::harness::query(&cluster.node(reader).server, per_bin).await;
    let seconds = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp();
    let covered: i64 = windows.iter().map(|(a, b)| seconds(b) - seconds(a)).sum();
    eprintln!(
        "destination: {} bins over {covered} s of windows",
        bins.len()
    );
    // Every 10 s the windows covered had source rows, but the first (before the source began).
    assert!(bins.len() as i64 >= covered / 10 - 1, "{bins:?}");
    assert!(
        bins.iter().all(|bin| bin[1] == 1),
        "every 10-second bin once: {bins:?}"
    );
}

/// Acceptance 5 (beyond Arc): with `cluster.shared_wal` each writer copies its WAL to the bucket
/// before acknowledging. A writer killed with -9 and never restarted (its directory deleted)
/// loses nothing it acknowledged: once it has been silent for `failover_timeout`, another writer
/// flushes the rows from the copies, and every acknowledged row is stored exactly once.
#[tokio::test]
async fn with_a_shared_wal_a_writer_lost_for_good_loses_nothing_acknowledged() {
    // Rows stay buffered (no age flush): what the lost writer acknowledged is only in its WAL.
    let mut cluster = three_writers_and_a_reader(&[
        ("ARC_CLUSTER_SHARED_WAL", "true"),
        ("ARC_CLUSTER_FAILOVER_TIMEOUT", "2"),
        ("ARC_INGEST_MAX_BUFFER_AGE_MS", "3600000"),
    ])
    .await;
    let table = Table::new("lost", "rows");
    let ledger = Ledger::new();
    let writes = write_to(&cluster, &WRITERS, &table, &ledger);
    writes_flow(&ledger, "writes acknowledged").await;
    // Rows writer-02 certainly acknowledged (and holds only in its buffer and WAL).
    let lost = &cluster.node("writer-02").server;
    for batch in 0..10i64 {
        let lines: String = (0..100i64)
            .map(|i| {
                let id = batch * 100 + i;
                format!("direct id={id}i {}\n", 1_768_471_200_000_000_000 + id)
            })
            .collect();
        let (status, body) = lost.post("/write?db=lost", &[], lines).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
    writes_flow(&ledger, "more writes acknowledged").await;

    cluster.kill9("writer-02");
    let killed = Instant::now();
    std::fs::remove_dir_all(&cluster.node("writer-02").server.dir).unwrap();
    writes_flow(&ledger, "writes acknowledged by the surviving writers").await;
    writes.stop().await;
    eprintln!("requests: {}", ledger.requests());
    for writer in ["writer-01", "writer-03"] {
        cluster.node(writer).server.flush().await;
    }
    let reader = &cluster.node("reader-01").server;
    let verdict = every_acknowledged_row_once(reader, &ledger, &table).await;
    let direct = "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM lost.direct";
    eventually("the 1,000 rows only writer-02 held", SETTLE, || async {
        (answer(reader, direct).await? == json!([[1000, 1000, 0, 999]])).then_some(())
    })
    .await;
    eprintln!(
        "reader-01: {verdict}; writer-02's own 1,000 rows once; {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    let manifest = cluster.manifest("reader-01").await;
    eprintln!("files by writer: {:?}", files_by_writer(&manifest));
}

/// With `cluster.shared_wal`, a writer taken for lost that comes back does not flush the rows
/// another writer already flushed for it: it sets its old WAL aside, writes a new log, and
/// every row stays stored once.
#[tokio::test]
async fn a_lost_writer_that_returns_flushes_nothing_twice() {
    let mut cluster = three_writers_and_a_reader(&[
        ("ARC_CLUSTER_SHARED_WAL", "true"),
        ("ARC_CLUSTER_FAILOVER_TIMEOUT", "2"),
        ("ARC_INGEST_MAX_BUFFER_AGE_MS", "3600000"),
    ])
    .await;
    let write = async |server: &Server, ids: std::ops::Range<i64>| {
        let lines: String = ids
            .map(|id| format!("direct id={id}i {}\n", 1_768_471_200_000_000_000 + id))
            .collect();
        let (status, body) = server.post("/write?db=back", &[], lines).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    };
    write(&cluster.node("writer-02").server, 0..1000).await;
    cluster.kill9("writer-02");
    let counted = async |reader: &Server, expected: serde_json::Value| {
        let sql = "SELECT count(*), count(DISTINCT id) FROM back.direct";
        eventually(&format!("the reader counts {expected}"), SETTLE, || async {
            (answer(reader, sql).await? == expected).then_some(())
        })
        .await;
    };
    counted(&cluster.node("reader-01").server, json!([[1000, 1000]])).await;

    cluster.restart("writer-02").await;
    let returned = &cluster.node("writer-02").server;
    write(returned, 1000..1010).await;
    returned.flush().await;
    counted(&cluster.node("reader-01").server, json!([[1010, 1010]])).await;
    let log = returned.log();
    assert!(log.contains("its WAL is set aside"), "{log}");
}

/// With `cluster.shared_wal`, a writer cut off from the cluster (but not from the bucket) while
/// clients keep writing to it stops acknowledging once its lease runs out, before its log is
/// handed over; the adopter flushes what it acknowledged, and once the link heals it restarts
/// with a new log. Every acknowledged row is stored once.
#[tokio::test]
async fn a_cut_off_writer_stops_acknowledging_before_its_log_is_handed_over() {
    let cluster = three_writers_and_a_reader(&[
        ("ARC_CLUSTER_SHARED_WAL", "true"),
        ("ARC_CLUSTER_FAILOVER_TIMEOUT", "2"),
        ("ARC_CLUSTER_ROUTE_TIMEOUT", "1000"),
        ("ARC_INGEST_MAX_BUFFER_AGE_MS", "3600000"),
    ])
    .await;
    let table = Table::new("fenced", "rows");
    let ledger = Ledger::new();
    // Every client writes to writer-02 only, so it keeps being asked while cut off.
    let writes = write_to(&cluster, &["writer-02"], &table, &ledger);
    writes_flow(&ledger, "writer-02 acknowledges").await;
    cluster.isolate("writer-02");
    let isolated = Instant::now();
    // Only another writer can register writer-02's rows now (writer-02 cannot reach Raft).
    let reader = &cluster.node("reader-01").server;
    eventually(
        "writer-02's rows flushed by another writer",
        SETTLE,
        || async {
            let rows = answer(reader, "SELECT count(*) FROM fenced.rows").await?;
            (rows[0][0].as_i64() > Some(0)).then_some(())
        },
    )
    .await;
    eprintln!(
        "writer-02's rows flushed by another writer {:.1} s after the cut",
        isolated.elapsed().as_secs_f64()
    );
    // A lease (1 s) plus a margin after the cut, writer-02 acknowledges nothing more.
    let lease_over = isolated + Duration::from_secs(2);
    while Instant::now() < lease_over + Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        ledger.first_acknowledged_after(lease_over),
        None,
        "writer-02 acknowledged a write sent after its lease ran out"
    );
    cluster.heal();
    writes_flow(&ledger, "writer-02 acknowledges again with a new log").await;
    writes.stop().await;
    eprintln!("requests: {}", ledger.requests());
    for writer in WRITERS {
        cluster.node(writer).server.flush().await;
    }
    let verdict = every_acknowledged_row_once(reader, &ledger, &table).await;
    eprintln!("reader-01: {verdict}");
}
