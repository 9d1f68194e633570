//! Object storage: the only module that talks to `object_store`.
//!
//! Objects are written whole with a single put, so a reader never sees part of one: S3 and Azure
//! publish an object only when its upload completes, and the local backend writes a staging file
//! and renames it. On the local backend the file and its directory are also synced, so a
//! registered file survives a power cut, not just a process crash.

mod counted;
pub mod paths;
mod prefix;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload,
    RetryConfig,
};
use tokio::io::AsyncWriteExt;

use crate::config::{StorageBackend, StorageConfig};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage configuration: {0}")]
    Config(String),
    #[error("storage {operation} of '{key}' failed: {source}")]
    Backend {
        operation: &'static str,
        key: String,
        source: object_store::Error,
    },
    #[error("storage I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
}

#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// Root directory when the backend is the local filesystem.
    local_root: Option<PathBuf>,
    description: String,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

/// Failing fast matters more than riding out long outages: a failed flush keeps its rows in the
/// WAL and the buffer and is retried by the flusher.
fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: Duration::from_secs(20),
    }
}

fn client_options(allow_http: bool) -> ClientOptions {
    ClientOptions::new()
        .with_allow_http(allow_http)
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(60))
}

impl Storage {
    pub fn from_config(config: &StorageConfig) -> Result<Storage, StorageError> {
        let backend_err = |e: object_store::Error| StorageError::Config(e.to_string());
        let (store, local_root, description): (Arc<dyn ObjectStore>, _, _) = match config.backend {
            StorageBackend::Local => {
                let root = PathBuf::from(&config.local_path);
                std::fs::create_dir_all(&root).map_err(|source| StorageError::Io {
                    path: root.clone(),
                    source,
                })?;
                let root = root.canonicalize().map_err(|source| StorageError::Io {
                    path: root.clone(),
                    source,
                })?;
                let store = LocalFileSystem::new_with_prefix(&root)
                    .map_err(backend_err)?
                    .with_automatic_cleanup(true);
                let description = format!("local:{}", root.display());
                (Arc::new(store), Some(root), description)
            }
            StorageBackend::S3 | StorageBackend::Minio => {
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(&config.s3_bucket)
                    .with_region(&config.s3_region)
                    .with_virtual_hosted_style_request(!config.s3_path_style)
                    .with_retry(retry_config())
                    .with_client_options(client_options(!config.s3_use_ssl));
                if !config.s3_endpoint.is_empty() {
                    let scheme = if config.s3_use_ssl { "https" } else { "http" };
                    let endpoint = if config.s3_endpoint.contains("://") {
                        config.s3_endpoint.clone()
                    } else {
                        format!("{scheme}://{}", config.s3_endpoint)
                    };
                    builder = builder.with_endpoint(endpoint);
                }
                if !config.s3_access_key.is_empty() {
                    builder = builder
                        .with_access_key_id(&config.s3_access_key)
                        .with_secret_access_key(&config.s3_secret_key);
                }
                let store = builder.build().map_err(backend_err)?;
                let description = format!("s3://{}", config.s3_bucket);
                (Arc::new(store), None, description)
            }
            StorageBackend::Azure | StorageBackend::Azblob => {
                let mut builder = MicrosoftAzureBuilder::from_env()
                    .with_container_name(&config.azure_container)
                    .with_retry(retry_config())
                    .with_client_options(client_options(false));
                let connection = parse_connection_string(&config.azure_connection_string);
                let account = connection
                    .get("AccountName")
                    .cloned()
                    .unwrap_or_else(|| config.azure_account_name.clone());
                if !account.is_empty() {
                    builder = builder.with_account(account);
                }
                let key = connection
                    .get("AccountKey")
                    .cloned()
                    .unwrap_or_else(|| config.azure_account_key.clone());
                if !key.is_empty() {
                    builder = builder.with_access_key(key);
                }
                let sas = connection
                    .get("SharedAccessSignature")
                    .cloned()
                    .unwrap_or_else(|| config.azure_sas_token.clone());
                if !sas.is_empty() {
                    builder = builder.with_config(
                        object_store::azure::AzureConfigKey::SasKey,
                        sas.trim_start_matches('?'),
                    );
                }
                let endpoint = connection
                    .get("BlobEndpoint")
                    .cloned()
                    .unwrap_or_else(|| config.azure_endpoint.clone());
                if !endpoint.is_empty() {
                    builder = builder
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_endpoint(endpoint);
                }
                let store = builder.build().map_err(backend_err)?;
                let description = format!("azure://{}", config.azure_container);
                (Arc::new(store), None, description)
            }
        };
        let prefix = config.s3_prefix.trim_matches('/');
        let store: Arc<dyn ObjectStore> = if local_root.is_none() && !prefix.is_empty() {
            Arc::new(prefix::PrefixedStore::new(store, prefix))
        } else {
            store
        };
        let store = Arc::new(counted::CountedStore::new(store));
        Ok(Storage {
            store,
            local_root,
            description,
        })
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    /// The underlying store, for readers (the query engine) that speak `object_store` directly.
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.store)
    }

    /// Writes a whole object; it becomes visible only complete.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        let location = ObjectPath::from(key);
        self.store
            .put(&location, PutPayload::from(bytes))
            .await
            .map_err(|source| StorageError::Backend {
                operation: "put",
                key: key.to_string(),
                source,
            })?;
        if let Some(root) = &self.local_root {
            let (root, path) = (root.clone(), root.join(key));
            tokio::task::spawn_blocking(move || sync_file_and_parents(&root, &path))
                .await
                .expect("sync task panicked")?;
        }
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        let err = |source| StorageError::Backend {
            operation: "get",
            key: key.to_string(),
            source,
        };
        let result = self.store.get(&ObjectPath::from(key)).await.map_err(err)?;
        result.bytes().await.map_err(err)
    }

    /// An object's bytes from byte `from` on as they arrive, for relaying without holding it
    /// whole.
    pub async fn get_stream(
        &self,
        key: &str,
        from: u64,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes, object_store::Error>>, StorageError>
    {
        let options = GetOptions {
            range: (from > 0).then_some(GetRange::Offset(from)),
            ..GetOptions::default()
        };
        let result = self
            .store
            .get_opts(&ObjectPath::from(key), options)
            .await
            .map_err(|source| StorageError::Backend {
                operation: "get",
                key: key.to_string(),
                source,
            })?;
        Ok(result.into_stream())
    }

    /// The size of `key` on the local backend when it is there; `None` elsewhere.
    pub async fn local_size(&self, key: &str) -> Option<u64> {
        let path = self.local_root.as_ref()?.join(key);
        tokio::fs::metadata(path).await.ok().map(|m| m.len())
    }

    /// Bytes `range` of an object.
    pub async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, StorageError> {
        self.store
            .get_range(&ObjectPath::from(key), range)
            .await
            .map_err(|source| StorageError::Backend {
                operation: "get_range",
                key: key.to_string(),
                source,
            })
    }

    /// Uploads a local file as a whole object without holding it in memory; like
    /// [`Storage::put`], it becomes visible only complete. The local backend copies the file to
    /// a staging name and renames it; others stream it as a multipart upload.
    pub async fn put_file(&self, key: &str, file_path: &Path) -> Result<(), StorageError> {
        let io = |source| StorageError::Io {
            path: file_path.to_path_buf(),
            source,
        };
        if let Some(root) = &self.local_root {
            let (root, source, target) = (root.clone(), file_path.to_path_buf(), root.join(key));
            let bytes = tokio::fs::metadata(file_path).await.map_err(io)?.len();
            let copied =
                tokio::task::spawn_blocking(move || copy_into_place(&root, &source, &target))
                    .await
                    .expect("copy task panicked");
            // The local backend copies around the object store, which counts the other calls.
            let counters = &crate::metrics::metrics().storage;
            match copied {
                Ok(()) => {
                    counters.writes.inc();
                    counters.write_bytes.inc_by(bytes);
                }
                Err(_) => {
                    counters.errors.inc();
                }
            }
            return copied;
        }
        let mut file = tokio::fs::File::open(file_path).await.map_err(io)?;
        let mut writer = object_store::buffered::BufWriter::with_capacity(
            Arc::clone(&self.store),
            ObjectPath::from(key),
            UPLOAD_PART_BYTES,
        )
        .with_max_concurrency(2);
        let copied = tokio::io::copy(&mut file, &mut writer).await;
        let finished = match copied {
            Ok(_) => writer.shutdown().await,
            Err(err) => {
                let _ = writer.abort().await;
                Err(err)
            }
        };
        finished.map_err(|err| match err.downcast::<object_store::Error>() {
            Ok(source) => StorageError::Backend {
                operation: "put",
                key: key.to_string(),
                source,
            },
            Err(err) => io(err),
        })
    }

    /// Streams an object into a local file (created or truncated). Returns its size.
    pub async fn get_to_file(&self, key: &str, target: &Path) -> Result<u64, StorageError> {
        let err = |source| StorageError::Backend {
            operation: "get",
            key: key.to_string(),
            source,
        };
        let io = |source| StorageError::Io {
            path: target.to_path_buf(),
            source,
        };
        let mut stream = self
            .store
            .get(&ObjectPath::from(key))
            .await
            .map_err(err)?
            .into_stream();
        let mut file = tokio::fs::File::create(target).await.map_err(io)?;
        let mut size = 0;
        while let Some(chunk) = stream.try_next().await.map_err(err)? {
            file.write_all(&chunk).await.map_err(io)?;
            size += chunk.len() as u64;
        }
        file.flush().await.map_err(io)?;
        Ok(size)
    }

    /// Deletes an object; deleting one that is already gone succeeds.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(StorageError::Backend {
                operation: "delete",
                key: key.to_string(),
                source,
            }),
        }
    }

    /// Every object under `prefix` ("" for all).
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let location = (!prefix.is_empty()).then(|| ObjectPath::from(prefix));
        self.store
            .list(location.as_ref())
            .map_ok(|meta| ObjectInfo {
                key: meta.location.to_string(),
                size: meta.size,
            })
            .try_collect()
            .await
            .map_err(|source| StorageError::Backend {
                operation: "list",
                key: prefix.to_string(),
                source,
            })
    }

    /// Removes the staging files (`<key>#<suffix>`: `object_store`'s put and
    /// [`Storage::put_file`] write them and rename them into place) that a crash left behind
    /// for `keys`. Only those: on storage several nodes share, another node's staging file may
    /// be an upload in progress. Returns how many were removed.
    pub async fn remove_local_staging_files(
        &self,
        keys: Vec<String>,
    ) -> Result<usize, StorageError> {
        let Some(root) = self.local_root.clone() else {
            return Ok(0);
        };
        tokio::task::spawn_blocking(move || {
            let mut removed = 0;
            for key in &keys {
                removed += remove_staging_files(&root.join(key))?;
            }
            Ok(removed)
        })
        .await
        .expect("cleanup task panicked")
    }
}

