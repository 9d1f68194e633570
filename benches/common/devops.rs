//! The TSBS "devops cpu"-like data set and query suite the query and compaction benchmarks share:
//! hosts with five tags and ten float fields, one point per host every 10 s from 2026-01-01, and
//! TSBS's 15 devops query types over it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{Value, json};

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

/// One query of the suite.
pub struct Query {
    /// The TSBS query type, e.g. `single-groupby-5-8-1`.
    pub name: String,
    pub sql: String,
}

/// Seed of the query parameters, so that every run asks the same questions.
const SEED: u64 = 15;

/// The 15 TSBS "devops" (cpu-only) query types, written as a user would write them, over the data
/// `load(url, rows, hosts)` leaves. As in TSBS, hosts are drawn without replacement and every time
/// window is a random one of the type's width inside the loaded time range; unlike TSBS, window
/// bounds are whole seconds, hosts are picked with `=` or `IN` rather than a chain of `OR`s, and
/// every query has a total `ORDER BY` (high-cpu adds `ORDER BY time, hostname`), so answers
/// compare row by row.
///
/// `lastpoint` is the portable greatest-row-per-group form, a join on each host's `max(time)`
/// (TSBS's TimescaleDB query uses `DISTINCT ON` instead).
pub fn suite(rows: u64, hosts: u64) -> Result<Vec<Query>> {
    const WIDEST_WINDOW_HOURS: i64 = 12;
    if hosts < 8 {
        bail!("the queries pick up to 8 hosts; --hosts is {hosts}");
    }
    let end_us = START_US + (rows / hosts) as i64 * INTERVAL_US;
    if end_us - START_US <= WIDEST_WINDOW_HOURS * HOUR_US {
        bail!(
            "the data set spans {:.1} h, but queries take {WIDEST_WINDOW_HOURS}-hour windows of it: \
             raise --rows or lower --hosts (rows / hosts × 10 s must exceed {WIDEST_WINDOW_HOURS} h)",
            (end_us - START_US) as f64 / HOUR_US as f64
        );
    }
    let mut draw = Draw {
        rng: StdRng::seed_from_u64(SEED),
        hosts,
        end_us,
    };
    let mut suite = Vec::new();
    // Max of the first `metrics` fields per minute, over `host_count` hosts together.
    for (metrics, host_count, hours) in [
        (1, 1, 1),
        (1, 1, 12),
        (1, 8, 1),
        (5, 1, 1),
        (5, 1, 12),
        (5, 8, 1),
    ] {
        let hosts = draw.hosts(host_count);
        let window = draw.window(hours);
        suite.push(Query {
            name: format!("single-groupby-{metrics}-{host_count}-{hours}"),
            sql: format!(
                "SELECT time_bucket(INTERVAL '1 minute', time) AS minute, {} FROM cpu \
                 WHERE {hosts} AND {window} GROUP BY minute ORDER BY minute",
                aggregates("max", metrics)
            ),
        });
    }
    // Max of every field per hour over 8 hours.
    for host_count in [1, 8] {
        let hosts = draw.hosts(host_count);
        let window = draw.window(8);
        suite.push(Query {
            name: format!("cpu-max-all-{host_count}"),
            sql: format!(
                "SELECT time_bucket(INTERVAL '1 hour', time) AS hour, {} FROM cpu \
                 WHERE {hosts} AND {window} GROUP BY hour ORDER BY hour",
                aggregates("max", FIELDS.len())
            ),
        });
    }
    // Mean of the first `metrics` fields per host per hour over 12 hours, every host.
    for (label, metrics) in [("1", 1), ("5", 5), ("all", FIELDS.len())] {
        let window = draw.window(12);
        suite.push(Query {
            name: format!("double-groupby-{label}"),
            sql: format!(
                "SELECT time_bucket(INTERVAL '1 hour', time) AS hour, hostname, {} FROM cpu \
                 WHERE {window} GROUP BY hour, hostname ORDER BY hour, hostname",
                aggregates("avg", metrics)
            ),
        });
    }
    // Whole rows above a usage threshold over 12 hours, of every host or of one.
    for (label, host_count) in [("all", None), ("1", Some(1))] {
        let hosts = host_count
            .map(|count| format!(" AND {}", draw.hosts(count)))
            .unwrap_or_default();
        let window = draw.window(12);
        suite.push(Query {
            name: format!("high-cpu-{label}"),
            sql: format!(
                "SELECT * FROM cpu WHERE usage_user > 90.0 AND {window}{hosts} \
                 ORDER BY time, hostname"
            ),
        });
    }
    suite.push(Query {
        name: "lastpoint".to_string(),
        sql: "SELECT c.* FROM cpu c JOIN \
              (SELECT hostname, max(time) AS last_time FROM cpu GROUP BY hostname) l \
              ON c.hostname = l.hostname AND c.time = l.last_time ORDER BY c.hostname"
            .to_string(),
    });
    // The last five minutes before the end of a random hour, over every host.
    let end = draw.window_end(1);
    suite.push(Query {
        name: "groupby-orderby-limit".to_string(),
        sql: format!(
            "SELECT time_bucket(INTERVAL '1 minute', time) AS minute, \
             max(usage_user) AS max_usage_user FROM cpu WHERE time < '{end}' \
             GROUP BY minute ORDER BY minute DESC LIMIT 5"
        ),
    });
    Ok(suite)
}

