//! The cluster core under a schedule of faults: leader kills, SIGSTOPs, partitions that refuse
//! or black-hole traffic, and slow links, while clients write rows and change metadata through
//! any node. The checker then requires every acknowledged row stored exactly once, nothing
//! invented, and every node agreeing on the rows and the metadata.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::harness::Server;

use crate::cluster_harness::{
    Link, NodeSpec, StorageMode, TestCluster, eventually, states_seen_by,
};
use crate::workload::{
    Fault, History, Ledger, MetadataLedger, Schedule, Table, Target, WorkloadOptions, check,
    listed_records, queried_ids, seed, soak, start_metadata_changes, start_writes,
};

const SETTLE: Duration = Duration::from_secs(90);

/// Settings of every node: short deadlines so faults are noticed, frequent flushes.
fn fault_env() -> Vec<(&'static str, String)> {
    vec![
        ("ARC_CLUSTER_ROUTE_TIMEOUT", "2000".into()),
        ("ARC_INGEST_MAX_BUFFER_AGE_MS", "500".into()),
    ]
}

fn node<'a>(name: &'a str, role: &'a str) -> NodeSpec<'a> {
    NodeSpec {
        extra_env: fault_env(),
        ..NodeSpec::new(name, role)
    }
}

async fn every_node_healthy(cluster: &TestCluster) {
    for observer in &cluster.nodes {
        eventually("every node healthy", SETTLE, || async {
            let states = states_seen_by(&observer.server).await;
            (states.len() == cluster.nodes.len() && states.values().all(|s| s == "healthy"))
                .then_some(())
        })
        .await;
    }
}

