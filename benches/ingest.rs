//! Ingest benchmark: N workers post batches of B records to an arcdb server for a while, then
//! the program flushes everything and prints, per protocol and compression: the sustained rate
//! (records durable in Parquet per second: acknowledged records over the load plus the final
//! flush), the acknowledged rate, p50 and p99 request latency, the final flush, requests refused
//! with 503, and the server's peak resident memory. A run is labelled "unsustained" when its
//! final flush took over 1 s or the server's buffer grew through the second half of the load
//! (`arc_buffer_bytes_buffered`, sampled each second): its acknowledged rate only held because
//! rows piled up in memory.
//!
//! Records are shaped like Arc's benchmark: time, a `host` tag and three float fields.
//!
//! ```text
//! cargo bench --bench ingest -- [--workers 8] [--batch 5000] [--seconds 60]
//!     [--protocol msgpack,lp] [--compression none,gzip,zstd] [--hosts 1000]
//!     [--url http://127.0.0.1:8000] [--server-env KEY=VALUE ...]
//! ```
//! Without `--url` the program starts its own release-built `arcdb` in a temporary directory
//! (WAL on, `fdatasync`, local storage), once per protocol and compression, and stops it after.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;

struct Options {
    workers: usize,
    batch: usize,
    seconds: u64,
    protocols: Vec<String>,
    compressions: Vec<String>,
    hosts: usize,
    url: Option<String>,
    server_env: Vec<(String, String)>,
}

fn parse_options() -> Result<Options> {
    let mut options = Options {
        workers: 8,
        batch: 5000,
        seconds: 60,
        protocols: vec!["msgpack".into(), "lp".into()],
        compressions: vec!["none".into(), "gzip".into(), "zstd".into()],
        hosts: 1000,
        url: None,
        server_env: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--workers" => options.workers = value()?.parse()?,
            "--batch" => options.batch = value()?.parse()?,
            "--seconds" => options.seconds = value()?.parse()?,
            "--protocol" => options.protocols = value()?.split(',').map(String::from).collect(),
            "--compression" => {
                options.compressions = value()?.split(',').map(String::from).collect()
            }
            "--hosts" => options.hosts = value()?.parse()?,
            "--url" => options.url = Some(value()?),
            "--server-env" => {
                let pair = value()?;
                let (k, v) = pair
                    .split_once('=')
                    .context("--server-env takes KEY=VALUE")?;
                options.server_env.push((k.into(), v.into()));
            }
            // `cargo bench` passes this to every bench target.
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(options)
}

const BASE_US: i64 = 1_768_471_200_000_000;
const BODIES: usize = 32;

/// Pre-encoded request bodies, so the load generator spends its time sending.
fn bodies(protocol: &str, compression: &str, options: &Options) -> Result<Vec<Bytes>> {
    let mut out = Vec::with_capacity(BODIES);
    for b in 0..BODIES {
        let first = (b * options.batch) as i64;
        let times: Vec<i64> = (0..options.batch as i64)
            .map(|i| BASE_US + (first + i) * 1000)
            .collect();
        let host = |i: usize| format!("host_{}", (b * options.batch + i) % options.hosts);
        let field = |i: usize, k: usize| ((i * 31 + k * 7 + b) % 1000) as f64 / 10.0;
        let raw = match protocol {
            "msgpack" => {
                use rmpv::Value;
                let column =
                    |f: &dyn Fn(usize) -> Value| Value::Array((0..options.batch).map(f).collect());
                let payload = Value::Map(vec![
                    ("m".into(), "cpu".into()),
                    (
                        "columns".into(),
                        Value::Map(vec![
                            ("time".into(), column(&|i| times[i].into())),
                            ("host".into(), column(&|i| host(i).into())),
                            ("usage_user".into(), column(&|i| field(i, 1).into())),
                            ("usage_system".into(), column(&|i| field(i, 2).into())),
                            ("usage_idle".into(), column(&|i| field(i, 3).into())),
                        ]),
                    ),
                ]);
                let mut buf = Vec::new();
                rmpv::encode::write_value(&mut buf, &payload)?;
                buf
            }
            "lp" => {
                let mut buf = String::with_capacity(options.batch * 100);
                for (i, time) in times.iter().enumerate() {
                    use std::fmt::Write;
                    writeln!(
                        buf,
                        "cpu,host={} usage_user={},usage_system={},usage_idle={} {}",
                        host(i),
                        field(i, 1),
                        field(i, 2),
                        field(i, 3),
                        time * 1000
                    )?;
                }
                buf.into_bytes()
            }
            other => bail!("unknown protocol {other}"),
        };
        let body = match compression {
            "none" => raw,
            "gzip" => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&raw)?;
                e.finish()?
            }
            "zstd" => zstd::encode_all(&raw[..], 1)?,
            other => bail!("unknown compression {other}"),
        };
        out.push(Bytes::from(body));
    }
    Ok(out)
}

