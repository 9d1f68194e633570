//! Row deletes against a real server: matching rows disappear and the others stay (flushed or
//! still buffered, across restarts), kill -9 at every step of a delete loses and duplicates
//! nothing, and bad requests are refused without changing anything.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{
    Server, assert_no_orphans, file_count, get_json, query, stored_keys, wait_reclaimed,
    write_lines,
};

const HOUR_NS: i64 = 3_600_000_000_000;

/// Start of the UTC hour two days ago, in ns: old enough that nothing else touches it.
fn first_hour_ns() -> i64 {
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    now - now.rem_euclid(HOUR_NS) - 48 * HOUR_NS
}

fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339()
}

const ENV: [(&str, &str); 3] = [
    ("ARC_DELETE_ENABLED", "true"),
    ("ARC_QUERY_TIMEOUT", "2"),
    ("ARC_INGEST_MAX_BUFFER_AGE_MS", "3600000"),
];

/// Three files: two flushes into the first hour, one into the next. Each holds `per_host` rows
/// of hosts `a` and `b`, numbered by `n` from `first_id`.
async fn write_three_files(server: &Server, db: &str, per_host: i64) {
    let first = first_hour_ns();
    let mut id = 0;
    for hour in [first, first, first + HOUR_NS] {
        let lines: String = (0..2 * per_host)
            .map(|_| {
                id += 1;
                let host = if id % 2 == 0 { "a" } else { "b" };
                format!(
                    "cpu,host={host} n={id}i,v={}.25 {}\n",
                    id % 13,
                    hour + id * 1_000_000
                )
            })
            .collect();
        write_lines(server, db, &lines).await;
        server.flush().await;
    }
}

fn per_host_sql(db: &str) -> String {
    format!(
        "SELECT host, COUNT(*) AS rows, SUM(n) AS n, SUM(v) AS v FROM {db}.cpu GROUP BY host ORDER BY host"
    )
}

