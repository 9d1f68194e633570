//! The write path's CPU stages timed one at a time on one thread, on the body of
//! `benches/lp_vs_victoriametrics.sh` (5,000 lines `cpu,host=host_N f0=…,f1=…,f2=… <ns>`, 1,000
//! hosts): decoding the line protocol, and a flush's sort and Parquet encoding of a chunk of
//! ten such requests (the default `ingest.max_buffer_size` of 50,000 rows, every request over
//! the same times, as when `wrk` posts one body over and over). Prints ns per row for each.
//! Under that load the server's flushes fall behind the requests and take far larger chunks
//! (hundreds of requests); `--requests N` times the flush of such a chunk.
//!
//! ```text
//! cargo bench --bench write_path -- [--seconds 5] [--tags 1] [--fields 3] [--runs N] [--requests 10]
//! ```
//!
//! This machine's timings move by ±10 % from run to run; `--runs N` runs each stage exactly N
//! times instead of for `--seconds`, so `perf stat -e instructions` can compare two builds.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arrow::record_batch::RecordBatch;

use arcdb::config::IngestConfig;
use arcdb::flush::parquet::{FlushTarget, ParquetOptions, RowRef, encode_hour};
use arcdb::ingest::line_protocol::{Precision, parse};

const LINES: usize = 5_000;
const BASE_NS: i64 = 1_768_471_200_000_000_000;

/// The same body as `benches/lp_vs_victoriametrics.sh` generates.
fn body(tags: usize, fields: usize) -> Vec<u8> {
    let mut out = String::new();
    for i in 0..LINES {
        let tagset: String = (1..tags)
            .map(|k| format!(",tag{k}=v{}", (i * 7 + k) % 10))
            .collect();
        let fieldset: Vec<String> = (0..fields)
            .map(|k| {
                let v = ((i * 31 + k * 7) % 1000) as f64 / 10.0;
                format!("f{k}={v:?}")
            })
            .collect();
        let time = BASE_NS + i as i64 * 1_000_000;
        out.push_str(&format!(
            "cpu,host=host_{}{tagset} {} {time}\n",
            i % 1000,
            fieldset.join(",")
        ));
    }
    out.into_bytes()
}

/// How long or how often each stage runs.
#[derive(Clone, Copy)]
enum Budget {
    Time(Duration),
    Runs(u32),
}

/// Runs `stage` for the budget, returns the mean time of one run.
fn time_stage(budget: Budget, mut stage: impl FnMut()) -> Duration {
    stage();
    let start = Instant::now();
    let mut runs = 0u32;
    loop {
        let done = match budget {
            Budget::Time(limit) => start.elapsed() >= limit && runs > 0,
            Budget::Runs(count) => runs == count,
        };
        if done {
            break;
        }
        stage();
        runs += 1;
    }
    start.elapsed() / runs.max(1)
}

fn report(name: &str, per_run: Duration, rows: usize) {
    let ns_per_row = per_run.as_nanos() as f64 / rows as f64;
    println!(
        "{name:<28} {ns_per_row:>8.1} ns/row  {:>12.0} rows/s on one thread",
        1e9 / ns_per_row
    );
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let option = |name: &str, default: usize| -> Result<usize> {
        match args.iter().position(|a| a == name) {
            Some(i) => args
                .get(i + 1)
                .context("missing value")?
                .parse()
                .with_context(|| format!("{name} takes a number")),
            None => Ok(default),
        }
    };
    let budget = match option("--runs", 0)? {
        0 => Budget::Time(Duration::from_secs(option("--seconds", 5)? as u64)),
        runs => Budget::Runs(runs as u32),
    };
    let tags = option("--tags", 1)?;
    let fields = option("--fields", 3)?;
    let requests = option("--requests", 10)?;

    let body = body(tags, fields);
    println!(
        "body: {LINES} lines, {tags} tag(s), {fields} field(s), {} bytes",
        body.len()
    );
    let decode = time_stage(budget, || {
        std::hint::black_box(parse(&body, Precision::Nanoseconds, 0).expect("valid body"));
    });
    report("line protocol decode", decode, LINES);

    let batch: RecordBatch = parse(&body, Precision::Nanoseconds, 0)?
        .pop()
        .context("one measurement")?
        .batch;
    let batches = vec![batch; requests];
    let rows: Vec<RowRef> = (0..requests as u32)
        .flat_map(|b| (0..LINES as u32).map(move |r| (b, r)))
        .collect();
    let options = ParquetOptions::from_config(&IngestConfig::default());
    let target = FlushTarget {
        database: "bench".into(),
        measurement: "cpu".into(),
        sort_keys: vec!["time".into()],
        flushed_at: chrono::Utc::now(),
        node_id: "bench".into(),
        log: "bench".into(),
        min_lsn: 1,
        max_lsn: requests as u64,
    };
    let hour = BASE_NS / 1000 / 3_600_000_000 * 3_600_000_000;
    let tag_names = vec!["host".to_string()];
    let encode = time_stage(budget, || {
        let file = encode_hour(&batches, rows.clone(), hour, &tag_names, &target, &options)
            .expect("encodes");
        std::hint::black_box(file);
    });
    report("flush sort + encode", encode, rows.len());
    Ok(())
}
