//! Durability under kill -9: concurrent writers in every format, the server killed at random
//! moments (during writes, around flush boundaries and inside flushes) and restarted, many
//! times. Every acknowledged row must end up stored exactly once; no row may be stored twice.

use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::harness::{Server, manifest_paths, stored_files};
use crate::workload::{
    History, Ledger, Stored, Table, WorkloadOptions, check, seed, soak, start_writes,
};

/// Settings that make flushes frequent, so kills land in and around them.
pub const CRASH_ENV: [(&str, &str); 2] = [
    ("ARC_INGEST_MAX_BUFFER_SIZE", "700"),
    ("ARC_INGEST_MAX_BUFFER_AGE_MS", "150"),
];

/// Kill rounds: the soak profile runs five times the CI profile's.
pub fn kill_rounds() -> usize {
    if soak() { 100 } else { 20 }
}

/// Runs kill/restart cycles against `server` while clients write, then checks storage.
pub async fn acknowledged_rows_survive_kill9(server: &mut Server, rounds: usize) {
    // A file this node never wrote (say, from an Arc installation sharing the bucket) must
    // survive every recovery.
    let foreign = "legacy/cpu/2025/01/01/00/cpu_20250101_000000_000000000.parquet";
    server
        .storage()
        .put(foreign, bytes::Bytes::from_static(b"PAR1 not ours"))
        .await
        .unwrap();
    let history = History::new(seed(0x6b696c6c));
    let mut rng = StdRng::seed_from_u64(seed(0x6b696c6c));
    let table = Table::new("crash", "rows");
    // The first request after a start pays for the slow token hash; do it before the clock runs.
    let (status, _) = server.get("/api/v1/auth/verify").await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let ledger = Ledger::new();
    for round in 0..rounds {
        let workload = start_writes(
            &ledger,
            vec![server.url("")],
            table.clone(),
            WorkloadOptions::default(),
        );
        let delay = Duration::from_millis(rng.random_range(50..700));
        tokio::time::sleep(delay).await;
        history.fault(format!("round {round}: kill -9 after {delay:?}"));
        server.kill9();
        workload.stop().await;
        server.restart().await;
    }
    // Settle: flush everything and stop cleanly, then compare storage with the ledgers.
    assert!(server.stop().await.success());

    let storage = server.storage();
    assert!(
        storage.get(foreign).await.is_ok(),
        "a foreign file was removed"
    );
    let files = stored_files(&storage, "crash/").await;
    let mut stored = Stored::new();
    for batch in files.iter().flat_map(|f| &f.batches) {
        let ids = batch
            .column_by_name("id")
            .expect("id column")
            .as_primitive::<Int64Type>();
        for id in ids.values() {
            *stored.entry(*id).or_default() += 1;
        }
    }
    let verdict = check(&ledger, &stored).unwrap_or_else(|problems| {
        panic!("checker failed: {problems}\n{}", history.dump());
    });
    assert!(
        verdict.acknowledged > 1000,
        "too few rows acknowledged to mean anything: {verdict:?}"
    );

    // Storage and manifest agree: every listed file exists and nothing unlisted remains.
    let mut keys: Vec<String> = files.iter().map(|f| f.key.clone()).collect();
    keys.sort();
    assert_eq!(keys, manifest_paths(&server.meta_dir()));
    let log = server.log();
    eprintln!(
        "crash test: {rounds} kill rounds, {verdict}, {} files; requests (ok/failed/unknown) {}; \
         recoveries saw {} torn WAL tails and removed {} unregistered uploads",
        files.len(),
        ledger.requests(),
        log.matches("torn or stale record").count(),
        log.matches("removing unregistered data file").count(),
    );
}

#[tokio::test]
async fn acknowledged_rows_survive_kill9_on_local_disk() {
    let mut server = Server::start(&CRASH_ENV).await;
    // Another node's upload in progress on shared storage: a staging file of a key this node
    // never journaled, beside this node's own files. No recovery may remove it.
    let hour = server.dir.join("data/arc/crash/rows/2026/01/15/10");
    std::fs::create_dir_all(&hour).unwrap();
    let foreign_staging = hour.join("rows_20260115_100000_000000001.parquet#4711");
    std::fs::write(&foreign_staging, b"PAR1 half-written by another node").unwrap();
    acknowledged_rows_survive_kill9(&mut server, kill_rounds()).await;
    assert!(
        foreign_staging.exists(),
        "another node's staging file was removed"
    );
}
