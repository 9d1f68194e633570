//! The TSBS "devops cpu"-like data set and query suite the query and compaction benchmarks share:
//! hosts with five tags and ten float fields, one point per host every 10 s.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;

/// Command-line options of the benchmarks over this data set.
pub struct Options {
    pub rows: u64,
    pub hosts: u64,
    pub iterations: usize,
}

/// Reads `--rows`, `--hosts` and `--iterations` (50M rows over 1000 hosts by default).
pub fn parse_options(default_iterations: usize) -> Result<Options> {
    let mut options = Options {
        rows: 50_000_000,
        hosts: 1000,
        iterations: default_iterations,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--rows" => options.rows = value()?.parse()?,
            "--hosts" => options.hosts = value()?.parse()?,
            "--iterations" => options.iterations = value()?.parse()?,
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(options)
}

/// 2026-01-01T00:00:00Z in µs.
const START_US: i64 = 1_767_225_600_000_000;
const INTERVAL_US: i64 = 10_000_000;
const HOUR_US: i64 = 3_600_000_000;
const FIELDS: [&str; 10] = [
    "usage_user",
    "usage_system",
    "usage_idle",
    "usage_nice",
    "usage_iowait",
    "usage_irq",
    "usage_softirq",
    "usage_steal",
    "usage_guest",
    "usage_guest_nice",
];
const REGIONS: [&str; 4] = ["us-east-1", "us-west-2", "eu-west-1", "ap-south-1"];

/// A tag's value for a host number.
type TagValue = fn(u64) -> String;

/// One MessagePack columnar request: `steps` consecutive 10-second points of every host.
fn batch(first_step: u64, steps: u64, hosts: u64) -> Result<Bytes> {
    use rmp::encode::{write_array_len, write_f64, write_i64, write_map_len, write_str};
    let rows = (steps * hosts) as u32;
    let mut out = Vec::with_capacity(rows as usize * 140);
    write_map_len(&mut out, 2)?;
    write_str(&mut out, "m")?;
    write_str(&mut out, "cpu")?;
    write_str(&mut out, "columns")?;
    write_map_len(&mut out, 6 + FIELDS.len() as u32)?;
    let points =
        || (first_step..first_step + steps).flat_map(move |s| (0..hosts).map(move |h| (s, h)));
    write_str(&mut out, "time")?;
    write_array_len(&mut out, rows)?;
    for (step, _) in points() {
        write_i64(&mut out, START_US + step as i64 * INTERVAL_US)?;
    }
    let tags: [(&str, TagValue); 5] = [
        ("hostname", |h| format!("host_{h}")),
        ("region", |h| REGIONS[(h % 4) as usize].to_string()),
        ("datacenter", |h| format!("dc_{}", h % 12)),
        ("rack", |h| format!("rack_{}", h % 100)),
        ("os", |h| {
            ["Ubuntu16.04LTS", "Ubuntu15.10", "Debian9"][(h % 3) as usize].to_string()
        }),
    ];
    for (name, value) in tags {
        write_str(&mut out, name)?;
        write_array_len(&mut out, rows)?;
        for (_, host) in points() {
            write_str(&mut out, &value(host))?;
        }
    }
    for (f, name) in FIELDS.iter().enumerate() {
        write_str(&mut out, name)?;
        write_array_len(&mut out, rows)?;
        for (step, host) in points() {
            // Deterministic, varied values in [0, 100).
            let x = (step.wrapping_mul(2654435761) ^ host.wrapping_mul(40503) ^ (f as u64 * 977))
                % 10_000;
            write_f64(&mut out, x as f64 / 100.0)?;
        }
    }
    Ok(Bytes::from(out))
}

/// Loads `rows` rows over `hosts` hosts into database `bench` and flushes.
pub async fn load(url: &str, rows: u64, hosts: u64) -> Result<()> {
    let client = crate::common::client_builder().build()?;
    let steps_total = rows / hosts;
    let steps_per_request = (20_000 / hosts).max(1);
    let requests: Vec<u64> = (0..steps_total)
        .step_by(steps_per_request as usize)
        .collect();
    let started = Instant::now();
    futures::stream::iter(requests)
        .map(|first| {
            let client = client.clone();
            let steps = steps_per_request.min(steps_total - first);
            async move {
                let body =
                    tokio::task::spawn_blocking(move || batch(first, steps, hosts)).await??;
                loop {
                    let response = client
                        .post(format!("{url}/api/v1/write/msgpack"))
                        .header("x-arc-database", "bench")
                        .body(body.clone())
                        .send()
                        .await?;
                    match response.status() {
                        reqwest::StatusCode::NO_CONTENT => return Ok(()),
                        // Flushing is behind: back off as a client should.
                        reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                            tokio::time::sleep(Duration::from_millis(200)).await
                        }
                        _ => bail!("load failed: {}", response.text().await?),
                    }
                }
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<Result<()>>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>>>()?;
    crate::common::flush(&client, url).await?;
    println!(
        "loaded {} rows ({} hosts, {} points each) in {:.1} s",
        steps_total * hosts,
        hosts,
        steps_total,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn ts(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The suite: (name, SQL over table `cpu`, aggregation?).
pub fn suite() -> Vec<(&'static str, String, bool)> {
    let from = START_US + HOUR_US;
    let window = format!(
        "time >= TIMESTAMP '{}' AND time < TIMESTAMP '{}'",
        ts(from),
        ts(from + 12 * HOUR_US)
    );
    vec![
        (
            "lastpoint per host",
            "SELECT c.hostname, c.time, c.usage_user FROM cpu c JOIN \
             (SELECT hostname, max(time) AS t FROM cpu GROUP BY hostname) l \
             ON c.hostname = l.hostname AND c.time = l.t ORDER BY c.hostname"
                .to_string(),
            true,
        ),
        (
            "max per host per hour, 12 h",
            format!(
                "SELECT hostname, date_trunc('hour', time) AS hour, max(usage_user) AS m \
                 FROM cpu WHERE {window} GROUP BY hostname, hour ORDER BY hostname, hour"
            ),
            true,
        ),
        (
            "high-cpu filter, 12 h",
            format!("SELECT count(*) FROM cpu WHERE usage_user > 90.0 AND {window}"),
            true,
        ),
        ("count", "SELECT count(*) FROM cpu".to_string(), true),
        (
            "group by tag",
            "SELECT region, avg(usage_user) AS u, avg(usage_system) AS s FROM cpu \
             GROUP BY region ORDER BY region"
                .to_string(),
            true,
        ),
        (
            "LIMIT 1000000",
            "SELECT * FROM cpu LIMIT 1000000".to_string(),
            false,
        ),
    ]
}

/// Runs a query through the HTTP API and reads the whole answer; returns (seconds, bytes).
pub async fn timed(
    client: &reqwest::Client,
    url: &str,
    path: &str,
    sql: &str,
) -> Result<(f64, usize)> {
    let started = Instant::now();
    let response = client
        .post(format!("{url}{path}"))
        .header("x-arc-database", "bench")
        .json(&json!({ "sql": sql }))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("{sql}: {}", response.text().await?);
    }
    // Read every byte but keep none: the client shares the two cores with the server.
    let mut body = response.bytes_stream();
    let mut received = 0;
    while let Some(chunk) = body.next().await {
        received += chunk?.len();
    }
    Ok((started.elapsed().as_secs_f64(), received))
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
