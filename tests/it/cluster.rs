//! Clusters of real nodes: formation from the seeds' environment variables, role forwarding over a
//! shared storage directory, leader loss, paused nodes, partitions and peer authentication.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::cluster_harness::{
    CLUSTER_NAME, NodeSpec, SHARED_SECRET, TestCluster, create_token, eventually, get_json,
    leader_seen_by, states_seen_by, token_works,
};
use crate::harness::{Server, call, free_port};

const WAIT: Duration = Duration::from_secs(30);

fn spec<'a>(name: &'a str, role: &'a str) -> NodeSpec<'a> {
    NodeSpec {
        name,
        role,
        extra_env: Vec::new(),
    }
}

async fn writer_and_two_readers() -> TestCluster {
    TestCluster::start(vec![
        spec("writer-01", "writer"),
        spec("reader-01", "reader"),
        spec("reader-02", "reader"),
    ])
    .await
}

/// A change a node cut off from the majority was asked for: refused (503), or handed to Raft
/// but not confirmed (504); either way not committed, which the callers check separately.
fn not_committed(status: StatusCode) -> bool {
    status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::GATEWAY_TIMEOUT
}

/// Waits until `observer` sees every node of the cluster healthy.
async fn all_healthy(cluster: &TestCluster, observer: &str) {
    let server = &cluster.node(observer).server;
    eventually("every node healthy", WAIT, || async {
        let states = states_seen_by(server).await;
        (states.len() == cluster.nodes.len() && states.values().all(|s| s == "healthy"))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn three_nodes_started_from_seed_variables_form_a_cluster() {
    let cluster = writer_and_two_readers().await;
    for node in &cluster.nodes {
        all_healthy(&cluster, &node.name).await;
        let (status, body) = get_json(&node.server, "/api/v1/cluster").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let data = &body["data"];
        assert_eq!(body["success"], true);
        assert_eq!(data["cluster_name"], CLUSTER_NAME);
        assert_eq!(data["node_count"], 3);
        assert_eq!(data["healthy_nodes"], 3);
        assert_eq!(
            data["roles"],
            json!({"writer": 1, "reader": 2, "compactor": 0})
        );
        assert!(data["leader"].is_string(), "{body}");
        assert_eq!(
            data["writer"],
            json!({"node": "writer-01", "epoch": 1, "last_failover": null}),
            "{body}"
        );
    }
    let server = &cluster.node("reader-01").server;
    let count = |path: &'static str| async move {
        let (status, body) = get_json(server, path).await;
        (status, body["data"].as_array().map_or(0, Vec::len))
    };
    assert_eq!(count("/api/v1/cluster/nodes").await, (StatusCode::OK, 3));
    assert_eq!(
        count("/api/v1/cluster/nodes?role=reader").await,
        (StatusCode::OK, 2)
    );
    assert_eq!(
        count("/api/v1/cluster/nodes?role=writer&state=healthy").await,
        (StatusCode::OK, 1)
    );
    assert_eq!(
        count("/api/v1/cluster/nodes?state=dead").await,
        (StatusCode::OK, 0)
    );
    assert_eq!(
        count("/api/v1/cluster/nodes?role=leader").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        count("/api/v1/cluster/nodes?state=sleepy").await.0,
        StatusCode::BAD_REQUEST
    );

    let (status, body) = get_json(server, "/api/v1/cluster/nodes/writer-01").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["role"], "writer");
    assert_eq!(
        body["data"]["address"],
        cluster.node("writer-01").advertised()
    );
    assert!(body["data"]["last_heartbeat"].is_string(), "{body}");
    let (status, body) = get_json(server, "/api/v1/cluster/nodes/nobody").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"], "Node not found");

    let (_, local) = get_json(server, "/api/v1/cluster/local").await;
    assert_eq!(local["data"]["id"], "reader-01");
    assert_eq!(local["data"]["is_local"], true);
    assert_eq!(local["data"]["capabilities"]["can_query"], true);
    assert_eq!(local["data"]["capabilities"]["can_ingest"], false);

    let (_, health) = get_json(server, "/api/v1/cluster/health").await;
    assert_eq!(
        [
            &health["data"]["status"],
            &health["data"]["node_id"],
            &health["data"]["role"]
        ],
        [&json!("healthy"), &json!("reader-01"), &json!("reader")]
    );
    let (_, status_body) = get_json(server, "/api/v1/cluster/status").await;
    assert_eq!(status_body["data"]["raft"]["voters"], 3, "{status_body}");

    // Admin only.
    let anonymous = reqwest::Client::new()
        .get(server.url("/api/v1/cluster"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let (_, reader_token) = create_token(server, "read-only").await;
    let reader_token = reader_token.expect("token created");
    let refused = reqwest::Client::new()
        .get(server.url("/api/v1/cluster/nodes"))
        .bearer_auth(&reader_token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
}

async fn count_rows(server: &Server) -> (StatusCode, serde_json::Value) {
    let request = server
        .client
        .post(server.url("/api/v1/query"))
        .json(&json!({ "sql": "SELECT count(*) AS n FROM metrics.cpu" }));
    call(request).await
}

#[tokio::test]
async fn writes_through_any_node_are_queried_on_both_readers_from_shared_storage() {
    let cluster = writer_and_two_readers().await;
    for node in &cluster.nodes {
        all_healthy(&cluster, &node.name).await;
    }
    // Each node takes 10 rows; readers forward them to the writer.
    for (n, node) in cluster.nodes.iter().enumerate() {
        let lines: String = (0..10)
            .map(|i| {
                format!(
                    "cpu,host=h{n} usage={i} {}\n",
                    1_700_000_000_000_000_000i64 + i
                )
            })
            .collect();
        let (status, body) = node.server.post("/write?db=metrics", &[], lines).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{}: {body}", node.name);
    }
    // A flush asked of a reader also reaches the writer.
    cluster.node("reader-02").server.flush().await;
    // Readers see the flushed files once the manifest change reaches them through Raft.
    for reader in ["reader-01", "reader-02"] {
        let server = &cluster.node(reader).server;
        eventually("30 rows on a reader", WAIT, || async {
            let (status, body) = count_rows(server).await;
            (status == StatusCode::OK && body["data"] == json!([[30]])).then_some(())
        })
        .await;
    }
    // A request already forwarded once is refused rather than forwarded again.
    let reader = &cluster.node("reader-01").server;
    let (status, body) = reader
        .post(
            "/write?db=metrics",
            &[("x-arc-forwarded-by", "writer-01")],
            "cpu,host=loop usage=1",
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("forwarded here by writer-01"), "{body}");
    // The writer does not serve queries; it forwards them to a reader.
    let (status, body) = count_rows(&cluster.node("writer-01").server).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"], json!([[30]]));
}

#[tokio::test]
async fn losing_the_leader_elects_another_and_it_catches_up_on_return() {
    let mut cluster = writer_and_two_readers().await;
    for node in &cluster.nodes {
        all_healthy(&cluster, &node.name).await;
    }
    let leader = leader_seen_by(&cluster.nodes[1].server).await.unwrap();
    cluster.node_mut(&leader).server.kill9();
    let killed_at = Instant::now();
    let survivors: Vec<&str> = cluster
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .filter(|n| *n != leader)
        .collect();
    let survivor = &cluster.node(survivors[0]).server;
    let new_leader = eventually("a new leader", Duration::from_secs(10), || async {
        leader_seen_by(survivor).await.filter(|l| *l != leader)
    })
    .await;
    eprintln!(
        "new leader {new_leader} {:?} after the kill",
        killed_at.elapsed()
    );

    let (status, secret) = create_token(&cluster.node(survivors[1]).server, "after-loss").await;
    assert_eq!(status, StatusCode::CREATED);
    let secret = secret.unwrap();
    assert!(token_works(survivor, &secret).await);

    cluster.node_mut(&leader).server.restart().await;
    let returned = &cluster.node(&leader).server;
    assert!(
        token_works(returned, &secret).await,
        "restarted node caught up"
    );
    all_healthy(&cluster, &new_leader).await;
}

#[tokio::test]
async fn a_paused_node_turns_unhealthy_then_dead_and_healthy_after_it_resumes() {
    let cluster = writer_and_two_readers().await;
    all_healthy(&cluster, "writer-01").await;
    let paused = &cluster.node("reader-02").server;
    let observer = &cluster.node("writer-01").server;
    paused.pause();
    for wanted in ["unhealthy", "dead"] {
        eventually(wanted, WAIT, || async {
            let states = states_seen_by(observer).await;
            (states.get("reader-02").map(String::as_str) == Some(wanted)).then_some(())
        })
        .await;
    }
    paused.resume();
    all_healthy(&cluster, "writer-01").await;
}

#[tokio::test]
async fn a_partitioned_node_refuses_metadata_changes_and_agrees_again_after_healing() {
    let cluster = writer_and_two_readers().await;
    for node in &cluster.nodes {
        all_healthy(&cluster, &node.name).await;
    }
    let leader = leader_seen_by(&cluster.nodes[0].server).await.unwrap();
    let minority = cluster
        .nodes
        .iter()
        .find(|n| n.name != leader)
        .unwrap()
        .name
        .clone();
    let majority: Vec<&str> = cluster
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .filter(|n| *n != minority)
        .collect();
    cluster.isolate(&minority);

    let (status, majority_secret) =
        create_token(&cluster.node(majority[1]).server, "majority-side").await;
    assert_eq!(status, StatusCode::CREATED);
    let majority_secret = majority_secret.unwrap();
    let (status, _) = create_token(&cluster.node(&minority).server, "minority-side").await;
    assert!(not_committed(status), "{status}");
    assert!(!token_works(&cluster.node(&minority).server, &majority_secret).await);

    cluster.heal();
    for node in &cluster.nodes {
        let server = &node.server;
        eventually("the majority's token everywhere", WAIT, || async {
            token_works(server, &majority_secret).await.then_some(())
        })
        .await;
    }
    let mut tokens = Vec::new();
    for node in &cluster.nodes {
        let (_, body) = get_json(&node.server, "/api/v1/auth/tokens").await;
        let mut names: Vec<String> = body["tokens"]
            .as_array()
            .unwrap_or_else(|| panic!("no token list: {body}"))
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        tokens.push(names);
    }
    assert!(tokens.iter().all(|t| *t == tokens[0]), "{tokens:?}");
    assert!(
        tokens[0].contains(&"majority-side".to_owned())
            && !tokens[0].contains(&"minority-side".to_owned()),
        "{tokens:?}"
    );
}

#[tokio::test]
async fn tokens_work_everywhere_and_wrong_secrets_or_cluster_names_cannot_join() {
    let cluster = writer_and_two_readers().await;
    let (status, secret) = create_token(&cluster.node("reader-02").server, "everywhere").await;
    assert_eq!(status, StatusCode::CREATED);
    let secret = secret.unwrap();
    for node in &cluster.nodes {
        let server = &node.server;
        eventually("token on every node", WAIT, || async {
            token_works(server, &secret).await.then_some(())
        })
        .await;
    }

    let seed = cluster.nodes[0].advertised();
    let intruders = [
        (
            "wrong-secret",
            "wrong-shared-secret-0123456789abcdefgh",
            CLUSTER_NAME,
        ),
        ("wrong-cluster", SHARED_SECRET, "another-cluster"),
    ];
    let mut started = Vec::new();
    for (name, secret, cluster_name) in intruders {
        let coordinator = format!("127.0.0.1:{}", free_port());
        let env = [
            ("ARC_CLUSTER_ENABLED", "true"),
            ("ARC_CLUSTER_NODE_ID", name),
            ("ARC_CLUSTER_ROLE", "reader"),
            ("ARC_CLUSTER_CLUSTER_NAME", cluster_name),
            ("ARC_CLUSTER_SHARED_SECRET", secret),
            ("ARC_CLUSTER_COORDINATOR_ADDR", coordinator.as_str()),
            ("ARC_CLUSTER_SEEDS", seed.as_str()),
            ("ARC_CLUSTER_HEARTBEAT_INTERVAL", "1"),
        ];
        started.push(Server::start_unready(&env));
    }
    // The writer logs each intruder's attempts as refused.
    let writer = &cluster.nodes[0].server;
    for (name, _, _) in intruders {
        eventually("refusal logged", WAIT, || async {
            writer
                .log()
                .lines()
                .any(|l| l.contains("refused internal request") && l.contains(name))
                .then_some(())
        })
        .await;
    }
    // Heartbeats signed with the wrong secret or for another cluster are refused too.
    for (name, secret, cluster_name) in intruders {
        let auth = arcdb::cluster::peer_auth::PeerAuth::new(secret, cluster_name, name);
        let body = br#"{"leaving":false}"#.to_vec();
        let signed = auth.sign("/internal/heartbeat", &body, chrono::Utc::now().timestamp());
        let mut request = reqwest::Client::new()
            .post(format!("http://{seed}/internal/heartbeat"))
            .body(body);
        for (header, value) in signed.pairs() {
            request = request.header(header, value);
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "{name}");
    }
    // With the right secret a heartbeat passes once; a replay or a stale one does not.
    let probe = arcdb::cluster::peer_auth::PeerAuth::new(SHARED_SECRET, CLUSTER_NAME, "probe");
    let now = chrono::Utc::now().timestamp();
    let body = br#"{"leaving":false}"#.to_vec();
    let fresh = probe.sign("/internal/heartbeat", &body, now);
    let stale = probe.sign("/internal/heartbeat", &body, now - 600);
    for (signed, expected) in [
        (&fresh, StatusCode::OK),
        (&fresh, StatusCode::UNAUTHORIZED),
        (&stale, StatusCode::UNAUTHORIZED),
    ] {
        let mut request = reqwest::Client::new()
            .post(format!("http://{seed}/internal/heartbeat"))
            .header("content-type", "application/json")
            .body(body.clone());
        for (header, value) in signed.pairs() {
            request = request.header(header, value);
        }
        assert_eq!(request.send().await.unwrap().status(), expected);
    }
    let log = writer.log();
    assert!(log.contains("nonce was already used"), "replay not logged");
    assert!(
        log.contains("away from this node's clock"),
        "stale not logged"
    );
    for node in &cluster.nodes {
        let states = states_seen_by(&node.server).await;
        assert_eq!(states.len(), 3, "{states:?}");
        assert!(
            intruders
                .iter()
                .all(|(name, _, _)| !states.contains_key(*name))
        );
        for line in node.server.log().lines() {
            let intruder = intruders.iter().any(|(name, _, _)| line.contains(name));
            assert!(
                !intruder || line.contains("refused"),
                "{}: {line}",
                node.name
            );
        }
    }
    for mut intruder in started {
        assert!(intruder.is_running());
        let (status, _) = intruder.get("/ready").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
}

#[tokio::test]
async fn a_stopped_node_is_shown_leaving_and_an_admin_can_remove_it() {
    let mut cluster = writer_and_two_readers().await;
    for node in &cluster.nodes {
        all_healthy(&cluster, &node.name).await;
    }
    assert!(cluster.node_mut("reader-02").server.stop().await.success());
    let observer = &cluster.node("reader-01").server;
    eventually("reader-02 leaving", WAIT, || async {
        let states = states_seen_by(observer).await;
        (states.get("reader-02").map(String::as_str) == Some("leaving")).then_some(())
    })
    .await;

    let delete = |path: &str| call(observer.client.delete(observer.url(path)));
    let (status, body) = delete("/api/v1/cluster/nodes/reader-01").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = delete("/api/v1/cluster/nodes/nobody").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = delete("/api/v1/cluster/nodes/reader-02").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["node_id"], "reader-02");

    for name in ["writer-01", "reader-01"] {
        let server = &cluster.node(name).server;
        eventually("two members left", WAIT, || async {
            let states = states_seen_by(server).await;
            (states.len() == 2 && states.values().all(|s| s == "healthy")).then_some(())
        })
        .await;
        let (status, _) = get_json(server, "/api/v1/cluster/nodes/reader-02").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (status, _) = create_token(observer, "two-voters").await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn a_node_that_missed_more_than_the_kept_log_catches_up_from_a_snapshot() {
    let small_log = || vec![("ARC_CLUSTER_RAFT_SNAPSHOT_THRESHOLD", "3".to_owned())];
    let mut cluster = TestCluster::start(vec![
        NodeSpec {
            extra_env: small_log(),
            ..spec("writer-01", "writer")
        },
        NodeSpec {
            extra_env: small_log(),
            ..spec("reader-01", "reader")
        },
        NodeSpec {
            extra_env: small_log(),
            ..spec("reader-02", "reader")
        },
    ])
    .await;
    for node in &cluster.nodes {
        all_healthy(&cluster, &node.name).await;
    }
    cluster.node_mut("reader-02").server.kill9();
    let mut secrets = Vec::new();
    for i in 0..12 {
        let (status, secret) =
            create_token(&cluster.node("reader-01").server, &format!("t{i}")).await;
        assert_eq!(status, StatusCode::CREATED);
        secrets.push(secret.unwrap());
    }
    cluster.node_mut("reader-02").server.restart().await;
    for node in &cluster.nodes {
        for secret in &secrets {
            assert!(token_works(&node.server, secret).await, "{}", node.name);
        }
    }
    assert!(
        cluster
            .node("reader-02")
            .server
            .log()
            .contains("installed a snapshot from the leader"),
        "reader-02 caught up from the log, not from a snapshot"
    );
    // The writer restarts from its own snapshot and log.
    cluster.node_mut("writer-01").server.kill9();
    cluster.node_mut("writer-01").server.restart().await;
    for secret in &secrets {
        assert!(token_works(&cluster.node("writer-01").server, secret).await);
    }
}

#[tokio::test]
async fn an_isolated_leader_commits_nothing_and_follows_the_new_leader_after_healing() {
    let fast_timeout = || vec![("ARC_CLUSTER_ROUTE_TIMEOUT", "2000".to_owned())];
    let cluster = TestCluster::start(
        [
            ("writer-01", "writer"),
            ("reader-01", "reader"),
            ("reader-02", "reader"),
        ]
        .into_iter()
        .map(|(name, role)| NodeSpec {
            extra_env: fast_timeout(),
            ..spec(name, role)
        })
        .collect(),
    )
    .await;
    for node in &cluster.nodes {
        all_healthy(&cluster, &node.name).await;
    }
    let old_leader = leader_seen_by(&cluster.nodes[0].server).await.unwrap();
    let majority: Vec<&str> = cluster
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .filter(|n| *n != old_leader)
        .collect();
    cluster.isolate(&old_leader);
    let majority_server = &cluster.node(majority[0]).server;
    let new_leader = eventually("a leader on the majority side", WAIT, || async {
        leader_seen_by(majority_server)
            .await
            .filter(|l| *l != old_leader)
    })
    .await;

    let (status, _) = create_token(&cluster.node(&old_leader).server, "isolated-side").await;
    assert!(not_committed(status), "{status}");
    let (status, secret) = create_token(majority_server, "majority-side").await;
    assert_eq!(status, StatusCode::CREATED);
    let secret = secret.unwrap();

    cluster.heal();
    for node in &cluster.nodes {
        let server = &node.server;
        eventually("agreement after healing", WAIT, || async {
            let agrees = leader_seen_by(server).await.as_deref() == Some(new_leader.as_str());
            (agrees && token_works(server, &secret).await).then_some(())
        })
        .await;
        let (_, body) = get_json(server, "/api/v1/auth/tokens").await;
        assert!(
            !body.to_string().contains("isolated-side"),
            "{}: {body}",
            node.name
        );
    }
}

#[tokio::test]
async fn a_standalone_node_reports_that_it_is_not_clustered() {
    let mut server = Server::start(&[]).await;
    let (status, body) = get_json(&server, "/api/v1/cluster").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["enabled"], false);
    assert_eq!(body["data"]["mode"], "standalone");
    let (status, body) = get_json(&server, "/api/v1/cluster/nodes").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Its metadata would be invisible to a cluster node, so clustering it is refused.
    server.stop().await;
    let coordinator = format!("127.0.0.1:{}", free_port());
    server.respawn_with(&[
        ("ARC_CLUSTER_ENABLED", "true"),
        ("ARC_CLUSTER_NODE_ID", "writer-01"),
        ("ARC_CLUSTER_ROLE", "writer"),
        ("ARC_CLUSTER_SHARED_SECRET", SHARED_SECRET),
        ("ARC_CLUSTER_COORDINATOR_ADDR", coordinator.as_str()),
    ]);
    let deadline = Instant::now() + WAIT;
    while server.is_running() {
        assert!(
            Instant::now() < deadline,
            "a clustered start over standalone metadata ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        server.log().contains("holds a standalone node's metadata"),
        "{}",
        server.log()
    );
}

/// A request signed without the shared secret is refused from its headers: the node answers
/// 401 while the claimed 1 GiB body has barely started, so strangers cannot make it buffer one.
#[tokio::test]
async fn the_coordinator_port_refuses_a_stranger_before_reading_its_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = TestCluster::start(vec![spec("writer-01", "writer")]).await;
    let mut stream = tokio::net::TcpStream::connect(cluster.nodes[0].advertised())
        .await
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let head = format!(
        "POST /internal/forward HTTP/1.1\r\nhost: node\r\ncontent-type: application/json\r\n\
         content-length: 1073741824\r\nx-arc-node: intruder\r\nx-arc-cluster: {CLUSTER_NAME}\r\n\
         x-arc-nonce: 0011\r\nx-arc-timestamp: {now}\r\nx-arc-body-sha256: 00\r\n\
         x-arc-signature: 0011\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[b'{'; 4096]).await.unwrap();
    let mut answer = vec![0; 4096];
    let read = tokio::time::timeout(WAIT, stream.read(&mut answer))
        .await
        .expect("no answer while the body was withheld: the node waited for it")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("signature does not match"), "{answer}");
}

/// Each member's role as `observer` reports it.
async fn roles_seen_by(observer: &Server) -> Vec<(String, String)> {
    let (_, body) = get_json(observer, "/api/v1/cluster/nodes").await;
    let mut roles: Vec<(String, String)> = body["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let text = |key: &str| n[key].as_str().unwrap_or_default().to_owned();
            (text("id"), text("role"))
        })
        .collect();
    roles.sort();
    roles
}

/// Only one node ingests unless the cluster shares its store: a standalone node or a second
/// writer asking to join a cluster that has a writer stops with the reason, and is not admitted.
#[tokio::test]
async fn a_standalone_node_or_a_second_writer_cannot_join_a_cluster_that_has_a_writer() {
    let mut cluster = TestCluster::start(vec![
        spec("writer-01", "writer"),
        spec("reader-01", "reader"),
    ])
    .await;
    for (name, role) in [("standalone-01", "standalone"), ("writer-02", "writer")] {
        cluster.spawn(spec(name, role)).await;
        let server = &mut cluster.node_mut(name).server;
        let exit = server.wait_exit().await;
        let log = server.log();
        eprintln!("{name} ({role}): {exit}");
        assert!(!exit.success(), "{name} started:\n{log}");
        assert!(
            log.contains("the cluster refuses this node")
                && log.contains("writer-01 (writer) already ingests"),
            "{name}:\n{log}"
        );
    }
    let expected = vec![
        ("reader-01".to_owned(), "reader".to_owned()),
        ("writer-01".to_owned(), "writer".to_owned()),
    ];
    assert_eq!(
        roles_seen_by(&cluster.node("reader-01").server).await,
        expected
    );
}

/// Two writers asking to join at the same moment: their registrations are ordered by the log,
/// so exactly one is admitted and the other stops with the reason.
#[tokio::test]
async fn of_two_writers_joining_at_once_exactly_one_is_admitted() {
    let mut cluster = TestCluster::start(vec![spec("reader-01", "reader")]).await;
    cluster.spawn(spec("writer-01", "writer")).await;
    cluster.spawn(spec("writer-02", "writer")).await;
    let observer = &cluster.nodes[0].server;
    let admitted = eventually("one writer admitted", WAIT, || async {
        let writers: Vec<String> = roles_seen_by(observer)
            .await
            .into_iter()
            .filter(|(_, role)| role == "writer")
            .map(|(name, _)| name)
            .collect();
        writers.first().cloned()
    })
    .await;
    let refused = if admitted == "writer-01" {
        "writer-02"
    } else {
        "writer-01"
    };
    cluster.node_mut(&admitted).server.wait_ready().await;
    let server = &mut cluster.node_mut(refused).server;
    let exit = server.wait_exit().await;
    let log = server.log();
    eprintln!("admitted {admitted}; {refused}: {exit}");
    assert!(!exit.success(), "{refused} started too:\n{log}");
    assert!(
        log.contains(&format!("node {admitted} (writer) already ingests")),
        "{refused}:\n{log}"
    );
    let roles = roles_seen_by(&cluster.nodes[0].server).await;
    let mut expected = vec![
        (admitted.clone(), "writer".to_owned()),
        ("reader-01".to_owned(), "reader".to_owned()),
    ];
    expected.sort();
    assert_eq!(roles, expected);
}

/// A member's role is what the registry holds: restarted with another role it stops with the
/// reason, and with its own role it comes back.
#[tokio::test]
async fn a_member_restarted_with_another_role_is_refused_and_returns_with_its_own() {
    let mut cluster = writer_and_two_readers().await;
    all_healthy(&cluster, "writer-01").await;
    let server = &mut cluster.node_mut("reader-02").server;
    assert!(server.stop().await.success());
    for role in ["writer", "compactor"] {
        server.respawn_with(&[("ARC_CLUSTER_ROLE", role)]);
        let exit = server.wait_exit().await;
        let log = server.log();
        eprintln!("reader-02 restarted as {role}: {exit}");
        assert!(!exit.success(), "reader-02 started as {role}");
        assert!(
            log.contains(&format!(
                "node reader-02 is registered as a reader but was started as a {role}"
            )),
            "{log}"
        );
    }
    server.restart_with(&[("ARC_CLUSTER_ROLE", "reader")]).await;
    all_healthy(&cluster, "writer-01").await;
    let roles = roles_seen_by(&cluster.node("writer-01").server).await;
    assert!(
        roles.contains(&("reader-02".to_owned(), "reader".to_owned())),
        "{roles:?}"
    );
}