/// Part size of streamed uploads: S3's 5 MiB minimum, so at most a few parts are in memory.
const UPLOAD_PART_BYTES: usize = 5 << 20;

/// Copies `source` to a staging file next to `target` (named like `object_store`'s, so start-up
/// removes it after a crash), renames it into place and syncs it.
fn copy_into_place(root: &Path, source: &Path, target: &Path) -> Result<(), StorageError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StorageError::Io { path, source }
    };
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut staging = target.as_os_str().to_owned();
    staging.push("#copy");
    let staging = PathBuf::from(staging);
    std::fs::copy(source, &staging).map_err(io(&staging))?;
    std::fs::File::open(&staging)
        .and_then(|f| f.sync_all())
        .map_err(io(&staging))?;
    std::fs::rename(&staging, target).map_err(io(target))?;
    sync_file_and_parents(root, target)
}

fn parse_connection_string(connection: &str) -> std::collections::HashMap<String, String> {
    connection
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Syncs a new file and every directory from it up to the root: put may have created them.
fn sync_file_and_parents(root: &Path, path: &Path) -> Result<(), StorageError> {
    let io = |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    for dir in path.ancestors().skip(1) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        if dir == root {
            break;
        }
    }
    Ok(())
}

/// Removes the staging files of the object at `target`: its siblings named `<name>#…`.
fn remove_staging_files(target: &Path) -> Result<usize, StorageError> {
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return Ok(0);
    };
    let io = |source| StorageError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(io(err)),
    };
    let mut prefix = name.to_os_string();
    prefix.push("#");
    let prefix = prefix.to_string_lossy().into_owned();
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(io)?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            std::fs::remove_file(entry.path()).map_err(io)?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_staging_files_of_the_given_object_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("db/m/2026/01/15/10");
        std::fs::create_dir_all(&dir).unwrap();
        let names = [
            "ours.parquet",
            "ours.parquet#1",
            "ours.parquet#copy",
            "theirs.parquet#2",
            "ours.parquet.old#3",
        ];
        for name in names {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        assert_eq!(remove_staging_files(&dir.join("ours.parquet")).unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["ours.parquet", "ours.parquet.old#3", "theirs.parquet#2"]
        );
        assert_eq!(
            remove_staging_files(&root.path().join("gone/x.parquet")).unwrap(),
            0
        );
    }
}
