//! A block store in an S3-compatible object store (AWS S3, MinIO, Ceph RGW), through the
//! `object_store` crate.
//!
//! Layout: `<prefix>/<tenant id>/<first two hex digits>/<hash in hex>`, each object the block as
//! stored and a trailer byte, so listing a tenant returns its blocks in hash order. Credentials come
//! from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, or
//! the instance's role), never from the URL: a URL is shown in `tenant info` and logs. Requests
//! that fail for a reason worth retrying (a refused connection, a 5xx) are retried with backoff
//! for as long as the engine waits through outages (`EngineConfig::outage_wait`, 15 s by
//! default); after that the operation fails (`EIO` to the program).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload, RetryConfig};

use super::{BlockStore, from_object, hex, object_trailer, parse_hex};
use crate::backend::{BlockHash, StoredBlock};
use crate::error::{BackendError, BackendResult};
use crate::types::TenantId;

/// Keys for S3 given in configuration rather than the environment (the CLI's config file, a CSI
/// secret).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default)]
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Requests in flight per call: an object store answers each with tens of milliseconds of
/// latency, so bandwidth comes from concurrency.
const PARALLEL: usize = 64;

/// Where an S3 store is, as parsed from `s3://bucket/prefix?endpoint=…&region=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct S3Location {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// `bucket.host` addressing instead of `host/bucket` (the default, which MinIO and Ceph RGW
    /// need).
    pub virtual_hosted: bool,
}

impl S3Location {
    pub(crate) fn parse(url: &str) -> Result<S3Location, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or("expected s3://bucket/prefix")?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.contains('@') || bucket.contains(':') {
            return Err(
                "credentials do not belong in the URL: set AWS_ACCESS_KEY_ID and \
                        AWS_SECRET_ACCESS_KEY in the environment"
                    .into(),
            );
        }
        if bucket.is_empty() {
            return Err("no bucket: expected s3://bucket/prefix".into());
        }
        let mut location = S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint: None,
            region: None,
            virtual_hosted: false,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "endpoint" => {
                    if !(value.starts_with("http://") || value.starts_with("https://")) {
                        return Err(format!(
                            "endpoint {value:?}: expected http://host:port or https://…"
                        ));
                    }
                    location.endpoint = Some(value.to_string());
                }
                "region" => location.region = Some(value.to_string()),
                "virtual_hosted" => {
                    location.virtual_hosted = match value {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(format!(
                                "virtual_hosted={value:?}: expected true or false"
                            ));
                        }
                    }
                }
                other => {
                    return Err(format!(
                        "unknown option {other:?} (known: endpoint, region, virtual_hosted)"
                    ));
                }
            }
        }
        Ok(location)
    }
}

/// A [`BlockStore`] in an S3 bucket.
#[derive(Debug, Clone)]
pub struct S3Store {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

fn store_err(e: object_store::Error) -> BackendError {
    // Whatever reaches here outlived the retries: the store is down or refuses us.
    BackendError::Unavailable(Box::new(e))
}

impl S3Store {
    pub(crate) fn open(
        location: &S3Location,
        credentials: Option<&S3Credentials>,
        retry_for: Duration,
    ) -> BackendResult<S3Store> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&location.bucket)
            .with_virtual_hosted_style_request(location.virtual_hosted)
            .with_retry(RetryConfig {
                max_retries: 20,
                retry_timeout: retry_for,
                ..RetryConfig::default()
            });
        if let Some(endpoint) = &location.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        builder = builder.with_region(location.region.as_deref().unwrap_or("us-east-1"));
        if let Some(c) = credentials {
            builder = builder
                .with_access_key_id(&c.access_key_id)
                .with_secret_access_key(&c.secret_access_key);
            if let Some(token) = &c.session_token {
                builder = builder.with_token(token);
            }
        }
        let store = builder.build().map_err(|e| BackendError::Config {
            what: format!("S3 bucket {:?}", location.bucket),
            source: Some(Box::new(e)),
        })?;
        Ok(S3Store {
            store: Arc::new(store),
            prefix: location.prefix.clone(),
        })
    }

    fn tenant_prefix(&self, tenant: TenantId) -> String {
        if self.prefix.is_empty() {
            tenant.0.to_string()
        } else {
            format!("{}/{}", self.prefix, tenant.0)
        }
    }

    fn path(&self, tenant: TenantId, hash: &BlockHash) -> Path {
        let name = hex(hash);
        Path::from(format!(
            "{}/{}/{name}",
            self.tenant_prefix(tenant),
            &name[..2]
        ))
    }
}

