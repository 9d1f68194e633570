//! Start-up never drops a WAL entry silently: a damaged record with intact entries after it
//! stops the start with an error naming the segment and byte, while a torn tail is still cut.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Server, query};

/// Settings that keep every row in the WAL: no flush before the kill.
const NO_FLUSH: [(&str, &str); 2] = [
    ("ARC_INGEST_MAX_BUFFER_SIZE", "1000000"),
    ("ARC_INGEST_MAX_BUFFER_AGE_MS", "3600000"),
];

/// Writes `requests` requests of one row each, then kills the server; returns its segments.
async fn rows_only_in_the_wal(requests: usize) -> (Server, Vec<PathBuf>) {
    let mut server = Server::start(&NO_FLUSH).await;
    for i in 0..requests {
        let line = format!(
            "walrec,host=h{i} v={i}i {}\n",
            1_768_471_200_000_000_000i64 + i as i64
        );
        let (status, body) = server.post("/write?db=walrec", &[], line).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
    server.kill9();
    let mut segments: Vec<PathBuf> = std::fs::read_dir(server.dir.join("data/wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segments.sort();
    (server, segments)
}

/// Byte offsets where each record of a segment starts (12-byte header, 16-byte record headers).
fn record_offsets(data: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 12;
    while at + 16 <= data.len() {
        offsets.push(at);
        let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        at += 16 + len;
    }
    offsets
}

async fn exit_of(server: &mut Server) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.is_running() {
        assert!(
            Instant::now() < deadline,
            "arcdb kept running:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.log()
}

#[tokio::test]
async fn a_damaged_wal_record_before_intact_ones_stops_the_start_and_names_it() {
    let (mut server, segments) = rows_only_in_the_wal(10).await;
    let segment = segments.last().unwrap();
    let mut data = std::fs::read(segment).unwrap();
    let offsets = record_offsets(&data);
    assert_eq!(offsets.len(), 10, "one record per request");
    // A payload byte of the fourth record.
    let damaged = offsets[3];
    data[damaged + 20] ^= 0xff;
    std::fs::write(segment, &data).unwrap();
    server.respawn_with(&[]);
    let log = exit_of(&mut server).await;
    let name = segment.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        log.contains(&name) && log.contains(&format!("byte {damaged}")),
        "the error names the segment and offset:\n{log}"
    );
    // The segment is left as it was, for the operator.
    assert_eq!(std::fs::read(segment).unwrap(), data);
}

#[tokio::test]
async fn a_torn_wal_tail_is_cut_and_every_earlier_row_kept() {
    let (mut server, segments) = rows_only_in_the_wal(10).await;
    let segment = segments.last().unwrap();
    let data = std::fs::read(segment).unwrap();
    let offsets = record_offsets(&data);
    // The last record cut short, as a crash mid-write leaves it.
    std::fs::write(segment, &data[..offsets[9] + 20]).unwrap();
    server.restart().await;
    let rows = query(&server, "SELECT count(*) AS n FROM walrec.walrec").await;
    assert_eq!(rows, vec![json!([9])], "{}", server.log());
    assert!(server.log().contains("torn or stale record"));
}
