//! Ingest benchmark: N workers post batches of B records to an arcdb server and the program
//! prints records/s with p50 and p99 request latency, per protocol and compression.
//!
//! Records are shaped like Arc's benchmark: time, a `host` tag and three float fields.
//!
//! ```text
//! cargo bench --bench ingest -- [--workers 8] [--batch 5000] [--seconds 10]
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
        seconds: 10,
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
                if response.status() != reqwest::StatusCode::NO_CONTENT {
                    bail!(
                        "write failed: {} {}",
                        response.status(),
                        response.text().await?
                    );
                }
                latencies.push(sent.elapsed().as_micros() as u64);
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies_us = Vec::new();
    for task in tasks {
        latencies_us.extend(task.await??);
    }
    let elapsed = start.elapsed();
    latencies_us.sort_unstable();
    let requests = latencies_us.len() as u64;
    Ok(Outcome {
        records: requests * options.batch as u64,
        requests,
        elapsed,
        latencies_us,
    })
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
                let outcome = drive(&url, path, bodies, &options).await?;
                let rate = outcome.records as f64 / outcome.elapsed.as_secs_f64();
                // What is still buffered when the load stops shows whether flushing kept up.
                let drain = Instant::now();
                common::flush(&common::client_builder().build()?, &url).await?;
                println!(
                    "{protocol:>8} {compression:>5}: {rate:>12.0} records/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} requests, {} records, {:.1} s; final flush {} ms)",
                    percentile(&outcome.latencies_us, 0.50),
                    percentile(&outcome.latencies_us, 0.99),
                    outcome.requests,
                    outcome.records,
                    outcome.elapsed.as_secs_f64(),
                    drain.elapsed().as_millis(),
                );
                drop(server);
            }
        }
        Ok(())
    })
}
