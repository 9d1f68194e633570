//! A key prefix on an object store (`storage.s3_prefix`). object_store 0.13's `PrefixStore`
//! leaves the prefix in the metadata `get_opts` returns, and so in `head`'s
//! (apache/arrow-rs-object-store#664, fixed in 0.14, which DataFusion does not use yet). A
//! DataFusion table over one file checks the listed location against its own path and, with the
//! prefix left in, finds no file: a row delete on S3 then counted no rows and deleted nothing.
//! This store strips the prefix there as well, and leaves every other call to `PrefixStore`.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

#[derive(Debug)]
pub(super) struct PrefixedStore {
    prefix: Path,
    inner: PrefixStore<Arc<dyn ObjectStore>>,
}

impl PrefixedStore {
    pub(super) fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> PrefixedStore {
        PrefixedStore {
            prefix: Path::from(prefix),
            inner: PrefixStore::new(store, prefix),
        }
    }
}

impl fmt::Display for PrefixedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

#[async_trait::async_trait]
impl ObjectStore for PrefixedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let mut result = self.inner.get_opts(location, options).await?;
        let relative: Option<Path> = result
            .meta
            .location
            .prefix_match(&self.prefix)
            .map(Iterator::collect);
        if let Some(relative) = relative {
            result.meta.location = relative;
        }
        Ok(result)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
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
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn head_and_get_answer_locations_without_the_prefix() {
        let store = PrefixedStore::new(Arc::new(InMemory::new()), "cluster-a");
        let key = Path::from("db/cpu/file.parquet");
        store
            .put(&key, PutPayload::from_static(b"rows"))
            .await
            .unwrap();
        assert_eq!(store.head(&key).await.unwrap().location, key);
        assert_eq!(store.get(&key).await.unwrap().meta.location, key);
        let listed: Vec<ObjectMeta> = futures::TryStreamExt::try_collect(store.list(None))
            .await
            .unwrap();
        assert_eq!(listed[0].location, key);
    }
}
