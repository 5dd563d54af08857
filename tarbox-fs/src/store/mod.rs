//! Block stores: where a tenant's file data lives when it does not live in the database.
//!
//! A tenant chooses at creation where its block contents go, and keeps that choice for life:
//! - **in the database** (the default, no store): a block's bytes are a column of its row and are
//!   written in the same transaction as the mappings that name it;
//! - **an external [`BlockStore`]**: the row keeps only the block's reference count, and the
//!   bytes are an object named by the tenant and the block's hash: a local directory
//!   ([`FileStore`], `file:///path`) or an S3-compatible bucket ([`S3Store`],
//!   `s3://bucket/prefix?endpoint=http://host:port&region=…`).
//!
//! # Order of store and commit
//! A block is put into the store *before* the transaction that first references it commits, so
//! nothing committed ever names a block that was not stored. A block whose last reference goes
//! keeps its row, marked dead, instead of being deleted with it; the engine's reaper later locks
//! dead rows, deletes their objects, and only then deletes the rows. The row lock is what makes
//! this safe against a writer storing the same content at the same time: such a writer either
//! revives the row before the reaper locks it (the reaper skips it), or waits for the reaper and
//! then inserts a fresh row, and learns from the tenant's *reap epoch*, which every reap bumps,
//! that the object it stored beforehand may have been deleted since, so it stores it again before
//! committing (see `engine::data`).
//!
//! # Contract
//! Every method may be called concurrently, from many engines on many nodes.

mod file;
mod s3;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

pub use file::FileStore;
pub use s3::{S3Credentials, S3Store};

use crate::backend::{BlockHash, StoredBlock};
use crate::error::{BackendError, BackendResult};
use crate::types::TenantId;

/// An object store for the blocks of many tenants, each under its own prefix.
#[async_trait]
pub trait BlockStore: Send + Sync + fmt::Debug + 'static {
    /// Short name for logs and `tenant info` (`"file"`).
    fn kind(&self) -> &'static str;

    /// Store `blocks` of `tenant`, each under its hash. Idempotent: a block already stored is
    /// left as it is (its content is the same, by its name). Readable when this returns `Ok`,
    /// durable after the next [`BlockStore::sync`]; on an error, any subset may have been stored.
    async fn put(&self, tenant: TenantId, blocks: Vec<StoredBlock>) -> BackendResult<()>;

    /// Make every block put so far durable (a crash of the machine keeps them).
    async fn sync(&self) -> BackendResult<()>;

    /// The stored blocks of `tenant` with these hashes, in any order; a hash that is not stored
    /// is omitted. Contents are returned as stored (the engine verifies them against the hash).
    async fn get(&self, tenant: TenantId, hashes: &[BlockHash]) -> BackendResult<Vec<StoredBlock>>;

    /// Delete these blocks of `tenant`; hashes not stored are ignored.
    async fn delete(&self, tenant: TenantId, hashes: &[BlockHash]) -> BackendResult<()>;

    /// Up to `limit` blocks of `tenant` with a hash greater than `after`, in increasing hash order,
    /// each with the time it was last stored: for the sweep of objects no row names and for
    /// `fsck --check-data`.
    async fn list(
        &self,
        tenant: TenantId,
        after: Option<BlockHash>,
        limit: usize,
    ) -> BackendResult<Vec<(BlockHash, SystemTime)>>;

    /// Make the blocks `hashes` of tenant `from` blocks of tenant `to` as well (a clone), without
    /// passing their contents through the caller where the store can. Fails if one is missing
    /// from `from`; blocks `to` already has are left as they are.
    async fn copy(&self, from: TenantId, to: TenantId, hashes: &[BlockHash]) -> BackendResult<()>;

    /// Delete every block of `tenant` (after its rows were purged).
    async fn delete_tenant(&self, tenant: TenantId) -> BackendResult<()>;
}

/// Check a block store URL (`file:///path[?fsync=false]`, `s3://bucket/prefix?…`) without opening
/// the store; the error names what is wrong, never a credential.
pub fn validate_data_url(url: &str) -> BackendResult<()> {
    parse(url).map(|_| ())
}

/// What a data URL names.
enum DataUrl {
    /// A directory, and whether `sync` flushes it to disk.
    File(std::path::PathBuf, bool),
    S3(s3::S3Location),
}

