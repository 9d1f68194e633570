//! Multi-node clusters of real `arcdb` processes on loopback, and the nemeses a fault test
//! applies to them: kill -9 and restart, SIGSTOP/SIGCONT, partitions that refuse or black-hole
//! traffic, and slow links.
//!
//! Node `k` listens for peers on `127.0.0.<k+2>` (still loopback) and dials peers from that
//! address. Two proxies on 127.0.0.1 stand in front of each node, one for its coordinator port and
//! one for its API port, and the node advertises both, so everything one node sends another —
//! Raft, heartbeats, joins and client requests it forwards — passes a proxy that knows the
//! sender by its source address. Cutting both directions between two nodes partitions them.
//! Test clients talk to a node's API port directly: a partition is between nodes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::garage::{garage_server, s3_env};
use crate::harness::{Server, call, free_port};

pub const SHARED_SECRET: &str = "cluster-test-secret-0123456789abcdef";
pub const CLUSTER_NAME: &str = "test-cluster";

/// What a proxy does with traffic from one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Open,
    /// Connections are refused and open ones cut: the sender learns at once.
    Refused,
    /// Connections are accepted and bytes are held, never answered: the sender learns nothing
    /// until its own deadline. Held bytes flow again once the link opens, as TCP retransmits
    /// would deliver them after a partition heals.
    BlackHoled,
    /// Every chunk is delayed this long, in each direction.
    Slow(Duration),
}

type Links = Arc<Mutex<HashMap<IpAddr, Link>>>;

fn link_from(links: &Links, source: IpAddr) -> Link {
    links
        .lock()
        .unwrap()
        .get(&source)
        .copied()
        .unwrap_or(Link::Open)
}

/// Waits while `source` is black-holed; false once it is refused.
async fn wait_while_black_holed(links: &Links, source: IpAddr) -> Option<Duration> {
    loop {
        match link_from(links, source) {
            Link::Open => return Some(Duration::ZERO),
            Link::Slow(delay) => return Some(delay),
            Link::Refused => return None,
            Link::BlackHoled => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Copies one direction of a relayed connection, chunk by chunk, as the link allows.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, source: IpAddr, links: Links) {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let Some(delay) = wait_while_black_holed(&links, source).await else {
            return;
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&chunk[..read]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Forwards TCP connections to one port of a node, as the link from each source allows.
pub struct Proxy {
    pub port: u16,
    links: Links,
    connections: Arc<Mutex<Vec<(IpAddr, AbortHandle)>>>,
    accept: AbortHandle,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let links: Links = Arc::default();
        let connections: Arc<Mutex<Vec<(IpAddr, AbortHandle)>>> = Arc::default();
        let (accept_links, accept_connections) = (Arc::clone(&links), Arc::clone(&connections));
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, peer)) = listener.accept().await else {
                    continue;
                };
                let source = peer.ip();
                if link_from(&accept_links, source) == Link::Refused {
                    continue;
                }
                let links = Arc::clone(&accept_links);
                let relay = tokio::spawn(async move {
                    if wait_while_black_holed(&links, source).await.is_none() {
                        return;
                    }
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::join!(
                        pump(in_read, out_write, source, Arc::clone(&links)),
                        pump(out_read, in_write, source, links),
                    );
                });
                let mut open = accept_connections.lock().unwrap();
                open.retain(|(_, handle)| !handle.is_finished());
                open.push((source, relay.abort_handle()));
            }
        })
        .abort_handle();
        Proxy {
            port,
            links,
            connections,
            accept,
        }
    }

    /// Sets how traffic from `source` is treated from now on; refusing cuts its open
    /// connections.
    pub fn set_link(&self, source: IpAddr, link: Link) {
        self.links.lock().unwrap().insert(source, link);
        if link == Link::Refused {
            for (ip, handle) in self.connections.lock().unwrap().iter() {
                if *ip == source {
                    handle.abort();
                }
            }
        }
    }

    pub fn unblock_all(&self) {
        self.links.lock().unwrap().clear();
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
    pub role: String,
    pub server: Server,
    pub ip: IpAddr,
    /// In front of the coordinator port.
    pub proxy: Proxy,
    /// In front of the API port, for requests other nodes forward.
    pub api_proxy: Proxy,
}

impl Node {
    pub fn advertised(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.port)
    }

    fn proxies(&self) -> [&Proxy; 2] {
        [&self.proxy, &self.api_proxy]
    }
}

/// What a node is started as.
pub struct NodeSpec<'a> {
    pub name: &'a str,
    pub role: &'a str,
    pub extra_env: Vec<(&'a str, String)>,
}

