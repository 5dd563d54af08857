//! Waiting out a store outage (a PostgreSQL restart, a dropped connection): an operation that
//! finds the store unavailable where retrying is safe waits and retries, with a backoff, for up
//! to [`EngineConfig::outage_wait`](super::EngineConfig::outage_wait), then fails with `EIO`.
//!
//! Safe means nothing was applied: out-of-transaction reads (every method of [`PatientReader`])
//! and the start of a transaction (`Volume::begin`). A failure inside a transaction, or of its
//! commit, is not retried here: the operation fails with `EIO` and its caller decides (the
//! outcome of a failed commit is unknown, and redoing a `mkdir` could report `EEXIST` for the
//! caller's own directory).

use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::{BlockHash, DentryRecord, StoreRead, StoredBlock};
use crate::error::BackendResult;
use crate::types::{Ino, Inode};

pub(super) const FIRST_PAUSE: Duration = Duration::from_millis(50);
pub(super) const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Evaluate `$call` (a backend call returning `BackendResult`) again after each
/// [`BackendError::Unavailable`] until it succeeds, fails otherwise, or `$wait` has passed.
macro_rules! patiently {
    ($wait:expr, $call:expr) => {{
        let deadline = std::time::Instant::now() + $wait;
        let mut pause = $crate::engine::patience::FIRST_PAUSE;
        loop {
            match $call.await {
                Err($crate::error::BackendError::Unavailable(e))
                    if std::time::Instant::now() + pause < deadline =>
                {
                    tracing::debug!(error = %e, "store unavailable: waiting to retry");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min($crate::engine::patience::MAX_PAUSE);
                }
                other => break other,
            }
        }
    }};
}
pub(super) use patiently;

/// A reader that waits out outages.
pub(super) struct PatientReader {
    pub inner: Box<dyn StoreRead>,
    pub wait: Duration,
}

#[async_trait]
impl StoreRead for PatientReader {
    async fn inode(&mut self, ino: Ino) -> BackendResult<Option<Inode>> {
        patiently!(self.wait, self.inner.inode(ino))
    }

    async fn inodes(&mut self, inos: &[Ino]) -> BackendResult<Vec<Inode>> {
        patiently!(self.wait, self.inner.inodes(inos))
    }

    async fn lookup(&mut self, parent: Ino, name: &[u8]) -> BackendResult<Option<DentryRecord>> {
        patiently!(self.wait, self.inner.lookup(parent, name))
    }

    async fn lookup_inode(
        &mut self,
        parent: Ino,
        name: &[u8],
    ) -> BackendResult<Option<(DentryRecord, Inode)>> {
        patiently!(self.wait, self.inner.lookup_inode(parent, name))
    }

    async fn list_dir(
        &mut self,
        parent: Ino,
        after: u64,
        limit: usize,
    ) -> BackendResult<Vec<DentryRecord>> {
        patiently!(self.wait, self.inner.list_dir(parent, after, limit))
    }

    async fn dir_has_entries(&mut self, parent: Ino) -> BackendResult<bool> {
        patiently!(self.wait, self.inner.dir_has_entries(parent))
    }

    async fn block_map(
        &mut self,
        ino: Ino,
        range: Range<u64>,
    ) -> BackendResult<Vec<(u64, BlockHash)>> {
        patiently!(self.wait, self.inner.block_map(ino, range.clone()))
    }

    async fn blocks(&mut self, hashes: &[BlockHash]) -> BackendResult<Vec<StoredBlock>> {
        patiently!(self.wait, self.inner.blocks(hashes))
    }

    async fn patched_blocks(&mut self, hashes: &[BlockHash]) -> BackendResult<Vec<StoredBlock>> {
        patiently!(self.wait, self.inner.patched_blocks(hashes))
    }

    async fn xattr(&mut self, ino: Ino, name: &[u8]) -> BackendResult<Option<Vec<u8>>> {
        patiently!(self.wait, self.inner.xattr(ino, name))
    }

    async fn xattr_names(&mut self, ino: Ino) -> BackendResult<Vec<Vec<u8>>> {
        patiently!(self.wait, self.inner.xattr_names(ino))
    }
}