fn parse(url: &str) -> BackendResult<DataUrl> {
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(BackendError::config(format!(
                "data store {url:?}: a file:// URL needs an absolute path (file:///srv/tarbox)"
            )));
        }
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let fsync = match query {
            "" | "fsync=true" => true,
            "fsync=false" => false,
            other => {
                return Err(BackendError::config(format!(
                    "data store {url:?}: unknown option {other:?} (known: fsync=true|false)"
                )));
            }
        };
        return Ok(DataUrl::File(path.into(), fsync));
    }
    if url.starts_with("s3://") {
        return s3::S3Location::parse(url)
            .map(DataUrl::S3)
            // The URL itself is not repeated: it may carry credentials, which is the error.
            .map_err(|why| BackendError::config(format!("data store s3://…: {why}")));
    }
    // Only the scheme is shown: the rest of a URL may carry credentials.
    let scheme = url.split_once("://").map_or(url, |(s, _)| s);
    Err(BackendError::config(format!(
        "unsupported data store scheme {scheme:?}: expected postgres (in the database), \
         file:///path or s3://bucket/prefix"
    )))
}

/// Open the block store a data URL names; S3 keys come from `s3` when given, else from the
/// environment, and S3 requests are retried through an outage for `retry_for`.
pub async fn open(
    url: &str,
    s3: Option<&S3Credentials>,
    retry_for: Duration,
) -> BackendResult<Arc<dyn BlockStore>> {
    match parse(url)? {
        DataUrl::File(root, fsync) => {
            let store = FileStore::open(root).await?;
            Ok(Arc::new(if fsync { store } else { store.without_fsync() }))
        }
        DataUrl::S3(location) => Ok(Arc::new(S3Store::open(&location, s3, retry_for)?)),
    }
}

/// The one-byte trailer of a stored object: how its content is encoded. A trailer rather than a
/// header keeps the data at offset 0, page-aligned in the page cache.
pub(crate) const RAW: u8 = 0;
pub(crate) const ZSTD: u8 = 1;

/// The trailer byte of a block's object (it follows the data as stored).
pub(crate) fn object_trailer(block: &StoredBlock) -> u8 {
    if block.compressed { ZSTD } else { RAW }
}

/// The block an object holds.
pub(crate) fn from_object(hash: BlockHash, object: Vec<u8>) -> BackendResult<StoredBlock> {
    let compressed = match object.last() {
        Some(&RAW) => false,
        Some(&ZSTD) => true,
        _ => {
            return Err(BackendError::Corrupt(format!(
                "object of block {hash:?} has no valid trailer"
            )));
        }
    };
    let mut data = bytes::Bytes::from(object);
    data.truncate(data.len() - 1);
    Ok(StoredBlock {
        hash,
        compressed,
        data,
        parts: Vec::new(),
    })
}

/// Lowercase hex of a hash: the object's name.
pub(crate) fn hex(hash: &BlockHash) -> String {
    let mut s = String::with_capacity(64);
    for b in hash.0 {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The hash an object name spells, if it is one.
pub(crate) fn parse_hex(name: &str) -> Option<BlockHash> {
    if name.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(BlockHash(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_are_checked_and_name_themselves() {
        assert!(validate_data_url("file:///srv/tarbox").is_ok());
        assert!(validate_data_url("file:///srv/tarbox?fsync=false").is_ok());
        let e = validate_data_url("file:///srv?fsync=maybe")
            .expect_err("bad option")
            .to_string();
        assert!(e.contains("fsync=maybe"), "{e}");
        let e = validate_data_url("file://relative/dir")
            .expect_err("relative")
            .to_string();
        assert!(e.contains("absolute"), "{e}");
        let e = validate_data_url("s4://secret@host/b")
            .expect_err("scheme")
            .to_string();
        assert!(e.contains("\"s4\"") && !e.contains("secret"), "{e}");
    }

    #[test]
    fn hashes_round_trip_through_names() {
        let h = BlockHash(*blake3::hash(b"x").as_bytes());
        assert_eq!(parse_hex(&hex(&h)), Some(h));
        assert_eq!(parse_hex("zz"), None);
    }
}