async fn delete(server: &Server, body: Value) -> (StatusCode, Value) {
    let response = server
        .client
        .post(server.url("/api/v1/delete"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn delete_ok(server: &Server, body: Value) -> Value {
    let (status, answer) = delete(server, body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}: {answer}");
    assert_eq!(answer["success"], true, "{answer}");
    answer
}

#[tokio::test]
async fn matching_rows_disappear_and_the_others_stay() {
    let mut server = Server::start(&ENV).await;
    let db = "deletes";
    write_three_files(&server, db, 50).await;
    let before = query(&server, &per_host_sql(db)).await;
    assert_eq!(before[0][1], 150, "{before:?}");

    let config = get_json(&server, "/api/v1/delete/config").await;
    assert_eq!(config["enabled"], true);
    assert_eq!(config["confirmation_threshold"], 10_000);
    assert_eq!(config["max_rows_per_delete"], 1_000_000);
    assert_eq!(config["implementation"], "rewrite-based");

    let host_a = json!({"database": db, "measurement": "cpu", "where": "host = 'a'"});
    let mut dry = host_a.clone();
    dry["dry_run"] = json!(true);
    let answer = delete_ok(&server, dry).await;
    assert_eq!(answer["deleted_count"], 150);
    assert_eq!(answer["affected_files"], 3);
    assert_eq!(answer["rewritten_files"], 0);
    assert_eq!(answer["files_processed"].as_array().unwrap().len(), 3);
    assert_eq!(query(&server, &per_host_sql(db)).await, before);
    assert_eq!(file_count(&server, db).await, 3);

    let mut confirmed = host_a.clone();
    confirmed["confirm"] = json!(true);
    let answer = delete_ok(&server, confirmed.clone()).await;
    assert_eq!(answer["deleted_count"], 150);
    assert_eq!(
        (
            answer["affected_files"].clone(),
            answer["rewritten_files"].clone()
        ),
        (json!(3), json!(3))
    );
    let after_a = query(&server, &per_host_sql(db)).await;
    assert_eq!(
        after_a,
        vec![before[1].clone()],
        "only host b is left, untouched"
    );
    assert_eq!(delete_ok(&server, confirmed).await["deleted_count"], 0);

    // Every row of the first hour: its two files go without a rewrite.
    let cutoff = rfc3339(first_hour_ns() + HOUR_NS);
    let answer = delete_ok(
        &server,
        json!({"database": db, "measurement": "cpu", "where": format!("time < '{cutoff}'"), "confirm": true}),
    )
    .await;
    assert_eq!(answer["deleted_count"], 100);
    assert_eq!(
        (
            answer["affected_files"].clone(),
            answer["rewritten_files"].clone()
        ),
        (json!(2), json!(0))
    );
    assert_eq!(file_count(&server, db).await, 1);
    let left = query(
        &server,
        &format!("SELECT COUNT(*) AS c, MIN(n) AS lo FROM {db}.cpu"),
    )
    .await;
    assert_eq!(
        (left[0][0].clone(), left[0][1].clone()),
        (json!(50), json!(201))
    );

    // Buffered rows are covered too, and stay deleted through a crash and WAL replay.
    let buffered: String = (0..20)
        .map(|i| format!("cpu,host=c n={}i,v=1 {}\n", 1_000 + i, first_hour_ns() + i))
        .collect();
    write_lines(&server, db, &buffered).await;
    let answer = delete_ok(
        &server,
        json!({"database": db, "measurement": "cpu", "where": "host = 'c' AND n >= 1010", "confirm": true}),
    )
    .await;
    assert_eq!(answer["deleted_count"], 10);
    let expected = query(&server, &per_host_sql(db)).await;
    assert_eq!(expected[1][1], 10, "{expected:?}");
    server.kill9();
    server.restart().await;
    assert_eq!(query(&server, &per_host_sql(db)).await, expected);

    wait_reclaimed(&server, db).await;
    let stored = stored_keys(&server, db).await;
    server.stop().await;
    assert_no_orphans(&server, &stored);
}

#[tokio::test]
async fn kill_at_every_step_of_a_delete_loses_and_duplicates_nothing() {
    const STEPS: [(&str, bool); 3] = [
        ("after_journal", false),
        ("after_upload", false),
        ("after_swap", true),
    ];
    let mut server = Server::start(&ENV).await;
    for (round, (step, swapped)) in STEPS.into_iter().enumerate() {
        let db = format!("crash{round}");
        server.stop().await;
        server
            .restart_with(&[("ARC_TEST_DELETE_CRASH_AT", step)])
            .await;
        write_three_files(&server, &db, 40).await;
        let before = query(&server, &per_host_sql(&db)).await;
        let body = json!({"database": db, "measurement": "cpu", "where": "host = 'a' OR n % 5 = 0", "confirm": true});

        // The server aborts mid-request, so there is no answer to read.
        let request = server
            .client
            .post(server.url("/api/v1/delete"))
            .json(&body)
            .send();
        assert!(
            request.await.is_err(),
            "the delete answered despite the hook at {step}"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.is_running() {
            assert!(Instant::now() < deadline, "no crash at {step}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.kill9();
        server
            .restart_with(&[("ARC_TEST_DELETE_CRASH_AT", "")])
            .await;
        let recovered = query(&server, &per_host_sql(&db)).await;
        if swapped {
            assert_eq!(
                recovered.len(),
                1,
                "host a is gone after {step}: {recovered:?}"
            );
        } else {
            assert_eq!(recovered, before, "nothing changed after a crash {step}");
        }
        let answer = delete_ok(&server, body).await;
        assert_eq!(answer["deleted_count"], if swapped { 0 } else { 120 + 24 });
        let after = query(&server, &per_host_sql(&db)).await;
        assert_eq!(after.len(), 1, "{after:?}");
        assert_eq!(after[0][0], "b");
        assert_eq!(
            after[0][1],
            120 - 24,
            "b rows whose n is not a multiple of 5"
        );
        assert_eq!(file_count(&server, &db).await, 3);
        assert_eq!(
            server.log().matches("test hook: aborting").count(),
            round + 1
        );
    }
    for round in 0..STEPS.len() {
        wait_reclaimed(&server, &format!("crash{round}")).await;
    }
    let mut stored = Vec::new();
    for round in 0..STEPS.len() {
        stored.extend(stored_keys(&server, &format!("crash{round}")).await);
    }
    server.stop().await;
    stored.sort();
    assert_no_orphans(&server, &stored);
    assert!(!server.dir.join("data/compaction/delete").exists());
}

#[tokio::test]
async fn bad_delete_requests_are_refused_and_change_nothing() {
    let mut server = Server::start(&[
        ("ARC_DELETE_ENABLED", "true"),
        ("ARC_DELETE_CONFIRMATION_THRESHOLD", "10"),
        ("ARC_DELETE_MAX_ROWS_PER_DELETE", "250"),
    ])
    .await;
    let db = "guarded";
    write_three_files(&server, db, 50).await;
    let before = query(&server, &per_host_sql(db)).await;
    let files = stored_keys(&server, db).await;
    let config = get_json(&server, "/api/v1/delete/config").await;
    assert_eq!(
        (
            config["confirmation_threshold"].clone(),
            config["max_rows_per_delete"].clone()
        ),
        (json!(10), json!(250))
    );

    let request = |extra: Value| {
        let mut body = json!({"database": db, "measurement": "cpu", "where": "host = 'a'"});
        for (key, value) in extra.as_object().unwrap() {
            body[key] = value.clone();
        }
        body
    };
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (
            json!({"measurement": "cpu", "where": "1=1"}),
            StatusCode::BAD_REQUEST,
            "database is required",
        ),
        (
            request(json!({"database": "bad/db"})),
            StatusCode::BAD_REQUEST,
            "invalid database name",
        ),
        (
            request(json!({"measurement": ""})),
            StatusCode::BAD_REQUEST,
            "measurement is required",
        ),
        (
            request(json!({"where": "  "})),
            StatusCode::BAD_REQUEST,
            "where clause is required",
        ),
        (
            request(json!({"where": "host = 'a'; DROP TABLE cpu", "confirm": true})),
            StatusCode::BAD_REQUEST,
            "';'",
        ),
        (
            request(json!({"where": "n IN (SELECT n FROM cpu)", "confirm": true})),
            StatusCode::BAD_REQUEST,
            "SELECT",
        ),
        (
            request(json!({"where": "host = 'a' OR", "confirm": true})),
            StatusCode::BAD_REQUEST,
            "invalid where",
        ),
        (
            request(json!({"where": "host = 'a' extra", "confirm": true})),
            StatusCode::BAD_REQUEST,
            "invalid where",
        ),
        (
            request(json!({"where": "no_such_column = 1", "confirm": true})),
            StatusCode::BAD_REQUEST,
            "invalid where",
        ),
        (
            request(json!({"where": "n + 1", "confirm": true})),
            StatusCode::BAD_REQUEST,
            "invalid where",
        ),
        (
            request(json!({"where": "1=1"})),
            StatusCode::BAD_REQUEST,
            "Full table delete",
        ),
        (
            request(json!({})),
            StatusCode::BAD_REQUEST,
            "Confirmation required",
        ),
        (
            request(json!({"dry_run": true})),
            StatusCode::BAD_REQUEST,
            "threshold: 10",
        ),
        (
            request(json!({"where": "1=1", "confirm": true})),
            StatusCode::BAD_REQUEST,
            "maximum of 250",
        ),
        (
            request(json!({"measurement": "nope", "confirm": true})),
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            request(json!({"confirm": "yes"})),
            StatusCode::BAD_REQUEST,
            "Invalid request body",
        ),
        (
            request(json!({"limit": 1})),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
    ];
    for (body, status, message) in cases {
        let (got, answer) = delete(&server, body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(answer["success"], false, "{answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(message), "{body}: {error}");
    }
    let (status, body) = server
        .post(
            "/api/v1/delete",
            &[("content-type", "application/json")],
            "{\"database\":",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("Invalid request body"), "{body}");

    assert_eq!(query(&server, &per_host_sql(db)).await, before);
    assert_eq!(stored_keys(&server, db).await, files);
    server.stop().await;
    assert_eq!(crate::harness::manifest_paths(&server.meta_dir()), files);

    let disabled = Server::start(&[]).await;
    let (status, answer) = delete(
        &disabled,
        json!({"database": db, "measurement": "cpu", "where": "host = 'a'", "dry_run": true}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("delete.enabled"),
        "{answer}"
    );
}
