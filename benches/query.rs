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

use std::time::Duration;

use anyhow::Result;

use devops::{
    check_answers, compare_with_duckdb, load, median, parse_options, print_comparison, suite, timed,
};

/// Row throughput is measured on this query; it is not one of the TSBS types.
const THROUGHPUT_SQL: &str = "SELECT * FROM cpu LIMIT 1000000";

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

        let comparison = compare_with_duckdb(
            &client,
            &server.url,
            &suite,
            options.iterations,
            server
                .storage_root()
                .join("bench/cpu/**/*.parquet")
                .as_os_str(),
        )
        .await?;
        let mut throughput = Vec::new();
        for path in ["/api/v1/query", "/api/v1/query/arrow"] {
            let mut times = Vec::new();
            for _ in 0..options.iterations {
                times.push(timed(&client, &server.url, path, THROUGHPUT_SQL).await?.0);
            }
            throughput.push(median(times));
        }
        print_comparison(&suite, &comparison);
        let rows = (options.rows / options.hosts * options.hosts).min(1_000_000) as f64;
        println!(
            "{THROUGHPUT_SQL} as JSON:  {:>12.0} rows/s",
            rows / throughput[0]
        );
        println!(
            "{THROUGHPUT_SQL} as Arrow: {:>12.0} rows/s",
            rows / throughput[1]
        );

        check_answers(&suite, &comparison.differences)
    })
}
