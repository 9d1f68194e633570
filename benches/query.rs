//! Query benchmark: loads a TSBS "devops cpu"-like data set into arcdb (hosts with five tags,
//! ten float fields, one point per host every 10 s), runs TSBS's 15 devops query types through
//! the HTTP API, runs the same SQL through DuckDB on the same Parquet files, and prints both with
//! their ratio. Then it checks that arcdb's answer to every query is DuckDB's, and fails if not.
//!
//! ```text
//! cargo bench --bench query -- [--rows 50000000] [--hosts 1000] [--iterations 5]
//! ```
//! The data must span more than 12 hours (rows / hosts × 10 s). DuckDB comes from PyPI
//! (`pip install duckdb pyarrow`); `benches/duckdb_suite.py` runs it.

mod common;
#[path = "common/devops.rs"]
mod devops;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use devops::{Query, load, median, parse_options, post_query, suite, timed};

/// Row throughput is measured on this query; it is not one of the TSBS types.
const THROUGHPUT_SQL: &str = "SELECT * FROM cpu LIMIT 1000000";

/// A query's answer: what `POST /api/v1/query` returns, and what `duckdb_suite.py` writes.
#[derive(Deserialize)]
struct Answer {
    columns: Vec<String>,
    data: Vec<Vec<Value>>,
}

/// arcdb's answer to `sql`, parsed (untimed).
async fn arcdb_answer(client: &reqwest::Client, url: &str, sql: &str) -> Result<Answer> {
    let response = post_query(client, url, "/api/v1/query", sql).await?;
    Ok(response.json().await?)
}

/// Where arcdb's answer first departs from DuckDB's, if it does. Rows compare in order: every
/// query of the suite has a total `ORDER BY`.
fn first_difference(arcdb: &Answer, duckdb: &Answer) -> Option<String> {
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

/// Runs the suite in DuckDB; returns each query's median seconds, by name, and leaves each answer
/// in `answers/<name>.json`.
fn run_duckdb(
    parquet_glob: &Path,
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
        .arg(parquet_glob)
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

fn main() -> Result<()> {
    let options = parse_options(5)?;
    // Before loading: the data set may be too short for the queries' windows.
    let suite = suite(options.rows, options.hosts)?;
    for query in &suite {
        println!("{}: {}", query.name, query.sql);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let env = vec![(
            "ARC_INGEST_MAX_BUFFER_SIZE".to_string(),
            "2000000".to_string(),
        )];
        let server = common::LocalServer::start(&env).await?;
        load(&server.url, options.rows, options.hosts).await?;
        let client = common::client_builder()
            .timeout(Duration::from_secs(600))
            .build()?;

        let answers = tempfile::tempdir()?;
        let duckdb_seconds = run_duckdb(
            &server.storage_root().join("bench/cpu/**/*.parquet"),
            options.iterations,
            &suite,
            answers.path(),
        )?;

        // Each query once untimed, for its answer (as DuckDB's first run), then timed.
        let mut arcdb_seconds = Vec::new();
        let mut first_seconds = Vec::new();
        let mut differences = Vec::new();
        for query in &suite {
            // In a block so that both answers, hundreds of MB at full scale, are freed before timing.
            let difference = {
                let started = std::time::Instant::now();
                let arcdb = arcdb_answer(&client, &server.url, &query.sql).await?;
                first_seconds.push(started.elapsed().as_secs_f64());
                let file = answers.path().join(format!("{}.json", query.name));
                let duckdb: Answer = serde_json::from_slice(
                    &std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?,
                )?;
                first_difference(&arcdb, &duckdb)
            };
            if let Some(difference) = difference {
                differences.push((query, difference));
            }
            let mut times = Vec::new();
            for _ in 0..options.iterations {
                times.push(timed(&client, &server.url, "/api/v1/query", &query.sql).await?.0);
            }
            arcdb_seconds.push(median(times));
        }
        let mut throughput = Vec::new();
        for path in ["/api/v1/query", "/api/v1/query/arrow"] {
            let mut times = Vec::new();
            for _ in 0..options.iterations {
                times.push(timed(&client, &server.url, path, THROUGHPUT_SQL).await?.0);
            }
            throughput.push(median(times));
        }

        // The first run pays for what later runs find cached (for arcdb, the latest-row
        // summaries `lastpoint` reads); it is printed, not counted in the ratio.
        println!(
            "\n{:<24} {:>12} {:>12} {:>12} {:>8}",
            "query (median)", "arcdb ms", "DuckDB ms", "arcdb 1st ms", "ratio"
        );
        let mut ratios = Vec::new();
        for ((query, arcdb), first) in suite.iter().zip(&arcdb_seconds).zip(&first_seconds) {
            let duckdb = duckdb_seconds[&query.name]
                .as_f64()
                .context("DuckDB timing missing")?;
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
        let rows = (options.rows / options.hosts * options.hosts).min(1_000_000) as f64;
        println!(
            "{THROUGHPUT_SQL} as JSON:  {:>12.0} rows/s",
            rows / throughput[0]
        );
        println!(
            "{THROUGHPUT_SQL} as Arrow: {:>12.0} rows/s",
            rows / throughput[1]
        );

        if !differences.is_empty() {
            for (query, difference) in &differences {
                println!("\n{}: {difference}\n  SQL: {}", query.name, query.sql);
            }
            let names: Vec<&str> = differences.iter().map(|(q, _)| q.name.as_str()).collect();
            bail!("arcdb's answer differs from DuckDB's for {}", names.join(", "));
        }
        println!(
            "correctness: arcdb's answers equal DuckDB's for all {} query types",
            suite.len()
        );
        Ok(())
    })
}
