//! Store blocks in the memory backend: dead-row claims for the reaper, adoption of objects no row
//! names, and the listing of referenced blocks. A claim holds the tenant's gate, so no
//! transaction revives a claimed block while its objects are deleted.

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::OwnedMutexGuard;

use super::{MemoryBackend, TenantData};
use crate::backend::{BlockHash, DeadBlocks, StoredBlock};
use crate::error::BackendResult;
use crate::types::TenantId;

pub(super) async fn claim_dead(
    backend: &MemoryBackend,
    tenant: TenantId,
    grace: std::time::Duration,
    limit: usize,
) -> BackendResult<Box<dyn DeadBlocks>> {
    let gate = backend.gate(tenant).lock_owned().await;
    let hashes = {
        let mut store = backend.lock();
        let d = store.tenant_data(tenant)?;
        // Entries of blocks revived (or restored by a rollback) since are stale.
        let blocks = &d.blocks;
        d.dead.retain(|h, _| {
            blocks
                .get(h)
                .is_some_and(|(b, n)| *n == 0 && b.data.is_empty())
        });
        let mut old: Vec<(std::time::Instant, BlockHash)> = d
            .dead
            .iter()
            .filter(|(_, since)| since.elapsed() >= grace)
            .map(|(h, since)| (*since, *h))
            .collect();
        old.sort_unstable();
        old.into_iter().take(limit).map(|(_, h)| h).collect()
    };
    Ok(Box::new(MemoryDeadBlocks {
        backend: backend.clone(),
        tenant,
        hashes,
        _gate: gate,
    }))
}

pub(super) fn adopt(d: &mut TenantData, hashes: &[BlockHash]) -> u64 {
    let mut adopted = 0;
    for hash in hashes {
        if d.blocks.contains_key(hash) {
            continue;
        }
        let row = StoredBlock {
            hash: *hash,
            compressed: false,
            data: Bytes::new(),
            parts: Vec::new(),
        };
        d.blocks.insert(*hash, (row, 0));
        d.dead.insert(*hash, std::time::Instant::now());
        adopted += 1;
    }
    adopted
}

pub(super) fn referenced(d: &TenantData, after: Option<BlockHash>, limit: usize) -> Vec<BlockHash> {
    let mut out: Vec<BlockHash> = d
        .blocks
        .iter()
        // Patched blocks live in their rows only, never in the store.
        .filter(|(h, (b, n))| *n > 0 && b.parts.is_empty() && after.is_none_or(|a| **h > a))
        .map(|(h, _)| *h)
        .collect();
    out.sort_unstable();
    out.truncate(limit);
    out
}

struct MemoryDeadBlocks {
    backend: MemoryBackend,
    tenant: TenantId,
    hashes: Vec<BlockHash>,
    _gate: OwnedMutexGuard<()>,
}

#[async_trait]
impl DeadBlocks for MemoryDeadBlocks {
    fn hashes(&self) -> &[BlockHash] {
        &self.hashes
    }

    async fn forget(self: Box<Self>) -> BackendResult<()> {
        if self.hashes.is_empty() {
            return Ok(());
        }
        let mut store = self.backend.lock();
        let d = store.tenant_data(self.tenant)?;
        for h in &self.hashes {
            d.blocks.remove(h);
            d.dead.remove(h);
        }
        d.reap_epoch += 1;
        Ok(())
    }
}