/// Asks `server` to flush until a flush succeeds (the cluster may still be settling).
async fn flush_until_done(server: &Server) {
    eventually("a flush", SETTLE, || async {
        let (status, _) = server
            .post("/api/v1/write/line-protocol/flush", &[], "")
            .await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
}

/// Injects one step's fault, holds it, and undoes it.
async fn apply(
    cluster: &mut TestCluster,
    history: &History,
    fault: Fault,
    name: &str,
    hold: Duration,
) {
    history.fault(format!("{fault:?} {name} for {hold:?}"));
    match fault {
        Fault::Kill => {
            cluster.kill9(name);
            tokio::time::sleep(hold).await;
            cluster.restart(name).await;
        }
        Fault::Pause => {
            cluster.pause(name);
            tokio::time::sleep(hold).await;
            cluster.resume(name);
        }
        Fault::Isolate(link) => {
            cluster.partition(&[name], link);
            tokio::time::sleep(hold).await;
            cluster.heal();
        }
        Fault::Slow(delay) => {
            cluster.slow(name, delay);
            tokio::time::sleep(hold).await;
            cluster.heal();
        }
    }
    history.note(format!("{fault:?} {name} undone"));
}

#[tokio::test]
async fn writes_and_metadata_through_any_node_survive_kills_pauses_and_partitions() {
    let (rounds, soak_for) = if soak() {
        (10_000, Duration::from_secs(30 * 60))
    } else {
        (10, Duration::MAX)
    };
    let seed = seed(11);
    let history = History::new(seed);
    // Pattern B's stream runs throughout: readers answer from the writer's WAL as well as from
    // files, and each keeps its own copy of the log.
    let replicating = [("ARC_CLUSTER_REPLICATION_ENABLED", "true")];
    let mut cluster = TestCluster::start(vec![
        node("writer-01", "writer").with(&replicating),
        node("reader-01", "reader").with(&replicating),
        node("reader-02", "reader").with(&replicating),
    ])
    .await;
    every_node_healthy(&cluster).await;

    let faults = [
        Fault::Kill,
        Fault::Pause,
        Fault::Isolate(Link::Refused),
        Fault::Isolate(Link::BlackHoled),
        Fault::Slow(Duration::from_millis(150)),
    ];
    let schedule = Schedule::generate(seed, rounds, &faults, cluster.nodes.len());
    let targets: Vec<String> = cluster.nodes.iter().map(|n| n.server.url("")).collect();
    let table = Table::new("faults", "rows");
    let ledger = Ledger::new();
    // A long run writes slower, so the rows it checks stay in the millions.
    let options = WorkloadOptions {
        pause: if soak() {
            Duration::from_millis(100)
        } else {
            Duration::ZERO
        },
        ..WorkloadOptions::default()
    };
    let writes = start_writes(&ledger, targets.clone(), table.clone(), options);
    let metadata = std::sync::Arc::new(MetadataLedger::default());
    let changes = start_metadata_changes(&metadata, targets, 2);

    let started = Instant::now();
    let names = cluster.names();
    for step in &schedule.steps {
        if started.elapsed() > soak_for {
            break;
        }
        tokio::time::sleep(step.gap).await;
        let name = match step.target {
            Target::Leader => cluster.wait_for_leader().await,
            Target::Member(k) => names[k % names.len()].clone(),
        };
        apply(&mut cluster, &history, step.fault, &name, step.hold).await;
        cluster.assert_running();
        let leader = cluster.wait_for_leader().await;
        history.note(format!("leader {leader}"));
    }
    writes.stop().await;
    changes.stop().await;
    history.note("workload stopped");
    cluster.assert_running();

    // Faults are over: the writer flushes (asked through a reader, which forwards it), and every
    // node that serves queries must converge on the same rows, which the checker then judges.
    every_node_healthy(&cluster).await;
    flush_until_done(&cluster.node("reader-01").server).await;
    let stored = eventually("query nodes agree", SETTLE, || async {
        let mut answers = Vec::new();
        for node in cluster.query_nodes() {
            answers.push(queried_ids(&node.server, &table).await.ok()?);
        }
        answers
            .windows(2)
            .all(|w| w[0] == w[1])
            .then(|| answers.pop())?
    })
    .await;
    let verdict = check(&ledger, &stored)
        .unwrap_or_else(|problems| panic!("checker: {problems}\n{}", history.dump()));
    assert!(
        verdict.acknowledged > 1000,
        "too few rows acknowledged to mean anything: {verdict:?}\n{}",
        history.dump()
    );

    // Metadata: every node lists the same records, and they agree with what was acknowledged.
    let listed = eventually("every node lists the same metadata", SETTLE, || async {
        let mut answers = Vec::new();
        for node in &cluster.nodes {
            answers.push(listed_records(&node.server).await.ok()?);
        }
        answers
            .windows(2)
            .all(|w| w[0] == w[1])
            .then(|| answers.pop())?
    })
    .await;
    let [changed, refused, unknown] = metadata
        .check(&listed)
        .unwrap_or_else(|problems| panic!("metadata checker: {problems}\n{}", history.dump()));
    assert!(
        changed > 10,
        "too few metadata changes acknowledged ({changed})"
    );
    eprintln!(
        "faults test (seed {seed}): {} faults in {:.0?}; rows: {verdict}; requests \
         (ok/failed/unknown) {}; metadata changes acknowledged {changed}, refused {refused}, \
         indeterminate {unknown}",
        history.faults(),
        started.elapsed(),
        ledger.requests(),
    );
    eprintln!("fault history, {}", history.dump());
}

/// In every storage mode the harness offers, each node serves the same manifest, and the files
/// it lists are where that mode keeps them.
#[tokio::test]
async fn every_node_serves_the_same_manifest_in_every_storage_mode() {
    for mode in [
        StorageMode::SharedDirectory,
        StorageMode::Garage,
        StorageMode::OwnDirectories,
    ] {
        let cluster = TestCluster::start_with(
            mode,
            vec![node("writer-01", "writer"), node("reader-01", "reader")],
        )
        .await;
        every_node_healthy(&cluster).await;
        let writer = &cluster.node("writer-01").server;
        let lines: String = (0..50)
            .map(|i| {
                format!(
                    "cpu,host=h{} v={i} {}\n",
                    i % 5,
                    1_768_471_200_000_000_000i64 + i
                )
            })
            .collect();
        let (status, body) = writer.post("/write?db=modes", &[], lines).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{mode:?}: {body}");
        writer.flush().await;
        let on_writer = cluster.manifest("writer-01").await;
        assert!(!on_writer.is_empty(), "{mode:?}: no files after a flush");
        eventually("the reader applies the manifest", SETTLE, || async {
            (cluster.manifest("reader-01").await == on_writer).then_some(())
        })
        .await;
        match cluster.data_dir("writer-01") {
            Some(dir) => {
                for path in &on_writer {
                    assert!(dir.join(path).is_file(), "{mode:?}: {path} not in {dir:?}");
                }
            }
            None => {
                let stored = writer.storage();
                for path in &on_writer {
                    assert!(
                        stored.get(path).await.is_ok(),
                        "{mode:?}: {path} not in the bucket"
                    );
                }
            }
        }
        if mode == StorageMode::OwnDirectories {
            // Until replication pulls them, a reader's own disk holds none of the writer's files.
            let reader_dir = cluster.data_dir("reader-01").unwrap();
            assert!(
                on_writer.iter().all(|p| !reader_dir.join(p).exists()),
                "{mode:?}"
            );
        }
        eprintln!("{mode:?}: {} files listed on both nodes", on_writer.len());
    }
}

/// A writer whose cluster has lost its quorum (both other nodes paused, longer than
/// `route_timeout`) keeps acknowledging writes into its WAL, answers a flush it cannot register
/// with 503 instead of hanging, does not die, and registers everything once the quorum is back.
#[tokio::test]
async fn a_writer_rides_out_a_cluster_without_quorum() {
    let with_wait =
        |name, role| node(name, role).with(&[("ARC_INGEST_FLUSH_TIMEOUT_SECONDS", "2")]);
    let mut cluster = TestCluster::start(vec![
        with_wait("writer-01", "writer"),
        with_wait("reader-01", "reader"),
        with_wait("reader-02", "reader"),
    ])
    .await;
    every_node_healthy(&cluster).await;
    let table = Table::new("stall", "rows");
    let ledger = Ledger::new();
    let writer_url = vec![cluster.node("writer-01").server.url("")];
    let options = WorkloadOptions {
        clients: 2,
        ..WorkloadOptions::default()
    };
    let before = start_writes(&ledger, writer_url.clone(), table.clone(), options.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.pause("reader-01");
    cluster.pause("reader-02");
    let stalled = Instant::now();
    // Longer than route_timeout (2 s) several times over, and than the 5 s that once killed it.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let writer = &cluster.node("writer-01").server;
    let asked = Instant::now();
    let (status, body) = writer
        .post("/api/v1/write/line-protocol/flush", &[], "")
        .await;
    eprintln!(
        "flush without quorum: {status} after {:?}: {body}",
        asked.elapsed()
    );
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    before.stop().await;
    let acknowledged_during_stall = ledger.requests();
    cluster.assert_running();
    cluster.resume("reader-01");
    cluster.resume("reader-02");
    eprintln!(
        "quorum back after {:?}; requests (ok/failed/unknown) {acknowledged_during_stall}",
        stalled.elapsed()
    );
    flush_until_done(&cluster.node("writer-01").server).await;
    let reader = &cluster.node("reader-01").server;
    let stored = eventually("the reader sees the rows", SETTLE, || async {
        let stored = queried_ids(reader, &table).await.ok()?;
        check(&ledger, &stored).ok().map(|_| stored)
    })
    .await;
    let verdict = check(&ledger, &stored).unwrap();
    assert!(verdict.acknowledged > 1000, "{verdict}");
    cluster.assert_running();
    eprintln!("after the stall: {verdict}");
}

/// Fails the test instead of waiting forever when a request hangs.
async fn answered<T>(what: &str, request: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), request)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer in 60 s"))
}

fn error_message(body: &str) -> String {
    let body: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {body}"))
        .to_owned()
}

/// Requests a node forwards to a peer that has gone silent are answered within
/// `cluster.route_timeout`: a write (which may have reached the writer, so is never sent twice)
/// with 504, a query by another reader that can serve it.
#[tokio::test]
async fn a_request_forwarded_to_a_silent_node_is_answered_and_a_query_tries_another_reader() {
    let cluster = TestCluster::start(vec![
        node("writer-01", "writer"),
        node("reader-01", "reader"),
        node("reader-02", "reader"),
    ])
    .await;
    every_node_healthy(&cluster).await;
    let writer = cluster.node("writer-01");
    let reader = cluster.node("reader-01");
    // Only the API ports are cut: heartbeats still flow, so the silent node stays healthy and
    // keeps being chosen.
    writer.api_proxy.set_link(reader.ip, Link::BlackHoled);
    let asked = Instant::now();
    let (status, body) = answered(
        "forwarded write",
        reader.server.post("/write?db=bounds", &[], "m v=1i"),
    )
    .await;
    eprintln!(
        "write forwarded to a black-holed writer: {status} after {:?}",
        asked.elapsed()
    );
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(error_message(&body).contains("writer-01"), "{body}");

    reader.api_proxy.set_link(writer.ip, Link::BlackHoled);
    // Readers are taken in turn, so one of two queries goes to reader-01 first.
    for _ in 0..2 {
        let asked = Instant::now();
        let response = answered(
            "forwarded query",
            writer
                .server
                .client
                .post(writer.server.url("/api/v1/query"))
                .json(&serde_json::json!({ "sql": "SELECT 1 AS one" }))
                .send(),
        )
        .await
        .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        eprintln!(
            "query through the writer: {status} after {:?}",
            asked.elapsed()
        );
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let log = writer.server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("forwarding failed") && l.contains("reader-01")),
        "the query never went to the silent reader first"
    );
}

