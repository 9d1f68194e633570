//! Replication benchmark (Pattern B): release-built `arcdb` nodes on loopback, each with its own
//! disk and `cluster.replication_enabled`. Prints, in one run:
//!
//! 1. sustained ingest on the writer alone and with two replicating readers (rows/s over the
//!    load and the final flush, so buffered rows are paid for);
//! 2. how long the readers take to catch up once that load ends; then freshness: from the
//!    writer's 204 for a probe row to the first query on a reader that counts it, p50/p99/max,
//!    while a paced load runs;
//! 3. catch-up of a reader started after the files exist: files/s and MB/s;
//! 4. ingest and per-request latency with `cluster.replication_ack` none, one and quorum, each on
//!    a fresh writer with two readers;
//! 5. shared storage (Pattern A) on a local Garage: ingest and per-request latency of a writer
//!    with and without `cluster.shared_wal` (which copies each WAL group to the bucket before
//!    acknowledging), side by side.
//!
//! ```text
//! cargo bench --bench replication -- [--seconds 10] [--workers 4] [--batch 5000]
//!     [--rate 200000] [--probes 200] [--only shared-wal]
//! ```

mod common;
#[path = "../tests/it/garage.rs"]
mod garage;
#[path = "../tests/it/process.rs"]
mod process;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::LocalServer;
use serde_json::{Value, json};

#[derive(Clone)]
struct Options {
    seconds: u64,
    workers: usize,
    batch: usize,
    /// Rows/s of the paced load during the freshness probes.
    rate: u64,
    probes: usize,
    /// Run only section 5.
    only_shared_wal: bool,
}

