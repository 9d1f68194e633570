//! Every write endpoint, plain and compressed, stores exactly what was sent at Arc's keys.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType};
use chrono::{DateTime, Datelike, Timelike};
use reqwest::StatusCode;
use rmpv::Value;

use crate::harness::{Compression, Server, StoredFile, map, msgpack, stored_files};

/// One stored or expected cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
    Null,
}

pub type Row = BTreeMap<String, Cell>;

/// What a measurement should hold after the writes: rows (with `time` in µs) and column types.
pub struct Expected {
    pub database: String,
    pub measurement: String,
    pub rows: Vec<(i64, Row)>,
    pub types: BTreeMap<String, DataType>,
    pub tags: Option<&'static str>,
}

fn row(cells: &[(&str, Cell)]) -> Row {
    cells
        .iter()
        .map(|(name, cell)| (name.to_string(), cell.clone()))
        .collect()
}

/// Reads a file's rows as (time µs, cells), asserting the schema layout Arc uses.
pub fn file_rows(file: &StoredFile) -> Vec<(i64, Row)> {
    let mut rows = Vec::new();
    for batch in &file.batches {
        let schema = batch.schema();
        assert_eq!(schema.field(0).name(), "time", "{}", file.key);
        assert_eq!(
            schema.field(0).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            "{}",
            file.key
        );
        let names: Vec<&String> = schema.fields().iter().skip(1).map(|f| f.name()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "columns after time are in name order");
        let times = batch.column(0).as_primitive::<TimestampMicrosecondType>();
        for i in 0..batch.num_rows() {
            let mut cells = Row::new();
            for (c, field) in schema.fields().iter().enumerate().skip(1) {
                let column = batch.column(c);
                let cell = if column.is_null(i) {
                    Cell::Null
                } else {
                    match field.data_type() {
                        DataType::Int64 => Cell::Int(column.as_primitive::<Int64Type>().value(i)),
                        DataType::Float64 => {
                            Cell::Float(column.as_primitive::<Float64Type>().value(i))
                        }
                        DataType::Utf8 => Cell::Text(column.as_string::<i32>().value(i).into()),
                        DataType::Boolean => Cell::Bool(column.as_boolean().value(i)),
                        other => panic!("unexpected column type {other}"),
                    }
                };
                cells.insert(field.name().clone(), cell);
            }
            rows.push((times.value(i), cells));
        }
    }
    rows
}

/// Asserts a file's key follows `{db}/{m}/{YYYY}/{MM}/{DD}/{HH}/{m}_{YYYYMMDD}_{HHMMSS}_{ns}.parquet`
/// with the directory hour holding every row's time.
pub fn assert_layout(file: &StoredFile, database: &str, measurement: &str) {
    let parts: Vec<&str> = file.key.split('/').collect();
    assert_eq!(parts.len(), 7, "{}", file.key);
    assert_eq!(
        (parts[0], parts[1]),
        (database, measurement),
        "{}",
        file.key
    );
    let name = parts[6]
        .strip_prefix(&format!("{measurement}_"))
        .and_then(|n| n.strip_suffix(".parquet"))
        .unwrap_or_else(|| panic!("bad file name {}", file.key));
    let pieces: Vec<&str> = name.split('_').collect();
    assert_eq!(
        pieces.iter().map(|p| p.len()).collect::<Vec<_>>(),
        vec![8, 6, 9],
        "{}",
        file.key
    );
    assert!(pieces.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit())));
    for (time, _) in file_rows(file) {
        let t = DateTime::from_timestamp_micros(time).unwrap();
        let dir = format!(
            "{:04}/{:02}/{:02}/{:02}",
            t.year(),
            t.month(),
            t.day(),
            t.hour()
        );
        assert_eq!(parts[2..6].join("/"), dir, "row time {t} in {}", file.key);
    }
}

