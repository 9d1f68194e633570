//! Runs real `arcdb` processes on loopback ports with temporary directories, and reads back what
//! they stored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use arcdb::config::{StorageBackend, StorageConfig};
use arcdb::storage::Storage;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use reqwest::StatusCode;
use serde_json::{Value, json};

pub use crate::process::{die_with_parent, free_port};

/// The admin token every test server is started with (unless a test sets its own).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdefghijkl";

/// A client that sends [`ADMIN_TOKEN`].
pub fn admin_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = format!("Bearer {ADMIN_TOKEN}").parse().unwrap();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// The `arcdb` to run: `ARCDB_BIN` when set (a soak run keeps its own copy while the tree is
/// rebuilt), else the one this build made.
fn arcdb_binary() -> PathBuf {
    std::env::var_os("ARCDB_BIN").map_or_else(|| env!("CARGO_BIN_EXE_arcdb").into(), PathBuf::from)
}

pub struct Server {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    env: Vec<(String, String)>,
    pub client: reqwest::Client,
    _tempdir: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts a server in a new temporary directory (its working directory, so every default
    /// path lands inside it) with `ARC_*` settings from `env`.
    pub async fn start(env: &[(&str, &str)]) -> Server {
        let mut server = Server::start_unready(env);
        server.wait_ready().await;
        server
    }

    /// [`Server::start`] without waiting for `/ready`. The API port is `ARC_SERVER_PORT` when
    /// `env` sets it, else a free one.
    pub fn start_unready(env: &[(&str, &str)]) -> Server {
        let tempdir = tempfile::tempdir().unwrap();
        let port = env
            .iter()
            .find(|(k, _)| *k == "ARC_SERVER_PORT")
            .map_or_else(free_port, |(_, v)| {
                v.parse().expect("ARC_SERVER_PORT is a port")
            });
        let mut server = Server {
            child: None,
            port,
            dir: tempdir.path().to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            client: admin_client(),
            _tempdir: Some(tempdir),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let mut command = Command::new(arcdb_binary());
        command
            .current_dir(&self.dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ARC_SERVER_HOST", "127.0.0.1")
            .env("ARC_SERVER_PORT", self.port.to_string())
            .env("ARC_LOG_FORMAT", "console")
            .env("ARC_AUTH_BOOTSTRAP_TOKEN", ADMIN_TOKEN)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        die_with_parent(&mut command);
        self.child = Some(command.spawn().expect("start arcdb"));
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Polls `/ready` until it answers 200.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("arcdb exited during start-up ({status}):\n{}", self.log());
            }
            if let Ok(response) = self.client.get(self.url("/ready")).send().await
                && response.status() == StatusCode::OK
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "arcdb not ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGSTOP: the process stays alive, holds its sockets open and answers nothing.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Server::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: sending a signal to our own child.
        let sent = unsafe { libc::kill(self.pid() as i32, signal) };
        assert_eq!(sent, 0, "signal {signal} to arcdb");
    }

    /// SIGTERM, then waits for the exit.
    pub async fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        // SAFETY: sending a signal to our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap()
    }

    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the server first");
        self.spawn();
        self.wait_ready().await;
    }

    /// Restarts with changed settings.
    pub async fn restart_with(&mut self, env: &[(&str, &str)]) {
        self.respawn_with(env);
        self.wait_ready().await;
    }

    /// Starts the stopped server again with changed settings, without waiting for it.
    pub fn respawn_with(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "stop or kill the server first");
        for (key, value) in env {
            self.env.retain(|(k, _)| k != key);
            self.env.push((key.to_string(), value.to_string()));
        }
        self.spawn();
    }

    /// Waits for the process to exit on its own (it refused to start), up to 60 s.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let child = self.child.as_mut().expect("server started");
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "arcdb still running after 60 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, String) {
        let mut request = self.client.post(self.url(path)).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        (status, response.text().await.unwrap())
    }

    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        let status = response.status();
        (status, response.text().await.unwrap())
    }

    pub async fn flush(&self) {
        let (status, body) = self
            .post("/api/v1/write/line-protocol/flush", &[], "")
            .await;
        assert_eq!(status, StatusCode::OK, "flush failed: {body}");
    }

    /// The storage this server writes to, opened with arcdb's own storage code.
    pub fn storage(&self) -> Storage {
        let mut config = StorageConfig {
            local_path: self.dir.join("data/arc").to_string_lossy().into_owned(),
            ..StorageConfig::default()
        };
        for (key, value) in &self.env {
            match key.as_str() {
                "ARC_STORAGE_BACKEND" => {
                    config.backend = match value.as_str() {
                        "s3" | "minio" => StorageBackend::S3,
                        _ => StorageBackend::Local,
                    }
                }
                "ARC_STORAGE_S3_BUCKET" => config.s3_bucket = value.clone(),
                "ARC_STORAGE_S3_ENDPOINT" => config.s3_endpoint = value.clone(),
                "ARC_STORAGE_S3_REGION" => config.s3_region = value.clone(),
                "ARC_STORAGE_S3_ACCESS_KEY" => config.s3_access_key = value.clone(),
                "ARC_STORAGE_S3_SECRET_KEY" => config.s3_secret_key = value.clone(),
                "ARC_STORAGE_S3_USE_SSL" => config.s3_use_ssl = value == "true",
                "ARC_STORAGE_S3_PATH_STYLE" => config.s3_path_style = value == "true",
                "ARC_STORAGE_S3_PREFIX" => config.s3_prefix = value.clone(),
                _ => {}
            }
        }
        Storage::from_config(&config).unwrap()
    }

    pub fn meta_dir(&self) -> PathBuf {
        self.dir.join("data/meta")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A stored Parquet file, decoded.
pub struct StoredFile {
    pub key: String,
    pub batches: Vec<RecordBatch>,
    pub metadata: BTreeMap<String, String>,
}

impl StoredFile {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

pub fn decode_parquet(key: &str, bytes: Bytes) -> StoredFile {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
    let metadata = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .into_iter()
        .flatten()
        .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?)))
        .collect();
    let batches = builder
        .build()
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    StoredFile {
        key: key.to_string(),
        batches,
        metadata,
    }
}

