//! Counts what goes to and comes from the object store, for every caller alike (flushes,
//! compaction, the file puller and DataFusion's reads): the `arc_storage_*` metrics.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result, UploadPart,
};

use crate::metrics::{StorageMetrics, metrics};

#[derive(Debug)]
pub(super) struct CountedStore {
    inner: Arc<dyn ObjectStore>,
}

impl CountedStore {
    pub(super) fn new(inner: Arc<dyn ObjectStore>) -> CountedStore {
        CountedStore { inner }
    }
}

fn counters() -> &'static StorageMetrics {
    &metrics().storage
}

/// Counts a failed call; a missing object is an answer, not a failure.
fn checked<T>(result: Result<T>) -> Result<T> {
    if let Err(err) = &result
        && !matches!(err, object_store::Error::NotFound { .. })
    {
        counters().errors.inc();
    }
    result
}

impl fmt::Display for CountedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

#[async_trait::async_trait]
impl ObjectStore for CountedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let bytes = payload.content_length() as u64;
        let result = checked(self.inner.put_opts(location, payload, opts).await);
        if result.is_ok() {
            counters().writes.inc();
            counters().write_bytes.inc_by(bytes);
        }
        result
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let upload = checked(self.inner.put_multipart_opts(location, opts).await)?;
        Ok(Box::new(CountedUpload { inner: upload }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let result = checked(self.inner.get_opts(location, options).await)?;
        counters().reads.inc();
        counters()
            .read_bytes
            .inc_by(result.range.end - result.range.start);
        Ok(result)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let parts = checked(self.inner.get_ranges(location, ranges).await)?;
        counters().reads.inc_by(parts.len() as u64);
        let bytes: usize = parts.iter().map(Bytes::len).sum();
        counters().read_bytes.inc_by(bytes as u64);
        Ok(parts)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        checked(self.inner.list_with_delimiter(prefix).await)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        checked(self.inner.copy_opts(from, to, options).await)
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        checked(self.inner.rename_opts(from, to, options).await)
    }
}

/// A multipart upload counted as one write of all its parts, once it completes.
#[derive(Debug)]
struct CountedUpload {
    inner: Box<dyn MultipartUpload>,
}

#[async_trait::async_trait]
impl MultipartUpload for CountedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        counters().write_bytes.inc_by(data.content_length() as u64);
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let result = checked(self.inner.complete().await);
        if result.is_ok() {
            counters().writes.inc();
        }
        result
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}