/// Flushes, then checks the measurement's files hold exactly the expected rows and types.
pub async fn assert_stored(server: &Server, expected: &Expected) {
    let storage = server.storage();
    let prefix = format!("{}/{}/", expected.database, expected.measurement);
    let files = stored_files(&storage, &prefix).await;
    assert!(!files.is_empty(), "no files under {prefix}");
    let mut rows = Vec::new();
    for file in &files {
        assert_layout(file, &expected.database, &expected.measurement);
        assert_eq!(
            file.metadata.get("arc:tags").map(String::as_str),
            expected.tags,
            "tags metadata of {}",
            file.key
        );
        let schema = file.batches[0].schema();
        for field in schema.fields().iter().skip(1) {
            assert_eq!(
                Some(field.data_type()),
                expected.types.get(field.name()),
                "type of {} in {}",
                field.name(),
                file.key
            );
        }
        rows.extend(file_rows(file));
    }
    rows.sort_by_key(|a| a.0);
    let mut want = expected.rows.clone();
    want.sort_by_key(|a| a.0);
    assert_eq!(rows, want, "rows of {prefix}");
}

const HOUR_US: i64 = 3_600_000_000;
/// 2026-01-15T10:00:00Z
const BASE_US: i64 = 1_768_471_200_000_000;

fn columnar_payload(measurement: &str) -> (Value, Expected) {
    let times_ms = [
        BASE_US / 1000,
        BASE_US / 1000 + 1500,
        (BASE_US + HOUR_US) / 1000 + 7,
    ];
    let payload = map(vec![
        ("m", Value::from(measurement)),
        (
            "columns",
            map(vec![
                (
                    "time",
                    Value::Array(times_ms.iter().map(|t| Value::from(*t)).collect()),
                ),
                (
                    "host",
                    Value::Array(vec!["a".into(), "b".into(), Value::Nil]),
                ),
                (
                    "usage",
                    Value::Array(vec![1.5.into(), Value::Nil, 3.25.into()]),
                ),
                ("count", Value::Array(vec![1.into(), 2.into(), (-3).into()])),
                (
                    "ok",
                    Value::Array(vec![true.into(), false.into(), Value::Nil]),
                ),
            ]),
        ),
    ]);
    let types = BTreeMap::from([
        ("host".to_string(), DataType::Utf8),
        ("usage".to_string(), DataType::Float64),
        ("count".to_string(), DataType::Int64),
        ("ok".to_string(), DataType::Boolean),
    ]);
    let rows = vec![
        (
            times_ms[0] * 1000,
            row(&[
                ("host", Cell::Text("a".into())),
                ("usage", Cell::Float(1.5)),
                ("count", Cell::Int(1)),
                ("ok", Cell::Bool(true)),
            ]),
        ),
        (
            times_ms[1] * 1000,
            row(&[
                ("host", Cell::Text("b".into())),
                ("usage", Cell::Null),
                ("count", Cell::Int(2)),
                ("ok", Cell::Bool(false)),
            ]),
        ),
        (
            times_ms[2] * 1000,
            row(&[
                ("host", Cell::Null),
                ("usage", Cell::Float(3.25)),
                ("count", Cell::Int(-3)),
                ("ok", Cell::Null),
            ]),
        ),
    ];
    (
        payload,
        Expected {
            database: String::new(),
            measurement: measurement.into(),
            rows,
            types,
            tags: None,
        },
    )
}

fn row_form_payload(measurement: &str) -> (Vec<Value>, Expected) {
    let base_s = BASE_US / 1_000_000;
    let rows = vec![
        map(vec![
            ("m", Value::from(measurement)),
            ("t", Value::from(base_s)),
            ("h", Value::from("srv1")),
            ("fields", map(vec![("temp", 21.5.into()), ("n", 3.into())])),
            ("tags", map(vec![("region", "eu".into())])),
        ]),
        map(vec![
            ("m", Value::from(measurement)),
            ("t", Value::from(base_s + 60)),
            ("fields", map(vec![("temp", 22.0.into())])),
            ("tags", map(vec![("region", "us".into())])),
        ]),
    ];
    let expected = Expected {
        database: String::new(),
        measurement: measurement.into(),
        rows: vec![
            (
                BASE_US,
                row(&[
                    ("host", Cell::Text("srv1".into())),
                    ("region", Cell::Text("eu".into())),
                    ("temp", Cell::Float(21.5)),
                    ("n", Cell::Int(3)),
                ]),
            ),
            (
                BASE_US + 60_000_000,
                row(&[
                    ("host", Cell::Text("unknown".into())),
                    ("region", Cell::Text("us".into())),
                    ("temp", Cell::Float(22.0)),
                    ("n", Cell::Null),
                ]),
            ),
        ],
        types: BTreeMap::from([
            ("host".to_string(), DataType::Utf8),
            ("region".to_string(), DataType::Utf8),
            ("temp".to_string(), DataType::Float64),
            ("n".to_string(), DataType::Int64),
        ]),
        tags: Some("host,region"),
    };
    (rows, expected)
}

