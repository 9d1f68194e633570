//! What the benchmark programs share: a release-built `arcdb` in a temporary directory.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The admin token the benchmark servers are started with.
const TOKEN: &str = "benchmark-admin-token-0123456789abcdef";

/// An HTTP client that sends the benchmark servers' admin token.
pub fn client_builder() -> reqwest::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = format!("Bearer {TOKEN}")
        .parse()
        .expect("valid header value");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder().default_headers(headers)
}

/// An `arcdb` process, stopped with SIGTERM when dropped.
pub struct LocalServer {
    child: Child,
    pub url: String,
    dir: tempfile::TempDir,
}

impl LocalServer {
    /// Starts a server on a free loopback port with `ARC_*` settings from `env`.
    pub async fn start(env: &[(String, String)]) -> Result<LocalServer> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let child = Command::new(env!("CARGO_BIN_EXE_arcdb"))
            .current_dir(dir.path())
            .env("ARC_SERVER_HOST", "127.0.0.1")
            .env("ARC_SERVER_PORT", port.to_string())
            .env("ARC_LOG_LEVEL", "warn")
            .env("ARC_AUTH_BOOTSTRAP_TOKEN", TOKEN)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting arcdb")?;
        let url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = client.get(format!("{url}/ready")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if Instant::now() > deadline {
                bail!("arcdb did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(LocalServer { child, url, dir })
    }

    #[allow(dead_code, reason = "used by the ingest benchmark only")]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the server keeps its Parquet files (local storage).
    #[allow(dead_code, reason = "used by the query benchmark only")]
    pub fn storage_root(&self) -> PathBuf {
        self.dir.path().join("data/arc")
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

/// A memory figure of process `pid` from `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB;
/// `None` once the process is gone.
#[allow(dead_code, reason = "used by the ingest benchmark only")]
pub fn memory_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Flushes every buffer of the server at `url`.
pub async fn flush(client: &reqwest::Client, url: &str) -> Result<()> {
    let flushed = client
        .post(format!("{url}/api/v1/write/line-protocol/flush"))
        .send()
        .await?;
    if !flushed.status().is_success() {
        bail!("flush failed: {}", flushed.text().await?);
    }
    Ok(())
}
