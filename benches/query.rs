//! Query benchmark: loads a TSBS "devops cpu"-like data set into arcdb (hosts with five tags,
//! ten float fields, one point per host every 10 s), runs a query suite through the HTTP API,
//! runs the same SQL through DuckDB on the same Parquet files, and prints both with their ratio.
//!
//! ```text
//! cargo bench --bench query -- [--rows 50000000] [--hosts 1000] [--iterations 5]
//! ```
//! DuckDB comes from PyPI (`pip install duckdb`); `benches/duckdb_suite.py` runs it.

mod common;
#[path = "common/devops.rs"]
mod devops;

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use devops::{load, median, parse_options, suite, timed};

fn main() -> Result<()> {
    let options = parse_options(5)?;
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
        let suite = suite();

        let mut arcdb = Vec::new();
        for (name, sql, _) in &suite {
            let mut times = Vec::new();
            for _ in 0..options.iterations {
                times.push(timed(&client, &server.url, "/api/v1/query", sql).await?.0);
            }
            arcdb.push((*name, median(times)));
        }
        let limit_sql = &suite.last().expect("suite is not empty").1;
        let mut arrow_times = Vec::new();
        for _ in 0..options.iterations {
            arrow_times.push(
                timed(&client, &server.url, "/api/v1/query/arrow", limit_sql)
                    .await?
                    .0,
            );
        }
        let arrow = median(arrow_times);

        let queries: Vec<Value> = suite
            .iter()
            .map(|(name, sql, _)| json!({ "name": name, "sql": sql }))
            .collect();
        let glob = server.storage_root().join("bench/cpu/**/*.parquet");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/duckdb_suite.py");
        let output = Command::new("python3")
            .arg(script)
            .arg(glob.to_string_lossy().as_ref())
            .arg(options.iterations.to_string())
            .arg(serde_json::to_string(&queries)?)
            .output()
            .context("running python3 benches/duckdb_suite.py")?;
        if !output.status.success() {
            bail!(
                "DuckDB suite failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let duckdb: Value = serde_json::from_slice(&output.stdout)?;

        println!(
            "\n{:<30} {:>12} {:>12} {:>8}",
            "query (median)", "arcdb ms", "DuckDB ms", "ratio"
        );
        let mut aggregation_ratios = Vec::new();
        for ((name, seconds), (_, _, aggregation)) in arcdb.iter().zip(&suite) {
            let duck = duckdb[name].as_f64().context("DuckDB timing missing")?;
            let ratio = seconds / duck;
            if *aggregation {
                aggregation_ratios.push(ratio);
            }
            println!(
                "{name:<30} {:>12.1} {:>12.1} {ratio:>8.2}",
                seconds * 1000.0,
                duck * 1000.0
            );
        }
        println!(
            "median arcdb/DuckDB ratio over the aggregations: {:.2}",
            median(aggregation_ratios)
        );
        let json_seconds = arcdb.last().expect("suite is not empty").1;
        println!(
            "LIMIT 1000000 as JSON:  {:>12.0} rows/s",
            1_000_000.0 / json_seconds
        );
        println!(
            "LIMIT 1000000 as Arrow: {:>12.0} rows/s",
            1_000_000.0 / arrow
        );
        Ok(())
    })
}