/// `t` converts a µs time into the request's precision.
fn line_protocol_payload(measurement: &str, t: fn(i64) -> i64) -> (String, Expected) {
    let body = format!(
        "# a comment\n\
         {measurement},host=web\\ 1,dc=x temp=20.5,load=3i,up=true,msg=\"say \\\"hi\\\"\" {}\n\
         \n\
         {measurement},host=web2 temp=19,up=f {}\n",
        t(BASE_US),
        t(BASE_US + 2 * HOUR_US),
    );
    let expected = Expected {
        database: String::new(),
        measurement: measurement.into(),
        rows: vec![
            (
                BASE_US,
                row(&[
                    ("host", Cell::Text("web 1".into())),
                    ("dc", Cell::Text("x".into())),
                    ("temp", Cell::Float(20.5)),
                    ("load", Cell::Int(3)),
                    ("up", Cell::Bool(true)),
                    ("msg", Cell::Text("say \"hi\"".into())),
                ]),
            ),
            (
                BASE_US + 2 * HOUR_US,
                row(&[
                    ("host", Cell::Text("web2".into())),
                    ("dc", Cell::Null),
                    ("temp", Cell::Float(19.0)),
                    ("load", Cell::Null),
                    ("up", Cell::Bool(false)),
                    ("msg", Cell::Null),
                ]),
            ),
        ],
        types: BTreeMap::from([
            ("host".to_string(), DataType::Utf8),
            ("dc".to_string(), DataType::Utf8),
            ("temp".to_string(), DataType::Float64),
            ("load".to_string(), DataType::Int64),
            ("up".to_string(), DataType::Boolean),
            ("msg".to_string(), DataType::Utf8),
        ]),
        tags: Some("dc,host"),
    };
    (body, expected)
}

fn suffix(compression: Compression) -> &'static str {
    match compression {
        Compression::None => "plain",
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    }
}

async fn post_ok(server: &Server, path: &str, headers: &[(&str, &str)], body: Vec<u8>) {
    let (status, text) = server.post(path, headers, body).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{path}: {text}");
}

/// Writes through every endpoint and form with every compression, then checks storage.
pub async fn every_endpoint_stores_what_was_sent(server: &Server) {
    let mut expectations = Vec::new();
    for compression in Compression::ALL {
        let s = suffix(compression);

        let (payload, mut exp) = columnar_payload(&format!("columnar_{s}"));
        post_ok(
            server,
            "/api/v1/write/msgpack",
            &[
                ("x-arc-database", "mp"),
                ("content-type", "application/msgpack"),
            ],
            compression.apply(&msgpack(&payload)),
        )
        .await;
        exp.database = "mp".into();
        expectations.push(exp);

        let (rows, mut exp) = row_form_payload(&format!("rows_{s}"));
        post_ok(
            server,
            "/api/v1/write/msgpack",
            &[("x-arc-database", "mp")],
            compression.apply(&msgpack(&Value::Array(rows))),
        )
        .await;
        exp.database = "mp".into();
        expectations.push(exp);

        // `batch` wrapping a columnar item and a row item, default database.
        let (columnar, mut exp_columnar) = columnar_payload(&format!("batch_col_{s}"));
        let (rows, mut exp_rows) = row_form_payload(&format!("batch_row_{s}"));
        let mut items = vec![columnar];
        items.extend(rows);
        post_ok(
            server,
            "/api/v1/write/msgpack",
            &[],
            compression.apply(&msgpack(&map(vec![("batch", Value::Array(items))]))),
        )
        .await;
        exp_columnar.database = "default".into();
        exp_rows.database = "default".into();
        expectations.push(exp_columnar);
        expectations.push(exp_rows);

        let (body, mut exp) = line_protocol_payload(&format!("influx1_{s}"), |us| us / 1000);
        post_ok(
            server,
            "/write?db=lp1&precision=ms",
            &[],
            compression.apply(body.as_bytes()),
        )
        .await;
        exp.database = "lp1".into();
        expectations.push(exp);

        let (body, mut exp) = line_protocol_payload(&format!("influx2_{s}"), |us| us / 1_000_000);
        post_ok(
            server,
            "/api/v2/write?bucket=lp2&precision=s&org=ignored",
            &[],
            compression.apply(body.as_bytes()),
        )
        .await;
        exp.database = "lp2".into();
        expectations.push(exp);

        // Header beats the query parameter; nanoseconds by default.
        let (body, mut exp) = line_protocol_payload(&format!("arc_lp_{s}"), |us| us * 1000);
        post_ok(
            server,
            "/api/v1/write/line-protocol?db=ignored",
            &[("x-arc-database", "lp3")],
            compression.apply(body.as_bytes()),
        )
        .await;
        exp.database = "lp3".into();
        expectations.push(exp);
    }
    server.flush().await;
    for expected in &expectations {
        assert_stored(server, expected).await;
    }
}

