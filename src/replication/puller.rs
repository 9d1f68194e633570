//! A reader with its own storage copies every manifest file from a peer: the file's origin
//! first, then any other member. A copy is streamed to a work file while its SHA-256 is computed,
//! checked against the manifest's digest and size, and only then moved into place; a bad copy is
//! fetched again from another peer. After every manifest change and every copy the
//! [`ReplicaView`] moves each complete measurement forward. Files the manifest no longer lists
//! are deleted once no view shows them and `query.timeout` has passed (a query may still be
//! reading them).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::{ReplicaView, ReplicationStats};
use crate::cluster::Cluster;
use crate::meta::{FileEntry, Meta};
use crate::storage::Storage;

/// Why receiving a copy stopped: the peer (try again, from it or another) or this node.
enum Received {
    Peer(String),
    Local(String),
}

/// Where a copy into `work` resumes: the digest of the bytes already there and their count.
/// A work file that cannot be the start of the file (as long as it or longer) is discarded.
async fn resume_point(work: &Path, size: u64) -> std::io::Result<(Sha256, u64)> {
    let mut digest = Sha256::new();
    let held = match tokio::fs::metadata(work).await {
        Ok(meta) if meta.len() < size => meta.len(),
        Ok(_) => {
            tokio::fs::remove_file(work).await?;
            0
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => 0,
        Err(err) => return Err(err),
    };
    if held > 0 {
        let mut input = tokio::fs::File::open(work).await?;
        let mut chunk = vec![0; 1 << 20];
        loop {
            let read = input.read(&mut chunk).await?;
            if read == 0 {
                break;
            }
            digest.update(&chunk[..read]);
        }
    }
    Ok((digest, held))
}

/// Pause before asking again for files that could not be copied.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
enum PullError {
    #[error("no peer to copy {0} from")]
    NoPeer(String),
    #[error("{peer}: {message}")]
    Peer { peer: String, message: String },
    #[error(
        "{peer} sent {path} with {size} bytes and SHA-256 {sha256}; the manifest says {want_size} bytes, {want_sha256}"
    )]
    Mismatch {
        peer: String,
        path: String,
        size: u64,
        sha256: String,
        want_size: u64,
        want_sha256: String,
    },
    #[error("storing {path}: {message}")]
    Local { path: String, message: String },
}

pub struct Puller {
    pub cluster: Arc<Cluster>,
    pub meta: Arc<Meta>,
    pub storage: Storage,
    pub view: Arc<ReplicaView>,
    pub stats: Arc<ReplicationStats>,
    /// Where copies are written before they are checked.
    pub work_dir: PathBuf,
    /// `cluster.replication_pull_workers`.
    pub workers: usize,
    /// `cluster.replication_retry_max_attempts`: rounds over the peers for one file.
    pub attempts: u32,
    /// `cluster.replication_fetch_timeout_ms`: longest silence while a copy arrives.
    pub fetch_timeout: Duration,
    /// `query.timeout`: how long a removed file may still be read.
    pub grace: Duration,
}

