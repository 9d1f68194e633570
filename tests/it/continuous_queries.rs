//! Continuous queries against a real server: 1-second data downsampled into 1-minute averages,
//! re-running a window changes nothing, the scheduler runs active queries on their interval,
//! and bad requests are refused without changing anything.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Server, call, get_json, query, write_lines};

const SECOND_NS: i64 = 1_000_000_000;
const MINUTE_NS: i64 = 60 * SECOND_NS;

fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Start of the UTC hour two days ago, in ns.
fn old_hour_ns() -> i64 {
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    now - now.rem_euclid(60 * MINUTE_NS) - 48 * 60 * MINUTE_NS
}

async fn send(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = server.client.request(method, server.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    call(request).await
}

async fn post_ok(server: &Server, path: &str, body: Value) -> Value {
    let (status, answer) = send(server, reqwest::Method::POST, path, Some(body.clone())).await;
    assert!(status.is_success(), "{path} {body}: {status} {answer}");
    answer
}

fn downsampling(name: &str, active: bool) -> Value {
    json!({
        "name": name,
        "database": "metrics",
        "source_measurement": "cpu",
        "destination_measurement": "cpu_1m",
        "query": "SELECT date_bin(INTERVAL '1 minute', time) AS time, host, AVG(value) AS avg_value, \
                  COUNT(*) AS samples FROM cpu WHERE time >= {start_time} AND time < {end_time} \
                  GROUP BY 1, host",
        "interval": "1m",
        "tag_columns": ["host"],
        "is_active": active,
    })
}

const DOWNSAMPLED: &str =
    "SELECT time, host, avg_value, samples FROM metrics.cpu_1m ORDER BY time, host";

#[tokio::test]
async fn one_second_data_downsampled_into_one_minute_averages() {
    let mut server = Server::start(&[("ARC_INGEST_MAX_BUFFER_AGE_MS", "3600000")]).await;
    let start = old_hour_ns();
    // Ten minutes of 1-second points: host a counts seconds from 0, host b from 1000.
    let lines: Vec<String> = (0..600)
        .flat_map(|s| {
            [("a", s), ("b", 1000 + s)].map(|(host, value)| {
                format!("cpu,host={host} value={value} {}\n", start + s * SECOND_NS)
            })
        })
        .collect();
    // Half flushed to files, half still buffered.
    let (flushed, buffered) = lines.split_at(lines.len() / 2);
    write_lines(&server, "metrics", &flushed.concat()).await;
    server.flush().await;
    write_lines(&server, "metrics", &buffered.concat()).await;

    let created = post_ok(
        &server,
        "/api/v1/continuous_queries",
        downsampling("cpu_1m", false),
    )
    .await;
    let id = created["id"].as_u64().unwrap();
    assert_eq!(created["tag_columns"], json!(["host"]));
    assert_eq!(created["last_processed_time"], Value::Null);
    let execute = format!("/api/v1/continuous_queries/{id}/execute");
    let window = json!({"start_time": rfc3339(start), "end_time": rfc3339(start + 10 * MINUTE_NS)});

    let ran = post_ok(&server, &execute, window.clone()).await;
    assert_eq!(ran["status"], "completed", "{ran}");
    assert_eq!(ran["records_written"], 20);
    assert_eq!(ran["destination_measurement"], "cpu_1m");
    let first = query(&server, DOWNSAMPLED).await;
    assert_eq!(first.len(), 20);
    for (i, row) in first.iter().enumerate() {
        let minute = (i / 2) as f64;
        let base = if i % 2 == 0 { 0.0 } else { 1000.0 };
        assert_eq!(row[1], if i % 2 == 0 { "a" } else { "b" });
        assert_eq!(
            row[2].as_f64().unwrap(),
            base + 60.0 * minute + 29.5,
            "{row:?}"
        );
        assert_eq!(row[3], 60, "{row:?}");
    }

    // Running the same window again, or part of it, leaves the same rows.
    assert_eq!(
        post_ok(&server, &execute, window).await["records_written"],
        20
    );
    assert_eq!(query(&server, DOWNSAMPLED).await, first);
    let part = json!({"start_time": rfc3339(start + 2 * MINUTE_NS), "end_time": rfc3339(start + 4 * MINUTE_NS)});
    assert_eq!(
        post_ok(&server, &execute, part.clone()).await["records_written"],
        4
    );
    assert_eq!(query(&server, DOWNSAMPLED).await, first);

    let mut dry = part;
    dry["dry_run"] = json!(true);
    let shown = post_ok(&server, &execute, dry).await;
    assert_eq!(shown["status"], "dry_run");
    assert_eq!(shown["records_written"], 0);
    let executed = shown["executed_query"].as_str().unwrap();
    assert!(
        executed.contains(&format!("time >= '{}'", rfc3339(start + 2 * MINUTE_NS))),
        "{executed}"
    );

    let history = get_json(
        &server,
        &format!("/api/v1/continuous_queries/{id}/executions"),
    )
    .await;
    let executions = history["executions"].as_array().unwrap();
    assert_eq!(executions.len(), 3, "dry runs are not recorded: {history}");
    assert!(executions.iter().all(|e| e["status"] == "completed"));
    assert_eq!(executions[0]["records_written"], 4, "newest first");
    let stored = get_json(&server, &format!("/api/v1/continuous_queries/{id}")).await;
    assert_eq!(
        stored["last_processed_time"],
        rfc3339(start + 10 * MINUTE_NS),
        "the later window's end: re-running an earlier window does not move it back"
    );
    assert_eq!(stored["last_execution_status"], "completed");

    server.kill9();
    server.restart().await;
    assert_eq!(query(&server, DOWNSAMPLED).await, first);
    assert_eq!(
        get_json(&server, &format!("/api/v1/continuous_queries/{id}")).await,
        stored
    );
}

#[tokio::test]
async fn active_queries_run_on_their_interval() {
    let server = Server::start(&[]).await;
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    let first = now - now.rem_euclid(SECOND_NS) - MINUTE_NS;
    let lines: String = (0..180)
        .map(|s| format!("live v={s} {}\n", first + s * SECOND_NS))
        .collect();
    write_lines(&server, "metrics", &lines).await;
    let created = post_ok(
        &server,
        "/api/v1/continuous_queries",
        json!({
            "name": "live_10s",
            "database": "metrics",
            "source_measurement": "live",
            "destination_measurement": "live_10s",
            "query": "SELECT date_bin(INTERVAL '10 seconds', time) AS time, COUNT(*) AS samples \
                      FROM live WHERE time >= {start_time} AND time < {end_time} GROUP BY 1",
            "interval": "10s",
        }),
    )
    .await;
    let history = format!("/api/v1/continuous_queries/{}/executions", created["id"]);

    let deadline = Instant::now() + Duration::from_secs(60);
    let executions = loop {
        let answer = get_json(&server, &history).await;
        let mut executions = answer["executions"].as_array().unwrap().clone();
        if executions.len() >= 2 {
            executions.reverse();
            break executions;
        }
        assert!(
            Instant::now() < deadline,
            "the scheduler did not run twice: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let seconds = |value: &Value| {
        chrono::DateTime::parse_from_rfc3339(value.as_str().unwrap())
            .unwrap()
            .timestamp()
    };
    for pair in executions.windows(2) {
        assert_eq!(pair[1]["start_time"], pair[0]["end_time"], "{executions:?}");
    }
    for execution in &executions {
        assert_eq!(execution["status"], "completed", "{execution}");
        let (start, end) = (
            seconds(&execution["start_time"]),
            seconds(&execution["end_time"]),
        );
        assert_eq!(end % 10, 0, "windows end on the interval: {execution}");
        assert!(end > start && (end - start) % 10 == 0, "{execution}");
        // One output row per 10 seconds of window (a late tick makes a longer window).
        assert_eq!(
            execution["records_written"],
            (end - start) / 10,
            "{execution}"
        );
    }
    let rows = query(&server, "SELECT samples FROM metrics.live_10s").await;
    assert!(rows.len() >= 2, "{rows:?}");
    assert!(rows.iter().all(|r| r[0] == 10), "{rows:?}");
}

#[tokio::test]
async fn bad_continuous_query_requests_are_refused_and_change_nothing() {
    use reqwest::Method;
    let server = Server::start(&[]).await;
    let base = "/api/v1/continuous_queries";
    let valid = downsampling("valid", false);
    let with = |field: &str, value: Value| {
        let mut body = valid.clone();
        match value {
            Value::Null => {
                body.as_object_mut().unwrap().remove(field);
            }
            value => body[field] = value,
        }
        body
    };
    let bad_bodies: Vec<(Value, &str)> = vec![
        (with("name", Value::Null), "name is required"),
        (with("database", Value::Null), "database is required"),
        (with("database", json!("no/db")), "invalid database name"),
        (
            with("source_measurement", json!("")),
            "source_measurement is required",
        ),
        (
            with("destination_measurement", json!("bad name")),
            "invalid destination_measurement",
        ),
        (with("destination_measurement", json!("cpu")), "must differ"),
        (with("query", Value::Null), "query is required"),
        (with("query", json!("SELECT * FROM cpu")), "placeholders"),
        (
            with(
                "query",
                json!("DELETE FROM cpu WHERE time > {start_time} AND time < {end_time}"),
            ),
            "invalid query",
        ),
        (
            with("query", json!("SELEC {start_time}, {end_time}")),
            "invalid query",
        ),
        (with("interval", Value::Null), "interval is required"),
        (with("interval", json!("soon")), "invalid interval"),
        (with("interval", json!("0s")), "invalid interval"),
        (with("tag_columns", json!(["time"])), "invalid tag column"),
        (with("retention_days", json!(0)), "retention_days"),
        (with("is_active", json!("yes")), "invalid request body"),
        (with("owner", json!("me")), "unknown field"),
    ];
    for (body, message) in &bad_bodies {
        let (status, answer) = send(&server, Method::POST, base, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(message), "{body}: {error}");
    }

    let created = post_ok(&server, base, valid.clone()).await;
    let id = created["id"].as_u64().unwrap();
    let (status, answer) = send(&server, Method::POST, base, Some(valid.clone())).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    let listed = get_json(&server, base).await;

    let one = format!("{base}/{id}");
    for (body, _) in &bad_bodies {
        let (status, answer) = send(&server, Method::PUT, &one, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
    }
    let execute = format!("{one}/execute");
    for (body, message) in [
        (json!({"start_time": "yesterday"}), "Invalid start_time"),
        (
            json!({"end_time": "2024-13-01T00:00:00Z"}),
            "Invalid end_time",
        ),
        (
            json!({"start_time": "2024-01-02T00:00:00Z", "end_time": "2024-01-01T00:00:00Z"}),
            "start_time must be before end_time",
        ),
        (json!({"dry": true}), "unknown field"),
    ] {
        let (status, answer) = send(&server, Method::POST, &execute, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(message),
            "{body}: {answer}"
        );
    }
    for (method, path, status) in [
        (Method::GET, format!("{base}/x"), StatusCode::BAD_REQUEST),
        (Method::GET, format!("{base}/999"), StatusCode::NOT_FOUND),
        (Method::PUT, format!("{base}/999"), StatusCode::NOT_FOUND),
        (Method::DELETE, format!("{base}/999"), StatusCode::NOT_FOUND),
        (
            Method::POST,
            format!("{base}/999/execute"),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            format!("{base}/999/executions"),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            format!("{one}/executions?limit=many"),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            format!("{base}?is_active=maybe"),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let body = (method == Method::PUT).then(|| valid.clone());
        let (got, answer) = send(&server, method.clone(), &path, body).await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    assert_eq!(get_json(&server, base).await, listed);
    let history = get_json(&server, &format!("{one}/executions")).await;
    assert_eq!(history["executions"], json!([]));

    let disabled = Server::start(&[("ARC_CONTINUOUS_QUERY_ENABLED", "false")]).await;
    let (status, _) = disabled.get(base).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
