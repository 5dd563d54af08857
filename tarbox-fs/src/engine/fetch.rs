//! Where a block's contents are read from, nearest first: the memory cache, a load of the same
//! block already under way (the read-ahead's, another reader's), the disk cache, and last the
//! tenant's rows or block store. A block is loaded from the store once however many readers
//! want it at the same time: on a store with tens of milliseconds per request (S3), a reader
//! that caught up with its read-ahead waits for the request in flight instead of repeating it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;

use super::patched::Patched;
use super::{Volume, blocks, lock};
use crate::backend::{BlockHash, StoreRead};
use crate::error::{BackendError, FsResult};
use crate::types::TenantId;

type Key = (TenantId, BlockHash);
/// Where the content of a block another caller loads will arrive (`None` until it does).
type Arrival = watch::Receiver<Option<Bytes>>;

/// Blocks being loaded now, each with the channel its content will be sent on.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    loads: Mutex<HashMap<Key, Arrival>>,
}

/// The loads one caller took on: it sends each content it gets; dropping it ends them, so a
/// waiter whose block never came (an error) loads it itself.
struct Claim<'a> {
    in_flight: &'a InFlight,
    tenant: TenantId,
    senders: HashMap<BlockHash, watch::Sender<Option<Bytes>>>,
}

impl InFlight {
    /// Take on loading those of `hashes` no one is loading; the others are returned with the
    /// channel to wait on.
    fn claim(
        &self,
        tenant: TenantId,
        hashes: &[BlockHash],
    ) -> (Claim<'_>, Vec<(BlockHash, Arrival)>) {
        let mut loads = lock(&self.loads);
        let mut claim = Claim {
            in_flight: self,
            tenant,
            senders: HashMap::new(),
        };
        let mut waits = Vec::new();
        for hash in hashes {
            match loads.get(&(tenant, *hash)) {
                Some(rx) => waits.push((*hash, rx.clone())),
                None => {
                    let (tx, rx) = watch::channel(None);
                    loads.insert((tenant, *hash), rx);
                    claim.senders.insert(*hash, tx);
                }
            }
        }
        (claim, waits)
    }
}

impl Claim<'_> {
    fn hashes(&self) -> Vec<BlockHash> {
        self.senders.keys().copied().collect()
    }

    fn deliver(&self, hash: &BlockHash, content: &Bytes) {
        if let Some(tx) = self.senders.get(hash) {
            tx.send_replace(Some(content.clone()));
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut loads = lock(&self.in_flight.loads);
        for hash in self.senders.keys() {
            loads.remove(&(self.tenant, *hash));
        }
    }
}

/// The content another caller loads, or `None` if its load ended without it.
async fn wait_for(mut rx: Arrival) -> Option<Bytes> {
    rx.wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|content| content.clone())
}

impl Volume {
    /// Contents of the blocks named by `hashes` (index, hash).
    pub(super) async fn fetch_blocks(
        &self,
        r: &mut dyn StoreRead,
        hashes: &[(u64, BlockHash)],
    ) -> FsResult<HashMap<u64, Bytes>> {
        let tenant = self.inner.tenant.id;
        let cache = &self.shared().cache;
        let mut out = HashMap::with_capacity(hashes.len());
        let mut missing: Vec<BlockHash> = Vec::new();
        for (idx, hash) in hashes {
            match cache.get(tenant, hash) {
                Some(content) => {
                    out.insert(*idx, content);
                }
                None => {
                    if !missing.contains(hash) {
                        missing.push(*hash);
                    }
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let (claim, waits) = self.shared().in_flight.claim(tenant, &missing);
        let mut decoded = self.load_decoded(r, &claim.hashes()).await?;
        for (hash, content) in &decoded {
            claim.deliver(hash, content);
        }
        drop(claim);
        let mut again = Vec::new();
        for (hash, rx) in waits {
            match wait_for(rx).await {
                Some(content) => {
                    decoded.insert(hash, content);
                }
                None => again.push(hash),
            }
        }
        if !again.is_empty() {
            decoded.extend(self.load_decoded(r, &again).await?);
        }
        for (idx, hash) in hashes {
            if out.contains_key(idx) {
                continue;
            }
            let content = decoded.get(hash).cloned().ok_or_else(|| {
                BackendError::Corrupt(format!("block {idx} names missing block {hash:?}"))
            })?;
            out.insert(*idx, content);
        }
        Ok(out)
    }

    /// Blocks `hashes` from the disk cache or, decoded and verified, from where the tenant's
    /// blocks live; both caches are filled with what is found. Hashes found nowhere are left
    /// out.
    async fn load_decoded(
        &self,
        r: &mut dyn StoreRead,
        hashes: &[BlockHash],
    ) -> FsResult<HashMap<BlockHash, Bytes>> {
        let tenant = self.inner.tenant.id;
        let cache = &self.shared().cache;
        let mut decoded = HashMap::with_capacity(hashes.len());
        let mut missing = hashes.to_vec();
        let disk = self.shared().disk_cache.clone();
        if let (Some(disk), false) = (&disk, missing.is_empty()) {
            for (hash, content) in disk.get(tenant, &missing).await? {
                cache.insert(tenant, hash, content.clone());
                decoded.insert(hash, content);
            }
            missing.retain(|h| !decoded.contains_key(h));
        }
        if missing.is_empty() {
            return Ok(decoded);
        }
        let bs = self.block_size();
        let mut loaded = Vec::with_capacity(missing.len());
        let mut patched = Vec::new();
        for block in self.load_blocks(r, &missing).await? {
            if !block.parts.is_empty() {
                let manifest = Arc::new(Patched::decode(&block)?);
                cache.note_kind(tenant, block.hash, Some(manifest.clone()));
                patched.push((block.hash, manifest));
                continue;
            }
            cache.note_kind(tenant, block.hash, None);
            let content = blocks::decode(&block, bs)?;
            cache.insert(tenant, block.hash, content.clone());
            decoded.insert(block.hash, content.clone());
            loaded.push((block.hash, content));
        }
        if let Some(disk) = &disk {
            disk.fill(tenant, loaded);
        }
        if !patched.is_empty() {
            // Their parts: from what was just loaded, the memory cache, or loaded here. Never
            // by waiting for loads in flight: this caller's own claim (the blocks it is loading
            // now, which a part may be) is delivered only when it returns, so waiting could
            // wait for itself, or for a reader waiting for it.
            let mut parts: HashMap<BlockHash, Bytes> = HashMap::new();
            let mut rest: Vec<BlockHash> = Vec::new();
            for (_, p) in &patched {
                for part in p.parts() {
                    if parts.contains_key(&part) || rest.contains(&part) {
                        continue;
                    }
                    match decoded
                        .get(&part)
                        .cloned()
                        .or_else(|| cache.get(tenant, &part))
                    {
                        Some(content) => {
                            parts.insert(part, content);
                        }
                        None => rest.push(part),
                    }
                }
            }
            if !rest.is_empty() {
                parts.extend(Box::pin(self.load_decoded(r, &rest)).await?);
            }
            for (hash, p) in patched {
                // Assembled contents are cached in memory only: the disk cache names what it
                // holds by the hash of its content, which a manifest's name is not.
                let content = p.assemble(&parts, bs)?;
                cache.insert(tenant, hash, content.clone());
                decoded.insert(hash, content);
            }
        }
        Ok(decoded)
    }
}