#[tokio::test]
async fn every_endpoint_stores_what_was_sent_on_local_disk() {
    let mut server = Server::start(&[]).await;
    every_endpoint_stores_what_was_sent(&server).await;
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn starts_without_config_and_reports_health_and_readiness() {
    let mut server = Server::start(&[]).await;
    let (status, body) = server.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    let (status, body) = server.get("/ready").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"],
        "ready"
    );
    assert!(!server.dir.join("arc.toml").exists());
    assert!(server.dir.join("data/wal").is_dir(), "WAL on by default");
    assert!(server.stop().await.success(), "graceful stop exits 0");
}

#[tokio::test]
async fn buffers_flush_by_size_by_age_and_on_shutdown() {
    let mut server = Server::start(&[
        ("ARC_INGEST_MAX_BUFFER_SIZE", "10"),
        ("ARC_INGEST_MAX_BUFFER_AGE_MS", "3600000"),
    ])
    .await;
    let storage = server.storage();
    let lines: String = (0..10)
        .map(|i| format!("size v={i} {}\n", BASE_US * 1000 + i))
        .collect();
    post_ok(&server, "/write?db=f", &[], lines.into_bytes()).await;
    poll_until(|| async { !stored_files(&storage, "f/size/").await.is_empty() }).await;

    post_ok(
        &server,
        "/write?db=f",
        &[],
        b"shutdown v=1 1768471200000000000".to_vec(),
    )
    .await;
    assert!(stored_files(&storage, "f/shutdown/").await.is_empty());
    assert!(server.stop().await.success());
    assert_eq!(stored_files(&storage, "f/shutdown/").await.len(), 1);

    server
        .restart_with(&[("ARC_INGEST_MAX_BUFFER_AGE_MS", "200")])
        .await;
    post_ok(
        &server,
        "/write?db=f",
        &[],
        b"age v=1 1768471200000000000".to_vec(),
    )
    .await;
    poll_until(|| async { !stored_files(&storage, "f/age/").await.is_empty() }).await;
    assert!(server.stop().await.success());
}

