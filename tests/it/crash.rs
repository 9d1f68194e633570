//! Durability under kill -9: concurrent writers, the server killed at random moments (during
//! writes, around flush boundaries and inside flushes) and restarted, many times. Every
//! acknowledged row must end up stored exactly once; no row may be stored twice.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use rand::Rng;
use reqwest::StatusCode;
use rmpv::Value;

use crate::harness::{Compression, Server, manifest_paths, map, msgpack, stored_files};

const WRITERS: usize = 4;
/// 2026-01-15T10:00:00Z; rows spread over several hours so flushes write several files.
const BASE_US: i64 = 1_768_471_200_000_000;
const ROW_SPACING_US: i64 = 1_000_000;

/// Settings that make flushes frequent, so kills land in and around them.
pub const CRASH_ENV: [(&str, &str); 2] = [
    ("ARC_INGEST_MAX_BUFFER_SIZE", "700"),
    ("ARC_INGEST_MAX_BUFFER_AGE_MS", "150"),
];

struct Ledger {
    next_id: AtomicI64,
    acknowledged: Mutex<BTreeSet<i64>>,
}

/// One request of consecutive ids, alternating formats, measurements and compressions.
fn request_body(
    ids: &[i64],
    writer: usize,
    attempt: usize,
) -> (String, Vec<(&'static str, String)>, Vec<u8>) {
    let measurement = if attempt.is_multiple_of(2) {
        "crash_a"
    } else {
        "crash_b"
    };
    let compression = Compression::ALL[attempt % 3];
    if attempt % 4 < 2 {
        let payload = map(vec![
            ("m", Value::from(measurement)),
            (
                "columns",
                map(vec![
                    (
                        "time",
                        Value::Array(
                            ids.iter()
                                .map(|id| Value::from(BASE_US + id * ROW_SPACING_US))
                                .collect(),
                        ),
                    ),
                    (
                        "id",
                        Value::Array(ids.iter().map(|id| Value::from(*id)).collect()),
                    ),
                    (
                        "writer",
                        Value::Array(
                            ids.iter()
                                .map(|_| Value::from(format!("w{writer}")))
                                .collect(),
                        ),
                    ),
                ]),
            ),
        ]);
        (
            "/api/v1/write/msgpack".into(),
            vec![("x-arc-database", "crash".into())],
            compression.apply(&msgpack(&payload)),
        )
    } else {
        let body: String = ids
            .iter()
            .map(|id| {
                format!(
                    "{measurement},writer=w{writer} id={id}i {}\n",
                    (BASE_US + id * ROW_SPACING_US) * 1000
                )
            })
            .collect();
        (
            "/write?db=crash".into(),
            vec![],
            compression.apply(body.as_bytes()),
        )
    }
}

/// Writes until a request fails (the server died); returns how many requests were acknowledged.
async fn write_until_failure(server_url: String, ledger: Arc<Ledger>, writer: usize) -> usize {
    let client = crate::harness::admin_client();
    let mut acknowledged = 0;
    for attempt in 0.. {
        let count = rand::rng().random_range(20..200);
        let first = ledger.next_id.fetch_add(count, Ordering::SeqCst);
        let ids: Vec<i64> = (first..first + count).collect();
        let (path, headers, body) = request_body(&ids, writer, attempt + writer);
        let mut request = client.post(format!("{server_url}{path}")).body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        match request.send().await {
            Ok(response) if response.status() == StatusCode::NO_CONTENT => {
                ledger.acknowledged.lock().unwrap().extend(ids);
                acknowledged += 1;
            }
            Ok(response) if response.status() == StatusCode::SERVICE_UNAVAILABLE => {
                return acknowledged;
            }
            Ok(response) => panic!(
                "unexpected {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            ),
            Err(_) => return acknowledged,
        }
    }
    unreachable!()
}

/// Runs `rounds` kill/restart cycles against `server`, then checks storage.
pub async fn acknowledged_rows_survive_kill9(server: &mut Server, rounds: usize) {
    // A file this node never wrote (say, from an Arc installation sharing the bucket) must
    // survive every recovery.
    let foreign = "legacy/cpu/2025/01/01/00/cpu_20250101_000000_000000000.parquet";
    server
        .storage()
        .put(foreign, bytes::Bytes::from_static(b"PAR1 not ours"))
        .await
        .unwrap();
    let ledger = Arc::new(Ledger {
        next_id: AtomicI64::new(0),
        acknowledged: Mutex::default(),
    });
    // The first request after a start pays for the slow token hash; do it before the clock runs.
    let (status, _) = server.get("/api/v1/auth/verify").await;
    assert_eq!(status, reqwest::StatusCode::OK);
    for round in 0..rounds {
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| tokio::spawn(write_until_failure(server.url(""), Arc::clone(&ledger), w)))
            .collect();
        let delay = rand::rng().random_range(50..700);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        server.kill9();
        let mut requests = 0;
        for writer in writers {
            requests += writer.await.unwrap();
        }
        assert!(
            requests > 0 || round > 0,
            "no write was acknowledged before the first kill"
        );
        server.restart().await;
    }
    // Settle: flush everything and stop cleanly, then compare storage with the ledger.
    assert!(server.stop().await.success());

    let storage = server.storage();
    assert!(
        storage.get(foreign).await.is_ok(),
        "a foreign file was removed"
    );
    let files = stored_files(&storage, "crash/").await;
    let mut stored: HashMap<i64, usize> = HashMap::new();
    for file in &files {
        for batch in &file.batches {
            let ids = batch
                .column_by_name("id")
                .expect("id column")
                .as_primitive::<Int64Type>();
            for id in ids.values() {
                *stored.entry(*id).or_default() += 1;
            }
        }
    }
    let duplicates: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicates.is_empty(),
        "rows stored more than once: {duplicates:?}"
    );
    let acknowledged = ledger.acknowledged.lock().unwrap();
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|id| !stored.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged rows missing (of {}), e.g. {:?}",
        missing.len(),
        acknowledged.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        acknowledged.len() > 1000,
        "too few rows acknowledged to mean anything"
    );

    // Storage and manifest agree: every listed file exists and nothing unlisted remains.
    let mut keys: Vec<String> = files.iter().map(|f| f.key.clone()).collect();
    keys.sort();
    assert_eq!(keys, manifest_paths(&server.meta_dir()));
    let log = server.log();
    eprintln!(
        "crash test: {rounds} rounds, {} acknowledged rows, {} stored rows, {} files; \
         recoveries saw {} torn WAL tails and removed {} unregistered uploads",
        acknowledged.len(),
        stored.len(),
        files.len(),
        log.matches("torn or stale record").count(),
        log.matches("removing unregistered data file").count(),
    );
}

#[tokio::test]
async fn acknowledged_rows_survive_kill9_on_local_disk() {
    let mut server = Server::start(&CRASH_ENV).await;
    acknowledged_rows_survive_kill9(&mut server, 20).await;
}
