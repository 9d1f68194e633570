//! Bad requests get the documented status and a JSON error, store nothing, and leave the
//! server up.

use reqwest::StatusCode;
use rmpv::Value;

use crate::harness::{Server, gzip, map, msgpack, stored_files};

const T: &str = "1768471200000000000";

/// Asserts a status and an `{"error": "..."}` body containing `fragment`.
async fn expect_error(
    server: &Server,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    status: StatusCode,
    fragment: &str,
) {
    let (got, text) = server.post(path, headers, body).await;
    assert_eq!(got, status, "{path}: {text}");
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    let message = json["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {text}"));
    assert!(
        message.contains(fragment),
        "error {message:?} lacks {fragment:?}"
    );
}

fn columnar(measurement: &str, columns: Vec<(&str, Value)>) -> Vec<u8> {
    msgpack(&map(vec![
        ("m", Value::from(measurement)),
        ("columns", map(columns)),
    ]))
}

#[tokio::test]
async fn bad_requests_are_rejected_whole_and_the_server_stays_up() {
    let mut server = Server::start(&[("ARC_SERVER_MAX_PAYLOAD_SIZE", "64KB")]).await;
    let mp = "/api/v1/write/msgpack";
    let bad = StatusCode::BAD_REQUEST;

    // Malformed MessagePack: truncated map, random bytes, a bare integer.
    let mut truncated = columnar("bad", vec![("v", Value::Array(vec![1.into()]))]);
    truncated.truncate(truncated.len() - 2);
    expect_error(&server, mp, &[], truncated, bad, "MessagePack").await;
    expect_error(&server, mp, &[], vec![0xc1, 0xff, 0x00], bad, "MessagePack").await;
    expect_error(&server, mp, &[], msgpack(&Value::from(7)), bad, "").await;
    expect_error(&server, mp, &[], vec![], bad, "empty").await;

    // Unequal column lengths.
    let unequal = columnar(
        "bad",
        vec![
            ("time", Value::Array(vec![1.into(), 2.into()])),
            ("v", Value::Array(vec![1.0.into()])),
        ],
    );
    expect_error(&server, mp, &[], unequal, bad, "expected 2").await;

    // Invalid names.
    let ok_columns = || vec![("v", Value::Array(vec![1.0.into()]))];
    expect_error(
        &server,
        mp,
        &[],
        columnar("9cpu", ok_columns()),
        bad,
        "measurement",
    )
    .await;
    expect_error(
        &server,
        mp,
        &[],
        columnar("cp u", ok_columns()),
        bad,
        "measurement",
    )
    .await;
    expect_error(
        &server,
        mp,
        &[("x-arc-database", "bad db")],
        columnar("cpu", ok_columns()),
        bad,
        "database",
    )
    .await;
    expect_error(
        &server,
        "/write?db=_internal",
        &[],
        format!("cpu v=1 {T}").into_bytes(),
        bad,
        "database",
    )
    .await;
    expect_error(
        &server,
        "/write?precision=h",
        &[],
        b"cpu v=1".to_vec(),
        bad,
        "precision",
    )
    .await;

    // Times outside what nanosecond readers can hold: 400 for MessagePack, "now" for line
    // protocol (as Arc does with unusable timestamps).
    let far_future = columnar(
        "bad",
        vec![
            ("time", Value::Array(vec![9_999_999_999i64.into()])),
            ("v", Value::Array(vec![1.0.into()])),
        ],
    );
    expect_error(&server, mp, &[], far_future, bad, "out of range").await;

    // A batch with one bad item stores none of it.
    let half_bad = msgpack(&map(vec![(
        "batch",
        Value::Array(vec![
            map(vec![
                ("m", "halfbad".into()),
                ("columns", map(ok_columns())),
            ]),
            map(vec![("m", "9bad".into()), ("columns", map(ok_columns()))]),
        ]),
    )]));
    expect_error(&server, mp, &[], half_bad, bad, "measurement").await;

    // Line protocol: nothing valid → 400; invalid lines beside valid ones are dropped.
    expect_error(
        &server,
        "/write",
        &[],
        b"no_fields_here\n,bad\ncpu v=\n".to_vec(),
        bad,
        "No valid records",
    )
    .await;
    let mixed = format!("mixed v=1 {T}\nbroken line\nmixed,host=a v=2 {T}\n9bad v=3 {T}\n");
    let (status, _) = server.post("/write?db=good", &[], mixed).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let (status, _) = server
        .post(
            "/write?db=good&precision=s",
            &[],
            "farfuture v=1 9000000000000",
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // A type conflict with rows already buffered.
    let (status, _) = server
        .post("/write?db=good", &[], format!("typed v=1 {T}"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    expect_error(
        &server,
        "/write?db=good",
        &[],
        format!("typed v=\"text\" {T}").into_bytes(),
        bad,
        "float64",
    )
    .await;

    // Oversized raw body, oversized after decompression, broken compression.
    let big = vec![b'x'; 70 * 1024];
    expect_error(
        &server,
        mp,
        &[],
        big.clone(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "limit",
    )
    .await;
    let bomb = gzip(&vec![0u8; 200 * 1024]);
    assert!(bomb.len() < 64 * 1024);
    expect_error(
        &server,
        mp,
        &[],
        bomb,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too large",
    )
    .await;
    let mut broken_gzip = gzip(format!("cpu v=1 {T}").as_bytes());
    broken_gzip.truncate(10);
    expect_error(&server, "/write", &[], broken_gzip, bad, "gzip").await;
    let broken_zstd = vec![0x28, 0xb5, 0x2f, 0xfd, 0xde, 0xad, 0xbe, 0xef];
    expect_error(&server, "/write", &[], broken_zstd, bad, "zstd").await;

    // Unknown routes and methods answer JSON too.
    let (status, body) = server.get("/api/v1/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("\"error\""));
    let (status, body) = server.get("/write").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body.contains("\"error\""));

    assert_eq!(server.get("/health").await.0, StatusCode::OK);
    assert!(server.stop().await.success());

    // Only the valid rows were stored.
    let storage = server.storage();
    let all = stored_files(&storage, "").await;
    let mut stored: Vec<(String, usize)> = all
        .iter()
        .map(|f| {
            let mut parts = f.key.split('/');
            let db = parts.next().unwrap();
            let m = parts.next().unwrap();
            (format!("{db}.{m}"), f.rows())
        })
        .collect();
    stored.sort();
    assert_eq!(
        stored,
        vec![
            ("good.farfuture".to_string(), 1),
            ("good.mixed".to_string(), 2),
            ("good.typed".to_string(), 1)
        ]
    );
}
