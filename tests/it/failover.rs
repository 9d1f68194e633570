//! Writer failover (Pattern B): when the writer is lost, the Raft leader promotes the reader
//! holding the most of its log; with `replication_ack = one` nothing acknowledged is lost, and a
//! replaced writer rejoins as a reader. Clients behave as behind a load balancer: any node takes
//! a write (a reader forwards it to the writer), and after an answer that is not an
//! acknowledgement a client moves to the next node.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::cluster_harness::{NodeSpec, StorageMode, TestCluster, eventually, get_json};
use crate::workload::{
    Ledger, Table, WorkloadOptions, check, queried_ids, soak, start_writes,
};

const SETTLE: Duration = Duration::from_secs(90);

/// Streaming nodes with failover after 2 s of silence and acknowledgements from one reader.
fn node<'a>(name: &'a str, role: &'a str, cooldown: &'a str) -> NodeSpec<'a> {
    NodeSpec::new(name, role).with(&[
        ("ARC_CLUSTER_REPLICATION_ENABLED", "true"),
        ("ARC_CLUSTER_REPLICATION_ACK", "one"),
        ("ARC_CLUSTER_FAILOVER_ENABLED", "true"),
        ("ARC_CLUSTER_FAILOVER_TIMEOUT", "2"),
        ("ARC_CLUSTER_FAILOVER_COOLDOWN", cooldown),
        ("ARC_CLUSTER_ROUTE_TIMEOUT", "2000"),
        ("ARC_INGEST_MAX_BUFFER_AGE_MS", "1000"),
    ])
}

async fn three_nodes(cooldown: &str) -> TestCluster {
    TestCluster::start_with(
        StorageMode::OwnDirectories,
        vec![
            node("writer-01", "writer", cooldown),
            node("reader-01", "reader", cooldown),
            node("reader-02", "reader", cooldown),
        ],
    )
    .await
}

/// The writer and its epoch as `name` sees them.
async fn writer_seen_by(cluster: &TestCluster, name: &str) -> Option<(String, u64)> {
    let (status, body) = get_json(&cluster.node(name).server, "/api/v1/cluster").await;
    if status != StatusCode::OK {
        return None;
    }
    let writer = &body["data"]["writer"];
    Some((writer["node"].as_str()?.to_owned(), writer["epoch"].as_u64()?))
}

/// Waits until every running reader follows `writer`.
async fn readers_follow(cluster: &TestCluster, writer: &str, readers: usize) {
    eventually(&format!("{readers} readers follow {writer}"), SETTLE, || async {
        let (_, status) = get_json(&cluster.node(writer).server, "/api/v1/cluster/status").await;
        let following = status["data"]["replication_readers"]
            .as_array()?
            .iter()
            .filter(|r| r["connected"] == true)
            .count();
        (following >= readers).then_some(())
    })
    .await;
}

/// Every acknowledged row once on every node (readers answer from their own copies; the
/// writer forwards the query to a reader).
async fn assert_converged(cluster: &TestCluster, ledger: &Ledger, table: &Table) {
    for name in cluster.names() {
        let server = &cluster.node(&name).server;
        let verdict = eventually(&format!("{name} holds every acknowledged row once"), SETTLE, || async {
            let stored = queried_ids(server, table).await.ok()?;
            check(ledger, &stored).ok()
        })
        .await;
        eprintln!("{name}: {verdict}");
    }
}

/// Acceptance 1: kill -9 the writer round after round under continuous writes; each time the
/// most caught-up reader takes over, writes resume, and the old writer comes back as a reader.
#[tokio::test]
async fn a_killed_writer_is_replaced_by_the_most_caught_up_reader_and_nothing_acknowledged_is_lost()
{
    let rounds = if soak() { 20 } else { 5 };
    let mut cluster = three_nodes("1").await;
    let table = Table::new("failover", "rows");
    let ledger = Ledger::new();
    let targets = cluster.nodes.iter().map(|n| n.server.url("")).collect();
    let options = WorkloadOptions {
        clients: 3,
        timeout: Duration::from_secs(5),
        ..WorkloadOptions::default()
    };
    let writes = start_writes(&ledger, targets, table.clone(), options);
    let mut takeovers = Vec::new();
    let mut writer = "writer-01".to_owned();
    let mut epoch = 1;
    for round in 1..=rounds {
        readers_follow(&cluster, &writer, 2).await;
        // Writes flow through the current writer before it is killed.
        let flowing = Instant::now();
        eventually("writes acknowledged", SETTLE, || async {
            ledger.first_acknowledged_after(flowing).map(|_| ())
        })
        .await;
        let killed_at = Instant::now();
        cluster.kill9(&writer);
        let survivor = cluster
            .names()
            .into_iter()
            .find(|n| *n != writer)
            .unwrap();
        let (promoted, new_epoch) = eventually("a reader promoted", SETTLE, || async {
            writer_seen_by(&cluster, &survivor)
                .await
                .filter(|(_, e)| *e > epoch)
        })
        .await;
        let (_, body) = get_json(&cluster.node(&survivor).server, "/api/v1/cluster").await;
        let last_failover = body["data"]["writer"]["last_failover"].clone();
        let first_ack = eventually("a write acknowledged by the new writer", SETTLE, || async {
            ledger.first_acknowledged_after(killed_at)
        })
        .await;
        let took = first_ack - killed_at;
        eprintln!(
            "round {round}: {writer} killed; {promoted} writes under epoch {new_epoch} \
             ({}); first acknowledgement {:.2} s after the kill",
            last_failover["reason"],
            took.as_secs_f64()
        );
        assert_eq!(new_epoch, epoch + 1, "one promotion per failure");
        assert_ne!(promoted, writer);
        takeovers.push(took);
        cluster.restart(&writer).await;
        writer = promoted;
        epoch = new_epoch;
    }
    readers_follow(&cluster, &writer, 2).await;
    writes.stop().await;
    cluster.assert_running();
    takeovers.sort();
    let p = |q: f64| takeovers[((takeovers.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "kill → first acknowledgement over {rounds} rounds: p50 {:.2} s, p99 {:.2} s, max {:.2} s; {}",
        p(0.5).as_secs_f64(),
        p(0.99).as_secs_f64(),
        takeovers.last().unwrap().as_secs_f64(),
        ledger.requests()
    );
    assert_converged(&cluster, &ledger, &table).await;
}