/// `agg(field) AS agg_field, …` over the first `count` fields, TSBS's column names.
fn aggregates(agg: &str, count: usize) -> String {
    FIELDS[..count]
        .iter()
        .map(|field| format!("{agg}({field}) AS {agg}_{field}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Draws the random parameters of the suite's queries.
struct Draw {
    rng: StdRng,
    hosts: u64,
    /// The end of the loaded time range (exclusive), µs.
    end_us: i64,
}

impl Draw {
    /// A filter on `count` distinct random hosts.
    fn hosts(&mut self, count: usize) -> String {
        let names: Vec<String> =
            rand::seq::index::sample(&mut self.rng, self.hosts as usize, count)
                .into_iter()
                .map(|host| format!("'host_{host}'"))
                .collect();
        match names.as_slice() {
            [name] => format!("hostname = {name}"),
            _ => format!("hostname IN ({})", names.join(", ")),
        }
    }

    /// Start of a random window `hours` wide inside the loaded time range, µs.
    fn window_start(&mut self, hours: i64) -> i64 {
        let latest_start_s = (self.end_us - hours * HOUR_US - START_US) / 1_000_000;
        START_US + self.rng.random_range(0..latest_start_s) * 1_000_000
    }

    /// `time >= '…' AND time < '…'` over a random window `hours` wide.
    fn window(&mut self, hours: i64) -> String {
        let start = self.window_start(hours);
        format!(
            "time >= '{}' AND time < '{}'",
            rfc3339(start),
            rfc3339(start + hours * HOUR_US)
        )
    }

    /// The end of a random window `hours` wide.
    fn window_end(&mut self, hours: i64) -> String {
        rfc3339(self.window_start(hours) + hours * HOUR_US)
    }
}

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .expect("a time of the data set")
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Sends `sql` to the query endpoint `path` for database `bench`; fails on an error status.
pub async fn post_query(
    client: &reqwest::Client,
    url: &str,
    path: &str,
    sql: &str,
) -> Result<reqwest::Response> {
    let response = client
        .post(format!("{url}{path}"))
        .header("x-arc-database", "bench")
        .json(&json!({ "sql": sql }))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("{sql}: {}", response.text().await?);
    }
    Ok(response)
}

/// Runs a query through the HTTP API and reads the whole answer; returns (seconds, bytes).
pub async fn timed(
    client: &reqwest::Client,
    url: &str,
    path: &str,
    sql: &str,
) -> Result<(f64, usize)> {
    let started = Instant::now();
    let response = post_query(client, url, path, sql).await?;
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

/// A query's answer: what `POST /api/v1/query` returns, and what `duckdb_suite.py` writes.
#[derive(Deserialize)]
pub struct Answer {
    pub columns: Vec<String>,
    pub data: Vec<Vec<Value>>,
}

/// arcdb's answer to `sql`, parsed (untimed).
pub async fn arcdb_answer(client: &reqwest::Client, url: &str, sql: &str) -> Result<Answer> {
    let response = post_query(client, url, "/api/v1/query", sql).await?;
    Ok(response.json().await?)
}

/// Where arcdb's answer first departs from DuckDB's, if it does. Rows compare in order: every
/// query of the suite has a total `ORDER BY`.
pub fn first_difference(arcdb: &Answer, duckdb: &Answer) -> Option<String> {
    if arcdb.columns != duckdb.columns {
        return Some(format!(
            "columns differ: arcdb {:?}, DuckDB {:?}",
            arcdb.columns, duckdb.columns
        ));
    }
    let row = |answer: &Answer, i: usize| {
        answer.data.get(i).map_or("no row".to_string(), |cells| {
            Value::from(cells.clone()).to_string()
        })
    };
    let rows = arcdb.data.len().max(duckdb.data.len());
    (0..rows)
        .find(|&i| match (arcdb.data.get(i), duckdb.data.get(i)) {
            (Some(a), Some(d)) => {
                a.len() != d.len() || a.iter().zip(d).any(|(a, d)| !same_value(a, d))
            }
            _ => true,
        })
        .map(|i| {
            format!(
                "row {i} of {} (arcdb) / {} (DuckDB) differs:\n  arcdb  {}\n  DuckDB {}",
                arcdb.data.len(),
                duckdb.data.len(),
                row(arcdb, i),
                row(duckdb, i)
            )
        })
}

/// Numbers equal within 1e-9 relative (engines sum in different orders); strings that are both
/// RFC 3339 times compare as instants, since the engines spell UTC differently.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (
                a.as_f64().unwrap_or(f64::NAN),
                b.as_f64().unwrap_or(f64::NAN),
            );
            a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
        }
        (Value::String(a), Value::String(b)) => {
            a == b
                || matches!(
                    (
                        chrono::DateTime::parse_from_rfc3339(a),
                        chrono::DateTime::parse_from_rfc3339(b),
                    ),
                    (Ok(a), Ok(b)) if a == b
                )
        }
        _ => a == b,
    }
}