struct Outcome {
    records: u64,
    requests: u64,
    /// Answered 503 (the server's buffer limit); retried after `Retry-After`.
    refused: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

async fn drive(
    url: &str,
    path: &str,
    bodies: Arc<Vec<Bytes>>,
    options: &Options,
) -> Result<Outcome> {
    let client = common::client_builder()
        .pool_max_idle_per_host(options.workers)
        .build()?;
    let start = Instant::now();
    let until = start + Duration::from_secs(options.seconds);
    let mut tasks = Vec::new();
    for worker in 0..options.workers {
        let (client, bodies, target) =
            (client.clone(), Arc::clone(&bodies), format!("{url}{path}"));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut refused = 0u64;
            let mut next = worker;
            while Instant::now() < until {
                let body = bodies[next % bodies.len()].clone();
                next += 1;
                let sent = Instant::now();
                let response = client
                    .post(&target)
                    .header("x-arc-database", "bench")
                    .body(body)
                    .send()
                    .await?;
                match response.status() {
                    reqwest::StatusCode::NO_CONTENT => {
                        latencies.push(sent.elapsed().as_micros() as u64)
                    }
                    reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                        refused += 1;
                        let wait = response
                            .headers()
                            .get(reqwest::header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok()?.parse().ok())
                            .unwrap_or(1);
                        tokio::time::sleep(Duration::from_secs(wait)).await;
                    }
                    status => bail!("write failed: {status} {}", response.text().await?),
                }
            }
            Ok::<_, anyhow::Error>((latencies, refused))
        }));
    }
    let mut latencies_us = Vec::new();
    let mut refused = 0;
    for task in tasks {
        let (latencies, worker_refused) = task.await??;
        latencies_us.extend(latencies);
        refused += worker_refused;
    }
    let elapsed = start.elapsed();
    latencies_us.sort_unstable();
    let requests = latencies_us.len() as u64;
    Ok(Outcome {
        records: requests * options.batch as u64,
        requests,
        refused,
        elapsed,
        latencies_us,
    })
}

/// Samples the server's buffered bytes (`arc_buffer_bytes_buffered` from `/metrics`) once a
/// second until `stop` fires.
fn watch_buffer(
    url: &str,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<Vec<u64>>> {
    let url = format!("{url}/metrics");
    tokio::spawn(async move {
        let client = common::client_builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let mut samples = Vec::new();
        loop {
            let metrics = client
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?;
            let buffered = metrics
                .lines()
                .find_map(|line| line.strip_prefix("arc_buffer_bytes_buffered "))
                .and_then(|value| value.trim().parse::<f64>().ok())
                .context("no arc_buffer_bytes_buffered in /metrics")?;
            samples.push(buffered as u64);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|stopped| *stopped) => break,
            }
        }
        Ok(samples)
    })
}

/// The mean buffered bytes of the second and of the last quarter of the load, in MB, and
/// whether the buffer grew through the second half: the last quarter's mean over the second
/// quarter's by more than a fifth and by more than 16 MB (a nearly empty buffer moving by a few
/// MB is not growth).
fn buffer_growth(samples: &[u64]) -> Option<(f64, f64, bool)> {
    let quarter = samples.len() / 4;
    if quarter == 0 {
        return None;
    }
    let mean_mb = |part: &[u64]| part.iter().sum::<u64>() as f64 / part.len() as f64 / 1e6;
    let second = mean_mb(&samples[quarter..2 * quarter]);
    let last = mean_mb(&samples[samples.len() - quarter..]);
    Some((second, last, last > 1.2 * second && last - second > 16.0))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1000.0
}

fn main() -> Result<()> {
    let options = parse_options()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        println!(
            "arcdb ingest benchmark: {} workers, batches of {} records, {} s per run, {} hosts",
            options.workers, options.batch, options.seconds, options.hosts
        );
        for protocol in &options.protocols {
            for compression in &options.compressions {
                let bodies = Arc::new(bodies(protocol, compression, &options)?);
                let server = match &options.url {
                    Some(_) => None,
                    None => Some(common::LocalServer::start(&options.server_env).await?),
                };
                let url = options.url.clone().unwrap_or_else(|| server.as_ref().unwrap().url.clone());
                let path = if protocol == "msgpack" { "/api/v1/write/msgpack" } else { "/api/v1/write/line-protocol" };
                let (stop_watching, watching) = tokio::sync::watch::channel(false);
                let buffer = watch_buffer(&url, watching);
                let outcome = drive(&url, path, bodies, &options).await?;
                let _ = stop_watching.send(true);
                let acknowledged = outcome.records as f64 / outcome.elapsed.as_secs_f64();
                // What is still buffered when the load stops shows whether flushing kept up.
                let drain = Instant::now();
                common::flush(&common::client_builder().build()?, &url).await?;
                let final_flush = drain.elapsed();
                let sustained =
                    outcome.records as f64 / (outcome.elapsed + final_flush).as_secs_f64();
                let growth = buffer_growth(&buffer.await??);
                let peak = server
                    .as_ref()
                    .and_then(|s| common::memory_kib(s.pid(), "VmHWM"))
                    .map_or("n/a".to_owned(), |kib| format!("{:.2} GiB", kib as f64 / (1 << 20) as f64));
                let grew = growth.is_some_and(|(_, _, grew)| grew);
                let label = if final_flush > Duration::from_secs(1) || grew {
                    "  UNSUSTAINED"
                } else {
                    ""
                };
                let buffered = growth.map_or("n/a".to_owned(), |(second, last, _)| {
                    format!("{second:.0} -> {last:.0} MB")
                });
                println!(
                    "{protocol:>8} {compression:>5}: sustained {sustained:>12.0} records/s  acknowledged {acknowledged:>12.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  final flush {} ms  peak RSS {peak}  buffered {buffered}  ({} requests, {} refused, {} records, {:.1} s){label}",
                    percentile(&outcome.latencies_us, 0.50),
                    percentile(&outcome.latencies_us, 0.99),
                    final_flush.as_millis(),
                    outcome.requests,
                    outcome.refused,
                    outcome.records,
                    outcome.elapsed.as_secs_f64(),
                );
                drop(server);
            }
        }
        Ok(())
    })
}