/// A node cut off from the others by a black hole (connections hang, nothing is refused)
/// answers a metadata change with 503 or 504 within `route_timeout` rather than waiting for a
/// quorum; SIGTERM during the partition stops it within the shutdown grace period, and the rows
/// it acknowledged are all there once it is back.
#[tokio::test]
async fn a_black_holed_node_answers_metadata_changes_and_stops_on_sigterm_without_loss() {
    let with_grace = |name, role| node(name, role).with(&[("ARC_SERVER_SHUTDOWN_TIMEOUT", "5")]);
    let mut cluster = TestCluster::start(vec![
        with_grace("writer-01", "writer"),
        with_grace("reader-01", "reader"),
        with_grace("reader-02", "reader"),
    ])
    .await;
    every_node_healthy(&cluster).await;
    cluster.partition(&["writer-01"], Link::BlackHoled);
    let writer = &cluster.node("writer-01").server;

    let asked = Instant::now();
    let (status, _) = answered(
        "token creation on the cut-off node",
        crate::cluster_harness::create_token(writer, "cut-off"),
    )
    .await;
    eprintln!(
        "metadata change on a black-holed node: {status} after {:?} (route_timeout 2 s)",
        asked.elapsed()
    );
    assert!(
        matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        ),
        "{status}"
    );

    let lines: String = (0..500)
        .map(|i| format!("cutoff,id={i} v={i}i\n"))
        .collect();
    let (status, body) = answered(
        "write on the cut-off writer",
        writer.post("/write?db=bounds", &[], lines),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    let asked = Instant::now();
    let exit = answered(
        "SIGTERM during the partition",
        cluster.node_mut("writer-01").server.stop(),
    )
    .await;
    eprintln!(
        "SIGTERM during a partition: {exit} after {:?} (shutdown_timeout 5 s, route_timeout 2 s)",
        asked.elapsed()
    );
    assert!(exit.success(), "{exit}");

    cluster.heal();
    cluster.restart("writer-01").await;
    flush_until_done(&cluster.node("writer-01").server).await;
    let reader = &cluster.node("reader-01").server;
    let count = eventually("the reader sees the rows", SETTLE, || async {
        let response = reader
            .client
            .post(reader.url("/api/v1/query"))
            .json(&serde_json::json!({ "sql": "SELECT count(*) AS n FROM bounds.cutoff" }))
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = response.json().await.ok()?;
        let count = body["data"][0][0].as_u64()?;
        (count >= 500).then_some(count)
    })
    .await;
    assert_eq!(count, 500, "rows acknowledged before SIGTERM, stored once");
}
