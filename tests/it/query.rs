//! SQL over buffered and flushed rows: Arc's envelopes, read-your-writes, pruning, errors.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Server, query as rows, write_lines};

/// 2026-01-15T10:00:00Z in ns.
const T0_NS: i64 = 1_768_471_200_000_000_000;
const HOUR_NS: i64 = 3_600_000_000_000;

async fn query(server: &Server, sql: &str, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut request = server
        .client
        .post(server.url("/api/v1/query"))
        .json(&json!({ "sql": sql }));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, body)
}

#[tokio::test]
async fn acknowledged_rows_are_visible_before_and_after_flush_and_after_kill9() {
    let mut server = Server::start(&[("ARC_INGEST_MAX_BUFFER_AGE_MS", "3600000")]).await;
    write_lines(
        &server,
        "ryw",
        &format!(
            "cpu,host=a usage=1.5 {T0_NS}\ncpu,host=b usage=2.5 {}\n",
            T0_NS + 1_000
        ),
    )
    .await;
    let sql = "SELECT host, usage, time FROM ryw.cpu ORDER BY time";
    let expected = vec![
        json!(["a", 1.5, "2026-01-15T10:00:00Z"]),
        json!(["b", 2.5, "2026-01-15T10:00:00.000001Z"]),
    ];
    assert_eq!(rows(&server, sql).await, expected, "buffered rows");

    server.flush().await;
    assert_eq!(rows(&server, sql).await, expected, "flushed rows, once");

    // The other endpoints share the write path; MessagePack and the v2 API stand in for them.
    let payload = crate::harness::map(vec![
        ("m", rmpv::Value::from("cpu")),
        (
            "columns",
            crate::harness::map(vec![
                ("time", rmpv::Value::Array(vec![(T0_NS / 1000 + 2).into()])),
                ("host", rmpv::Value::Array(vec!["c".into()])),
                ("usage", rmpv::Value::Array(vec![3.5.into()])),
            ]),
        ),
    ]);
    let (status, _) = server
        .post(
            "/api/v1/write/msgpack",
            &[("x-arc-database", "ryw")],
            crate::harness::msgpack(&payload),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server
        .post(
            "/api/v2/write?bucket=ryw",
            &[],
            format!("cpu,host=d usage=4.5 {}", T0_NS + 3_000),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let mut before_kill = expected.clone();
    before_kill.push(json!(["c", 3.5, "2026-01-15T10:00:00.000002Z"]));
    before_kill.push(json!(["d", 4.5, "2026-01-15T10:00:00.000003Z"]));
    assert_eq!(
        rows(&server, sql).await,
        before_kill,
        "rows from every endpoint"
    );
    server.kill9();
    server.restart().await;
    assert_eq!(
        rows(&server, sql).await,
        before_kill,
        "after kill -9 and WAL replay"
    );
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn json_envelope_show_commands_and_errors_match_arc() {
    let mut server = Server::start(&[]).await;
    write_lines(
        &server,
        "default",
        &format!("mem,host=a free=10i {T0_NS}\n"),
    )
    .await;
    write_lines(&server, "other", &format!("disk,host=a used=0.5 {T0_NS}\n")).await;

    let (status, body) = query(&server, "SELECT * FROM mem", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["success"], true);
    assert_eq!(body["columns"], json!(["time", "free", "host"]));
    assert_eq!(body["data"], json!([["2026-01-15T10:00:00Z", 10, "a"]]));
    assert_eq!(body["row_count"], 1);
    assert!(body["execution_time_ms"].as_f64().unwrap() >= 0.0);
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));

    // The header picks the database for bare names.
    let (status, body) = query(
        &server,
        "SELECT used FROM disk",
        &[("x-arc-database", "other")],
    )
    .await;
    assert_eq!((status, &body["data"]), (StatusCode::OK, &json!([[0.5]])));

    let (_, body) = query(&server, "SHOW DATABASES", &[]).await;
    assert_eq!(body["data"], json!([["default"], ["other"]]));
    let (_, body) = query(&server, "SHOW TABLES FROM other", &[]).await;
    assert_eq!(body["data"][0][1], "disk");
    assert_eq!(
        body["columns"],
        json!([
            "database",
            "table_name",
            "storage_path",
            "file_count",
            "total_size_mb"
        ])
    );

    for (sql, headers, fragment) in [
        ("SELEC 1", vec![], "syntax"),
        (
            "DROP TABLE mem",
            vec![],
            "Dangerous SQL operation not allowed",
        ),
        ("SELECT 1; SELECT 2", vec![], "Multiple SQL statements"),
        ("SELECT * FROM nope", vec![], "nope"),
        ("SELECT missing_column FROM mem", vec![], "missing_column"),
        (
            "SELECT * FROM other.disk",
            vec![("x-arc-database", "other")],
            "Cross-database queries",
        ),
    ] {
        let (status, body) = query(&server, sql, &headers).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{sql}: {body}");
        assert_eq!(body["success"], false);
        assert_eq!(body["data"], Value::Null);
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(fragment), "{sql}: {error}");
    }
    let (status, body) = server.post("/api/v1/query", &[], "not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(server.get("/health").await.0, StatusCode::OK);
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn schema_evolves_across_files_and_buffer() {
    let mut server = Server::start(&[]).await;
    write_lines(&server, "evo", &format!("m a=1 {T0_NS}\n")).await;
    server.flush().await;
    write_lines(&server, "evo", &format!("m b=\"x\" {}\n", T0_NS + HOUR_NS)).await;
    server.flush().await;
    // Integers written where floats exist are widened.
    write_lines(
        &server,
        "evo",
        &format!("m a=3i,c=true {}\n", T0_NS + 2 * HOUR_NS),
    )
    .await;
    let data = rows(
        &server,
        "SELECT a, b, c, arrow_typeof(a) AS t FROM evo.m ORDER BY time",
    )
    .await;
    // Whole floats print without a fraction, as in Arc's (Go's) JSON.
    assert_eq!(
        data,
        vec![
            json!([1, null, null, "Float64"]),
            json!([null, "x", null, "Float64"]),
            json!([3, null, true, "Float64"])
        ]
    );
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn a_one_hour_query_opens_only_that_hours_files() {
    let mut server = Server::start(&[]).await;
    // 30 days, one row per hour: one file per hour after the flush.
    let lines: String = (0..30 * 24)
        .map(|h| format!("month v={h}i {}\n", T0_NS + h * HOUR_NS))
        .collect();
    write_lines(&server, "p", &lines).await;
    server.flush().await;

    let sql = "SELECT count(*) AS n, min(v) AS v FROM p.month \
               WHERE time >= '2026-01-20T05:00:00Z' AND time < '2026-01-20T06:00:00Z'";
    let (status, body) = query(&server, sql, &[("x-arc-profile", "true")]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // 2026-01-20T05:00Z is 115 hours after the first row.
    assert_eq!(body["data"], json!([[1, 115]]));
    assert_eq!(body["profile"]["files_scanned"], 1, "{body}");

    let (_, body) = query(
        &server,
        "SELECT count(*) FROM p.month",
        &[("x-arc-profile", "true")],
    )
    .await;
    assert_eq!(body["data"], json!([[720]]));
    assert_eq!(body["profile"]["files_scanned"], 720);
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn arrow_endpoint_streams_ipc_with_optional_compression() {
    let mut server = Server::start(&[]).await;
    let lines: String = (0..1000)
        .map(|i| format!("a,host=h{} v={i}i {}\n", i % 7, T0_NS + i * 1_000_000))
        .collect();
    write_lines(&server, "arrow", &lines).await;
    for compression in [None, Some("zstd"), Some("lz4")] {
        let mut request = server
            .client
            .post(server.url("/api/v1/query/arrow"))
            .header("x-arc-database", "arrow")
            .json(&json!({ "sql": "SELECT v, host FROM a ORDER BY v" }));
        if let Some(c) = compression {
            request = request.header("x-arc-arrow-compression", c);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            "application/vnd.apache.arrow.stream"
        );
        let bytes = response.bytes().await.unwrap();
        let reader =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
        let batches: Vec<_> = reader.collect::<Result<_, _>>().unwrap();
        let total: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(total, 1000, "{compression:?}");
    }
    // Repeating strings are sent dictionary-encoded on request; the values are unchanged.
    let response = server
        .client
        .post(server.url("/api/v1/query/arrow"))
        .header("x-arc-database", "arrow")
        .header("x-arc-arrow-dictionary", "true")
        .json(&json!({ "sql": "SELECT v, host FROM a ORDER BY v" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.bytes().await.unwrap();
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
    let batches: Vec<_> = reader.collect::<Result<_, _>>().unwrap();
    let host =
        arrow::compute::cast(batches[0].column(1), &arrow::datatypes::DataType::Utf8).unwrap();
    assert!(matches!(
        batches[0].schema().field(1).data_type(),
        arrow::datatypes::DataType::Dictionary(..)
    ));
    assert_eq!(
        batches[0].schema().field(0).data_type(),
        &arrow::datatypes::DataType::Int64
    );
    use arrow::array::AsArray;
    assert_eq!(host.as_string::<i32>().value(8), "h1");
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1000);

    let response = server
        .client
        .post(server.url("/api/v1/query/arrow"))
        .header("x-arc-arrow-compression", "brotli")
        .json(&json!({ "sql": "SELECT 1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn slow_queries_time_out_with_504() {
    let mut server = Server::start(&[("ARC_QUERY_TIMEOUT", "1")]).await;
    let (status, body) = query(
        &server,
        "SELECT count(*) FROM generate_series(1, 20000000000) a",
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["error"], "Query timed out");
    assert_eq!(server.get("/health").await.0, StatusCode::OK);
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn listing_estimate_and_paginated_endpoints() {
    let mut server = Server::start(&[]).await;
    let lines: String = (0..30)
        .map(|i| format!("cpu,host=h{} v={i}i {}\n", i % 3, T0_NS + i * 1_000_000_000))
        .collect();
    write_lines(&server, "prod", &lines).await;
    write_lines(&server, "prod", &format!("mem free=1i {T0_NS}\n")).await;
    server.flush().await;

    let get = |path: &'static str| {
        let server = &server;
        async move {
            let (status, text) = server.get(path).await;
            (status, serde_json::from_str::<Value>(&text).unwrap())
        }
    };
    let (status, body) = get("/api/v1/databases").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"count": 1, "databases": [{"name": "prod", "measurement_count": 2}]})
    );
    let (_, body) = get("/api/v1/databases/prod").await;
    assert_eq!(body, json!({"name": "prod", "measurement_count": 2}));
    let (status, body) = get("/api/v1/databases/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("nope"));
    let (_, body) = get("/api/v1/databases/prod/measurements").await;
    assert_eq!(
        body["measurements"][0],
        json!({"name": "cpu", "file_count": 1})
    );
    let (_, body) = get("/api/v1/measurements?database=prod").await;
    assert_eq!(body["count"], 2);
    assert_eq!(body["measurements"][1]["measurement"], "mem");

    let response = server
        .client
        .post(server.url("/api/v1/query/estimate"))
        .json(&json!({"sql": "SELECT * FROM prod.cpu WHERE host = 'h1'"}))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["estimated_rows"], 10);
    assert_eq!(body["warning_level"], "none");

    let (status, body) = get("/api/v1/query/cpu?database=prod&limit=2&offset=1&order_by=v%20DESC&where=host%20%3D%20%27h0%27").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let values: Vec<i64> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row[2].as_i64().unwrap())
        .collect();
    assert_eq!(values, vec![24, 21]);
    let (status, body) =
        get("/api/v1/query/cpu?database=prod&where=1%3D1%3B%20DROP%20TABLE%20cpu").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["success"], false);
    assert!(server.stop().await.success());
}

/// The SQL idioms listed in docs/sql.md: each must run.
#[tokio::test]
async fn arc_sql_idioms_run() {
    let mut server = Server::start(&[]).await;
    let lines: String = (0..20)
        .map(|i| {
            format!(
                "cpu,host=h{} usage={i} {}\n",
                i % 2,
                T0_NS + i * 60_000_000_000
            )
        })
        .chain((0..2).map(|i| format!("hosts,host=h{i} rack=\"r{i}\" {T0_NS}\n")))
        .collect();
    write_lines(&server, "default", &lines).await;
    let idioms = [
        (
            "SELECT time_bucket(INTERVAL '5 minutes', time) AS bucket, avg(usage) AS avg \
             FROM cpu GROUP BY bucket ORDER BY bucket LIMIT 1",
            json!([["2026-01-15T10:00:00Z", 2]]),
        ),
        (
            "SELECT date_trunc('hour', time) AS hour, count(*) AS n FROM cpu GROUP BY hour",
            json!([["2026-01-15T10:00:00Z", 20]]),
        ),
        (
            "SELECT count(*) FROM cpu WHERE time > NOW() - INTERVAL '100000 days'",
            json!([[20]]),
        ),
        (
            "SELECT to_timestamp(1768471200) = TIMESTAMP '2026-01-15T10:00:00' AS same",
            json!([[true]]),
        ),
        (
            "SELECT epoch(time) AS s, epoch_ms(time) AS ms, epoch_us(time) AS us, \
             epoch_ns(time) AS ns FROM cpu ORDER BY time LIMIT 1",
            json!([[
                1_768_471_200,
                1_768_471_200_000i64,
                1_768_471_200_000_000i64,
                1_768_471_200_000_000_000i64
            ]]),
        ),
        (
            "SELECT usage FROM cpu ORDER BY time LIMIT 2 OFFSET 3",
            json!([[3], [4]]),
        ),
        (
            "SELECT host, usage, row_number() OVER (PARTITION BY host ORDER BY time DESC) AS rn \
             FROM cpu ORDER BY host, rn LIMIT 1",
            json!([["h0", 18, 1]]),
        ),
        (
            "SELECT c.host, h.rack, count(*) AS n FROM cpu c JOIN hosts h ON c.host = h.host \
             GROUP BY c.host, h.rack ORDER BY c.host",
            json!([["h0", "r0", 10], ["h1", "r1", 10]]),
        ),
    ];
    for (sql, expected) in idioms {
        let (status, body) = query(&server, sql, &[]).await;
        assert_eq!(status, StatusCode::OK, "{sql}: {body}");
        assert_eq!(body["data"], expected, "{sql}");
    }
    assert!(server.stop().await.success());
}

/// Resident set high-water mark of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test]
async fn a_20_million_row_arrow_result_streams_in_bounded_memory() {
    const ROWS: i64 = 20_000_000;
    const PER_REQUEST: i64 = 500_000;
    let mut server = Server::start(&[("ARC_INGEST_MAX_BUFFER_SIZE", "1000000")]).await;
    for chunk in 0..ROWS / PER_REQUEST {
        let first = chunk * PER_REQUEST;
        let ids: Vec<i64> = (first..first + PER_REQUEST).collect();
        let payload = crate::harness::map(vec![
            ("m", rmpv::Value::from("big")),
            (
                "columns",
                crate::harness::map(vec![
                    (
                        "time",
                        rmpv::Value::Array(
                            ids.iter()
                                .map(|i| rmpv::Value::from(T0_NS / 1000 + i * 1000))
                                .collect(),
                        ),
                    ),
                    (
                        "v",
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
    }
    assert!(server.stop().await.success());
    // A fresh process, so its memory high-water mark is the query's alone.
    server.restart().await;
    let pid = server.pid();

    let response = server
        .client
        .post(server.url("/api/v1/query/arrow"))
        .json(&json!({ "sql": "SELECT time, v FROM mem.big" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.bytes().await.unwrap();
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
    let mut rows = 0;
    for batch in reader {
        rows += batch.unwrap().num_rows() as i64;
    }
    assert_eq!(rows, ROWS);
    let peak = peak_rss(pid);
    eprintln!("20M-row Arrow query: server peak RSS {} MiB", peak >> 20);
    assert!(peak < 1 << 30, "server peaked at {} MiB", peak >> 20);
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn msgpack_endpoint_returns_columns_with_types() {
    let mut server = Server::start(&[]).await;
    write_lines(
        &server,
        "mp",
        &format!(
            "m,host=a v=1.5,n=2i {T0_NS}\nm,host=b n=3i {}\n",
            T0_NS + 1000
        ),
    )
    .await;
    let response = server
        .client
        .post(server.url("/api/v1/query/msgpack"))
        .header("x-arc-database", "mp")
        .json(&json!({ "sql": "SELECT time, host, n, v FROM m ORDER BY time" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/msgpack");
    let bytes = response.bytes().await.unwrap();
    let value = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
    let field = |key: &str| {
        value
            .as_map()
            .unwrap()
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(field("success"), rmpv::Value::from(true));
    assert_eq!(field("row_count"), rmpv::Value::from(2));
    let types: Vec<String> = field("types")
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, ["timestamp[us]", "utf8", "int64", "float64"]);
    let data = field("data");
    let columns = data.as_array().unwrap();
    assert_eq!(
        columns[0].as_array().unwrap()[0],
        rmpv::Value::from(T0_NS / 1000)
    );
    assert_eq!(columns[1].as_array().unwrap()[1], rmpv::Value::from("b"));
    assert_eq!(columns[3].as_array().unwrap()[0], rmpv::Value::from(1.5));
    assert!(columns[3].as_array().unwrap()[1].is_nil());
    assert!(server.stop().await.success());
}

/// Arc clients read the execution time from an HTTP trailer; reqwest hides trailers, so this
/// speaks HTTP/1.1 directly. The HTTP stack sends trailers to clients that accept them
/// (`TE: trailers`).
#[tokio::test]
async fn arrow_responses_end_with_the_execution_time_trailer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = Server::start(&[]).await;
    let body = r#"{"sql": "SELECT 1 AS one"}"#;
    let request = format!(
        "POST /api/v1/query/arrow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nAuthorization: Bearer {}\r\nTE: trailers\r\n\
         Connection: close\r\n\r\n{body}",
        body.len(),
        crate::harness::ADMIN_TOKEN,
    );
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("trailer: arc-execution-time-ms"), "{text}");
    let tail = &text[text.rfind("\r\n0\r\n").expect("last chunk")..];
    let value = tail
        .split("arc-execution-time-ms:")
        .nth(1)
        .unwrap_or_else(|| panic!("no trailer after the last chunk: {tail:?}"))
        .trim();
    assert!(value.parse::<f64>().is_ok(), "{value}");
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn json_and_msgpack_results_are_compressed_on_request() {
    let mut server = Server::start(&[]).await;
    let lines: String = (0..5000)
        .map(|i| format!("c,host=h{} v={i}i {}\n", i % 7, T0_NS + i * 1_000_000))
        .collect();
    write_lines(&server, "enc", &lines).await;
    let sql = json!({ "sql": "SELECT host, v FROM enc.c ORDER BY v" });
    let fetch = |path: &'static str, accept: Option<&'static str>| {
        let mut request = server.client.post(server.url(path)).json(&sql);
        if let Some(accept) = accept {
            request = request.header("accept-encoding", accept);
        }
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let encoding = response
                .headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap().to_string());
            (encoding, response.bytes().await.unwrap().to_vec())
        }
    };
    for path in ["/api/v1/query", "/api/v1/query/msgpack"] {
        let (encoding, plain) = fetch(path, None).await;
        assert_eq!(encoding, None);
        let (encoding, zstd) = fetch(path, Some("gzip, zstd")).await;
        assert_eq!(encoding.as_deref(), Some("zstd"), "{path}");
        let (encoding, gzip) = fetch(path, Some("gzip, zstd;q=0")).await;
        assert_eq!(encoding.as_deref(), Some("gzip"), "{path}");
        assert!(zstd.len() < plain.len() / 2 && gzip.len() < plain.len() / 2);

        let unzstd = zstd::decode_all(zstd.as_slice()).unwrap();
        let mut ungzip = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(gzip.as_slice()),
            &mut ungzip,
        )
        .unwrap();
        // Everything but the timing fields must match the uncompressed answer.
        let comparable = |bytes: &[u8]| -> String {
            let timing = |key: &str| key == "execution_time_ms" || key == "timestamp";
            if path.ends_with("msgpack") {
                let value = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
                let kept: Vec<_> = value
                    .as_map()
                    .unwrap()
                    .iter()
                    .filter(|(k, _)| !timing(k.as_str().unwrap()))
                    .collect();
                format!("{kept:?}")
            } else {
                let mut value: Value = serde_json::from_slice(bytes).unwrap();
                value.as_object_mut().unwrap().retain(|k, _| !timing(k));
                value.to_string()
            }
        };
        let expected = comparable(&plain);
        assert!(expected.contains("5000"), "{path}: {expected}");
        assert_eq!(comparable(&unzstd), expected, "{path}");
        assert_eq!(comparable(&ungzip), expected, "{path}");
    }
    // Errors stay plain JSON.
    let response = server
        .client
        .post(server.url("/api/v1/query"))
        .header("accept-encoding", "zstd")
        .json(&json!({ "sql": "SELECT * FROM enc.missing" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.headers().get("content-encoding").is_none());
    assert!(server.stop().await.success());
}

/// `data` and `files_scanned` of a profiled query that must succeed.
async fn profiled(server: &Server, sql: &str) -> (Value, u64) {
    let (status, body) = query(server, sql, &[("x-arc-profile", "true")]).await;
    assert_eq!(status, StatusCode::OK, "{sql}: {body}");
    let scanned = body["profile"]["files_scanned"].as_u64().unwrap();
    (body["data"].clone(), scanned)
}

#[tokio::test]
async fn the_last_point_of_every_series_reads_no_file_once_warm_and_equals_a_full_scan() {
    let mut server = Server::start(&[
        ("ARC_DELETE_ENABLED", "true"),
        ("ARC_INGEST_MAX_BUFFER_AGE_MS", "3600000"),
    ])
    .await;
    let at = |hour: i64, second: i64| T0_NS + hour * HOUR_NS + second * 1_000_000_000;
    // Three hours, three files: host c stops in the first hour, so its last point is only in
    // the oldest file; host b's last time has two rows.
    let mut lines = String::new();
    for hour in 0..3 {
        for second in [0, 10] {
            for host in ["a", "b"] {
                let v = hour * 100 + second;
                lines.push_str(&format!(
                    "m,host={host} v={v},w={v}i {}\n",
                    at(hour, second)
                ));
            }
        }
    }
    lines.push_str(&format!("m,host=c v=7,w=7i {}\n", at(0, 20)));
    lines.push_str(&format!("m,host=b v=210,w=210i {}\n", at(2, 10)));
    write_lines(&server, "lp", &lines).await;
    server.flush().await;
    // A fourth hour flushed, then rows left in the buffer: a newer a, and d, nowhere else.
    write_lines(
        &server,
        "lp",
        &format!("m,host=a v=300,w=300i {}\n", at(3, 0)),
    )
    .await;
    server.flush().await;
    write_lines(
        &server,
        "lp",
        &format!(
            "m,host=a v=301,w=301i {}\nm,host=d v=1,w=1i {}\n",
            at(3, 5),
            at(1, 0)
        ),
    )
    .await;
    const FILES: u64 = 4;

    // Each form as users write it, and the same question with a filter on `time` that keeps
    // every row but rules the summaries out (it reads a column that is not a group).
    let forms = |time_filter: Option<&str>| {
        let only = |f: &str| {
            time_filter.map_or(String::new(), |t| format!("WHERE {}", t.replace("time", f)))
        };
        let and = time_filter.map_or(String::new(), |t| format!("AND {t}"));
        [
            format!(
                "SELECT c.host, c.v, c.w, c.time FROM lp.m c JOIN \
                 (SELECT host, max(time) AS last FROM lp.m {} GROUP BY host) l \
                 ON c.host = l.host AND c.time = l.last {} ORDER BY c.host, c.v",
                only("time"),
                only("c.time")
            ),
            format!(
                "SELECT DISTINCT ON (host) host, v, time FROM lp.m {} ORDER BY host, time DESC",
                only("time")
            ),
            format!(
                "SELECT host, last_value(v ORDER BY time) AS v, max(time) AS t \
                 FROM lp.m {} GROUP BY host ORDER BY host",
                only("time")
            ),
            format!(
                "SELECT host, v, time FROM lp.m WHERE host = 'c' {and} ORDER BY time DESC LIMIT 1"
            ),
            format!("SELECT max(time) AS last FROM lp.m {}", only("time")),
            format!(
                "SELECT last_value(w ORDER BY time) AS w FROM lp.m WHERE host IN ('b', 'c') {and}"
            ),
        ]
    };
    let summarised = forms(None);
    let full = forms(Some("time >= '2000-01-01T00:00:00Z'"));
    // The join reads the measurement twice.
    let scans = [2, 1, 1, 1, 1, 1];
    for ((fast, slow), scans) in summarised.iter().zip(&full).zip(scans) {
        let (expected, scanned) = profiled(&server, slow).await;
        assert_eq!(scanned, scans * FILES, "{slow}");
        let (cold, _) = profiled(&server, fast).await;
        let (warm, scanned) = profiled(&server, fast).await;
        assert_eq!(cold, expected, "{fast}");
        assert_eq!(warm, expected, "{fast}");
        assert_eq!(scanned, 0, "warm, no file is read: {fast}");
    }
    // Questions that need more than the latest rows read every file, however often asked.
    for (sql, files) in [
        (
            "SELECT host, max(time) AS t, count(*) AS n FROM lp.m GROUP BY host",
            FILES,
        ),
        (
            "SELECT host, first_value(v ORDER BY time) AS v FROM lp.m GROUP BY host",
            FILES,
        ),
        (
            "SELECT host, last_value(v ORDER BY w) AS v FROM lp.m GROUP BY host",
            FILES,
        ),
        ("SELECT * FROM lp.m ORDER BY time DESC LIMIT 2", FILES),
        // The first two hours' files.
        (
            "SELECT * FROM lp.m WHERE time < '2026-01-15T12:00:00Z' ORDER BY time DESC LIMIT 1",
            2,
        ),
    ] {
        profiled(&server, sql).await;
        let (_, scanned) = profiled(&server, sql).await;
        assert_eq!(scanned, files, "{sql}");
    }
    let (join, _) = profiled(&server, &summarised[0]).await;
    let points: Vec<(String, i64, String)> = join
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let text = |i: usize| row[i].as_str().unwrap().to_string();
            (text(0), row[2].as_i64().unwrap(), text(3))
        })
        .collect();
    let point = |host: &str, w: i64, time: &str| (host.to_string(), w, time.to_string());
    assert_eq!(
        points,
        vec![
            point("a", 301, "2026-01-15T13:00:05Z"),
            point("b", 210, "2026-01-15T12:00:10Z"),
            point("b", 210, "2026-01-15T12:00:10Z"),
            point("c", 7, "2026-01-15T10:00:20Z"),
            point("d", 1, "2026-01-15T11:00:00Z"),
        ],
        "buffered rows count, ties are all kept"
    );

    // A flush adds files (hours 1 and 3 from the buffered rows, and hour 4): only they are
    // read, and folded into the rest.
    write_lines(
        &server,
        "lp",
        &format!("m,host=a v=400,w=400i {}\n", at(4, 0)),
    )
    .await;
    server.flush().await;
    let (added, scanned) = profiled(&server, &summarised[0]).await;
    assert_eq!(scanned, 3, "only the new files are read");
    let (expected, _) = profiled(&server, &full[0]).await;
    assert_eq!(added, expected);
    assert!(
        added.to_string().contains("2026-01-15T14:00:00Z"),
        "{added}"
    );

    // A delete rewrites c's file; the summaries follow the new file.
    let (status, body) = server
        .post(
            "/api/v1/delete",
            &[("content-type", "application/json")],
            json!({"database": "lp", "measurement": "m", "where": "host = 'c'", "confirm": true})
                .to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (after, _) = profiled(&server, &summarised[0]).await;
    let (expected, _) = profiled(&server, &full[0]).await;
    assert_eq!(after, expected);
    assert!(!after.to_string().contains("\"c\""), "{after}");
    assert!(server.stop().await.success());
}
