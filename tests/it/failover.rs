//! Writer failover (Pattern B): when the writer is lost, the Raft leader promotes the reader
//! holding the most of its log; with `replication_ack = one` nothing acknowledged is lost, and a
//! replaced writer rejoins as a reader. Clients behave as behind a load balancer: any node takes
//! a write (a reader forwards it to the writer), and after an answer that is not an
//! acknowledgement a client moves to the next node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::cluster_harness::{NodeSpec, StorageMode, TestCluster, eventually, get_json};
use crate::workload::{
    Clients, Ledger, Table, WorkloadOptions, check, lost_and_duplicated, queried_ids, soak,
    start_writes,
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

/// The writer and its epoch as `name` sees them (`None` while it does not answer: a replaced
/// writer restarts its services).
async fn writer_seen_by(cluster: &TestCluster, name: &str) -> Option<(String, u64)> {
    let server = &cluster.node(name).server;
    let answer = server
        .client
        .get(server.url("/api/v1/cluster"))
        .send()
        .await
        .ok()?;
    if answer.status() != StatusCode::OK {
        return None;
    }
    let body: serde_json::Value = answer.json().await.ok()?;
    let writer = &body["data"]["writer"];
    Some((
        writer["node"].as_str()?.to_owned(),
        writer["epoch"].as_u64()?,
    ))
}

/// Waits until every running reader follows `writer`.
async fn readers_follow(cluster: &TestCluster, writer: &str, readers: usize) {
    eventually(
        &format!("{readers} readers follow {writer}"),
        SETTLE,
        || async {
            let (_, status) =
                get_json(&cluster.node(writer).server, "/api/v1/cluster/status").await;
            let following = status["data"]["replication_readers"]
                .as_array()?
                .iter()
                .filter(|r| r["connected"] == true)
                .count();
            (following >= readers).then_some(())
        },
    )
    .await;
}

/// Three clients writing to every node in turn (a client moves to the next node after an
/// answer that is not an acknowledgement), recorded in `ledger`.
fn write_to_every_node(cluster: &TestCluster, table: &Table, ledger: &Arc<Ledger>) -> Clients {
    let targets = cluster.nodes.iter().map(|n| n.server.url("")).collect();
    let options = WorkloadOptions {
        clients: 3,
        timeout: Duration::from_secs(5),
        ..WorkloadOptions::default()
    };
    start_writes(ledger, targets, table.clone(), options)
}

/// Waits until a write sent from now on is acknowledged.
async fn writes_flow(ledger: &Ledger, what: &str) {
    let from = Instant::now();
    eventually(what, SETTLE, || async {
        ledger.first_acknowledged_after(from).map(|_| ())
    })
    .await;
}

/// Every acknowledged row once on every node (readers answer from their own copies; the
/// writer forwards the query to a reader).
async fn assert_converged(cluster: &TestCluster, ledger: &Ledger, table: &Table) {
    for name in cluster.names() {
        let server = &cluster.node(&name).server;
        let verdict = eventually(
            &format!("{name} holds every acknowledged row once"),
            SETTLE,
            || async {
                let stored = queried_ids(server, table).await.ok()?;
                check(ledger, &stored).ok()
            },
        )
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
    let writes = write_to_every_node(&cluster, &table, &ledger);
    let mut takeovers = Vec::new();
    let mut writer = "writer-01".to_owned();
    let mut epoch = 1;
    for round in 1..=rounds {
        readers_follow(&cluster, &writer, 2).await;
        // Writes flow through the current writer before it is killed.
        writes_flow(&ledger, "writes acknowledged").await;
        let killed_at = Instant::now();
        cluster.kill9(&writer);
        let survivor = cluster.names().into_iter().find(|n| *n != writer).unwrap();
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
        // Load balancers' write pool follows: only the new writer is ready for writes.
        let ready_for_writes = async |name: &str| {
            let server = &cluster.node(name).server;
            let answer = server.client.get(server.url("/ready/write")).send().await;
            answer.map(|a| a.status()).ok()
        };
        eventually("the new writer ready for writes", SETTLE, || async {
            (ready_for_writes(&promoted).await == Some(StatusCode::OK)).then_some(())
        })
        .await;
        let other = cluster
            .names()
            .into_iter()
            .find(|n| *n != writer && *n != promoted)
            .unwrap();
        assert_eq!(
            ready_for_writes(&other).await,
            Some(StatusCode::SERVICE_UNAVAILABLE),
            "{other} is a reader"
        );
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

/// How the writer is cut off in a split-brain test.
#[derive(Debug, Clone, Copy)]
enum CutOff {
    /// SIGSTOP: it is frozen, then resumes as if nothing happened.
    Paused,
    /// Every link to the other nodes holds bytes without answering.
    BlackHoled,
}

/// Acceptance 2: a writer cut off past `failover_timeout` while clients still send to it: once
/// its lease ran out it acknowledges nothing, a reader takes over, and when the old writer is
/// back it learns it was replaced and rejoins as a reader of the new one.
async fn a_cut_off_writer_stops_acknowledging_and_rejoins_as_a_reader(cut_off: CutOff) {
    let mut cluster = three_nodes("1").await;
    let table = Table::new("split", "rows");
    let ledger = Ledger::new();
    let writes = write_to_every_node(&cluster, &table, &ledger);
    readers_follow(&cluster, "writer-01", 2).await;
    writes_flow(&ledger, "writes acknowledged").await;

    // Writes sent straight to the old writer, never forwarded: any 2xx is its own.
    let old_writer = cluster.node("writer-01").server.client.clone();
    let old_writer_url = cluster.node("writer-01").server.url("/write?db=split");
    let (stop_probes, probes_stopped) = tokio::sync::watch::channel(false);
    let probes_acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acknowledged_count = std::sync::Arc::clone(&probes_acknowledged);
    let probes = tokio::spawn(async move {
        // (id, sent at, acknowledged)
        let mut answers = Vec::new();
        for id in 0i64.. {
            if *probes_stopped.borrow() {
                break;
            }
            let line = format!(
                "probe,host=old id={id}i {}\n",
                1_768_471_200_000_000_000i64 + id
            );
            let sent_at = Instant::now();
            let answer = old_writer
                .post(&old_writer_url)
                .header("x-arc-forwarded-by", "probe")
                .body(line)
                .timeout(Duration::from_secs(3))
                .send()
                .await;
            let answer = match answer {
                Ok(answer) => format!(
                    "{} {}",
                    answer.status(),
                    answer.text().await.unwrap_or_default()
                ),
                Err(err) => err.to_string(),
            };
            let acknowledged = answer.starts_with('2');
            if acknowledged {
                acknowledged_count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            answers.push((id, sent_at, acknowledged));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        answers
    });

    eventually("probes acknowledged by the writer", SETTLE, || async {
        (probes_acknowledged.load(std::sync::atomic::Ordering::SeqCst) >= 3).then_some(())
    })
    .await;
    match cut_off {
        CutOff::Paused => cluster.pause("writer-01"),
        CutOff::BlackHoled => {
            cluster.partition(&["writer-01"], crate::cluster_harness::Link::BlackHoled)
        }
    }
    let cut_at = Instant::now();
    let (promoted, epoch) = eventually("a reader promoted", SETTLE, || async {
        writer_seen_by(&cluster, "reader-01")
            .await
            .filter(|(_, e)| *e > 1)
    })
    .await;
    eprintln!(
        "{cut_off:?}: {promoted} promoted under epoch {epoch} {:.2} s after the cut",
        cut_at.elapsed().as_secs_f64()
    );
    // The old writer stays cut off a while longer, with clients still at it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    match cut_off {
        CutOff::Paused => cluster.resume("writer-01"),
        CutOff::BlackHoled => cluster.heal(),
    }
    let waiting = Instant::now();
    loop {
        // It restarts its services meanwhile: connections may be refused.
        let server = &cluster.node("writer-01").server;
        let answer = server
            .client
            .get(server.url("/api/v1/cluster/local"))
            .send()
            .await;
        let role = match answer {
            Ok(answer) => answer.json::<serde_json::Value>().await.ok(),
            Err(_) => None,
        };
        if role.is_some_and(|body| body["data"]["role"] == "reader") {
            break;
        }
        if waiting.elapsed() > SETTLE {
            let log = server.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "writer-01 did not rejoin as a reader:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    readers_follow(&cluster, &promoted, 2).await;
    let _ = stop_probes.send(true);
    let answers = probes.await.unwrap();
    writes.stop().await;
    cluster.assert_running();
    eprintln!(
        "{cut_off:?}: {}; {} probes straight to the old writer",
        ledger.requests(),
        answers.len()
    );
    assert_converged(&cluster, &ledger, &table).await;
    // Its lease (half of failover_timeout) may cover the first second after the cut; nothing
    // sent to it later may be acknowledged.
    let lease_end = cut_at + Duration::from_secs(1);
    let late: Vec<i64> = answers
        .iter()
        .filter(|(_, sent_at, acked)| *acked && *sent_at > lease_end)
        .map(|(id, _, _)| *id)
        .collect();
    assert!(
        late.is_empty(),
        "the old writer acknowledged probes {late:?} after its lease ran out"
    );
    let acknowledged: Vec<i64> = answers.iter().filter(|a| a.2).map(|a| a.0).collect();
    assert!(
        !acknowledged.is_empty(),
        "the old writer acknowledged no probe before the cut"
    );
    let probe_table = Table::new("split", "probe");
    for name in cluster.names() {
        let stored = queried_ids(&cluster.node(&name).server, &probe_table)
            .await
            .unwrap();
        let missing: Vec<&i64> = acknowledged
            .iter()
            .filter(|id| !stored.contains_key(id))
            .collect();
        assert!(
            missing.is_empty(),
            "{name} lacks acknowledged probes {missing:?}"
        );
        assert!(
            stored.values().all(|n| *n == 1),
            "{name} stores a probe twice"
        );
    }
}
#[tokio::test]
async fn a_paused_writer_stops_acknowledging_and_rejoins_as_a_reader() {
    a_cut_off_writer_stops_acknowledging_and_rejoins_as_a_reader(CutOff::Paused).await;
}

#[tokio::test]
async fn a_black_holed_writer_stops_acknowledging_and_rejoins_as_a_reader() {
    a_cut_off_writer_stops_acknowledging_and_rejoins_as_a_reader(CutOff::BlackHoled).await;
}

/// The last failover as `name` records it: (epoch, when in µs, to whom).
async fn last_failover(cluster: &TestCluster, name: &str) -> Option<(u64, i64, String)> {
    let (status, body) = get_json(&cluster.node(name).server, "/api/v1/cluster").await;
    let writer = &body["data"]["writer"];
    let failover = &writer["last_failover"];
    (status == StatusCode::OK).then_some(())?;
    Some((
        writer["epoch"].as_u64()?,
        failover["at_us"].as_i64()?,
        failover["to"].as_str()?.to_owned(),
    ))
}

/// Acceptance 3: a second writer failure within `failover_cooldown` of the first promotes no
/// one until the cooldown has passed.
#[tokio::test]
async fn a_second_writer_failure_within_the_cooldown_waits_for_it() {
    const COOLDOWN_S: i64 = 20;
    let mut cluster = three_nodes("20").await;
    readers_follow(&cluster, "writer-01", 2).await;
    cluster.kill9("writer-01");
    let (_, first_at, first) = eventually("the first promotion", SETTLE, || async {
        last_failover(&cluster, "reader-02").await
    })
    .await;
    // The replaced writer comes back as a reader, so a majority stays up after the next kill.
    cluster.restart("writer-01").await;
    cluster.kill9(&first);
    let observer = if first == "reader-01" {
        "reader-02"
    } else {
        "reader-01"
    };
    let (epoch, second_at, second) = eventually("the second promotion", SETTLE, || async {
        last_failover(&cluster, observer)
            .await
            .filter(|(epoch, _, _)| *epoch == 3)
    })
    .await;
    let apart = Duration::from_micros((second_at - first_at) as u64);
    eprintln!(
        "{first} promoted, killed; {second} promoted under epoch {epoch} {:.1} s after the first \
         promotion (cooldown {COOLDOWN_S} s)",
        apart.as_secs_f64()
    );
    assert!(
        second_at - first_at >= COOLDOWN_S * 1_000_000,
        "the second promotion came {apart:?} after the first, inside the cooldown"
    );
    assert_ne!(second, first);
}

/// Acceptance 4: the compactor dies in the middle of a job (after uploading its output, before
/// the swap); after `failover_timeout` the compaction lease moves to the other compactor, which
/// compacts the same files; every row stays exactly once, the dead compactor's upload is cleaned
/// up when it returns, and it does not take the lease back from a healthy compactor.
#[tokio::test]
async fn the_compaction_lease_moves_from_a_compactor_that_died_mid_job() {
    const HOUR_NS: i64 = 3_600_000_000_000;
    let compaction = [
        ("ARC_CLUSTER_FAILOVER_ENABLED", "true"),
        ("ARC_CLUSTER_FAILOVER_TIMEOUT", "2"),
        ("ARC_CLUSTER_FAILOVER_COOLDOWN", "1"),
        ("ARC_CLUSTER_ROUTE_TIMEOUT", "2000"),
        ("ARC_COMPACTION_HOURLY_MIN_FILES", "3"),
        ("ARC_INGEST_MAX_BUFFER_AGE_MS", "3600000"),
        ("ARC_QUERY_TIMEOUT", "2"),
    ];
    let spec = |name, role| NodeSpec::new(name, role).with(&compaction);
    let mut cluster = TestCluster::start(vec![
        spec("writer-01", "writer"),
        spec("reader-01", "reader"),
        spec("compactor-01", "compactor").with(&[("ARC_TEST_COMPACTION_CRASH_AT", "after_upload")]),
        spec("compactor-02", "compactor"),
    ])
    .await;
    let lease_holder = async |cluster: &TestCluster| {
        let (_, body) = get_json(&cluster.node("reader-01").server, "/api/v1/cluster").await;
        body["data"]["compactor"]["node"]
            .as_str()
            .map(str::to_owned)
    };
    assert_eq!(
        lease_holder(&cluster).await.as_deref(),
        Some("compactor-01")
    );

    // Three files in an hour two days ago.
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    let hour = now - now.rem_euclid(HOUR_NS) - 48 * HOUR_NS;
    let writer = &cluster.node("writer-01").server;
    for file in 0..3i64 {
        let lines: String = (0..50i64)
            .map(|i| {
                let id = file * 50 + i;
                format!("cpu,host=h{} id={id}i {}\n", id % 3, hour + id * 1_000_000)
            })
            .collect();
        let (status, body) = writer.post("/write?db=lease", &[], lines).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        writer.flush().await;
    }
    let sql = "SELECT count(*), count(DISTINCT id), sum(id) FROM lease.cpu";
    // The reader applies the last registration moments after the flush returned.
    let expected = eventually("the reader counts every row", SETTLE, || async {
        let answer = crate::harness::query(&cluster.node("reader-01").server, sql).await;
        (answer[0][0] == 150).then_some(answer)
    })
    .await;
    let before = cluster.manifest("reader-01").await;
    assert_eq!(before.len(), 3, "{before:?}");

    let (status, body) = cluster
        .node("compactor-01")
        .server
        .post("/api/v1/compaction/trigger?tier=hourly", &[], "")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let died = Instant::now();
    let exit = tokio::time::timeout(SETTLE, cluster.node_mut("compactor-01").server.wait_exit())
        .await
        .expect("compactor-01 reaches its crash point");
    eprintln!(
        "compactor-01 died mid-job ({exit}) {:.1} s after the trigger",
        died.elapsed().as_secs_f64()
    );
    let died = Instant::now();
    let moved = eventually("the lease moves", SETTLE, || async {
        lease_holder(&cluster).await.filter(|n| n == "compactor-02")
    })
    .await;
    eprintln!(
        "lease moved to {moved} {:.1} s after compactor-01 died",
        died.elapsed().as_secs_f64()
    );

    let compactor = &cluster.node("compactor-02").server;
    eventually("compactor-02 compacts the hour", SETTLE, || async {
        let (status, _) = compactor
            .post("/api/v1/compaction/trigger?tier=hourly", &[], "")
            .await;
        if status != StatusCode::OK {
            return None;
        }
        let files = cluster.manifest("reader-01").await;
        (files.len() == 1 && !before.contains(&files[0])).then_some(())
    })
    .await;
    assert_eq!(
        crate::harness::query(&cluster.node("reader-01").server, sql).await,
        expected
    );

    cluster
        .node_mut("compactor-01")
        .server
        .restart_with(&[("ARC_TEST_COMPACTION_CRASH_AT", "")])
        .await;
    let data = cluster.data_dir("writer-01").unwrap().join("lease");
    let manifest: std::collections::BTreeSet<String> =
        cluster.manifest("reader-01").await.into_iter().collect();
    let stored = || -> std::collections::BTreeSet<String> {
        walk(&data)
            .into_iter()
            .map(|p| format!("lease/{}", p.strip_prefix(&data).unwrap().display()))
            .collect()
    };
    let settled = Instant::now();
    while stored() != manifest && settled.elapsed() < SETTLE {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stored(), manifest, "objects beside the manifest's");
    // A healthy compactor keeps the lease.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        lease_holder(&cluster).await.as_deref(),
        Some("compactor-02")
    );
    assert_eq!(
        crate::harness::query(&cluster.node("reader-01").server, sql).await,
        expected
    );
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Acceptance 5: with `replication_ack = none` (Arc's behaviour) the writer acknowledges
/// writes no reader holds yet; when it is lost, a failover loses exactly those. The readers are
/// cut off from the writer's stream while it keeps leading the cluster (and its lease), clients
/// write, the writer is killed: the checker finds acknowledged rows missing and none stored
/// twice, on every node, also after the old writer came back as a reader.
#[tokio::test]
async fn with_replication_ack_none_a_failover_loses_the_unreplicated_writes_and_duplicates_none() {
    // Nothing is flushed meanwhile (by age or size): the rows acknowledged in the window exist
    // only in the writer's log and buffers, not in files the readers could copy later.
    let spec = |name, role| {
        node(name, role, "1").with(&[
            ("ARC_CLUSTER_REPLICATION_ACK", "none"),
            ("ARC_INGEST_MAX_BUFFER_AGE_MS", "3600000"),
            ("ARC_INGEST_MAX_BUFFER_SIZE", "100000000"),
        ])
    };
    let mut cluster = TestCluster::start_with(
        StorageMode::OwnDirectories,
        vec![
            spec("writer-01", "writer"),
            spec("reader-01", "reader"),
            spec("reader-02", "reader"),
        ],
    )
    .await;
    readers_follow(&cluster, "writer-01", 2).await;
    // The writer leads, so cutting the readers' requests to it leaves its lease alone.
    eventually("writer-01 leads", SETTLE, || async {
        let mut leader = None;
        for name in cluster.names() {
            leader = leader
                .or(crate::cluster_harness::leader_seen_by(&cluster.node(&name).server).await);
        }
        (leader.as_deref() == Some("writer-01")).then_some(())
    })
    .await;
    let table = Table::new("unacked", "rows");
    let ledger = Ledger::new();
    let options = WorkloadOptions {
        clients: 2,
        timeout: Duration::from_secs(5),
        ..WorkloadOptions::default()
    };
    let writes = start_writes(
        &ledger,
        vec![cluster.node("writer-01").server.url("")],
        table.clone(),
        options,
    );
    writes_flow(&ledger, "writes acknowledged").await;
    // Readers' connections to the writer (the stream among them) are cut from now on. Refused,
    // not black-holed: a black hole holds what the writer already sent in the relay's socket
    // buffers and delivers it when the link heals, after the writer is gone.
    let writer_proxy = &cluster.node("writer-01").proxy;
    for name in ["reader-01", "reader-02"] {
        writer_proxy.set_link(cluster.node(name).ip, crate::cluster_harness::Link::Refused);
    }
    let cut = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    eventually(
        "writes acknowledged while the readers receive nothing",
        SETTLE,
        || async { ledger.first_acknowledged_after(cut).map(|_| ()) },
    )
    .await;
    cluster.kill9("writer-01");
    writes.stop().await;
    cluster.heal();
    let (promoted, _) = eventually("a reader promoted", SETTLE, || async {
        writer_seen_by(&cluster, "reader-01")
            .await
            .filter(|(_, epoch)| *epoch > 1)
    })
    .await;
    cluster.restart("writer-01").await;
    readers_follow(&cluster, &promoted, 2).await;
    // Every node converges on what survived: the same rows everywhere, twice in a row.
    let previous = std::sync::Mutex::new(None);
    let survived = eventually("every node answers the same rows", SETTLE, || async {
        let mut answers = Vec::new();
        for name in cluster.names() {
            answers.push(
                queried_ids(&cluster.node(&name).server, &table)
                    .await
                    .ok()?,
            );
        }
        let agreed = answers
            .windows(2)
            .all(|pair| pair[0] == pair[1])
            .then(|| answers.remove(0))?;
        let mut previous = previous.lock().unwrap();
        let settled = previous.as_ref() == Some(&agreed);
        *previous = Some(agreed.clone());
        settled.then_some(agreed)
    })
    .await;
    let (lost, duplicated) = lost_and_duplicated(&ledger, &survived);
    eprintln!(
        "every node: {lost} acknowledged rows lost, {duplicated} stored twice; {}",
        ledger.requests()
    );
    assert!(lost > 0, "the loss window did not show");
    assert_eq!(duplicated, 0);
}

/// Operator endpoints: the writer is moved by hand under continuous writes (demote: the most
/// caught-up reader takes over; promote: the named reader does), bad requests change nothing,
/// and the compaction lease is assigned by hand. Nothing acknowledged is lost or stored twice.
#[tokio::test]
async fn an_operator_moves_the_writer_and_the_compaction_lease_without_losing_a_write() {
    let mut cluster = three_nodes("1").await;
    let table = Table::new("switch", "rows");
    let ledger = Ledger::new();
    let writes = write_to_every_node(&cluster, &table, &ledger);
    readers_follow(&cluster, "writer-01", 2).await;
    let operator = &cluster.node("reader-01").server;
    let post = async |path: &str, body: &str| {
        let json = [("content-type", "application/json")];
        let (status, answer) = operator.post(path, &json, body.to_owned()).await;
        eprintln!("POST {path} {body} → {status} {answer}");
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
        (status, answer)
    };

    let refused = [
        (
            "/api/v1/cluster/writers/nobody/demote",
            "",
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/v1/cluster/writers/reader-01/demote",
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/cluster/writers/nobody/promote",
            "",
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/v1/cluster/writers/writer-01/promote",
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/cluster/compactor/assign",
            "{\"node\": 1}",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/cluster/compactor/assign",
            "{\"node_id\": \"nobody\"}",
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/v1/cluster/compactor/assign",
            "{\"node_id\": \"reader-02\"}",
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (path, body, expected) in refused {
        let (status, answer) = post(path, body).await;
        assert_eq!(status, expected, "{path} {body}: {answer}");
        assert!(answer["error"].is_string(), "{path}: {answer}");
    }
    assert_eq!(
        writer_seen_by(&cluster, "reader-02").await,
        Some(("writer-01".to_owned(), 1)),
        "a refused request moved the writer"
    );

    writes_flow(&ledger, "writes acknowledged").await;
    let (status, answer) = post("/api/v1/cluster/writers/writer-01/demote", "").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let first = answer["data"]["writer"].as_str().unwrap().to_owned();
    assert_ne!(first, "writer-01");
    assert_eq!(answer["data"]["epoch"], 2);
    for name in cluster.names() {
        eventually(&format!("{name} sees {first} write"), SETTLE, || async {
            (writer_seen_by(&cluster, &name).await == Some((first.clone(), 2))).then_some(())
        })
        .await;
    }
    let (_, body) = get_json(&cluster.node("reader-02").server, "/api/v1/cluster").await;
    assert_eq!(body["data"]["writer"]["last_failover"]["from"], "writer-01");
    assert!(
        body["data"]["writer"]["last_failover"]["reason"]
            .as_str()
            .unwrap()
            .contains("operator"),
        "{body}"
    );
    readers_follow(&cluster, &first, 2).await;

    let second = if first == "reader-01" {
        "reader-02"
    } else {
        "reader-01"
    };
    writes_flow(&ledger, "writes acknowledged by the first new writer").await;
    let (status, answer) = post(&format!("/api/v1/cluster/writers/{second}/promote"), "").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["data"]["writer"], second);
    assert_eq!(answer["data"]["epoch"], 3);
    readers_follow(&cluster, second, 2).await;
    writes_flow(&ledger, "writes acknowledged by the second new writer").await;

    let (status, answer) = post(
        "/api/v1/cluster/compactor/assign",
        &format!("{{\"node_id\": \"{second}\"}}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    eventually("every node sees the new lease holder", SETTLE, || async {
        let mut all = true;
        for name in cluster.names() {
            let (_, body) = get_json(&cluster.node(&name).server, "/api/v1/cluster").await;
            all &= body["data"]["compactor"]["node"] == second;
        }
        all.then_some(())
    })
    .await;
    let (_, body) = get_json(&cluster.node("writer-01").server, "/api/v1/cluster").await;
    eprintln!("compactor lease: {}", body["data"]["compactor"]);

    writes.stop().await;
    cluster.assert_running();
    eprintln!("{}", ledger.requests());
    assert_converged(&cluster, &ledger, &table).await;
}