/// Every Parquet file under `prefix`, decoded, in key order.
pub async fn stored_files(storage: &Storage, prefix: &str) -> Vec<StoredFile> {
    let mut objects = storage.list(prefix).await.unwrap();
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    let mut files = Vec::new();
    for object in objects.iter().filter(|o| o.key.ends_with(".parquet")) {
        let bytes = storage.get(&object.key).await.unwrap();
        files.push(decode_parquet(&object.key, bytes));
    }
    files
}

/// Keys of the files the manifest lists (read from the meta directory of a stopped server).
pub fn manifest_paths(meta_dir: &Path) -> Vec<String> {
    let meta = arcdb::meta::Meta::open(meta_dir).unwrap();
    let state = meta.state();
    let mut paths: Vec<String> = state.files().map(|f| f.path.clone()).collect();
    paths.sort();
    paths
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// The compressions a client may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub const ALL: [Compression; 3] = [Compression::None, Compression::Gzip, Compression::Zstd];

    pub fn apply(self, data: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => data.to_vec(),
            Compression::Gzip => gzip(data),
            Compression::Zstd => zstd(data),
        }
    }
}

pub fn msgpack(value: &rmpv::Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, value).unwrap();
    out
}

/// Builds a MessagePack map from string keys.
pub fn map(entries: Vec<(&str, rmpv::Value)>) -> rmpv::Value {
    rmpv::Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (rmpv::Value::from(k), v))
            .collect(),
    )
}

pub async fn write_lines(server: &Server, db: &str, lines: &str) {
    let (status, body) = server
        .post(&format!("/write?db={db}"), &[], lines.to_string())
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
}

pub async fn query(server: &Server, sql: &str) -> Vec<Value> {
    let response = server
        .client
        .post(server.url("/api/v1/query"))
        .json(&json!({ "sql": sql }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{sql}: {body}");
    body["data"].as_array().unwrap().clone()
}

pub async fn get_json(server: &Server, path: &str) -> Value {
    let (status, body) = server.get(path).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Files the manifest lists for `db`, from the measurements endpoint.
pub async fn file_count(server: &Server, db: &str) -> u64 {
    let body = get_json(server, &format!("/api/v1/measurements?database={db}")).await;
    body["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["file_count"].as_u64().unwrap())
        .sum()
}

/// Data objects in storage under `db/`.
pub async fn stored_keys(server: &Server, db: &str) -> Vec<String> {
    let mut keys: Vec<String> = server
        .storage()
        .list(&format!("{db}/"))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    keys.sort();
    keys
}

/// Polls until storage holds exactly the manifest's files (removed inputs reclaimed).
pub async fn wait_reclaimed(server: &Server, db: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (stored, listed) = (stored_keys(server, db).await, file_count(server, db).await);
        if stored.len() as u64 == listed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "storage keeps {} objects for {listed} files: {stored:?}",
            stored.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// After a stop: storage and manifest agree exactly and nothing waits for deletion.
pub fn assert_no_orphans(server: &Server, stored: &[String]) {
    let listed = manifest_paths(&server.meta_dir());
    assert_eq!(stored, listed.as_slice());
    let meta = arcdb::meta::Meta::open(&server.meta_dir()).unwrap();
    assert_eq!(meta.state().tombstones().count(), 0);
}

/// Sends a request: its status and JSON body (a body that is not JSON comes back as a string).
pub async fn call(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}