/// Runs the suite in DuckDB over `parquet` (a glob, or `@` and a file listing the files); returns
/// each query's median seconds, by name, and leaves each answer in `answers/<name>.json`.
pub fn run_duckdb(
    parquet: &std::ffi::OsStr,
    iterations: usize,
    suite: &[Query],
    answers: &Path,
) -> Result<Value> {
    let queries: Vec<Value> = suite
        .iter()
        .map(|query| json!({ "name": query.name, "sql": query.sql }))
        .collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/duckdb_suite.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(parquet)
        .arg(iterations.to_string())
        .arg(serde_json::to_string(&queries)?)
        .arg(answers)
        .output()
        .context("running python3 benches/duckdb_suite.py")?;
    if !output.status.success() {
        bail!(
            "DuckDB suite failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// One run of the suite on arcdb and DuckDB over the same files.
pub struct Comparison {
    /// Per query: arcdb's median, DuckDB's median and arcdb's first (untimed-for-the-median)
    /// run, in seconds.
    pub seconds: Vec<(f64, f64, f64)>,
    /// Queries whose answers differ, and where.
    pub differences: Vec<(String, String)>,
}

/// Runs the suite through DuckDB over `parquet` (see [`run_duckdb`]), then through arcdb: each
/// query once for its answer (compared with DuckDB's), then `iterations` timed runs.
pub async fn compare_with_duckdb(
    client: &reqwest::Client,
    url: &str,
    suite: &[Query],
    iterations: usize,
    parquet: &std::ffi::OsStr,
) -> Result<Comparison> {
    let answers = tempfile::tempdir()?;
    let duckdb_seconds = run_duckdb(parquet, iterations, suite, answers.path())?;
    let mut seconds = Vec::new();
    let mut differences = Vec::new();
    for query in suite {
        // In a block so that both answers, hundreds of MB at full scale, are freed before timing.
        let (difference, first) = {
            let started = Instant::now();
            let arcdb = arcdb_answer(client, url, &query.sql).await?;
            let first = started.elapsed().as_secs_f64();
            let file = answers.path().join(format!("{}.json", query.name));
            let duckdb: Answer = serde_json::from_slice(
                &std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?,
            )?;
            (first_difference(&arcdb, &duckdb), first)
        };
        if let Some(difference) = difference {
            differences.push((query.name.clone(), difference));
        }
        let mut times = Vec::new();
        for _ in 0..iterations {
            times.push(timed(client, url, "/api/v1/query", &query.sql).await?.0);
        }
        let duckdb = duckdb_seconds[&query.name]
            .as_f64()
            .context("DuckDB timing missing")?;
        seconds.push((median(times), duckdb, first));
    }
    Ok(Comparison {
        seconds,
        differences,
    })
}

/// Prints each query's medians and ratio, then the median and worst ratio. The first run pays
/// for what later runs find cached (for arcdb, the latest-row summaries `lastpoint` reads); it
/// is printed, not counted in the ratio.
pub fn print_comparison(suite: &[Query], comparison: &Comparison) {
    println!(
        "\n{:<24} {:>12} {:>12} {:>12} {:>8}",
        "query (median)", "arcdb ms", "DuckDB ms", "arcdb 1st ms", "ratio"
    );
    let mut ratios = Vec::new();
    for (query, (arcdb, duckdb, first)) in suite.iter().zip(&comparison.seconds) {
        let ratio = arcdb / duckdb;
        ratios.push((ratio, query.name.as_str()));
        println!(
            "{:<24} {:>12.1} {:>12.1} {:>12.1} {ratio:>8.2}",
            query.name,
            arcdb * 1000.0,
            duckdb * 1000.0,
            first * 1000.0
        );
    }
    let (worst, worst_name) = ratios
        .iter()
        .copied()
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .expect("the suite is not empty");
    println!(
        "arcdb/DuckDB ratio over the {} query types: median {:.2}, worst {worst:.2} ({worst_name})",
        ratios.len(),
        median(ratios.iter().map(|(ratio, _)| *ratio).collect()),
    );
}

/// Prints every difference and fails if there is one.
pub fn check_answers(suite: &[Query], differences: &[(String, String)]) -> Result<()> {
    if !differences.is_empty() {
        for (name, difference) in differences {
            let sql = suite
                .iter()
                .find(|q| &q.name == name)
                .map_or("", |q| &q.sql);
            println!("\n{name}: {difference}\n  SQL: {sql}");
        }
        let names: Vec<&str> = differences.iter().map(|(name, _)| name.as_str()).collect();
        bail!(
            "arcdb's answer differs from DuckDB's for {}",
            names.join(", ")
        );
    }
    println!(
        "correctness: arcdb's answers equal DuckDB's for all {} query types",
        suite.len()
    );
    Ok(())
}