/// Polls a condition for up to 30 s.
pub async fn poll_until<F, Fut>(mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !condition().await {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met in 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn files_are_sorted_by_sort_keys_then_time_with_configured_compression_and_statistics() {
    let mut server = Server::start(&[
        ("ARC_INGEST_SORT_KEYS", "sorted:host"),
        ("ARC_INGEST_COMPRESSION", "zstd"),
    ])
    .await;
    let t = |s: i64| (BASE_US + s * 1_000_000) * 1000;
    let body = format!(
        "sorted,host=b v=1 {}\nsorted,host=a v=2 {}\nsorted,host=b v=3 {}\nsorted,host=a v=4 {}\n\
         plain,host=b v=1 {}\nplain,host=a v=2 {}\n",
        t(3),
        t(4),
        t(1),
        t(2),
        t(9),
        t(5),
    );
    post_ok(&server, "/write?db=s", &[], body.into_bytes()).await;
    server.flush().await;
    let storage = server.storage();

    let sorted = &stored_files(&storage, "s/sorted/").await[0];
    let order: Vec<(String, i64)> = file_rows(sorted)
        .into_iter()
        .map(|(time, cells)| match &cells["host"] {
            Cell::Text(host) => (host.clone(), (time - BASE_US) / 1_000_000),
            other => panic!("host is {other:?}"),
        })
        .collect();
    let expected = [("a", 2), ("a", 4), ("b", 1), ("b", 3)].map(|(h, s)| (h.to_string(), s));
    assert_eq!(order, expected);

    let plain = &stored_files(&storage, "s/plain/").await[0];
    let times: Vec<i64> = file_rows(plain).into_iter().map(|(t, _)| t).collect();
    assert!(times.is_sorted(), "default sort key is time");

    let bytes = storage.get(&sorted.key).await.unwrap();
    let reader = parquet::file::serialized_reader::SerializedFileReader::new(bytes).unwrap();
    use parquet::file::reader::FileReader;
    let row_group = reader.metadata().row_group(0);
    for column in row_group.columns() {
        assert!(matches!(
            column.compression(),
            parquet::basic::Compression::ZSTD(_)
        ));
        assert!(column.statistics().is_some(), "statistics on");
    }
    assert!(server.stop().await.success());
}

/// Back-pressure: above half of `ingest.max_buffered_bytes` a write waits for flushes instead of
/// being buffered at once; writes that would go past the limit are refused with 503 and
/// `Retry-After` and leave nothing behind; a flush lets the waiting write through.
#[tokio::test]
async fn writes_wait_above_half_the_buffer_limit_and_are_refused_past_it() {
    let server = Server::start(&[
        ("ARC_INGEST_MAX_BUFFERED_BYTES", "2MB"),
        ("ARC_INGEST_MAX_BUFFER_SIZE", "100000000"),
        ("ARC_INGEST_MAX_BUFFER_AGE_MS", "3600000"),
    ])
    .await;
    const ROWS: i64 = 5_000;
    let post = |batch: i64| {
        let body: String = (0..ROWS)
            .map(|i| {
                let id = batch * ROWS + i;
                format!(
                    "cpu,host=h{} id={id}i,v={id}.5 {}\n",
                    id % 7,
                    1_700_000_000_000_000_000 + id
                )
            })
            .collect();
        let request = server
            .client
            .post(server.url("/write?db=pressure"))
            .body(body)
            .send();
        tokio::spawn(async move {
            let response = request.await.unwrap();
            let retry_after = response.headers().get("retry-after").cloned();
            let status = response.status();
            (status, retry_after, response.text().await.unwrap())
        })
    };
    // Writes one batch after another until one is still unanswered after 2 s: it waits.
    let fill_until_one_waits = async |first: i64| {
        let mut rows = 0;
        for batch in first..first + 200 {
            let mut write = post(batch);
            match tokio::time::timeout(std::time::Duration::from_secs(2), &mut write).await {
                Ok(answer) => {
                    let (status, _, body) = answer.unwrap();
                    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
                    rows += ROWS;
                }
                Err(_) => return (rows, write),
            }
        }
        panic!("no write waited although 200 batches were buffered");
    };

    let (mut acknowledged, waiting) = fill_until_one_waits(0).await;
    eprintln!("{acknowledged} rows acknowledged before a write waited");
    let flushed_at = std::time::Instant::now();
    server.flush().await;
    let (status, _, body) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    acknowledged += ROWS;
    eprintln!(
        "the waiting write was acknowledged {:.2} s after the flush was asked",
        flushed_at.elapsed().as_secs_f64()
    );

    let (rows, waiting) = fill_until_one_waits(1_000).await;
    acknowledged += rows;
    let mut crowd: Vec<_> = (2_000..2_020).map(post).collect();
    crowd.push(waiting);
    let (mut refused, mut stored) = (0, 0);
    for write in crowd {
        let (status, retry_after, body) = write.await.unwrap();
        match status {
            StatusCode::NO_CONTENT => stored += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                refused += 1;
                assert!(retry_after.is_some(), "503 without Retry-After");
                let error: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert!(
                    error["error"].as_str().unwrap().contains("buffer"),
                    "{body}"
                );
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    eprintln!("of 21 writes sent above half the limit: {stored} stored, {refused} refused");
    assert!(refused > 0, "nothing was refused past the limit");
    acknowledged += stored * ROWS;
    server.flush().await;
    let (status, _, body) = post(5_000).await.unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    acknowledged += ROWS;
    let counted = crate::harness::query(&server, "SELECT count(*) AS n FROM pressure.cpu").await;
    assert_eq!(
        counted[0][0], acknowledged,
        "stored rows against acknowledged ones"
    );
}
