//! Deletes the objects of files removed from the manifest once no query can still be reading
//! them.
//!
//! A query lists its files from the manifest when it starts and reads them until it ends, so an
//! object removed from the manifest (by compaction, retention or a delete) stays in storage for
//! a grace period of `query.timeout`: no query that could have listed it runs longer than that.
//! Deleting the object comes before forgetting the tombstone, so a crash in between only means
//! the delete is repeated (a missing object counts as deleted).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::meta::{Meta, MetaCommand, SettleError};
use crate::storage::{Storage, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum ReclaimError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("forgetting deleted files failed: {0}")]
    Meta(#[from] SettleError),
}

/// Pure: the tombstoned paths whose grace period is over at `now_us`.
pub fn due<'a>(
    tombstones: impl Iterator<Item = (&'a str, i64)>,
    now_us: i64,
    grace: Duration,
) -> Vec<String> {
    let grace_us = i64::try_from(grace.as_micros()).unwrap_or(i64::MAX);
    tombstones
        .filter(|(_, removed_at_us)| removed_at_us.saturating_add(grace_us) <= now_us)
        .map(|(path, _)| path.to_string())
        .collect()
}

/// Deletes every object due at `now_us` and forgets its tombstone. Returns how many.
pub async fn reclaim_due(
    meta: &Arc<Meta>,
    storage: &Storage,
    grace: Duration,
    now_us: i64,
) -> Result<usize, ReclaimError> {
    let paths = due(meta.state().tombstones(), now_us, grace);
    if paths.is_empty() {
        return Ok(0);
    }
    for path in &paths {
        storage.delete(path).await?;
    }
    let count = paths.len();
    let meta = Arc::clone(meta);
    tokio::task::spawn_blocking(move || {
        meta.commit_until_settled(MetaCommand::PurgeTombstones { paths })
    })
    .await
    .expect("meta commit task panicked")?;
    Ok(count)
}

/// How often tombstones are checked: often enough that a short grace (tests) is honoured
/// promptly, rarely enough to cost nothing.
fn check_period(grace: Duration) -> Duration {
    (grace / 2).clamp(Duration::from_millis(200), Duration::from_secs(5))
}

/// Reclaims due objects every few seconds until `shutdown` turns true.
pub async fn run(
    meta: Arc<Meta>,
    storage: Storage,
    grace: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(check_period(grace));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            _ = tick.tick() => {}
        }
        let now_us = chrono::Utc::now().timestamp_micros();
        match reclaim_due(&meta, &storage, grace, now_us).await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "deleted objects of removed files"),
            Err(err) => tracing::warn!(error = %err, "reclaiming removed files failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StorageConfig;
    use crate::meta::FileEntry;

    #[test]
    fn only_tombstones_past_the_grace_period_are_due() {
        let tombstones = [("a", 100), ("b", 1_000_000), ("c", 1_000_001)];
        let due = due(tombstones.into_iter(), 2_000_000, Duration::from_secs(1));
        assert_eq!(due, ["a", "b"]);
        assert!(super::due([("x", 0)].into_iter(), 5, Duration::MAX).is_empty());
    }

    fn entry(path: &str) -> FileEntry {
        FileEntry {
            path: path.into(),
            database: "db".into(),
            measurement: "cpu".into(),
            min_time_us: 0,
            max_time_us: 1,
            rows: 1,
            size_bytes: 1,
            sha256: String::new(),
            min_lsn: 1,
            max_lsn: 1,
            log: String::new(),
            columns: Default::default(),
            tags: vec![],
            created_at_us: 0,
            origin_node: "n".into(),
        }
    }

    #[tokio::test]
    async fn due_objects_are_deleted_then_forgotten_and_a_retry_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::from_config(&StorageConfig {
            local_path: dir.path().join("store").to_string_lossy().into_owned(),
            ..StorageConfig::default()
        })
        .unwrap();
        let meta = Arc::new(Meta::open(&dir.path().join("meta")).unwrap());
        let paths = [
            "db/cpu/old.parquet",
            "db/cpu/gone.parquet",
            "db/cpu/new.parquet",
        ];
        for path in &paths[..2] {
            storage
                .put(path, bytes::Bytes::from_static(b"x"))
                .await
                .unwrap();
        }
        meta.commit(MetaCommand::AddFiles {
            database: "db".into(),
            measurement: "cpu".into(),
            files: paths.iter().map(|p| entry(p)).collect(),
            flushed_through_lsn: 1,
            log: String::new(),
            writer_epoch: None,
        })
        .unwrap();
        for (path, at_us) in [(paths[0], 1_000), (paths[1], 1_000), (paths[2], 50_000_000)] {
            meta.commit(MetaCommand::ReplaceFiles {
                database: "db".into(),
                measurement: "cpu".into(),
                removed: vec![path.into()],
                added: vec![],
                at_us,
                compactor_epoch: None,
            })
            .unwrap();
        }
        // `gone` has no object: a crash after its delete but before the purge looks like this.
        storage.delete(paths[1]).await.unwrap();

        let grace = Duration::from_secs(10);
        assert_eq!(
            reclaim_due(&meta, &storage, grace, 5_000_000)
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            reclaim_due(&meta, &storage, grace, 20_000_000)
                .await
                .unwrap(),
            2
        );
        let keys: Vec<String> = storage
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert!(keys.is_empty(), "{keys:?}");
        let left: Vec<String> = meta
            .state()
            .tombstones()
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(left, [paths[2]]);
        assert_eq!(
            reclaim_due(&meta, &storage, grace, 20_000_000)
                .await
                .unwrap(),
            0
        );
    }
}
