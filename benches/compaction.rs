//! Compaction benchmark: loads the query benchmark's data set with Arc's default buffer size
//! (so ingest leaves many small files), runs the query suite (TSBS's devops query types),
//! compacts the hourly tier, runs the suite again, compacts the daily tier and runs it a third
//! time. At each stage the suite also runs through DuckDB over the same (live) files, and every
//! answer is compared with DuckDB's. Prints compaction throughput (input MB/s and rows/s) and
//! each stage's medians and ratios; fails if an answer differs.
//!
//! ```text
//! cargo bench --bench compaction -- [--rows 50000000] [--hosts 1000] [--iterations 3]
//! ```

mod common;
#[path = "common/devops.rs"]
mod devops;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use devops::{
    Comparison, Query, check_answers, compare_with_duckdb, load, parse_options, print_comparison,
    suite,
};

async fn get(client: &reqwest::Client, url: &str) -> Result<Value> {
    let response = client.get(url).send().await?;
    if !response.status().is_success() {
        bail!("{url}: {}", response.text().await?);
    }
    Ok(response.json().await?)
}

/// Files of the data set, from the manifest.
async fn file_count(client: &reqwest::Client, url: &str) -> Result<u64> {
    let listed = get(client, &format!("{url}/api/v1/measurements?database=bench")).await?;
    listed["measurements"][0]["file_count"]
        .as_u64()
        .context("file_count missing")
}

/// The data set's live files (the manifest's, not the replaced ones awaiting deletion), one
/// absolute path per line in a file for `duckdb_suite.py`.
async fn live_files(
    client: &reqwest::Client,
    url: &str,
    root: &std::path::Path,
) -> Result<tempfile::NamedTempFile> {
    let mut paths = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = get(
            client,
            &format!("{url}/api/v1/cluster/files?database=bench&limit=10000&cursor={cursor}"),
        )
        .await?;
        for file in page["files"].as_array().context("files missing")? {
            let path = file["path"].as_str().context("path missing")?;
            paths.push(root.join(path).display().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    let mut listing = tempfile::NamedTempFile::new()?;
    std::io::Write::write_all(&mut listing, paths.join("\n").as_bytes())?;
    Ok(listing)
}

/// The suite on arcdb and DuckDB over the current files.
async fn run_stage(
    client: &reqwest::Client,
    server: &common::LocalServer,
    suite: &[Query],
    iterations: usize,
) -> Result<Comparison> {
    let listing = live_files(client, &server.url, &server.storage_root()).await?;
    let mut source = std::ffi::OsString::from("@");
    source.push(listing.path());
    compare_with_duckdb(client, &server.url, suite, iterations, &source).await
}

struct TierRun {
    seconds: f64,
    bytes_in: u64,
    rows_in: u64,
    jobs: u64,
}

/// Triggers one tier and waits for the cycle to end; the figures come from `/stats` deltas.
async fn compact(client: &reqwest::Client, url: &str, tier: &str) -> Result<TierRun> {
    let stats = |v: &Value, key: &str| v["stats"][key].as_u64().unwrap_or(0);
    let before = get(client, &format!("{url}/api/v1/compaction/stats")).await?;
    let started = Instant::now();
    let response = client
        .post(format!("{url}/api/v1/compaction/trigger?tier={tier}"))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("trigger {tier}: {}", response.text().await?);
    }
    loop {
        let status = get(client, &format!("{url}/api/v1/compaction/status")).await?;
        if status["manager"]["cycle"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = get(client, &format!("{url}/api/v1/compaction/stats")).await?;
    if stats(&after, "total_failed") != stats(&before, "total_failed") {
        bail!("a {tier} job failed: see the history");
    }
    Ok(TierRun {
        seconds,
        bytes_in: stats(&after, "bytes_before") - stats(&before, "bytes_before"),
        rows_in: stats(&after, "rows_before") - stats(&before, "rows_before"),
        jobs: stats(&after, "total_completed") - stats(&before, "total_completed"),
    })
}

fn main() -> Result<()> {
    let options = parse_options(3)?;
    let suite = suite(options.rows, options.hosts)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Arc's defaults for buffering and compaction, except that any finished partition
        // qualifies (the data set is in the past) and the schedules never fire by themselves.
        let env: Vec<(String, String)> = [
            ("ARC_INGEST_MAX_BUFFER_SIZE", "50000"),
            ("ARC_COMPACTION_HOURLY_MIN_FILES", "2"),
            ("ARC_COMPACTION_DAILY_MIN_FILES", "2"),
            ("ARC_COMPACTION_HOURLY_SCHEDULE", "0 0 1 1 *"),
            ("ARC_COMPACTION_DAILY_SCHEDULE", "0 0 1 1 *"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let server = common::LocalServer::start(&env).await?;
        load(&server.url, options.rows, options.hosts).await?;
        let client = common::client_builder()
            .timeout(Duration::from_secs(600))
            .build()?;

        let mut stages = vec![(
            "after ingest".to_string(),
            file_count(&client, &server.url).await?,
            run_stage(&client, &server, &suite, options.iterations).await?,
        )];
        for tier in ["hourly", "daily"] {
            let run = compact(&client, &server.url, tier).await?;
            println!(
                "{tier}: {} jobs, {:.1} MB and {} rows in {:.1} s: {:.1} MB/s, {:.0} rows/s",
                run.jobs,
                run.bytes_in as f64 / 1e6,
                run.rows_in,
                run.seconds,
                run.bytes_in as f64 / 1e6 / run.seconds,
                run.rows_in as f64 / run.seconds
            );
            stages.push((
                format!("after {tier}"),
                file_count(&client, &server.url).await?,
                run_stage(&client, &server, &suite, options.iterations).await?,
            ));
        }

        let mut differences = Vec::new();
        for (name, files, comparison) in &stages {
            println!("\n{name} ({files} files):");
            print_comparison(&suite, comparison);
            differences.extend(
                comparison
                    .differences
                    .iter()
                    .map(|(query, difference)| (query.clone(), format!("{name}: {difference}"))),
            );
        }
        check_answers(&suite, &differences)
    })
}
