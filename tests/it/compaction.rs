//! Compaction against a real server: one file per hour then per day with every row unchanged,
//! duplicates removed, kill -9 at every step of a job, queries running during a compaction, and
//! memory bounded by `compaction.memory_limit`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{
    Server, assert_no_orphans, decode_parquet, file_count, get_json, query, stored_keys,
    wait_reclaimed, write_lines,
};

const HOUR_NS: i64 = 3_600_000_000_000;
const DAY_NS: i64 = 24 * HOUR_NS;

/// Start of the current UTC hour, in ns.
fn this_hour_ns() -> i64 {
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    now - now.rem_euclid(HOUR_NS)
}

/// Start of the UTC day `days` days ago, in ns.
fn day_ns(days: i64) -> i64 {
    let today = this_hour_ns() - this_hour_ns().rem_euclid(DAY_NS);
    today - days * DAY_NS
}

/// Settings that make small test partitions compactable and reclaim quick.
const ENV: [(&str, &str); 4] = [
    ("ARC_COMPACTION_HOURLY_MIN_FILES", "3"),
    ("ARC_COMPACTION_DAILY_MIN_FILES", "2"),
    ("ARC_QUERY_TIMEOUT", "2"),
    ("ARC_INGEST_MAX_BUFFER_AGE_MS", "3600000"),
];

/// `files` flushes of `rows` rows each into the hour starting at `hour_ns`; `n` numbers rows
/// uniquely from `first_id`. Returns the next id.
async fn write_hour(
    server: &Server,
    db: &str,
    hour_ns: i64,
    files: usize,
    rows: i64,
    first_id: i64,
) -> i64 {
    let mut id = first_id;
    for _ in 0..files {
        let lines: String = (0..rows)
            .map(|_| {
                let line = format!(
                    "cpu,host=h{} v={}.5,n={id}i {}\n",
                    id % 4,
                    id % 97,
                    // Distinct µs within the hour for every id, out of order.
                    hour_ns + (id * 7_919 % 3_600_000_000) * 1_000
                );
                id += 1;
                line
            })
            .collect();
        write_lines(server, db, &lines).await;
        server.flush().await;
    }
    id
}

async fn trigger(server: &Server, query: &str) -> (StatusCode, Value) {
    let (status, body) = server
        .post(&format!("/api/v1/compaction/trigger{query}"), &[], "")
        .await;
    (status, serde_json::from_str(&body).unwrap())
}

