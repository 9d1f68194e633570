//! Multi-node clusters of real `arcdb` processes on loopback, with a TCP proxy in front of each
//! node's coordinator port so a test can cut traffic between chosen nodes.
//!
//! Node `k` listens for peers on `127.0.0.<k+2>` (still loopback) and dials peers from that
//! address; its proxy listens on 127.0.0.1 and is what the node advertises. A proxy told to block
//! a node refuses connections coming from that node's address and cuts the open ones, so blocking
//! both directions between two nodes partitions them.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::harness::{Server, call};

pub const SHARED_SECRET: &str = "cluster-test-secret-0123456789abcdef";
pub const CLUSTER_NAME: &str = "test-cluster";

/// Forwards TCP connections to one node's coordinator port unless their source is blocked.
pub struct Proxy {
    pub port: u16,
    blocked: Arc<Mutex<HashSet<IpAddr>>>,
    connections: Arc<Mutex<Vec<(IpAddr, AbortHandle)>>>,
    accept: AbortHandle,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let blocked: Arc<Mutex<HashSet<IpAddr>>> = Arc::default();
        let connections: Arc<Mutex<Vec<(IpAddr, AbortHandle)>>> = Arc::default();
        let (accept_blocked, accept_connections) = (Arc::clone(&blocked), Arc::clone(&connections));
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, peer)) = listener.accept().await else {
                    continue;
                };
                if accept_blocked.lock().unwrap().contains(&peer.ip()) {
                    continue;
                }
                let relay = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut open = accept_connections.lock().unwrap();
                open.retain(|(_, handle)| !handle.is_finished());
                open.push((peer.ip(), relay.abort_handle()));
            }
        })
        .abort_handle();
        Proxy {
            port,
            blocked,
            connections,
            accept,
        }
    }

    /// Refuses traffic from `source` from now on, cutting its open connections.
    pub fn block(&self, source: IpAddr) {
        self.blocked.lock().unwrap().insert(source);
        for (ip, handle) in self.connections.lock().unwrap().iter() {
            if *ip == source {
                handle.abort();
            }
        }
    }

    pub fn unblock_all(&self) {
        self.blocked.lock().unwrap().clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for (_, handle) in self.connections.lock().unwrap().iter() {
            handle.abort();
        }
    }
}

pub struct Node {
    pub name: String,
    pub server: Server,
    pub ip: IpAddr,
    pub proxy: Proxy,
}

impl Node {
    pub fn advertised(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.port)
    }
}

/// What a node is started as.
pub struct NodeSpec<'a> {
    pub name: &'a str,
    pub role: &'a str,
    pub extra_env: Vec<(&'a str, String)>,
}

pub struct TestCluster {
    pub nodes: Vec<Node>,
    /// The storage directory every node shares (Pattern A on one filesystem), removed on drop.
    _storage: tempfile::TempDir,
}

impl TestCluster {
    /// Starts the nodes one after another; the first has no seeds and starts the cluster, the
    /// others use it as their seed, as the seeds' example deployment does.
    pub async fn start(specs: Vec<NodeSpec<'_>>) -> TestCluster {
        let storage = tempfile::tempdir().unwrap();
        let mut nodes: Vec<Node> = Vec::new();
        for (k, spec) in specs.into_iter().enumerate() {
            let seeds = nodes.first().map(Node::advertised).unwrap_or_default();
            let node = start_node(k, spec, &seeds, storage.path()).await;
            nodes.push(node);
        }
        TestCluster {
            nodes,
            _storage: storage,
        }
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    pub fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap()
    }

    /// Cuts all traffic between `name` and every other node, both ways.
    pub fn isolate(&self, name: &str) {
        let isolated = self.node(name);
        for other in self.nodes.iter().filter(|n| n.name != name) {
            isolated.proxy.block(other.ip);
            other.proxy.block(isolated.ip);
        }
    }

    pub fn heal(&self) {
        for node in &self.nodes {
            node.proxy.unblock_all();
        }
    }
}

async fn start_node(k: usize, spec: NodeSpec<'_>, seeds: &str, storage: &std::path::Path) -> Node {
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + k as u8));
    // Picked on the node's own address: a port free on 127.0.0.1 may be taken on this one.
    let coordinator_port = std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = Proxy::start(SocketAddr::new(ip, coordinator_port)).await;
    let mut env: Vec<(&str, String)> = vec![
        ("ARC_CLUSTER_ENABLED", "true".into()),
        ("ARC_CLUSTER_NODE_ID", spec.name.into()),
        ("ARC_CLUSTER_ROLE", spec.role.into()),
        ("ARC_CLUSTER_CLUSTER_NAME", CLUSTER_NAME.into()),
        ("ARC_CLUSTER_SHARED_SECRET", SHARED_SECRET.into()),
        (
            "ARC_CLUSTER_COORDINATOR_ADDR",
            format!("{ip}:{coordinator_port}"),
        ),
        (
            "ARC_CLUSTER_ADVERTISE_ADDR",
            format!("127.0.0.1:{}", proxy.port),
        ),
        ("ARC_CLUSTER_SEEDS", seeds.into()),
        ("ARC_CLUSTER_HEARTBEAT_INTERVAL", "1".into()),
        (
            "ARC_STORAGE_LOCAL_PATH",
            storage.to_string_lossy().into_owned(),
        ),
        ("ARC_LOG_LEVEL", "info".into()),
    ];
    for (key, value) in spec.extra_env {
        env.retain(|(k, _)| *k != key);
        env.push((key, value));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start(&env).await;
    Node {
        name: spec.name.to_owned(),
        server,
        ip,
        proxy,
    }
}

/// Sends a request and decodes the JSON answer (Null when the body is not JSON).
pub async fn get_json(server: &Server, path: &str) -> (StatusCode, Value) {
    call(server.client.get(server.url(path))).await
}

/// Polls `check` every 50 ms until it gives `Some`, failing after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Raft leader this node reports, if any.
pub async fn leader_seen_by(server: &Server) -> Option<String> {
    let (status, body) = get_json(server, "/api/v1/cluster").await;
    (status == StatusCode::OK)
        .then(|| body["data"]["leader"].as_str().map(str::to_owned))
        .flatten()
}

/// Each node's state as `observer` reports it.
pub async fn states_seen_by(observer: &Server) -> HashMap<String, String> {
    let (_, body) = get_json(observer, "/api/v1/cluster/nodes").await;
    body["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            (
                n["id"].as_str().unwrap_or_default().to_owned(),
                n["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Creates a token through `server`; returns the status and, on success, its secret.
pub async fn create_token(server: &Server, name: &str) -> (StatusCode, Option<String>) {
    let request = server
        .client
        .post(server.url("/api/v1/auth/tokens"))
        .json(&json!({ "name": name, "permissions": ["read"] }))
        .timeout(Duration::from_secs(20));
    let (status, body) = call(request).await;
    let secret = body["token"]
        .as_str()
        .or_else(|| body["data"]["token"].as_str())
        .map(str::to_owned);
    (status, secret)
}

/// Whether `secret` authenticates on `server`.
pub async fn token_works(server: &Server, secret: &str) -> bool {
    let response = reqwest::Client::new()
        .get(server.url("/api/v1/databases"))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    response.status() == StatusCode::OK
}