impl Puller {
    /// Copies and deletes files as the manifest changes, until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        if let Err(err) = tokio::fs::create_dir_all(&self.work_dir).await {
            tracing::error!(dir = %self.work_dir.display(), error = %err, "cannot create the puller's work directory");
        }
        let mut local = HashSet::new();
        let mut removed: HashMap<String, Instant> = HashMap::new();
        let mut changes = self.cluster.applied_changes();
        // The first pass is the start-up catch-up the query gate waits for. It starts after
        // the barrier this node passed when it joined, so it walks the latest manifest.
        let mut first = true;
        loop {
            changes.borrow_and_update();
            let manifest: Vec<FileEntry> = self.meta.state().files().cloned().collect();
            let unknown: Vec<&FileEntry> = manifest
                .iter()
                .filter(|f| !local.contains(&f.path))
                .collect();
            let mut missing = Vec::new();
            let mut skipped_local = 0;
            for file in unknown {
                if self.storage.local_size(&file.path).await == Some(file.size_bytes) {
                    local.insert(file.path.clone());
                    skipped_local += 1;
                } else {
                    missing.push(file.clone());
                }
            }
            if first {
                let paths: Vec<String> = missing.iter().map(|f| f.path.clone()).collect();
                self.stats
                    .catchup_started(manifest.len(), skipped_local, &paths);
            }
            self.stats
                .files_missing
                .store(missing.len() as u64, Ordering::Relaxed);
            let this = &self;
            let mut copies = futures::stream::iter(missing)
                .map(|file| async move {
                    this.stats.copies_in_flight.fetch_add(1, Ordering::Relaxed);
                    let copied = this.pull(&file).await;
                    this.stats.copies_in_flight.fetch_sub(1, Ordering::Relaxed);
                    (copied, file)
                })
                .buffer_unordered(self.workers.max(1));
            while let Some((copied, file)) = copies.next().await {
                self.stats.copy_ended(&file.path, copied.is_ok(), first);
                match copied {
                    Ok(()) => {
                        local.insert(file.path.clone());
                        self.stats.files_missing.fetch_sub(1, Ordering::Relaxed);
                        self.view.refresh(&self.meta.state(), &local);
                        self.stats.progressed();
                    }
                    Err(err) => {
                        tracing::warn!(path = %file.path, error = %err, "could not copy a manifest file; will retry");
                    }
                }
            }
            drop(copies);
            self.view.refresh(&self.meta.state(), &local);
            self.stats.progressed();
            let listed: HashSet<&str> = manifest.iter().map(|f| f.path.as_str()).collect();
            self.stats.catchup_round_done(&listed, first);
            first = false;
            self.delete_removed(&listed, &mut local, &mut removed).await;
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(RETRY_PAUSE) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Copies one file, trying its origin first and every other peer after, for `attempts`
    /// rounds with a doubling pause.
    async fn pull(&self, file: &FileEntry) -> Result<(), PullError> {
        let mut last = PullError::NoPeer(file.path.clone());
        for attempt in 0..self.attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(RETRY_PAUSE * 2u32.saturating_pow(attempt - 1)).await;
            }
            for (peer, addr) in self.cluster.file_sources(&file.origin_node) {
                match self.copy_from(&peer, &addr, file).await {
                    Ok(()) => {
                        self.stats.files_pulled.fetch_add(1, Ordering::Relaxed);
                        return Ok(());
                    }
                    Err(err) => {
                        if matches!(err, PullError::Mismatch { .. }) {
                            self.stats
                                .checksum_mismatches
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        self.stats.pull_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(path = %file.path, %peer, error = %err, "copy failed");
                        last = err;
                    }
                }
            }
        }
        Err(last)
    }

    /// Copies `file` from `peer` into place. An interrupted copy leaves its work file behind,
    /// and the next attempt (from any peer) asks only for the bytes after it.
    async fn copy_from(&self, peer: &str, addr: &str, file: &FileEntry) -> Result<(), PullError> {
        let peer_err = |message: String| PullError::Peer {
            peer: peer.to_owned(),
            message,
        };
        let local_err = |message: String| PullError::Local {
            path: file.path.clone(),
            message,
        };
        let work = self
            .work_dir
            .join(format!("{:x}.copy", Sha256::digest(file.path.as_bytes())));
        let (mut digest, held) = resume_point(&work, file.size_bytes)
            .await
            .map_err(|e| local_err(e.to_string()))?;
        let copied = self
            .receive(addr, file, &work, &mut digest, held)
            .await
            .map_err(|failure| match failure {
                Received::Peer(message) => peer_err(message),
                Received::Local(message) => local_err(message),
            });
        if held > 0 {
            self.stats.copies_resumed.fetch_add(1, Ordering::Relaxed);
        }
        let size = match copied {
            Ok(size) => size,
            Err(err) => {
                // Bytes that arrived are kept for the next attempt, from whichever peer; a
                // wrong start is caught by the digest once the copy is complete.
                if matches!(err, PullError::Local { .. }) {
                    let _ = tokio::fs::remove_file(&work).await;
                }
                return Err(err);
            }
        };
        if size < file.size_bytes {
            return Err(peer_err(format!(
                "the copy ended after {size} of {} bytes",
                file.size_bytes
            )));
        }
        let sha256: String = digest
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let stored = if size == file.size_bytes && (file.sha256.is_empty() || sha256 == file.sha256)
        {
            self.storage
                .put_file(&file.path, &work)
                .await
                .map_err(|e| local_err(e.to_string()))
        } else {
            Err(PullError::Mismatch {
                peer: peer.to_owned(),
                path: file.path.clone(),
                size,
                sha256,
                want_size: file.size_bytes,
                want_sha256: file.sha256.clone(),
            })
        };
        let _ = tokio::fs::remove_file(&work).await;
        stored
    }

    /// Appends the peer's bytes after `held` to `work`, hashing them; returns the work file's
    /// size once the peer's body ends.
    async fn receive(
        &self,
        addr: &str,
        file: &FileEntry,
        work: &Path,
        digest: &mut Sha256,
        held: u64,
    ) -> Result<u64, Received> {
        let response = self
            .cluster
            .fetch_file(addr, &file.path, held)
            .await
            .map_err(|e| Received::Peer(e.to_string()))?;
        let mut out = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(work)
            .await
            .map_err(|e| Received::Local(e.to_string()))?;
        let mut size = held;
        let mut body = response.bytes_stream();
        let ended = loop {
            let chunk = match tokio::time::timeout(self.fetch_timeout, body.next()).await {
                Err(_) => break Err(Received::Peer("the copy stalled".into())),
                Ok(None) => break Ok(()),
                Ok(Some(Err(err))) => break Err(Received::Peer(err.to_string())),
                Ok(Some(Ok(chunk))) => chunk,
            };
            if size + chunk.len() as u64 > file.size_bytes {
                break Err(Received::Peer(format!(
                    "sent more than the manifest's {} bytes",
                    file.size_bytes
                )));
            }
            if let Err(err) = out.write_all(&chunk).await {
                break Err(Received::Local(err.to_string()));
            }
            digest.update(&chunk);
            size += chunk.len() as u64;
            self.stats
                .bytes_pulled
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        };
        // What was written is kept either way: a later attempt resumes after it.
        out.flush()
            .await
            .map_err(|e| Received::Local(e.to_string()))?;
        ended.map(|()| size)
    }

    /// Deletes local copies of files the manifest dropped, once no view shows them and the
    /// grace period has passed.
    async fn delete_removed(
        &self,
        listed: &HashSet<&str>,
        local: &mut HashSet<String>,
        removed: &mut HashMap<String, Instant>,
    ) {
        let referenced = self.view.referenced();
        for path in local.iter().filter(|p| !listed.contains(p.as_str())) {
            removed.entry(path.clone()).or_insert_with(Instant::now);
        }
        let due: Vec<String> = removed
            .iter()
            .filter(|(path, since)| since.elapsed() >= self.grace && !referenced.contains(*path))
            .map(|(path, _)| path.clone())
            .collect();
        for path in due {
            match self.storage.delete(&path).await {
                Ok(()) => {
                    local.remove(&path);
                    removed.remove(&path);
                    self.stats.files_deleted.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => tracing::warn!(%path, error = %err, "could not delete a removed file"),
            }
        }
    }
}