/// Polls until no cycle runs.
async fn wait_idle(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = get_json(server, "/api/v1/compaction/status").await;
        if status["manager"]["cycle"].is_null() {
            return;
        }
        assert!(Instant::now() < deadline, "cycle still running: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn compact(server: &Server, tier: &str) {
    let (status, body) = trigger(server, &format!("?tier={tier}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_idle(server).await;
}

const ALL_ROWS: &str = "SELECT time, host, v, n FROM cpu ORDER BY n";

#[tokio::test]
async fn hourly_then_daily_leave_one_file_per_partition_and_every_row() {
    let mut server = Server::start(&ENV).await;
    let db = "tiers";
    let mut id = 0;
    for hour in 1..=3 {
        id = write_hour(&server, db, day_ns(10) + hour * HOUR_NS, 3, 40, id).await;
    }
    for hour in [5, 6] {
        id = write_hour(&server, db, day_ns(1) + hour * HOUR_NS, 3, 40, id).await;
    }
    // The current hour is never compacted.
    write_hour(&server, db, this_hour_ns(), 3, 40, id).await;
    let sql = ALL_ROWS.replace("cpu", "tiers.cpu");
    let before = query(&server, &sql).await;
    assert_eq!(before.len(), 18 * 40);
    assert_eq!(file_count(&server, db).await, 18);

    let candidates = get_json(&server, "/api/v1/compaction/candidates?tier=hourly").await;
    assert_eq!(candidates["count"], 5, "{candidates}");
    let (status, body) = trigger(&server, "?tier=hourly&database=tiers").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "running");
    assert_eq!(body["tiers"], json!(["hourly"]));
    assert_eq!(body["database"], "tiers");
    let (status, conflict) = trigger(&server, "").await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(conflict["is_running"], true);
    assert_eq!(conflict["cycle_id"], body["cycle_id"]);
    wait_idle(&server).await;
    assert_eq!(file_count(&server, db).await, 5 + 3);
    assert_eq!(
        query(&server, &sql).await,
        before,
        "rows after the hourly tier"
    );

    compact(&server, "daily").await;
    // The old day becomes one file; yesterday's hours were just written, so they wait.
    assert_eq!(file_count(&server, db).await, 1 + 2 + 3);
    assert_eq!(
        query(&server, &sql).await,
        before,
        "rows after the daily tier"
    );
    let history = get_json(&server, "/api/v1/compaction/history").await;
    assert_eq!(history["total_jobs"], 6, "{history}");
    assert!(
        history["recent_jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["status"] == "completed")
    );
    let status = get_json(&server, "/api/v1/compaction/status").await;
    assert_eq!(status["manager"]["total_completed"], 6, "{status}");
    assert_eq!(status["schedulers"]["hourly"]["schedule"], "5 * * * *");

    wait_reclaimed(&server, db).await;
    let stored = stored_keys(&server, db).await;
    assert_eq!(
        stored
            .iter()
            .filter(|k| k.ends_with("_daily.parquet"))
            .count(),
        1
    );
    assert_eq!(
        stored
            .iter()
            .filter(|k| k.ends_with("_compacted.parquet"))
            .count(),
        2
    );
    let daily = stored
        .iter()
        .find(|k| k.ends_with("_daily.parquet"))
        .unwrap();
    let file = decode_parquet(daily, server.storage().get(daily).await.unwrap());
    assert_eq!(file.rows(), 9 * 40);
    assert_eq!(file.metadata["arc:tags"], "host");

    let (status, body) = trigger(&server, "?tier=weekly").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("weekly"), "{body}");

    server.stop().await;
    assert_no_orphans(&server, &stored);
}

#[tokio::test]
async fn points_written_twice_appear_once_with_the_latest_values() {
    let server = Server::start(&ENV).await;
    let hour = day_ns(1) + 3 * HOUR_NS;
    let points = |value: f64| -> String {
        (0..50)
            .map(|i| {
                format!(
                    "cpu,host=h{} v={value},n={i}i {}\n",
                    i % 2,
                    hour + i * 1_000_000_000
                )
            })
            .collect()
    };
    for value in [1.5, 1.5, 2.5] {
        write_lines(&server, "dedup", &points(value)).await;
        server.flush().await;
    }
    let sql = "SELECT COUNT(*), COUNT(DISTINCT n), MIN(v), MAX(v) FROM dedup.cpu";
    assert_eq!(query(&server, sql).await, [json!([150, 50, 1.5, 2.5])]);
    compact(&server, "hourly").await;
    assert_eq!(file_count(&server, "dedup").await, 1);
    assert_eq!(query(&server, sql).await, [json!([50, 50, 2.5, 2.5])]);
    let stats = get_json(&server, "/api/v1/compaction/stats").await;
    assert_eq!(stats["stats"]["duplicates_removed"], 100, "{stats}");
}

#[tokio::test]
async fn the_hourly_schedule_compacts_without_a_call() {
    let mut env = ENV.to_vec();
    env.push(("ARC_COMPACTION_HOURLY_SCHEDULE", "*/2 * * * * *"));
    env.push(("ARC_COMPACTION_DAILY_ENABLED", "false"));
    let server = Server::start(&env).await;
    write_hour(&server, "scheduled", day_ns(1) + 5 * HOUR_NS, 3, 20, 0).await;
    let sql = "SELECT COUNT(*), SUM(n) FROM scheduled.cpu";
    let expected = query(&server, sql).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while file_count(&server, "scheduled").await != 1 {
        assert!(Instant::now() < deadline, "the schedule never compacted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(query(&server, sql).await, expected);
    let status = get_json(&server, "/api/v1/compaction/status").await;
    assert!(
        status["manager"]["total_completed"].as_u64().unwrap() >= 1,
        "{status}"
    );
}

#[tokio::test]
async fn kill_at_every_step_of_a_job_loses_and_duplicates_nothing() {
    const ROUNDS: usize = 20;
    const STEPS: [&str; 5] = [
        "after_download",
        "after_merge",
        "after_journal",
        "after_upload",
        "after_swap",
    ];
    let mut server = Server::start(&ENV).await;
    let db = "crashy";
    let sql = "SELECT COUNT(*), COUNT(DISTINCT n), SUM(n), SUM(v) FROM crashy.cpu";
    let mut id = 0;
    let mut crashes = 0;
    for round in 0..ROUNDS {
        let step = STEPS[round % STEPS.len()];
        server.stop().await;
        server
            .restart_with(&[("ARC_TEST_COMPACTION_CRASH_AT", step)])
            .await;
        let hour = day_ns(2) + round as i64 * HOUR_NS;
        id = write_hour(&server, db, hour, 3, 30, id).await;
        let expected = query(&server, sql).await;
        assert_eq!(expected[0][0], id, "{expected:?}");

        let (status, body) = trigger(&server, "?tier=hourly").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.is_running() {
            assert!(Instant::now() < deadline, "no crash at {step}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        crashes += 1;
        server.kill9();
        server
            .restart_with(&[("ARC_TEST_COMPACTION_CRASH_AT", "")])
            .await;
        assert_eq!(query(&server, sql).await, expected, "after a crash {step}");
        compact(&server, "hourly").await;
        assert_eq!(
            query(&server, sql).await,
            expected,
            "after recovering from {step}"
        );
        assert_eq!(
            file_count(&server, db).await,
            round as u64 + 1,
            "one file per hour"
        );
    }
    assert_eq!(crashes, ROUNDS);
    assert_eq!(server.log().matches("test hook: aborting").count(), ROUNDS);
    wait_reclaimed(&server, db).await;
    let stored = stored_keys(&server, db).await;
    server.stop().await;
    assert_no_orphans(&server, &stored);
    let job_dirs: Vec<String> = std::fs::read_dir(server.dir.join("data/compaction"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(job_dirs.is_empty(), "{job_dirs:?}");
}

#[tokio::test]
async fn queries_running_during_a_compaction_see_every_row_once() {
    let server = Arc::new(Server::start(&ENV).await);
    let hour = day_ns(1) + 7 * HOUR_NS;
    let next = write_hour(&server, "busy", hour, 12, 3_000, 0).await;
    // Rows still in the buffer are read alongside the files (and skipped by LSN in neither).
    let buffered: String = (next..next + 500)
        .map(|n| format!("cpu,host=h{} v=1.5,n={n}i {}\n", n % 4, this_hour_ns() + n))
        .collect();
    write_lines(&server, "busy", &buffered).await;
    let sql = "SELECT COUNT(*), COUNT(DISTINCT n), SUM(n) FROM busy.cpu";
    let expected = query(&server, sql).await;
    assert_eq!(expected[0][0], 36_500);

    let stop = Arc::new(AtomicBool::new(false));
    let queriers: Vec<_> = (0..2)
        .map(|_| {
            let (server, stop, expected) =
                (Arc::clone(&server), Arc::clone(&stop), expected.clone());
            tokio::spawn(async move {
                let mut spans = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    assert_eq!(query(&server, sql).await, expected);
                    spans.push((started, Instant::now()));
                }
                spans
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let triggered = Instant::now();
    compact(&server, "hourly").await;
    let finished = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut during = 0;
    for querier in queriers {
        let spans = querier.await.expect("every query returned the same rows");
        during += spans
            .iter()
            .filter(|(start, end)| *start < finished && *end > triggered)
            .count();
    }
    assert!(during > 0, "no query overlapped the compaction");
    assert_eq!(file_count(&server, "busy").await, 1);
    assert_eq!(query(&server, sql).await, expected);
}

/// A `/proc/<pid>/status` size, in bytes.
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Resident set high-water mark of a process.
fn peak_rss(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmHWM:")
}

fn current_rss(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmRSS:")
}

#[tokio::test]
async fn a_partition_larger_than_memory_limit_compacts_in_bounded_memory() {
    const LIMIT: u64 = 64 << 20;
    const FILES: i64 = 28;
    const ROWS: i64 = 250_000;
    let mut server = Server::start(&[
        ("ARC_COMPACTION_HOURLY_MIN_FILES", "2"),
        ("ARC_COMPACTION_MEMORY_LIMIT", "64MB"),
        ("ARC_INGEST_MAX_BUFFER_SIZE", "1000000"),
        ("ARC_INGEST_MAX_BUFFER_AGE_MS", "3600000"),
    ])
    .await;
    let hour_us = (day_ns(1) + 9 * HOUR_NS) / 1_000;
    // Values that barely compress, so the files are as large as the rows.
    let noise = |i: i64, k: i64| {
        // splitmix64: 53 random mantissa bits per value.
        let mut z = ((i * 4 + k) as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as f64 / u64::MAX as f64
    };
    for file in 0..FILES {
        let ids: Vec<i64> = (file * ROWS..(file + 1) * ROWS).collect();
        let column = |k: i64| {
            rmpv::Value::Array(
                ids.iter()
                    .map(|i| rmpv::Value::from(noise(*i, k)))
                    .collect(),
            )
        };
        let payload = crate::harness::map(vec![
            ("m", rmpv::Value::from("wide")),
            (
                "columns",
                crate::harness::map(vec![
                    (
                        "time",
                        rmpv::Value::Array(
                            ids.iter()
                                .map(|i| rmpv::Value::from(hour_us + i % 3_600_000_000))
                                .collect(),
                        ),
                    ),
                    ("a", column(1)),
                    ("b", column(2)),
                    ("c", column(3)),
                    ("d", column(4)),
                    (
                        "n",
                        rmpv::Value::Array(ids.iter().map(|i| rmpv::Value::from(*i)).collect()),
                    ),
                ]),
            ),
        ]);
        let (status, body) = server
            .post(
                "/api/v1/write/msgpack",
                &[("x-arc-database", "mem")],
                crate::harness::msgpack(&payload),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        server.flush().await;
    }
    let listed = get_json(&server, "/api/v1/measurements?database=mem").await;
    let stored_mb = listed["measurements"][0]["total_size_mb"].as_f64().unwrap();
    assert!(
        stored_mb * (1 << 20) as f64 > 3.0 * LIMIT as f64,
        "partition of {stored_mb} MB is not several times the limit"
    );
    let sql = "SELECT COUNT(*), SUM(n), MIN(time), MAX(time) FROM mem.wide";
    let expected = query(&server, sql).await;

    // A fresh process, and its high-water mark reset, so the mark covers the compaction only
    // (start-up reads a whole WAL segment).
    server.stop().await;
    server.restart().await;
    let before = current_rss(server.pid());
    std::fs::write(format!("/proc/{}/clear_refs", server.pid()), "5").unwrap();
    compact(&server, "hourly").await;
    let peak = peak_rss(server.pid());
    assert_eq!(file_count(&server, "mem").await, 1);
    assert_eq!(query(&server, sql).await, expected);
    eprintln!(
        "partition {stored_mb:.1} MB, memory_limit {} MB, peak RSS {} MB (idle {} MB)",
        LIMIT >> 20,
        peak >> 20,
        before >> 20
    );
    assert!(peak < 2 * LIMIT, "peak RSS {} MB", peak >> 20);
}

#[tokio::test]
async fn endpoints_answer_404_when_compaction_is_disabled() {
    let server = Server::start(&[("ARC_COMPACTION_ENABLED", "false")]).await;
    for path in ["/api/v1/compaction/status", "/api/v1/compaction/history"] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert!(body.contains("not enabled"), "{body}");
    }
    let (status, _) = trigger(&server, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