impl<'a> NodeSpec<'a> {
    pub fn new(name: &'a str, role: &'a str) -> NodeSpec<'a> {
        NodeSpec {
            name,
            role,
            extra_env: Vec::new(),
        }
    }

    /// The same node with more `ARC_*` settings (later ones win).
    pub fn with(mut self, settings: &[(&'a str, &str)]) -> NodeSpec<'a> {
        self.extra_env
            .extend(settings.iter().map(|(k, v)| (*k, (*v).to_owned())));
        self
    }
}

/// Where the nodes keep their Parquet files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageMode {
    /// One directory every node shares (Pattern A on a filesystem).
    SharedDirectory,
    /// One bucket on the test Garage every node shares (Pattern A on S3).
    Garage,
    /// Each node its own directory (Pattern B).
    OwnDirectories,
}

pub struct TestCluster {
    pub nodes: Vec<Node>,
    pub mode: StorageMode,
    /// Settings every node gets for its storage.
    storage_env: Vec<(String, String)>,
    /// The shared storage directory, removed on drop.
    _storage: Option<tempfile::TempDir>,
}

impl TestCluster {
    /// Starts the nodes one after another on one shared storage directory; the first has no
    /// seeds and starts the cluster, the others use it as their seed, as the seeds' example
    /// deployment does.
    pub async fn start(specs: Vec<NodeSpec<'_>>) -> TestCluster {
        TestCluster::start_with(StorageMode::SharedDirectory, specs).await
    }

    pub async fn start_with(mode: StorageMode, specs: Vec<NodeSpec<'_>>) -> TestCluster {
        let (storage, storage_env) = match mode {
            StorageMode::SharedDirectory => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().to_string_lossy().into_owned();
                (Some(dir), vec![("ARC_STORAGE_LOCAL_PATH".to_owned(), path)])
            }
            StorageMode::Garage => {
                // Each cluster its own prefix of the shared test bucket.
                let prefix = format!("cluster-{}", free_port());
                (None, s3_env(&garage_server().s3_endpoint, &prefix))
            }
            StorageMode::OwnDirectories => (None, Vec::new()),
        };
        let mut cluster = TestCluster {
            nodes: Vec::new(),
            mode,
            storage_env,
            _storage: storage,
        };
        for spec in specs {
            cluster.add(spec).await;
        }
        cluster
    }

    /// Starts one more node, with the first node as its seed, and waits until it is ready.
    pub async fn add(&mut self, spec: NodeSpec<'_>) {
        let name = spec.name.to_owned();
        self.spawn(spec).await;
        self.node_mut(&name).server.wait_ready().await;
    }

    /// Starts one more node, with the first node as its seed, without waiting for it.
    pub async fn spawn(&mut self, spec: NodeSpec<'_>) {
        let seeds = self.nodes.first().map(Node::advertised).unwrap_or_default();
        let node = spawn_node(self.nodes.len(), spec, &seeds, &self.storage_env).await;
        self.nodes.push(node);
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// Nodes whose role serves queries.
    pub fn query_nodes(&self) -> Vec<&Node> {
        self.nodes
            .iter()
            .filter(|n| matches!(n.role.as_str(), "reader" | "standalone"))
            .collect()
    }

    /// Fails, with the end of its log, if any node has exited on its own.
    pub fn assert_running(&mut self) {
        for node in self.nodes.iter_mut() {
            if !node.server.is_running() {
                let log = node.server.log();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!("{} exited:\n{}", node.name, tail.join("\n"));
            }
        }
    }

    pub fn kill9(&mut self, name: &str) {
        self.node_mut(name).server.kill9();
    }

    /// Starts a killed or stopped node again and waits until it is ready.
    pub async fn restart(&mut self, name: &str) {
        self.node_mut(name).server.restart().await;
    }

    pub fn pause(&self, name: &str) {
        self.node(name).server.pause();
    }

    pub fn resume(&self, name: &str) {
        self.node(name).server.resume();
    }

    /// Sets the link between every node in `side` and every node outside it, both ways.
    pub fn partition(&self, side: &[&str], link: Link) {
        let inside = |n: &Node| side.contains(&n.name.as_str());
        for a in self.nodes.iter().filter(|n| inside(n)) {
            for b in self.nodes.iter().filter(|n| !inside(n)) {
                for proxy in a.proxies() {
                    proxy.set_link(b.ip, link);
                }
                for proxy in b.proxies() {
                    proxy.set_link(a.ip, link);
                }
            }
        }
    }

    /// Cuts all traffic between `name` and every other node, both ways.
    pub fn isolate(&self, name: &str) {
        self.partition(&[name], Link::Refused);
    }

    /// Slows everything `name` sends or receives by `delay` per chunk.
    pub fn slow(&self, name: &str, delay: Duration) {
        self.partition(&[name], Link::Slow(delay));
    }

    /// Opens every link again.
    pub fn heal(&self) {
        for node in &self.nodes {
            for proxy in node.proxies() {
                proxy.unblock_all();
            }
        }
    }

    /// The Raft leader that a majority of the running nodes name, if they agree on one.
    pub async fn leader(&mut self) -> Option<String> {
        let mut votes: HashMap<String, usize> = HashMap::new();
        let mut running = 0;
        for node in self.nodes.iter_mut() {
            if !node.server.is_running() {
                continue;
            }
            running += 1;
            if let Some(leader) = leader_seen_by(&node.server).await {
                *votes.entry(leader).or_default() += 1;
            }
        }
        votes
            .into_iter()
            .find(|(_, count)| *count * 2 > running)
            .map(|(leader, _)| leader)
    }

    /// Waits until a majority agrees on a leader, and returns it.
    pub async fn wait_for_leader(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(leader) = self.leader().await {
                return leader;
            }
            assert!(Instant::now() < deadline, "no leader after 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The manifest's file paths as `name` has applied them, from its cluster API.
    pub async fn manifest(&self, name: &str) -> Vec<String> {
        let server = &self.node(name).server;
        let mut paths = Vec::new();
        let mut cursor = String::new();
        loop {
            let path = format!("/api/v1/cluster/files?limit=10000&cursor={cursor}");
            let (status, body) = get_json(server, &path).await;
            assert_eq!(status, StatusCode::OK, "{path} on {name}: {body}");
            let files = body["files"].as_array().expect("files listed");
            paths.extend(files.iter().map(|f| f["path"].as_str().unwrap().to_owned()));
            match body["next_cursor"].as_str() {
                Some(next) if !next.is_empty() => cursor = next.to_owned(),
                _ => break,
            }
        }
        paths.sort();
        paths
    }

    /// Where `name` keeps its Parquet files on disk (none on Garage).
    pub fn data_dir(&self, name: &str) -> Option<PathBuf> {
        match self.mode {
            StorageMode::Garage => None,
            StorageMode::SharedDirectory => self._storage.as_ref().map(|d| d.path().to_owned()),
            StorageMode::OwnDirectories => Some(self.node(name).server.dir.join("data/arc")),
        }
    }
}

async fn spawn_node(
    k: usize,
    spec: NodeSpec<'_>,
    seeds: &str,
    storage_env: &[(String, String)],
) -> Node {
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + k as u8));
    // Picked on the node's own address: a port free on 127.0.0.1 may be taken on this one.
    let coordinator_port = std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = Proxy::start(SocketAddr::new(ip, coordinator_port)).await;
    let api_port = free_port();
    let api_proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], api_port))).await;
    let mut env: Vec<(String, String)> = [
        ("ARC_SERVER_PORT", api_port.to_string()),
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
        (
            "ARC_CLUSTER_API_ADVERTISE_ADDR",
            format!("127.0.0.1:{}", api_proxy.port),
        ),
        ("ARC_CLUSTER_SEEDS", seeds.into()),
        ("ARC_CLUSTER_HEARTBEAT_INTERVAL", "1".into()),
        ("ARC_LOG_LEVEL", "info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .chain(storage_env.iter().cloned())
    .collect();
    for (key, value) in spec.extra_env {
        env.retain(|(k, _)| k != key);
        env.push((key.to_owned(), value));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = Server::start_unready(&env);
    Node {
        name: spec.name.to_owned(),
        role: spec.role.to_owned(),
        server,
        ip,
        proxy,
        api_proxy,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server behind a proxy, and a client connection from `source`.
    async fn echo_behind_proxy() -> Proxy {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        Proxy::start(target).await
    }

    async fn round_trip(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        stream.write_all(b"ping").await.ok()?;
        let mut answer = [0u8; 4];
        match tokio::time::timeout(limit, stream.read_exact(&mut answer)).await {
            Ok(Ok(_)) if &answer == b"ping" => Some(started.elapsed()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn links_pass_refuse_hold_and_slow_traffic_as_set() {
        let proxy = echo_behind_proxy().await;
        let source: IpAddr = [127, 0, 0, 9].into();
        let connect = || async {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(source, 0)).unwrap();
            socket
                .connect(SocketAddr::from(([127, 0, 0, 1], proxy.port)))
                .await
                .unwrap()
        };
        let limit = Duration::from_millis(500);
        let mut open = connect().await;
        assert!(round_trip(&mut open, limit).await.is_some(), "open link");

        proxy.set_link(source, Link::BlackHoled);
        assert!(round_trip(&mut open, limit).await.is_none(), "held bytes");
        proxy.set_link(source, Link::Open);
        let mut echoed = [0u8; 4];
        open.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"ping", "held bytes flow on after healing");

        proxy.set_link(source, Link::Slow(Duration::from_millis(100)));
        let slow = round_trip(&mut open, Duration::from_secs(5)).await.unwrap();
        eprintln!("slow link round trip: {slow:?}");
        assert!(
            slow >= Duration::from_millis(200),
            "two delayed chunks: {slow:?}"
        );

        proxy.set_link(source, Link::Refused);
        let mut cut = [0u8; 1];
        assert_eq!(
            open.read(&mut cut).await.unwrap_or(0),
            0,
            "open connection cut"
        );
        let mut refused = connect().await;
        assert!(
            round_trip(&mut refused, limit).await.is_none(),
            "new connection refused"
        );
    }
}