#[async_trait]
impl BlockStore for S3Store {
    fn kind(&self) -> &'static str {
        "s3"
    }

    async fn put(&self, tenant: TenantId, blocks: Vec<StoredBlock>) -> BackendResult<()> {
        futures::stream::iter(blocks)
            .map(|block| async move {
                let trailer = bytes::Bytes::from(vec![object_trailer(&block)]);
                let payload: PutPayload = [block.data.clone(), trailer].into_iter().collect();
                self.store
                    .put(&self.path(tenant, &block.hash), payload)
                    .await
                    .map_err(store_err)
            })
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(())
    }

    /// An S3 PUT is durable when it is acknowledged.
    async fn sync(&self) -> BackendResult<()> {
        Ok(())
    }

    async fn get(&self, tenant: TenantId, hashes: &[BlockHash]) -> BackendResult<Vec<StoredBlock>> {
        let found: Vec<Option<StoredBlock>> = futures::stream::iter(hashes.iter().copied())
            .map(|hash| async move {
                let got = match self.store.get(&self.path(tenant, &hash)).await {
                    Ok(got) => got,
                    Err(object_store::Error::NotFound { .. }) => return Ok(None),
                    Err(e) => return Err(store_err(e)),
                };
                let bytes = got.bytes().await.map_err(store_err)?;
                from_object(hash, bytes.to_vec()).map(Some)
            })
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    async fn delete(&self, tenant: TenantId, hashes: &[BlockHash]) -> BackendResult<()> {
        futures::stream::iter(hashes.iter().copied())
            .map(|hash| async move {
                match self.store.delete(&self.path(tenant, &hash)).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(store_err(e)),
                }
            })
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn list(
        &self,
        tenant: TenantId,
        after: Option<BlockHash>,
        limit: usize,
    ) -> BackendResult<Vec<(BlockHash, SystemTime)>> {
        let prefix = Path::from(self.tenant_prefix(tenant));
        let mut listing = match after {
            Some(after) => self
                .store
                .list_with_offset(Some(&prefix), &self.path(tenant, &after)),
            None => self.store.list(Some(&prefix)),
        };
        // S3 lists in key order, which is hash order here.
        let mut out = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(store_err)?;
            let Some(hash) = meta.location.filename().and_then(parse_hex) else {
                continue;
            };
            if after.is_some_and(|a| hash <= a) {
                continue;
            }
            out.push((hash, meta.last_modified.into()));
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    async fn copy(&self, from: TenantId, to: TenantId, hashes: &[BlockHash]) -> BackendResult<()> {
        futures::stream::iter(hashes.iter().copied())
            .map(|hash| async move {
                // A server-side copy: the bytes never leave the object store.
                match self
                    .store
                    .copy(&self.path(from, &hash), &self.path(to, &hash))
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(object_store::Error::NotFound { .. }) => {
                        Err(BackendError::BlockMissing(hash))
                    }
                    Err(e) => Err(store_err(e)),
                }
            })
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn delete_tenant(&self, tenant: TenantId) -> BackendResult<()> {
        let prefix = Path::from(self.tenant_prefix(tenant));
        let locations = self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .boxed();
        self.store
            .delete_stream(locations)
            .try_for_each(|_| async { Ok(()) })
            .await
            .map_err(store_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_refuse_what_they_should() {
        let l = S3Location::parse(
            "s3://models/tarbox/prod?endpoint=http://minio:9000&region=eu-west-1",
        )
        .expect("parses");
        assert_eq!(l.bucket, "models");
        assert_eq!(l.prefix, "tarbox/prod");
        assert_eq!(l.endpoint.as_deref(), Some("http://minio:9000"));
        assert_eq!(l.region.as_deref(), Some("eu-west-1"));
        assert!(!l.virtual_hosted);
        assert_eq!(S3Location::parse("s3://b").expect("bucket only").prefix, "");
        for (bad, says) in [
            ("s3://key:secret@b/p", "credentials"),
            ("s3:///p", "no bucket"),
            ("s3://b?endpoint=minio:9000", "endpoint"),
            ("s3://b?colour=blue", "unknown option"),
        ] {
            let e = S3Location::parse(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains("secret"), "{bad}: {e}");
        }
    }
}