fn parse_options() -> Result<Options> {
    let mut options = Options {
        seconds: 10,
        workers: 4,
        batch: 5000,
        rate: 200_000,
        probes: 200,
        only_shared_wal: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--seconds" => options.seconds = value()?.parse()?,
            "--workers" => options.workers = value()?.parse()?,
            "--batch" => options.batch = value()?.parse()?,
            "--rate" => options.rate = value()?.parse()?,
            "--probes" => options.probes = value()?.parse()?,
            "--only" => match value()?.as_str() {
                "shared-wal" => options.only_shared_wal = true,
                other => bail!("unknown section {other} (known: shared-wal)"),
            },
            // `cargo bench` passes this to every bench target.
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(options)
}

const SECRET: &str = "replication-benchmark-secret-0123456789";

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A cluster node; the first (no seed) starts the cluster.
/// A node acknowledging from the writer alone (`replication_ack = none`), so the cost of
/// streaming is measured apart from waiting for readers.
async fn start_node(name: &str, role: &str, seed: Option<&str>) -> Result<(LocalServer, String)> {
    start_node_with(name, role, seed, &[("ARC_CLUSTER_REPLICATION_ACK", "none")]).await
}

async fn start_node_with(
    name: &str,
    role: &str,
    seed: Option<&str>,
    extra: &[(&str, &str)],
) -> Result<(LocalServer, String)> {
    let coordinator = format!("127.0.0.1:{}", free_port()?);
    let mut env: Vec<(String, String)> = [
        ("ARC_CLUSTER_ENABLED", "true"),
        ("ARC_CLUSTER_NODE_ID", name),
        ("ARC_CLUSTER_ROLE", role),
        ("ARC_CLUSTER_CLUSTER_NAME", "bench"),
        ("ARC_CLUSTER_SHARED_SECRET", SECRET),
        ("ARC_CLUSTER_COORDINATOR_ADDR", &coordinator),
        ("ARC_CLUSTER_REPLICATION_ENABLED", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    if let Some(seed) = seed {
        env.push(("ARC_CLUSTER_SEEDS".into(), seed.into()));
    }
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    Ok((LocalServer::start(&env).await?, coordinator))
}

/// Line-protocol bodies of `batch` rows, each with its own timestamp.
fn bodies(batch: usize) -> Vec<bytes::Bytes> {
    (0..16)
        .map(|b| {
            let mut body = String::with_capacity(batch * 80);
            for i in 0..batch {
                let n = b * batch + i;
                body.push_str(&format!(
                    "cpu,host=host_{} usage_user={}.5,usage_idle={} {}\n",
                    n % 100,
                    n % 100,
                    n % 7,
                    1_768_471_200_000_000_000u64 + n as u64 * 1_000
                ));
            }
            bytes::Bytes::from(body)
        })
        .collect()
}

/// Posts batches from `workers` clients for `seconds` (at most `rate` rows/s in all when
/// given); returns the rows acknowledged and each request's latency in ms.
async fn load(
    url: &str,
    options: &Options,
    seconds: u64,
    rate: Option<u64>,
) -> Result<(u64, Vec<f64>)> {
    let client = common::client_builder().build()?;
    let bodies = std::sync::Arc::new(bodies(options.batch));
    let until = Instant::now() + Duration::from_secs(seconds);
    let per_request = rate.map(|rate| {
        Duration::from_secs_f64(options.batch as f64 * options.workers as f64 / rate as f64)
    });
    let mut tasks = Vec::new();
    for worker in 0..options.workers {
        let (client, bodies, target) = (
            client.clone(),
            std::sync::Arc::clone(&bodies),
            format!("{url}/write?db=bench"),
        );
        let batch = options.batch as u64;
        tasks.push(tokio::spawn(async move {
            let (mut rows, mut latencies) = (0, Vec::new());
            let mut next = worker;
            while Instant::now() < until {
                let sent = Instant::now();
                let response = client
                    .post(&target)
                    .body(bodies[next % bodies.len()].clone())
                    .send()
                    .await?;
                next += 1;
                if response.status() != reqwest::StatusCode::NO_CONTENT {
                    bail!("write failed: {}", response.text().await?);
                }
                rows += batch;
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                if let Some(pause) = per_request.and_then(|p| p.checked_sub(sent.elapsed())) {
                    tokio::time::sleep(pause).await;
                }
            }
            Ok::<_, anyhow::Error>((rows, latencies))
        }));
    }
    let (mut rows, mut latencies) = (0, Vec::new());
    for task in tasks {
        let (task_rows, task_latencies) = task.await??;
        rows += task_rows;
        latencies.extend(task_latencies);
    }
    latencies.sort_by(f64::total_cmp);
    Ok((rows, latencies))
}

/// Sustained rows/s (the load, then the flush of what it left buffered) and the requests'
/// sorted latencies.
async fn sustained(url: &str, options: &Options) -> Result<(f64, Vec<f64>)> {
    let client = common::client_builder().build()?;
    let started = Instant::now();
    let (rows, latencies) = load(url, options, options.seconds, None).await?;
    common::flush(&client, url).await?;
    Ok((rows as f64 / started.elapsed().as_secs_f64(), latencies))
}

async fn count(client: &reqwest::Client, url: &str, sql: &str) -> Result<Option<u64>> {
    let response = client
        .post(format!("{url}/api/v1/query"))
        .json(&json!({ "sql": sql }))
        .send()
        .await?;
    if !response.status().is_success() {
        return Ok(None);
    }
    let body: Value = response.json().await?;
    Ok(body["data"][0][0].as_u64())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Probes written to the writer; each timed until `reader` counts it.
async fn freshness(writer: &str, reader: &str, probes: usize) -> Result<Vec<f64>> {
    let client = common::client_builder().build()?;
    let mut latencies = Vec::with_capacity(probes);
    for id in 0..probes {
        let line = format!(
            "probe,source=bench id={id}i {}\n",
            1_768_471_200_000_000_000u64 + id as u64
        );
        let response = client
            .post(format!("{writer}/write?db=bench"))
            .body(line)
            .send()
            .await?;
        if response.status() != reqwest::StatusCode::NO_CONTENT {
            bail!("probe write failed: {}", response.text().await?);
        }
        let acked = Instant::now();
        let sql = format!("SELECT count(*) FROM bench.probe WHERE id = {id}");
        while count(&client, reader, &sql).await? != Some(1) {
            if acked.elapsed() > Duration::from_secs(30) {
                bail!("probe {id} not visible on the reader after 30 s");
            }
        }
        latencies.push(acked.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let slowest = (0..latencies.len())
        .max_by(|&a, &b| latencies[a].total_cmp(&latencies[b]))
        .context("no probes")?;
    println!(
        "slowest probe: #{slowest} of {probes}, {:.1} ms",
        latencies[slowest]
    );
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

/// Returns once every reader in `readers` has applied every entry the writer holds durably
/// and copied every file of the manifest.
async fn readers_caught_up(writer: &str, readers: &[&str]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let status = cluster_status(writer).await?;
        // The writer reports each reader's lag against its durable LSN.
        let durable = status["data"]["replication_readers"]
            .as_array()
            .and_then(|readers| readers.first())
            .and_then(|r| Some(r["sent_lsn"].as_u64()? + r["lag_entries"].as_u64()?))
            .context("the writer reports no replicating reader")?;
        let mut behind = Vec::new();
        for reader in readers {
            let status = replication_status(reader).await?;
            let applied = status["applied_lsn"].as_u64().unwrap_or(0);
            if applied < durable || status["files_missing"].as_u64() != Some(0) {
                behind.push(status);
            }
        }
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("readers behind the writer's LSN {durable} after 5 minutes: {behind:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A node's `GET /api/v1/cluster/status` answer.
async fn cluster_status(url: &str) -> Result<Value> {
    let client = common::client_builder().build()?;
    Ok(client
        .get(format!("{url}/api/v1/cluster/status"))
        .send()
        .await?
        .json()
        .await?)
}

async fn replication_status(url: &str) -> Result<Value> {
    Ok(cluster_status(url).await?["data"]["replication"].clone())
}

/// Section 5: a writer on shared storage (a one-node cluster on Garage), with and without
/// `cluster.shared_wal`.
async fn shared_wal(options: &Options) -> Result<()> {
    let garage = garage::garage_server();
    let mut medians = Vec::new();
    for shared_wal in ["false", "true"] {
        let prefix = format!("bench-{}-shared-wal-{shared_wal}", std::process::id());
        let mut env = garage::s3_env(&garage.s3_endpoint, &prefix);
        env.push(("ARC_CLUSTER_SHARED_STORAGE_MODE".into(), "true".into()));
        env.push(("ARC_CLUSTER_SHARED_WAL".into(), shared_wal.into()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (writer, _) = start_node_with("writer-01", "writer", None, &env).await?;
        let (rate, latencies) = sustained(&writer.url, options).await?;
        let p50 = percentile(&latencies, 0.5);
        println!(
            "shared storage, shared_wal = {shared_wal:<5}: {rate:>12.0} rows/s, request p50 {p50:.1} ms, p99 {:.1} ms",
            percentile(&latencies, 0.99)
        );
        medians.push((rate, p50));
    }
    let ((rate_off, p50_off), (rate_on, p50_on)) = (medians[0], medians[1]);
    println!(
        "shared_wal: request p50 {:+.1} ms, {:.2} of the rate without it",
        p50_on - p50_off,
        rate_on / rate_off
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let options = parse_options()?;
    println!(
        "replication benchmark: {} workers × {} rows per request, {} s per load",
        options.workers, options.batch, options.seconds
    );
    if options.only_shared_wal {
        return shared_wal(&options).await;
    }
    let (writer, seed) = start_node("writer-01", "writer", None).await?;
    let (alone, _) = sustained(&writer.url, &options).await?;
    println!("ingest, writer alone:            {alone:>12.0} rows/s");

    let (reader_1, _) = start_node("reader-01", "reader", Some(&seed)).await?;
    let (reader_2, _) = start_node("reader-02", "reader", Some(&seed)).await?;
    let (replicated, _) = sustained(&writer.url, &options).await?;
    println!(
        "ingest, writer + 2 readers:      {replicated:>12.0} rows/s ({:.2} of alone)",
        replicated / alone
    );

    // The readers are still applying and copying what that overload left; freshness is
    // measured once they hold everything, so the probes see the paced load alone.
    let backlog = Instant::now();
    readers_caught_up(&writer.url, &[&reader_1.url, &reader_2.url]).await?;
    println!(
        "readers caught up with the writer {:.1} s after that load ended",
        backlog.elapsed().as_secs_f64()
    );

    let paced = {
        let (url, seconds) = (writer.url.clone(), options.seconds * 3);
        let background = options.clone();
        tokio::spawn(async move { load(&url, &background, seconds, Some(background.rate)).await })
    };
    let latencies = freshness(&writer.url, &reader_1.url, options.probes).await?;
    let (paced_rows, _) = paced.await??;
    println!(
        "freshness under a paced load ({} rows acknowledged meanwhile): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} probes",
        paced_rows,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
        latencies.len()
    );
    let lag = replication_status(&reader_2.url).await?;
    println!("reader-02 replication: {lag}");

    let client = common::client_builder().build()?;
    common::flush(&client, &writer.url).await?;
    let started = Instant::now();
    let (reader_3, _) = start_node("reader-03", "reader", Some(&seed)).await?;
    let status = loop {
        let status = replication_status(&reader_3.url).await?;
        let done = status["catchup"]["completed_at"].as_i64().unwrap_or(0) != 0
            && status["files_missing"].as_u64() == Some(0);
        if done {
            break status;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("reader-03 did not catch up in 10 minutes: {status}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = started.elapsed().as_secs_f64();
    let files = status["pulled"].as_u64().unwrap_or(0);
    let bytes = status["bytes_pulled"].as_u64().unwrap_or(0);
    println!(
        "catch-up of a new reader (start included): {files} files, {:.1} MB in {elapsed:.2} s = {:.0} files/s, {:.1} MB/s",
        bytes as f64 / 1e6,
        files as f64 / elapsed,
        bytes as f64 / 1e6 / elapsed
    );
    drop((reader_1, reader_2, reader_3, writer));

    for mode in ["none", "one", "quorum"] {
        let ack = [("ARC_CLUSTER_REPLICATION_ACK", mode)];
        let (writer, seed) = start_node_with("writer-01", "writer", None, &ack).await?;
        let (reader_1, _) = start_node("reader-01", "reader", Some(&seed)).await?;
        let (reader_2, _) = start_node("reader-02", "reader", Some(&seed)).await?;
        // Writes wait for readers' streams to be open (or are refused under one and quorum).
        let started = Instant::now();
        loop {
            let status = cluster_status(&writer.url).await?;
            let readers = status["data"]["replication_readers"].as_array().cloned();
            let connected = readers
                .unwrap_or_default()
                .iter()
                .filter(|r| r["connected"] == true)
                .count();
            if connected == 2 {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("the readers did not connect: {status}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (rate, latencies) = sustained(&writer.url, &options).await?;
        println!(
            "replication_ack = {mode:<6}: {rate:>12.0} rows/s, request p50 {:.1} ms, p99 {:.1} ms",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99)
        );
        drop((reader_1, reader_2, writer));
    }
    shared_wal(&options).await
}
